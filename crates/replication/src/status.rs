//! On-disk format of replication status records: `replication/<tag>.sender` and
//! `replication/<tag>.receiver` in the recovery repository, sealed like every other
//! object (context "lifeboat-replication-status").
//!
//! Each sender and receiver replaces its record as it runs. They live in the recovery
//! region, beside the points, so the RPO can be read there whatever happened to the
//! protected region: a sender record that stops being updated is itself news.
//!
//! The RPO of a VM is the age of the newest moment up to which the recovery region holds a
//! point with every write of the VM acknowledged until then: `now - recovered_time`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use lifeboat_repository::crypto::Crypto;
use lifeboat_repository::{ObjectKind, Storage, StorageError};

use crate::cut::group_tag;

const CONTEXT: &[u8] = b"lifeboat-replication-status";
pub const FORMAT: u32 = 1;

/// What the protected side reports, per VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmSending {
    pub vm: String,
    /// Writes acknowledged and not yet shipped.
    pub pending_writes: u64,
    pub pending_bytes: u64,
    /// Bytes written per second over the last minute.
    pub write_bytes_per_second: f64,
    /// Since when the VM's writes are refused here (it failed over, or the capture is cut
    /// off beyond its lease), and why.
    #[serde(default)]
    pub fenced_at: Option<String>,
    #[serde(default)]
    pub fenced_because: Option<String>,
}

/// The sender's record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SenderRecord {
    pub format: u32,
    pub group: String,
    /// When the record was written (RFC 3339).
    pub updated: String,
    /// Seconds between cuts.
    pub interval_seconds: f64,
    /// Above this RPO the group is in alert.
    pub rpo_threshold_seconds: f64,
    /// Time of the last cut shipped.
    pub last_shipped: Option<String>,
    pub pending_writes: u64,
    pub pending_bytes: u64,
    /// Bytes still to be read again from the images (initial sync, overflow, crash).
    pub resync_pending_bytes: u64,
    /// Bytes shipped per second over the last minute.
    pub ship_bytes_per_second: f64,
    pub vms: Vec<VmSending>,
    /// The last shipping error, while it lasts.
    pub error: Option<String>,
    /// The capture fences its VMs itself after this long without reaching the recovery
    /// repository; a failover waits that long after the sender was last seen.
    #[serde(default)]
    pub fence_lease_seconds: Option<f64>,
}

/// A VM's newest point in the recovery region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReceived {
    pub vm: String,
    pub point: Option<String>,
}

/// The receiver's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverRecord {
    pub format: u32,
    pub group: String,
    pub updated: String,
    /// The replicas hold every write acknowledged up to this time.
    pub applied_time: Option<String>,
    /// The newest time for which every VM of the group has a point holding every write
    /// acknowledged until then.
    pub recovered_time: Option<String>,
    /// False while a resync is in progress (the replicas are not consistent).
    pub consistent: bool,
    pub vms: Vec<VmReceived>,
    pub error: Option<String>,
}

fn name(crypto: &Crypto, group: &str, role: &str) -> String {
    format!("{}.{role}", group_tag(crypto, group))
}

fn write<T: Serialize>(
    storage: &dyn Storage,
    crypto: &Crypto,
    group: &str,
    role: &str,
    record: &T,
) -> Result<(), StorageError> {
    let sealed = crypto.seal(
        CONTEXT,
        &serde_json::to_vec(record).expect("records serialize"),
    );
    storage.replace(
        ObjectKind::ReplicationStatus,
        &name(crypto, group, role),
        &sealed,
    )
}

/// Replaces the sender's record.
pub fn write_sender(
    storage: &dyn Storage,
    crypto: &Crypto,
    record: &SenderRecord,
) -> Result<(), StorageError> {
    write(storage, crypto, &record.group, "sender", record)
}

/// Replaces the receiver's record.
pub fn write_receiver(
    storage: &dyn Storage,
    crypto: &Crypto,
    record: &ReceiverRecord,
) -> Result<(), StorageError> {
    write(storage, crypto, &record.group, "receiver", record)
}

/// Both records of one group, as found.
#[derive(Clone, Debug, Default)]
pub struct GroupRecords {
    pub sender: Option<SenderRecord>,
    pub receiver: Option<ReceiverRecord>,
}

/// Every group's records in the repository, by group name. Records that do not open
/// (damaged, another key) are skipped: status must not fail for them.
pub fn read_all(
    storage: &dyn Storage,
    crypto: &Crypto,
) -> Result<BTreeMap<String, GroupRecords>, StorageError> {
    let mut groups: BTreeMap<String, GroupRecords> = BTreeMap::new();
    for object in storage.list(ObjectKind::ReplicationStatus)? {
        let sealed = match storage.read(ObjectKind::ReplicationStatus, &object.name) {
            Ok(sealed) => sealed,
            Err(error) if error.is_not_found() => continue,
            Err(error) => return Err(error),
        };
        let Ok(plaintext) = crypto.open(CONTEXT, &sealed) else {
            continue;
        };
        if object.name.ends_with(".sender") {
            if let Ok(record) = serde_json::from_slice::<SenderRecord>(&plaintext)
                && object.name == name(crypto, &record.group, "sender")
            {
                let group = record.group.clone();
                groups.entry(group).or_default().sender = Some(record);
            }
        } else if object.name.ends_with(".receiver")
            && let Ok(record) = serde_json::from_slice::<ReceiverRecord>(&plaintext)
            && object.name == name(crypto, &record.group, "receiver")
        {
            let group = record.group.clone();
            groups.entry(group).or_default().receiver = Some(record);
        }
    }
    Ok(groups)
}

/// Seconds from RFC 3339 `time` to `now`; `None` if it does not parse.
pub fn age_seconds(time: &str, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    let then = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    Some((now - then.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0)
}

/// The status of one group as `lifeboat status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupStatus {
    pub group: String,
    /// Age of the newest consistent point set of the group; `None` before the first. What
    /// a failover to the latest processed point loses.
    pub rpo_seconds: Option<f64>,
    /// Age of the newest cut committed in the recovery repository: what a failover to the
    /// latest state loses (it applies the cuts not processed yet first).
    pub rpo_latest_seconds: Option<f64>,
    pub rpo_threshold_seconds: Option<f64>,
    /// The RPO is above the threshold, or unknown.
    pub alert: bool,
    pub recovered_time: Option<String>,
    pub applied_time: Option<String>,
    pub pending_writes: Option<u64>,
    pub pending_bytes: Option<u64>,
    pub resync_pending_bytes: Option<u64>,
    pub ship_bytes_per_second: Option<f64>,
    /// Seconds since the sender last wrote its record (a stopped or cut-off sender).
    pub sender_seen_seconds_ago: Option<f64>,
    pub receiver_seen_seconds_ago: Option<f64>,
    pub sender_error: Option<String>,
    pub receiver_error: Option<String>,
    pub vms: Vec<VmStatus>,
}

/// The status of one VM of a group.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmStatus {
    pub vm: String,
    pub rpo_seconds: Option<f64>,
    pub alert: bool,
    pub point: Option<String>,
    pub pending_writes: Option<u64>,
    pub pending_bytes: Option<u64>,
    pub write_bytes_per_second: Option<f64>,
    /// Since when the protected side refuses the VM's writes (it failed over), and why.
    pub fenced_at: Option<String>,
    pub fenced_because: Option<String>,
}

/// The threshold when no sender has said which: 30 s.
pub const DEFAULT_RPO_THRESHOLD_SECONDS: f64 = 30.0;

/// Decides a group's status from its records at `now`. No I/O.
pub fn group_status(
    group: &str,
    records: &GroupRecords,
    now: chrono::DateTime<chrono::Utc>,
) -> GroupStatus {
    let sender = records.sender.as_ref();
    let receiver = records.receiver.as_ref();
    let threshold = sender
        .map(|s| s.rpo_threshold_seconds)
        .unwrap_or(DEFAULT_RPO_THRESHOLD_SECONDS);
    let recovered_time = receiver.and_then(|r| r.recovered_time.clone());
    let rpo = recovered_time
        .as_deref()
        .and_then(|time| age_seconds(time, now))
        .map(|age| age.max(0.0));
    let alert = rpo.is_none_or(|rpo| rpo > threshold);
    let mut names: Vec<String> = Vec::new();
    for vm in sender.into_iter().flat_map(|s| s.vms.iter().map(|v| &v.vm)) {
        if !names.contains(vm) {
            names.push(vm.clone());
        }
    }
    for vm in receiver
        .into_iter()
        .flat_map(|r| r.vms.iter().map(|v| &v.vm))
    {
        if !names.contains(vm) {
            names.push(vm.clone());
        }
    }
    let vms = names
        .into_iter()
        .map(|vm| {
            let sending = sender.and_then(|s| s.vms.iter().find(|v| v.vm == vm));
            let received = receiver.and_then(|r| r.vms.iter().find(|v| v.vm == vm));
            let point = received.and_then(|r| r.point.clone());
            // A VM's points are made together with its group's: its RPO is the group's
            // once it has a point at all.
            let rpo = if point.is_some() { rpo } else { None };
            VmStatus {
                alert: rpo.is_none_or(|rpo| rpo > threshold),
                rpo_seconds: rpo,
                point,
                pending_writes: sending.map(|s| s.pending_writes),
                pending_bytes: sending.map(|s| s.pending_bytes),
                write_bytes_per_second: sending.map(|s| s.write_bytes_per_second),
                fenced_at: sending.and_then(|s| s.fenced_at.clone()),
                fenced_because: sending.and_then(|s| s.fenced_because.clone()),
                vm,
            }
        })
        .collect();
    GroupStatus {
        group: group.to_string(),
        rpo_seconds: rpo,
        rpo_latest_seconds: sender
            .and_then(|s| s.last_shipped.as_deref())
            .and_then(|time| age_seconds(time, now))
            .map(|age| age.max(0.0)),
        rpo_threshold_seconds: Some(threshold),
        alert,
        recovered_time,
        applied_time: receiver.and_then(|r| r.applied_time.clone()),
        pending_writes: sender.map(|s| s.pending_writes),
        pending_bytes: sender.map(|s| s.pending_bytes),
        resync_pending_bytes: sender.map(|s| s.resync_pending_bytes),
        ship_bytes_per_second: sender.map(|s| s.ship_bytes_per_second),
        sender_seen_seconds_ago: sender.and_then(|s| age_seconds(&s.updated, now)),
        receiver_seen_seconds_ago: receiver.and_then(|r| age_seconds(&r.updated, now)),
        sender_error: sender.and_then(|s| s.error.clone()),
        receiver_error: receiver.and_then(|r| r.error.clone()),
        vms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(time)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn records() -> GroupRecords {
        GroupRecords {
            sender: Some(SenderRecord {
                format: FORMAT,
                group: "shop".into(),
                updated: "2026-11-26T10:00:09Z".into(),
                interval_seconds: 5.0,
                rpo_threshold_seconds: 20.0,
                last_shipped: Some("2026-11-26T10:00:08Z".into()),
                pending_writes: 3,
                pending_bytes: 12288,
                vms: vec![
                    VmSending {
                        vm: "db1".into(),
                        pending_writes: 3,
                        pending_bytes: 12288,
                        write_bytes_per_second: 1e6,
                        ..VmSending::default()
                    },
                    VmSending {
                        vm: "web1".into(),
                        ..VmSending::default()
                    },
                ],
                ..SenderRecord::default()
            }),
            receiver: Some(ReceiverRecord {
                format: FORMAT,
                group: "shop".into(),
                updated: "2026-11-26T10:00:08Z".into(),
                applied_time: Some("2026-11-26T10:00:05Z".into()),
                recovered_time: Some("2026-11-26T10:00:05Z".into()),
                consistent: true,
                vms: vec![VmReceived {
                    vm: "db1".into(),
                    point: Some("abcd".into()),
                }],
                error: None,
            }),
        }
    }

    #[test]
    fn rpo_is_the_age_of_the_recovered_time_and_alerts_above_the_threshold() {
        let status = group_status("shop", &records(), at("2026-11-26T10:00:10Z"));
        assert_eq!(status.rpo_seconds, Some(5.0));
        assert_eq!(status.rpo_latest_seconds, Some(2.0));
        assert!(!status.alert);
        assert_eq!(status.sender_seen_seconds_ago, Some(1.0));
        assert_eq!(status.vms[0].vm, "db1");
        assert_eq!(status.vms[0].rpo_seconds, Some(5.0));
        assert_eq!(status.vms[0].pending_bytes, Some(12288));
        assert!(!status.vms[0].alert);
        assert_eq!(status.vms[1].vm, "web1");
        assert!(status.vms[1].alert, "no point yet");

        let late = group_status("shop", &records(), at("2026-11-26T10:00:30Z"));
        assert_eq!(late.rpo_seconds, Some(25.0));
        assert!(late.alert && late.vms[0].alert);
    }

    #[test]
    fn without_a_receiver_the_rpo_is_unknown_and_in_alert() {
        let mut records = records();
        records.receiver = None;
        let status = group_status("shop", &records, at("2026-11-26T10:00:10Z"));
        assert_eq!(status.rpo_seconds, None);
        assert!(status.alert);
    }

    #[test]
    fn records_round_trip_through_storage_and_other_keys_are_skipped() {
        let directory = tempfile::tempdir().unwrap();
        let storage = lifeboat_storage::LocalDirectory::new(directory.path());
        let crypto = Crypto::unencrypted();
        let records = records();
        write_sender(&storage, &crypto, records.sender.as_ref().unwrap()).unwrap();
        write_receiver(&storage, &crypto, records.receiver.as_ref().unwrap()).unwrap();
        storage
            .create(ObjectKind::ReplicationStatus, "junk.sender", b"not sealed")
            .unwrap();
        let read = read_all(&storage, &crypto).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read["shop"].sender, records.sender);
        assert_eq!(read["shop"].receiver, records.receiver);
    }
}
