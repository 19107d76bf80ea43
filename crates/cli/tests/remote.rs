//! The CLI through a remote `lifeboat serve`: commands run there as jobs of the token's
//! user, with the role each needs, their output and exit status given back; logins are
//! rate-limited, across all the nodes of a PostgreSQL control plane.

mod common;

use std::path::PathBuf;

use common::daemon::{serve_node, user};
use common::{Harness, succeeds};
use serde_json::{Value, json};

/// Region west (initialised) and a 1 MiB disk db1 with data.
fn site(harness: &Harness) -> (PathBuf, PathBuf) {
    site_with(harness, "")
}

/// [`site`] with `settings` (TOML) at the top of the configuration.
fn site_with(harness: &Harness, settings: &str) -> (PathBuf, PathBuf) {
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "{settings}[[region]]\nname = \"west\"\nrepository = \"{}\"\n",
            harness.path("west").display()
        ),
    )
    .unwrap();
    succeeds(harness.in_region(&config, "west").arg("init"));
    let disk = harness.path("db1.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..11].copy_from_slice(b"hello world");
    std::fs::write(&disk, bytes).unwrap();
    (config, disk)
}

/// `lifeboat --remote http://ADDRESS [--token TOKEN] ARGUMENTS`: exit code, stdout, stderr.
fn remote(address: &str, token: Option<&str>, arguments: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    command.args(["--remote", &format!("http://{address}")]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let output = command
        .args(arguments)
        .env_remove("LIFEBOAT_PASSWORD")
        .env_remove("LIFEBOAT_REPO")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    )
}

/// Operator alice, whose dashboard password is "a long enough secret".
fn alice(harness: &Harness, config: &std::path::Path) {
    let password = harness.path("alice.password");
    std::fs::write(&password, "a long enough secret\n").unwrap();
    user(
        harness,
        config,
        "alice",
        "operator",
        &["--login-password-file", password.to_str().unwrap()],
    );
}

fn api(address: &str, token: &str, path: &str) -> Value {
    reqwest::blocking::Client::new()
        .get(format!("http://{address}{path}"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn the_cli_acts_through_a_remote_daemon_as_the_tokens_user_with_its_role() {
    let harness = Harness::uninitialised();
    let (config, disk) = site(&harness);
    let (_server, address, _) = serve_node(&harness, &config);
    let operator = user(&harness, &config, "ops", "operator", &[]);
    let reader = user(&harness, &config, "watcher", "reader", &[]);
    let disk = disk.to_str().unwrap();

    // An operator backs up through the daemon: the point is made there, the report and
    // exit status come back.
    let (code, stdout, stderr) = remote(
        &address,
        Some(&operator),
        &["--json", "--region", "west", "backup", "--vm", "db1", disk],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let point = report["point"].as_str().unwrap().to_string();
    // A reader lists points: the same document the local CLI prints.
    let (code, stdout, stderr) = remote(
        &address,
        Some(&reader),
        &["--json", "--region", "west", "points"],
    );
    assert_eq!(code, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    let local = harness
        .in_region(&config, "west")
        .args(["--json", "points"])
        .output()
        .unwrap();
    assert_eq!(
        listed,
        serde_json::from_slice::<Value>(&local.stdout).unwrap()
    );
    assert_eq!(listed[0]["point"], point.as_str());
    // A failing command's exit status and message come back too.
    let (code, _, stderr) = remote(
        &address,
        Some(&operator),
        &[
            "--region",
            "west",
            "restore",
            "0000000",
            "--target",
            "/tmp/nowhere",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("0000000"), "{stderr}");
    // Destructive commands need an operator, and say so; nothing is done.
    let (code, _, stderr) = remote(
        &address,
        Some(&reader),
        &[
            "--region",
            "west",
            "forget",
            "--vm",
            "db1",
            "--keep-last",
            "0",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("user 'watcher' is a reader: this needs an operator"),
        "{stderr}"
    );
    // Services, files of the caller's choosing and missing tokens are refused clearly.
    let (code, _, stderr) = remote(&address, Some(&operator), &["serve"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("serves until stopped"), "{stderr}");
    let (code, _, stderr) = remote(
        &address,
        Some(&operator),
        &["--password-file", "/etc/shadow", "points"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--password-file is not taken"), "{stderr}");
    let (code, _, stderr) = remote(&address, None, &["--region", "west", "points"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("give a token"), "{stderr}");
    let (code, _, stderr) = remote("127.0.0.1:1", Some(&operator), &["points"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot reach the Lifeboat daemon at http://127.0.0.1:1"),
        "{stderr}"
    );

    // The jobs say who asked, and the backup's progress reached its end.
    let jobs = api(&address, &operator, "/api/jobs");
    let backup = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["command"][2] == "backup")
        .unwrap();
    assert_eq!(backup["actor"], "ops");
    assert_eq!(backup["exit_code"], 0);
    assert_eq!(backup["progress"]["unit"], "bytes", "{backup:#}");
    assert_eq!(backup["progress"]["done"], backup["progress"]["total"]);
    assert!(backup["progress"]["total"].as_u64().unwrap() > 0);
    // The metrics give its duration and throughput.
    let metrics = reqwest::blocking::get(format!("http://{address}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("lifeboat_job_last_bytes_per_second{schedule=\"run:backup\"}")
            && metrics.contains("lifeboat_job_last_duration_seconds{schedule=\"run:points\"}"),
        "{metrics}"
    );
    // An admin makes a user through the daemon: the new token reaches the admin, and no
    // one below an admin can read it in the job records.
    let admin = user(&harness, &config, "root", "admin", &[]);
    let (code, stdout, stderr) = remote(
        &address,
        Some(&admin),
        &["--json", "user", "add", "newcomer", "--role", "reader"],
    );
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("lb_"));
    for viewer in [&reader, &operator] {
        let jobs = api(&address, viewer, "/api/jobs").to_string();
        assert!(!jobs.contains(token), "a token leaked to a lower role");
        assert!(jobs.contains("shown to an admin or above"), "{jobs}");
    }
    assert!(
        api(&address, &admin, "/api/jobs")
            .to_string()
            .contains(token)
    );
    // Every request is in the audit log with its user, the refused one too.
    let audit = api(&address, &operator, "/api/audit");
    let entries = audit.as_array().unwrap();
    let logged = |actor: &str, verb: &str, result: &str| {
        entries.iter().any(|e| {
            e["actor"] == actor
                && e["target"].as_str().unwrap().starts_with(verb)
                && e["result"].as_str().unwrap().starts_with(result)
        })
    };
    assert!(logged("ops", "--region west backup", "job "), "{audit:#}");
    assert!(
        logged("watcher", "--region west forget", "refused"),
        "{audit:#}"
    );
}

/// The API once decided a job's role by scanning its words: an option that takes a value
/// (`--token points`) hid the command that ran, and a reader made an admin.
#[test]
fn a_reader_cannot_hide_a_command_behind_an_option_that_takes_a_value() {
    let harness = Harness::uninitialised();
    let (config, _) = site(&harness);
    let (_server, address, _) = serve_node(&harness, &config);
    let reader = user(&harness, &config, "watcher", "reader", &[]);
    let http = reqwest::blocking::Client::new();
    let submit = |command: &[&str]| {
        let response = http
            .post(format!("http://{address}/api/jobs"))
            .bearer_auth(&reader)
            .json(&json!({ "command": command }))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().unwrap())
    };
    let hidden: [&[&str]; 6] = [
        &[
            "--token", "points", "user", "add", "mallory", "--role", "admin",
        ],
        &[
            "--region", "points", "user", "add", "mallory", "--role", "admin",
        ],
        &["--ca-certificate", "points", "--region", "west", "prune"],
        &[
            "--token",
            "verify",
            "--region",
            "west",
            "forget",
            "--vm",
            "db1",
            "--keep-last",
            "0",
        ],
        &["-r/some/path", "points"],
        &["points", "--config=/tmp/other.toml"],
    ];
    for command in hidden {
        let (status, body) = submit(command);
        assert_eq!(status, 403, "{command:?}: {body}");
    }
    assert!(
        submit(&["--region", "points", "user", "add", "mallory"])
            .1
            .contains("needs an admin")
    );
    assert!(
        submit(&["-r/some/path", "points"])
            .1
            .contains("--repo is not taken")
    );
    // Nothing ran: no job was queued, no user made.
    let jobs = api(&address, &reader, "/api/jobs");
    assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs:#}");
    // What the reader may do still runs.
    assert_eq!(submit(&["points", "--region", "west", "--json"]).0, 202);
}

#[test]
fn logins_are_rate_limited_per_address_and_user_and_sessions_need_their_csrf_token() {
    let harness = Harness::uninitialised();
    let (config, _) = site(&harness);
    let (_server, address, _) = serve_node(&harness, &config);
    alice(&harness, &config);
    let http = reqwest::blocking::Client::new();
    let login = |password: &str| {
        http.post(format!("http://{address}/api/session"))
            .json(&json!({"user": "alice", "password": password}))
            .send()
            .unwrap()
    };
    // The right password: a session cookie (HttpOnly, SameSite=Strict) and a CSRF token.
    let good = login("a long enough secret");
    assert_eq!(good.status(), 200);
    let cookie = good.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let csrf = good.json::<Value>().unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let submit = |csrf: Option<&str>| {
        let mut request = http
            .post(format!("http://{address}/api/jobs"))
            .header("cookie", &session)
            .json(&json!({"command": ["--region", "west", "points"]}));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send().unwrap()
    };
    let refused = submit(None);
    assert_eq!(refused.status(), 403);
    assert!(refused.text().unwrap().contains("CSRF"));
    assert_eq!(submit(Some("0123")).status(), 403);
    assert_eq!(submit(Some(&csrf)).status(), 202);
    // Reads with the cookie alone.
    let me: Value = http
        .get(format!("http://{address}/api/session"))
        .header("cookie", &session)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["user"], "alice");
    assert_eq!(me["role"], "operator");

    // Five wrong passwords, then even the right one waits.
    for _ in 0..5 {
        assert_eq!(login("wrong").status(), 401);
    }
    let limited = login("a long enough secret");
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(limited.text().unwrap().contains("too many failed logins"));
    // Logging out ends the session.
    let out = http
        .post(format!("http://{address}/api/session/logout"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = http
        .get(format!("http://{address}/api/jobs"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[test]
fn failed_logins_count_on_every_node_of_a_postgresql_control_plane() {
    let postgres = lifeboat_testing::PostgresServer::start();
    let harness = Harness::uninitialised();
    let (config, _) = site_with(
        &harness,
        &format!("[settings]\ndatabase = \"{}\"\n\n", postgres.url()),
    );
    alice(&harness, &config);
    let (_first, first, _) = serve_node(&harness, &config);
    let (_second, second, _) = serve_node(&harness, &config);
    let http = reqwest::blocking::Client::new();
    let login = |address: &str, password: &str| {
        http.post(format!("http://{address}/api/session"))
            .json(&json!({"user": "alice", "password": password}))
            .send()
            .unwrap()
            .status()
    };
    // Four wrong passwords on the two nodes, then a success on one clears them for both:
    // four more are still answered (a fifth counted failure would refuse the next).
    for _ in 0..2 {
        for address in [&first, &second, &first, &second] {
            assert_eq!(login(address, "wrong"), 401);
        }
        assert_eq!(login(&second, "a long enough secret"), 200);
    }
    // Five wrong passwords spread over the two nodes: both then refuse even the right one.
    for address in [&first, &second, &first, &second, &first] {
        assert_eq!(login(address, "wrong"), 401);
    }
    assert_eq!(login(&second, "a long enough secret"), 429);
    assert_eq!(login(&first, "a long enough secret"), 429);
}
