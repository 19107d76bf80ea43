//! `lifeboat verify`.

use lifeboat_backup::verify;

use crate::EXIT_DAMAGE;
use crate::cli::{GlobalOptions, VerifyArguments};
use crate::output::{bytes, print_json};
use crate::progress::Bar;

pub fn run(global: &GlobalOptions, arguments: &VerifyArguments) -> anyhow::Result<u8> {
    let repository = crate::repository::open(global, crate::repository::Access::Write)?;
    let report = verify(
        &repository,
        arguments.read_data,
        super::threads(),
        &Bar::new(global.json),
    )?;
    let code = if report.damage.is_empty() {
        0
    } else {
        EXIT_DAMAGE
    };
    if global.json {
        print_json(&report)?;
        return Ok(code);
    }
    say!(
        "checked {} points ({} disks), {} chunks, {} packs{}",
        report.points,
        report.disks,
        report.chunks,
        report.packs,
        if report.read_data {
            format!(", read {}", bytes(report.bytes_read))
        } else {
            String::new()
        }
    );
    if report.quarantined_copies > 0 {
        say!(
            "{} quarantined copies are not needed: other copies are healthy",
            report.quarantined_copies
        );
    }
    if report.damage.is_empty() {
        say!("no damage found");
        return Ok(0);
    }
    say!("DAMAGE FOUND ({} findings):", report.damage.len());
    for damage in &report.damage {
        let place = match (&damage.pack, damage.offset) {
            (Some(pack), Some(offset)) => format!(" in pack {pack} at offset {offset}"),
            _ => String::new(),
        };
        say!(
            "  {} {}{}: {}",
            damage.kind,
            damage.object,
            place,
            damage.detail
        );
        if !damage.points.is_empty() {
            let points: Vec<String> = damage
                .points
                .iter()
                .map(|p| format!("{} (VM '{}')", p.point, p.vm))
                .collect();
            say!("    affects points: {}", points.join(", "));
        }
    }
    say!("damaged copies are quarantined; the next backup of the same data stores a healthy copy");
    Ok(code)
}
