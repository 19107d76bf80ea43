//! Where repositories live. Backends store named, immutable objects grouped by kind; they
//! know nothing of chunks, packs or points.
//!
//! # Layout
//!
//! * `storage.rs` — the [`Storage`] trait, [`ObjectKind`] and [`StorageError`].
//! * `local.rs` — [`LocalDirectory`]: one file per object, fsynced, create-if-absent by
//!   hard link.
//! * `object.rs` — [`ObjectStorage`]: S3-compatible object storage and Azure Blob Storage
//!   through `object_store`,
//!   with conditional (create-if-absent) puts and bounded retries, driven by a private
//!   tokio runtime so callers stay synchronous.
//! * `location.rs` — [`open`]: a location string (`/path`, `s3://bucket/prefix`,
//!   `az://container/prefix`) to a backend.
//! * `faults.rs` — [`FaultyStorage`]: wraps any backend to fail once, fail always, read
//!   short, flip a bit or go slow, for tests of everything above it.
//! * `conformance.rs` — [`conformance::check`]: the one suite every backend must pass.
//!
//! # What this crate must not know
//!
//! Repository formats, encryption, VMs. Only this crate knows tokio and HTTP.

pub mod conformance;
pub mod faults;
pub mod local;
pub mod location;
pub mod object;
pub mod storage;

pub use faults::{Fault, FaultyStorage, Operations};
pub use local::LocalDirectory;
pub use location::{StorageSettings, open};
pub use object::ObjectStorage;
pub use storage::{ObjectInfo, ObjectKind, Storage, StorageError};
