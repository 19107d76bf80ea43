//! Endpoint health for priority routing, as Traffic Manager does it: each address with a
//! check is probed every interval; after `failures` failed probes in a row it is unhealthy,
//! after one good probe healthy again. A name answers with the first healthy address in
//! its priority order ([`choose`], no I/O), or the first one when none is healthy.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How an address is checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// A TCP connection to the port is accepted.
    Tcp(u16),
    /// `GET path` on the port answers 2xx or 3xx.
    Http { port: u16, path: String },
}

impl Check {
    /// Parses `tcp:PORT` or `http:PORT/PATH`.
    pub fn parse(text: &str) -> Option<Check> {
        if let Some(port) = text.strip_prefix("tcp:") {
            return port.parse().ok().map(Check::Tcp);
        }
        let rest = text.strip_prefix("http:")?;
        let (port, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        Some(Check::Http {
            port: port.parse().ok()?,
            path: path.to_string(),
        })
    }

    /// Probes `address` once, within `timeout`.
    pub fn probe(&self, address: IpAddr, timeout: Duration) -> bool {
        let port = match self {
            Check::Tcp(port) | Check::Http { port, .. } => *port,
        };
        let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::new(address, port), timeout)
        else {
            return false;
        };
        let Check::Http { path, .. } = self else {
            return true;
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: lifeboat-health\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 16];
        let mut read = 0;
        while read < 12 {
            match stream.read(&mut head[read..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        let status = String::from_utf8_lossy(&head[..read]);
        status.starts_with("HTTP/")
            && status
                .split_whitespace()
                .nth(1)
                .is_some_and(|code| code.starts_with('2') || code.starts_with('3'))
    }
}

/// The first address of `priority` that `healthy` accepts, else the first; `None` when
/// there is none.
pub fn choose(priority: &[IpAddr], healthy: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    priority
        .iter()
        .copied()
        .find(|&address| healthy(address))
        .or_else(|| priority.first().copied())
}

#[derive(Clone, Copy, Debug, Default)]
struct State {
    failures: u32,
    healthy: bool,
}

/// Probes a set of targets in the background.
pub struct Prober {
    states: Arc<Mutex<BTreeMap<(IpAddr, Check), State>>>,
    stop: Arc<AtomicBool>,
}

impl Prober {
    /// Probes every target every `interval`; `failures` failed probes in a row make it
    /// unhealthy. Targets start healthy.
    pub fn start(targets: Vec<(IpAddr, Check)>, interval: Duration, failures: u32) -> Prober {
        let states: BTreeMap<(IpAddr, Check), State> = targets
            .into_iter()
            .map(|target| {
                (
                    target,
                    State {
                        failures: 0,
                        healthy: true,
                    },
                )
            })
            .collect();
        let states = Arc::new(Mutex::new(states));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (Arc::clone(&states), Arc::clone(&stop));
        std::thread::spawn(move || {
            let timeout = interval.min(Duration::from_secs(2));
            while !stopped.load(Ordering::Relaxed) {
                let targets: Vec<(IpAddr, Check)> = shared
                    .lock()
                    .expect("never poisoned")
                    .keys()
                    .cloned()
                    .collect();
                for (address, check) in targets {
                    let good = check.probe(address, timeout);
                    let mut states = shared.lock().expect("never poisoned");
                    if let Some(state) = states.get_mut(&(address, check)) {
                        state.failures = if good { 0 } else { state.failures + 1 };
                        state.healthy = good || state.failures < failures.max(1);
                    }
                }
                std::thread::sleep(interval);
            }
        });
        Prober { states, stop }
    }

    /// Whether `address` passes `check` (true for targets not probed).
    pub fn is_healthy(&self, address: IpAddr, check: &Check) -> bool {
        self.states
            .lock()
            .expect("never poisoned")
            .get(&(address, check.clone()))
            .is_none_or(|state| state.healthy)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_and_the_first_healthy_address_wins() {
        assert_eq!(Check::parse("tcp:443"), Some(Check::Tcp(443)));
        assert_eq!(
            Check::parse("http:8080/healthz"),
            Some(Check::Http {
                port: 8080,
                path: "/healthz".to_string()
            })
        );
        assert_eq!(Check::parse("udp:53"), None);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.1.0.1".parse().unwrap());
        assert_eq!(choose(&[a, b], |x| x == b), Some(b));
        assert_eq!(
            choose(&[a, b], |_| false),
            Some(a),
            "none healthy: the first"
        );
        assert_eq!(choose(&[], |_| true), None);
    }

    #[test]
    fn a_listener_is_healthy_until_it_goes_away() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(Check::Tcp(port).probe(local, Duration::from_secs(1)));
        drop(listener);
        assert!(!Check::Tcp(port).probe(local, Duration::from_secs(1)));
    }
}
