//! Geo-redundant repositories: every sealed recovery point of a region copied to its paired
//! region, readable there, and promoted when the region is lost.
//!
//! # The caveat this crate exists for
//!
//! Disks copied independently (as geo-redundant storage copies virtual hard disks) are not
//! consistent with each other. Lifeboat copies *whole points* in the repository's commit
//! order — packs, then pack indexes, then disk indexes, then the manifest — so the copy
//! never lists a point whose data is not all there, and every point it lists is the same
//! consistent cut across all disks as in the source.
//!
//! # Layout
//!
//! * `sync.rs` — [`geo_sync`]: one round of copying, resumable and checked.
//! * `copy_status.rs` — the record a round leaves in the copy (`geo-status/status`).
//! * `regions.rs` — which copy of a region is active and where the other one is (pure).
//! * `state.rs` — the local state file remembering failovers.
//! * `status.rs` — [`region_status`]: reachability, points and bytes behind, last sync time.
//! * `failover.rs` — [`failover`] and [`reprotect`].
//!
//! # What this crate must not know
//!
//! Disk images, VMs, command lines. It moves repository objects and decides which copy of a
//! region is in charge.

pub mod copy_status;
pub mod error;
pub mod failover;
pub mod regions;
pub mod state;
pub mod status;
pub mod sync;

pub use error::{GeoError, Result};
pub use failover::{FailoverReport, ReprotectReport, failover, reprotect};
pub use regions::{RegionLocations, Side, locations};
pub use state::{RegionState, StateFile};
pub use status::{CopyStatus, RegionStatus, region_status};
pub use sync::{SyncOptions, SyncReport, geo_sync, prepare_copy};
