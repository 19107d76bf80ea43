//! The qemu driver against a real `qemu-system-x86_64`: the accelerator probe, a VM's life
//! through QMP, and instant boot from a recovery point's NBD export with background
//! hydration into a standalone overlay.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_backup::{BackupOptions, NoProgress, backup, point_server};
use lifeboat_hypervisor::{Accelerator, DirectBoot, DiskSpec, Vm, VmSpec, create_overlay, probe};
use lifeboat_repository::{Encryption, InitOptions, Repository, Storage};
use lifeboat_storage::LocalDirectory;

/// A raw disk of `mib` MiB with a pseudo-random pattern in its first half.
fn disk(directory: &Path, mib: usize) -> PathBuf {
    let path = directory.join("disk.raw");
    let mut data = vec![0u8; mib << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in data[..(mib << 19)].iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(&path, data).unwrap();
    path
}

fn spec(directory: &Path, name: &str, disks: Vec<DiskSpec>) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        vcpus: 1,
        memory_mib: 128,
        disks,
        runtime_directory: directory.join(format!("run-{name}")),
        accelerator: probe(),
        direct_boot: None,
        network: "none".to_string(),
    }
}

/// A point of `disk` in a fresh repository under `directory`, exported over NBD on a Unix
/// socket (as `lifeboat export` serves it); returns the socket.
fn export_point(directory: &Path, disk: &Path) -> PathBuf {
    let storage: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.join("repository")));
    let repository = Repository::init(
        storage,
        InitOptions {
            encryption: Encryption::None,
            password: None,
            chunk_size_bytes: 65536,
        },
    )
    .unwrap();
    let mut options = BackupOptions::new("web1", vec![disk.to_path_buf()]);
    options.threads = 2;
    let made = backup(&repository, &options, &NoProgress).unwrap();
    let repository = Arc::new(repository);
    let manifest = repository
        .list_points()
        .unwrap()
        .points
        .into_iter()
        .find(|p| p.point == made.point)
        .unwrap();
    let socket = directory.join("point.sock");
    let server = Arc::new(point_server(Arc::clone(&repository), &manifest).unwrap());
    lifeboat_nbd::server::spawn_unix(server, UnixListener::bind(&socket).unwrap()).unwrap();
    socket
}

fn identical(first: &Path, first_format: &str, second: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-f", first_format, "-F", "raw"])
        .arg(first)
        .arg(second)
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_probe_answers_quickly() {
    let started = Instant::now();
    let accelerator = probe();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(accelerator, Accelerator::Kvm | Accelerator::Tcg));
}

#[test]
fn a_vm_starts_runs_and_stops_through_qmp() {
    let directory = tempfile::tempdir().unwrap();
    let disk = disk(directory.path(), 8);
    let mut vm = Vm::start(&spec(
        directory.path(),
        "web1",
        vec![DiskSpec {
            path: disk.clone(),
            format: "raw".to_string(),
            export: None,
        }],
    ))
    .unwrap();
    assert_eq!(vm.status().unwrap(), "running");
    // The disk is locked by the running VM: nothing else writes it meanwhile.
    let second = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(!second.status.success());
    // No guest answers the power button: the stop falls back to quit.
    let clean = vm.stop(Duration::from_millis(500)).unwrap();
    assert!(!clean);
    let after = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(after.status.success(), "the lock is released once stopped");
}

#[test]
fn a_vm_that_cannot_start_says_why() {
    let directory = tempfile::tempdir().unwrap();
    let error = Vm::start(&spec(
        directory.path(),
        "broken",
        vec![DiskSpec {
            path: directory.path().join("missing.qcow2"),
            format: "qcow2".to_string(),
            export: None,
        }],
    ))
    .err()
    .expect("a missing disk fails the start");
    let text = error.to_string();
    assert!(
        text.contains("VM 'broken'") && text.contains("missing.qcow2"),
        "{text}"
    );
}

#[test]
fn a_vm_boots_at_once_from_a_point_and_its_disk_is_hydrated_in_the_background() {
    let directory = tempfile::tempdir().unwrap();
    let source = disk(directory.path(), 32);
    let socket = export_point(directory.path(), &source);

    let overlay = directory.path().join("web1.qcow2");
    let size = std::fs::metadata(&source).unwrap().len();
    let started = Instant::now();
    create_overlay(&overlay, &socket, "disk.raw", size).unwrap();
    let mut vm = Vm::start(&spec(
        directory.path(),
        "web1",
        vec![DiskSpec {
            path: overlay.clone(),
            format: "qcow2".to_string(),
            export: None,
        }],
    ))
    .unwrap();
    assert_eq!(vm.status().unwrap(), "running");
    eprintln!("running from the point after {:?}", started.elapsed());
    // Running from the point: the disk's backing is the export, nothing copied yet.
    let block = vm.execute("query-block", serde_json::json!({})).unwrap();
    let image = &block[0]["inserted"]["image"];
    assert_eq!(image["format"], "qcow2", "{block}");
    assert_eq!(image["backing-image"]["format"], "raw", "{block}");
    assert!(
        image["actual-size"].as_u64().unwrap() < size / 4,
        "the overlay holds almost nothing before hydration: {image}"
    );
    vm.hydrate(0, Duration::from_secs(120)).unwrap();
    vm.stop(Duration::from_millis(200)).unwrap();
    // The overlay now holds everything and needs its backing no more.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert!(identical(&overlay, "qcow2", &source));
}

#[test]
fn a_real_linux_guest_boots_at_once_from_a_point_and_reads_its_disk() {
    let directory = tempfile::tempdir().unwrap();
    let (kernel, initrd) =
        lifeboat_testing::guest_kit(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest"));
    // The VM's disk: an ext4 filesystem holding a marker, backed up into a point.
    let files = directory.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("marker"), "written-before-the-disaster\n").unwrap();
    let root = directory.path().join("root.raw");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&files)
        .arg(&root)
        .arg("32M")
        .status()
        .unwrap();
    assert!(made.success());
    let socket = export_point(directory.path(), &root);
    std::fs::remove_file(&root).unwrap();

    // Booted from the point through an overlay: nothing restored first.
    let overlay = directory.path().join("root.qcow2");
    create_overlay(&overlay, &socket, "root.raw", 32 << 20).unwrap();
    let mut spec = spec(
        directory.path(),
        "web1",
        vec![DiskSpec {
            path: overlay,
            format: "qcow2".to_string(),
            export: None,
        }],
    );
    spec.direct_boot = Some(DirectBoot {
        kernel,
        initrd: Some(initrd),
        append: "console=ttyS0 quiet panic=-1".to_string(),
    });
    let started = Instant::now();
    let mut vm = Vm::start(&spec).unwrap();
    let console = vm
        .wait_for_serial("LIFEBOAT-MARKER:", Duration::from_secs(120))
        .unwrap();
    eprintln!(
        "the guest read its disk {:?} after the start ({:?})",
        started.elapsed(),
        spec.accelerator
    );
    assert!(
        console.contains("LIFEBOAT-MARKER: written-before-the-disaster"),
        "{console}"
    );
}
