//! A plan's script action: `sh -c COMMAND` with the run described in its environment, its
//! output kept in a log beside the run record, killed (with everything it started) when
//! its time is up.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` in `directory`; Ok with the end of its output when it exits 0, Err
/// saying why not.
pub fn run_script(
    command: &str,
    timeout: Duration,
    directory: &Path,
    environment: &[(&str, &str)],
    log: &Path,
) -> Result<String, String> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let output =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let errors = output
        .try_clone()
        .map_err(|e| format!("cannot open {} twice: {e}", log.display()))?;
    let mut child = Command::new("sh")
        .args(["-c", command])
        .current_dir(directory)
        .envs(environment.iter().copied())
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on the script's own process group, which it leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "timed out after {:.1} s and was killed; output: {}",
                    timeout.as_secs_f64(),
                    tail(log)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Err(format!("cannot wait for the script: {error}")),
        }
    };
    if status.success() {
        Ok(tail(log))
    } else {
        Err(format!("exited with {status}; output: {}", tail(log)))
    }
}

/// The last 500 characters of a script's log, on one line.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(499)
        .map_or(0, |(index, _)| index);
    text[start..].replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_passes_fails_or_is_killed_at_its_timeout() {
        let directory = tempfile::tempdir().unwrap();
        let log = directory.path().join("script.log");
        let environment = [("LIFEBOAT_PLAN", "shop")];
        assert_eq!(
            run_script(
                "echo plan $LIFEBOAT_PLAN; pwd",
                Duration::from_secs(5),
                directory.path(),
                &environment,
                &log
            ),
            Ok(format!("plan shop | {}", directory.path().display()))
        );
        let failed = run_script(
            "echo no; exit 3",
            Duration::from_secs(5),
            directory.path(),
            &[],
            &log,
        )
        .unwrap_err();
        assert!(
            failed.contains("exit status: 3") && failed.contains("no"),
            "{failed}"
        );
        let started = Instant::now();
        let killed = run_script(
            "sleep 30 & sleep 30",
            Duration::from_millis(300),
            directory.path(),
            &[],
            &log,
        )
        .unwrap_err();
        assert!(killed.contains("timed out after 0.3 s"), "{killed}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
