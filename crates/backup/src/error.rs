//! Errors of backup, restore, verify, forget, prune and export.
//!
//! # Error policy
//!
//! The engine combines repository and disk errors and adds what only it knows: which point,
//! which disk, which offset of the disk. A restore that meets a damaged chunk says
//! "point P, disk D, offset O, chunk C" and stops without leaving a partial file under the
//! target name. Nothing here panics on bad input.

use lifeboat_disk::DiskError;
use lifeboat_repository::{RepositoryError, StorageError};

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything that can go wrong in a backup, restore, verify, forget, prune or export.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),

    #[error(transparent)]
    Disk(#[from] DiskError),

    #[error(
        "restore of point {point} refused: disk '{disk}' at offset {offset}: {damage}. \
         No file was left under the disk's name. Run 'lifeboat verify --read-data' for a full report"
    )]
    RestoreDamaged {
        point: String,
        disk: String,
        offset: u64,
        damage: Box<RepositoryError>,
    },

    #[error("invalid request: {0}")]
    Invalid(String),

    #[error("{0}")]
    Refused(String),
}

impl From<StorageError> for EngineError {
    fn from(error: StorageError) -> EngineError {
        EngineError::Repository(error.into())
    }
}

impl EngineError {
    /// True when the storage (repository or target) ran out of space.
    pub fn is_no_space(&self) -> bool {
        match self {
            EngineError::Repository(error) => error.is_no_space(),
            EngineError::Disk(DiskError::NoSpace { .. }) => true,
            _ => false,
        }
    }
}
