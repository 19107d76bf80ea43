//! Probing regions: each region with a `probe` is checked every `probe_interval_seconds`
//! (TCP connect or HTTP GET, within 2 s); results and incidents go to the store.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lifeboat_config::Region;
use lifeboat_dns::health::Check;

use crate::incidents::{Change, Tracker};
use crate::store::{self, Store};

/// The address and check of a region's `probe` (`tcp:IP:PORT`, `http://IP:PORT/PATH`).
pub fn target(probe: &str) -> Option<(IpAddr, Check)> {
    if let Some(address) = probe.strip_prefix("tcp:") {
        let address: SocketAddr = address.parse().ok()?;
        return Some((address.ip(), Check::Tcp(address.port())));
    }
    let rest = probe.strip_prefix("http://")?;
    let (address, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let address: SocketAddr = address.parse().ok()?;
    Some((
        address.ip(),
        Check::Http {
            port: address.port(),
            path: path.to_string(),
        },
    ))
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Probes `region` until the process ends.
pub async fn watch(store: Store, region: Region) {
    let Some((address, check)) = region.probe.as_deref().and_then(target) else {
        return;
    };
    let open = store
        .incidents(&region.name)
        .await
        .map(|incidents| incidents.iter().any(|i| i.closed_ms.is_none()))
        .unwrap_or(false);
    if let Err(error) = store.monitor(&region.name, now_ms()).await {
        tracing::warn!(%error, "cannot record when probing began");
    }
    let mut tracker = Tracker::new(open);
    let interval = Duration::from_secs(region.probe_interval_seconds);
    loop {
        let probe = check.clone();
        let ok = tokio::task::spawn_blocking(move || probe.probe(address, Duration::from_secs(2)))
            .await
            .unwrap_or(false);
        let at = now_ms();
        let detail = if ok {
            "answered".to_string()
        } else {
            format!(
                "{} did not answer",
                region.probe.as_deref().unwrap_or_default()
            )
        };
        if let Err(error) = store
            .record_check(
                &region.name,
                &store::Check {
                    checked_ms: at,
                    ok,
                    detail: detail.clone(),
                },
            )
            .await
        {
            tracing::warn!(%error, region = %region.name, "cannot record a probe");
        }
        let change = tracker.observe(ok, at, region.probe_failures);
        let result = match change {
            Some(Change::Opened { at_ms }) => {
                tell!("region '{}': incident opened ({detail})", region.name);
                store
                    .open_incident(&region.name, at_ms, &detail)
                    .await
                    .map(|_| ())
            }
            Some(Change::Closed { at_ms }) => {
                tell!("region '{}': incident closed", region.name);
                store.close_incidents(&region.name, at_ms).await
            }
            None => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, region = %region.name, "cannot record an incident");
        }
        tokio::time::sleep(interval).await;
    }
}
