//! The life of points: listing, naming, retention, garbage collection beside running
//! backups, and serving a point to qemu over NBD.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Harness, KillOnDrop, identical, number, paused, signal, text};

#[test]
fn init_refuses_an_existing_repository_and_commands_refuse_a_missing_one() {
    let harness = Harness::new();
    let error = harness.fails(&["init"]);
    assert!(error.contains("already exists"), "{error}");
    let missing = Harness::uninitialised();
    let error = missing.fails(&["points"]);
    assert!(
        error.contains("no Lifeboat repository") && error.contains("lifeboat init"),
        "{error}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .env_remove("LIFEBOAT_REPO")
        .arg("points")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--repo"));
}

#[test]
fn an_unencrypted_repository_must_be_asked_for_and_keeps_no_key() {
    let harness = Harness::uninitialised();
    let report = harness.json(&["init", "--encryption", "none"]);
    assert_eq!(report["encryption"], "none");
    assert!(!harness.repository.join("keys").exists());
    let encrypted = Harness::uninitialised();
    let report = encrypted.json(&["init"]);
    assert_eq!(
        report["encryption"], "aes-256-gcm",
        "encryption is the default"
    );
    assert_eq!(report["chunk_size_bytes"], 65536);
}

#[test]
fn encrypted_repositories_do_not_reveal_names_or_data() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.raw");
    harness.backup("secret-vm-name", &[&image]);
    let output = Command::new("grep")
        .args(["-r", "-l", "-a", "secret-vm-name"])
        .arg(&harness.repository)
        .output()
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "the VM name appears in {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = Command::new("grep")
        .args(["-r", "-l", "-a", "lifeboat-test"])
        .arg(&harness.repository)
        .output()
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "the filesystem label appears in the repository"
    );
}

#[test]
fn backup_json_has_the_documented_fields() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.qcow2");
    let report = harness.backup("web1", &[&image]);
    for field in [
        "point",
        "vm",
        "bytes_read",
        "bytes_new",
        "bytes_stored",
        "seconds",
    ] {
        assert!(
            !report[field].is_null(),
            "backup --json lacks {field}: {report}"
        );
    }
    assert_eq!(report["vm"], "web1");
    assert!(
        number(&report, "bytes_stored") < number(&report, "bytes_new"),
        "real files compress"
    );
    let points = harness.points();
    for field in ["point", "vm", "time", "consistency", "disks"] {
        assert!(!points[0][field].is_null(), "points --json lacks {field}");
    }
    for field in ["name", "format", "virtual_size_bytes"] {
        assert!(
            !points[0]["disks"][0][field].is_null(),
            "points --json disks lack {field}"
        );
    }
}

#[test]
fn points_are_named_by_id_prefix_or_latest_and_filtered_by_vm() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let first = text(&harness.backup("a", &[&image]), "point");
    common::random_writes(&image, 5, 1);
    let second = text(&harness.backup("a", &[&image]), "point");
    let other = text(&harness.backup("b", &[&image]), "point");
    assert_eq!(
        harness
            .json(&["points", "--vm", "a"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(harness.points().len(), 3);
    for (spec, expected) in [(first[..8].to_string(), &first), (second.clone(), &second)] {
        let target = harness.path(&format!("by-{spec}"));
        assert_eq!(
            text(&harness.restore(&spec, &target, &[]), "point"),
            *expected
        );
    }
    let target = harness.path("latest");
    assert_eq!(
        text(&harness.restore("latest", &target, &["--vm", "a"]), "point"),
        second
    );
    let error = harness.fails(&["restore", "latest", "--target", "/tmp/x"]);
    assert!(error.contains("'latest' needs --vm"), "{error}");
    let error = harness.fails(&["restore", "", "--target", "/tmp/x"]);
    assert!(error.contains("is not a point id"), "{error}");
    let error = harness.fails(&["restore", &other, "--vm", "a", "--target", "/tmp/x"]);
    assert!(error.contains("no recovery point"), "{error}");
}

#[test]
fn forget_applies_the_policy_and_prune_frees_the_space() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let mut points = Vec::new();
    for round in 0..4 {
        // Rewrite a quarter of the disk each time, so each point owns new data.
        let offset = round * (4 << 20);
        let output = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                &format!("write -P {} {offset} 4M", round + 1),
            ])
            .arg(&image)
            .output()
            .unwrap();
        assert!(output.status.success());
        points.push(text(&harness.backup("vm", &[&image]), "point"));
    }
    let size_before = repository_bytes(&harness);
    let dry = harness.json(&["forget", "--vm", "vm", "--keep-last", "2", "--dry-run"]);
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2);
    assert_eq!(harness.points().len(), 4, "a dry run removes nothing");
    let error = harness.fails(&["forget", "--vm", "vm"]);
    assert!(error.contains("at least one --keep"), "{error}");
    let report = harness.json(&["forget", "--vm", "vm", "--keep-last", "2"]);
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["point"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [points[1].as_str(), points[0].as_str()]);
    let listed: Vec<String> = harness.points().iter().map(|p| text(p, "point")).collect();
    assert_eq!(listed, [points[2].clone(), points[3].clone()]);
    let prune = harness.json(&["prune"]);
    assert!(
        number(&prune, "bytes_freed") > 0 || number(&prune, "packs_repacked") > 0,
        "{prune}"
    );
    assert_eq!(prune["packs_pending"], 0, "{prune}");
    let size_after = repository_bytes(&harness);
    assert!(
        size_after < size_before,
        "prune freed space: {size_before} -> {size_after}"
    );
    // Everything kept still restores, and verify finds nothing wrong.
    let target = harness.path("restored");
    harness.restore(&points[3], &target, &[]);
    assert!(identical(&image, &target.join("random.raw")));
    assert_eq!(
        harness.json(&["verify", "--read-data"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

fn repository_bytes(harness: &Harness) -> u64 {
    let output = Command::new("du")
        .args(["-sb"])
        .arg(&harness.repository)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn prune_beside_a_running_backup_never_deletes_what_it_will_need() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.raw");
    let big = harness.copy_image("fs.vhdx");
    harness.backup("vm", &[&image]);
    // The only point referencing these chunks is forgotten; a backup of the same data
    // starts and, while it runs, prune queues (and would delete) the unreferenced packs.
    let unrelated = harness.copy_image("random.raw");
    harness.backup("vm", &[&unrelated]);
    harness.ok(&["forget", "--vm", "vm", "--keep-last", "1"]);
    assert_eq!(harness.points().len(), 1);
    // A large disk of random data first keeps the backup running (lease held, point not
    // committed) long enough for prune to run beside it, however fast the machine.
    let slow = harness.path("slow.raw");
    let random = std::process::Command::new("head")
        .args(["-c", "96M", "/dev/urandom"])
        .stdout(std::fs::File::create(&slow).unwrap())
        .status()
        .unwrap();
    assert!(random.success());
    let mut backup = harness
        .command()
        .args([
            "backup",
            "--vm",
            "other",
            slow.to_str().unwrap(),
            big.to_str().unwrap(),
            image.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Prune runs again and again while the backup holds its lease.
    while common::leases(&harness.repository) == 0 {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup ended before taking its lease"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut waited = false;
    while backup.try_wait().unwrap().is_none() {
        let report = harness.json(&["prune"]);
        waited |= number(&report, "packs_pending") > 0
            && !report["waiting_for"].as_array().unwrap().is_empty();
    }
    assert!(backup.wait().unwrap().success());
    assert!(
        waited,
        "prune waited for the running backup before deleting"
    );
    harness.ok(&["prune"]);
    assert_eq!(
        harness.json(&["verify", "--read-data"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let target = harness.path("restored");
    harness.restore("latest", &target, &["--vm", "other"]);
    assert!(identical(&image, &target.join("fs.raw")));
    assert!(identical(&big, &target.join("fs.vhdx")));
}

#[test]
fn prune_after_forgetting_everything_but_one_point_of_many_vms() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.raw");
    for vm in ["a", "b"] {
        for round in 0..2 {
            common::random_writes(&image, 50, round + vm.len() as u64);
            harness.backup(vm, &[&image]);
        }
    }
    harness.ok(&["forget", "--vm", "a", "--keep-last", "1"]);
    harness.ok(&["prune"]);
    assert_eq!(harness.points().len(), 3);
    for point in harness.points() {
        let target = harness.path(&text(&point, "point"));
        harness.restore(&text(&point, "point"), &target, &[]);
    }
    assert_eq!(
        harness.json(&["verify", "--read-data"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// Starts `lifeboat export` and returns it with the URIs it announced.
fn export(
    harness: &Harness,
    point: &str,
    listen: &str,
) -> (std::process::Child, serde_json::Value) {
    let mut child = harness
        .command()
        .args(["--json", "export", point, "--listen", listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let announcement: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (child, announcement)
}

#[test]
fn qemu_reads_an_exported_point_bit_exact_over_tcp_and_unix_sockets() {
    let harness = Harness::new();
    let system = harness.copy_image("fs.qcow2");
    let data = harness.copy_image("odd-size.raw");
    let point = text(&harness.backup("vm", &[&system, &data]), "point");
    let socket = harness.path("export.sock");
    for listen in [
        "127.0.0.1:0".to_string(),
        format!("unix:{}", socket.display()),
    ] {
        let (mut child, announcement) = export(&harness, &point[..10], &listen);
        assert_eq!(announcement["point"], point.as_str());
        let exports = announcement["exports"].as_array().unwrap();
        assert_eq!(exports.len(), 2);
        for (export, source) in exports.iter().zip([&system, &data]) {
            let uri = export["uri"].as_str().unwrap();
            let copy = harness.path(&format!("copy-{}.raw", export["disk"].as_str().unwrap()));
            let _ = std::fs::remove_file(&copy);
            let output = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", uri])
                .arg(&copy)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(identical(source, &copy), "{uri} serves different content");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Opens a connection that the server greets and that never negotiates further;
/// `handshake` is what it sends of a handshake before it stops.
fn hostile(address: &str, handshake: &[u8]) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).unwrap();
    stream.write_all(handshake).unwrap();
    stream
}

#[test]
fn an_export_serves_qemu_while_200_hostile_connections_are_open_and_closes_them() {
    use std::io::{Read, Write};
    let harness = Harness::new();
    let image = harness.copy_image("fs.qcow2");
    let point = text(&harness.backup("vm", &[&image]), "point");
    let (child, announcement) = export(&harness, &point, "127.0.0.1:0");
    let _export = KillOnDrop(vec![child.id()]);
    let uri = announcement["exports"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let address = uri
        .strip_prefix("nbd://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let opened = std::time::Instant::now();
    // Idle after the greeting; stopped half-way through an option; and a byte at a time.
    let mut half_option = 3u32.to_be_bytes().to_vec(); // fixed newstyle, no zeroes
    half_option.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    let mut connections: Vec<std::net::TcpStream> = (0..70)
        .map(|_| hostile(&address, &[]))
        .chain((0..70).map(|_| hostile(&address, &half_option)))
        .collect();
    let dripping: Vec<std::net::TcpStream> = (0..60).map(|_| hostile(&address, &[])).collect();
    let dripper = {
        let dripping: Vec<_> = dripping.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let mut handshake = 3u32.to_be_bytes().to_vec();
            for _ in 0..64 {
                handshake.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
                handshake.extend_from_slice(&3u32.to_be_bytes()); // NBD_OPT_LIST
                handshake.extend_from_slice(&0u32.to_be_bytes());
            }
            let mut ended = vec![false; dripping.len()];
            for byte in handshake {
                for (mut stream, ended) in dripping.iter().zip(ended.iter_mut()) {
                    *ended |= stream.write_all(&[byte]).is_err();
                }
                if ended.iter().all(|e| *e) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
    };
    connections.extend(dripping);
    assert_eq!(connections.len(), 200);
    let compare = Command::new("timeout")
        .args([
            "60", "qemu-img", "compare", "-f", "raw", "-F", "qcow2", &uri,
        ])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "qemu-img beside 200 hostile connections: {}{}",
        String::from_utf8_lossy(&compare.stdout),
        String::from_utf8_lossy(&compare.stderr)
    );
    // Every hostile connection is closed by the server once its handshake time is up.
    for mut stream in connections.iter().take(140) {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        let ended = stream.read_to_end(&mut rest);
        assert!(
            ended.is_ok()
                || ended
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the server keeps a connection that never negotiated: {ended:?}"
        );
    }
    assert!(
        dripper.join().unwrap(),
        "a connection sending a byte at a time outlived the handshake deadline"
    );
    let waited = opened.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "hostile connections were closed only after {waited:?}"
    );
    let again = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2", &uri])
        .arg(&image)
        .output()
        .unwrap();
    assert!(again.status.success());
}

#[test]
fn an_export_reports_holes_and_refuses_writes() {
    let harness = Harness::new();
    let image = harness.copy_image("zeros-sparse.raw");
    let point = text(&harness.backup("vm", &[&image]), "point");
    let (mut child, announcement) = export(&harness, &point, "127.0.0.1:0");
    let uri = announcement["exports"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let map = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw", &uri])
        .output()
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    assert!(
        map.as_array().unwrap().iter().all(|e| e["data"] == false),
        "{map}"
    );
    let write = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &uri])
        .output()
        .unwrap();
    let message = format!(
        "{}{}",
        String::from_utf8_lossy(&write.stdout),
        String::from_utf8_lossy(&write.stderr)
    );
    assert!(
        message.contains("Operation not permitted")
            || message.contains("read-only")
            || !write.status.success(),
        "{message}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_export_answers_damaged_chunks_with_io_errors_not_wrong_bytes() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let point = text(&harness.backup("vm", &[&image]), "point");
    let pack = std::fs::read_dir(harness.repository.join("packs"))
        .unwrap()
        .flat_map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let (mut child, announcement) = export(&harness, &point, "127.0.0.1:0");
    let uri = announcement["exports"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = harness.path("copy.raw");
    let output = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!output.status.success(), "reading a damaged chunk fails");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn output_without_a_terminal_has_no_progress_bar() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let (code, stdout, stderr) = harness.run(&["backup", "--vm", "vm", image.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stderr.is_empty(),
        "nothing on stderr when not a terminal: {stderr}"
    );
    assert!(
        stdout.contains("point ") && stdout.contains("read 16.0 MiB"),
        "{stdout}"
    );
}

#[test]
fn output_on_a_terminal_shows_a_progress_bar_with_throughput_and_eta() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.raw");
    // `script` runs the backup on a pseudo-terminal and copies what it draws to stdout.
    let backup = format!(
        "'{}' backup --vm vm '{}'",
        env!("CARGO_BIN_EXE_lifeboat"),
        image.display()
    );
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &backup, "/dev/null"])
        .env("LIFEBOAT_REPO", &harness.repository)
        .env("LIFEBOAT_PASSWORD", &harness.password)
        .env("TERM", "xterm")
        .env_remove("LIFEBOAT_PROGRESS")
        .output()
        .expect("run script (util-linux)");
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{terminal}");
    assert!(
        terminal.contains("ETA") && terminal.contains("iB/s") && terminal.contains("=>"),
        "a bar with throughput and ETA: {terminal}"
    );
    assert!(terminal.contains("point "), "{terminal}");
}

/// Readers held no lease once: prune deleted the packs it had just repacked while a
/// restore, an export, a verify or a geo-sync still read them ("pack … is missing", I/O
/// errors in qemu).
#[test]
fn prune_that_repacks_beside_readers_keeps_what_they_read() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let first = text(&harness.backup("vm", &[&image]), "point");
    // Rewrite 6 of the 8 compression groups (2 MiB each): the first point's pack becomes
    // mostly unneeded, so prune repacks what the second point still needs and queues it.
    let mut script = Vec::new();
    for group in (0..8u64).filter(|g| *g != 2 && *g != 5) {
        script.extend([
            "-c".to_string(),
            format!("write -P {} {} 2M", group + 1, group << 21),
        ]);
    }
    let output = Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(&script)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second = text(&harness.backup("vm", &[&image]), "point");

    // Readers of the second point, each past loading its chunk map.
    let (mut exporting, announcement) = export(&harness, &second, "127.0.0.1:0");
    let uri = announcement["exports"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let target = harness.path("restored");
    let target_text = target.display().to_string();
    let (restoring, restore_log) = paused(
        harness.command(),
        &["--json", "restore", &second, "--target", &target_text],
    );
    let (verifying, verify_log) = paused(harness.command(), &["--json", "verify", "--read-data"]);
    // A geo-sync to a new copy, stopped while it holds its reader's lease in the source
    // (a round that ended before the stop is run again: the copy is small and quick).
    let locks = harness.repository.join("locks");
    // A lease being taken is a temporary file first: only a lease by its name counts.
    let holds_lease = || {
        std::fs::read_dir(&locks).unwrap().any(|lease| {
            let lease = lease.unwrap();
            lease.file_name().to_string_lossy().starts_with("read-")
                && std::fs::read_to_string(lease.path())
                    .is_ok_and(|l| l.contains("\"operation\":\"geo-sync\""))
        })
    };
    let mut attempt = 0;
    let (syncing, copy) = loop {
        attempt += 1;
        assert!(attempt <= 20, "geo-sync never stopped holding its lease");
        let copy = harness.path(&format!("copy-{attempt}"));
        let mut syncing = harness
            .command()
            .args([
                "--json",
                "geo-sync",
                "--to",
                copy.to_str().unwrap(),
                "--threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while !holds_lease() && syncing.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(200));
        }
        signal(&syncing, "STOP");
        if holds_lease() && syncing.try_wait().unwrap().is_none() {
            break (syncing, copy);
        }
        signal(&syncing, "CONT");
        syncing.wait().unwrap();
    };
    let _reap = KillOnDrop(vec![
        exporting.id(),
        restoring.id(),
        verifying.id(),
        syncing.id(),
    ]);

    // The first point goes; prune repacks and deletes nothing the readers use.
    let forget = harness.json(&["forget", "--vm", "vm", "--keep-last", "1"]);
    assert_eq!(forget["removed"][0]["point"], first.as_str());
    let prune = harness.json(&["prune"]);
    assert!(number(&prune, "packs_repacked") > 0, "{prune}");
    assert!(number(&prune, "packs_pending") > 0, "{prune}");
    let waiting = prune["waiting_for"].to_string();
    for reader in ["restore", "export", "verify", "geo-sync"] {
        assert!(waiting.contains(reader), "{waiting}");
    }

    // qemu reads the export bit-exact, the restore and the verify finish cleanly.
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &uri])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}{}",
        String::from_utf8_lossy(&compare.stdout),
        String::from_utf8_lossy(&compare.stderr)
    );
    for (child, log) in [(restoring, restore_log), (verifying, verify_log)] {
        signal(&child, "CONT");
        let output = child.wait_with_output().unwrap();
        let rest: String = log.lines().map(|l| l.unwrap() + "\n").collect();
        assert!(output.status.success(), "{rest}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if let Some(damage) = report.get("damage") {
            assert_eq!(damage.as_array().unwrap().len(), 0, "{report:#}");
        }
    }
    assert!(identical(&image, &target.join("random.raw")));
    signal(&syncing, "CONT");
    let synced = syncing.wait_with_output().unwrap();
    assert!(
        synced.status.success(),
        "{}",
        String::from_utf8_lossy(&synced.stderr)
    );
    let from_copy = harness.path("from-copy");
    let restored = harness
        .command()
        .env("LIFEBOAT_REPO", &copy)
        .args(["restore", &second, "--target", from_copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(identical(&image, &from_copy.join("random.raw")));
    exporting.kill().unwrap();
    exporting.wait().unwrap();

    // With the readers gone (the export killed: its lease is stale at once), the old
    // packs go, and what is kept still restores.
    let prune = harness.json(&["prune"]);
    assert!(number(&prune, "packs_deleted") > 0, "{prune}");
    assert_eq!(prune["packs_pending"], 0, "{prune}");
    let again = harness.path("again");
    harness.restore(&second, &again, &[]);
    assert!(identical(&image, &again.join("random.raw")));
    assert_eq!(
        harness.json(&["verify", "--read-data"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
