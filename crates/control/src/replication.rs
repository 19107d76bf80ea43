//! What the repositories say, for the API and the metrics: every few seconds the service
//! runs `lifeboat --json status` (the same command a user runs: regions, their points, the
//! RPO of every replicated group and VM) and keeps the newest answer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::RwLock;

use crate::probes::now_ms;
use crate::scheduler::JobRunner;

/// How often the status is read.
pub const POLL: Duration = Duration::from_secs(10);

/// The newest status and when it was read.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub status: Option<Value>,
    pub read_ms: i64,
    pub error: Option<String>,
}

pub type Shared = Arc<RwLock<Snapshot>>;

/// Reads the status until the process ends.
pub async fn poll(runner: JobRunner, shared: Shared) {
    loop {
        let output = tokio::process::Command::new(&runner.executable)
            .args(&runner.arguments)
            .args(["--json", "status"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        let snapshot = match output {
            Ok(output) => match serde_json::from_slice::<Value>(&output.stdout) {
                Ok(status) => Snapshot {
                    status: Some(status),
                    read_ms: now_ms(),
                    error: None,
                },
                Err(_) => Snapshot {
                    error: Some(String::from_utf8_lossy(&output.stderr).trim().to_string()),
                    read_ms: now_ms(),
                    ..shared.read().await.clone()
                },
            },
            Err(error) => Snapshot {
                error: Some(format!("cannot run lifeboat status: {error}")),
                read_ms: now_ms(),
                ..shared.read().await.clone()
            },
        };
        *shared.write().await = snapshot;
        tokio::time::sleep(POLL).await;
    }
}

/// Prometheus lines for the replication groups and repositories in `status`.
pub fn metrics(status: &Value) -> String {
    let mut text = String::new();
    let groups: Vec<&Value> = status["replication"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|repository| repository["groups"].as_array().into_iter().flatten())
        .collect();
    let mut family = |name: &str, help: &str, lines: Vec<String>| {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for line in lines {
            text.push_str(&format!("{name}{line}\n"));
        }
    };
    // A group's number (booleans as 0 and 1), one line per group that has it.
    let per_group = |field: &str| -> Vec<String> {
        groups
            .iter()
            .filter_map(|g| {
                let value = match &g[field] {
                    Value::Bool(flag) => f64::from(u8::from(*flag)),
                    other => other.as_f64()?,
                };
                Some(format!("{{group=\"{}\"}} {value}", g["group"].as_str()?))
            })
            .collect()
    };
    family(
        "lifeboat_group_rpo_seconds",
        "Age of the newest consistent point set of a replicated group.",
        per_group("rpo_seconds"),
    );
    family(
        "lifeboat_group_alert",
        "The group's RPO is above its threshold, or unknown.",
        per_group("alert"),
    );
    family(
        "lifeboat_group_ship_bytes_per_second",
        "Bytes shipped per second to the recovery region over the last minute.",
        per_group("ship_bytes_per_second"),
    );
    let vms = |field: &str| -> Vec<String> {
        groups
            .iter()
            .flat_map(|g| {
                g["vms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(move |vm| {
                        Some(format!(
                            "{{group=\"{}\",vm=\"{}\"}} {}",
                            g["group"].as_str()?,
                            vm["vm"].as_str()?,
                            vm[field].as_f64()?
                        ))
                    })
            })
            .collect()
    };
    family(
        "lifeboat_vm_rpo_seconds",
        "Age of the VM's newest point in the recovery region.",
        vms("rpo_seconds"),
    );
    family(
        "lifeboat_vm_pending_bytes",
        "Bytes written and not shipped yet (replication lag).",
        vms("pending_bytes"),
    );
    family(
        "lifeboat_region_points",
        "Recovery points in the region's active repository.",
        status["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(format!(
                    "{{region=\"{}\"}} {}",
                    r["name"].as_str()?,
                    r["points"].as_u64()?
                ))
            })
            .collect(),
    );
    text
}
