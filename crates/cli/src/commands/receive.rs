//! `lifeboat receive`: apply a group's cuts to replica disks and make points from them.

use std::time::{Duration, Instant};

use lifeboat_backup::RetentionPolicy;
use lifeboat_replication::receive::{History, ReceiveReport, Receiver};

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
    say!(
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
    let mut receiver = Receiver::open(&repository, &arguments.group, &arguments.replicas)?
        .with_rpo_threshold(arguments.rpo_threshold)
        .with_history((!arguments.keep_all).then(|| History {
            policy: RetentionPolicy {
                keep_within_seconds: Some(arguments.keep_within),
                keep_hourly: arguments.keep_hourly,
                keep_daily: arguments.keep_daily,
                ..RetentionPolicy::default()
            },
            interval: Duration::from_secs(arguments.thin_every),
        }));
    // The digest is for a capture's first sync: published before the first cut, removed
    // once one is applied.
    let mut digest_published = false;
    if arguments.digest {
        if arguments.replicas.join("state.json").exists() {
            anyhow::bail!(
                "{} already receives group '{}': a digest describes replicas before their first cut",
                arguments.replicas.display(),
                arguments.group
            );
        }
        digest_published = true;
        let disks = lifeboat_replication::digest::digest_directory(
            repository.crypto(),
            &arguments.replicas,
        )?;
        lifeboat_replication::digest::write(
            repository.storage().as_ref(),
            repository.crypto(),
            &arguments.group,
            &disks,
        )?;
        tell!(
            "group '{}': digest of {} replica disk(s) published; the capture sends only the blocks that differ",
            arguments.group,
            disks.len()
        );
    }
    let interval = Duration::from_secs_f64(arguments.interval.max(0.05));
    let mut alerted: Option<Instant> = None;
    loop {
        let started = Instant::now();
        match receiver.receive() {
            Ok(report) => {
                if digest_published && report.cuts > 0 {
                    lifeboat_replication::digest::remove(
                        repository.storage().as_ref(),
                        repository.crypto(),
                        &arguments.group,
                    )?;
                    digest_published = false;
                }
                show(global, &report, !arguments.follow)?;
                // One alert line per RPO threshold while it lasts.
                let quiet = Duration::from_secs_f64(arguments.rpo_threshold.max(1.0));
                if report.alert && alerted.is_none_or(|at| at.elapsed() >= quiet) {
                    tell!(
                        "ALERT: group '{}': RPO {} above the threshold of {} s",
                        arguments.group,
                        report
                            .rpo_seconds
                            .map(|rpo| format!("{rpo:.1} s"))
                            .unwrap_or_else(|| "unknown (no point yet)".to_string()),
                        arguments.rpo_threshold
                    );
                    alerted = Some(Instant::now());
                } else if !report.alert {
                    alerted = None;
                }
            }
            Err(error) if arguments.follow => {
                tell!("group '{}': round failed: {error}", arguments.group)
            }
            Err(error) => return Err(error.into()),
        }
        if !arguments.follow {
            return Ok(0);
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}
