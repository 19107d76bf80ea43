//! The `config` file: the only plaintext description of a repository.
//!
//! It is JSON so that an operator can read it with `cat`. It holds no secret. Chunk size is
//! also recorded, authenticated, inside every disk index, so a tampered config cannot make
//! restores misplace data; at worst it changes how new backups chunk.

use serde::{Deserialize, Serialize};

/// The format version this Lifeboat writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The value of the `format` field, to recognise a Lifeboat repository.
pub const FORMAT_NAME: &str = "lifeboat-repository";
/// Default chunk size: small enough that a 4 KiB random write dirties little, large enough
/// that per-chunk overhead (hashing, index entries, encryption) stays negligible; equal to
/// qcow2's default cluster and dirty-bitmap granularity.
pub const DEFAULT_CHUNK_SIZE_BYTES: u32 = 64 * 1024;
/// Smallest chunk size accepted at init.
pub const MINIMUM_CHUNK_SIZE_BYTES: u32 = 4 * 1024;
/// Largest chunk size accepted at init.
pub const MAXIMUM_CHUNK_SIZE_BYTES: u32 = 16 * 1024 * 1024;

/// How object bodies are protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// AES-256-GCM, keys wrapped by an Argon2id-derived key.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Checksums only; chosen explicitly with `--encryption none`.
    #[serde(rename = "none")]
    None,
}

/// The content of the `config` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryConfig {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Which on-disk format this repository uses.
    pub format_version: u32,
    /// Random id, so copies and logs can tell repositories apart.
    pub repository_id: String,
    /// Disks are cut into chunks of this size (a power of two).
    pub chunk_size_bytes: u32,
    /// How objects are protected.
    pub encryption: Encryption,
    /// Compression algorithm for chunks; only `zstd` exists in version 1.
    pub compression: String,
    /// When the repository was created (RFC 3339).
    pub created: String,
}

impl RepositoryConfig {
    /// Checks a chunk size given at init.
    pub fn validate_chunk_size(chunk_size_bytes: u32) -> Result<(), String> {
        if !chunk_size_bytes.is_power_of_two()
            || !(MINIMUM_CHUNK_SIZE_BYTES..=MAXIMUM_CHUNK_SIZE_BYTES).contains(&chunk_size_bytes)
        {
            return Err(format!(
                "chunk size {chunk_size_bytes} must be a power of two between {MINIMUM_CHUNK_SIZE_BYTES} and {MAXIMUM_CHUNK_SIZE_BYTES} bytes"
            ));
        }
        Ok(())
    }
}
