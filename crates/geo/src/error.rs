//! Errors of geo copying and storage failover.
//!
//! Every error names the region or the two locations involved, and says what to do.

use lifeboat_repository::{RepositoryError, StorageError};

/// Result alias for the geo crate.
pub type Result<T, E = GeoError> = std::result::Result<T, E>;

/// What can go wrong copying between regions or failing over.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),

    #[error(transparent)]
    Storage(#[from] StorageError),

    #[error(transparent)]
    Config(#[from] lifeboat_config::ConfigError),

    #[error(
        "{destination} holds another repository (id {found}) than {source_location} (id {expected}); \
         a geo copy must start empty or be a copy of the same repository"
    )]
    Mismatch {
        source_location: String,
        destination: String,
        expected: String,
        found: String,
    },

    #[error("region '{region}': {message}")]
    Region { region: String, message: String },

    #[error("cannot {action} the state file {path}: {detail}")]
    State {
        path: String,
        action: &'static str,
        detail: String,
    },
}
