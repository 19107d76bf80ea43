//! Garbage records (`garbage/<id>`): the first phase of a two-phase delete.
//!
//! # Why two phases
//!
//! A backup that is running while prune looks at the repository may be about to reference
//! a chunk that no committed point references yet: it deduplicated against it, but its
//! manifest is not written. Deleting that chunk's pack would commit a point whose data is
//! gone. So prune never deletes what it finds unreferenced; it writes a garbage record
//! naming those packs. Backups that start after the record exists do not deduplicate
//! against packs it names. A later prune deletes a recorded pack only when
//!
//! 1. every lease that was alive when the record was written is gone (those backups have
//!    committed or died; those readers — restores, exports, verifies, geo-syncs — which
//!    may hold a chunk map naming the packs, have ended), and
//! 2. the pack is still unreferenced by every committed point (a backup that committed in
//!    between may have rescued it; then the pack is simply kept).

use serde::{Deserialize, Serialize};

/// The content of a garbage record (plaintext JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GarbageRecord {
    /// When the record was written, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Packs to delete once it is safe.
    pub packs: Vec<String>,
}
