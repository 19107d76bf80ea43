//! Errors of the repository crate.
//!
//! # Error policy
//!
//! * Library functions return [`RepositoryError`]; they never panic on bad input,
//!   damaged objects or I/O failures. A panic is a bug in Lifeboat.
//! * Every error names what failed: the repository location, the kind and name of the
//!   object, and where it matters the chunk id, pack and offset.
//! * Where the user can do something, the message says what to run next
//!   ("run 'lifeboat verify --read-data'", "free space and try again").
//! * Damage is reported, never repaired silently: a chunk that fails authentication is an
//!   error naming it, not a retry that hides it.

use crate::crypto::ChunkId;
use lifeboat_storage::{ObjectKind, StorageError};

/// Result alias for the repository crate.
pub type Result<T, E = RepositoryError> = std::result::Result<T, E>;

/// Everything that can go wrong inside the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Storage(#[from] StorageError),

    #[error("no Lifeboat repository at {location}; create one with 'lifeboat init'")]
    NotARepository { location: String },

    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },

    #[error(
        "repository {location} uses format version {found}; this Lifeboat reads version {supported}: \
         upgrade Lifeboat"
    )]
    UnsupportedVersion {
        location: String,
        found: u32,
        supported: u32,
    },

    #[error(
        "repository {location} is encrypted and needs a password: \
         pass --password-file FILE or set LIFEBOAT_PASSWORD"
    )]
    PasswordRequired { location: String },

    #[error("wrong password for repository {location}: no key file opens with it")]
    WrongPassword { location: String },

    #[error(
        "{kind} '{name}' in repository {location} is damaged: {reason}; run 'lifeboat verify' for a full report"
    )]
    Damaged {
        location: String,
        kind: ObjectKind,
        name: String,
        reason: String,
    },

    #[error(
        "chunk {chunk} in pack {pack} at offset {offset} of repository {location} is damaged: {reason}"
    )]
    DamagedChunk {
        location: String,
        chunk: ChunkId,
        pack: String,
        offset: u64,
        reason: String,
    },

    #[error("chunk {chunk} is not in any pack of repository {location}")]
    MissingChunk { location: String, chunk: ChunkId },

    #[error(
        "every stored copy of chunk {chunk} in repository {location} is damaged (quarantined by 'lifeboat verify'); \
         a backup of the same data stores a healthy copy"
    )]
    QuarantinedChunk { location: String, chunk: ChunkId },

    #[error("no recovery point '{point}' in repository {location}")]
    NoSuchPoint { location: String, point: String },

    #[error("'{prefix}' matches several recovery points ({matches}); give more characters")]
    AmbiguousPoint { prefix: String, matches: String },

    #[error("{what} is locked by {holder}; {advice}")]
    Locked {
        what: String,
        holder: String,
        advice: String,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl RepositoryError {
    /// A damaged-object error for `kind`/`name` at `location`.
    pub fn damaged(
        location: impl Into<String>,
        kind: ObjectKind,
        name: impl Into<String>,
        reason: impl Into<String>,
    ) -> RepositoryError {
        RepositoryError::Damaged {
            location: location.into(),
            kind,
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// True when the error is the storage being full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, RepositoryError::Storage(StorageError::NoSpace { .. }))
    }
}
