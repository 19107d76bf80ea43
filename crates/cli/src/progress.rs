//! A progress bar with throughput and ETA on a terminal; nothing otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_backup::Progress;

/// Draws the engine's progress on standard error.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar, hidden when `quiet` (JSON output) or when standard error is not a terminal.
    pub fn new(quiet: bool) -> Bar {
        let visible = !quiet && std::io::stderr().is_terminal();
        Bar {
            bar: visible
                .then(|| ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total_bytes: u64) {
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
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
