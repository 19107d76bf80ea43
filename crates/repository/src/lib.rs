//! Lifeboat's repository: a content-addressed, deduplicated, compressed and encrypted
//! store of disk data and recovery points.
//!
//! # Layout of this crate
//!
//! One file per on-disk format, plus the pieces that tie them together:
//!
//! | file            | what it holds                                                   |
//! |-----------------|-----------------------------------------------------------------|
//! | `config.rs`     | the plaintext `config` object                                   |
//! | `key_file.rs`   | `keys/<id>`: master keys wrapped by a password                  |
//! | `blob.rs`       | how groups of chunks are compressed and sealed into blobs       |
//! | `pack.rs`       | `packs/<xx>/<id>`: many blobs with a self-describing header     |
//! | `pack_index.rs` | `pack-indexes/<id>`: which chunk is where                       |
//! | `disk_index.rs` | `disk-indexes/<id>`: one disk of one point as chunk ids        |
//! | `manifest.rs`   | `points/<id>`: one recovery point; its existence is the commit  |
//! | `lease.rs`      | `locks/<name>`: running writers                                 |
//! | `quarantine.rs` | `quarantine/<chunk>-<pack>`: damaged blobs, kept as evidence    |
//! | `garbage.rs`    | `garbage/<id>`: packs awaiting the second phase of deletion     |
//! | `crypto.rs`     | sealing (AES-256-GCM or checksums) and chunk ids (BLAKE3)       |
//! | `index.rs`      | the in-memory chunk map built from the pack indexes             |
//! | `repository.rs` | [`Repository`]: open/init and typed object access               |
//!
//! # Commit order
//!
//! A recovery point becomes visible in one step, and only once everything it needs is
//! durable:
//!
//! 1. packs (each `create` is durable before it returns),
//! 2. the pack index naming those packs,
//! 3. the disk index of each disk,
//! 4. the manifest — the point exists from this moment.
//!
//! A crash between any two steps leaves unreferenced objects that prune removes, never a
//! listed point that cannot be restored. Copying between repositories follows the same
//! order, which makes copies crash-safe and idempotent.
//!
//! # What this crate must not know
//!
//! Nothing about VMs beyond a name, disk image formats, QEMU, NBD, HTTP, or async runtimes;
//! nothing about where objects live (that is `lifeboat-storage`). It stores bytes and
//! points; the backup crate decides what goes in.

pub mod blob;
pub mod config;
pub mod crypto;
pub mod disk_index;
pub mod epoch;
pub mod error;
pub mod garbage;
pub mod index;
pub mod key_file;
pub mod lease;
pub mod manifest;
pub mod pack;
pub mod pack_index;
pub mod quarantine;
pub mod repository;

pub use blob::{BlobDecoder, BlobEncoder};
pub use config::{Encryption, RepositoryConfig};
pub use crypto::{ChunkId, Crypto};
pub use disk_index::DiskIndex;
pub use epoch::{Claim, EpochRecord};
pub use error::{RepositoryError, Result};
pub use index::{ChunkIndex, ChunkLocation, ChunkMap, ChunkSet};
pub use lease::Lease;
pub use lifeboat_storage::{LocalDirectory, ObjectInfo, ObjectKind, Storage, StorageError};
pub use manifest::{BackupStatistics, Consistency, DiskEntry, Manifest};
pub use repository::{DamagedObject, InitOptions, LoadedIndex, PointList, Repository};
