//! Lifeboat's engine: backup, restore, verify, forget, prune and export of recovery points.
//!
//! One file per operation; each public entry point takes an opened
//! [`lifeboat_repository::Repository`] and plain options, and returns a report that the CLI
//! prints as text or JSON. Decisions are pure functions in their own modules — `plan.rs`
//! decides what a backup reads, `retention.rs` what forget keeps, `gc.rs` what prune may
//! delete and when — so they are tested without disks or repositories.
//!
//! # Which operation may run beside which
//!
//! | running \ starting | backup (other VM) | backup (same VM) | restore/export/verify | forget | prune |
//! |--------------------|-------------------|------------------|-----------------------|--------|-------|
//! | backup             | yes               | no: VM lease     | yes                   | yes    | yes: two-phase delete |
//! | prune              | yes               | yes              | yes¹                  | yes    | no: prune lease |
//!
//! ¹ Restore, export, verify and a geo-sync's source each hold a `read-…` lease: packs that
//! prune repacks or drops while one runs are recorded for deletion and deleted by a later
//! prune once every such reader has ended, so a reader's chunk map never names a pack that
//! is gone. A point forgotten and pruned before a reader opened it fails that reader
//! cleanly.
//!
//! A geo-sync round reads its source like a restore and writes its copy like a backup,
//! under the copy's `geo-sync` lease.
//!
//! # What this crate must not know
//!
//! Command-line parsing, terminals, JSON printing, HTTP. It reports progress through the
//! [`Progress`] trait.

pub mod backup;
pub mod error;
pub mod export;
pub mod forget;
pub mod gc;
pub mod plan;
pub mod points;
pub mod progress;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod verify;

pub use backup::{BackupOptions, BackupReport, backup};
pub use error::{EngineError, Result};
pub use export::point_server;
pub use forget::{ForgetReport, forget};
pub use points::{resolve_at, resolve_point};
pub use progress::{NoProgress, Progress};
pub use prune::{PruneReport, prune};
pub use restore::{RestoreOptions, RestoreReport, restore};
pub use retention::RetentionPolicy;
pub use verify::{VerifyReport, verify};
