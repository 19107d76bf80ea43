//! The built-in DNS server, asked with `dig` over UDP and TCP: names of VMs and repository
//! endpoints, and an endpoint's name following a storage failover.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Harness;
use common::replication::{Killed, dns_server};
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
    let (_server, port, records) = dns_server(&harness, &config);
    assert_eq!(records.as_array().unwrap().len(), 4);

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

/// A BIND 9 `named` on 127.0.0.1 holding zone shop.example, updatable with a TSIG key.
struct Bind {
    _child: Killed,
    port: u16,
    key_file: std::path::PathBuf,
}

impl Bind {
    fn start(harness: &Harness) -> Bind {
        let directory = harness.path("bind");
        std::fs::create_dir_all(&directory).unwrap();
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", "lifeboat-update"])
            .output()
            .expect("tsig-keygen runs (scripts/test.sh installs bind9)");
        assert!(key.status.success());
        let key_file = directory.join("update.key");
        std::fs::write(&key_file, &key.stdout).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            directory.join("db.shop.example"),
            "$TTL 60\n@ IN SOA ns.shop.example. hostmaster.shop.example. 1 3600 600 86400 60\n\
             @ IN NS ns.shop.example.\nns IN A 127.0.0.1\n",
        )
        .unwrap();
        let config = directory.join("named.conf");
        std::fs::write(
            &config,
            format!(
                "options {{ directory \"{dir}\"; pid-file \"{dir}/named.pid\"; \
                 listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; \
                 recursion no; dnssec-validation no; }};\n\
                 include \"{key}\";\n\
                 zone \"shop.example\" {{ type primary; file \"db.shop.example\"; \
                 allow-update {{ key \"lifeboat-update\"; }}; }};\n",
                dir = directory.display(),
                key = key_file.display(),
            ),
        )
        .unwrap();
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(directory.join("named.log")).unwrap())
            .spawn()
            .expect("named runs (scripts/test.sh installs bind9)");
        let bind = Bind {
            _child: Killed(child),
            port,
            key_file,
        };
        let started = Instant::now();
        while !short(port, "shop.example", "SOA").starts_with("ns.shop.example.") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "named did not start: {}",
                std::fs::read_to_string(directory.join("named.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bind
    }
}

#[test]
fn rfc_2136_updates_signed_with_tsig_move_names_in_bind() {
    let harness = Harness::uninitialised();
    let bind = Bind::start(&harness);
    let config = config(&harness);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "ttl = 15",
        &format!(
            "ttl = 15\nupdate = {{ server = \"127.0.0.1:{}\", key_file = \"{}\" }}",
            bind.port,
            bind.key_file.display()
        ),
    );
    std::fs::write(&config, text).unwrap();

    let pushed = harness
        .configured(&config)
        .args(["--json", "dns", "push"])
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert_eq!(short(bind.port, "web1.shop.example", "A"), "10.0.1.5");
    assert_eq!(short(bind.port, "db1.shop.example", "AAAA"), "fd00::1:4");
    assert_eq!(short(bind.port, "repo.west.shop.example", "A"), "10.0.0.10");

    // Storage failover of west, then `dns push --follow` moves the endpoint in BIND.
    let west = || harness.in_region(&config, "west");
    assert!(west().arg("init").output().unwrap().status.success());
    assert!(west().arg("geo-sync").output().unwrap().status.success());
    std::fs::rename(harness.path("west"), harness.path("west-offline")).unwrap();
    let _follow = Killed(
        harness
            .configured(&config)
            .args(["dns", "push", "--follow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let failover = west().args(["region", "failover"]).output().unwrap();
    assert!(failover.status.success());
    let moved = Instant::now();
    while short(bind.port, "repo.west.shop.example", "A") != "10.1.0.10" {
        assert!(
            moved.elapsed() < Duration::from_secs(15),
            "BIND's record did not follow the failover"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A wrong key is refused by BIND, and said so.
    std::fs::write(
        &bind.key_file,
        "key \"lifeboat-update\" { algorithm hmac-sha256; secret \"d3JvbmcgbGlmZWJvYXQga2V5IHdyb25nIGtleSEhIQ==\"; };\n",
    )
    .unwrap();
    let refused = harness
        .configured(&config)
        .args(["dns", "push"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused the update") && stderr.contains("TSIG key"),
        "{stderr}"
    );
}

#[test]
fn a_name_routes_by_priority_to_the_first_healthy_address_as_health_checks_change() {
    let harness = Harness::uninitialised();
    // Two loopback addresses stand for the VM's address in each region.
    let west = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = west.local_addr().unwrap().port();
    let east = std::net::TcpListener::bind(("127.0.0.3", port)).unwrap();
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nttl = 1\nzones = [\"shop.example\"]\nhealth_interval_seconds = 1\nhealth_failures = 2\n\n\
             [[region]]\nname = \"west\"\nrepository = \"{}\"\n\n[[region]]\nname = \"east\"\nrepository = \"{}\"\n\n\
             [[vm]]\nname = \"web1\"\nregion = \"west\"\ndisks = [\"/vms/web1.raw\"]\ndns = [\"web1.shop.example\"]\n\
             addresses = {{ west = \"127.0.0.2\", east = \"127.0.0.3\" }}\nhealth = \"tcp:{port}\"\n",
            harness.path("west").display(),
            harness.path("east").display()
        ),
    )
    .unwrap();
    let (_server, dns_port, _) = dns_server(&harness, &config);
    let until = |expected: &str, within: Duration| {
        let started = Instant::now();
        while short(dns_port, "web1.shop.example", "A") != expected {
            assert!(started.elapsed() < within, "web1 never answered {expected}");
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    };
    until("127.0.0.2", Duration::from_secs(5));
    // West's endpoint fails its checks: the name moves to east.
    drop(west);
    let moved = until("127.0.0.3", Duration::from_secs(15));
    assert!(
        moved >= Duration::from_millis(900),
        "two failed probes are tolerated"
    );
    // Healthy again: back to the first priority.
    let west = std::net::TcpListener::bind(("127.0.0.2", port)).unwrap();
    until("127.0.0.2", Duration::from_secs(10));
    // None healthy: the first priority still answers rather than nothing.
    drop(west);
    drop(east);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(short(dns_port, "web1.shop.example", "A"), "127.0.0.2");
}
