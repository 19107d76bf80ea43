//! `lifeboat points`.

use serde::Serialize;

use crate::cli::{GlobalOptions, PointsArguments};
use crate::output::{bytes, print_json};

#[derive(Serialize)]
struct DiskLine<'a> {
    name: &'a str,
    format: &'a str,
    virtual_size_bytes: u64,
    allocated_bytes: u64,
}

#[derive(Serialize)]
struct PointLine<'a> {
    point: &'a str,
    vm: &'a str,
    time: &'a str,
    consistency: &'a str,
    parent: Option<&'a str>,
    host: &'a str,
    disks: Vec<DiskLine<'a>>,
    bytes_read: u64,
    bytes_new: u64,
    bytes_stored: u64,
}

pub fn run(global: &GlobalOptions, arguments: &PointsArguments) -> anyhow::Result<u8> {
    let repository = crate::repository::open(global, crate::repository::Access::Read)?;
    let list = repository.list_points()?;
    for damaged in &list.damaged {
        tell!(
            "warning: point manifest {} is unreadable ({}); run 'lifeboat verify'",
            damaged.name,
            damaged.reason
        );
    }
    let points: Vec<PointLine> = list
        .points
        .iter()
        .filter(|p| arguments.vm.as_ref().is_none_or(|vm| &p.vm == vm))
        .map(|p| PointLine {
            point: &p.point,
            vm: &p.vm,
            time: &p.time,
            consistency: p.consistency.as_str(),
            parent: p.parent.as_deref(),
            host: &p.host,
            disks: p
                .disks
                .iter()
                .map(|d| DiskLine {
                    name: &d.name,
                    format: &d.format,
                    virtual_size_bytes: d.virtual_size_bytes,
                    allocated_bytes: d.allocated_bytes,
                })
                .collect(),
            bytes_read: p.statistics.bytes_read,
            bytes_new: p.statistics.bytes_new,
            bytes_stored: p.statistics.bytes_stored,
        })
        .collect();
    if global.json {
        print_json(&points)?;
        return Ok(0);
    }
    if points.is_empty() {
        say!("no points");
        return Ok(0);
    }
    say!(
        "{:<12} {:<16} {:<24} {:<5} disks",
        "point",
        "vm",
        "time",
        "kind"
    );
    for point in &points {
        let disks: Vec<String> = point
            .disks
            .iter()
            .map(|d| format!("{} ({}, {})", d.name, d.format, bytes(d.virtual_size_bytes)))
            .collect();
        say!(
            "{:<12} {:<16} {:<24} {:<5} {}",
            &point.point[..12],
            point.vm,
            point.time,
            point.consistency,
            disks.join(", ")
        );
    }
    Ok(0)
}
