//! The one trait every storage backend implements, and the object kinds it stores.
//!
//! # Design
//!
//! A repository is a flat set of named objects grouped by [`ObjectKind`]. Backends only
//! store bytes; they know nothing of chunks, packs or points. Every write that publishes
//! data is *create-if-absent* ([`Storage::create`]): an object, once written, never changes,
//! so a crashed writer can never leave a half-overwritten object behind and two writers
//! cannot silently replace each other's work. The only exception is [`Storage::replace`],
//! used for leases, whose content is a heartbeat.
//!
//! A successful `create` is durable: the backend has fsynced (or the object store has
//! acknowledged) the object before it returns. The commit order of a recovery point
//! (packs, then pack indexes, then disk indexes, then the manifest) relies on this.

use std::fmt;

/// What an object is; each kind lives in its own namespace (a directory, a key prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// The plaintext repository configuration (format version, chunk size, encryption).
    Config,
    /// Key files: the master keys wrapped with a key derived from a password.
    Key,
    /// Packs of chunk blobs, each with its own header at the end.
    Pack,
    /// Which chunks live at which offset of which pack; written after the packs it names.
    PackIndex,
    /// The ordered chunk ids of one disk of one point; written after the pack indexes.
    DiskIndex,
    /// Recovery point manifests; a point exists exactly when its manifest does.
    Point,
    /// Leases of running writers and of prune.
    Lock,
    /// Chunk locations found damaged by verify, kept and reported rather than deleted.
    Quarantine,
    /// Packs that prune found unreferenced, waiting for the second phase of deletion.
    Garbage,
    /// In a geo copy: how far the copy has caught up with its source.
    GeoStatus,
    /// Replication cuts shipped to this (recovery) repository, until applied.
    Cut,
    /// The latest status of each replication sender and receiver, replaced as they run.
    ReplicationStatus,
    /// Failover epochs of VMs, each claimed once: the fencing tokens.
    Epoch,
}

impl ObjectKind {
    /// Every kind, for listing a whole repository.
    pub const ALL: [ObjectKind; 13] = [
        ObjectKind::Config,
        ObjectKind::Key,
        ObjectKind::Pack,
        ObjectKind::PackIndex,
        ObjectKind::DiskIndex,
        ObjectKind::Point,
        ObjectKind::Lock,
        ObjectKind::Quarantine,
        ObjectKind::Garbage,
        ObjectKind::GeoStatus,
        ObjectKind::Cut,
        ObjectKind::ReplicationStatus,
        ObjectKind::Epoch,
    ];

    /// The directory (or key prefix) of this kind inside the repository.
    pub fn directory(self) -> &'static str {
        match self {
            ObjectKind::Config => "",
            ObjectKind::Key => "keys",
            ObjectKind::Pack => "packs",
            ObjectKind::PackIndex => "pack-indexes",
            ObjectKind::DiskIndex => "disk-indexes",
            ObjectKind::Point => "points",
            ObjectKind::Lock => "locks",
            ObjectKind::Quarantine => "quarantine",
            ObjectKind::Garbage => "garbage",
            ObjectKind::GeoStatus => "geo-status",
            ObjectKind::Cut => "cuts",
            ObjectKind::ReplicationStatus => "replication",
            ObjectKind::Epoch => "epochs",
        }
    }

    /// Packs are spread over 256 subdirectories by the first two hex digits of their
    /// name, so no directory holds millions of entries.
    pub fn is_fanned_out(self) -> bool {
        matches!(self, ObjectKind::Pack)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "key",
            ObjectKind::Pack => "pack",
            ObjectKind::PackIndex => "pack index",
            ObjectKind::DiskIndex => "disk index",
            ObjectKind::Point => "point manifest",
            ObjectKind::Lock => "lock",
            ObjectKind::Quarantine => "quarantine record",
            ObjectKind::Garbage => "garbage record",
            ObjectKind::GeoStatus => "geo copy status",
            ObjectKind::Cut => "replication cut",
            ObjectKind::ReplicationStatus => "replication status",
            ObjectKind::Epoch => "epoch record",
        };
        f.write_str(name)
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's name inside its kind (no directory).
    pub name: String,
    /// Its size as the backend reports it.
    pub size_bytes: u64,
}

/// Why a storage operation failed. Each variant names the object and the repository
/// location so the message stands on its own.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{kind} '{name}' is missing from repository {location}")]
    NotFound {
        location: String,
        kind: ObjectKind,
        name: String,
    },
    #[error("{kind} '{name}' already exists in repository {location}")]
    AlreadyExists {
        location: String,
        kind: ObjectKind,
        name: String,
    },
    #[error(
        "the storage of repository {location} is full while writing {kind} '{name}'; \
         free space (or run 'lifeboat forget' and 'lifeboat prune') and try again"
    )]
    NoSpace {
        location: String,
        kind: ObjectKind,
        name: String,
    },
    #[error(
        "permission denied on {path} of repository {location}: give the user Lifeboat runs \
         as read and write access to the repository's files, or run Lifeboat as their owner"
    )]
    PermissionDenied { location: String, path: String },
    #[error(
        "access to repository {location} was denied ({detail}); check the credentials \
         ({credentials}, or the region's storage settings) and the access policy"
    )]
    AccessDenied {
        location: String,
        detail: String,
        /// Where the credentials of this kind of store come from.
        credentials: &'static str,
    },
    #[error(
        "{container} '{bucket}' of repository {location} does not exist; create it, or correct the repository location"
    )]
    NoBucket {
        location: String,
        bucket: String,
        /// What the store calls it: "bucket" or "container".
        container: &'static str,
    },
    #[error("{operation} {path} of repository {location} failed after retries: {detail}")]
    Unreachable {
        location: String,
        operation: &'static str,
        path: String,
        detail: String,
    },
    #[error("{operation} {path} of repository {location} failed: {source}")]
    Io {
        location: String,
        operation: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{kind} '{name}' of repository {location} is {actual_bytes} bytes long; reading {length} bytes at offset {offset} goes past its end"
    )]
    ShortObject {
        location: String,
        kind: ObjectKind,
        name: String,
        offset: u64,
        length: u64,
        actual_bytes: u64,
    },
}

impl StorageError {
    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// True when the storage could not be reached or did not answer (as opposed to
    /// answering that something is wrong).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StorageError::Unreachable { .. })
    }

    /// True when a create-if-absent write found the object already there.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StorageError::AlreadyExists { .. })
    }
}

/// A place that stores a repository's objects: a local directory, an object store.
///
/// Implementations must be safe to call from many threads at once.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where the repository lives, for messages (a path or a URL).
    fn location(&self) -> String;

    /// Writes a new object, durably, failing with [`StorageError::AlreadyExists`] if an
    /// object of that kind and name exists. Never leaves a partial object under `name`.
    fn create(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError>;

    /// Writes an object, replacing any previous one atomically. Only for leases.
    fn replace(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError>;

    /// Reads a whole object.
    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError>;

    /// Reads `length` bytes at `offset`; fails rather than return fewer bytes.
    fn read_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError>;

    /// Lists the objects of a kind, in no particular order.
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError>;
}
