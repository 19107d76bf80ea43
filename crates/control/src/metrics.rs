//! Prometheus lines about jobs, decided without I/O: how many by schedule and state, and
//! each schedule's newest finished job: its duration and, for jobs that move bytes, its
//! throughput. A job asked for through the API is labelled `run:<command>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::store::Job;

/// The label of `job`: its schedule, or `run:` and its command's name as parsed
/// (`run:plan continue`).
fn label(job: &Job) -> String {
    if !job.schedule.is_empty() {
        return job.schedule.clone();
    }
    let command = job
        .command
        .as_deref()
        .and_then(|command| lifeboat_operations::JobCommand::parse(command).ok())
        .map_or("command", |command| command.name);
    format!("run:{command}")
}

fn family(text: &mut String, name: &str, help: &str) {
    let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n");
}

/// Metrics of `jobs` (newest first).
pub fn jobs(jobs: &[Job]) -> String {
    let mut text = String::new();
    family(
        &mut text,
        "lifeboat_jobs",
        "Recent jobs by schedule and state.",
    );
    let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for job in jobs {
        *counts.entry((label(job), job.state.as_str())).or_default() += 1;
    }
    for ((schedule, state), count) in counts {
        let _ = writeln!(
            text,
            "lifeboat_jobs{{schedule=\"{schedule}\",state=\"{state}\"}} {count}"
        );
    }
    let mut durations = String::new();
    let mut throughputs = String::new();
    let mut seen = BTreeSet::new();
    for job in jobs {
        let (Some(started), Some(finished)) = (job.started_ms, job.finished_ms) else {
            continue;
        };
        let schedule = label(job);
        if !seen.insert(schedule.clone()) {
            continue;
        }
        let seconds = (finished - started).max(1) as f64 / 1000.0;
        let _ = writeln!(
            durations,
            "lifeboat_job_last_duration_seconds{{schedule=\"{schedule}\"}} {seconds}"
        );
        if let Some(progress) = job.progress.as_ref().filter(|p| p.unit == "bytes") {
            let _ = writeln!(
                throughputs,
                "lifeboat_job_last_bytes_per_second{{schedule=\"{schedule}\"}} {}",
                progress.done as f64 / seconds
            );
        }
    }
    family(
        &mut text,
        "lifeboat_job_last_duration_seconds",
        "Duration of each schedule's newest finished job.",
    );
    text.push_str(&durations);
    family(
        &mut text,
        "lifeboat_job_last_bytes_per_second",
        "Bytes per second of each schedule's newest finished job that moves data.",
    );
    text.push_str(&throughputs);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobProgress;

    fn job(schedule: &str, command: Option<&[&str]>, state: &str, ms: i64, bytes: u64) -> Job {
        Job {
            id: format!("{schedule}{ms}"),
            schedule: schedule.to_string(),
            due_ms: 0,
            state: state.to_string(),
            node: None,
            attempt: 1,
            created_ms: 0,
            started_ms: Some(1_000),
            heartbeat_ms: None,
            finished_ms: Some(1_000 + ms),
            output: None,
            command: command.map(|c| c.iter().map(|w| w.to_string()).collect()),
            actor: None,
            exit_code: Some(0),
            progress: (bytes > 0).then(|| JobProgress {
                done: bytes,
                total: bytes,
                unit: "bytes".to_string(),
                message: "backup".to_string(),
                steps: None,
            }),
            errors: None,
        }
    }

    #[test]
    fn the_newest_job_of_each_schedule_gives_duration_and_throughput() {
        let jobs = [
            job("nightly", None, "succeeded", 2_000, 400 << 20),
            job("nightly", None, "succeeded", 8_000, 1 << 20),
            job("", Some(&["--region", "east", "points"]), "failed", 500, 0),
        ];
        let text = super::jobs(&jobs);
        assert!(text.contains("lifeboat_jobs{schedule=\"nightly\",state=\"succeeded\"} 2"));
        assert!(text.contains("lifeboat_jobs{schedule=\"run:points\",state=\"failed\"} 1"));
        assert!(text.contains("lifeboat_job_last_duration_seconds{schedule=\"nightly\"} 2\n"));
        assert!(text.contains(&format!(
            "lifeboat_job_last_bytes_per_second{{schedule=\"nightly\"}} {}\n",
            (200u64 << 20) as f64
        )));
        assert!(!text.contains("bytes_per_second{schedule=\"run:points\""));
    }
}
