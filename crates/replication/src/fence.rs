//! Fencing on the protected side: a VM failed over elsewhere may no longer be written here.
//!
//! Each failover claims the VM's next epoch in the recovery repository
//! (`lifeboat_repository::epoch`). The capture reads the epochs it starts under, and at
//! every round looks again: once a newer epoch exists, the VM is fenced for good — its
//! disks refuse writes (`EPERM`) and the sender says so in its status record with the
//! moment it happened. Every write acknowledged before that moment is in the journal, so
//! the first cut taken after it holds them all; a planned failover waits for that cut.
//!
//! A capture starts fenced: no write is accepted before the epochs have been read once and
//! name no newer one (a failover may have happened while it was down).
//!
//! With a lease (`fence_after`), a capture that cannot read the epochs for that long fences
//! its VMs itself until it can again: cut off from the recovery region, it cannot know
//! whether a failover happened, and an orchestrator on the other side waits out the same
//! lease before starting the VM there. The lease is kept by time, by [`Fences::enforce_lease`]
//! on a thread of its own, not between requests to the repository, one of which may retry
//! for a minute; and a reading counts from when it began, so an answer that took longer
//! than the lease does not lift the fence. Without a lease, writes go on while cut off (and
//! are resynced later), and only the epoch fences.
//!
//! The flag is set and read under the journal's lock, so no write is recorded after the
//! moment of the fence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_repository::Repository;

use crate::journal::Journal;

/// Why a VM is fenced, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    /// RFC 3339.
    pub at: String,
    pub reason: String,
    /// Superseded by a newer epoch (for good), rather than cut off or not yet checked
    /// (until the epochs are read).
    pub superseded: bool,
}

/// One VM's fence.
#[derive(Debug)]
pub struct Fence {
    vm: String,
    /// The epoch this capture started under.
    epoch: u64,
    fenced: AtomicBool,
    state: Mutex<Option<Fenced>>,
}

impl Fence {
    /// True once the VM may no longer be written here. Read under the journal's lock when
    /// a write is recorded.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> Option<Fenced> {
        self.state.lock().expect("never poisoned").clone()
    }

    /// The error a refused write reports.
    pub fn refusal(&self) -> String {
        match self.state() {
            Some(fenced) => format!("VM '{}' is fenced: {}", self.vm, fenced.reason),
            None => format!("VM '{}' is fenced", self.vm),
        }
    }

    /// Fences the VM from now on; what changed, in words.
    fn fence_now(&self, journal: &Mutex<Journal>, reason: String, superseded: bool) -> String {
        let change = format!("VM '{}' fenced: {reason}", self.vm);
        self.set(
            journal,
            Some(Fenced {
                at: now(),
                reason,
                superseded,
            }),
        );
        change
    }

    fn set(&self, journal: &Mutex<Journal>, fenced: Option<Fenced>) {
        let _recording = journal.lock().expect("never poisoned");
        self.fenced.store(fenced.is_some(), Ordering::SeqCst);
        *self.state.lock().expect("never poisoned") = fenced;
    }
}

/// The fences of a group's VMs.
pub struct Fences {
    fences: Vec<Arc<Fence>>,
    journal: Arc<Mutex<Journal>>,
    lease: Option<Duration>,
    last_confirmed: Mutex<Instant>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Fences {
    /// The fences of `vms`, each with the epoch it runs under here; fenced until the first
    /// [`Fences::check`] that reads the epochs.
    pub fn new(
        vms: Vec<(String, u64)>,
        journal: Arc<Mutex<Journal>>,
        lease: Option<Duration>,
    ) -> Fences {
        let since = now();
        let fences = vms
            .into_iter()
            .map(|(vm, epoch)| {
                Arc::new(Fence {
                    vm,
                    epoch,
                    fenced: AtomicBool::new(true),
                    state: Mutex::new(Some(Fenced {
                        at: since.clone(),
                        reason: "the capture has not read the epochs yet: a failover may have \
                                 happened while it was down"
                            .to_string(),
                        superseded: false,
                    })),
                })
            })
            .collect();
        Fences {
            fences,
            journal,
            lease,
            last_confirmed: Mutex::new(Instant::now()),
        }
    }

    /// The fence of VM number `index`.
    pub fn of(&self, index: usize) -> Arc<Fence> {
        Arc::clone(&self.fences[index])
    }

    pub fn lease(&self) -> Option<Duration> {
        self.lease
    }

    /// Fences every VM not fenced yet once the epochs have not been read for the lease;
    /// returns what changed, in words. Called often, on a thread that no request to the
    /// repository holds up.
    pub fn enforce_lease(&self) -> Vec<String> {
        self.enforce_lease_because("no reading of the epochs has finished")
    }

    fn enforce_lease_because(&self, why: &str) -> Vec<String> {
        let mut changes = Vec::new();
        let confirmed = *self.last_confirmed.lock().expect("never poisoned");
        let Some(lease) = self.lease else {
            return changes;
        };
        if confirmed.elapsed() < lease {
            return changes;
        }
        for fence in self.fences.iter().filter(|f| !f.is_fenced()) {
            let reason = format!(
                "the recovery repository has not been reachable for {} s (the lease): no failover can be ruled out ({why})",
                confirmed.elapsed().as_secs()
            );
            changes.push(fence.fence_now(&self.journal, reason, false));
        }
        changes
    }

    /// Looks at the epochs again; returns what changed, in words.
    pub fn check(&self, repository: &Repository) -> Vec<String> {
        let mut changes = Vec::new();
        let names: Vec<&str> = self.fences.iter().map(|f| f.vm.as_str()).collect();
        // What is read holds as of when the reading began.
        let began = Instant::now();
        let newest = match repository.current_epochs(&names) {
            Ok(newest) => newest,
            Err(error) => return self.enforce_lease_because(&error.to_string()),
        };
        let fresh = self.lease.is_none_or(|lease| began.elapsed() < lease);
        {
            let mut confirmed = self.last_confirmed.lock().expect("never poisoned");
            *confirmed = (*confirmed).max(began);
        }
        for (fence, record) in self.fences.iter().zip(newest) {
            let state = fence.state();
            if state.as_ref().is_some_and(|s| s.superseded) {
                continue;
            }
            match record {
                Some(record) if record.epoch > fence.epoch => {
                    let reason = format!(
                        "it runs in region '{}' as epoch {} since {} (run {} by {})",
                        record.region, record.epoch, record.time, record.run, record.actor
                    );
                    changes.push(fence.fence_now(&self.journal, reason, true));
                }
                // An answer older than the lease rules out nothing newer.
                _ if state.is_some() && fresh => {
                    changes.push(format!(
                        "VM '{}' unfenced: the epochs were read and no failover happened",
                        fence.vm
                    ));
                    fence.set(&self.journal, None);
                }
                _ => {}
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_repository::repository::InitOptions;
    use lifeboat_repository::{Encryption, EpochRecord};
    use lifeboat_storage::LocalDirectory;

    fn repository(directory: &std::path::Path) -> Repository {
        Repository::init(
            Arc::new(LocalDirectory::new(directory)),
            InitOptions {
                encryption: Encryption::Aes256Gcm,
                password: Some(b"secret".to_vec()),
                chunk_size_bytes: 1 << 20,
            },
        )
        .unwrap()
    }

    fn fences(lease: Option<Duration>) -> Fences {
        Fences::new(
            vec![("db1".to_string(), 0)],
            Arc::new(Mutex::new(Journal::new(1 << 20))),
            lease,
        )
    }

    #[test]
    fn a_capture_takes_no_write_before_it_has_read_the_epochs() {
        let directory = tempfile::tempdir().unwrap();
        let repository = repository(directory.path());
        let fences = fences(None);
        assert!(fences.of(0).is_fenced(), "fenced until the first reading");
        assert!(
            fences
                .of(0)
                .refusal()
                .contains("has not read the epochs yet")
        );
        let changes = fences.check(&repository);
        assert_eq!(
            changes,
            ["VM 'db1' unfenced: the epochs were read and no failover happened"]
        );
        assert!(!fences.of(0).is_fenced());
        repository
            .claim_epoch(&EpochRecord {
                vm: "db1".to_string(),
                epoch: 1,
                region: "east".to_string(),
                run: "r".to_string(),
                actor: "ops@host".to_string(),
                time: "2026-12-07T00:00:00.000Z".to_string(),
            })
            .unwrap();
        fences.check(&repository);
        let state = fences.of(0).state().unwrap();
        assert!(state.superseded && state.reason.contains("region 'east'"));
    }

    #[test]
    fn the_lease_fences_by_time_whatever_the_repository_is_doing() {
        let directory = tempfile::tempdir().unwrap();
        let repository = repository(directory.path());
        let fences = fences(Some(Duration::from_millis(200)));
        fences.check(&repository);
        assert!(fences.enforce_lease().is_empty(), "read just now");
        assert!(!fences.of(0).is_fenced());
        std::thread::sleep(Duration::from_millis(250));
        let changes = fences.enforce_lease();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(fences.of(0).is_fenced());
        assert!(!fences.of(0).state().unwrap().superseded);
        fences.check(&repository);
        assert!(!fences.of(0).is_fenced(), "a fresh reading lifts it");
    }
}
