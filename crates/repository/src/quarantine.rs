//! Quarantine records (`quarantine/<chunk id>-<pack id>`): blobs found damaged.
//!
//! `verify --read-data` writes one record per damaged blob instead of deleting anything.
//! Readers skip quarantined copies and use another copy of the chunk if there is one;
//! backups no longer deduplicate against them, so the next backup that sees the same data
//! stores a healthy copy and the points that needed it become restorable again. Prune never
//! deletes a pack holding a quarantined blob: the evidence stays until an operator acts.

use serde::{Deserialize, Serialize};

use crate::crypto::ChunkId;

/// The content of a quarantine record (plaintext JSON: it holds no data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The damaged chunk's id (hex).
    pub chunk: String,
    /// The pack holding the damaged copy.
    pub pack: String,
    /// The blob's offset in the pack.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// When verify found it (RFC 3339).
    pub found: String,
}

impl QuarantineRecord {
    /// The object name of this record.
    pub fn name(&self) -> String {
        format!("{}-{}", self.chunk, self.pack)
    }

    /// The chunk id, if the record is well-formed.
    pub fn chunk_id(&self) -> Option<ChunkId> {
        ChunkId::from_hex(&self.chunk)
    }
}
