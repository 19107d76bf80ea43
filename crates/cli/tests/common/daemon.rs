//! `lifeboat serve` as a child process on a free port, and its users.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

use super::Harness;
use super::replication::Killed;

/// `lifeboat serve` on a free port: the process, its address and its node name.
pub fn serve_node(harness: &Harness, config: &Path) -> (Killed, String, String) {
    let mut child = harness
        .configured(config)
        .args(["--json", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (
        Killed(child),
        started["listen"].as_str().unwrap().to_string(),
        started["node"].as_str().unwrap().to_string(),
    )
}

/// `lifeboat user add NAME --role ROLE [EXTRA…]`: its token.
pub fn user(harness: &Harness, config: &Path, name: &str, role: &str, extra: &[&str]) -> String {
    let stdout = super::succeeds(
        harness
            .configured(config)
            .args(["--json", "user", "add", name, "--role", role])
            .args(extra),
    );
    let created: Value = serde_json::from_slice(&stdout).unwrap();
    created["token"].as_str().unwrap().to_string()
}
