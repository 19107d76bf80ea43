//! On-disk format of a receiver's state: `state.json` in its replicas directory.
//!
//! ```json
//! {"format":1,"group":"shop","repository_id":"…","applied_ordinal":…,"applied_time":"…",
//!  "applied_consistent":true,"sealed_ordinal":…,"sealed_time":"…","vms":[…],
//!  "pending":{"web1":{"web1.raw":[[0,65536]]}},"points":{"web1":"…"}}
//! ```
//!
//! Written to a temporary file, fsynced and renamed over the old one: after a crash it is
//! either the old or the new state, and the receiver redoes from there (applying a cut
//! again gives the same replicas).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cut::VmLayout;
use crate::error::{ReplicationError, Result, io};
use crate::ranges::RangeSet;

const FORMAT: u32 = 1;
const FILE_NAME: &str = "state.json";

/// Where a receiver stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub format: u32,
    pub group: String,
    /// The repository the replicas belong to.
    pub repository_id: String,
    /// The last cut applied to the replicas.
    pub applied_ordinal: u64,
    /// Its time: the replicas hold every write acknowledged up to then.
    pub applied_time: String,
    /// Whether the replicas were consistent after it.
    pub applied_consistent: bool,
    /// Whether it was taken with the applications frozen.
    #[serde(default)]
    pub applied_application_consistent: bool,
    /// The last cut recovery points were made from.
    pub sealed_ordinal: u64,
    /// Its time: every VM of the group has a point holding every write acknowledged up
    /// to then.
    #[serde(default)]
    pub sealed_time: String,
    /// The group's VMs and disks as of the last cut.
    pub vms: Vec<VmLayout>,
    /// Per VM and disk, the byte ranges written since the VM's last point.
    pub pending: BTreeMap<String, BTreeMap<String, RangeSet>>,
    /// Per VM, its newest point made here.
    pub points: BTreeMap<String, String>,
}

impl ReplicaState {
    /// A fresh state for `group` in the repository `repository_id`.
    pub fn new(group: &str, repository_id: &str) -> ReplicaState {
        ReplicaState {
            format: FORMAT,
            group: group.to_string(),
            repository_id: repository_id.to_string(),
            ..ReplicaState::default()
        }
    }

    /// Reads the state of `directory`; `None` when there is none yet.
    pub fn load(directory: &Path) -> Result<Option<ReplicaState>> {
        let path = directory.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(&path, "read", error)),
        };
        let state: ReplicaState = serde_json::from_slice(&bytes).map_err(|e| {
            ReplicationError::Invalid(format!(
                "{} is not a receiver state ({e}); move the replicas directory aside to start over",
                path.display()
            ))
        })?;
        if state.format != FORMAT {
            return Err(ReplicationError::Invalid(format!(
                "{} has format {}, this Lifeboat reads {FORMAT}",
                path.display(),
                state.format
            )));
        }
        Ok(Some(state))
    }

    /// Writes the state durably.
    pub fn save(&self, directory: &Path) -> Result<()> {
        let path = directory.join(FILE_NAME);
        let temporary = directory.join(format!(".{FILE_NAME}.partial"));
        let bytes = serde_json::to_vec_pretty(self).expect("states serialize");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(directory)?.sync_all()
        };
        write().map_err(|e| io(&path, "write", e))
    }

    /// Records that `[offset, offset + length)` of a disk changed.
    pub fn add_pending(&mut self, vm: &str, disk: &str, offset: u64, length: u64) {
        let ranges = self
            .pending
            .entry(vm.to_string())
            .or_default()
            .entry(disk.to_string())
            .or_default();
        ranges.insert(offset, offset + length);
    }
}
