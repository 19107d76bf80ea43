//! Recovery plans without a guest OS (the VMs run firmware only): groups in order, scripts
//! and manual steps, dry runs, test failover and cleanup, commit, an orchestrator killed
//! mid-run, and the audit log. The real boot is in failover.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Harness;
use common::replication::{Killed, dig, dig_until, dns_server};
use serde_json::Value;

/// Two regions, three VMs and plan "shop" ([db1], then [web1, web2]) with a script and a
/// manual step after db1 and a script before the web group.
struct Site {
    harness: Harness,
    config: PathBuf,
    test_port: u16,
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const VMS: [&str; 3] = ["db1", "web1", "web2"];

impl Site {
    fn new(actions: &str) -> Site {
        let harness = Harness::uninitialised();
        let config = harness.path("lifeboat.toml");
        let test_port = free_port();
        let mut text = format!(
            r#"
[dns]
ttl = 5
zones = ["shop.example"]
test_listen = "127.0.0.1:{test_port}"

[[region]]
name = "west"
repository = "{west}"
pair = "east"

[[region]]
name = "east"
repository = "{east}"
pair = "west"
network = "none"
"#,
            west = harness.path("west").display(),
            east = harness.path("east").display(),
        );
        for (index, vm) in VMS.iter().enumerate() {
            text.push_str(&format!(
                "\n[[vm]]\nname = \"{vm}\"\nregion = \"west\"\nmemory_mib = 32\ndisks = [\"{disk}\"]\n\
                 dns = [\"{vm}.shop.example\"]\naddresses = {{ west = \"10.0.1.{n}\", east = \"10.1.1.{n}\" }}\n",
                disk = harness.path(&format!("{vm}.raw")).display(),
                n = index + 4,
            ));
        }
        text.push_str(&format!(
            "\n[[plan]]\nname = \"shop\"\ngroups = [[\"db1\"], [\"web1\", \"web2\"]]\n{actions}"
        ));
        std::fs::write(&config, text).unwrap();
        Site {
            harness,
            config,
            test_port,
        }
    }

    fn lifeboat(&self, arguments: &[&str]) -> Output {
        self.harness
            .configured(&self.config)
            .args(arguments)
            .output()
            .unwrap()
    }

    /// Runs with --json; returns the exit code and the document.
    fn json(&self, arguments: &[&str]) -> (i32, Value) {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(arguments);
        let output = self.lifeboat(&with_json);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let document = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{arguments:?}: not JSON ({e}): {stderr}"));
        (output.status.code().unwrap(), document)
    }

    fn ok(&self, arguments: &[&str]) -> Value {
        let (code, document) = self.json(arguments);
        assert_eq!(code, 0, "{arguments:?}: {document:#}");
        document
    }

    /// A 1 MiB disk per VM with its name in it, backed up into east.
    fn points_in_east(&self) {
        let east = self
            .harness
            .in_region(&self.config, "east")
            .arg("init")
            .output()
            .unwrap();
        assert!(
            east.status.success(),
            "{}",
            String::from_utf8_lossy(&east.stderr)
        );
        for vm in VMS {
            let disk = self.harness.path(&format!("{vm}.raw"));
            let mut bytes = vec![0u8; 1 << 20];
            bytes[..vm.len()].copy_from_slice(vm.as_bytes());
            std::fs::write(&disk, bytes).unwrap();
            let backup = self
                .harness
                .in_region(&self.config, "east")
                .args(["backup", "--vm", vm])
                .arg(&disk)
                .output()
                .unwrap();
            assert!(
                backup.status.success(),
                "{}",
                String::from_utf8_lossy(&backup.stderr)
            );
        }
    }

    fn state(&self) -> PathBuf {
        self.harness.path("lifeboat-state")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // No VM outlives its test.
        for vm in VMS {
            let _ = self.lifeboat(&["vm", "stop", "--vm", vm, "--grace", "0"]);
        }
        let _ = self.lifeboat(&["cleanup", "--plan", "shop"]);
        for home in qemu_processes(&self.state()) {
            let _ = Command::new("kill").arg(home.to_string()).status();
        }
    }
}

/// Process ids of the qemu processes whose command line mentions `directory`.
fn qemu_processes(directory: &Path) -> Vec<u32> {
    let needle = directory.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&command);
            command.starts_with("qemu-system-x86_64") && command.contains(&needle)
        })
        .collect()
}

fn command_line(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

fn step<'a>(report: &'a Value, what: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == what || s["vm"] == what)
        .unwrap_or_else(|| panic!("no step {what} in {report:#}"))
}

fn time(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap()
}

#[test]
fn a_plan_fails_over_group_by_group_through_its_scripts_and_manual_step_and_is_audited() {
    let site = Site::new(
        r#"
[[plan.action]]
after = 1
script = "echo \"$LIFEBOAT_PLAN $LIFEBOAT_OPERATION $LIFEBOAT_REGION\" >> actions.log"
timeout_seconds = 10

[[plan.action]]
after = 1
manual = "Check that db1 answers"

[[plan.action]]
before = 2
script = "echo warm >> actions.log"
"#,
    );
    // Pre-flight before there is any point: refused, naming what is missing, nothing done.
    let (code, dry) = site.json(&["failover", "--plan", "shop", "--to", "east", "--dry-run"]);
    assert_eq!(code, 1);
    assert_eq!(dry["ready"], false);
    assert!(
        dry["checks"][0]
            .as_str()
            .unwrap()
            .contains("repository of region 'east'"),
        "{dry}"
    );
    site.points_in_east();
    let dry = site.ok(&["failover", "--plan", "shop", "--to", "east", "--dry-run"]);
    assert_eq!(dry["ready"], true);
    let checks = dry["checks"].to_string();
    assert!(
        checks.contains("db1: point") && checks.contains("memory: 96 MiB needed"),
        "{checks}"
    );
    assert_eq!(dry["steps"].as_array().unwrap().len(), 7);
    assert!(
        !site.state().join("vms.json").exists(),
        "a dry run does nothing"
    );

    let (_server, port, _) = dns_server(&site.harness, &site.config);
    assert_eq!(dig(port, "web1.shop.example"), "10.0.1.5");
    // The run stops at the manual step: db1 is up in east, the web group is not.
    let (code, waiting) = site.json(&["failover", "--plan", "shop", "--to", "east"]);
    assert_eq!(code, 3, "{waiting:#}");
    assert_eq!(waiting["state"], "waiting");
    assert_eq!(waiting["waiting_for"], "Check that db1 answers");
    let placed: Vec<&str> = waiting["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vm"].as_str().unwrap())
        .collect();
    assert_eq!(placed, ["db1"]);
    assert_eq!(waiting["vms"][0]["epoch"], 1);
    let actions = site.harness.path("actions.log");
    assert_eq!(
        std::fs::read_to_string(&actions).unwrap(),
        "shop failover east\n"
    );
    dig_until(port, "db1.shop.example", "10.1.1.4");
    assert_eq!(dig(port, "web1.shop.example"), "10.0.1.5");
    let (code, _) = site.json(&["plan", "status", "shop"]);
    assert_eq!(code, 3);
    // A second failover of the plan is refused while this one is unfinished.
    let refused = site.lifeboat(&["failover", "--plan", "shop", "--to", "east"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("lifeboat plan continue shop"));

    let done = site.ok(&["plan", "continue", "shop"]);
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["vms"].as_array().unwrap().len(), 3);
    // Groups in order, the web VMs together.
    let db1 = step(&done, "db1");
    let (web1, web2) = (step(&done, "web1"), step(&done, "web2"));
    assert!(time(&db1["finished"]) <= time(&web1["started"]));
    assert!(
        time(&web1["started"]) < time(&web2["finished"])
            && time(&web2["started"]) < time(&web1["finished"])
    );
    for vm in ["web1", "web2"] {
        dig_until(
            port,
            &format!("{vm}.shop.example"),
            if vm == "web1" { "10.1.1.5" } else { "10.1.1.6" },
        );
    }
    // The scripts ran once each, in order, beside the configuration.
    assert_eq!(
        std::fs::read_to_string(&actions).unwrap(),
        "shop failover east\nwarm\n"
    );
    // Every VM runs in east, on the network east maps it to.
    let processes = qemu_processes(&site.state());
    assert_eq!(processes.len(), 3);
    assert!(
        processes
            .iter()
            .all(|&pid| command_line(pid).contains("-nic none"))
    );

    // The audit log names who did what.
    let audit = site.ok(&["audit", "--plan", "shop"]);
    let events: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["what"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "run-started failover of plan shop to east",
        "done start db1",
        "waiting manual step: Check that db1 answers",
        "continued manual step: Check that db1 answers",
        "done start web2",
        "run-finished failover of plan shop to east",
    ] {
        assert!(
            events.contains(&expected.to_string()),
            "{expected} missing from {events:#?}"
        );
    }
    assert!(audit[0]["actor"].as_str().unwrap().contains('@'));

    // Commit makes it final: failing over again is refused.
    let committed = site.ok(&["commit", "--plan", "shop"]);
    assert!(
        committed["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["committed"] == true)
    );
    let (code, dry) = site.json(&["failover", "--plan", "shop", "--to", "east", "--dry-run"]);
    assert_eq!(code, 1);
    assert!(
        dry["checks"][0].as_str().unwrap().contains("committed"),
        "{dry}"
    );
}

#[test]
fn a_test_failover_runs_isolated_copies_in_a_dns_view_of_its_own_and_cleanup_removes_them() {
    let site = Site::new(
        r#"
[[plan.action]]
after = 1
script = "echo \"$LIFEBOAT_OPERATION\" >> actions.log"
"#,
    );
    site.points_in_east();
    let (_server, port, _) = dns_server(&site.harness, &site.config);
    // Run from the configuration's folder with its bare file name: the plan's script runs
    // in that folder all the same.
    let output = site
        .harness
        .command()
        .env_remove("LIFEBOAT_REPO")
        .current_dir(site.config.parent().unwrap())
        .args(["--config", "lifeboat.toml", "--json"])
        .args([
            "failover",
            "--plan",
            "shop",
            "--to",
            "east",
            "--test",
            "--instant",
        ])
        .output()
        .unwrap();
    let test: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(test["state"], "succeeded", "{test:#}");
    assert_eq!(
        std::fs::read_to_string(site.harness.path("actions.log")).unwrap(),
        "test-failover\n"
    );
    assert!(
        test["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["test"] == true && v["epoch"] == 0)
    );
    // The copies run on east's isolated test network...
    let copies = qemu_processes(&site.state().join("tests"));
    assert_eq!(copies.len(), 3);
    assert!(
        copies
            .iter()
            .all(|&pid| command_line(pid).contains("-nic user,restrict=on,model=virtio-net-pci"))
    );
    // ...answer in the test view only; production still points at west, and no placement
    // moved.
    dig_until(site.test_port, "web1.shop.example", "10.1.1.5");
    assert_eq!(dig(port, "web1.shop.example"), "10.0.1.5");
    let placements: Value =
        serde_json::from_slice(&std::fs::read(site.state().join("vms.json")).unwrap()).unwrap();
    assert_eq!(placements["vms"], serde_json::json!({}));
    // Cleanup: no copy, no file, no name left.
    let cleaned = site.ok(&["cleanup", "--plan", "shop"]);
    assert_eq!(cleaned["state"], "succeeded");
    assert!(qemu_processes(&site.state()).is_empty());
    assert!(!site.state().join("tests").join("web1").exists());
    assert!(
        std::fs::read_dir(site.state().join("tests"))
            .unwrap()
            .next()
            .is_none(),
        "every trace removed"
    );
    dig_until(site.test_port, "web1.shop.example", "10.0.1.5");
    let again = site.lifeboat(&["cleanup", "--plan", "shop"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no test copies"));
}

#[test]
fn an_orchestrator_killed_in_the_middle_of_a_plan_resumes_where_it_stopped() {
    // The script hangs the first time only, as an action interrupted by the crash would
    // be run again.
    let site = Site::new(
        r#"
[[plan.action]]
after = 1
script = "if [ -e once ]; then exit 0; fi; touch once; sleep 60"
timeout_seconds = 120
"#,
    );
    site.points_in_east();
    let child = site
        .harness
        .configured(&site.config)
        .args(["--json", "failover", "--plan", "shop", "--to", "east"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut orchestrator = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !site.harness.path("once").exists() {
        assert!(Instant::now() < deadline, "the script never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    orchestrator.0.kill().unwrap();
    orchestrator.0.wait().unwrap();
    let (code, interrupted) = site.json(&["plan", "status", "shop"]);
    assert_eq!(code, 1);
    assert_eq!(interrupted["state"], "running");
    assert_eq!(step(&interrupted, "db1")["state"], "done");
    assert_eq!(step(&interrupted, "script")["state"], "running");
    // Resumed: db1 is not started again (its epoch stays 1), the script runs again, the
    // web group comes up.
    let resumed = site.ok(&["plan", "continue", "shop"]);
    assert_eq!(resumed["state"], "succeeded");
    let epochs: Vec<u64> = resumed["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [1, 1, 1]);
    let audit = site.ok(&["audit", "--plan", "shop"]);
    let started_db1 = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "started" && e["what"] == "start db1")
        .count();
    assert_eq!(started_db1, 1);
    assert_eq!(qemu_processes(&site.state()).len(), 3);
}

#[test]
fn point_choices_and_mistakes_are_refused_clearly() {
    let site = Site::new("");
    site.points_in_east();
    for (arguments, expected) in [
        (
            vec!["failover", "--plan", "nope", "--to", "east"],
            "declares no plan 'nope'",
        ),
        (
            vec!["failover", "--plan", "shop", "--to", "north"],
            "no region 'north'",
        ),
        (
            vec![
                "failover", "--plan", "shop", "--to", "east", "--point", "abc123",
            ],
            "a point id names one VM's point",
        ),
        (
            vec!["failover", "--vm", "db1", "--to", "east", "--point", "app"],
            "no app-consistent point",
        ),
        (vec!["plan", "continue", "shop"], "no unfinished run"),
        (vec!["commit", "--plan", "shop"], "has not been failed over"),
    ] {
        let output = site.lifeboat(&arguments);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {stderr}");
        assert!(stderr.contains(expected), "{arguments:?}: {stderr}");
    }
    // A run that failed its pre-flight checks did nothing and leaves the way free.
    let output = site.lifeboat(&["failover", "--vm", "db1", "--to", "east", "--point", "app"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("pre-flight checks failed"));
    let one = site.ok(&[
        "failover",
        "--vm",
        "db1",
        "--to",
        "east",
        "--point",
        "processed",
    ]);
    assert_eq!(one["plan"], "vm:db1");
    assert_eq!(one["vms"][0]["region"], "east");
}

#[test]
fn a_failover_to_a_moment_starts_each_vm_from_its_point_at_that_time() {
    let site = Site::new("");
    site.points_in_east();
    std::thread::sleep(Duration::from_millis(1100));
    let between = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    // db1 changes after that moment, and a newer point holds the change.
    let disk = site.harness.path("db1.raw");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[..7].copy_from_slice(b"changed");
    std::fs::write(&disk, bytes).unwrap();
    let backup = site
        .harness
        .in_region(&site.config, "east")
        .args(["backup", "--vm", "db1"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(backup.status.success());
    let at = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let run = site.ok(&["failover", "--plan", "shop", "--to", "east", "--at", &at]);
    assert_eq!(run["state"], "succeeded");
    let restored = std::fs::read(site.state().join("vms/db1/east/disks/db1.raw")).unwrap();
    assert_eq!(&restored[..3], b"db1", "the point before the change");
    let latest = site.ok(&["failover", "--vm", "db1", "--to", "east"]);
    assert_eq!(latest["state"], "succeeded");
    let restored = std::fs::read(site.state().join("vms/db1/east/disks/db1.raw")).unwrap();
    assert_eq!(&restored[..7], b"changed", "the latest point");
}

#[test]
fn a_drill_tests_a_plan_and_cleans_up_whether_it_passes_or_fails() {
    let site = Site::new(
        r#"
[[plan.action]]
after = 1
script = "test ! -e break-the-drill"
timeout_seconds = 10
"#,
    );
    site.points_in_east();
    let placements = || -> Value {
        serde_json::from_slice(&std::fs::read(site.state().join("vms.json")).unwrap()).unwrap()
    };
    let passed = site.ok(&["drill", "--plan", "shop", "--to", "east", "--keep", "1"]);
    assert_eq!(passed["result"], "passed", "{passed:#}");
    assert_eq!(passed["failover"]["state"], "succeeded");
    assert_eq!(passed["failover"]["vms"].as_array().unwrap().len(), 3);
    assert_eq!(passed["cleanup"]["state"], "succeeded");
    assert!(passed["seconds"].as_f64().unwrap() >= 1.0);
    assert!(
        placements()["tests"]
            .as_object()
            .is_none_or(|t| t.is_empty())
    );
    // Production untouched.
    assert!(placements()["vms"].as_object().is_none_or(|v| v.is_empty()));

    // The script after db1's group fails: the drill fails, and db1's copy is removed.
    std::fs::write(site.harness.path("break-the-drill"), b"").unwrap();
    let (code, failed) = site.json(&["drill", "--plan", "shop", "--to", "east"]);
    assert_eq!(code, 1, "{failed:#}");
    assert_eq!(failed["result"], "failed");
    assert!(
        failed["failover_error"]
            .as_str()
            .unwrap()
            .contains("test ! -e break-the-drill"),
        "{failed:#}"
    );
    assert_eq!(failed["cleanup"]["state"], "succeeded", "{failed:#}");
    assert!(
        placements()["tests"]
            .as_object()
            .is_none_or(|t| t.is_empty())
    );
    // The next drill is not blocked by the failed run.
    std::fs::remove_file(site.harness.path("break-the-drill")).unwrap();
    let again = site.ok(&["drill", "--plan", "shop", "--to", "east"]);
    assert_eq!(again["result"], "passed", "{again:#}");
}
