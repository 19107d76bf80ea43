//! `lifeboat restore`.

use lifeboat_backup::{RestoreOptions, restore};
use lifeboat_disk::Format;

use crate::cli::{FormatChoice, GlobalOptions, RestoreArguments};
use crate::output::{bytes, print_json, rate};
use crate::progress::Bar;

pub fn run(global: &GlobalOptions, arguments: &RestoreArguments) -> anyhow::Result<u8> {
    let repository = crate::repository::open(global, crate::repository::Access::Read)?;
    let manifest = super::named_point(
        &repository,
        arguments.point.as_deref(),
        arguments.vm.as_deref(),
        arguments.at,
    )?;
    let format = arguments.format.map(|choice| match choice {
        FormatChoice::Raw => Format::Raw,
        FormatChoice::Qcow2 => Format::Qcow2,
        FormatChoice::Vhd => Format::Vhd,
        FormatChoice::Vhdx => Format::Vhdx,
    });
    let options = RestoreOptions {
        target_directory: arguments.target.clone(),
        format,
        threads: super::threads(),
    };
    let report = restore(&repository, &manifest, &options, &Bar::new(global.json))?;
    if global.json {
        print_json(&report)?;
    } else {
        say!("restored point {} of VM '{}'", report.point, report.vm);
        for disk in &report.disks {
            say!(
                "  {} ({}, {})",
                disk.path,
                disk.format,
                bytes(disk.virtual_size_bytes)
            );
        }
        say!(
            "wrote {} in {:.1} s ({})",
            bytes(report.bytes_written),
            report.seconds,
            rate(report.bytes_written, report.seconds)
        );
    }
    Ok(0)
}
