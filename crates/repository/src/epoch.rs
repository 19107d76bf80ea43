//! On-disk format of epoch records: `epochs/<vm tag>.<epoch, 20 digits>`, sealed (context
//! "lifeboat-epoch"), created once and never replaced.
//!
//! Each failover of a VM claims the next epoch in the repository of the region it moves to
//! by creating its record if absent: of two orchestrators racing, exactly one succeeds.
//! The VM's capture on the old side (`lifeboat protect`, which ships into that same
//! repository) reads the records and stops accepting the VM's writes once an epoch newer
//! than its own exists: the fence. The tag is a keyed hash of the VM's name, so names do
//! not show in object names.

use serde::{Deserialize, Serialize};

use crate::crypto::Crypto;
use crate::{ObjectKind, Repository, RepositoryError, Result};

const CONTEXT: &[u8] = b"lifeboat-epoch";
/// Records are small; anything larger is not one.
const MAXIMUM_RECORD_BYTES: usize = 64 * 1024;

/// Who holds an epoch of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub vm: String,
    pub epoch: u64,
    /// The region that runs the VM as primary from this epoch on.
    pub region: String,
    /// The orchestrator run that claimed it.
    pub run: String,
    /// `user@host` that ran it.
    pub actor: String,
    /// RFC 3339.
    pub time: String,
}

fn tag(crypto: &Crypto, vm: &str) -> String {
    hex::encode(&crypto.name_hash("lifeboat-epoch-vm", vm.as_bytes())[..8])
}

fn name(crypto: &Crypto, vm: &str, epoch: u64) -> String {
    format!("{}.{epoch:020}", tag(crypto, vm))
}

/// The outcome of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The record is ours (new, or written by the same run before).
    Held,
    /// Someone else holds that epoch.
    Taken(EpochRecord),
}

impl Repository {
    /// Claims `record.epoch` of `record.vm` for `record.run`.
    pub fn claim_epoch(&self, record: &EpochRecord) -> Result<Claim> {
        let object = name(self.crypto(), &record.vm, record.epoch);
        let sealed = self.crypto().seal(
            CONTEXT,
            &serde_json::to_vec(record).expect("epoch records serialize"),
        );
        match self.storage().create(ObjectKind::Epoch, &object, &sealed) {
            Ok(()) => Ok(Claim::Held),
            Err(error) if error.is_already_exists() => {
                let holder = self.read_epoch(&object)?;
                if holder.run == record.run {
                    Ok(Claim::Held)
                } else {
                    Ok(Claim::Taken(holder))
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    fn read_epoch(&self, object: &str) -> Result<EpochRecord> {
        let damaged = |reason: String| RepositoryError::Damaged {
            location: self.location(),
            kind: ObjectKind::Epoch,
            name: object.to_string(),
            reason,
        };
        let sealed = self.storage().read(ObjectKind::Epoch, object)?;
        if sealed.len() > MAXIMUM_RECORD_BYTES {
            return Err(damaged(format!(
                "{} bytes is larger than any epoch record",
                sealed.len()
            )));
        }
        let json = self
            .crypto()
            .open(CONTEXT, &sealed)
            .map_err(|e| damaged(e.to_string()))?;
        let record: EpochRecord =
            serde_json::from_slice(&json).map_err(|e| damaged(format!("invalid record: {e}")))?;
        if name(self.crypto(), &record.vm, record.epoch) != object {
            return Err(damaged(format!(
                "it describes epoch {} of VM '{}'",
                record.epoch, record.vm
            )));
        }
        Ok(record)
    }

    /// The newest epoch record of `vm`, if it ever failed over to this repository's
    /// region.
    pub fn current_epoch(&self, vm: &str) -> Result<Option<EpochRecord>> {
        Ok(self.current_epochs(&[vm])?.pop().flatten())
    }

    /// The newest epoch record of each of `vms`, from one listing.
    pub fn current_epochs(&self, vms: &[&str]) -> Result<Vec<Option<EpochRecord>>> {
        let objects = self.storage().list(ObjectKind::Epoch)?;
        vms.iter()
            .map(|vm| {
                let prefix = format!("{}.", tag(self.crypto(), vm));
                objects
                    .iter()
                    .filter_map(|object| {
                        let epoch: u64 = object.name.strip_prefix(&prefix)?.parse().ok()?;
                        Some((epoch, &object.name))
                    })
                    .max()
                    .map(|(_, object)| self.read_epoch(object))
                    .transpose()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lifeboat_storage::LocalDirectory;

    use super::*;
    use crate::{Encryption, InitOptions};

    fn record(epoch: u64, run: &str) -> EpochRecord {
        EpochRecord {
            vm: "db1".to_string(),
            epoch,
            region: "east".to_string(),
            run: run.to_string(),
            actor: "ops@host".to_string(),
            time: "2026-11-26T06:00:00.000Z".to_string(),
        }
    }

    #[test]
    fn of_two_runs_claiming_one_epoch_exactly_one_holds_it_and_the_newest_is_current() {
        let directory = tempfile::tempdir().unwrap();
        let repository = Repository::init(
            Arc::new(LocalDirectory::new(directory.path())),
            InitOptions {
                encryption: Encryption::Aes256Gcm,
                password: Some(b"secret".to_vec()),
                chunk_size_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(repository.current_epoch("db1").unwrap(), None);
        assert_eq!(
            repository.claim_epoch(&record(1, "a")).unwrap(),
            Claim::Held
        );
        assert_eq!(
            repository.claim_epoch(&record(1, "a")).unwrap(),
            Claim::Held,
            "idempotent"
        );
        assert_eq!(
            repository.claim_epoch(&record(1, "b")).unwrap(),
            Claim::Taken(record(1, "a"))
        );
        repository.claim_epoch(&record(2, "b")).unwrap();
        assert_eq!(
            repository.current_epoch("db1").unwrap(),
            Some(record(2, "b"))
        );
        assert_eq!(repository.current_epoch("web1").unwrap(), None);
    }
}
