//! On-disk format of the audit log: `<state>/audit.log`, one JSON object per line, appended
//! and flushed to disk before the orchestrator goes on, so every step that ran is on record
//! even if the machine dies right after. Lines are never rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{OrchestrationError, Result};

/// One event: who did what, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// RFC 3339, UTC.
    pub time: String,
    /// `user@host` of the person or service that ran the command.
    pub actor: String,
    pub run: String,
    pub plan: String,
    pub operation: String,
    /// The step's index in the run, for step events.
    pub step: Option<usize>,
    /// What was done, in words.
    pub what: String,
    /// `run-started`, `started`, `done`, `failed`, `waiting`, `continued`, `run-finished`,
    /// `run-failed`, `dry-run`.
    pub event: String,
    pub detail: Option<String>,
}

/// The audit log of a state directory.
pub struct AuditLog {
    path: PathBuf,
}

const FILE_NAME: &str = "audit.log";

impl AuditLog {
    pub fn new(state_directory: &Path) -> AuditLog {
        AuditLog {
            path: state_directory.join(FILE_NAME),
        }
    }

    /// Appends `event` as one line and flushes it to disk.
    pub fn append(&self, event: &AuditEvent) -> Result<()> {
        let failed = |source| OrchestrationError::State {
            what: "append to",
            path: self.path.clone(),
            source,
        };
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let mut line = serde_json::to_vec(event).expect("audit events serialize");
        line.push(b'\n');
        // One write of a whole line to a file opened for appending: lines from parallel
        // steps never interleave.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(failed)?;
        file.write_all(&line).map_err(failed)?;
        file.sync_data().map_err(failed)
    }

    /// Every event so far, oldest first. A torn last line (a crash while appending) is
    /// skipped.
    pub fn read(&self) -> Result<Vec<AuditEvent>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(OrchestrationError::State {
                    what: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

/// Who is running this process: `user@host` (the user behind sudo when there is one; the
/// API user, from `LIFEBOAT_ACTOR`, for a job `lifeboat serve` runs).
pub fn actor() -> String {
    let user = ["LIFEBOAT_ACTOR", "SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname terminates or truncates.
    let host = if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0 {
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        "unknown-host".to_string()
    };
    format!("{user}@{host}")
}

/// Now, as the records write it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
