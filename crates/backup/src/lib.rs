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
//! ¹ A point forgotten and pruned while it is being restored fails that restore cleanly.
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
