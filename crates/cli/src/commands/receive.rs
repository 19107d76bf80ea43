//! `lifeboat receive`: apply a group's cuts to replica disks and make points from them.

use std::time::{Duration, Instant};

use lifeboat_replication::receive::{ReceiveReport, Receiver};

use crate::cli::{GlobalOptions, ReceiveArguments};
use crate::output::{bytes, print_json_line};
use crate::repository::{Access, open};

fn show(global: &GlobalOptions, report: &ReceiveReport, always: bool) -> anyhow::Result<()> {
    if global.json {
        return print_json_line(report);
    }
    if report.cuts == 0 && !always {
        return Ok(());
    }
    println!(
        "group '{}': applied {} cuts ({}), made {} points; replicas hold every write up to {}{}",
        report.group,
        report.cuts,
        bytes(report.bytes_applied),
        report.points.len(),
        report.applied_time.as_deref().unwrap_or("nothing yet"),
        if report.consistent {
            ""
        } else {
            " (resync in progress: not consistent yet)"
        }
    );
    Ok(())
}

pub fn run(global: &GlobalOptions, arguments: &ReceiveArguments) -> anyhow::Result<u8> {
    let repository = open(global, Access::Write)?;
    let mut receiver = Receiver::open(&repository, &arguments.group, &arguments.replicas)?;
    let interval = Duration::from_secs_f64(arguments.interval.max(0.05));
    loop {
        let started = Instant::now();
        match receiver.receive() {
            Ok(report) => show(global, &report, !arguments.follow)?,
            Err(error) if arguments.follow => {
                eprintln!("group '{}': round failed: {error}", arguments.group)
            }
            Err(error) => return Err(error.into()),
        }
        if !arguments.follow {
            return Ok(0);
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}
