//! `lifeboat prune`.

use lifeboat_backup::prune;

use crate::cli::{GlobalOptions, PruneArguments};
use crate::output::{bytes, print_json};

pub fn run(global: &GlobalOptions, _arguments: &PruneArguments) -> anyhow::Result<u8> {
    let repository = crate::repository::open(global, crate::repository::Access::Write)?;
    let report = prune(&repository)?;
    if global.json {
        print_json(&report)?;
        return Ok(0);
    }
    say!(
        "deleted {} packs ({}), repacked {} ({}); {} packs remain for {} points",
        report.packs_deleted,
        bytes(report.bytes_freed),
        report.packs_repacked,
        bytes(report.bytes_repacked),
        report.packs,
        report.points
    );
    if report.packs_pending > 0 {
        say!(
            "{} packs wait for running writers before deletion ({}); the next prune deletes them",
            report.packs_pending,
            report.waiting_for.join("; ")
        );
    }
    Ok(0)
}
