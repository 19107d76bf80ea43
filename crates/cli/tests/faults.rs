//! Bad input and faults: every case ends in a clear error, loses nothing, and never lists
//! a point that cannot be restored or restores wrong bytes.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, SmallFilesystem, identical, number, text};

fn packs(repository: &Path) -> Vec<PathBuf> {
    let mut packs = Vec::new();
    for fan in std::fs::read_dir(repository.join("packs")).unwrap() {
        for entry in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            packs.push(entry.unwrap().path());
        }
    }
    packs.sort();
    packs
}

fn flip_byte(file: &Path, offset: u64) {
    let handle = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8; 1];
    handle.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x01;
    handle.write_all_at(&byte, offset).unwrap();
}

#[test]
fn a_truncated_qcow2_is_refused_naming_the_disk() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let error = harness.fails(&["backup", "--vm", "vm", image.to_str().unwrap()]);
    assert!(error.contains(image.to_str().unwrap()), "{error}");
    assert!(error.contains("damage"), "{error}");
    assert!(
        harness.points().is_empty(),
        "no point after a refused backup"
    );
}

#[test]
fn truncated_vhd_and_vhdx_are_refused_naming_the_disk() {
    let harness = Harness::new();
    for name in ["fs-dynamic.vhd", "fs.vhdx"] {
        let image = harness.copy_image(name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(20 << 20)
            .unwrap();
        let error = harness.fails(&["backup", "--vm", "vm", image.to_str().unwrap()]);
        assert!(
            error.contains(image.to_str().unwrap()) && error.contains("truncated"),
            "{error}"
        );
    }
    assert!(harness.points().is_empty());
}

#[test]
fn a_qcow2_with_a_corrupt_header_is_refused() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.qcow2");
    // l1_table_offset (header bytes 40..48) pointing far beyond the end of the file.
    let handle = OpenOptions::new().write(true).open(&image).unwrap();
    handle
        .write_all_at(&(1u64 << 50).to_be_bytes(), 40)
        .unwrap();
    let error = harness.fails(&["backup", "--vm", "vm", image.to_str().unwrap()]);
    assert!(error.contains("cannot be read as a disk image"), "{error}");
    assert!(harness.points().is_empty());
}

#[test]
fn a_missing_disk_is_named() {
    let harness = Harness::new();
    let error = harness.fails(&["backup", "--vm", "vm", "/nonexistent/disk.qcow2"]);
    assert!(
        error.contains("/nonexistent/disk.qcow2 does not exist"),
        "{error}"
    );
}

/// Reading a disk index reserved memory for the largest index the format allows (8 GiB):
/// a restore or a verify of a 1 MiB point aborted under a limit on virtual memory.
#[test]
fn reading_a_small_point_under_a_memory_limit_allocates_what_it_stored() {
    let harness = Harness::new();
    let image = harness.path("small.raw");
    std::fs::write(&image, vec![5u8; 1 << 20]).unwrap();
    harness.backup("vm", &[&image]);
    let target = harness.path("restored");
    for arguments in [
        vec![
            "restore",
            "latest",
            "--vm",
            "vm",
            "--target",
            target.to_str().unwrap(),
        ],
        vec!["verify", "--read-data"],
    ] {
        let command = harness.command();
        let binary = command.get_program().to_owned();
        let output =
            Command::new("sh")
                .args(["-c", r#"ulimit -v 6000000 && exec "$0" "$@""#])
                .arg(&binary)
                .args(&arguments)
                .envs(command.get_envs().filter_map(|(key, value)| {
                    value.map(|value| (key.to_owned(), value.to_owned()))
                }))
                .output()
                .unwrap();
        assert!(
            output.status.success(),
            "{arguments:?} under ulimit -v 6000000: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(identical(&image, &target.join("small.raw")));
}

/// A private qemu-nbd's socket lived in a folder of the temporary directory, which
/// `kill -9` of Lifeboat's whole process group (qemu-nbd with it) left behind.
#[test]
fn kill_9_of_a_backup_and_its_qemu_nbd_leaves_nothing_in_the_temporary_folder() {
    use std::os::unix::process::CommandExt;
    let harness = Harness::new();
    let image = harness.copy_image("fs.qcow2");
    let temporary = harness.path("tmp");
    std::fs::create_dir(&temporary).unwrap();
    let mut command = harness.command();
    command.env("TMPDIR", &temporary).process_group(0);
    let image_text = image.display().to_string();
    let (backup, _log) = common::paused(command, &["backup", "--vm", "vm", &image_text]);
    // qemu-nbd processes in the backup's process group (field 5 of /proc/PID/stat).
    let group = backup.id().to_string();
    let qemu_nbds = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|entry| {
                std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
                    stat.contains("(qemu-nbd)")
                        && stat.split_whitespace().nth(4) == Some(group.as_str())
                })
            })
            .count()
    };
    assert_eq!(
        qemu_nbds(),
        1,
        "the backup reads through its private qemu-nbd"
    );
    // SAFETY: kill(2) of the process group the backup leads.
    assert_eq!(
        unsafe { libc::kill(-(backup.id() as libc::pid_t), libc::SIGKILL) },
        0
    );
    let mut backup = backup;
    backup.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemu_nbds() > 0 {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd outlived kill -9 of its group"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = std::fs::read_dir(&temporary)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn what_is_not_a_disk_is_refused_and_a_one_byte_file_is_named() {
    let harness = Harness::new();
    let empty = harness.path("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    let folder = harness.path("folder");
    std::fs::create_dir(&folder).unwrap();
    let one_byte = harness.path("one.raw");
    std::fs::write(&one_byte, b"x").unwrap();
    let zero_size = harness.path("zero.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&zero_size)
        .arg("0")
        .status()
        .unwrap();
    assert!(created.success());
    let cases = [
        (Path::new("/dev/null"), "it is a character device"),
        (empty.as_path(), "it is an empty file (0 bytes)"),
        (
            zero_size.as_path(),
            "its virtual size is 0 bytes (qcow2 image)",
        ),
        (
            one_byte.as_path(),
            "it is a 1-byte file, not a whole number of 512-byte sectors",
        ),
        (folder.as_path(), "it is a folder"),
    ];
    for (path, reason) in cases {
        let (code, _, stderr) = harness.run(&["backup", "--vm", "n", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{path:?}: {stderr}");
        assert!(stderr.contains("is not a disk to back up"), "{stderr}");
        assert!(stderr.contains(reason), "{path:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(harness.points().is_empty(), "no point records nothing");
}

#[test]
fn a_closed_standard_output_ends_the_command_quietly() {
    let harness = Harness::new();
    let disk = harness.copy_image("fs.qcow2");
    harness.backup("vm", &[&disk]);
    // The reader is gone before the command prints anything.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = harness
        .command()
        .args(["--json", "points"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "nothing said about the pipe: {stderr}");
}

/// A repository folder of mode 000 was reported as "no repository at …".
#[test]
fn a_repository_denied_by_permissions_is_named_as_such_not_as_missing() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let harness = Harness::new();
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[[region]]\nname = \"west\"\nrepository = \"{}\"\n",
            harness.repository.display()
        ),
    )
    .unwrap();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(&harness.path(""), 0o755);
    mode(&config, 0o644);
    mode(&harness.repository, 0o000);
    // Root reads through any mode: run as nobody then.
    let as_user = |arguments: &[&str]| {
        let mut command = if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_lifeboat"));
            command
        } else {
            Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        };
        let output = command
            .env("LIFEBOAT_PASSWORD", &harness.password)
            .arg("--config")
            .arg(&config)
            .args(arguments)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), said)
    };
    let denied = format!(
        "permission denied on {}/config",
        harness.repository.display()
    );
    let (code, said) = as_user(&["--region", "west", "points"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&denied), "{said}");
    assert!(said.contains("give the user Lifeboat runs as"), "{said}");
    let (_, said) = as_user(&["status"]);
    assert!(said.contains(&denied), "{said}");
    assert!(!said.contains("no repository"), "{said}");
    mode(&harness.repository, 0o700);
}

#[test]
fn a_wrong_or_missing_password_is_refused_clearly() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    harness.backup("vm", &[&image]);
    let output = harness
        .command()
        .env("LIFEBOAT_PASSWORD", "wrong")
        .arg("points")
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(error.contains("wrong password for repository"), "{error}");
    let output = harness
        .command()
        .env_remove("LIFEBOAT_PASSWORD")
        .arg("points")
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("needs a password") && error.contains("--password-file"),
        "{error}"
    );
    // The password file works too.
    let file = harness.path("password");
    std::fs::write(&file, format!("{}\n", harness.password)).unwrap();
    let output = harness
        .command()
        .env_remove("LIFEBOAT_PASSWORD")
        .args(["points", "--password-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
}

/// A repository whose only pack has one flipped byte inside the blob of disk chunk 0.
fn damaged_repository(encryption: &str) -> (Harness, PathBuf, String) {
    let harness = Harness::uninitialised();
    harness.ok(&["init", "--encryption", encryption]);
    let image = harness.copy_image("random.raw");
    let point = text(&harness.backup("vm", &[&image]), "point");
    let packs = packs(&harness.repository);
    assert_eq!(packs.len(), 1, "16 MiB of random data fills one pack");
    flip_byte(&packs[0], 1000);
    (harness, image, point)
}

#[test]
fn a_flipped_byte_is_named_by_verify_refused_by_restore_and_healed_by_the_next_backup() {
    for encryption in ["aes-256-gcm", "none"] {
        let (harness, image, point) = damaged_repository(encryption);
        // Before any verify, restore meets the damage itself and refuses.
        let early = harness.path("early");
        let error = harness.fails(&["restore", &point, "--target", early.to_str().unwrap()]);
        assert!(
            error.contains(&point) && error.contains("is damaged: authentication failed"),
            "{error}"
        );
        assert!(!early.join("random.raw").exists());
        // Structure alone looks fine; reading the data finds the damage.
        harness.ok(&["verify"]);
        let (code, stdout, _) = harness.run(&["verify", "--read-data"]);
        assert_eq!(code, 3, "verify exits 3 on damage: {stdout}");
        assert!(stdout.contains("damaged-chunk"), "{stdout}");
        assert!(
            stdout.contains(&format!("affects points: {point} (VM 'vm')")),
            "{stdout}"
        );
        let report = harness
            .command()
            .args(["--json", "verify", "--read-data"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
        // The byte lies in one blob: every chunk of that blob's group is named, all at the
        // same place.
        let damage = report["damage"].as_array().unwrap();
        assert!(!damage.is_empty() && damage.len() <= 32, "{report}");
        assert!(
            damage
                .iter()
                .all(|d| d["pack"] == damage[0]["pack"] && d["offset"] == damage[0]["offset"])
        );
        let damaged_chunks: Vec<&str> = damage
            .iter()
            .map(|d| d["object"].as_str().unwrap())
            .collect();

        // Restore refuses, naming point, disk offset and chunk, and leaves no file.
        let target = harness.path("restored");
        let error = harness.fails(&["restore", &point, "--target", target.to_str().unwrap()]);
        assert!(
            error.contains(&point)
                && error.contains("disk 'random.raw' at offset ")
                && damaged_chunks.iter().any(|chunk| error.contains(chunk))
                && error.contains("damaged"),
            "{error}"
        );
        assert!(!target.join("random.raw").exists());
        assert_eq!(
            std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0),
            0,
            "no partial file"
        );

        // The next backup of the same data stores a healthy copy; then everything restores.
        let next = harness.backup("vm", &[&image]);
        assert_eq!(
            number(&next, "bytes_new"),
            65536 * damaged_chunks.len() as u64,
            "exactly the damaged chunks are stored again"
        );
        for restored_point in [&point, &text(&next, "point")] {
            let target = harness.path(&format!("healed-{restored_point}"));
            harness.restore(restored_point, &target, &[]);
            assert!(identical(&image, &target.join("random.raw")));
        }
        let report = harness.json(&["verify", "--read-data"]);
        assert_eq!(report["damage"].as_array().unwrap().len(), 0, "{report}");
        assert_eq!(report["quarantined_copies"], damaged_chunks.len());
    }
}

/// verify --read-data checked blobs only: a pack cut short or with a flipped byte in its
/// header or magic passed (exit 0), while geo-sync refused the same pack.
#[test]
fn damage_to_a_packs_header_trailer_or_magic_is_named_by_verify() {
    // (what, damage done to a pack of length L, offset verify must name from the new L)
    type Damage = fn(&Path, u64);
    type Named = fn(u64) -> u64;
    let cases: [(&str, Damage, Named); 3] = [
        (
            "cut short by a byte",
            |pack, length| {
                OpenOptions::new()
                    .write(true)
                    .open(pack)
                    .unwrap()
                    .set_len(length - 1)
                    .unwrap()
            },
            |length| length - 8,
        ),
        (
            "a flipped byte in the magic",
            |pack, length| flip_byte(pack, length - 3),
            |length| length - 8,
        ),
        (
            "a flipped byte in the sealed header",
            |pack, length| flip_byte(pack, length - 12 - 5),
            |_| u64::MAX,
        ),
    ];
    for (what, damage, offset) in cases {
        let harness = Harness::new();
        let image = harness.copy_image("random.raw");
        let point = text(&harness.backup("vm", &[&image]), "point");
        let pack = packs(&harness.repository).remove(0);
        let name = pack.file_name().unwrap().to_string_lossy().into_owned();
        damage(&pack, std::fs::metadata(&pack).unwrap().len());
        let length = std::fs::metadata(&pack).unwrap().len();

        let output = harness
            .command()
            .args(["--json", "verify", "--read-data"])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(3),
            "{what}: verify exits 3 on damage"
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let found = report["damage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == "damaged-pack")
            .unwrap_or_else(|| panic!("{what}: {report:#}"))
            .clone();
        assert_eq!(found["pack"], name.as_str(), "{what}");
        let named = found["offset"].as_u64().unwrap();
        match offset(length) {
            u64::MAX => assert!(
                named < length - 12,
                "{what}: the header starts before the trailer: {found}"
            ),
            expected => assert_eq!(named, expected, "{what}: {found}"),
        }
        // The blobs are whole: the point restores; geo-sync refuses the pack, as verify said.
        let target = harness.path("restored");
        harness.restore(&point, &target, &[]);
        assert!(identical(&image, &target.join("random.raw")), "{what}");
        let copy = harness.path("copy");
        let (_, stdout, stderr) =
            harness.run(&["--json", "geo-sync", "--to", copy.to_str().unwrap()]);
        assert!(
            stdout.contains(&name) || stderr.contains(&name),
            "{what}: {stdout}{stderr}"
        );
    }
}

#[test]
fn a_deleted_pack_is_named_with_every_point_it_affects() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let first = text(&harness.backup("vm", &[&image]), "point");
    let other = harness.copy_image("repeated.raw");
    let second = text(&harness.backup("other", &[&image, &other]), "point");
    for pack in packs(&harness.repository) {
        if std::fs::metadata(&pack).unwrap().len() > 1 << 20 {
            std::fs::remove_file(&pack).unwrap();
            break;
        }
    }
    let (code, stdout, _) = harness.run(&["verify"]);
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains("is missing"), "{stdout}");
    assert!(
        stdout.contains(&first) && stdout.contains(&second),
        "both points are named: {stdout}"
    );
    let target = harness.path("restored");
    let error = harness.fails(&["restore", &first, "--target", target.to_str().unwrap()]);
    assert!(error.contains(&first), "{error}");
    assert!(!target.join("random.raw").exists());
    // Points that do not need the pack still restore.
    let (_, points, _) = harness.run(&["--json", "points"]);
    assert!(points.contains(&first));
}

#[test]
fn a_damaged_manifest_is_reported_and_blocks_prune() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let point = text(&harness.backup("vm", &[&image]), "point");
    flip_byte(&harness.repository.join("points").join(&point), 20);
    let (code, stdout, _) = harness.run(&["verify"]);
    assert_eq!(code, 3);
    assert!(
        stdout.contains("damaged-manifest") && stdout.contains(&point),
        "{stdout}"
    );
    let error = harness.fails(&["prune"]);
    assert!(error.contains("prune deletes nothing"), "{error}");
    assert_eq!(packs(&harness.repository).len(), 1, "prune deleted nothing");
}

/// Starts lifeboat, kills it with SIGKILL after `delay`; returns whether it had already
/// finished.
fn kill_after(harness: &Harness, arguments: &[&str], delay: Duration) -> bool {
    let mut child = harness
        .command()
        .args(arguments)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    finished
}

#[test]
fn kill_9_during_backup_never_lists_an_unrestorable_point_and_the_next_backup_succeeds() {
    let harness = Harness::new();
    let disks: Vec<PathBuf> = ["fs.raw", "fs.qcow2", "random.raw"]
        .iter()
        .map(|n| harness.copy_image(n))
        .collect();
    let mut arguments = vec!["backup", "--vm", "vm"];
    arguments.extend(disks.iter().map(|d| d.to_str().unwrap()));
    let mut interrupted = 0;
    for (round, milliseconds) in [5u64, 40, 90, 150, 250, 400, 600, 900, 1300]
        .iter()
        .enumerate()
    {
        if !kill_after(&harness, &arguments, Duration::from_millis(*milliseconds)) {
            interrupted += 1;
        }
        // Change the data between rounds so later rounds store new chunks.
        common::random_writes(&disks[round % 2], 20, round as u64);
        let report = harness.json(&["verify", "--read-data"]);
        assert_eq!(
            report["damage"].as_array().unwrap().len(),
            0,
            "after a kill at {milliseconds} ms: {report}"
        );
    }
    assert!(interrupted >= 3, "most kills landed during a backup");
    // The stale lease of the killed process does not block the next backup.
    let report = harness.json(&arguments);
    let target = harness.path("restored");
    harness.restore(&text(&report, "point"), &target, &[]);
    for disk in &disks {
        assert!(identical(disk, &target.join(disk.file_name().unwrap())));
    }
    // Every point that is listed restores.
    for point in harness.points() {
        let target = harness.path(&format!("listed-{}", text(&point, "point")));
        harness.restore(&text(&point, "point"), &target, &[]);
    }
    harness.ok(&["prune"]);
    assert_eq!(
        harness.json(&["verify", "--read-data"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn kill_9_during_prune_loses_nothing() {
    let harness = Harness::new();
    let image = harness.copy_image("fs.raw");
    let data = harness.copy_image("random.raw");
    for round in 0..6 {
        common::random_writes(&data, 400, round);
        common::random_writes(&image, 400, round + 100);
        harness.backup("vm", &[&image, &data]);
    }
    harness.ok(&["forget", "--vm", "vm", "--keep-last", "2"]);
    for milliseconds in [1u64, 3, 8, 15, 30, 60, 120] {
        kill_after(&harness, &["prune"], Duration::from_millis(milliseconds));
        let report = harness.json(&["verify", "--read-data"]);
        assert_eq!(
            report["damage"].as_array().unwrap().len(),
            0,
            "after a kill at {milliseconds} ms: {report}"
        );
        assert_eq!(harness.points().len(), 2);
    }
    let report = harness.json(&["prune"]);
    assert_eq!(report["packs_pending"], 0, "{report}");
    let target = harness.path("restored");
    harness.restore("latest", &target, &["--vm", "vm"]);
    assert!(identical(&image, &target.join("fs.raw")));
    assert!(identical(&data, &target.join("random.raw")));
}

#[test]
fn two_backups_of_one_vm_at_once_one_is_refused_clearly() {
    let harness = Harness::new();
    let disks: Vec<PathBuf> = ["fs.raw", "fs.vhdx", "fs-fixed.vhd", "fs-compressed.qcow2"]
        .iter()
        .map(|n| harness.copy_image(n))
        .collect();
    let mut arguments = vec!["backup".to_string(), "--vm".to_string(), "vm".to_string()];
    arguments.extend(disks.iter().map(|d| d.display().to_string()));
    let mut first = harness
        .command()
        .args(&arguments)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::leases(&harness.repository) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first backup never took its lease"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let error = harness.fails(&arguments);
    assert!(
        error.contains("backup of VM 'vm' is locked by backup by pid"),
        "{error}"
    );
    assert!(
        first.wait().unwrap().success(),
        "the first backup completes"
    );
    // Other VMs are not blocked: a backup of another VM ran beside it in other tests; here
    // the lease is gone once the first finished.
    harness.ok(&arguments);
    assert_eq!(harness.points().len(), 2);
}

#[test]
fn a_full_repository_disk_fails_cleanly_and_the_next_backup_succeeds() {
    let harness = Harness::uninitialised();
    let mount = SmallFilesystem::mount(&harness.repository, "6m");
    harness.ok(&["init"]);
    let image = harness.copy_image("random.raw");
    let error = harness.fails(&["backup", "--vm", "vm", image.to_str().unwrap()]);
    assert!(
        error.contains("is full") && error.contains("free space"),
        "{error}"
    );
    assert!(
        harness.points().is_empty(),
        "a failed backup lists no point"
    );
    assert_eq!(
        harness.json(&["verify"])["damage"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    mount.resize("64m");
    let report = harness.backup("vm", &[&image]);
    let target = harness.path("restored");
    harness.restore(&text(&report, "point"), &target, &[]);
    assert!(identical(&image, &target.join("random.raw")));
    // What the failed backup left behind is collected.
    harness.ok(&["prune"]);
    assert_eq!(packs(&harness.repository).len(), 1);
}

#[test]
fn a_full_restore_target_fails_cleanly_leaving_no_file() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let point = text(&harness.backup("vm", &[&image]), "point");
    let target = harness.path("small");
    let _mount = SmallFilesystem::mount(&target, "4m");
    let error = harness.fails(&["restore", &point, "--target", target.to_str().unwrap()]);
    assert!(
        error.contains("full") && error.contains("free space"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "no file, partial or not, is left"
    );
}

#[test]
fn restoring_over_an_existing_file_is_refused() {
    let harness = Harness::new();
    let image = harness.copy_image("random.raw");
    let point = text(&harness.backup("vm", &[&image]), "point");
    let target = harness.path("out");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("random.raw"), b"precious").unwrap();
    let error = harness.fails(&["restore", &point, "--target", target.to_str().unwrap()]);
    assert!(error.contains("already exists"), "{error}");
    assert_eq!(
        std::fs::read(target.join("random.raw")).unwrap(),
        b"precious"
    );
}

#[test]
fn a_disk_in_use_by_a_running_qemu_is_refused() {
    let harness = Harness::new();
    for name in ["fs.qcow2", "random.raw"] {
        let image = harness.copy_image(name);
        let socket = harness.path(&format!("{name}.sock"));
        // A writer holding the image as a VM would: qemu-nbd, read-write.
        let mut holder = Command::new("qemu-nbd")
            .args(["--persistent", "-f", common::qemu_format(&image)])
            .arg(format!("--socket={}", socket.display()))
            .arg(&image)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let error = harness.fails(&["backup", "--vm", "vm", image.to_str().unwrap()]);
        assert!(
            error.contains("in use by another process"),
            "{name}: {error}"
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
    }
    assert!(harness.points().is_empty());
}
