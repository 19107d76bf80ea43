//! `lifeboat region failover` and `lifeboat region reprotect`.

use anyhow::Context;
use lifeboat_geo::{StateFile, SyncOptions, failover, locations, reprotect, status::settings_for};

use crate::cli::{GlobalOptions, RegionCommand};
use crate::output::print_json;
use crate::repository::{base_settings, open_location, required_config};

pub fn run(global: &GlobalOptions, command: &RegionCommand) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let name = global
        .region
        .as_deref()
        .context("which region? pass --region NAME")?;
    let base = base_settings();
    match command {
        RegionCommand::Failover(arguments) => {
            let report = failover(&config, name, arguments.force, &base)?;
            if global.json {
                print_json(&report)?;
                return Ok(0);
            }
            say!(
                "region {name} now uses {} (epoch {}), promoted from its geo copy",
                report.repository,
                report.epoch
            );
            say!(
                "its former primary {} is no longer used",
                report.previous_repository
            );
            match &report.last_sync_time {
                Some(time) => say!("points made after {time} are lost"),
                None => say!("the copy was never synced completely: points not in it are lost"),
            }
            for lost in &report.lost_points {
                say!(
                    "  lost: point {} of VM '{}' at {}",
                    lost.point,
                    lost.vm,
                    lost.time
                );
            }
            for since in &report.lost_backups_running_since {
                say!("  lost: the point of the backup that was running since {since}");
            }
            if let Some(hook) = &report.hook {
                say!("on_storage_failover: {hook}");
            }
            say!("when the old primary is back, run 'lifeboat region reprotect --region {name}'");
        }
        RegionCommand::Reprotect(arguments) => {
            let region = config.region(name)?;
            let state = StateFile::load(&config.state_directory)?.region(name);
            let places = locations(&config, region, &state);
            let active = open_location(
                global,
                &places.active,
                &settings_for(&base, &places.active_settings),
            )?;
            let options = SyncOptions {
                threads: arguments.threads,
            };
            let report = reprotect(&config, name, &active, &base, &options)?;
            if global.json {
                print_json(&report)?;
                return Ok(0);
            }
            say!(
                "region {name}: {} is its geo copy again; copied {} points to it",
                report.copy,
                report.sync.points_copied.len()
            );
            for point in &report.divergent_points {
                say!(
                    "  divergent: point {point} exists only in the old primary (made after the last sync); kept there"
                );
            }
        }
    }
    Ok(0)
}
