//! Fencing on the protected side: a VM failed over elsewhere may no longer be written here.
//!
//! Each failover claims the VM's next epoch in the recovery repository
//! (`lifeboat_repository::epoch`). The capture reads the epochs it starts under, and at
//! every round looks again: once a newer epoch exists, the VM is fenced for good — its
//! disks refuse writes (`EPERM`) and the sender says so in its status record with the
//! moment it happened. Every write acknowledged before that moment is in the journal, so
//! the first cut taken after it holds them all; a planned failover waits for that cut.
//!
//! With a lease (`fence_after`), a capture that cannot read the epochs for that long fences
//! its VMs itself until it can again: cut off from the recovery region, it cannot know
//! whether a failover happened, and an orchestrator on the other side waits out the same
//! lease before starting the VM there. Without one, writes go on while cut off (and are
//! resynced later), and only the epoch fences.
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
    /// Superseded by a newer epoch (for good), rather than cut off (until reachable).
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
    /// The fences of `vms`, each with the epoch it runs under here.
    pub fn new(
        vms: Vec<(String, u64)>,
        journal: Arc<Mutex<Journal>>,
        lease: Option<Duration>,
    ) -> Fences {
        let fences = vms
            .into_iter()
            .map(|(vm, epoch)| {
                Arc::new(Fence {
                    vm,
                    epoch,
                    fenced: AtomicBool::new(false),
                    state: Mutex::new(None),
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

    /// Looks at the epochs again; returns what changed, in words.
    pub fn check(&self, repository: &Repository) -> Vec<String> {
        let mut changes = Vec::new();
        let names: Vec<&str> = self.fences.iter().map(|f| f.vm.as_str()).collect();
        let newest = match repository.current_epochs(&names) {
            Ok(newest) => newest,
            Err(error) => {
                // Cut off: after the lease, fence every VM not fenced already.
                let confirmed = *self.last_confirmed.lock().expect("never poisoned");
                if let Some(lease) = self.lease
                    && confirmed.elapsed() >= lease
                {
                    for fence in self.fences.iter().filter(|f| !f.is_fenced()) {
                        let reason = format!(
                            "the recovery repository has not been reachable for {} s (the lease): no failover can be ruled out ({error})",
                            confirmed.elapsed().as_secs()
                        );
                        changes.push(format!("VM '{}' fenced: {reason}", fence.vm));
                        fence.set(
                            &self.journal,
                            Some(Fenced {
                                at: now(),
                                reason,
                                superseded: false,
                            }),
                        );
                    }
                }
                return changes;
            }
        };
        *self.last_confirmed.lock().expect("never poisoned") = Instant::now();
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
                    changes.push(format!("VM '{}' fenced: {reason}", fence.vm));
                    fence.set(
                        &self.journal,
                        Some(Fenced {
                            at: now(),
                            reason,
                            superseded: true,
                        }),
                    );
                }
                _ if state.is_some() => {
                    changes.push(format!(
                        "VM '{}' unfenced: the recovery repository is reachable again and no failover happened",
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
