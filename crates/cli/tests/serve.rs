//! `lifeboat serve` on embedded defaults: a region probe that fails opens an incident and
//! one that answers again closes it, availability is measured against the SLA, all of it
//! kept across a restart (SQLite), served as JSON with an OpenAPI document and as
//! Prometheus metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Harness;
use common::daemon::{serve_node, user};
use common::replication::Killed;
use serde_json::Value;

/// GET `path` from `address`; the status code and body.
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn serve(harness: &Harness, config: &std::path::Path) -> (Killed, String) {
    let (server, address, _) = serve_node(harness, config);
    (server, address)
}

/// POST `path` with an empty body; the status code and body.
fn post(address: &str, path: &str, token: &str) -> (u16, String) {
    request(address, "POST", path, token)
}

/// `method path` with a bearer `token` (none when empty); the status code and body.
fn request(address: &str, method: &str, path: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let authorization = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn jobs(address: &str) -> Vec<Value> {
    let (status, body) = get(address, "/api/jobs");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// GET with a bearer token.
fn get_with(address: &str, path: &str, token: &str) -> (u16, String) {
    request(address, "GET", path, token)
}

/// Polls the jobs until `check` holds (within 60 s).
fn jobs_until(address: &str, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    jobs_until_with(address, "", what, check)
}

fn jobs_until_with(
    address: &str,
    token: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get_with(address, "/api/jobs", token);
        assert_eq!(status, 200, "{body}");
        let jobs: Vec<Value> = serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        if check(&jobs) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {jobs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A configuration with region west (its repository initialised, disk db1) and schedules:
/// a backup of db1 every 2 s and a receiver that runs until cancelled, daily.
fn scheduled(harness: &Harness, settings: &str) -> std::path::PathBuf {
    let config = harness.path("lifeboat.toml");
    let disk = harness.path("db1.raw");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    std::fs::write(
        &config,
        format!(
            "{settings}\n[[region]]\nname = \"west\"\nrepository = \"{west}\"\n\n\
             [[schedule]]\nname = \"db1-backup\"\nevery = \"2s\"\ncommand = [\"--region\", \"west\", \"backup\", \"--vm\", \"db1\", \"{disk}\"]\n\n\
             [[schedule]]\nname = \"idle-receiver\"\nat = \"00:00\"\n\
             command = [\"--region\", \"west\", \"receive\", \"--group\", \"idle\", \"--replicas\", \"{replicas}\", \"--follow\"]\n",
            west = harness.path("west").display(),
            disk = disk.display(),
            replicas = harness.path("replicas").display(),
        ),
    )
    .unwrap();
    common::succeeds(harness.in_region(&config, "west").arg("init"));
    config
}

fn count(jobs: &[Value], schedule: &str, state: &str) -> usize {
    jobs.iter()
        .filter(|j| j["schedule"] == schedule && j["state"] == state)
        .count()
}

fn points(harness: &Harness, config: &std::path::Path) -> usize {
    let output = harness
        .in_region(config, "west")
        .args(["--json", "points"])
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

fn west(address: &str) -> Value {
    let (status, body) = get(address, "/api/status");
    assert_eq!(status, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["regions"][0].clone()
}

fn until(address: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let region = west(address);
        if check(&region) {
            return region;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {region:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn region_probes_open_and_close_incidents_measured_against_the_sla_and_kept_across_restarts() {
    let harness = Harness::uninitialised();
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let config = harness.path("lifeboat.toml");
    std::fs::write(
        &config,
        format!(
            "[[region]]\nname = \"west\"\nrepository = \"{}\"\nprobe = \"tcp:127.0.0.1:{port}\"\n\
             probe_interval_seconds = 1\nprobe_failures = 2\nsla_percent = 99.9\n\n\
             [[region]]\nname = \"east\"\nrepository = \"{}\"\n",
            harness.path("west").display(),
            harness.path("east").display()
        ),
    )
    .unwrap();
    let (server, address) = serve(&harness, &config);
    let up = until(&address, "a good probe", |r| r["up"] == true);
    assert_eq!(up["availability_this_month"], 1.0);
    assert_eq!(up["sla_met"], true);
    assert!(up["open_incident"].is_null());

    // West stops answering: after two failed probes an incident opens.
    drop(endpoint);
    let down = until(&address, "an incident", |r| r["open_incident"].is_object());
    assert_eq!(down["up"], false);
    assert!(
        down["open_incident"]["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer")
    );
    let (_, metrics) = get(&address, "/metrics");
    assert!(
        metrics.contains("lifeboat_region_up{region=\"west\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_region_incident_open{region=\"west\"} 1"),
        "{metrics}"
    );
    // It answers again: the incident closes; the downtime counts against the SLA.
    let endpoint = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let closed = until(&address, "the incident closing", |r| {
        r["open_incident"].is_null()
    });
    assert!(closed["availability_this_month"].as_f64().unwrap() < 1.0);
    let (status, body) = get(&address, "/api/regions/west/incidents");
    assert_eq!(status, 200);
    let incidents: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(incidents.as_array().unwrap().len(), 1);
    assert!(
        incidents[0]["closed_ms"].as_i64().unwrap() > incidents[0]["opened_ms"].as_i64().unwrap()
    );

    // The state outlives the process.
    drop(server);
    let (_server, address) = serve(&harness, &config);
    let (_, body) = get(&address, "/api/regions/west/incidents");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), incidents);
    drop(endpoint);

    // The API describes itself; mistakes are JSON errors, not crashes.
    let (status, body) = get(&address, "/api/openapi.json");
    assert_eq!(status, 200);
    let document: Value = serde_json::from_str(&body).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert!(document["paths"]["/api/status"].is_object());
    let (status, body) = get(&address, "/api/regions/north/incidents");
    assert_eq!(status, 404);
    assert!(body.contains("there is no region 'north'"));
    let (status, _) = get(&address, "/nowhere");
    assert_eq!(status, 404);
}

#[test]
fn schedules_run_as_jobs_with_history_and_a_running_job_is_cancelled() {
    let harness = Harness::uninitialised();
    let config = scheduled(&harness, "");
    let (_server, address) = serve(&harness, &config);
    let seen = jobs_until(&address, "three backups", |jobs| {
        count(jobs, "db1-backup", "succeeded") >= 3
    });
    let backup = seen.iter().find(|j| j["state"] == "succeeded").unwrap();
    assert!(
        backup["output"].as_str().unwrap().contains("\"point\""),
        "{backup}"
    );
    assert!(points(&harness, &config) >= 3);
    // The receiver runs until cancelled: cancelling kills it.
    let running = jobs_until(&address, "the receiver running", |jobs| {
        count(jobs, "idle-receiver", "running") == 1
    });
    let id = running
        .iter()
        .find(|j| j["schedule"] == "idle-receiver")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Until a user exists the API only reads; then actions need an operator's token.
    let cancel = format!("/api/jobs/{id}/cancel");
    let (status, body) = post(&address, &cancel, "");
    assert_eq!(status, 401);
    assert!(body.contains("lifeboat user add"), "{body}");
    let reader = user(&harness, &config, "watcher", "reader", &[]);
    let operator = user(&harness, &config, "ops", "operator", &[]);
    assert_eq!(
        get_with(&address, "/api/jobs", "").0,
        401,
        "anonymous reads end with the first user"
    );
    assert_eq!(get_with(&address, "/api/jobs", &reader).0, 200);
    assert_eq!(post(&address, &cancel, "lb_forged_token").0, 401);
    let (status, body) = post(&address, &cancel, &reader);
    assert_eq!(status, 403);
    assert!(body.contains("needs an operator"), "{body}");
    let (status, _) = post(&address, &cancel, &operator);
    assert_eq!(status, 202);
    jobs_until_with(&address, &reader, "the cancellation", |jobs| {
        count(jobs, "idle-receiver", "cancelled") == 1
    });
    assert_eq!(
        receivers(&harness),
        0,
        "the cancelled job's process is gone"
    );
    let (status, _) = post(&address, "/api/jobs/nothing/cancel", &operator);
    assert_eq!(status, 404);
    // Who did it is on record; readers may not look.
    let (status, body) = get_with(&address, "/api/audit", &operator);
    assert_eq!(status, 200);
    let audit: Value = serde_json::from_str(&body).unwrap();
    assert!(
        audit.as_array().unwrap().iter().any(|e| {
            e["actor"] == "ops" && e["action"] == "cancel job" && e["target"] == id.as_str()
        }),
        "{audit:#}"
    );
    assert_eq!(get_with(&address, "/api/audit", &reader).0, 403);
    let (_, metrics) = get(&address, "/metrics");
    assert!(
        metrics.contains("lifeboat_jobs{schedule=\"db1-backup\",state=\"succeeded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_job_last_duration_seconds{schedule=\"db1-backup\"}"),
        "{metrics}"
    );
}

#[test]
fn two_nodes_on_postgresql_run_each_job_once_and_a_killed_nodes_work_moves_within_seconds() {
    let postgres = lifeboat_testing::PostgresServer::start();
    let harness = Harness::uninitialised();
    let config = scheduled(
        &harness,
        &format!("[settings]\ndatabase = \"{}\"\n", postgres.url()),
    );
    let (first, address, first_node) = serve_node(&harness, &config);
    let (second, second_address, second_node) = serve_node(&harness, &config);
    let mut nodes = vec![(first, first_node), (second, second_node)];
    // Both nodes see the same jobs; each due backup ran exactly once.
    let seen = jobs_until(&address, "four backups", |jobs| {
        count(jobs, "db1-backup", "succeeded") >= 4
    });
    assert!(jobs(&second_address).len() >= seen.len());
    let backups: Vec<&Value> = seen
        .iter()
        .filter(|j| j["schedule"] == "db1-backup")
        .collect();
    let mut due: Vec<i64> = backups
        .iter()
        .map(|j| j["due_ms"].as_i64().unwrap())
        .collect();
    due.sort();
    due.dedup();
    assert_eq!(due.len(), backups.len(), "one job per due moment");
    assert!(backups.iter().all(|j| j["attempt"].as_i64() <= Some(1)));
    // Kill the node running the receiver: the other takes it within seconds.
    let running = jobs_until(&address, "the receiver running", |jobs| {
        count(jobs, "idle-receiver", "running") == 1
    });
    let receiver = running
        .iter()
        .find(|j| j["schedule"] == "idle-receiver")
        .unwrap()
        .clone();
    let holder = receiver["node"].as_str().unwrap().to_string();
    let index = nodes.iter().position(|(_, node)| *node == holder).unwrap();
    let (killed, _) = nodes.remove(index);
    let killed_at = Instant::now();
    drop(killed);
    let survivor = if index == 0 { second_address } else { address };
    let moved = jobs_until(&survivor, "the receiver moving", |jobs| {
        jobs.iter().any(|j| {
            j["id"] == receiver["id"] && j["state"] == "running" && j["node"] != holder.as_str()
        })
    });
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "it moved after {:?}",
        killed_at.elapsed()
    );
    let moved = moved.iter().find(|j| j["id"] == receiver["id"]).unwrap();
    assert_eq!(moved["attempt"], 2);
    let id = receiver["id"].as_str().unwrap();
    let operator = user(&harness, &config, "ops", "operator", &[]);
    let (status, _) = post(&survivor, &format!("/api/jobs/{id}/cancel"), &operator);
    assert_eq!(status, 202);
    jobs_until_with(&survivor, &operator, "the cancellation", |jobs| {
        count(jobs, "idle-receiver", "cancelled") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receivers(&harness),
        0,
        "no job outlives its node or its cancellation"
    );
}

/// Managed PostgreSQL services accept TLS only. The state database is reached over TLS,
/// the server's certificate checked against the CA named by `database_ca`, and every way
/// of getting it wrong is refused with an error that says what to check (and never the
/// password).
#[test]
fn the_state_database_is_reached_over_tls_and_its_certificate_is_checked() {
    let postgres = lifeboat_testing::PostgresServer::start_tls();
    let harness = Harness::uninitialised();
    let url = format!(
        "postgres://postgres:not-shown@127.0.0.1:{}/lifeboat",
        postgres.port
    );
    let configure = |name: &str, query: &str, ca: Option<&std::path::Path>| {
        let config = harness.path(name);
        let ca = ca
            .map(|ca| format!("database_ca = \"{}\"\n", ca.display()))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[settings]\nstate = \"{state}\"\ndatabase = \"{url}{query}\"\n{ca}\n\
                 [[region]]\nname = \"west\"\nrepository = \"{west}\"\n",
                state = harness.path(&format!("{name}-state")).display(),
                west = harness.path("west").display(),
            ),
        )
        .unwrap();
        config
    };
    let add = |config: &std::path::Path, name: &str| {
        harness
            .configured(config)
            .args(["--json", "user", "add", name, "--role", "reader"])
            .output()
            .unwrap()
    };
    // Verified against the CA (the file named relative to nothing: an absolute path), and
    // encrypted without verification.
    let verified = configure(
        "verified.toml",
        "?sslmode=verify-full",
        Some(&postgres.ca()),
    );
    let output = add(&verified, "alice");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let required = configure("required.toml", "?sslmode=require", None);
    let output = add(&required, "bob");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Both users are in the one database, as psql sees it over TLS.
    let listed = std::process::Command::new("psql")
        .arg(format!(
            "postgresql://postgres@127.0.0.1:{}/lifeboat?sslmode=require",
            postgres.port
        ))
        .args(["-At", "-c", "SELECT name FROM users ORDER BY name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "alice\nbob\n",
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    // A certificate signed by another CA, and a server that refuses plaintext.
    let wrong = configure(
        "wrong.toml",
        "?sslmode=verify-full",
        Some(&postgres.other_ca()),
    );
    let plaintext = configure("plain.toml", "?sslmode=disable", None);
    for (config, expected) in [(&wrong, "certificate"), (&plaintext, "no encryption")] {
        let output = add(config, "mallory");
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{config:?} connected");
        assert!(
            error.contains("state database: cannot connect to")
                && error.contains(expected)
                && error.contains("TLS: check the URL's sslmode")
                && !error.contains("panicked"),
            "{error}"
        );
        assert!(
            !error.contains("not-shown"),
            "the password is shown: {error}"
        );
    }
}

/// Processes of the scheduled receiver (its replicas directory on their command line).
fn receivers(harness: &Harness) -> usize {
    let replicas = harness.path("replicas").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .contains(&replicas)
        })
        .count()
}

#[test]
fn the_api_speaks_https_with_the_configured_certificate_and_bad_tls_settings_are_refused_clearly() {
    let harness = Harness::uninitialised();
    // A CA, and the daemon's certificate for 127.0.0.1 signed by it.
    let openssl = |arguments: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(arguments)
            .current_dir(harness.directory.path())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {arguments:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=lifeboat test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=lifeboat",
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
    ]);
    std::fs::write(
        harness.path("extensions.cnf"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "extensions.cnf",
        "-out",
        "cert.pem",
    ]);
    let config = harness.path("lifeboat.toml");
    let region = format!(
        "[[region]]\nname = \"west\"\nrepository = \"{}\"\n",
        harness.path("west").display()
    );
    std::fs::write(
        &config,
        format!("[settings]\ntls_certificate = \"cert.pem\"\ntls_key = \"key.pem\"\n\n{region}"),
    )
    .unwrap();
    let (_server, address) = serve(&harness, &config);
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .args(extra)
            .arg(format!("https://{address}/api/status"))
            .output()
            .unwrap()
    };
    let trusted = curl(&["--cacert", harness.path("ca.pem").to_str().unwrap()]);
    assert!(trusted.status.success());
    let status: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(status["regions"][0]["name"], "west");
    assert!(
        !curl(&[]).status.success(),
        "an unknown certificate is not trusted"
    );
    let plain = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{address}/api/status"))
        .output()
        .unwrap();
    assert!(
        serde_json::from_slice::<Value>(&plain.stdout).is_err(),
        "no plain HTTP answers"
    );
    // The remote CLI trusts the certificate it is given, and only it.
    let remote = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args(["--remote", &format!("https://{address}")])
            .args(extra)
            .args(["--json", "dns", "records"])
            .output()
            .unwrap()
    };
    let trusted = remote(&["--ca-certificate", harness.path("ca.pem").to_str().unwrap()]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = remote(&[]);
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("cannot reach the Lifeboat daemon"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    // Half the settings, or a key that is not one: clear errors.
    std::fs::write(
        &config,
        format!("[settings]\ntls_certificate = \"cert.pem\"\n\n{region}"),
    )
    .unwrap();
    let half = harness.configured(&config).arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("give 'tls_key' too"),
        "{stderr}"
    );
    std::fs::write(
        &config,
        format!("[settings]\ntls_certificate = \"cert.pem\"\ntls_key = \"cert.pem\"\n\n{region}"),
    )
    .unwrap();
    let wrong = harness
        .configured(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("cannot use the TLS certificate"),
        "{stderr}"
    );
}

#[test]
fn metrics_show_the_rpo_and_lag_of_every_replicated_vm_and_the_points_of_every_region() {
    use common::replication::{Protect, follow, raw_disk, status_until};
    let harness = Harness::new();
    let config = harness.path("lifeboat.toml");
    let disk = raw_disk(&harness, "db1.raw", "4M");
    // Data, so the repository stores some.
    let mut bytes = std::fs::read(&disk).unwrap();
    for (i, byte) in bytes[..1 << 20].iter_mut().enumerate() {
        *byte = (i * 7 % 251) as u8;
    }
    std::fs::write(&disk, bytes).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[region]]\nname = \"east\"\nrepository = \"{}\"\n\n\
             [[vm]]\nname = \"db1\"\nregion = \"east\"\ndisks = [\"{}\"]\n",
            harness.repository.display(),
            disk.display()
        ),
    )
    .unwrap();
    let _protect = Protect::start(&harness, "shop", &[("db1".to_string(), vec![disk])], "0.3");
    let (_receiver, _) = follow(&harness, "shop", &harness.path("replicas"), &[]);
    status_until(&harness, "shop", |status| status["rpo_seconds"].is_number());
    let (_server, address) = serve(&harness, &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, metrics) = get(&address, "/metrics");
        if metrics.contains("lifeboat_vm_rpo_seconds{group=\"shop\",vm=\"db1\"}") {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no RPO in the metrics:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("lifeboat_group_rpo_seconds{group=\"shop\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_vm_pending_bytes{group=\"shop\",vm=\"db1\"}"),
        "{metrics}"
    );
    let points: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("lifeboat_region_points{region=\"east\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(points >= 1, "{metrics}");
    let stored: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("lifeboat_region_bytes_stored{region=\"east\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(stored > 0, "{metrics}");
    // The same poll recorded db1's RPO: its history, and the VM list, show it.
    let (status, body) = get(&address, "/api/vms/db1/rpo");
    assert_eq!(status, 200, "{body}");
    let samples: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        !samples.is_empty() && samples[0]["rpo_seconds"].as_f64().unwrap() >= 0.0,
        "{body}"
    );
    let (_, body) = get(&address, "/api/vms");
    let vms: Value = serde_json::from_str(&body).unwrap();
    let db1 = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "db1")
        .unwrap();
    assert_eq!(db1["group"], "shop", "{vms}");
    assert!(db1["rpo_seconds"].as_f64().is_some(), "{vms}");
    // The dashboard draws it: RPO over time for db1.
    let browser = common::browser::Browser::start();
    browser.open(&format!("http://{address}/#vms"));
    browser.wait_for(
        "document.body.dataset.page === 'vms' && document.body.dataset.ready === '1'",
        30,
    );
    assert!(browser.text("tr[data-vm=\"db1\"]").contains("shop"));
    browser.click("tr[data-vm=\"db1\"] button.show-rpo");
    browser.wait_for(
        "document.querySelector('svg.rpo-chart polyline.line') !== null",
        20,
    );
    browser
        .screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard/rpo.png"));
    let (status, body) = get(&address, "/api/replication");
    assert_eq!(status, 200);
    let replication: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        replication["status"]["replication"][0]["groups"][0]["group"],
        "shop"
    );
}

#[test]
fn schemathesis_finds_no_server_error_nor_a_response_outside_the_openapi_document() {
    let schemathesis = std::env::var("LIFEBOAT_SCHEMATHESIS")
        .unwrap_or_else(|_| "/opt/lifeboat-test/schemathesis/bin/schemathesis".to_string());
    assert!(
        std::path::Path::new(&schemathesis).exists(),
        "schemathesis is not installed at {schemathesis}: scripts/test.sh installs it"
    );
    let harness = Harness::uninitialised();
    let config = scheduled(&harness, "");
    let (_server, address) = serve(&harness, &config);
    // Some jobs to find.
    jobs_until(&address, "a backup", |jobs| !jobs.is_empty());
    let token = user(&harness, &config, "fuzzer", "admin", &[]);
    // Every check, on every operation but one: a job's command is a list of strings in the
    // schema but a lifeboat command line in truth, and one that does not parse is a
    // documented 400 that the schema cannot express.
    let settings = harness.path("schemathesis.toml");
    std::fs::write(
        &settings,
        "[checks]\nenabled = true\n\n[[operations]]\ninclude-path = \"/api/jobs\"\ninclude-method = \"POST\"\n\
         checks.positive_data_acceptance.enabled = false\n",
    )
    .unwrap();
    let output = std::process::Command::new(&schemathesis)
        .arg("--config-file")
        .arg(&settings)
        .args(["run", &format!("http://{address}/api/openapi.json")])
        .args(["--max-examples", "25"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
