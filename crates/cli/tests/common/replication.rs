//! Helpers for the replication tests: `lifeboat protect` and `lifeboat receive` as child
//! processes, raw disks, and counters written in blocks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_nbd::Client;
use serde_json::Value;

use super::Harness;

/// A running `lifeboat protect`, killed (SIGKILL) on drop.
pub struct Protect {
    pub child: Killed,
    pub socket: PathBuf,
    /// Its standard output (ship reports with `--json`) and error.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Protect {
    pub fn start(
        harness: &Harness,
        group: &str,
        vms: &[(String, Vec<PathBuf>)],
        interval: &str,
    ) -> Protect {
        Protect::start_with(harness, group, vms, interval, &[])
    }

    /// Starts protect with `extra` arguments.
    pub fn start_with(
        harness: &Harness,
        group: &str,
        vms: &[(String, Vec<PathBuf>)],
        interval: &str,
        extra: &[&str],
    ) -> Protect {
        Protect::start_in(harness, group, vms, interval, extra, &[])
    }

    /// Starts protect with `extra` arguments and `environment` variables.
    pub fn start_in(
        harness: &Harness,
        group: &str,
        vms: &[(String, Vec<PathBuf>)],
        interval: &str,
        extra: &[&str],
        environment: &[(String, String)],
    ) -> Protect {
        let socket = harness.path(&format!("{group}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut run = 0;
        while harness.path(&format!("{group}-protect-{run}.out")).exists() {
            run += 1;
        }
        let stdout = harness.path(&format!("{group}-protect-{run}.out"));
        let stderr = harness.path(&format!("{group}-protect-{run}.err"));
        let mut command = harness.command();
        command.envs(environment.iter().cloned());
        command.args([
            "protect",
            "--group",
            group,
            "--interval",
            interval,
            "--socket",
        ]);
        command.arg(&socket).args(extra);
        for (name, disks) in vms {
            let disks: Vec<String> = disks.iter().map(|d| d.display().to_string()).collect();
            command
                .arg("--vm")
                .arg(format!("{name}={}", disks.join(",")));
        }
        let child = command
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "protect never opened its socket: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Protect {
            child: Killed(child),
            socket,
            stdout,
            stderr,
        }
    }

    /// Runs qemu-io `commands` on `export` through the NBD socket; they must succeed.
    pub fn qemu_io(&self, export: &str, commands: &[&str]) {
        let mut command = Command::new("qemu-io");
        command.arg("--image-opts");
        for line in commands {
            command.args(["-c", line]);
        }
        let output = command
            .arg(format!(
                "driver=nbd,server.type=unix,server.path={},export={export}",
                self.socket.display()
            ))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "qemu-io: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The ship reports printed so far (with `--json`).
    pub fn reports(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// What it printed on standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn client(&self, export: &str) -> Client {
        Client::connect_unix(&self.socket, export, &[])
            .unwrap_or_else(|e| panic!("cannot connect to protect: {e}\n{}", self.log()))
    }
}

/// `lifeboat receive --follow` in the background, its stderr kept in a file.
pub fn follow(
    harness: &Harness,
    group: &str,
    replicas: &Path,
    extra: &[&str],
) -> (Killed, PathBuf) {
    let log = harness.path(&format!("receive-{group}.log"));
    let child = harness
        .command()
        .args(["receive", "--follow", "--interval", "0.1", "--group", group])
        .arg("--replicas")
        .arg(replicas)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Killed(child), log)
}

/// `status --json` of the recovery repository: the one group `group`.
pub fn group_status(harness: &Harness, group: &str) -> Value {
    let status = harness.json(&["status"]);
    let groups = &status["replication"][0]["groups"];
    groups
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["group"] == group))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls `status` until `check` holds (within 60 s); returns that group status.
pub fn status_until(harness: &Harness, group: &str, check: impl Fn(&Value) -> bool) -> Value {
    status_within(harness, group, Duration::from_secs(60), check, || {})
}

/// Polls `status` until `check` holds (within `limit`), running `between` after each look
/// that did not hold; returns that group status.
pub fn status_within(
    harness: &Harness,
    group: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
    mut between: impl FnMut(),
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = group_status(harness, group);
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {status}"
        );
        between();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed on drop (also when a test fails).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn raw_disk(harness: &Harness, name: &str, size: &str) -> PathBuf {
    let path = harness.path(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&path)
        .arg(size)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

/// Runs `receive --once` until the replicas hold every write acknowledged before `after`
/// and are consistent; returns the last report.
pub fn receive_past(
    harness: &Harness,
    group: &str,
    replicas: &Path,
    after: chrono::DateTime<chrono::Utc>,
) -> Value {
    receive_past_in(harness, group, replicas, after, &[], &[])
}

/// The same, with `extra` arguments and `environment` variables (another repository).
pub fn receive_past_in(
    harness: &Harness,
    group: &str,
    replicas: &Path,
    after: chrono::DateTime<chrono::Utc>,
    extra: &[&str],
    environment: &[(String, String)],
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let output = harness
            .command()
            .envs(environment.iter().cloned())
            .args(["--json", "receive", "--group", group, "--replicas"])
            .arg(replicas)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "receive failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let applied = report["applied_time"].as_str().map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .with_timezone(&chrono::Utc)
        });
        if report["consistent"] == true && applied.is_some_and(|t| t > after) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never caught up: {report}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The counter at the start of a disk image.
pub fn counter(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

pub fn block(value: u64) -> Vec<u8> {
    let mut block = vec![0u8; 4096];
    for slot in block.chunks_mut(8) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    block
}

/// `lifeboat dns serve` on a free port of 127.0.0.1 with `config`: the running server, its
/// port and the records it started with.
pub fn dns_server(harness: &Harness, config: &Path) -> (Killed, u16, Value) {
    use std::io::BufRead;
    let mut child = harness
        .configured(config)
        .args(["--json", "dns", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Killed(child);
    let started: Value = serde_json::from_str(&line).unwrap();
    let port: u16 = started["listen"]
        .as_str()
        .and_then(|listen| listen.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap();
    (server, port, started["records"].clone())
}

/// `dig @127.0.0.1 -p PORT NAME A +short`: the addresses the name answers with.
pub fn dig(port: u16, name: &str) -> String {
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), name, "A", "+short"])
        .args(["+time=2", "+tries=2"])
        .output()
        .expect("dig runs (scripts/test.sh installs dnsutils)");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Waits (up to 10 s) until `name` answers `expected`.
pub fn dig_until(port: u16, name: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig(port, name) != expected {
        assert!(
            Instant::now() < deadline,
            "{name} never answered {expected}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
