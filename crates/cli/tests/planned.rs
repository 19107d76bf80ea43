//! Planned failover with replication running: the source is fenced by the new epoch, the
//! final sync brings its last write, nothing is lost; the fence outlives a restart of the
//! capture; an unplanned failover waits for a live capture to fence its VM; `--point app`
//! starts from the newest application-consistent point, without the writes after it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::replication::{Protect, follow, raw_disk};
use common::{Harness, identical};
use serde_json::Value;

fn config(harness: &Harness) -> PathBuf {
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[region]]
name = "west"
repository = "{west}"

[[region]]
name = "east"
repository = "{east}"
network = "none"

[[vm]]
name = "db1"
region = "west"
memory_mib = 32
disks = ["{disk}"]

[[vm]]
name = "web1"
region = "west"
memory_mib = 32
disks = ["{web}"]
"#,
            west = harness.path("west").display(),
            east = harness.repository.display(),
            disk = harness.path("db1.raw").display(),
            web = harness.path("web1.raw").display(),
        ),
    )
    .unwrap();
    config
}

fn run(harness: &Harness, config: &Path, arguments: &[&str]) -> (i32, Value, String) {
    let output = harness
        .configured(config)
        .arg("--json")
        .args(arguments)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        output.status.code().unwrap(),
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        stderr,
    )
}

/// qemu-io through the capture's export; returns whether it succeeded and its output.
fn try_write(protect: &Protect, export: &str, command: &str) -> (bool, String) {
    let output = Command::new("qemu-io")
        .arg("--image-opts")
        .args(["-c", command, "-c", "flush"])
        .arg(format!(
            "driver=nbd,server.type=unix,server.path={},export={export}",
            protect.socket.display()
        ))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && !text.contains("failed"), text)
}

#[test]
fn a_planned_failover_fences_the_source_and_loses_no_write() {
    let harness = Harness::new();
    let config = config(&harness);
    let disk = raw_disk(&harness, "db1.raw", "16M");
    let web = raw_disk(&harness, "web1.raw", "4M");
    let vms = vec![
        ("db1".to_string(), vec![disk.clone()]),
        ("web1".to_string(), vec![web.clone()]),
    ];
    let protect = Protect::start(&harness, "shop", &vms, "0.3");
    let (_receiver, _) = follow(&harness, "shop", &harness.path("replicas"), &[]);
    // Writes go on right up to the failover; the last ones have not been shipped when it
    // starts.
    for round in 0..20u8 {
        let (ok, output) = try_write(
            &protect,
            "db1/db1.raw",
            &format!("write -P {} {}k 64k", round + 1, u32::from(round) * 512),
        );
        assert!(ok, "{output}");
    }
    let (code, report, stderr) = run(
        &harness,
        &config,
        &["failover", "--vm", "db1", "--to", "east", "--planned"],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let stop = &report["steps"][1];
    assert!(
        stop["detail"].as_str().unwrap().contains("epoch 1 claimed"),
        "{stop}"
    );
    assert_eq!(report["vms"][0]["epoch"], 1);
    // Fenced: the old side refuses db1's writes, not web1's.
    let (ok, output) = try_write(&protect, "db1/db1.raw", "write -P 99 0 4k");
    assert!(
        !ok && output.contains("Operation not permitted"),
        "{output}"
    );
    assert!(try_write(&protect, "web1/web1.raw", "write -P 7 0 4k").0);
    assert!(
        protect
            .log()
            .contains("VM 'db1' fenced: it runs in region 'east' as epoch 1")
    );
    // And says so where the recovery region reads the RPO.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = harness.json(&["status"]);
        let vms = status["replication"][0]["groups"][0]["vms"].clone();
        let fenced = |name: &str| {
            vms.as_array()
                .unwrap()
                .iter()
                .any(|v| v["vm"] == name && v["fenced_at"].is_string())
        };
        if fenced("db1") {
            assert!(!fenced("web1"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the fence: {vms}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing lost: the disk db1 started from in east is the source disk, every write.
    let restored = harness
        .path("lifeboat-state")
        .join("vms/db1/east/disks/db1.raw");
    assert!(
        identical(&restored, &disk),
        "the last writes are missing in east"
    );
    // The fence outlives a restart of the capture, from its first write on: a restarted
    // capture once served writes until its first look at the epochs.
    drop(protect);
    let protect = Protect::start(&harness, "shop", &vms, "0.3");
    let (ok, output) = try_write(&protect, "db1/db1.raw", "write -P 98 0 4k");
    assert!(
        !ok && output.contains("Operation not permitted"),
        "a restarted capture accepted a write of a VM that runs elsewhere: {output}"
    );
    drop(protect);
    // A capture started afresh (its epochs lost with its state) once adopted the newest
    // epoch and took db1's writes: it is refused, naming where db1 runs, unless told.
    let mut epoch_file = disk.as_os_str().to_owned();
    epoch_file.push(".lifeboat-dirty.epoch");
    std::fs::remove_file(&epoch_file).unwrap();
    let refused = harness
        .command()
        .args(["protect", "--group", "shop", "--socket"])
        .arg(harness.path("fresh.sock"))
        .arg("--vm")
        .arg(format!("db1={}", disk.display()))
        .arg("--vm")
        .arg(format!("web1={}", web.display()))
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{error}");
    assert!(
        error.contains("VM 'db1' runs in region 'east' since epoch 1")
            && error.contains("--accept-epoch"),
        "{error}"
    );
    assert!(!harness.path("fresh.sock").exists(), "nothing was served");
    let protect = Protect::start_with(&harness, "shop", &vms, "0.3", &["--accept-epoch"]);
    assert!(try_write(&protect, "db1/db1.raw", "write -P 97 0 4k").0);
    drop(protect);
    let _ = harness
        .configured(&config)
        .args(["vm", "stop", "--vm", "db1", "--grace", "0"])
        .output();
}

#[test]
fn an_unplanned_failover_waits_until_a_live_capture_has_fenced_the_vm() {
    let harness = Harness::new();
    let config = config(&harness);
    let disk = raw_disk(&harness, "db1.raw", "8M");
    let web = raw_disk(&harness, "web1.raw", "4M");
    let vms = vec![
        ("db1".to_string(), vec![disk.clone()]),
        ("web1".to_string(), vec![web]),
    ];
    // A slow capture (a round every 3 s) that still answers.
    let protect = Protect::start(&harness, "shop", &vms, "3");
    let (_receiver, _) = follow(&harness, "shop", &harness.path("replicas"), &[]);
    assert!(try_write(&protect, "db1/db1.raw", "write -P 1 0 1M").0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness
        .json(&["points", "--vm", "db1"])
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no point of db1");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, report, stderr) = run(
        &harness,
        &config,
        &["failover", "--vm", "db1", "--to", "east"],
    );
    assert_eq!(code, 0, "{stderr}");
    let start = report["steps"][1]["detail"].as_str().unwrap().to_string();
    assert!(
        start.contains("its capture in group 'shop' is fenced"),
        "{start}"
    );
    assert!(!try_write(&protect, "db1/db1.raw", "write -P 2 0 4k").0);
    let (code, _, stderr) = run(
        &harness,
        &config,
        &[
            "failover",
            "--vm",
            "db1",
            "--to",
            "east",
            "--point",
            "processed",
        ],
    );
    assert_eq!(code, 0, "a second failover (epoch 2): {stderr}");
    let placements: Value = serde_json::from_slice(
        &std::fs::read(harness.path("lifeboat-state").join("vms.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(placements["vms"]["db1"]["epoch"], 2);
    let _ = harness
        .configured(&config)
        .args(["vm", "stop", "--vm", "db1", "--grace", "0"])
        .output();

    // A capture with a lease, then cut off for good (killed): the failover of web1 waits
    // out the lease, after which the old side has fenced itself.
    drop(protect);
    let protect = Protect::start_with(&harness, "shop", &vms, "0.3", &["--fence-lease", "4s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Its first round (which finds db1 fenced for good) publishes its lease.
    while !protect.log().contains("VM 'db1' fenced") {
        assert!(
            Instant::now() < deadline,
            "the capture never shipped: {}",
            protect.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(protect);
    let started = Instant::now();
    let (code, report, stderr) = run(
        &harness,
        &config,
        &[
            "failover",
            "--vm",
            "web1",
            "--to",
            "east",
            "--point",
            "processed",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let start = report["steps"][1]["detail"].as_str().unwrap().to_string();
    assert!(
        start.contains("beyond its fence lease of 4 s: it fenced itself"),
        "{start}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the lease"
    );
    let _ = harness
        .configured(&config)
        .args(["vm", "stop", "--vm", "web1", "--grace", "0"])
        .output();
}

#[test]
fn an_unplanned_failover_to_the_latest_app_consistent_point_leaves_later_writes_out() {
    use std::os::unix::fs::PermissionsExt;
    let harness = Harness::new();
    let config = config(&harness);
    let disk = raw_disk(&harness, "db1.raw", "8M");
    let web = raw_disk(&harness, "web1.raw", "4M");
    // Data before protection: the first round is the initial sync, where a freeze is
    // refused (the replicas are not consistent yet); the rounds after it quiesce.
    let filled = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 5 1M 2M"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(filled.status.success());
    let vms = vec![
        ("db1".to_string(), vec![disk.clone()]),
        ("web1".to_string(), vec![web]),
    ];
    // The hook quiesces at once; later it is made to fail, so only crash points follow.
    let hook = harness.path("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let protect = Protect::start_with(
        &harness,
        "shop",
        &vms,
        "0.3",
        &[
            "--freeze-hook",
            hook.to_str().unwrap(),
            "--app-consistent-every",
            "1s",
        ],
    );
    let (_receiver, _) = follow(&harness, "shop", &harness.path("replicas"), &[]);
    assert!(try_write(&protect, "db1/db1.raw", "write -P 1 0 64k").0);
    let points_of_db1 = || -> Vec<Value> {
        harness
            .json(&["points", "--vm", "db1"])
            .as_array()
            .unwrap()
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !points_of_db1().iter().any(|p| p["consistency"] == "app") {
        assert!(
            Instant::now() < deadline,
            "no application-consistent point: {:?}\n{}",
            points_of_db1(),
            protect.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        protect.log().contains("a resync is in progress"),
        "{}",
        protect.log()
    );
    // From now on the freeze fails: the write below reaches crash-consistent points only.
    std::fs::write(&hook, "#!/bin/sh\n[ \"$1\" = freeze ] && exit 1\nexit 0\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !protect
        .log()
        .contains("no application-consistent point this time")
    {
        assert!(Instant::now() < deadline, "{}", protect.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(try_write(&protect, "db1/db1.raw", "write -P 2 0 64k").0);
    let newest_app = |points: &[Value]| {
        points
            .iter()
            .filter(|p| p["consistency"] == "app")
            .max_by_key(|p| p["time"].as_str().unwrap().to_string())
            .cloned()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let points = loop {
        let points = points_of_db1();
        let app = newest_app(&points);
        let later_crash = points
            .iter()
            .filter(|p| p["consistency"] != "app" && p["time"].as_str() > app["time"].as_str())
            .count();
        if later_crash >= 1 {
            break points;
        }
        assert!(Instant::now() < deadline, "{points:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let app = newest_app(&points);
    let (code, report, stderr) = run(
        &harness,
        &config,
        &["failover", "--vm", "db1", "--to", "east", "--point", "app"],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(
        report["vms"][0]["point"], app["point"],
        "the newest application-consistent point: {report:#}\n{points:#?}"
    );
    // Started from it: the first write is there, the one after the last quiesce is not.
    let started = std::fs::read(
        harness
            .path("lifeboat-state")
            .join("vms/db1/east/disks/db1.raw"),
    )
    .unwrap();
    assert!(started[..65536].iter().all(|&b| b == 1));
    drop(protect);
    let _ = harness
        .configured(&config)
        .args(["vm", "stop", "--vm", "db1", "--grace", "0"])
        .output();
}
