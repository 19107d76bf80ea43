//! `lifeboat forget`.

use lifeboat_backup::{RetentionPolicy, forget};

use crate::cli::{ForgetArguments, GlobalOptions};
use crate::output::print_json;

pub fn run(global: &GlobalOptions, arguments: &ForgetArguments) -> anyhow::Result<u8> {
    let repository = crate::repository::open(global, crate::repository::Access::Write)?;
    let policy = RetentionPolicy {
        keep_last: arguments.keep_last,
        keep_hourly: arguments.keep_hourly,
        keep_daily: arguments.keep_daily,
        keep_weekly: arguments.keep_weekly,
        keep_monthly: arguments.keep_monthly,
        keep_yearly: arguments.keep_yearly,
        keep_within_seconds: arguments.keep_within,
    };
    let report = forget(&repository, &arguments.vm, &policy, arguments.dry_run)?;
    if global.json {
        print_json(&report)?;
        return Ok(0);
    }
    for decision in &report.kept {
        say!(
            "keep   {} {} ({})",
            &decision.point[..12],
            decision.time,
            decision.reasons.join(", ")
        );
    }
    for decision in &report.removed {
        say!(
            "{} {} {}",
            if report.dry_run {
                "would remove"
            } else {
                "remove"
            },
            &decision.point[..12],
            decision.time
        );
    }
    say!(
        "{} kept, {} {}; run 'lifeboat prune' to free their data",
        report.kept.len(),
        report.removed.len(),
        if report.dry_run {
            "would be removed"
        } else {
            "removed"
        }
    );
    Ok(0)
}
