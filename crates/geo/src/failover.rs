//! `region failover` and `region reprotect`: storage failover of a region to its geo copy,
//! and bringing the old primary back as the new copy.
//!
//! # Failover
//!
//! Allowed when the region's primary repository does not answer (or with `force`). The
//! copy must hold the repository. The state file then names the copy as the region's active
//! repository, with a new epoch; backups and restores of the region go to it from then on.
//! What the failover costs is reported from the copy's own record: every point made after
//! the last sync time is lost, and the points the last round knew and could not copy are
//! named. Then the region's `on_storage_failover` hook runs — the place where the DNS name
//! of the repository is moved (the failover issue's DNS server will plug in there).
//!
//! # Reprotect
//!
//! Once the old primary answers again, it becomes the copy: geo-sync now runs from the
//! active copy to it. Points it holds that the active repository lacks (made after the last
//! sync, before the region was lost) are reported as divergent and left untouched there.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_config::Config;
use lifeboat_repository::{ObjectKind, Repository, Storage};
use lifeboat_storage::StorageSettings;
use serde::Serialize;

use crate::copy_status::{self, PendingPoint};
use crate::error::{GeoError, Result};
use crate::regions::{Side, locations};
use crate::state::StateFile;
use crate::status::settings_for;
use crate::sync::{SyncOptions, SyncReport, geo_sync, prepare_copy};

/// Longest a failover hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// What a storage failover did.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    pub region: String,
    /// The repository now active (the former copy).
    pub repository: String,
    /// The former primary.
    pub previous_repository: String,
    pub epoch: u64,
    /// Points made after this moment are lost.
    pub last_sync_time: Option<String>,
    /// Points the last geo-sync round knew at the source and had not copied: lost.
    pub lost_points: Vec<PendingPoint>,
    /// Backups that were running at the source when the last round started, by start
    /// time: their points (and any point made after the round) are lost too.
    pub lost_backups_running_since: Vec<String>,
    /// Points the promoted copy holds.
    pub points: usize,
    /// What the `on_storage_failover` hook said, if there is one.
    pub hook: Option<String>,
}

/// What reprotect did.
#[derive(Clone, Debug, Serialize)]
pub struct ReprotectReport {
    pub region: String,
    /// The active repository (the promoted copy).
    pub repository: String,
    /// The old primary, now the copy.
    pub copy: String,
    /// Points only the old primary holds; kept there, not part of the active repository.
    pub divergent_points: Vec<String>,
    /// The first geo-sync round towards the new copy.
    pub sync: SyncReport,
}

fn region_error(region: &str, message: impl Into<String>) -> GeoError {
    GeoError::Region {
        region: region.to_string(),
        message: message.into(),
    }
}

/// True when `storage` answers with a repository in it.
fn answers(storage: &dyn Storage) -> std::result::Result<(), String> {
    match storage.list(ObjectKind::Config) {
        Ok(objects) if !objects.is_empty() => Ok(()),
        Ok(_) => Err(format!("no repository at {}", storage.location())),
        Err(error) => Err(error.to_string()),
    }
}

/// Promotes `region`'s geo copy to be its repository.
pub fn failover(
    config: &Config,
    region_name: &str,
    force: bool,
    base: &StorageSettings,
) -> Result<FailoverReport> {
    let region = config.region(region_name)?;
    let mut state = StateFile::load(&config.state_directory)?;
    let mut region_state = state.region(region_name);
    if !region.redundancy.has_copy() {
        return Err(region_error(
            region_name,
            "its redundancy is 'local': there is no copy to fail over to",
        ));
    }
    if region_state.active == Side::Copy {
        return Err(region_error(
            region_name,
            "it already runs on its copy; reprotect it, or fail back",
        ));
    }
    let places = locations(config, region, &region_state);
    let copy_location = places
        .standby
        .clone()
        .expect("a region with redundancy has a copy");
    let primary =
        lifeboat_storage::open(&places.active, &settings_for(base, &places.active_settings))?;
    if answers(primary.as_ref()).is_ok() && !force {
        return Err(region_error(
            region_name,
            format!(
                "its primary repository {} answers; a storage failover would lose the points not yet copied. \
                 Run 'lifeboat geo-sync' first, or pass --force to fail over anyway",
                places.active
            ),
        ));
    }
    let copy = lifeboat_storage::open(
        &copy_location,
        &settings_for(base, &places.standby_settings),
    )?;
    answers(copy.as_ref()).map_err(|reason| {
        region_error(
            region_name,
            format!("its copy {copy_location} cannot be promoted: {reason}"),
        )
    })?;
    let record = copy_status::read(copy.as_ref())?;
    let points = copy.list(ObjectKind::Point)?.len();

    region_state.active = Side::Copy;
    region_state.epoch += 1;
    region_state.reprotected = false;
    region_state.failed_over_at =
        Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    state
        .regions
        .insert(region_name.to_string(), region_state.clone());
    state.save(&config.state_directory)?;

    let hook = region.on_storage_failover.as_ref().map(|command| {
        run_hook(
            command,
            &[
                ("LIFEBOAT_REGION", region_name),
                ("LIFEBOAT_REPOSITORY", &copy_location),
                ("LIFEBOAT_PREVIOUS_REPOSITORY", &places.active),
                ("LIFEBOAT_EPOCH", &region_state.epoch.to_string()),
            ],
        )
    });
    Ok(FailoverReport {
        region: region_name.to_string(),
        repository: copy_location,
        previous_repository: places.active,
        epoch: region_state.epoch,
        last_sync_time: record.as_ref().map(|r| r.last_sync_time.clone()),
        lost_backups_running_since: record
            .as_ref()
            .map(|r| r.backups_running.clone())
            .unwrap_or_default(),
        lost_points: record.map(|r| r.pending).unwrap_or_default(),
        points,
        hook,
    })
}

/// Runs a hook command with `environment`, bounded by [`HOOK_TIMEOUT`]; returns what happened.
fn run_hook(command: &str, environment: &[(&str, &str)]) -> String {
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(environment.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return format!("could not start '{command}': {error}"),
    };
    let deadline = Instant::now() + HOOK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return format!("'{command}' succeeded"),
            Ok(Some(status)) => return format!("'{command}' failed ({status})"),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return format!(
                    "'{command}' did not finish within {} s and was stopped",
                    HOOK_TIMEOUT.as_secs()
                );
            }
        }
    }
}

/// Makes the old primary of a failed-over region its copy again and copies to it.
/// `active` is the region's active repository, opened (it needs the password).
pub fn reprotect(
    config: &Config,
    region_name: &str,
    active: &Repository,
    base: &StorageSettings,
    options: &SyncOptions,
) -> Result<ReprotectReport> {
    let region = config.region(region_name)?;
    let mut state = StateFile::load(&config.state_directory)?;
    let mut region_state = state.region(region_name);
    if region_state.active != Side::Copy {
        return Err(region_error(
            region_name,
            "it runs on its primary repository; there is nothing to reprotect",
        ));
    }
    let old_primary =
        lifeboat_storage::open(&region.repository, &settings_for(base, &region.storage))?;
    answers(old_primary.as_ref()).map_err(|reason| {
        region_error(
            region_name,
            format!(
                "its old primary {} does not answer yet: {reason}",
                region.repository
            ),
        )
    })?;
    let active_points: HashSet<String> = active
        .storage()
        .list(ObjectKind::Point)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut divergent_points: Vec<String> = old_primary
        .list(ObjectKind::Point)?
        .into_iter()
        .map(|o| o.name)
        .filter(|name| !active_points.contains(name))
        .collect();
    divergent_points.sort();
    let copy = prepare_copy(active, old_primary)?;
    region_state.reprotected = true;
    state.regions.insert(region_name.to_string(), region_state);
    state.save(&config.state_directory)?;
    let sync = geo_sync(active, &copy, options)?;
    Ok(ReprotectReport {
        region: region_name.to_string(),
        repository: active.location(),
        copy: region.repository.clone(),
        divergent_points,
        sync,
    })
}
