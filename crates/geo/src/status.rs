//! `status`: for each region, whether its repositories answer, how far the copy is behind,
//! and the last sync time — the data a storage failover would lose now.
//!
//! Everything here is read without keys: point and pack names are compared between the
//! active repository and its copy, and the last sync time comes from the record the last
//! geo-sync round left in the copy.

use std::collections::HashSet;

use lifeboat_config::{Config, Region};
use lifeboat_repository::{ObjectKind, Storage};
use lifeboat_storage::StorageSettings;
use serde::Serialize;

use crate::copy_status::{self, PendingPoint};
use crate::regions::{RegionLocations, Side, locations};
use crate::state::RegionState;

/// The copy of a region.
#[derive(Clone, Debug, Serialize)]
pub struct CopyStatus {
    pub location: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Points the active repository has and the copy lacks (unknown when either is
    /// unreachable).
    pub points_behind: Option<usize>,
    /// Bytes of packs the copy lacks.
    pub bytes_behind: Option<u64>,
    /// The newest moment up to which the copy holds every point (from the last round),
    /// counting the backups that were running when it started.
    pub last_sync_time: Option<String>,
    /// When each backup running at the last round's start began: their points are not in
    /// the copy.
    pub backups_running: Vec<String>,
    /// Seconds from the last sync time to now: the data-loss window of a storage failover.
    pub seconds_behind: Option<f64>,
    /// When the last round finished.
    pub last_round_finished: Option<String>,
    /// Points the last round could not copy, with the reason.
    pub pending: Vec<PendingPoint>,
}

/// One region.
#[derive(Clone, Debug, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub redundancy: &'static str,
    pub pair: Option<String>,
    /// `primary`, or `copy` after a storage failover.
    pub active: Side,
    pub epoch: u64,
    /// The repository backups and restores use now.
    pub repository: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Points in the active repository (when reachable).
    pub points: Option<usize>,
    /// Bytes of packed data in the active repository (compressed, deduplicated).
    pub bytes_stored: Option<u64>,
    /// The geo copy; `None` for `local` redundancy or before a failed-over region is
    /// reprotected.
    pub copy: Option<CopyStatus>,
}

/// Settings for a location: the region's object storage options over `base`.
pub fn settings_for(base: &StorageSettings, options: &[(String, String)]) -> StorageSettings {
    let mut settings = base.clone();
    for (key, value) in options {
        if key == "retry_timeout_seconds" {
            if let Ok(seconds) = value.parse::<u64>() {
                settings.retry_timeout = std::time::Duration::from_secs(seconds);
            }
        } else {
            settings.options.push((key.clone(), value.clone()));
        }
    }
    settings
}

/// A repository's point names and its packs with their sizes.
type Inventory = (HashSet<String>, Vec<(String, u64)>);

/// Lists point and pack names with sizes, or says why not. With `empty_allowed`, a location
/// holding no repository yet (a copy before its first round) is an empty inventory.
fn inventory(storage: &dyn Storage, empty_allowed: bool) -> Result<Inventory, String> {
    let check = storage
        .list(ObjectKind::Config)
        .map_err(|e| e.to_string())?;
    if check.is_empty() {
        if empty_allowed {
            return Ok((HashSet::new(), Vec::new()));
        }
        return Err(format!("no repository at {}", storage.location()));
    }
    let points = storage
        .list(ObjectKind::Point)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let packs = storage
        .list(ObjectKind::Pack)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| (o.name, o.size_bytes))
        .collect();
    Ok((points, packs))
}

/// The status of `region`.
pub fn region_status(
    config: &Config,
    region: &Region,
    state: &RegionState,
    base: &StorageSettings,
) -> RegionStatus {
    let RegionLocations {
        active_side,
        active,
        active_settings,
        standby,
        standby_settings,
    } = locations(config, region, state);
    let active_inventory = lifeboat_storage::open(&active, &settings_for(base, &active_settings))
        .map_err(|e| e.to_string())
        .and_then(|storage| inventory(storage.as_ref(), false));
    let copy = standby.map(|location| {
        let opened = lifeboat_storage::open(&location, &settings_for(base, &standby_settings))
            .map_err(|e| e.to_string());
        let copy_inventory = opened
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|s| inventory(s.as_ref(), true));
        let record = opened
            .as_ref()
            .ok()
            .and_then(|s| copy_status::read(s.as_ref()).ok().flatten());
        let (points_behind, bytes_behind) = match (&active_inventory, &copy_inventory) {
            (Ok((points, packs)), Ok((copy_points, copy_packs))) => {
                let have: HashSet<&String> = copy_packs.iter().map(|(name, _)| name).collect();
                (
                    Some(points.difference(copy_points).count()),
                    Some(
                        packs
                            .iter()
                            .filter(|(name, _)| !have.contains(name))
                            .map(|(_, size)| size)
                            .sum(),
                    ),
                )
            }
            _ => (None, None),
        };
        let last_sync_time = record.as_ref().map(|r| r.last_sync_time.clone());
        let seconds_behind = last_sync_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64
                    / 1000.0
            });
        CopyStatus {
            location,
            reachable: copy_inventory.is_ok(),
            error: copy_inventory.as_ref().err().cloned(),
            points_behind,
            bytes_behind,
            last_sync_time,
            seconds_behind,
            last_round_finished: record.as_ref().map(|r| r.round_finished.clone()),
            backups_running: record
                .as_ref()
                .map(|r| r.backups_running.clone())
                .unwrap_or_default(),
            pending: record.map(|r| r.pending).unwrap_or_default(),
        }
    });
    RegionStatus {
        name: region.name.clone(),
        redundancy: region.redundancy.as_str(),
        pair: region.pair.clone(),
        active: active_side,
        epoch: state.epoch,
        repository: active,
        reachable: active_inventory.is_ok(),
        error: active_inventory.as_ref().err().cloned(),
        points: active_inventory
            .as_ref()
            .ok()
            .map(|(points, _)| points.len()),
        bytes_stored: active_inventory
            .as_ref()
            .ok()
            .map(|(_, packs)| packs.iter().map(|(_, size)| size).sum()),
        copy,
    }
}
