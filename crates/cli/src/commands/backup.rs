//! `lifeboat backup`.

use lifeboat_backup::{BackupOptions, backup};

use crate::cli::{BackupArguments, GlobalOptions};
use crate::output::{bytes, print_json, rate};
use crate::progress::Bar;

pub fn run(global: &GlobalOptions, arguments: &BackupArguments) -> anyhow::Result<u8> {
    let repository = crate::repository::open(global, crate::repository::Access::Write)?;
    let mut options = BackupOptions::new(arguments.vm.clone(), arguments.disks.clone());
    options.change_tracking = !arguments.full;
    if let Some(level) = arguments.compression_level {
        options.compression_level = level;
    }
    options.threads = super::threads();
    let report = backup(&repository, &options, &Bar::new(global.json))?;
    if global.json {
        print_json(&report)?;
    } else {
        say!(
            "point {} of VM '{}' at {}{}",
            report.point,
            report.vm,
            report.time,
            report
                .parent
                .as_ref()
                .map(|p| format!(" (incremental from {})", &p[..12]))
                .unwrap_or_default()
        );
        for disk in &report.disks {
            say!(
                "  {:<24} {:<6} {:>10}  read {:>10} ({})",
                disk.name,
                disk.format,
                bytes(disk.virtual_size_bytes),
                bytes(disk.bytes_read),
                disk.mode
            );
        }
        say!(
            "read {}, new {}, stored {} in {:.1} s ({})",
            bytes(report.bytes_read),
            bytes(report.bytes_new),
            bytes(report.bytes_stored),
            report.seconds,
            rate(report.bytes_read, report.seconds)
        );
    }
    Ok(0)
}
