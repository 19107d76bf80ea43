//! The end to end run of a recovery plan: a real Linux guest (scripts/make-guest.sh, built
//! from Debian packages) protected by continuous replication, a marker written through the
//! capture's export, the primary region cut off, an unplanned failover of the plan to the
//! recovery region, and the guest booting there with the marker while `dig` sees its name
//! move.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Harness;
use common::replication::{Protect, dig, dns_server, follow, raw_disk, status_until};
use serde_json::Value;

/// Stops the plan's VMs when dropped, so a failing test leaves none running.
struct StopOnDrop<'a>(&'a Harness, &'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for vm in ["db1", "web1"] {
            let _ = self
                .0
                .configured(self.1)
                .args(["vm", "stop", "--vm", vm, "--grace", "0"])
                .output();
        }
    }
}

/// The byte offset of the first data block of `file` in the ext4 image `image`.
fn file_offset(image: &Path, file: &str) -> u64 {
    let output = Command::new("debugfs")
        .args(["-R", &format!("bmap {file} 0")])
        .arg(image)
        .output()
        .unwrap();
    let block: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("debugfs: {}", String::from_utf8_lossy(&output.stderr)));
    block * 4096
}

#[test]
fn a_protected_plan_fails_over_when_its_region_is_cut_off_and_the_guest_boots_with_its_last_write()
{
    let harness = Harness::new();
    let (kernel, initrd) =
        lifeboat_testing::guest_kit(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest"));
    // web1's root filesystem holds a marker the guest prints when it boots.
    let files = harness.path("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("marker"), "order-0000-none\n").unwrap();
    let root = harness.path("web1-root.raw");
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-d"])
            .arg(&files)
            .arg(&root)
            .arg("32M")
            .status()
            .unwrap()
            .success()
    );
    let marker_offset = file_offset(&root, "/marker");
    let db = raw_disk(&harness, "db1.raw", "4M");
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[dns]
ttl = 5
zones = ["shop.example"]

[[region]]
name = "west"
repository = "{west}"
pair = "east"

[[region]]
name = "east"
repository = "{east}"
pair = "west"
network = "user"

[[vm]]
name = "db1"
region = "west"
memory_mib = 32
disks = ["{db}"]
dns = ["db1.shop.example"]
addresses = {{ west = "10.0.1.4", east = "10.1.1.4" }}

[[vm]]
name = "web1"
region = "west"
memory_mib = 256
disks = ["{root}"]
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet panic=-1"
dns = ["web1.shop.example"]
addresses = {{ west = "10.0.1.5", east = "10.1.1.5" }}

[[plan]]
name = "shop"
groups = [["db1"], ["web1"]]
max_point_age_seconds = 600
"#,
            west = harness.path("west").display(),
            east = harness.repository.display(),
            db = db.display(),
            root = root.display(),
            kernel = kernel.display(),
            initrd = initrd.display(),
        ),
    )
    .unwrap();

    // Protected: every write to db1 and web1 replicates to east.
    let vms = vec![
        ("db1".to_string(), vec![db]),
        ("web1".to_string(), vec![root.clone()]),
    ];
    let protect = Protect::start(&harness, "shop", &vms, "0.5");
    let (_receiver, _) = follow(&harness, "shop", &harness.path("replicas"), &[]);
    // The order is paid: the marker is rewritten through the export, as the guest would.
    let mut block = vec![0u8; 4096];
    block[..16].copy_from_slice(b"order-4711-paid\n");
    let block_file = harness.path("block");
    std::fs::write(&block_file, &block).unwrap();
    protect.qemu_io(
        "web1/web1-root.raw",
        &[
            &format!("write -s {} {marker_offset} 4096", block_file.display()),
            "flush",
        ],
    );
    let written = chrono::Utc::now();
    status_until(&harness, "shop", |status| {
        status["recovered_time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t > written)
    });

    let (_server, port, _) = dns_server(&harness, &config);
    assert_eq!(dig(port, "web1.shop.example"), "10.0.1.5");
    // West is cut off: its capture is gone.
    drop(protect);
    let _stop = StopOnDrop(&harness, &config);
    let started = Instant::now();
    let output = harness
        .configured(&config)
        .args([
            "--json",
            "failover",
            "--plan",
            "shop",
            "--to",
            "east",
            "--instant",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["state"], "succeeded");
    let web1 = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == "web1")
        .unwrap()
        .clone();
    assert_eq!(web1["region"], "east");
    assert_eq!(web1["epoch"], 1);
    assert_eq!(web1["instant"], true);
    // East is pruned while the instant VM boots from its point's export: the older points
    // go, and whatever prune queues for deletion waits for the export to end.
    harness.json(&["forget", "--vm", "web1", "--keep-last", "1"]);
    let prune = harness.json(&["prune"]);
    if prune["packs_pending"].as_u64().unwrap() > 0 {
        assert!(
            prune["waiting_for"].to_string().contains("export"),
            "{prune}"
        );
    }
    // The guest booted in east and shows the last write made before the cut.
    let serial = PathBuf::from(web1["serial_log"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        if console.contains("LIFEBOAT-MARKER: order-4711-paid") {
            break;
        }
        assert!(
            !console.contains("LIFEBOAT-MARKER: order-0000-none"),
            "the guest booted without the last write:\n{console}"
        );
        assert!(
            Instant::now() < deadline,
            "the guest never showed its data:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The names follow.
    for (name, address) in [
        ("db1.shop.example", "10.1.1.4"),
        ("web1.shop.example", "10.1.1.5"),
    ] {
        while dig(port, name) != address {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "{name} did not follow"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Commit: the instant disks are copied whole and stand alone; the export is gone.
    let commit = harness
        .configured(&config)
        .args(["--json", "commit", "--plan", "shop"])
        .output()
        .unwrap();
    assert!(
        commit.status.success(),
        "{}",
        String::from_utf8_lossy(&commit.stderr)
    );
    let home = serial.parent().unwrap().parent().unwrap();
    // The overlay has the disk's own name (its format is qcow2).
    let overlay = home.join("disks").join("web1-root.raw");
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "hydrated: {info}");
    assert!(
        std::os::unix::net::UnixStream::connect(home.join("export.sock")).is_err(),
        "the export stopped once the disks were copied"
    );
    // Stopped (qemu writes back its metadata), the disk is the source's last state.
    let stopped = harness
        .configured(&config)
        .args(["vm", "stop", "--vm", "web1", "--grace", "1"])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    let check = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&overlay)
        .arg(&root)
        .status()
        .unwrap();
    assert!(check.success(), "the hydrated disk holds the last point");
    // Every step is on record.
    let audit = harness
        .configured(&config)
        .args(["--json", "audit", "--plan", "shop"])
        .output()
        .unwrap();
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let done: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "done")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        done,
        [
            "pre-flight checks",
            "start db1",
            "start web1",
            "commit db1",
            "commit web1"
        ]
    );
}

#[test]
fn a_failover_to_a_region_without_a_point_or_an_address_is_refused_clearly() {
    let harness = Harness::uninitialised();
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nzones = [\"shop.example\"]\n\n[[region]]\nname = \"west\"\nrepository = \"{}\"\n\n\
             [[region]]\nname = \"east\"\nrepository = \"{}\"\n\n[[vm]]\nname = \"web1\"\nregion = \"west\"\n\
             disks = [\"/vms/web1.raw\"]\ndns = [\"web1.shop.example\"]\naddresses = {{ west = \"10.0.1.5\" }}\n",
            harness.path("west").display(),
            harness.path("east").display()
        ),
    )
    .unwrap();
    let output = harness
        .configured(&config)
        .args(["failover", "--vm", "web1", "--to", "east"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no address in region 'east'"), "{stderr}");
    let unknown = harness
        .configured(&config)
        .args(["failover", "--vm", "db9", "--to", "east"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no VM 'db9'"));
}
