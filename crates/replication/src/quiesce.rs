//! Quiescing a group's applications for application-consistent points: a freeze/thaw hook
//! script run by the protecting host.
//!
//! The hook is run as `HOOK freeze GROUP` and `HOOK thaw GROUP` (environment:
//! `LIFEBOAT_GROUP`, `LIFEBOAT_PHASE`). `freeze` returns once the applications have flushed
//! and paused their writes (a database's checkpoint and write suspension, or
//! `fsfreeze`, or the QEMU guest agent's `guest-fsfreeze-freeze` driven from the script);
//! `thaw` lets them go on. A freeze that fails or takes longer than its timeout is thawed
//! at once and the cut is made crash-consistent only.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Freezes and thaws the applications of a group.
pub trait Quiesce: Send + Sync {
    /// Freezes; an error says why the point cannot be application-consistent.
    fn freeze(&self) -> Result<(), String>;
    /// Thaws; called after every freeze attempt, successful or not.
    fn thaw(&self) -> Result<(), String>;
}

/// A hook script.
#[derive(Clone, Debug)]
pub struct Hook {
    pub script: PathBuf,
    pub group: String,
    /// Longest a phase may take before it is counted as failed (and killed).
    pub timeout: Duration,
}

impl Hook {
    fn run(&self, phase: &str) -> Result<(), String> {
        let mut child = Command::new(&self.script)
            .args([phase, &self.group])
            .env("LIFEBOAT_GROUP", &self.group)
            .env("LIFEBOAT_PHASE", phase)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {} {phase}: {e}", self.script.display()))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    return Err(format!(
                        "{} {phase} failed ({status}): {}",
                        self.script.display(),
                        stderr.trim()
                    ));
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} {phase} took longer than {} s and was killed",
                        self.script.display(),
                        self.timeout.as_secs_f64()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(error) => return Err(format!("{} {phase}: {error}", self.script.display())),
            }
        }
    }
}

impl Quiesce for Hook {
    fn freeze(&self) -> Result<(), String> {
        self.run("freeze")
    }

    fn thaw(&self) -> Result<(), String> {
        self.run("thaw")
    }
}
