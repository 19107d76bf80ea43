//! Progress: a bar with throughput and ETA on a terminal; for `lifeboat serve`'s jobs
//! (environment `LIFEBOAT_PROGRESS=lines`), progress lines on standard error that the job
//! runner reads; nothing otherwise.
//!
//! A progress line is the runner's prefix (`lifeboat-progress `) followed by one
//! `JobProgress` as JSON, the runner's own type.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_backup::Progress;
use lifeboat_control::scheduler::PROGRESS_PREFIX;
use lifeboat_control::store::JobProgress;
/// Progress lines no more often than this (but always at the start and the end).
const LINE_EVERY: Duration = Duration::from_millis(500);

/// Whether this process reports progress as lines (it runs as a job of `lifeboat serve`).
pub fn lines_wanted() -> bool {
    std::env::var("LIFEBOAT_PROGRESS").is_ok_and(|v| v == "lines")
}

/// Writes one progress line on standard error.
pub fn emit(progress: &JobProgress) {
    let line = serde_json::to_string(progress).expect("progress serializes");
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{PROGRESS_PREFIX}{line}");
}

/// Progress lines of a byte count: the phase, bytes done and the total.
struct Lines {
    phase: Mutex<(String, Instant)>,
    done: AtomicU64,
    total: AtomicU64,
}

impl Lines {
    fn emit(&self, phase: &str) {
        emit(&JobProgress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            unit: "bytes".to_string(),
            message: phase.to_string(),
            steps: None,
        });
    }
}

/// Draws the engine's progress on standard error.
pub struct Bar {
    bar: Option<ProgressBar>,
    lines: Option<Lines>,
}

impl Bar {
    /// A bar, hidden when `quiet` (JSON output) or when standard error is not a terminal;
    /// progress lines instead when a job runner asked for them.
    pub fn new(quiet: bool) -> Bar {
        let lines = lines_wanted();
        let visible = !lines && !quiet && std::io::stderr().is_terminal();
        Bar {
            bar: visible
                .then(|| ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())),
            lines: lines.then(|| Lines {
                phase: Mutex::new((String::new(), Instant::now())),
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
            }),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total_bytes: u64) {
        if let Some(lines) = &self.lines {
            lines.done.store(0, Ordering::Relaxed);
            lines.total.store(total_bytes, Ordering::Relaxed);
            *lines.phase.lock().expect("never poisoned") = (phase.to_string(), Instant::now());
            lines.emit(phase);
        }
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(total_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(phase.to_string());
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(lines) = &self.lines {
            lines.done.fetch_add(bytes, Ordering::Relaxed);
            let mut phase = lines.phase.lock().expect("never poisoned");
            if phase.1.elapsed() >= LINE_EVERY {
                phase.1 = Instant::now();
                lines.emit(&phase.0);
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(lines) = &self.lines {
            let phase = lines.phase.lock().expect("never poisoned").0.clone();
            lines.emit(&phase);
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
