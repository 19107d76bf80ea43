//! Reprotect and failback: after an unplanned failover west → east, the VM is replicated
//! back to west, the first sync sending only the blocks that changed on either side since
//! they last agreed (west's unshipped writes, east's writes since the failover), and a
//! failback brings it home with every write.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::replication::{Killed, Protect, dig_until, dns_server, follow, raw_disk, status_until};
use common::{Harness, identical_as};
use serde_json::Value;

fn qemu_io_file(image: &Path, command: &str) {
    qemu_io_as(image, "raw", command)
}

fn qemu_io_as(image: &Path, format: &str, command: &str) {
    let status = Command::new("qemu-io")
        .args(["-f", format, "-c", command])
        .arg(image)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn run(harness: &Harness, config: &Path, arguments: &[&str]) -> Value {
    let output = harness
        .configured(config)
        .arg("--json")
        .args(arguments)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{arguments:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn reprotect_sends_only_what_changed_on_either_side_and_failback_brings_every_write_home() {
    reprotect_and_fail_back(false);
}

/// After an instant failover the VM's disks were qcow2 overlays named `*.overlay.qcow2`:
/// the capture of a reprotect named them so, found no replica of that name in the digest
/// and sent every block, while the pre-flight said only differences would go.
#[test]
fn reprotect_after_an_instant_failover_and_commit_sends_only_what_changed() {
    reprotect_and_fail_back(true);
}

fn reprotect_and_fail_back(instant: bool) {
    // east is the harness's repository: the forward capture ships there.
    let harness = Harness::new();
    let config = harness.path("lifeboat.toml");
    let disk = raw_disk(&harness, "db1.raw", "16M");
    std::fs::write(
        &config,
        format!(
            "[dns]\nttl = 1\nzones = [\"shop.example\"]\n\n\
             [[region]]\nname = \"west\"\nrepository = \"{}\"\nnetwork = \"none\"\n\n\
             [[region]]\nname = \"east\"\nrepository = \"{}\"\nnetwork = \"none\"\n\n\
             [[vm]]\nname = \"db1\"\nregion = \"west\"\nmemory_mib = 32\ndisks = [\"{}\"]\n\
             dns = [\"db1.shop.example\"]\naddresses = {{ west = \"10.0.1.4\", east = \"10.1.1.4\" }}\n",
            harness.path("west").display(),
            harness.repository.display(),
            disk.display()
        ),
    )
    .unwrap();
    let init = harness
        .in_region(&config, "west")
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success());
    qemu_io_file(&disk, "write -P 0x11 0 8M");

    // Forward: west's db1 replicates to east.
    let vms = vec![("db1".to_string(), vec![disk.clone()])];
    let protect = Protect::start(&harness, "shop", &vms, "0.3");
    let (receiver, _) = follow(&harness, "shop", &harness.path("replicas-east"), &[]);
    let synced = chrono::Utc::now();
    status_until(&harness, "shop", |status| {
        status["recovered_time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t > synced)
    });
    // West is lost with 1 MiB written but never shipped.
    drop(protect);
    qemu_io_file(&disk, "write -P 0x22 10M 1M");
    let mut arguments = vec!["failover", "--vm", "db1", "--to", "east"];
    if instant {
        arguments.push("--instant");
    }
    let failover = run(&harness, &config, &arguments);
    drop(receiver);
    assert_eq!(failover["vms"][0]["epoch"], 1);
    if instant {
        let commit = run(&harness, &config, &["commit", "--vm", "db1"]);
        assert_eq!(commit["state"], "succeeded", "{commit:#}");
    }
    // An instant disk is a qcow2 overlay, under the disk's own name.
    let east_format = if instant { "qcow2" } else { "raw" };
    let (_dns, port, _) = dns_server(&harness, &config);
    dig_until(port, "db1.shop.example", "10.1.1.4");
    // In east, 1 MiB changes after the failover.
    let east_disk = harness
        .path("lifeboat-state")
        .join("vms/db1/east/disks/db1.raw");
    run(
        &harness,
        &config,
        &["vm", "stop", "--vm", "db1", "--grace", "0"],
    );
    qemu_io_as(&east_disk, east_format, "write -P 0x33 12M 1M");

    // West is back: its old disk becomes the replica, digested first.
    let replicas = harness.path("replicas-west");
    std::fs::create_dir_all(replicas.join("db1")).unwrap();
    std::os::unix::fs::symlink(&disk, replicas.join("db1").join("db1.raw")).unwrap();
    let log = harness.path("receive-west.log");
    let _receiver = Killed(
        harness
            .in_region(&config, "west")
            .args(["receive", "--follow", "--interval", "0.1", "--digest"])
            .args(["--group", "reprotect-vm-db1", "--replicas"])
            .arg(&replicas)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("digest of 1 replica disk(s) published")
    {
        assert!(
            Instant::now() < deadline,
            "no digest: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reprotect = run(&harness, &config, &["reprotect", "--vm", "db1"]);
    assert_eq!(reprotect["state"], "succeeded");
    let said = reprotect.to_string();
    assert!(
        said.contains("only blocks that differ are sent") && !said.contains("sent whole"),
        "{reprotect:#}"
    );
    let capture = harness
        .path("lifeboat-state")
        .join("captures/reprotect-vm-db1");
    let capture_log = std::fs::read_to_string(capture.join("protect.log")).unwrap();
    assert!(
        capture_log.contains(
            "db1/db1.raw: initial sync of the blocks that differ from the replica's, 2.0 MiB"
        ),
        "{capture_log}"
    );
    // The VM runs on the capture: a write in east reaches west.
    let socket = capture.join("capture.sock");
    let written = Command::new("qemu-io")
        .arg("--image-opts")
        .args(["-c", "write -P 0x44 14M 64k", "-c", "flush"])
        .arg(format!(
            "driver=nbd,server.type=unix,server.path={},export=db1/db1.raw",
            socket.display()
        ))
        .output()
        .unwrap();
    assert!(written.status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !identical_as(&disk, "raw", &east_disk, east_format) {
        assert!(
            Instant::now() < deadline,
            "west's replica never caught up with east"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Failback: stopped and fenced in east, the last write synced, started in west.
    let failback = run(
        &harness,
        &config,
        &["failback", "--vm", "db1", "--grace", "1"],
    );
    assert_eq!(failback["state"], "succeeded");
    assert_eq!(failback["vms"][0]["region"], "west");
    assert_eq!(failback["vms"][0]["epoch"], 2);
    dig_until(port, "db1.shop.example", "10.0.1.4");
    let home_disk: PathBuf = harness
        .path("lifeboat-state")
        .join("vms/db1/west/disks/db1.raw");
    // Restored at home in the format it was replicated in (an instant disk's qcow2).
    assert!(
        identical_as(&home_disk, east_format, &east_disk, east_format),
        "a write was lost on the way home"
    );
    let pid: i32 = std::fs::read_to_string(capture.join("protect.pid"))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(
        pid == 0 || !Path::new(&format!("/proc/{pid}")).exists(),
        "the capture in east stopped"
    );
    run(
        &harness,
        &config,
        &["vm", "stop", "--vm", "db1", "--grace", "0"],
    );
}
