//! The record a geo-sync round leaves in the copy: `geo-status/status`, plaintext JSON.
//!
//! It lives in the copy, not with the process that copied, so it survives the loss of the
//! source region: a storage failover reads from it how much data the failover costs.

use serde::{Deserialize, Serialize};

use lifeboat_repository::{ObjectKind, Storage, StorageError};

/// The object name of the record.
pub const NAME: &str = "status";

/// A point of the source the copy does not hold yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPoint {
    pub point: String,
    pub vm: String,
    pub time: String,
    /// Why it was not copied in the last round ("not copied yet", or what failed).
    pub reason: String,
}

/// The content of the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStatusRecord {
    /// Where the points were copied from.
    pub source: String,
    /// When the last round listed the source (RFC 3339).
    pub round_started: String,
    /// When it finished.
    pub round_finished: String,
    /// The newest moment up to which the copy holds every point of the source: a storage
    /// failover now loses the points made after it.
    pub last_sync_time: String,
    /// Points the source had that the copy still lacks after the round.
    pub pending: Vec<PendingPoint>,
    /// When each backup running at the source at the round's start began: their points
    /// are not in the copy (absent from records written before it was kept).
    #[serde(default)]
    pub backups_running: Vec<String>,
    /// Points the source listed in the round.
    pub source_points: usize,
}

/// Reads the record; `None` if no round has finished yet.
pub fn read(copy: &dyn Storage) -> Result<Option<CopyStatusRecord>, StorageError> {
    match copy.read(ObjectKind::GeoStatus, NAME) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Writes the record, replacing the previous one.
pub fn write(copy: &dyn Storage, record: &CopyStatusRecord) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
    copy.replace(ObjectKind::GeoStatus, NAME, &bytes)
}
