//! The scheduler and job runner of `lifeboat serve`.
//!
//! Every half second each node queues the current due run of every schedule (once across
//! all nodes: the store's unique key), queues again the jobs of nodes that stopped
//! refreshing them, and, when it runs nothing, claims the oldest queued job. A job runs the
//! schedule's `lifeboat` command line as a child process; its heartbeat is refreshed every
//! second, which is also when a cancellation is noticed (the child is killed).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lifeboat_config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::probes::now_ms;
use crate::store::{Job, JobEnd, JobProgress, Store};

/// A job whose heartbeat is older than this has lost its node.
pub const STALE_MS: i64 = 5_000;
/// Jobs one node runs at once.
const PARALLEL_JOBS: usize = 2;
/// Standard output kept per job (what a remote `lifeboat` prints).
const OUTPUT_BYTES: usize = 4 << 20;
/// Standard error kept per job.
const ERRORS_BYTES: usize = 4_000;
/// How a job's progress lines start (see the CLI's `progress.rs`).
pub const PROGRESS_PREFIX: &str = "lifeboat-progress ";

/// How this node runs jobs.
#[derive(Clone)]
pub struct JobRunner {
    pub node: String,
    /// The `lifeboat` executable and the arguments every job gets first (`--config FILE`,
    /// `--password-file FILE`).
    pub executable: PathBuf,
    pub arguments: Vec<String>,
}

/// Runs the scheduler until the process ends.
pub async fn run(
    store: Store,
    config: Arc<Config>,
    runner: JobRunner,
    wake: Arc<tokio::sync::Notify>,
) {
    let running = Arc::new(AtomicUsize::new(0));
    loop {
        let now = now_ms();
        for schedule in &config.schedules {
            if let Err(error) = store
                .enqueue(&schedule.name, schedule.due_at_or_before(now), now)
                .await
            {
                tracing::warn!(%error, "cannot queue a job");
            }
        }
        match store.requeue_stale(now - STALE_MS).await {
            Ok(0) => {}
            Ok(count) => tell!("{count} job(s) of a node that stopped queued again"),
            Err(error) => tracing::warn!(%error, "cannot requeue jobs"),
        }
        while running.load(Ordering::SeqCst) < PARALLEL_JOBS {
            match store.claim(&runner.node, now_ms()).await {
                Ok(Some(job)) => {
                    running.fetch_add(1, Ordering::SeqCst);
                    let (store, config, runner, running) = (
                        store.clone(),
                        Arc::clone(&config),
                        runner.clone(),
                        Arc::clone(&running),
                    );
                    tokio::spawn(async move {
                        run_job(&store, &config, &runner, job).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim a job");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = wake.notified() => {}
        }
    }
}

/// The last `limit` bytes of `text` (at a character boundary), trimmed.
fn tail(text: &str, limit: usize) -> String {
    let start = text.len().saturating_sub(limit);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

/// The command line a job runs: its schedule's, or the one asked for through the API.
fn command_of(config: &Config, job: &Job) -> Result<Vec<String>, String> {
    if let Some(command) = &job.command {
        return Ok(command.clone());
    }
    config
        .schedules
        .iter()
        .find(|s| s.name == job.schedule)
        .map(|schedule| schedule.command.clone())
        .ok_or_else(|| format!("schedule '{}' is no longer configured", job.schedule))
}

/// What a job's standard error said: its newest progress, and its other lines.
#[derive(Default)]
struct Reported {
    progress: Option<JobProgress>,
    changed: bool,
    errors: String,
}

impl Reported {
    fn line(&mut self, line: &str) {
        match line.strip_prefix(PROGRESS_PREFIX) {
            Some(json) => {
                if let Ok(progress) = serde_json::from_str(json) {
                    self.progress = Some(progress);
                    self.changed = true;
                }
            }
            None => {
                self.errors.push_str(line);
                self.errors.push('\n');
                if self.errors.len() > 2 * ERRORS_BYTES {
                    self.errors = tail(&self.errors, ERRORS_BYTES);
                    self.errors.push('\n');
                }
            }
        }
    }
}

async fn run_job(store: &Store, config: &Config, runner: &JobRunner, job: Job) {
    let (id, attempt) = (job.id.clone(), job.attempt);
    let finish = |end: JobEnd| {
        let id = id.clone();
        async move {
            if let Err(error) = store
                .finish(&id, &runner.node, attempt, &end, now_ms())
                .await
            {
                tracing::warn!(%error, "cannot record the end of a job");
            }
        }
    };
    let command = match command_of(config, &job) {
        Ok(command) => command,
        Err(reason) => {
            finish(JobEnd {
                state: "failed",
                errors: reason,
                ..JobEnd::default()
            })
            .await;
            return;
        }
    };
    let label = if job.schedule.is_empty() {
        command.join(" ")
    } else {
        job.schedule.clone()
    };
    tell!("job {} ({label}) started on {}", job.id, runner.node);
    let mut child = tokio::process::Command::new(&runner.executable);
    // The child dies with this node, so a killed node leaves no job running behind the one
    // that takes it over; a node that died before the prctl sends no signal, so the job
    // stops at once instead.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe, and the error allocates nothing.
    unsafe {
        child.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = child
        .args(lifeboat_operations::child_arguments(
            &runner.arguments,
            &command,
        ))
        .env("LIFEBOAT_PROGRESS", "lines")
        .env(
            "LIFEBOAT_ACTOR",
            job.actor
                .clone()
                .unwrap_or_else(|| format!("schedule:{}", job.schedule)),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            finish(JobEnd {
                state: "failed",
                errors: format!("cannot start {}: {error}", runner.executable.display()),
                ..JobEnd::default()
            })
            .await;
            return;
        }
    };
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let output = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    });
    let reported = Arc::new(std::sync::Mutex::new(Reported::default()));
    let reader = {
        let reported = Arc::clone(&reported);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                reported.lock().expect("never poisoned").line(&line);
            }
        })
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                let progress = {
                    let mut reported = reported.lock().expect("never poisoned");
                    std::mem::take(&mut reported.changed).then(|| reported.progress.clone()).flatten()
                };
                match store.heartbeat(&job.id, &runner.node, job.attempt, now_ms(), progress.as_ref()).await {
                    Ok(Some(state)) if state == "cancel-requested" => {
                        let _ = child.kill().await;
                        finish(JobEnd {
                            state: "cancelled",
                            errors: "cancelled while running".to_string(),
                            ..JobEnd::default()
                        })
                        .await;
                        tell!("job {} ({label}) cancelled", job.id);
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // Another node runs it now: this copy must not go on beside it.
                        let _ = child.kill().await;
                        tell!(
                            "job {} ({label}) stopped on {}: its heartbeat went stale and it was queued again",
                            job.id, runner.node
                        );
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "cannot refresh a job"),
                }
            }
        }
    };
    let output = output.await.unwrap_or_default();
    let _ = reader.await;
    let reported = std::mem::take(&mut *reported.lock().expect("never poisoned"));
    let exit_code = status.as_ref().ok().and_then(|s| s.code()).map(i64::from);
    let state = if exit_code == Some(0) {
        "succeeded"
    } else {
        "failed"
    };
    tell!("job {} ({label}) {state}", job.id);
    finish(JobEnd {
        state,
        output: tail(&String::from_utf8_lossy(&output), OUTPUT_BYTES),
        errors: tail(&reported.errors, ERRORS_BYTES),
        exit_code,
        progress: reported.progress,
    })
    .await;
}
