//! Object storage, geo copies, regions and storage failover, against a real S3 server and
//! a real Azure Blob emulator (Azurite).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Harness, KillOnDrop, identical, paused, signal, text};
use lifeboat_testing::{AzuriteServer, ObjectServer, S3Server};
use serde_json::Value;

/// `lifeboat` talking to `server`, with `--repo location`.
fn at(harness: &Harness, server: &dyn ObjectServer, location: &str) -> Command {
    between(harness, &[server], location)
}

/// `lifeboat` talking to each of `servers`, with `--repo location`.
fn between(harness: &Harness, servers: &[&dyn ObjectServer], location: &str) -> Command {
    let mut command = harness.command();
    for server in servers {
        command.envs(server.environment());
    }
    command
        .env("LIFEBOAT_STORAGE_RETRY_SECONDS", "3")
        .args(["--repo", location]);
    command
}

fn run(mut command: Command, arguments: &[&str]) -> (i32, String, String) {
    let output = command.args(arguments).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(command: Command, arguments: &[&str]) -> String {
    let (code, stdout, stderr) = run(command, arguments);
    assert_eq!(
        code, 0,
        "lifeboat {arguments:?} failed:\n{stderr}\n{stdout}"
    );
    assert!(!stderr.contains("panicked"));
    stdout
}

fn json(command: Command, arguments: &[&str]) -> Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(arguments);
    let stdout = ok(command, &with_json);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn point_names(repository: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repository.join("points"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn every_command_works_on_an_s3_repository() {
    every_command_works_on(&S3Server::start());
}

#[test]
fn every_command_works_on_an_azure_blob_repository() {
    every_command_works_on(&AzuriteServer::start());
}

fn every_command_works_on(server: &dyn ObjectServer) {
    let harness = Harness::uninitialised();
    let location = server.location("west");
    let repo = || at(&harness, server, &location);
    ok(repo(), &["init"]);
    let image = harness.copy_image("fs.qcow2");
    let first = json(repo(), &["backup", "--vm", "web1", image.to_str().unwrap()]);
    common::random_writes(&image, 30, 5);
    let second = json(repo(), &["backup", "--vm", "web1", image.to_str().unwrap()]);
    assert_eq!(second["parent"], first["point"]);
    let points = json(repo(), &["points", "--vm", "web1"]);
    assert_eq!(points.as_array().unwrap().len(), 2);
    let target = harness.path("restored");
    json(
        repo(),
        &[
            "restore",
            "latest",
            "--vm",
            "web1",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(identical(&image, &target.join("fs.qcow2")));
    let verify = json(repo(), &["verify", "--read-data"]);
    assert_eq!(verify["damage"].as_array().unwrap().len(), 0);
    json(repo(), &["forget", "--vm", "web1", "--keep-last", "1"]);
    let prune = json(repo(), &["prune"]);
    assert_eq!(prune["points"], 1);
    let mut export = repo()
        .args([
            "--json",
            "export",
            "latest",
            "--vm",
            "web1",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(export.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let announced: Value = serde_json::from_str(&line).unwrap();
    let copy = harness.path("exported.raw");
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            announced["exports"][0]["uri"].as_str().unwrap(),
        ])
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(identical(&image, &copy));
    export.kill().unwrap();
    export.wait().unwrap();
}

#[test]
fn wrong_credentials_and_a_missing_bucket_give_clear_errors() {
    let server = S3Server::start();
    let harness = Harness::uninitialised();
    let (code, _, stderr) = run(
        {
            let mut command = at(&harness, &server, &server.location("west"));
            command.env("AWS_SECRET_ACCESS_KEY", "wrong");
            command
        },
        &["init"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("access to repository s3://lifeboat/west was denied")
            && stderr.contains("check the credentials"),
        "{stderr}"
    );
    let (code, _, stderr) = run(at(&harness, &server, "s3://missing-bucket/west"), &["init"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bucket 'missing-bucket'") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

/// Two points of a VM with two disks in a local repository.
fn source_with_points(harness: &Harness) -> Vec<PathBuf> {
    let disks = vec![
        harness.copy_image("fs.raw"),
        harness.copy_image("random.raw"),
    ];
    harness.backup("db1", &[&disks[0], &disks[1]]);
    common::random_writes(&disks[0], 50, 11);
    harness.backup("db1", &[&disks[0], &disks[1]]);
    disks
}

#[test]
fn geo_sync_copies_whole_points_between_any_two_backends() {
    let server = S3Server::start();
    let azurite = AzuriteServer::start();
    let harness = Harness::new();
    let disks = source_with_points(&harness);
    let source = harness.repository.display().to_string();
    let in_s3 = server.location("copies/west");
    let back_on_disk = harness.path("copy-of-copy").display().to_string();
    let in_s3_again = server.location("copies/third");
    let in_azure = azurite.location("copies/fourth");
    let both: [&dyn ObjectServer; 2] = [&server, &azurite];
    let via = |harness: &Harness, location: &str| between(harness, &both, location);
    for (from, to) in [
        (&source, &in_s3),
        (&in_s3, &back_on_disk),
        (&back_on_disk, &in_s3_again),
        (&in_s3_again, &in_azure),
    ] {
        let report = json(via(&harness, from), &["geo-sync", "--to", to]);
        assert_eq!(
            report["points_copied"].as_array().unwrap().len(),
            2,
            "{report}"
        );
        assert!(report["pending"].as_array().unwrap().is_empty());
        // The copy is the same repository: same password, same points, restorable.
        let points = json(via(&harness, to), &["points"]);
        assert_eq!(points.as_array().unwrap().len(), 2);
        let verify = json(via(&harness, to), &["verify", "--read-data"]);
        assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{verify}");
        // A second round copies nothing.
        let again = json(via(&harness, from), &["geo-sync", "--to", to]);
        assert_eq!(again["points_copied"].as_array().unwrap().len(), 0);
        assert_eq!(again["bytes_copied"], 0);
    }
    let target = harness.path("restored");
    json(
        via(&harness, &in_azure),
        &[
            "restore",
            "latest",
            "--vm",
            "db1",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    for disk in &disks {
        assert!(identical(disk, &target.join(disk.file_name().unwrap())));
    }
    // A copy of another repository is refused.
    let other = Harness::new();
    let (code, _, stderr) = run(
        via(&other, &other.repository.display().to_string()),
        &["geo-sync", "--to", &in_s3],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("holds another repository"), "{stderr}");
}

#[test]
fn kill_9_during_geo_sync_never_exposes_a_partial_point_and_resumes_without_recopying() {
    let harness = Harness::new();
    let disks = [
        harness.copy_image("fs.raw"),
        harness.copy_image("fs.vhdx"),
        harness.copy_image("random.raw"),
    ];
    for round in 0..3u64 {
        let paths: Vec<&Path> = disks.iter().map(PathBuf::as_path).collect();
        harness.backup("vm", &paths);
        common::random_writes(&disks[0], 200, round);
    }
    let copy = harness.path("copy");
    let copy_location = copy.display().to_string();
    // Packs the copy holds whole (a pack being written is a temporary file first).
    let packs_in_copy = || -> usize {
        std::fs::read_dir(copy.join("packs"))
            .map(|fans| {
                fans.flatten()
                    .flat_map(|fan| std::fs::read_dir(fan.path()).into_iter().flatten())
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut interrupted = 0;
    // Each run is killed once it has copied a pack more (at a moment the machine's load
    // does not decide), or when it is done.
    for run in 0..5 {
        let before = packs_in_copy();
        let mut child = harness
            .command()
            .args(["geo-sync", "--to", &copy_location, "--threads", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while packs_in_copy() <= before && child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "run {run} copied nothing"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever the copy lists restores: verify reads every byte of every listed point.
        if copy.join("config").exists() {
            let copy_harness = Harness {
                directory: tempfile::tempdir().unwrap(),
                repository: copy.clone(),
                password: harness.password.clone(),
            };
            let verify = copy_harness.json(&["verify", "--read-data"]);
            assert_eq!(
                verify["damage"].as_array().unwrap().len(),
                0,
                "after the kill of run {run}: {verify}"
            );
        }
    }
    assert!(interrupted >= 2, "kills landed during geo-sync");
    let copied_before = point_names(&copy).len();
    let stored: u64 = std::fs::read_dir(harness.repository.join("packs"))
        .unwrap()
        .flat_map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let last = harness.json(&["geo-sync", "--to", &copy_location]);
    assert_eq!(point_names(&copy), point_names(&harness.repository));
    assert_eq!(
        last["points_copied"].as_array().unwrap().len(),
        3 - copied_before
    );
    assert!(
        common::number(&last, "bytes_copied") < stored,
        "packs copied before the kills are not copied again"
    );
}

#[test]
fn the_s3_server_killed_mid_sync_loses_nothing_and_the_sync_resumes() {
    let mut server = S3Server::start();
    let harness = Harness::new();
    // 96 MiB of incompressible data: six packs to copy.
    let big = harness.path("big.raw");
    let mut random = vec![0u8; 96 << 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    std::fs::write(&big, &random).unwrap();
    harness.backup("vm", &[&big]);
    let copy = server.location("copies/west");
    let source = harness.repository.display().to_string();
    let child = at(&harness, &server, &source)
        .args(["--json", "geo-sync", "--to", &copy, "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server as soon as the first pack has arrived.
    let packs = server.root().join("lifeboat/copies/west/packs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&packs).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "no pack arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the kill landed before the sync ended"
    );
    assert!(
        stderr.contains("s3://lifeboat/copies/west") && stderr.contains("failed after retries"),
        "{stderr}"
    );
    server.restart();
    // The copy, as far as it got, lists no point whose data is missing.
    let listed = json(at(&harness, &server, &copy), &["points"]);
    assert!(listed.as_array().unwrap().len() <= 1);
    let report = json(at(&harness, &server, &source), &["geo-sync", "--to", &copy]);
    assert!(report["pending"].as_array().unwrap().is_empty(), "{report}");
    let verify = json(at(&harness, &server, &copy), &["verify", "--read-data"]);
    assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{verify}");
    let points = json(at(&harness, &server, &copy), &["points"]);
    assert_eq!(points.as_array().unwrap().len(), 1);
}

#[test]
fn a_corrupted_pack_in_the_source_is_reported_and_not_spread() {
    let harness = Harness::new();
    let first = harness.copy_image("random.raw");
    let damaged_point = text(&harness.backup("one", &[&first]), "point");
    let second = harness.copy_image("repeated.raw");
    let healthy_point = text(&harness.backup("two", &[&second]), "point");
    // Damage the pack holding the random data.
    let pack = std::fs::read_dir(harness.repository.join("packs"))
        .unwrap()
        .flat_map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    let copy = harness.path("copy");
    let (code, stdout, _) = harness.run(&["--json", "geo-sync", "--to", copy.to_str().unwrap()]);
    assert_eq!(code, 3, "damage makes geo-sync exit 3: {stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let problems = report["problems"].to_string();
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        problems.contains(&pack_name) && problems.contains("corrupt"),
        "{problems}"
    );
    assert_eq!(report["pending"][0]["point"], damaged_point.as_str());
    assert_eq!(point_names(&copy), [healthy_point]);
    assert!(
        !copy
            .join("packs")
            .join(&pack_name[..2])
            .join(&pack_name)
            .exists(),
        "the corrupt pack is not copied"
    );
}

/// A configuration with two paired regions in local directories.
fn regions(harness: &Harness, hook_output: &Path) -> PathBuf {
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[region]]
name = "west"
repository = "{west}"
pair = "east"
redundancy = "geo-read"
on_storage_failover = "echo \"$LIFEBOAT_REGION $LIFEBOAT_REPOSITORY $LIFEBOAT_EPOCH\" > {hook}"

[[region]]
name = "east"
repository = "{east}"
pair = "west"
redundancy = "local"
"#,
            west = harness.path("west").display(),
            east = harness.path("east").display(),
            hook = hook_output.display(),
        ),
    )
    .unwrap();
    config
}

#[test]
fn status_failover_backups_on_the_copy_and_reprotect() {
    let harness = Harness::uninitialised();
    let hook = harness.path("hook.txt");
    let config = regions(&harness, &hook);
    let west = || harness.in_region(&config, "west");
    ok(west(), &["init"]);
    let disk = harness.copy_image("fs.raw");
    let disk_path = disk.to_str().unwrap();
    json(west(), &["backup", "--vm", "web1", disk_path]);

    // Before any sync: one point behind, never synced.
    let status = json(west(), &["status"]);
    let region = &status["regions"][0];
    assert_eq!(region["name"], "west");
    assert_eq!(region["reachable"], true);
    assert_eq!(region["copy"]["points_behind"], 1);
    assert!(region["copy"]["bytes_behind"].as_u64().unwrap() > 0);
    assert!(region["copy"]["last_sync_time"].is_null());
    assert_eq!(
        status["regions"].as_array().unwrap().len(),
        1,
        "--region limits the status to one region"
    );

    let synced = json(west(), &["geo-sync"]);
    let copy_location = harness.path("east/copies/west");
    assert_eq!(synced["destination"], copy_location.display().to_string());
    let status = json(west(), &["status"]);
    assert_eq!(status["regions"][0]["copy"]["points_behind"], 0);
    assert_eq!(status["regions"][0]["copy"]["bytes_behind"], 0);
    assert_eq!(
        status["regions"][0]["copy"]["last_sync_time"],
        synced["last_sync_time"]
    );

    // A point made after the last sync is what a failover loses.
    common::random_writes(&disk, 20, 1);
    let lost = json(west(), &["backup", "--vm", "web1", disk_path]);
    let refused = run(west(), &["region", "failover"]);
    assert_eq!(refused.0, 1);
    assert!(refused.2.contains("answers"), "{}", refused.2);

    // The region is lost: its repository is gone.
    std::fs::rename(harness.path("west"), harness.path("west-offline")).unwrap();
    let status = json(west(), &["status"]);
    assert_eq!(status["regions"][0]["reachable"], false);
    // geo-read: reads fall back to the copy before any failover.
    let (code, stdout, stderr) = run(west(), &["points"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("reading its geo copy"), "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        2,
        "header and the one synced point: {stdout}"
    );

    let failover = json(west(), &["region", "failover"]);
    assert_eq!(failover["repository"], copy_location.display().to_string());
    assert_eq!(failover["epoch"], 1);
    assert_eq!(failover["points"], 1);
    assert_eq!(failover["last_sync_time"], synced["last_sync_time"]);
    assert_eq!(
        std::fs::read_to_string(&hook).unwrap().trim(),
        format!("west {} 1", copy_location.display()),
        "the failover hook ran with the new repository"
    );
    // Backups and restores go on against the promoted copy.
    let after = json(west(), &["backup", "--vm", "web1", disk_path]);
    assert_eq!(point_names(&copy_location).len(), 2);
    let target = harness.path("restored");
    json(
        west(),
        &[
            "restore",
            &text(&after, "point"),
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(identical(&disk, &target.join("fs.raw")));
    let status = json(west(), &["status"]);
    assert_eq!(status["regions"][0]["active"], "copy");
    assert!(
        status["regions"][0]["copy"].is_null(),
        "unprotected until reprotected"
    );

    // The old primary comes back and becomes the copy.
    std::fs::rename(harness.path("west-offline"), harness.path("west")).unwrap();
    let reprotected = json(west(), &["region", "reprotect"]);
    assert_eq!(
        reprotected["divergent_points"],
        serde_json::json!([text(&lost, "point")])
    );
    assert_eq!(
        reprotected["sync"]["points_copied"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let status = json(west(), &["status"]);
    assert_eq!(
        status["regions"][0]["copy"]["location"],
        harness.path("west").display().to_string()
    );
    assert_eq!(status["regions"][0]["copy"]["points_behind"], 0);
}

/// Writes `value` over the whole of a 1 MiB raw image with qemu-io (which takes qemu's
/// image locks, as a VM does), retrying while a backup holds the image.
/// Every point of `source` made before `claim` is in `copy`.
fn claim_holds(source: &[Value], copy: &[Value], claim: &str) -> bool {
    source.iter().all(|point| {
        text(point, "time").as_str() >= claim
            || copy.iter().any(|held| held["point"] == point["point"])
    })
}

/// A round beside a running backup took its own start for the last sync time, although
/// the backup's point, older than that, was not in the copy.
#[test]
fn the_last_sync_time_never_claims_a_point_the_copy_lacks() {
    let harness = Harness::uninitialised();
    let config = regions(&harness, &harness.path("hook.txt"));
    let west = || harness.in_region(&config, "west");
    let copy = || {
        let mut command = harness.command();
        command.env("LIFEBOAT_REPO", harness.path("east/copies/west"));
        command
    };
    let points = |mut command: Command| -> Vec<Value> {
        let output = command.args(["--json", "points"]).output().unwrap();
        serde_json::from_slice::<Value>(&output.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    };
    ok(west(), &["init"]);
    let short = harness.copy_image("fs.raw");
    let long = harness.copy_image("random.raw");
    json(
        west(),
        &["backup", "--vm", "short", short.to_str().unwrap()],
    );
    // A round after a backup that has ended ("short"), beside one that runs across it
    // ("long", stopped while it holds its lease and reads).
    let (backup, _log) = paused(
        west(),
        &["--json", "backup", "--vm", "long", long.to_str().unwrap()],
    );
    let _reap = KillOnDrop(vec![backup.id()]);
    let round = json(west(), &["geo-sync"]);
    assert_eq!(
        round["backups_running"].as_array().unwrap().len(),
        1,
        "{round}"
    );
    signal(&backup, "CONT");
    let finished = backup.wait_with_output().unwrap();
    assert!(finished.status.success());
    let long_point: Value = serde_json::from_slice(&finished.stdout).unwrap();
    let claim = text(&round, "last_sync_time");
    assert!(
        claim <= text(&long_point, "time"),
        "{claim} claims the point of a backup running beside the round: {long_point}"
    );
    let source_points = points(west());
    let copy_points = points(copy());
    assert_eq!((source_points.len(), copy_points.len()), (2, 1));
    assert!(claim_holds(&source_points, &copy_points, &claim));
    // status says the same, and why.
    let status = json(west(), &["status"]);
    let copy_status = &status["regions"][0]["copy"];
    assert_eq!(copy_status["last_sync_time"], claim.as_str());
    assert_eq!(copy_status["points_behind"], 1);
    let said = ok(west(), &["status"]);
    assert!(said.contains("1 running backup(s)"), "{said}");

    // A storage failover now names what it loses: the running backup's point.
    std::fs::rename(harness.path("west"), harness.path("west-offline")).unwrap();
    let failover = json(west(), &["region", "failover"]);
    assert_eq!(failover["last_sync_time"], claim.as_str());
    assert_eq!(
        failover["lost_backups_running_since"],
        round["backups_running"]
    );
    assert!(
        failover["lost_backups_running_since"][0].as_str().unwrap()
            <= text(&long_point, "time").as_str(),
        "{failover}"
    );
}

fn qemu_write(image: &Path, value: u8) {
    loop {
        let output = Command::new("qemu-io")
            .args(["-f", "raw", "-c", &format!("write -P {value} 0 1M")])
            .arg(image)
            .output()
            .unwrap();
        if output.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn first_byte(image: &Path) -> u8 {
    std::fs::read(image).unwrap()[0]
}

#[test]
fn independent_copies_of_two_disks_disagree_while_every_geo_copied_point_is_consistent() {
    let harness = Harness::new();
    let a = harness.path("a.raw");
    let b = harness.path("b.raw");
    for disk in [&a, &b] {
        std::fs::write(disk, vec![0u8; 1 << 20]).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The VM: every write goes to disk A, then to disk B.
    let writer = {
        let (a, b, stop) = (a.clone(), b.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            for value in 1..=250u8 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                qemu_write(&a, value);
                qemu_write(&b, value);
            }
        })
    };
    // Independent copies, as geo-redundant storage makes of each disk, and Lifeboat points.
    let mut disagreements = 0;
    let mut copies = 0;
    let copy_a = harness.path("copy-a.raw");
    let copy_b = harness.path("copy-b.raw");
    for round in 0..25 {
        std::fs::copy(&a, &copy_a).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        std::fs::copy(&b, &copy_b).unwrap();
        copies += 1;
        if first_byte(&copy_b) > first_byte(&copy_a) {
            disagreements += 1;
        }
        if round % 3 == 0 {
            // The writer holds the disks for moments; a backup refuses them then, and waits.
            while harness
                .run(&[
                    "backup",
                    "--vm",
                    "pair",
                    a.to_str().unwrap(),
                    b.to_str().unwrap(),
                ])
                .0
                != 0
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        disagreements > 0,
        "independent copies saw disk B ahead of disk A ({disagreements} of {copies})"
    );

    let copy = harness.path("geo-copy");
    harness.json(&["geo-sync", "--to", copy.to_str().unwrap()]);
    let copied = Harness {
        directory: tempfile::tempdir().unwrap(),
        repository: copy,
        password: harness.password.clone(),
    };
    let points = copied.points();
    assert!(points.len() >= 5);
    for point in points {
        let target = copied.path(&text(&point, "point"));
        copied.restore(&text(&point, "point"), &target, &[]);
        let (first, second) = (
            first_byte(&target.join("a.raw")),
            first_byte(&target.join("b.raw")),
        );
        assert!(
            first == second || first == second + 1,
            "point {} holds A={first} B={second}",
            text(&point, "point")
        );
    }
}

#[test]
fn geo_sync_follow_copies_new_points_as_they_are_made() {
    let harness = Harness::new();
    let disk = harness.copy_image("random.raw");
    let copy = harness.path("copy");
    let mut follower = harness
        .command()
        .args([
            "--json",
            "geo-sync",
            "--to",
            copy.to_str().unwrap(),
            "--follow",
            "--interval",
            "0.1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for round in 0..3 {
        common::random_writes(&disk, 10, round);
        let point = text(&harness.backup("vm", &[&disk]), "point");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !copy.join("points").join(&point).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "point {point} never reached the copy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(
        follower.try_wait().unwrap().is_none(),
        "--follow keeps running"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
    let copied = Harness {
        directory: tempfile::tempdir().unwrap(),
        repository: copy,
        password: harness.password.clone(),
    };
    assert_eq!(
        copied.json(&["verify", "--read-data"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_second_geo_sync_into_the_same_copy_is_refused_while_one_runs() {
    let harness = Harness::new();
    let disk = harness.copy_image("random.raw");
    harness.backup("vm", &[&disk]);
    let copy = harness.path("copy");
    let copy_location = copy.display().to_string();
    harness.json(&["geo-sync", "--to", &copy_location]);
    // A round running on another host holds the copy's lease (format: docs/repository-format.md).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let holder = serde_json::json!({
        "operation": "geo-sync",
        "host": "east-1",
        "pid": 4242,
        "process_start_ticks": 1,
        "started_unix_ms": now,
        "refreshed_unix_ms": now,
    });
    let lease = copy.join("locks").join("geo-sync");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    std::fs::write(&lease, holder.to_string()).unwrap();
    harness.backup("vm", &[&disk]);
    let error = harness.fails(&["geo-sync", "--to", &copy_location]);
    assert!(
        error.contains("is locked by geo-sync by pid 4242 on host east-1"),
        "{error}"
    );
    assert_eq!(
        point_names(&copy).len(),
        1,
        "nothing copied beside the holder"
    );
    // Once the holder is done, the next round copies the new point.
    std::fs::remove_file(&lease).unwrap();
    let report = harness.json(&["geo-sync", "--to", &copy_location]);
    assert_eq!(report["points_copied"].as_array().unwrap().len(), 1);
    assert_eq!(point_names(&copy), point_names(&harness.repository));
}
