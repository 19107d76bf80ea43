//! Failover of a VM to another region: a real Linux guest (scripts/make-guest.sh) started
//! from a recovery point of that region's repository, and its DNS name following.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Harness;
use common::replication::dns_server;
use serde_json::Value;

/// Stops VM web1 when dropped, so a failing test leaves no VM running.
struct StopOnDrop<'a>(&'a Harness, &'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .configured(self.1)
            .args(["vm", "stop", "--vm", "web1", "--grace", "0"])
            .output();
    }
}

fn dig(port: u16, name: &str) -> String {
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), name, "A", "+short"])
        .args(["+time=2", "+tries=2"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_vm_fails_over_to_a_point_in_the_other_region_and_its_name_follows() {
    let harness = Harness::uninitialised();
    let (kernel, initrd) =
        lifeboat_testing::guest_kit(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest"));
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

[[vm]]
name = "web1"
region = "west"
memory_mib = 256
disks = ["{west}/../web1-root.raw"]
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet panic=-1"
dns = ["web1.shop.example"]
addresses = {{ west = "10.0.1.5", east = "10.1.1.5" }}
"#,
            west = harness.path("west").display(),
            east = harness.path("east").display(),
            kernel = kernel.display(),
            initrd = initrd.display(),
        ),
    )
    .unwrap();
    // web1's disk, with data written before the disaster, has a point in east (as
    // replication or geo-sync would have put it there).
    let files = harness.path("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("marker"), "order-4711-paid\n").unwrap();
    let root = harness.path("web1-root.raw");
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&files)
            .arg(&root)
            .arg("32M")
            .status()
            .unwrap()
            .success()
    );
    let east = || harness.in_region(&config, "east");
    assert!(east().arg("init").output().unwrap().status.success());
    let backup = east()
        .args(["backup", "--vm", "web1"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );

    let (_server, port, _) = dns_server(&harness, &config);
    assert_eq!(dig(port, "web1.shop.example"), "10.0.1.5");

    let _stop = StopOnDrop(&harness, &config);
    // West is lost: web1 fails over to east.
    let output = harness
        .configured(&config)
        .args(["--json", "failover", "--vm", "web1", "--to", "east"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["region"], "east");
    assert_eq!(report["epoch"], 1);
    assert_eq!(report["status"], "running");
    // The guest booted in east and sees the data.
    let serial = PathBuf::from(report["serial_log"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        if console.contains("LIFEBOAT-MARKER: order-4711-paid") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never showed its data:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its name follows.
    let moved = Instant::now();
    while dig(port, "web1.shop.example") != "10.1.1.5" {
        assert!(
            moved.elapsed() < Duration::from_secs(10),
            "the name did not follow"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = harness
        .configured(&config)
        .args(["--json", "vm", "stop", "--vm", "web1", "--grace", "1"])
        .output()
        .unwrap();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    // A second failover raises the epoch again.
    let again = harness
        .configured(&config)
        .args(["--json", "failover", "--vm", "web1", "--to", "east"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["epoch"], 2);
    harness
        .configured(&config)
        .args(["vm", "stop", "--vm", "web1", "--grace", "1"])
        .output()
        .unwrap();

    // Instantly: running from the point's export at once, disks copied in the background;
    // when the command returns, the disk stands alone and the export is gone.
    let instant = harness
        .configured(&config)
        .args([
            "--json",
            "failover",
            "--vm",
            "web1",
            "--to",
            "east",
            "--instant",
        ])
        .output()
        .unwrap();
    assert!(
        instant.status.success(),
        "{}",
        String::from_utf8_lossy(&instant.stderr)
    );
    let instant: Value = serde_json::from_slice(&instant.stdout).unwrap();
    assert_eq!(instant["instant"], true);
    assert_eq!(instant["epoch"], 3);
    let serial = PathBuf::from(instant["serial_log"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("LIFEBOAT-MARKER: order-4711-paid")
    {
        assert!(
            Instant::now() < deadline,
            "the instant guest never showed its data"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = serial.parent().unwrap().parent().unwrap();
    let overlay = home.join("disks").join("web1-root.raw.overlay.qcow2");
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
    // Stopped (qemu writes back its metadata), the disk is the point's.
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
    assert!(check.success(), "the hydrated disk holds the point");
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
