//! What the repositories say, for the API and the metrics: every few seconds the service
//! runs `lifeboat --json status` (the same command a user runs: regions, their points, the
//! RPO of every replicated group and VM) and `lifeboat --json --region R points` for each
//! region, keeps the newest answers, and records each replicated VM's RPO (its history).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::RwLock;

use crate::probes::now_ms;
use crate::scheduler::JobRunner;
use crate::store::Store;

/// How often the status is read.
pub const POLL: Duration = Duration::from_secs(10);

/// The newest status and when it was read.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub status: Option<Value>,
    /// Every replicated VM's RPO in `status`.
    pub vms: Vec<VmRpo>,
    /// Every region's points, each with a `region` field, newest first.
    pub points: Vec<Value>,
    pub read_ms: i64,
    pub error: Option<String>,
}

pub type Shared = Arc<RwLock<Snapshot>>;

/// Runs `lifeboat --json ARGUMENTS`; its JSON output, or what it said went wrong.
async fn read(runner: &JobRunner, arguments: &[&str]) -> Result<Value, String> {
    let output = tokio::process::Command::new(&runner.executable)
        .args(&runner.arguments)
        .arg("--json")
        .args(arguments)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| format!("cannot run lifeboat {}: {error}", arguments.join(" ")))?;
    serde_json::from_slice::<Value>(&output.stdout)
        .map_err(|_| String::from_utf8_lossy(&output.stderr).trim().to_string())
}

/// Reads the status and points until the process ends.
pub async fn poll(runner: JobRunner, shared: Shared, store: Store, regions: Vec<String>) {
    loop {
        let mut snapshot = shared.read().await.clone();
        snapshot.read_ms = now_ms();
        match read(&runner, &["status"]).await {
            Ok(status) => {
                snapshot.vms = vm_rpos(&status);
                for vm in &snapshot.vms {
                    if let Some(rpo) = vm.rpo_seconds
                        && let Err(error) = store.record_rpo(&vm.vm, snapshot.read_ms, rpo).await
                    {
                        tracing::warn!(%error, "cannot record an RPO sample");
                    }
                }
                snapshot.status = Some(status);
                snapshot.error = None;
            }
            Err(error) => snapshot.error = Some(error),
        }
        let mut points = Vec::new();
        for region in &regions {
            match read(&runner, &["--region", region, "points"]).await {
                Ok(Value::Array(found)) => {
                    points.extend(found.into_iter().map(|mut point| {
                        point["region"] = Value::String(region.clone());
                        point
                    }));
                }
                Ok(_) => {}
                Err(error) => snapshot.error = Some(error),
            }
        }
        points.sort_by(|a, b| b["time"].as_str().cmp(&a["time"].as_str()));
        snapshot.points = points;
        *shared.write().await = snapshot;
        let _ = store.forget_rpo(now_ms() - RPO_HISTORY_MS).await;
        tokio::time::sleep(POLL).await;
    }
}

/// RPO samples kept.
const RPO_HISTORY_MS: i64 = 7 * 24 * 3600 * 1000;

/// A replicated VM's RPO as `lifeboat status` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct VmRpo {
    pub vm: String,
    pub group: String,
    pub rpo_seconds: Option<f64>,
    pub alert: bool,
    pub pending_bytes: Option<u64>,
}

/// Every replication group in `status`, of every recovery repository.
fn groups(status: &Value) -> impl Iterator<Item = &Value> {
    status["replication"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|repository| repository["groups"].as_array().into_iter().flatten())
}

/// Every replicated VM in `status`.
pub fn vm_rpos(status: &Value) -> Vec<VmRpo> {
    groups(status)
        .flat_map(|group| {
            group["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |vm| {
                    Some(VmRpo {
                        vm: vm["vm"].as_str()?.to_string(),
                        group: group["group"].as_str()?.to_string(),
                        rpo_seconds: vm["rpo_seconds"].as_f64(),
                        alert: group["alert"].as_bool().unwrap_or(true),
                        pending_bytes: vm["pending_bytes"].as_u64(),
                    })
                })
        })
        .collect()
}

/// Prometheus lines for the replication groups and repositories in `status`, and its
/// replicated VMs `vms` (`vm_rpos`).
pub fn metrics(status: &Value, vms: &[VmRpo]) -> String {
    let mut text = String::new();
    let groups: Vec<&Value> = groups(status).collect();
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
    let per_vm = |value: fn(&VmRpo) -> Option<f64>| -> Vec<String> {
        vms.iter()
            .filter_map(|vm| {
                Some(format!(
                    "{{group=\"{}\",vm=\"{}\"}} {}",
                    vm.group,
                    vm.vm,
                    value(vm)?
                ))
            })
            .collect()
    };
    family(
        "lifeboat_vm_rpo_seconds",
        "Age of the VM's newest point in the recovery region.",
        per_vm(|vm| vm.rpo_seconds),
    );
    family(
        "lifeboat_vm_pending_bytes",
        "Bytes written and not shipped yet (replication lag).",
        per_vm(|vm| vm.pending_bytes.map(|bytes| bytes as f64)),
    );
    let per_region = |field: &str| -> Vec<String> {
        status["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(format!(
                    "{{region=\"{}\"}} {}",
                    r["name"].as_str()?,
                    r[field].as_u64()?
                ))
            })
            .collect()
    };
    family(
        "lifeboat_region_points",
        "Recovery points in the region's active repository.",
        per_region("points"),
    );
    family(
        "lifeboat_region_bytes_stored",
        "Bytes of packed data (compressed, deduplicated) in the region's active repository.",
        per_region("bytes_stored"),
    );
    text
}
