//! `lifeboat serve` on embedded defaults: a region probe that fails opens an incident and
//! one that answers again closes it, availability is measured against the SLA, all of it
//! kept across a restart (SQLite), served as JSON with an OpenAPI document and as
//! Prometheus metrics.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Harness;
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
    let mut child = harness
        .configured(config)
        .args(["--json", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (
        Killed(child),
        started["listen"].as_str().unwrap().to_string(),
    )
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
