//! Continuous replication under faults: the capture process and the receiver killed with
//! SIGKILL, the link to the recovery region cut and delayed, the recovery repository full.
//! Never a torn point, never a lost acknowledged write, and a resume that sends only what
//! changed.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::replication::{
    Protect, block, counter, follow, raw_disk, receive_past, receive_past_in,
};
use common::{Harness, SmallFilesystem, identical, text};
use lifeboat_nbd::Client;
use lifeboat_testing::{LinkProxy, ObjectServer, S3Server};

/// Fills `[0, length)` of `disk` with pseudo-random bytes from `seed`.
fn fill(disk: &Path, length: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    file.write_all_at(&noise(length, seed), 0).unwrap();
}

/// Pseudo-random bytes (xorshift), so data does not deduplicate or compress away.
fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// Sum of `resync_bytes` over a protect run's ship reports.
fn resynced(protect: &Protect) -> u64 {
    protect
        .reports()
        .iter()
        .map(|r| r["resync_bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until `protect`'s standard error contains `needle`.
fn wait_for_log(protect: &Protect, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !protect.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "protect never logged '{needle}':\n{}",
            protect.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restores the latest point of `vm` and checks every disk against its image.
fn latest_point_matches(harness: &Harness, vm: &str, disks: &[PathBuf]) {
    let target = harness.path(&format!("latest-{}", chrono::Utc::now().timestamp_micros()));
    harness.restore("latest", &target, &["--vm", vm]);
    for disk in disks {
        assert!(
            identical(disk, &target.join(disk.file_name().unwrap())),
            "{} differs from its latest point",
            disk.display()
        );
    }
}

#[test]
fn kill_9_of_the_capture_loses_no_acknowledged_write_and_resyncs_only_what_changed() {
    let harness = Harness::new();
    let disk = raw_disk(&harness, "db1/disk.raw", "64M");
    fill(&disk, 32 << 20, 1);
    let vms = [("db1".to_string(), vec![disk.clone()])];
    let replicas = harness.path("replicas");

    // The initial sync sends the 32 MiB the disk holds.
    let first = Protect::start_with(&harness, "shop", &vms, "0.2", &["--json"]);
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    assert!(resynced(&first) >= 32 << 20, "{:?}", first.reports());
    drop(first);

    // Restarted with nothing changed, nothing is sent again. A long interval keeps the next
    // writes in the journal only.
    let second = Protect::start_with(&harness, "shop", &vms, "3600", &["--json"]);
    wait_for_log(&second, "resyncing what changed, 0 B");
    let mut client = second.client("db1/disk.raw");
    let mut written = Vec::new();
    for k in 0..16u64 {
        let offset = (k * 3 + 1) * (1 << 20) + 4096 * k;
        let data = noise(64 * 1024, 100 + k);
        client.write(offset, &data, true).unwrap();
        written.push((offset, data));
    }
    // Acknowledged (and flushed), never shipped: the capture process dies.
    drop(client);
    drop(second);
    let bytes = std::fs::read(&disk).unwrap();
    for (offset, data) in &written {
        assert_eq!(&bytes[*offset as usize..][..data.len()], &data[..]);
    }

    // The restart sends what the dirty map marked — the 16 writes' blocks — not the disk.
    let third = Protect::start_with(&harness, "shop", &vms, "0.2", &["--json"]);
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    let sent = resynced(&third);
    assert!(
        (16 * 64 * 1024..=32 * 64 * 1024).contains(&sent),
        "resynced {sent} bytes after the restart; the writes covered 1 MiB"
    );
    drop(third);
    assert!(identical(&disk, &replicas.join("db1").join("disk.raw")));
    latest_point_matches(&harness, "db1", &[disk]);
}

/// A writer that writes `value` to disk a then disk b of one VM, in that order, each
/// acknowledged before the next, reconnecting through restarts of protect.
fn ordered_writer(socket: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let connect = |export: &str| loop {
            if let Ok(client) = Client::connect_unix(&socket, export, &[]) {
                return client;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut a = connect("vm/a.raw");
        let mut b = connect("vm/b.raw");
        let mut value = 0u64;
        while !stop.load(Ordering::Relaxed) {
            value += 1;
            // Retried until acknowledged: a write that failed is not acknowledged, and b is
            // written only after a has been.
            while a.write(0, &block(value), false).is_err() {
                a = connect("vm/a.raw");
            }
            a.write(8192 + 4096 * (value % 100), &block(value), false)
                .ok();
            while b.write(0, &block(value), false).is_err() {
                b = connect("vm/b.raw");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        value
    })
}

#[test]
fn capture_and_receiver_killed_at_random_moments_never_tear_a_point_nor_lose_a_write() {
    let harness = Harness::new();
    let disks = vec![
        raw_disk(&harness, "vm/a.raw", "1M"),
        raw_disk(&harness, "vm/b.raw", "1M"),
    ];
    let vms = [("vm".to_string(), disks.clone())];
    let replicas = harness.path("replicas");
    let mut protect = Protect::start(&harness, "group", &vms, "0.1");
    let mut receiver = follow(&harness, "group", &replicas, &[]).0;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = ordered_writer(protect.socket.clone(), Arc::clone(&stop));
    // Kill -9 one side or the other at pseudo-random moments, each side four times.
    let seed = chrono::Utc::now().timestamp_micros() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut state = seed | 1;
    for round in 0..8 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(Duration::from_millis(200 + state % 1200));
        // The two sides die in turn, starting with a random one.
        if (round + seed).is_multiple_of(2) {
            drop(protect);
            protect = Protect::start(&harness, "group", &vms, "0.1");
        } else {
            drop(receiver);
            receiver = follow(&harness, "group", &replicas, &[]).0;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().unwrap();
    assert!(last > 20, "the writer made progress: {last}");
    drop(receiver);
    receive_past(&harness, "group", &replicas, chrono::Utc::now());
    drop(protect);

    // Nothing acknowledged is lost: the replicas and the newest point are the images.
    assert_eq!(counter(&disks[0]), last);
    for disk in &disks {
        assert!(identical(
            disk,
            &replicas.join("vm").join(disk.file_name().unwrap())
        ));
    }
    latest_point_matches(&harness, "vm", &disks);
    // No point is torn: b is never ahead of a.
    let points = harness.points();
    assert!(points.len() >= 2, "{} points", points.len());
    for point in &points {
        let id = text(point, "point");
        let target = harness.path(&format!("restored-{id}"));
        harness.restore(&id, &target, &[]);
        let (a, b) = (
            counter(&target.join("a.raw")),
            counter(&target.join("b.raw")),
        );
        assert!(b <= a, "point {id} holds b = {b} ahead of a = {a}");
    }
}

/// `server`'s environment with its endpoint replaced by `proxy`.
fn through(server: &S3Server, proxy: &LinkProxy) -> Vec<(String, String)> {
    let mut environment: Vec<(String, String)> = server
        .environment()
        .into_iter()
        .filter(|(key, _)| key != "AWS_ENDPOINT")
        .collect();
    environment.push(("AWS_ENDPOINT".into(), format!("http://{}", proxy.address())));
    environment.push(("LIFEBOAT_STORAGE_RETRY_SECONDS".into(), "2".into()));
    environment
}

#[test]
fn a_cut_and_delayed_link_loses_nothing_and_resumes_with_only_what_changed() {
    let server = S3Server::start();
    let proxy = LinkProxy::start(server.endpoint().trim_start_matches("http://"));
    let harness = Harness::new();
    let location = server.location("east");
    // The protected side reaches the recovery repository through the link; the receiver,
    // in the recovery region, directly.
    let protected_side = through(&server, &proxy);
    let recovery_side = server.environment();
    let ok = harness
        .command()
        .envs(recovery_side.iter().cloned())
        .args(["--repo", &location, "init"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let disk = raw_disk(&harness, "db1/disk.raw", "32M");
    fill(&disk, 8 << 20, 2);
    let vms = [("db1".to_string(), vec![disk.clone()])];
    let replicas = harness.path("replicas");
    let repo = ["--repo", location.as_str()];
    let catch_up = || {
        receive_past_in(
            &harness,
            "shop",
            &replicas,
            chrono::Utc::now(),
            &repo,
            &recovery_side,
        )
    };
    // A 1 MiB journal: the writes during the cut overflow it into resync ranges.
    let protect = Protect::start_in(
        &harness,
        "shop",
        &vms,
        "0.2",
        &["--json", "--journal-mib", "1", "--repo", &location],
        &protected_side,
    );
    catch_up();
    let before_cut = resynced(&protect);

    proxy.cut();
    let mut client = protect.client("db1/disk.raw");
    for k in 0..32u64 {
        client
            .write(16 * (1 << 20) + k * 65536, &noise(65536, 200 + k), false)
            .unwrap();
    }
    client.flush().unwrap();
    wait_for_log(&protect, "shipping failed");
    std::thread::sleep(Duration::from_secs(1));
    proxy.restore();
    catch_up();
    let after_cut = resynced(&protect) - before_cut;
    assert!(
        (1 << 20..=3 << 20).contains(&after_cut),
        "after the link came back {after_cut} bytes were resynced; 2 MiB were written"
    );
    assert!(identical(&disk, &replicas.join("db1").join("disk.raw")));

    // A slow link: every packet delayed, the replicas still catch up exactly.
    proxy.delay(Duration::from_millis(30));
    for k in 0..8u64 {
        client
            .write(k * 4096, &noise(4096, 300 + k), false)
            .unwrap();
    }
    client.flush().unwrap();
    catch_up();
    drop(protect);
    assert!(identical(&disk, &replicas.join("db1").join("disk.raw")));
    let target = harness.path("latest");
    let restored = harness
        .command()
        .envs(recovery_side.iter().cloned())
        .args([
            "--repo", &location, "--json", "restore", "latest", "--vm", "db1", "--target",
        ])
        .arg(&target)
        .output()
        .unwrap();
    assert!(restored.status.success());
    assert!(identical(&disk, &target.join("disk.raw")));
}

#[test]
fn a_full_recovery_repository_stalls_shipping_loses_nothing_and_resumes() {
    let harness = Harness::uninitialised();
    let mount = SmallFilesystem::mount(&harness.repository, "16m");
    harness.ok(&["init"]);
    let disk = raw_disk(&harness, "db1/disk.raw", "64M");
    fill(&disk, 2 << 20, 3);
    let vms = [("db1".to_string(), vec![disk.clone()])];
    let replicas = harness.path("replicas");
    let protect = Protect::start_with(
        &harness,
        "shop",
        &vms,
        "0.2",
        &["--json", "--rpo-threshold", "1"],
    );
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    // More than the repository has room for.
    let mut client = protect.client("db1/disk.raw");
    for k in 0..24u64 {
        client
            .write(
                8 * (1 << 20) + k * (1 << 20),
                &noise(1 << 20, 400 + k),
                false,
            )
            .unwrap();
    }
    client.flush().unwrap();
    wait_for_log(&protect, "shipping failed");
    wait_for_log(&protect, "ALERT: group 'shop'");
    assert!(
        protect.log().contains("No space left") || protect.log().contains("full"),
        "{}",
        protect.log()
    );
    // Whatever the repository holds is whole: every listed point restores and verifies.
    let verify = harness.json(&["verify", "--read-data"]);
    assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{verify}");
    // Room again: shipping resumes and the replicas catch up with every write.
    mount.resize("512m");
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    drop(protect);
    assert!(identical(&disk, &replicas.join("db1").join("disk.raw")));
    latest_point_matches(&harness, "db1", &[disk]);
}

/// The lease was kept between requests to the repository, one of which retries for a
/// minute by default: a capture cut off mid-request took writes long past its lease.
#[test]
fn a_capture_cut_off_beyond_its_fence_lease_refuses_writes_until_the_link_returns() {
    let server = S3Server::start();
    let proxy = LinkProxy::start(server.endpoint().trim_start_matches("http://"));
    let harness = Harness::new();
    let location = server.location("east");
    let ok = harness
        .command()
        .envs(server.environment())
        .args(["--repo", &location, "init"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let disk = raw_disk(&harness, "db1/disk.raw", "8M");
    let vms = [("db1".to_string(), vec![disk.clone()])];
    // The default retry bound (a minute), not the shorter one of the other tests.
    let environment: Vec<(String, String)> = through(&server, &proxy)
        .into_iter()
        .filter(|(key, _)| key != "LIFEBOAT_STORAGE_RETRY_SECONDS")
        .collect();
    let protect = Protect::start_in(
        &harness,
        "shop",
        &vms,
        "0.3",
        &["--fence-lease", "3s", "--repo", &location],
        &environment,
    );
    let mut client = protect.client("db1/disk.raw");
    client.write(0, &noise(65536, 1), false).unwrap();
    client.flush().unwrap();
    // Every request now takes most of a second: the cut finds one in flight.
    proxy.delay(Duration::from_millis(700));
    client.write(131072, &noise(65536, 4), false).unwrap();
    client.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    proxy.cut();
    let cut = Instant::now();
    wait_for_log(
        &protect,
        "VM 'db1' fenced: the recovery repository has not been reachable",
    );
    let fenced_after = cut.elapsed();
    assert!(
        fenced_after < Duration::from_secs(5),
        "fenced {fenced_after:?} after the cut, with a lease of 3 s"
    );
    proxy.delay(Duration::ZERO);
    let refused = client.write(65536, &noise(4096, 2), false).unwrap_err();
    assert!(refused.to_string().contains("fenced"), "{refused}");
    proxy.restore();
    // Unfenced a second time: the first was at the start, once the epochs were read.
    let deadline = Instant::now() + Duration::from_secs(60);
    while protect.log().matches("VM 'db1' unfenced").count() < 2 {
        assert!(Instant::now() < deadline, "{}", protect.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    client.write(65536, &noise(4096, 3), false).unwrap();
    client.flush().unwrap();
}

/// `eprintln!` panics once standard error is a pipe whose reader went away: a capture whose
/// log collector died ended at its next log line, and the VMs lost their disks with it.
#[test]
fn a_capture_whose_log_reader_went_away_goes_on_serving_and_shipping() {
    let harness = Harness::new();
    let disk = raw_disk(&harness, "db1/disk.raw", "8M");
    let socket = harness.path("shop.sock");
    let mut capture = harness
        .command()
        .args([
            "protect",
            "--group",
            "shop",
            "--interval",
            "0.2",
            "--socket",
        ])
        .arg(&socket)
        .arg("--vm")
        .arg(format!("db1={}", disk.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _reap = common::KillOnDrop(vec![capture.id()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "protect never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The log's reader goes away; every cut with writes logs a line from now on.
    drop(capture.stderr.take());
    let mut client = Client::connect_unix(&socket, "db1/disk.raw", &[]).unwrap();
    for k in 0..8u64 {
        client
            .write(k * 65536, &noise(65536, 900 + k), false)
            .unwrap();
        client.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        capture.try_wait().unwrap().is_none(),
        "the capture ended when its log reader went away"
    );
    // And what was written is shipped: the replicas receive every write.
    let replicas = harness.path("replicas");
    receive_past(&harness, "shop", &replicas, chrono::Utc::now());
    assert!(identical(&disk, &replicas.join("db1").join("disk.raw")));
}
