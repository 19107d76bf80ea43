//! Printing: JSON for scripts, text for people, and errors.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Set once standard output cannot be written: nothing more is tried.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes `text` to standard output and flushes it. A reader that went away (broken pipe)
/// silences the rest of the output without a word, as Unix tools do; any other failure
/// (a full disk behind a redirection) is said once on standard error. Either way the
/// command goes on: a backup whose listing nobody reads still completes.
pub fn write_out(text: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            tell!("warning: cannot write to standard output ({error}); the command goes on");
        }
    }
}

/// Writes `text` to standard error; a failure is ignored (there is nowhere left to say it).
/// A daemon whose log reader went away goes on serving.
pub fn write_err(text: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(text).and_then(|()| stderr.flush());
}

/// Prints `value` as one pretty JSON document on standard output.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `value` as JSON on one line (one line per event, for commands that keep going).
pub fn print_json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints an error with its causes; with `--json`, also as `{"error": …}` on standard output.
pub fn print_error(error: &anyhow::Error, json: bool) {
    let message = format!("{error:#}");
    tell!("error: {message}");
    if json {
        say!("{}", serde_json::json!({ "error": message }));
    }
}

/// Bytes for people: 1.5 GiB.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Throughput for people.
pub fn rate(count: u64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "-".to_string();
    }
    format!("{}/s", bytes((count as f64 / seconds) as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 << 30), "3.0 GiB");
    }
}
