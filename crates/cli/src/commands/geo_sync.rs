//! `lifeboat geo-sync`: copy whole points to the geo copy, once or continuously.

use std::time::Duration;

use anyhow::bail;
use lifeboat_geo::{
    StateFile, SyncOptions, SyncReport, geo_sync, locations, prepare_copy, status::settings_for,
};
use lifeboat_repository::Repository;

use crate::EXIT_DAMAGE;
use crate::cli::{GeoSyncArguments, GlobalOptions};
use crate::output::{bytes, print_json_line};
use crate::repository::{
    Access, base_settings, open, open_location, required_config, selected_regions,
};

/// One source and where it is copied.
struct Pair {
    label: String,
    source: Repository,
    copy: Repository,
}

fn pairs(global: &GlobalOptions, arguments: &GeoSyncArguments) -> anyhow::Result<Vec<Pair>> {
    let base = base_settings();
    if let Some(destination) = &arguments.to {
        let source = open(global, Access::Read)?;
        let copy = prepare_copy(&source, lifeboat_storage::open(destination, &base)?)?;
        return Ok(vec![Pair {
            label: source.location(),
            source,
            copy,
        }]);
    }
    let config = required_config(global)?;
    let state = StateFile::load(&config.state_directory)?;
    let mut pairs = Vec::new();
    for region in selected_regions(&config, global) {
        let places = locations(&config, region, &state.region(&region.name));
        let Some(standby) = places.standby else {
            if global.region.is_some() {
                bail!(
                    "region '{}' has no geo copy to sync to (redundancy '{}', or failed over and not reprotected)",
                    region.name,
                    region.redundancy.as_str()
                );
            }
            continue;
        };
        let source = open_location(
            global,
            &places.active,
            &settings_for(&base, &places.active_settings),
        )?;
        let copy = prepare_copy(
            &source,
            lifeboat_storage::open(&standby, &settings_for(&base, &places.standby_settings))?,
        )?;
        pairs.push(Pair {
            label: format!("region '{}'", region.name),
            source,
            copy,
        });
    }
    if pairs.is_empty() {
        bail!(
            "no region of {} has a geo copy (redundancy 'geo' or 'geo-read')",
            config.path.display()
        );
    }
    Ok(pairs)
}

fn show(global: &GlobalOptions, label: &str, report: &SyncReport) -> anyhow::Result<()> {
    if global.json {
        return print_json_line(report);
    }
    say!(
        "{label}: copied {} points ({} packs, {}) in {:.1} s; last sync time {}",
        report.points_copied.len(),
        report.packs_copied,
        bytes(report.bytes_copied),
        report.seconds,
        report.last_sync_time
    );
    for pending in &report.pending {
        say!(
            "  not copied: point {} of VM '{}' at {}: {}",
            pending.point,
            pending.vm,
            pending.time,
            pending.reason
        );
    }
    for problem in &report.problems {
        say!("  problem: {problem}");
    }
    Ok(())
}

pub fn run(global: &GlobalOptions, arguments: &GeoSyncArguments) -> anyhow::Result<u8> {
    let pairs = pairs(global, arguments)?;
    let options = SyncOptions {
        threads: arguments.threads,
    };
    loop {
        let mut damaged = false;
        for pair in &pairs {
            match geo_sync(&pair.source, &pair.copy, &options) {
                Ok(report) => {
                    damaged |= !report.problems.is_empty();
                    show(global, &pair.label, &report)?;
                }
                // In follow mode a failed round is reported and the next one tries again.
                Err(error) if arguments.follow => {
                    tell!("{}: round failed: {error}", pair.label)
                }
                Err(error) => return Err(error.into()),
            }
        }
        if !arguments.follow {
            return Ok(if damaged { EXIT_DAMAGE } else { 0 });
        }
        std::thread::sleep(Duration::from_secs_f64(arguments.interval.max(0.05)));
    }
}
