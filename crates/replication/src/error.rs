//! Errors of replication, each naming what failed and what to do.

use std::path::PathBuf;

use lifeboat_backup::EngineError;
use lifeboat_repository::{RepositoryError, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(
        "cut object {name} is damaged: {detail}; the sender ships it again after a resync (restart 'lifeboat protect')"
    )]
    DamagedCut { name: String, detail: String },
    #[error("cannot {operation} {path}: {detail}")]
    Io {
        path: PathBuf,
        operation: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Disk(#[from] lifeboat_disk::DiskError),
}

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// An I/O error on `path`.
pub(crate) fn io(
    path: &std::path::Path,
    operation: &'static str,
    error: std::io::Error,
) -> ReplicationError {
    ReplicationError::Io {
        path: path.to_path_buf(),
        operation,
        detail: error.to_string(),
    }
}
