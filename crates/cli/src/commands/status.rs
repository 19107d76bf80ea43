//! `lifeboat status`: every region's repositories, how far the geo copy is behind, and the
//! last sync time.

use lifeboat_geo::{StateFile, region_status};
use serde_json::json;

use crate::cli::{GlobalOptions, StatusArguments};
use crate::output::{bytes, print_json};
use crate::repository::{base_settings, required_config};

pub fn run(global: &GlobalOptions, _arguments: &StatusArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let state = StateFile::load(&config.state_directory)?;
    let base = base_settings();
    let mut regions = Vec::new();
    for region in &config.regions {
        if global
            .region
            .as_ref()
            .is_some_and(|name| name != &region.name)
        {
            continue;
        }
        regions.push(region_status(
            &config,
            region,
            &state.region(&region.name),
            &base,
        ));
    }
    if let Some(name) = &global.region {
        config.region(name)?;
    }
    if global.json {
        print_json(&json!({ "regions": regions }))?;
        return Ok(0);
    }
    for region in &regions {
        println!(
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
            None => println!("  no geo copy"),
            Some(copy) => {
                println!(
                    "  copy {}: {}",
                    copy.location,
                    match &copy.error {
                        None => "reachable".to_string(),
                        Some(error) => format!("UNREACHABLE: {error}"),
                    }
                );
                if let (Some(points), Some(behind)) = (copy.points_behind, copy.bytes_behind) {
                    println!("  behind: {points} points, {}", bytes(behind));
                }
                match (&copy.last_sync_time, copy.seconds_behind) {
                    (Some(time), Some(seconds)) => {
                        println!(
                            "  last sync time: {time} ({seconds:.1} s ago): a storage failover now loses what came after"
                        )
                    }
                    _ => println!("  never synced: run 'lifeboat geo-sync'"),
                }
            }
        }
    }
    Ok(0)
}
