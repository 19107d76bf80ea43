//! Continuous replication: writes through `lifeboat protect`'s NBD exports reach consistent
//! recovery points made by `lifeboat receive` in the recovery repository.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::replication::{
    Killed, Protect, block, counter, follow, raw_disk, receive_past, status_until, status_within,
};
use common::{Harness, identical, text};
use serde_json::Value;

#[test]
fn writes_through_the_export_reach_restorable_points_in_the_recovery_repository() {
    let harness = Harness::new();
    let system = harness.copy_image("fs.raw");
    let data = raw_disk(&harness, "data.raw", "32M");
    let protect = Protect::start(
        &harness,
        "shop",
        &[("db1".to_string(), vec![system.clone(), data.clone()])],
        "0.2",
    );
    let replicas = harness.path("replicas");
    // The initial sync copies what the disks hold.
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    let first = harness.points();
    assert_eq!(first.len(), 1, "one point of db1 after the initial sync");
    // qemu writes through the exports: a pattern, zeros, and a flushed write.
    for (export, commands) in [
        (
            "db1/fs.raw",
            vec!["write -P 0x5a 1M 256k", "write -z 4M 1M", "flush"],
        ),
        (
            "db1/data.raw",
            vec!["write -P 0x17 0 64k", "write -P 0x18 17M 4k", "flush"],
        ),
    ] {
        protect.qemu_io(export, &commands);
    }
    let written = chrono::Utc::now();
    receive_past(&harness, "shop", &replicas, written);
    let points = harness.points();
    assert!(points.len() >= 2, "a new point after the writes");
    let latest = points.last().unwrap();
    assert_eq!(text(latest, "vm"), "db1");
    let target = harness.path("restored");
    harness.restore("latest", &target, &["--vm", "db1"]);
    assert!(identical(&system, &target.join("fs.raw")));
    assert!(identical(&data, &target.join("data.raw")));
    assert!(identical(&data, &replicas.join("db1").join("data.raw")));
    // The image itself holds the writes: the export wrote through to it.
    let bytes = std::fs::read(&data).unwrap();
    assert!(bytes[..65536].iter().all(|&b| b == 0x17));
    // Once protect stops and the receiver has applied everything, no cut is left behind.
    drop(protect);
    harness.json(&[
        "receive",
        "--group",
        "shop",
        "--replicas",
        replicas.to_str().unwrap(),
    ]);
    let cuts = std::fs::read_dir(harness.repository.join("cuts"))
        .unwrap()
        .count();
    assert_eq!(
        cuts, 0,
        "applied cuts are deleted from the recovery repository"
    );
}

#[test]
fn no_point_of_a_16_vm_group_holds_a_write_without_those_acknowledged_before_it() {
    const VMS: usize = 16;
    let harness = Harness::new();
    let vms: Vec<(String, Vec<PathBuf>)> = (0..VMS)
        .map(|k| {
            let name = format!("vm{k:02}");
            let disks = vec![
                raw_disk(&harness, &format!("{name}/a.raw"), "1M"),
                raw_disk(&harness, &format!("{name}/b.raw"), "1M"),
            ];
            (name, disks)
        })
        .collect();
    let protect = Protect::start(&harness, "group", &vms, "0.1");
    let replicas = harness.path("replicas");
    let receiver = Killed(
        harness
            .command()
            .args([
                "receive",
                "--follow",
                "--interval",
                "0.05",
                "--group",
                "group",
                "--replicas",
            ])
            .arg(&replicas)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Writer k writes its counter to disk a of VM k, waits for the acknowledgement, then
    // writes it to disk b of VM k+1: in every point, b of VM k+1 is never ahead of a of VM k.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..VMS)
        .map(|k| {
            let mut first = protect.client(&format!("vm{k:02}/a.raw"));
            let mut second = protect.client(&format!("vm{:02}/b.raw", (k + 1) % VMS));
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut value = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    value += 1;
                    first.write(0, &block(value), false).unwrap();
                    second.write(0, &block(value), false).unwrap();
                    // Churn beside the ordered pair.
                    first
                        .write(4096 * (1 + value % 200), &block(value), false)
                        .unwrap();
                    // As fast as two shared cores let 16 writers, the capture process and
                    // the receiver all make progress.
                    std::thread::sleep(Duration::from_millis(5));
                }
                value
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let totals: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        totals.iter().all(|&n| n > 10),
        "writers made progress: {totals:?}"
    );
    let finished = chrono::Utc::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state: Value = std::fs::read(replicas.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let sealed = state["sealed_ordinal"].as_u64().unwrap_or(0);
        let applied_time = state["applied_time"].as_str().unwrap_or("");
        let caught_up = chrono::DateTime::parse_from_rfc3339(applied_time).is_ok_and(|t| {
            t > finished && sealed == state["applied_ordinal"].as_u64().unwrap_or(1)
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver never caught up: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(receiver);
    // Every point, restored: per cut time, each VM's newest point at or before it.
    let points = harness.points();
    let mut by_vm: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for point in &points {
        by_vm
            .entry(text(point, "vm"))
            .or_default()
            .push((text(point, "time"), text(point, "point")));
    }
    assert_eq!(by_vm.len(), VMS);
    let times: std::collections::BTreeSet<String> =
        points.iter().map(|p| text(p, "time")).collect();
    assert!(
        times.len() >= 3,
        "several cuts made points: {}",
        times.len()
    );
    let mut restored: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (vm, list) in &by_vm {
        for (_, point) in list {
            let target = harness.path(&format!("restored-{point}"));
            harness.restore(point, &target, &[]);
            restored.insert(
                point.clone(),
                (
                    counter(&target.join("a.raw")),
                    counter(&target.join("b.raw")),
                ),
            );
            let _ = vm;
        }
    }
    let newest_at = |vm: &str, time: &str| -> Option<(u64, u64)> {
        by_vm[vm]
            .iter()
            .rfind(|(t, _)| t.as_str() <= time)
            .map(|(_, point)| restored[point])
    };
    let mut checked = 0;
    for time in &times {
        for k in 0..VMS {
            let (Some((a, _)), Some((_, b))) = (
                newest_at(&format!("vm{k:02}"), time),
                newest_at(&format!("vm{:02}", (k + 1) % VMS), time),
            ) else {
                continue;
            };
            assert!(
                b <= a && a <= b + 1,
                "at {time}: a of vm{k:02} is {a}, b of the next VM is {b}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * VMS, "{checked} pairs checked");
    // The final points hold the last values.
    for (k, total) in totals.iter().enumerate() {
        let (a, _) = newest_at(&format!("vm{k:02}"), "9999").unwrap();
        assert_eq!(a, *total, "vm{k:02} ends with its writer's last value");
    }
}

#[test]
fn rpo_pending_writes_and_throughput_show_in_status_and_alert_above_the_threshold() {
    let harness = Harness::new();
    let disk = raw_disk(&harness, "db1/disk.raw", "16M");
    let protect = Protect::start_with(
        &harness,
        "shop",
        &[("db1".to_string(), vec![disk])],
        "0.2",
        &["--rpo-threshold", "3"],
    );
    let replicas = harness.path("replicas");
    let (receiver, log) = follow(&harness, "shop", &replicas, &["--rpo-threshold", "3"]);
    let mut client = protect.client("db1/disk.raw");
    for round in 0..20u64 {
        client.write(round * 65536, &block(round), false).unwrap();
    }
    // The VM goes on writing, a block per look: its throughput is measured over the last
    // minute, which a loaded machine can take to make the first point.
    let mut round = 20u64;
    let healthy = status_within(
        &harness,
        "shop",
        Duration::from_secs(120),
        |g| {
            g["alert"] == false
                && g["vms"][0]["point"].is_string()
                && g["vms"][0]["write_bytes_per_second"].as_f64() > Some(0.0)
        },
        || {
            client
                .write((round % 256) * 65536, &block(round), false)
                .unwrap();
            round += 1;
        },
    );
    let rpo = healthy["rpo_seconds"].as_f64().unwrap();
    assert!((0.0..3.0).contains(&rpo), "{healthy}");
    assert_eq!(healthy["rpo_threshold_seconds"], 3.0);
    assert_eq!(healthy["vms"][0]["vm"], "db1");
    assert_eq!(healthy["vms"][0]["alert"], false);
    assert!(healthy["pending_writes"].is_u64() && healthy["pending_bytes"].is_u64());
    assert!(healthy["ship_bytes_per_second"].as_f64() > Some(0.0));
    assert!(healthy["sender_seen_seconds_ago"].as_f64() < Some(3.0));
    assert!(
        healthy["rpo_latest_seconds"].as_f64() < Some(3.0),
        "{healthy}"
    );

    // The protected side stops shipping: the RPO grows past the threshold, the receiver
    // logs an alert and status flags the group and its VM.
    drop(protect);
    let late = status_until(&harness, "shop", |g| g["alert"] == true);
    assert!(late["rpo_seconds"].as_f64() > Some(3.0), "{late}");
    assert_eq!(late["vms"][0]["alert"], true);
    let status = harness.json(&["status"]);
    assert_eq!(status["alerts"], serde_json::json!(["shop"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("ALERT: group 'shop': RPO")
    {
        assert!(Instant::now() < deadline, "the receiver never alerted");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(receiver);
    // The text form says so too.
    let text = harness.ok(&["status"]);
    assert!(
        text.contains("group shop") && text.contains("ALERT"),
        "{text}"
    );
}

#[test]
fn restore_at_a_wall_clock_time_picks_the_point_of_that_moment_and_history_is_thinned() {
    let harness = Harness::new();
    let disk = raw_disk(&harness, "db1/disk.raw", "4M");
    let protect = Protect::start(&harness, "shop", &[("db1".to_string(), vec![disk])], "0.2");
    let replicas = harness.path("replicas");
    let mut client = protect.client("db1/disk.raw");
    // Three generations of the disk, each reaching a point before the next is written.
    let mut moments = Vec::new();
    for value in 1..=3u64 {
        client.write(0, &block(value), true).unwrap();
        let written = chrono::Utc::now();
        receive_past(&harness, "shop", &replicas, written);
        moments.push(chrono::Utc::now());
        std::thread::sleep(Duration::from_millis(300));
    }
    for (index, moment) in moments.iter().enumerate() {
        let target = harness.path(&format!("at-{index}"));
        let at = moment.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        harness.json(&[
            "restore",
            "--vm",
            "db1",
            "--at",
            &at,
            "--target",
            target.to_str().unwrap(),
        ]);
        assert_eq!(
            counter(&target.join("disk.raw")),
            index as u64 + 1,
            "at {at}"
        );
    }
    // Before the history starts: refused, naming where it starts.
    let stderr = harness.fails(&[
        "restore",
        "--vm",
        "db1",
        "--at",
        "2020-01-01 00:00:00",
        "--target",
        harness.path("too-early").to_str().unwrap(),
    ]);
    assert!(stderr.contains("history starts at"), "{stderr}");

    // Thinning: keep every point within 1 s of the newest, then one per hour.
    let before = harness.points().len();
    assert!(before >= 3, "{before} points");
    // The points so far fall out of the window.
    std::thread::sleep(Duration::from_millis(1500));
    client.write(0, &block(9), true).unwrap();
    let written = chrono::Utc::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut thinned = 0;
    loop {
        let report = harness.json(&[
            "receive",
            "--group",
            "shop",
            "--replicas",
            replicas.to_str().unwrap(),
            "--keep-within",
            "1s",
            "--keep-hourly",
            "1",
            "--keep-daily",
            "0",
            "--thin-every",
            "0s",
        ]);
        thinned += report["points_thinned"].as_u64().unwrap();
        let applied = report["applied_time"].as_str().unwrap();
        if chrono::DateTime::parse_from_rfc3339(applied).unwrap() > written && thinned > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never thinned: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let points = harness.points();
    assert!(
        points.len() < before,
        "{} of {before} points left",
        points.len()
    );
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = points
        .iter()
        .map(|p| chrono::DateTime::parse_from_rfc3339(&text(p, "time")).unwrap())
        .collect();
    let newest = *times.iter().max().unwrap();
    assert!(
        times
            .iter()
            .all(|t| newest.signed_duration_since(*t) <= chrono::Duration::seconds(1)),
        "only points within the window are left: {times:?}"
    );
    harness.restore("latest", &harness.path("latest"), &["--vm", "db1"]);
    assert_eq!(counter(&harness.path("latest").join("disk.raw")), 9);
}

/// The 8-byte value at `offset` of a file.
fn value_at(path: &std::path::Path, offset: usize) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

#[test]
fn a_freeze_hook_makes_application_consistent_points_that_hold_the_quiesced_state() {
    use std::os::unix::fs::PermissionsExt;
    let harness = Harness::new();
    let disk = raw_disk(&harness, "db1/disk.raw", "1M");
    let (frozen, quiet, calls) = (
        harness.path("frozen"),
        harness.path("quiet"),
        harness.path("calls"),
    );
    // The hook asks the application to quiesce and waits until it has.
    let hook = harness.path("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $2 $LIFEBOAT_GROUP\" >> {calls}\ncase \"$1\" in\n\
             freeze) touch {frozen}; i=0; while [ ! -e {quiet} ]; do sleep 0.01; i=$((i+1)); \
             [ $i -gt 500 ] && exit 1; done ;;\n\
             thaw) rm -f {frozen} {quiet} ;;\nesac\nexit 0\n",
            calls = calls.display(),
            frozen = frozen.display(),
            quiet = quiet.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let protect = Protect::start_with(
        &harness,
        "shop",
        &[("db1".to_string(), vec![disk.clone()])],
        "0.2",
        &[
            "--freeze-hook",
            hook.to_str().unwrap(),
            "--app-consistent-every",
            "1s",
        ],
    );
    // The application: a counter in block 0, and in block 1 the counter as of its last
    // checkpoint, written when asked to quiesce. Quiesced, block 1 equals block 0.
    let stop = Arc::new(AtomicBool::new(false));
    let application = {
        let mut client = protect.client("db1/disk.raw");
        let (stop, frozen, quiet) = (Arc::clone(&stop), frozen.clone(), quiet.clone());
        std::thread::spawn(move || {
            let mut value = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if frozen.exists() {
                    if !quiet.exists() {
                        client.write(4096, &block(value), false).unwrap();
                        client.flush().unwrap();
                        std::fs::write(&quiet, b"").unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                value += 1;
                client.write(0, &block(value), false).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            value
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let last = application.join().unwrap();
    assert!(last > 20, "the application made progress: {last}");
    let replicas = harness.path("replicas");
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());

    let points = harness.points();
    let app: Vec<&Value> = points
        .iter()
        .filter(|p| p["consistency"] == "app")
        .collect();
    assert!(
        app.len() >= 2,
        "application-consistent points: {points:?}\n{}",
        protect.log()
    );
    for point in &app {
        let id = text(point, "point");
        let target = harness.path(&format!("restored-{id}"));
        harness.restore(&id, &target, &[]);
        let restored = target.join("disk.raw");
        assert_eq!(
            value_at(&restored, 0),
            value_at(&restored, 4096),
            "application-consistent point {id} holds writes made after the quiesce"
        );
    }
    let log = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 4, "{log}");
    for pair in lines.chunks(2).filter(|pair| pair.len() == 2) {
        assert_eq!(pair, ["freeze shop shop", "thaw shop shop"], "{log}");
    }

    // A freeze that fails thaws, logs why, and replication goes on crash-consistent.
    std::fs::write(
        &hook,
        "#!/bin/sh\n[ \"$1\" = freeze ] && echo cannot quiesce >&2 && exit 1\nexit 0\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !protect.log().contains("cannot quiesce") {
        assert!(Instant::now() < deadline, "{}", protect.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        protect
            .log()
            .contains("no application-consistent point this time: ")
            && protect.log().contains("freeze failed"),
        "{}",
        protect.log()
    );
    let mut client = protect.client("db1/disk.raw");
    client.write(0, &block(last + 1000), true).unwrap();
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    harness.restore("latest", &harness.path("after"), &["--vm", "db1"]);
    assert_eq!(
        counter(&harness.path("after").join("disk.raw")),
        last + 1000
    );
}

#[test]
fn qcow2_and_vhdx_disks_are_protected_through_qemu_and_restore_identical() {
    let harness = Harness::new();
    // A qcow2 holding a real filesystem (compressed clusters among them) and a VHDX.
    let system = harness.copy_image("fs.qcow2");
    let data = harness.copy_image("fs.vhdx");
    let protect = Protect::start(
        &harness,
        "shop",
        &[("db1".to_string(), vec![system.clone(), data.clone()])],
        "0.2",
    );
    // While protected, qemu's lock on the images is held: nothing else may write them.
    let locked = Command::new("qemu-io")
        .args(["-c", "write 0 4k"])
        .arg(&system)
        .output()
        .unwrap();
    assert!(!locked.status.success(), "a second writer was let in");
    for (export, commands) in [
        (
            "db1/fs.qcow2",
            vec!["write -P 0x5a 1M 256k", "write -z 4M 1M", "flush"],
        ),
        ("db1/fs.vhdx", vec!["write -P 0x17 0 64k", "flush"]),
    ] {
        protect.qemu_io(export, &commands);
    }
    let replicas = harness.path("replicas");
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    drop(protect);
    // The images stay valid images of their format, holding the writes.
    for image in [&system, &data] {
        let check = Command::new("qemu-img")
            .arg("check")
            .arg(image)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: {}",
            image.display(),
            String::from_utf8_lossy(&check.stdout)
        );
    }
    let target = harness.path("restored");
    harness.restore("latest", &target, &["--vm", "db1"]);
    assert!(identical(&system, &target.join("fs.qcow2")));
    assert!(identical(&data, &target.join("fs.vhdx")));
}
