//! The built-in DNS server, asked with `dig` over UDP and TCP: names of VMs and repository
//! endpoints, and an endpoint's name following a storage failover.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Harness;
use common::replication::Killed;
use serde_json::Value;

fn config(harness: &Harness) -> std::path::PathBuf {
    let path = harness.path("lifeboat.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[dns]
ttl = 15
zones = ["shop.example"]

[[region]]
name = "west"
repository = "{west}"
pair = "east"
redundancy = "geo"
endpoint = {{ name = "repo.west.shop.example", primary = "10.0.0.10", copy = "10.1.0.10" }}

[[region]]
name = "east"
repository = "{east}"
pair = "west"

[[vm]]
name = "web1"
region = "west"
disks = ["{west}/../web1.qcow2"]
dns = ["web1.shop.example", "www.shop.example"]
addresses = {{ west = "10.0.1.5", east = "10.1.1.5" }}

[[vm]]
name = "db1"
region = "west"
disks = ["{west}/../db1.qcow2"]
dns = ["db1.shop.example"]
addresses = {{ west = "fd00::1:4" }}
"#,
            west = harness.path("west").display(),
            east = harness.path("east").display(),
        ),
    )
    .unwrap();
    path
}

/// `dig @127.0.0.1 -p PORT NAME TYPE` with `extra` options; its output.
fn dig(port: u16, name: &str, kind: &str, extra: &[&str]) -> String {
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), name, kind])
        .args(["+time=2", "+tries=2"])
        .args(extra)
        .output()
        .expect("dig runs (scripts/test.sh installs dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn short(port: u16, name: &str, kind: &str) -> String {
    dig(port, name, kind, &["+short"]).trim().to_string()
}

#[test]
fn names_are_served_over_udp_and_tcp_and_follow_a_storage_failover() {
    let harness = Harness::uninitialised();
    let config = config(&harness);
    let mut child = harness
        .command()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--json",
            "dns",
            "serve",
        ])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(child);
    let started: Value = serde_json::from_str(&line).unwrap();
    let port: u16 = started["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(started["records"].as_array().unwrap().len(), 4);

    // Answers over UDP and TCP, authoritative, with the configured TTL.
    assert_eq!(short(port, "web1.shop.example", "A"), "10.0.1.5");
    assert_eq!(short(port, "WWW.shop.example", "A"), "10.0.1.5");
    assert_eq!(short(port, "db1.shop.example", "AAAA"), "fd00::1:4");
    assert_eq!(
        dig(port, "web1.shop.example", "A", &["+tcp", "+short"]).trim(),
        "10.0.1.5"
    );
    let full = dig(
        port,
        "web1.shop.example",
        "A",
        &["+noall", "+answer", "+comments"],
    );
    assert!(full.contains("flags: qr aa"), "{full}");
    assert!(
        full.contains("web1.shop.example.\t15\tIN\tA\t10.0.1.5"),
        "{full}"
    );
    // The zone's own records; unknown names; names of other zones.
    assert!(
        short(port, "shop.example", "SOA").starts_with("ns.shop.example. hostmaster.shop.example.")
    );
    assert_eq!(short(port, "shop.example", "NS"), "ns.shop.example.");
    let missing = dig(port, "db9.shop.example", "A", &[]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    assert!(missing.contains("flags: qr aa"), "{missing}");
    let nodata = dig(port, "db1.shop.example", "A", &[]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    let foreign = dig(port, "example.org", "A", &[]);
    assert!(foreign.contains("status: REFUSED"), "{foreign}");

    // Storage failover of west: its repository's name moves to the copy's address.
    assert_eq!(short(port, "repo.west.shop.example", "A"), "10.0.0.10");
    let west = || harness.in_region(&config, "west");
    let init = west().arg("init").output().unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let sync = west().arg("geo-sync").output().unwrap();
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    std::fs::rename(harness.path("west"), harness.path("west-offline")).unwrap();
    let failover = west().args(["region", "failover"]).output().unwrap();
    assert!(
        failover.status.success(),
        "{}",
        String::from_utf8_lossy(&failover.stderr)
    );
    let moved = Instant::now();
    while short(port, "repo.west.shop.example", "A") != "10.1.0.10" {
        assert!(
            moved.elapsed() < Duration::from_secs(10),
            "the name did not follow the failover"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `dns records` says the same.
    let records = harness
        .command()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--json",
            "dns",
            "records",
        ])
        .output()
        .unwrap();
    let records: Value = serde_json::from_slice(&records.stdout).unwrap();
    let endpoint = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["owner"] == "repository:west")
        .unwrap();
    assert_eq!(endpoint["address"], "10.1.0.10");
}

#[test]
fn a_configuration_without_dns_is_refused_clearly() {
    let harness = Harness::uninitialised();
    let path = harness.path("lifeboat.toml");
    std::fs::write(&path, "[[region]]\nname = \"west\"\nrepository = \"/r\"\n").unwrap();
    let output = harness
        .configured(&path)
        .args(["dns", "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no [dns] section"), "{stderr}");
}
