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
use tokio::io::AsyncReadExt;

use crate::probes::now_ms;
use crate::store::{Job, Store};

/// A job whose heartbeat is older than this has lost its node.
pub const STALE_MS: i64 = 5_000;
/// Jobs one node runs at once.
const PARALLEL_JOBS: usize = 2;
/// Output kept per job.
const OUTPUT_BYTES: usize = 4_000;

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
pub async fn run(store: Store, config: Arc<Config>, runner: JobRunner) {
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
            Ok(count) => eprintln!("{count} job(s) of a node that stopped queued again"),
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The last `OUTPUT_BYTES` of `text`.
fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let start = text.len().saturating_sub(OUTPUT_BYTES);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

async fn run_job(store: &Store, config: &Config, runner: &JobRunner, job: Job) {
    let id = job.id.clone();
    let finish = |state: &'static str, output: String| {
        let id = id.clone();
        async move {
            if let Err(error) = store
                .finish(&id, &runner.node, state, &output, now_ms())
                .await
            {
                tracing::warn!(%error, "cannot record the end of a job");
            }
        }
    };
    let Some(schedule) = config.schedules.iter().find(|s| s.name == job.schedule) else {
        finish(
            "failed",
            format!("schedule '{}' is no longer configured", job.schedule),
        )
        .await;
        return;
    };
    eprintln!(
        "job {} ({}) started on {}",
        job.id, job.schedule, runner.node
    );
    let mut command = tokio::process::Command::new(&runner.executable);
    // SAFETY: prctl is async-signal-safe; the child dies with this node, so a killed node
    // leaves no job running behind the one that takes it over.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command
        .args(&runner.arguments)
        .arg("--json")
        .args(&schedule.command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            finish(
                "failed",
                format!("cannot start {}: {error}", runner.executable.display()),
            )
            .await;
            return;
        }
    };
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let output = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        out.extend_from_slice(&err);
        out
    });
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                match store.heartbeat(&job.id, &runner.node, now_ms()).await {
                    Ok(Some(state)) if state == "cancel-requested" => {
                        let _ = child.kill().await;
                        finish("cancelled", "cancelled while running".to_string()).await;
                        eprintln!("job {} ({}) cancelled", job.id, job.schedule);
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot refresh a job"),
                }
            }
        }
    };
    let output = tail(&output.await.unwrap_or_default());
    let state = match status {
        Ok(status) if status.success() => "succeeded",
        _ => "failed",
    };
    eprintln!("job {} ({}) {state}", job.id, job.schedule);
    finish(state, output).await;
}
