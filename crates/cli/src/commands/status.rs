//! `lifeboat status`: every region's repositories, how far the geo copy is behind, the last
//! sync time, and the RPO of every replicated group and VM.

use lifeboat_geo::status::settings_for;
use lifeboat_geo::{RegionStatus, StateFile, locations, region_status};
use lifeboat_replication::status::{GroupStatus, group_status, read_all};
use serde::Serialize;
use serde_json::json;

use crate::cli::{GlobalOptions, StatusArguments};
use crate::output::{bytes, print_json};
use crate::repository::{base_settings, config, open_location, selected_regions};

/// The replication groups found in one repository.
#[derive(Debug, Serialize)]
struct ReplicationStatus {
    /// The region whose repository this is, when known.
    region: Option<String>,
    repository: String,
    error: Option<String>,
    groups: Vec<GroupStatus>,
}

fn replication(
    global: &GlobalOptions,
    region: Option<String>,
    location: &str,
    settings: &lifeboat_storage::StorageSettings,
) -> ReplicationStatus {
    let groups = open_location(global, location, settings).and_then(|repository| {
        let records = read_all(repository.storage().as_ref(), repository.crypto())?;
        let now = chrono::Utc::now();
        Ok(records
            .iter()
            .map(|(group, records)| group_status(group, records, now))
            .collect::<Vec<_>>())
    });
    let (groups, error) = match groups {
        Ok(groups) => (groups, None),
        Err(error) => (Vec::new(), Some(format!("{error:#}"))),
    };
    ReplicationStatus {
        region,
        repository: location.to_string(),
        error,
        groups,
    }
}

pub fn run(global: &GlobalOptions, _arguments: &StatusArguments) -> anyhow::Result<u8> {
    let config = config(global)?;
    let base = base_settings();
    let mut regions: Vec<RegionStatus> = Vec::new();
    let mut replicated = Vec::new();
    if let Some(config) = &config {
        if let Some(name) = &global.region {
            config.region(name)?;
        }
        let state = StateFile::load(&config.state_directory)?;
        for region in selected_regions(config, global) {
            let region_state = state.region(&region.name);
            let status = region_status(config, region, &region_state, &base);
            if global.repository.is_none() && status.reachable {
                let places = locations(config, region, &region_state);
                replicated.push(replication(
                    global,
                    Some(region.name.clone()),
                    &places.active,
                    &settings_for(&base, &places.active_settings),
                ));
            }
            regions.push(status);
        }
    }
    if let Some(location) = &global.repository {
        replicated.push(replication(global, None, location, &base));
    }
    if config.is_none() && global.repository.is_none() {
        anyhow::bail!(
            "nothing to show: pass --repo LOCATION (or LIFEBOAT_REPO), or --config FILE (or create ./lifeboat.toml)"
        );
    }
    let alerts: Vec<String> = replicated
        .iter()
        .flat_map(|r| r.groups.iter())
        .filter(|g| g.alert)
        .map(|g| g.group.clone())
        .collect();
    if global.json {
        print_json(&json!({
            "regions": regions,
            "replication": replicated,
            "alerts": alerts,
        }))?;
        return Ok(0);
    }
    for region in &regions {
        show_region(region);
    }
    for repository in &replicated {
        show_replication(repository);
    }
    Ok(0)
}

fn show_region(region: &RegionStatus) {
    say!(
        "region {} ({}, active: {:?}, epoch {}): {} {}",
        region.name,
        region.redundancy,
        region.active,
        region.epoch,
        region.repository,
        match &region.error {
            None => format!("reachable, {} points", region.points.unwrap_or(0)),
            Some(error) => format!("UNREACHABLE: {error}"),
        }
    );
    match &region.copy {
        None => say!("  no geo copy"),
        Some(copy) => {
            say!(
                "  copy {}: {}",
                copy.location,
                match &copy.error {
                    None => "reachable".to_string(),
                    Some(error) => format!("UNREACHABLE: {error}"),
                }
            );
            if let (Some(points), Some(behind)) = (copy.points_behind, copy.bytes_behind) {
                say!("  behind: {points} points, {}", bytes(behind));
            }
            match (&copy.last_sync_time, copy.seconds_behind) {
                (Some(time), Some(seconds)) => {
                    say!(
                        "  last sync time: {time} ({seconds:.1} s ago): a storage failover now loses what came after"
                    );
                    if !copy.backups_running.is_empty() {
                        say!(
                            "  (the last round started beside {} running backup(s), the oldest since {}: their points are not in the copy)",
                            copy.backups_running.len(),
                            copy.backups_running[0]
                        );
                    }
                }
                _ => say!("  never synced: run 'lifeboat geo-sync'"),
            }
        }
    }
}

fn seconds(value: Option<f64>) -> String {
    value
        .map(|s| format!("{s:.1} s"))
        .unwrap_or_else(|| "unknown".to_string())
}

fn show_replication(repository: &ReplicationStatus) {
    if let Some(error) = &repository.error {
        say!(
            "replication in {}: cannot read ({error})",
            repository.repository
        );
        return;
    }
    for group in &repository.groups {
        say!(
            "group {} in {}: RPO {}{} (threshold {}; latest committed cut {} ago), {} writes / {} pending, {} resync, shipping {}/s, sender seen {} ago",
            group.group,
            repository.repository,
            seconds(group.rpo_seconds),
            if group.alert { " ALERT" } else { "" },
            seconds(group.rpo_threshold_seconds),
            seconds(group.rpo_latest_seconds),
            group.pending_writes.unwrap_or(0),
            bytes(group.pending_bytes.unwrap_or(0)),
            bytes(group.resync_pending_bytes.unwrap_or(0)),
            bytes(group.ship_bytes_per_second.unwrap_or(0.0) as u64),
            seconds(group.sender_seen_seconds_ago),
        );
        for vm in &group.vms {
            say!(
                "  vm {}: RPO {}{}, point {}, {} writes / {} pending, writing {}/s",
                vm.vm,
                seconds(vm.rpo_seconds),
                if vm.alert { " ALERT" } else { "" },
                vm.point.as_deref().unwrap_or("none yet"),
                vm.pending_writes.unwrap_or(0),
                bytes(vm.pending_bytes.unwrap_or(0)),
                bytes(vm.write_bytes_per_second.unwrap_or(0.0) as u64),
            );
        }
    }
}
