//! Leases (`locks/<name>`): who is writing to the repository right now.
//!
//! # Design
//!
//! A lease is a small plaintext JSON object, created with a create-if-absent write and
//! refreshed by a background thread every [`REFRESH_INTERVAL`]. A lease is *stale*, and may
//! be taken over, when its holder stopped refreshing it for [`STALE_AFTER`], or when it was
//! taken on this host by a process that no longer exists (a `kill -9` is noticed at once).
//!
//! | operation | lease                    | may run beside                                  |
//! |-----------|--------------------------|-------------------------------------------------|
//! | backup    | `backup-<vm hash>`, exclusive per VM | backups of other VMs, restore, verify, prune |
//! | prune     | `prune`, exclusive       | backups, restores, verify                        |
//! | geo-sync into a copy | `geo-sync`, exclusive | prune of the copy (which waits for it)     |
//! | restore, export, verify, geo-sync's source | `read-<random>`, one per reader | everything; prune waits for it |
//! | listing points, status | none            | everything                                       |
//!
//! Prune reads every live lease to decide when the second phase of a deletion is safe
//! (see `garbage.rs`): packs recorded for deletion while a reader runs stay until it ends,
//! so the chunk map it loaded at its start never names a pack that is gone.

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{RepositoryError, Result};
use lifeboat_storage::{ObjectKind, Storage};

/// How often a held lease is rewritten.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// A lease not refreshed for this long belongs to a dead or cut-off holder.
pub const STALE_AFTER: Duration = Duration::from_secs(180);

/// The content of a lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// What the holder does (`backup`, `prune`).
    pub operation: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Start time of the holder process in clock ticks since boot, to tell a reused pid
    /// from the original process.
    pub process_start_ticks: u64,
    /// When the lease was taken, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When the lease was last refreshed, milliseconds since the Unix epoch.
    pub refreshed_unix_ms: u64,
}

impl LeaseRecord {
    fn for_this_process(operation: &str) -> LeaseRecord {
        let now = unix_ms(SystemTime::now());
        let pid = std::process::id();
        LeaseRecord {
            operation: operation.to_string(),
            host: host_name(),
            pid,
            process_start_ticks: process_start_ticks(pid).unwrap_or(0),
            started_unix_ms: now,
            refreshed_unix_ms: now,
        }
    }

    /// True when the holder is gone: not refreshed for [`STALE_AFTER`], or a process of
    /// this host that no longer exists.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        let age_ms = unix_ms(now).saturating_sub(self.refreshed_unix_ms);
        if age_ms > STALE_AFTER.as_millis() as u64 {
            return true;
        }
        if self.host == host_name() {
            return match process_start_ticks(self.pid) {
                None => true,
                Some(ticks) => self.process_start_ticks != 0 && ticks != self.process_start_ticks,
            };
        }
        false
    }

    /// A description for messages: "backup by pid 42 on host h since 2026-…".
    pub fn describe(&self) -> String {
        let since = chrono::DateTime::from_timestamp_millis(self.started_unix_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        format!(
            "{} by pid {} on host {} since {since}",
            self.operation, self.pid, self.host
        )
    }
}

/// A held lease; released (deleted) on drop.
#[derive(Debug)]
pub struct Lease {
    name: String,
    record: LeaseRecord,
    storage: Arc<dyn Storage>,
    /// The refresher thread and the sender it waits on: dropping the sender stops it at
    /// once. `None` if the thread could not be started.
    refresher: Option<(SyncSender<()>, JoinHandle<()>)>,
}

impl Lease {
    /// Takes the lease `name` for `operation`, taking over a stale holder's lease.
    pub fn acquire(
        storage: Arc<dyn Storage>,
        name: &str,
        operation: &str,
        what: &str,
    ) -> Result<Lease> {
        let record = LeaseRecord::for_this_process(operation);
        let bytes = serde_json::to_vec(&record).expect("leases serialize");
        for _attempt in 0..3 {
            match storage.create(ObjectKind::Lock, name, &bytes) {
                Ok(()) => return Ok(Lease::start(storage, name, record, REFRESH_INTERVAL)),
                Err(error) if error.is_already_exists() => {}
                Err(error) => return Err(error.into()),
            }
            match read_record(storage.as_ref(), name)? {
                // Released between our attempt and the read: try again.
                None => continue,
                Some(holder) if holder.is_stale(SystemTime::now()) => {
                    tracing::warn!(lease = name, holder = %holder.describe(), "taking over a stale lease");
                    storage.delete(ObjectKind::Lock, name)?;
                }
                Some(holder) => {
                    return Err(RepositoryError::Locked {
                        what: what.to_string(),
                        holder: holder.describe(),
                        advice: format!(
                            "wait for it to finish; if that process is gone from another host, \
                             the lock expires {} s after its last refresh",
                            STALE_AFTER.as_secs()
                        ),
                    });
                }
            }
        }
        Err(RepositoryError::Locked {
            what: what.to_string(),
            holder: "another process".to_string(),
            advice: "the lock changed hands repeatedly; try again".to_string(),
        })
    }

    fn start(
        storage: Arc<dyn Storage>,
        name: &str,
        record: LeaseRecord,
        refresh_interval: Duration,
    ) -> Lease {
        let (stop, stopped) = sync_channel::<()>(0);
        let thread_storage = Arc::clone(&storage);
        let thread_name = name.to_string();
        let mut thread_record = record.clone();
        let refresher = std::thread::Builder::new()
            .name("lease-refresh".to_string())
            .spawn(move || {
                // Wakes every interval to refresh, and at once when the lease is dropped
                // (the sender goes away): releasing a lease costs no waiting.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(refresh_interval) {
                    thread_record.refreshed_unix_ms = unix_ms(SystemTime::now());
                    let bytes = serde_json::to_vec(&thread_record).expect("leases serialize");
                    if let Err(error) =
                        thread_storage.replace(ObjectKind::Lock, &thread_name, &bytes)
                    {
                        tracing::warn!(lease = %thread_name, %error, "could not refresh lease");
                    }
                }
            })
            .ok();
        Lease {
            name: name.to_string(),
            record,
            storage,
            refresher: refresher.map(|handle| (stop, handle)),
        }
    }

    /// The record as written when the lease was taken.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// The lease's object name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.refresher.take() {
            drop(stop);
            let _ = handle.join();
        }
        if let Err(error) = self.storage.delete(ObjectKind::Lock, &self.name) {
            tracing::warn!(lease = %self.name, %error, "could not release lease");
        }
    }
}

/// Reads a lease; `None` if it does not exist (any more).
pub fn read_record(storage: &dyn Storage, name: &str) -> Result<Option<LeaseRecord>> {
    match storage.read(ObjectKind::Lock, name) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Every lease in the repository with its name; unreadable ones are skipped.
pub fn list_records(storage: &dyn Storage) -> Result<Vec<(String, LeaseRecord)>> {
    let mut records = Vec::new();
    for object in storage.list(ObjectKind::Lock)? {
        if let Some(record) = read_record(storage, &object.name)? {
            records.push((object.name, record));
        }
    }
    Ok(records)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// Start time of process `pid` in clock ticks after boot; `None` if it does not exist.
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last
    // ')' are space-separated, and the start time is field 22 overall.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let state = after_name.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_storage::LocalDirectory;

    #[test]
    fn a_held_lease_refuses_a_second_holder_and_is_released_on_drop() {
        let directory = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path()));
        let first = Lease::acquire(Arc::clone(&storage), "backup-x", "backup", "VM x").unwrap();
        let error = Lease::acquire(Arc::clone(&storage), "backup-x", "backup", "VM x").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("VM x is locked by backup by pid"),
            "{error}"
        );
        drop(first);
        Lease::acquire(storage, "backup-x", "backup", "VM x").unwrap();
    }

    /// Writes `record` as lease `name` and holds it, refreshed every `interval`.
    fn hold(
        storage: &Arc<dyn Storage>,
        name: &str,
        record: &LeaseRecord,
        interval: Duration,
    ) -> Lease {
        storage
            .create(ObjectKind::Lock, name, &serde_json::to_vec(record).unwrap())
            .unwrap();
        Lease::start(Arc::clone(storage), name, record.clone(), interval)
    }

    #[test]
    fn a_held_lease_is_refreshed_and_its_refresher_stops_with_it() {
        let directory = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path()));
        let mut record = LeaseRecord::for_this_process("backup");
        record.refreshed_unix_ms -= 1000;
        let lease = hold(&storage, "backup-y", &record, Duration::from_millis(20));
        let refreshed = (0..500).find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            read_record(storage.as_ref(), "backup-y")
                .unwrap()
                .filter(|now| now.refreshed_unix_ms > record.refreshed_unix_ms)
        });
        assert!(refreshed.is_some(), "the lease was never refreshed");
        drop(lease);
        assert_eq!(read_record(storage.as_ref(), "backup-y").unwrap(), None);
        // The refresher was joined on drop: nothing writes the lease back afterwards.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(read_record(storage.as_ref(), "backup-y").unwrap(), None);

        // Released at once, not after the refresher's next wake-up an hour away.
        let record = LeaseRecord::for_this_process("backup");
        let lease = hold(&storage, "backup-z", &record, Duration::from_secs(3600));
        let released = std::time::Instant::now();
        drop(lease);
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "releasing the lease waited for the refresher"
        );
        assert_eq!(read_record(storage.as_ref(), "backup-z").unwrap(), None);
    }

    #[test]
    fn a_lease_of_a_dead_process_on_this_host_is_stale() {
        let mut record = LeaseRecord::for_this_process("backup");
        assert!(!record.is_stale(SystemTime::now()));
        record.pid = u32::MAX - 1;
        assert!(record.is_stale(SystemTime::now()));
        let mut foreign = LeaseRecord::for_this_process("backup");
        foreign.host = "elsewhere".to_string();
        assert!(!foreign.is_stale(SystemTime::now()));
        assert!(foreign.is_stale(SystemTime::now() + STALE_AFTER + Duration::from_secs(1)));
    }
}
