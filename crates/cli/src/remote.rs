//! `lifeboat --remote URL …`: the command runs on a `lifeboat serve` daemon, as a job of
//! the token's user (`POST /api/jobs`); this process follows the job (its progress on a
//! terminal), prints what the command printed and exits with its exit status.
//!
//! The command line is sent as typed, without the options that choose the daemon. The
//! daemon runs it with `--json`, so the output is the command's JSON report (pretty-printed
//! unless `--json` was given).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::GlobalOptions;

/// Options that choose the daemon: they stay here.
const LOCAL_OPTIONS: [&str; 3] = ["--remote", "--token", "--ca-certificate"];

/// The command line to send: this process's arguments without the local options and
/// `--json`.
fn remote_arguments(arguments: impl Iterator<Item = String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut arguments = arguments.skip(1);
    while let Some(argument) = arguments.next() {
        if LOCAL_OPTIONS.contains(&argument.as_str()) {
            arguments.next();
        } else if argument == "--json"
            || LOCAL_OPTIONS
                .iter()
                .any(|option| argument.starts_with(&format!("{option}=")))
        {
            continue;
        } else {
            kept.push(argument);
        }
    }
    kept
}

fn client(global: &GlobalOptions) -> anyhow::Result<reqwest::blocking::Client> {
    let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
    if let Some(path) = &global.ca_certificate {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the certificate {}", path.display()))?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        builder = builder.tls_certs_only([certificate]);
    }
    Ok(builder.build()?)
}

/// Sends `request` with the token; its JSON body, or an error naming the daemon's answer.
fn call(
    global: &GlobalOptions,
    url: &str,
    request: reqwest::blocking::RequestBuilder,
) -> anyhow::Result<Value> {
    let request = match &global.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .with_context(|| format!("cannot reach the Lifeboat daemon at {url}"))?;
    let status = response.status();
    let body: Value = response.json().unwrap_or(Value::Null);
    if !status.is_success() {
        let reason = body["error"].as_str().unwrap_or("no reason given");
        bail!("the daemon at {url} refused: {reason} (HTTP {status})");
    }
    Ok(body)
}

pub fn run(global: &GlobalOptions, url: &str) -> anyhow::Result<u8> {
    let base = url.trim_end_matches('/');
    let client = client(global)?;
    let command = remote_arguments(std::env::args());
    let job = call(
        global,
        base,
        client
            .post(format!("{base}/api/jobs"))
            .json(&serde_json::json!({ "command": command })),
    )?;
    let id = job["id"]
        .as_str()
        .context("the daemon answered a job without an id")?
        .to_string();
    let terminal = !global.json && std::io::stderr().is_terminal();
    let mut shown = String::new();
    let job = loop {
        let job = call(global, base, client.get(format!("{base}/api/jobs/{id}")))?;
        let state = job["state"].as_str().unwrap_or_default();
        if matches!(state, "succeeded" | "failed" | "cancelled") {
            break job;
        }
        if terminal {
            let progress = &job["progress"];
            let line = match progress["message"].as_str() {
                Some(message) => format!(
                    "{state}: {message} ({}/{} {})",
                    progress["done"],
                    progress["total"],
                    progress["unit"].as_str().unwrap_or("")
                ),
                None => format!("{state} on {}", job["node"].as_str().unwrap_or("a node")),
            };
            if line != shown {
                eprint!("\r\x1b[2K{line}");
                shown = line;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if terminal && !shown.is_empty() {
        eprint!("\r\x1b[2K");
    }
    let output = job["output"].as_str().unwrap_or_default();
    if !output.is_empty() {
        match serde_json::from_str::<Value>(output) {
            Ok(value) if !global.json => say!("{}", serde_json::to_string_pretty(&value)?),
            _ => say!("{output}"),
        }
    }
    if let Some(errors) = job["errors"].as_str().filter(|e| !e.is_empty()) {
        tell!("{errors}");
    }
    if job["state"] == "cancelled" {
        bail!("job {id} was cancelled");
    }
    Ok(job["exit_code"]
        .as_i64()
        .map_or(1, |code| code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_gets_the_command_without_the_local_options() {
        let typed = [
            "lifeboat",
            "--remote",
            "https://dr:8400",
            "--token=lb_x_y",
            "--json",
            "points",
            "--vm",
            "db1",
            "--ca-certificate",
            "ca.pem",
        ];
        assert_eq!(
            remote_arguments(typed.iter().map(|s| s.to_string())),
            ["points", "--vm", "db1"]
        );
    }
}
