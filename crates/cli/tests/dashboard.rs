//! The dashboard end to end in headless Chromium (Debian's `chromium`, driven through
//! `chromium-driver`): login (a wrong password refused), region status with incidents and
//! uptime history that follows a region going down while the page is open, recovery points, VMs, a test failover of a plan started from the page
//! with confirmation and a point choice and followed step by step, the jobs and drill
//! report it leaves, and a reader who is not offered the failover. Screenshots go to
//! `target/tmp/dashboard/`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::browser::Browser;
use common::daemon::{serve_node, user};
use common::{Harness, succeeds};

/// West answers its probe, east does not; VM db1 (home west) with a point in east; plan
/// shop.
fn site(harness: &Harness, west_port: u16) -> PathBuf {
    let config = harness.path("lifeboat.toml");
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    std::fs::write(
        &config,
        format!(
            r#"
[[region]]
name = "west"
repository = "{west}"
probe = "tcp:127.0.0.1:{west_port}"
probe_interval_seconds = 1
probe_failures = 1

[[region]]
name = "east"
repository = "{east}"
network = "none"
test_network = "none"
probe = "tcp:127.0.0.1:{dead_port}"
probe_interval_seconds = 1
probe_failures = 1
sla_percent = 99.5

[[vm]]
name = "db1"
region = "west"
memory_mib = 32
disks = ["{disk}"]

[[plan]]
name = "shop"
groups = [["db1"]]
"#,
            west = harness.path("west").display(),
            east = harness.path("east").display(),
            disk = harness.path("db1.raw").display(),
        ),
    )
    .unwrap();
    let disk = harness.path("db1.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..3].copy_from_slice(b"db1");
    std::fs::write(&disk, bytes).unwrap();
    succeeds(harness.in_region(&config, "east").arg("init"));
    succeeds(
        harness
            .in_region(&config, "east")
            .args(["backup", "--vm", "db1"])
            .arg(&disk),
    );
    config
}

fn password_file(harness: &Harness, name: &str, password: &str) -> PathBuf {
    let path = harness.path(&format!("{name}.password"));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// Logs in through the form; waits for the status page.
fn log_in(browser: &Browser, name: &str, password: &str) {
    browser.wait_for("document.body.dataset.page === 'login'", 20);
    browser.type_into("#login-user", name);
    browser.type_into("#login-password", password);
    browser.click("#login-submit");
}

/// Opens `page` and waits until it has rendered.
fn show(browser: &Browser, base: &str, page: &str) {
    browser.open(&format!("{base}/#{page}"));
    browser.wait_for(
        &format!("document.body.dataset.page === '{page}' && document.body.dataset.ready === '1'"),
        30,
    );
}

/// Stops the test copies a drill left running.
struct CleanUp<'a> {
    harness: &'a Harness,
    config: &'a Path,
}

impl Drop for CleanUp<'_> {
    fn drop(&mut self) {
        let _ = self
            .harness
            .configured(self.config)
            .args(["cleanup", "--plan", "shop"])
            .output();
    }
}

#[test]
fn an_operator_runs_a_drill_from_the_dashboard_and_follows_it_step_by_step() {
    let harness = Harness::uninitialised();
    let west_probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = site(&harness, west_probe.local_addr().unwrap().port());
    let _clean = CleanUp {
        harness: &harness,
        config: &config,
    };
    let alice = password_file(&harness, "alice", "alice's long secret");
    let carol = password_file(&harness, "carol", "carol's long secret");
    user(
        &harness,
        &config,
        "alice",
        "operator",
        &["--login-password-file", alice.to_str().unwrap()],
    );
    user(
        &harness,
        &config,
        "carol",
        "reader",
        &["--login-password-file", carol.to_str().unwrap()],
    );
    let (_server, address, _) = serve_node(&harness, &config);
    let base = format!("http://{address}");
    let browser = Browser::start();
    let shots = screenshots();

    // Users exist: the page asks to log in; a wrong password is refused on the page.
    browser.open(&base);
    log_in(&browser, "alice", "not the password");
    browser.wait_for(
        "document.getElementById('login-error').textContent.includes('wrong user name or password')",
        20,
    );
    browser.screenshot(&shots.join("login-refused.png"));
    log_in(&browser, "alice", "alice's long secret");
    browser.wait_for("document.body.dataset.page === 'status'", 20);
    assert_eq!(browser.text("#whoami"), "alice (operator)");

    // Status: west up, east down with an open incident; uptime history per month.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        show(&browser, &base, "status");
        let health = |region: &str| {
            browser.run(&format!(
                "const e = document.querySelector('section.region[data-region=\"{region}\"] .health'); return e ? e.textContent.trim() : '';"
            ))
        };
        if health("west") == "up" && health("east") == "down" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed west up and east down: {}",
            browser.run("return document.body.innerText;")
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let east = browser.text("section.region[data-region=\"east\"]");
    assert!(east.contains("did not answer"), "{east}");
    assert!(
        east.contains("99.50 %") && east.contains("missed"),
        "{east}"
    );
    let months = browser.run(
        "return document.querySelectorAll('section.region[data-region=\"west\"] table.months tbody tr').length;",
    );
    assert_eq!(months, 1, "probing began this month");
    browser.screenshot(&shots.join("status.png"));
    // Left open, the page follows: west stops answering and turns down without a reload.
    drop(west_probe);
    browser.wait_for(
        "(document.querySelector('section.region[data-region=\"west\"] .health') || {}).textContent === 'down'",
        30,
    );
    assert!(
        browser
            .text("section.region[data-region=\"west\"]")
            .contains("Open incident")
    );

    // Points and VMs.
    show(&browser, &base, "points");
    let points = browser.text("table#points");
    assert!(
        points.contains("db1") && points.contains("east"),
        "{points}"
    );
    browser.screenshot(&shots.join("points.png"));
    show(&browser, &base, "vms");
    assert!(browser.text("tr[data-vm=\"db1\"]").contains("west"));

    // A test failover of plan shop to east, confirmed by typing the plan's name.
    show(&browser, &base, "plans");
    browser.click("section.plan[data-plan=\"shop\"] button.failover");
    browser.wait_for("document.getElementById('failover-dialog').open", 10);
    browser.click("#failover-kind option[value=\"test\"]");
    browser.click("#failover-target option[value=\"east\"]");
    browser.click("#failover-point option[value=\"latest\"]");
    assert_eq!(
        browser.run("return document.getElementById('failover-go').disabled;"),
        true,
        "not before the plan's name is typed"
    );
    browser.type_into("#failover-confirm", "sho");
    assert_eq!(
        browser.run("return document.getElementById('failover-go').disabled;"),
        true
    );
    browser.type_into("#failover-confirm", "shop");
    let command = browser.text("#failover-command");
    assert!(
        command.contains("failover --plan shop --to east --test --point latest"),
        "{command}"
    );
    browser.screenshot(&shots.join("failover-confirm.png"));
    browser.click("#failover-go");
    browser.wait_for(
        "(document.querySelector('#failover-live .state') || {}).textContent === 'succeeded'",
        120,
    );
    let steps = browser.run(
        "return [...document.querySelectorAll('#failover-steps li')].map(li => li.dataset.state + ' ' + li.textContent);",
    );
    let steps: Vec<String> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(steps.len() >= 2, "{steps:?}");
    assert!(steps.iter().all(|s| s.starts_with("done ")), "{steps:?}");
    assert!(steps.iter().any(|s| s.contains("db1")), "{steps:?}");
    browser.screenshot(&shots.join("failover-done.png"));

    // The job (who asked, done) and the drill report.
    show(&browser, &base, "jobs");
    let jobs = browser.text("table#jobs");
    assert!(
        jobs.contains("failover --plan shop") && jobs.contains("alice"),
        "{jobs}"
    );
    show(&browser, &base, "drills");
    let drills = browser.text("table#drills");
    assert!(
        drills.contains("shop") && drills.contains("east") && drills.contains("succeeded"),
        "{drills}"
    );
    browser.screenshot(&shots.join("drills.png"));

    // A change from the page without the session's CSRF token is refused.
    let refused = browser.run_async(
        "fetch('/api/jobs', {method: 'POST', credentials: 'same-origin', \
         headers: {'Content-Type': 'application/json'}, body: JSON.stringify({command: ['points']})}) \
         .then(r => done(r.status));",
    );
    assert_eq!(refused, 403);

    // A reader sees the plans but is not offered a failover.
    browser.click("#logout");
    log_in(&browser, "carol", "carol's long secret");
    browser.wait_for(
        "document.getElementById('whoami').textContent === 'carol (reader)'",
        20,
    );
    show(&browser, &base, "plans");
    assert_eq!(
        browser.run("return document.querySelectorAll('section.plan button.failover').length;"),
        0
    );
    assert!(
        browser
            .text("section.plan[data-plan=\"shop\"]")
            .contains("db1")
    );
    for shot in [
        "login-refused",
        "status",
        "points",
        "failover-done",
        "drills",
    ] {
        let size = std::fs::metadata(shots.join(format!("{shot}.png")))
            .unwrap()
            .len();
        assert!(size > 5_000, "{shot}.png is {size} bytes");
    }
}
