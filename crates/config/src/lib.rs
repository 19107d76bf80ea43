//! Lifeboat's configuration file, `lifeboat.toml`: regions with their repositories, their
//! paired region and their redundancy; VMs, recovery plans and the built-in DNS server
//! (`vms.rs`). The format is documented in `docs/configuration.md`.
//!
//! # Design
//!
//! Parsing and validation happen here, once, and every error names the file, the line and
//! the key, so an operator fixes a broken file without guessing. The rest of Lifeboat sees
//! only checked values: a region's pair exists, names are unique, locations are not empty.
//!
//! # What this crate must not know
//!
//! How repositories are opened or copied; it only names them.

mod schedules;
mod vms;

pub use schedules::{Calendar, Schedule};
pub use vms::{ActionKind, ActionPosition, DnsSettings, DnsUpdate, Endpoint, Plan, PlanAction, Vm};

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The folder of the file at `path`; `.` for a bare file name, whose parent is empty.
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The default file name, looked for in the working directory.
pub const DEFAULT_FILE_NAME: &str = "lifeboat.toml";

/// How a region's repository is protected against the loss of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redundancy {
    /// One copy, in the region.
    Local,
    /// Every point is copied to the paired region.
    Geo,
    /// As `Geo`, and restores read the copy while the primary is unreachable.
    GeoRead,
}

impl Redundancy {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Redundancy::Local => "local",
            Redundancy::Geo => "geo",
            Redundancy::GeoRead => "geo-read",
        }
    }

    /// True when points are copied to the paired region.
    pub fn has_copy(self) -> bool {
        self != Redundancy::Local
    }
}

/// One region, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub name: String,
    /// Where the region's repository lives: a directory or `s3://bucket/prefix`.
    pub repository: String,
    /// The paired region, if any.
    pub pair: Option<String>,
    pub redundancy: Redundancy,
    /// Where this region's geo copy lives (in the paired region); set for `geo` and
    /// `geo-read`. Defaults to `copies/<name>` under the paired region's repository.
    pub geo_copy: Option<String>,
    /// Object storage settings for locations in this region (`aws_endpoint`, …).
    pub storage: Vec<(String, String)>,
    /// A command run after a storage failover of this region, the hook for DNS.
    pub on_storage_failover: Option<String>,
    /// The DNS name of the region's repository endpoint, served by the built-in DNS server
    /// with the address of whichever side is active.
    pub endpoint: Option<Endpoint>,
    /// The network a VM started here gets: a qemu `-nic` value (`user`, `bridge,br=br0`,
    /// `tap,ifname=tap0,script=no`, or `none`).
    pub network: String,
    /// The isolated network of a test failover (default `user,restrict=on`: no way out).
    pub test_network: String,
    /// How `lifeboat serve` checks the region is up: `tcp:HOST:PORT` or
    /// `http://HOST:PORT/PATH` (HOST an IP address).
    pub probe: Option<String>,
    pub probe_interval_seconds: u64,
    /// Failed probes in a row that open an incident.
    pub probe_failures: u32,
    /// The monthly availability promised, in percent.
    pub sla_percent: f64,
}

/// The whole file, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Where Lifeboat keeps its state (which copy of each region is active).
    pub state_directory: PathBuf,
    /// Where `lifeboat serve` answers HTTP (`[settings] listen`, default 127.0.0.1:8400).
    pub listen: std::net::SocketAddr,
    /// Its state database: `sqlite://…` (default `<state>/lifeboat.db`) or `postgres://…`.
    pub database: String,
    /// HTTPS: the PEM certificate chain and private key (`[settings] tls_certificate`,
    /// `tls_key`).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub regions: Vec<Region>,
    /// The built-in DNS server, when configured.
    pub dns: Option<DnsSettings>,
    pub vms: Vec<Vm>,
    pub plans: Vec<Plan>,
    /// What `lifeboat serve` runs on a calendar.
    pub schedules: Vec<Schedule>,
}

impl Config {
    /// The folder relative paths in the file are resolved against: the file's folder, or
    /// `.` when the file was named without one (`--config lifeboat.toml`).
    pub fn directory(&self) -> &Path {
        folder_of(&self.path)
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Result<&Region, ConfigError> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ConfigError::UnknownRegion {
                path: self.path.clone(),
                region: name.to_string(),
                known: self
                    .regions
                    .iter()
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} has no region '{region}' (it has: {known})")]
    UnknownRegion {
        path: PathBuf,
        region: String,
        known: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    settings: Option<Spanned<Settings>>,
    #[serde(default)]
    region: Vec<Spanned<RegionEntry>>,
    dns: Option<Spanned<vms::DnsEntry>>,
    #[serde(default)]
    vm: Vec<Spanned<vms::VmEntry>>,
    #[serde(default)]
    plan: Vec<Spanned<vms::PlanEntry>>,
    #[serde(default)]
    schedule: Vec<Spanned<schedules::ScheduleEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    state: Option<String>,
    /// Where `lifeboat serve` answers.
    listen: Option<Spanned<String>>,
    /// `sqlite://…` or `postgres://…`; default SQLite in the state directory.
    database: Option<String>,
    /// The PEM file of the CA that signed the PostgreSQL server's certificate (for
    /// `sslmode=verify-ca|verify-full`).
    database_ca: Option<Spanned<String>>,
    /// PEM files of the certificate (chain) and private key `lifeboat serve` answers HTTPS
    /// with.
    tls_certificate: Option<Spanned<String>>,
    tls_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    name: Spanned<String>,
    repository: Spanned<String>,
    pair: Option<Spanned<String>>,
    #[serde(default = "local")]
    redundancy: Spanned<Redundancy>,
    geo_copy: Option<Spanned<String>>,
    #[serde(default)]
    storage: BTreeMap<String, String>,
    on_storage_failover: Option<String>,
    endpoint: Option<Spanned<vms::EndpointEntry>>,
    network: Option<Spanned<String>>,
    test_network: Option<Spanned<String>>,
    probe: Option<Spanned<String>>,
    #[serde(default = "ten")]
    probe_interval_seconds: Spanned<u64>,
    #[serde(default = "three")]
    probe_failures: Spanned<u32>,
    #[serde(default = "three_nines")]
    sla_percent: Spanned<f64>,
}

fn ten() -> Spanned<u64> {
    Spanned::new(0..0, 10)
}

fn three() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

fn three_nines() -> Spanned<f64> {
    Spanned::new(0..0, 99.9)
}

fn local() -> Spanned<Redundancy> {
    Spanned::new(0..0, Redundancy::Local)
}

/// Reads and checks a configuration file. Its path is made absolute first, so that what
/// the file names relative to its folder (state, certificates, plan scripts) stays where it
/// is for every child and VM, whatever their working folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and checks `text`, read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let invalid = |span: Range<usize>, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
        message,
    };
    let file: File = toml::from_str(text).map_err(|error| {
        invalid(
            error.span().unwrap_or(0..0),
            error.message().trim().to_string(),
        )
    })?;
    let mut regions: Vec<Region> = Vec::new();
    for entry in &file.region {
        let span = entry.span();
        let entry = entry.get_ref();
        let name = entry.name.get_ref().trim();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(invalid(
                entry.name.span(),
                format!("region name '{name}' must be a non-empty word without '/'"),
            ));
        }
        if regions.iter().any(|r| r.name == name) {
            return Err(invalid(
                entry.name.span(),
                format!("key 'name': region '{name}' is defined twice"),
            ));
        }
        if entry.repository.get_ref().trim().is_empty() {
            return Err(invalid(
                entry.repository.span(),
                format!("key 'repository' of region '{name}' is empty"),
            ));
        }
        let redundancy = *entry.redundancy.get_ref();
        if redundancy.has_copy() && entry.pair.is_none() {
            let at = if entry.redundancy.span().is_empty() {
                span.clone()
            } else {
                entry.redundancy.span()
            };
            return Err(invalid(
                at,
                format!(
                    "key 'redundancy': region '{name}' is '{}' but has no 'pair' to copy to",
                    redundancy.as_str()
                ),
            ));
        }
        regions.push(Region {
            name: name.to_string(),
            repository: entry.repository.get_ref().trim().to_string(),
            pair: entry.pair.as_ref().map(|p| p.get_ref().trim().to_string()),
            redundancy,
            geo_copy: entry
                .geo_copy
                .as_ref()
                .map(|c| c.get_ref().trim().to_string()),
            storage: entry
                .storage
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            on_storage_failover: entry.on_storage_failover.clone(),
            endpoint: entry
                .endpoint
                .as_ref()
                .map(|endpoint| vms::endpoint(endpoint, name, &invalid))
                .transpose()?,
            network: vms::network(entry.network.as_ref(), "network", "user", &invalid)?,
            test_network: vms::network(
                entry.test_network.as_ref(),
                "test_network",
                "user,restrict=on",
                &invalid,
            )?,
            probe: entry
                .probe
                .as_ref()
                .map(|probe| {
                    let value = probe.get_ref().trim();
                    let target = value
                        .strip_prefix("tcp:")
                        .or_else(|| value.strip_prefix("http://").map(|r| r.split('/').next().unwrap_or("")));
                    match target.and_then(|t| t.parse::<std::net::SocketAddr>().ok()) {
                        Some(_) => Ok(value.to_string()),
                        None => Err(invalid(
                            probe.span(),
                            format!("key 'probe' of region '{name}': '{value}' is not like \"tcp:10.0.0.1:443\" or \"http://10.0.0.1:80/health\""),
                        )),
                    }
                })
                .transpose()?,
            probe_interval_seconds: vms::within(
                &entry.probe_interval_seconds,
                1..=3600,
                "probe_interval_seconds",
                "seconds",
                &invalid,
            )?,
            probe_failures: vms::within(
                &entry.probe_failures,
                1..=100,
                "probe_failures",
                "a count",
                &invalid,
            )?,
            sla_percent: vms::within(
                &entry.sla_percent,
                0.0..=100.0,
                "sla_percent",
                "a percentage",
                &invalid,
            )?,
        });
    }
    // Pairs must name known regions; copies default to a place in the pair's repository.
    for (index, entry) in file.region.iter().enumerate() {
        let Some(pair) = &entry.get_ref().pair else {
            continue;
        };
        let pair_name = pair.get_ref().trim();
        let Some(paired) = regions.iter().find(|r| r.name == pair_name) else {
            return Err(invalid(
                pair.span(),
                format!("key 'pair': there is no region '{pair_name}'"),
            ));
        };
        if paired.name == regions[index].name {
            return Err(invalid(
                pair.span(),
                "key 'pair': a region cannot be paired with itself".to_string(),
            ));
        }
        let default_copy = format!(
            "{}/copies/{}",
            paired.repository.trim_end_matches('/'),
            regions[index].name
        );
        let region = &mut regions[index];
        if region.redundancy.has_copy() && region.geo_copy.is_none() {
            region.geo_copy = Some(default_copy);
        }
        if let (Some(copy), Some(spanned)) = (&region.geo_copy, &entry.get_ref().geo_copy)
            && copy == &region.repository
        {
            return Err(invalid(
                spanned.span(),
                "key 'geo_copy': the copy cannot be the repository itself".to_string(),
            ));
        }
    }
    let directory = folder_of(path);
    let state_directory = match file
        .settings
        .as_ref()
        .and_then(|s| s.get_ref().state.clone())
    {
        Some(state) => directory.join(state),
        None => directory.join("lifeboat-state"),
    };
    let settings = file.settings.as_ref().map(|s| s.get_ref());
    let listen = match settings.and_then(|s| s.listen.as_ref()) {
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 8400)),
        Some(text) => text.get_ref().trim().parse().map_err(|_| {
            invalid(
                text.span(),
                format!(
                    "key 'listen': '{}' is not an address and port like 127.0.0.1:8400",
                    text.get_ref()
                ),
            )
        })?,
    };
    let tls = match settings.map(|s| (&s.tls_certificate, &s.tls_key)) {
        Some((Some(certificate), Some(key))) => Some((
            directory.join(certificate.get_ref().trim()),
            directory.join(key.trim()),
        )),
        Some((Some(certificate), None)) => {
            return Err(invalid(
                certificate.span(),
                "key 'tls_certificate': give 'tls_key' too (the PEM private key)".to_string(),
            ));
        }
        Some((None, Some(_))) => {
            return Err(invalid(
                file.settings.as_ref().map(|s| s.span()).unwrap_or(0..0),
                "key 'tls_key': give 'tls_certificate' too (the PEM certificate chain)".to_string(),
            ));
        }
        _ => None,
    };
    let database = match settings.and_then(|s| s.database.clone()) {
        Some(url) => url,
        None => format!(
            "sqlite://{}?mode=rwc",
            state_directory.join("lifeboat.db").display()
        ),
    };
    let database = match settings.and_then(|s| s.database_ca.as_ref()) {
        None => database,
        Some(ca)
            if database.starts_with("postgres://") || database.starts_with("postgresql://") =>
        {
            with_root_certificate(&database, &directory.join(ca.get_ref().trim()))
        }
        Some(ca) => {
            return Err(invalid(
                ca.span(),
                "key 'database_ca': only a postgres:// database takes a CA file".to_string(),
            ));
        }
    };
    let dns = file
        .dns
        .as_ref()
        .map(|entry| vms::dns(entry, directory, &invalid))
        .transpose()?;
    let vms = vms::vms(&file.vm, &regions, dns.as_ref(), &invalid)?;
    let plans = vms::plans(&file.plan, &vms, &invalid)?;
    let schedules = schedules::schedules(&file.schedule, &invalid)?;
    if let Some(dns) = &dns {
        for (region, entry) in regions.iter().zip(&file.region) {
            if let (Some(endpoint), Some(spanned)) = (&region.endpoint, &entry.get_ref().endpoint)
                && !dns.covers(&endpoint.name)
            {
                return Err(invalid(
                    spanned.span(),
                    format!(
                        "key 'endpoint': '{}' is in none of the DNS zones ({})",
                        endpoint.name,
                        dns.zones.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(Config {
        path: path.to_path_buf(),
        state_directory,
        listen,
        database,
        tls,
        regions,
        dns,
        vms,
        plans,
        schedules,
    })
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `url` with `sslrootcert` naming `ca` (percent-encoded as its query wants).
fn with_root_certificate(url: &str, ca: &Path) -> String {
    let mut encoded = String::new();
    for byte in ca.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                encoded.push(*byte as char)
            }
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslrootcert={encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/lifeboat/lifeboat.toml"), text)
    }

    const PAIR: &str = r#"
[[region]]
name = "west"
repository = "/srv/lifeboat/west"
pair = "east"
redundancy = "geo-read"

[[region]]
name = "east"
repository = "s3://east-bucket/lifeboat"
pair = "west"
redundancy = "geo"
geo_copy = "/srv/lifeboat/west-side/copies/east"
storage = { aws_endpoint = "http://127.0.0.1:9000", aws_allow_http = "true" }
on_storage_failover = "/usr/local/bin/move-dns"
"#;

    #[test]
    fn a_database_ca_is_named_in_the_postgres_url_relative_to_the_file() {
        let settings = "[settings]\ndatabase = \"postgres://lifeboat@db.example/lifeboat?sslmode=verify-full\"\ndatabase_ca = \"pg ca.pem\"\n";
        let config = parse_text(&format!("{settings}{PAIR}")).unwrap();
        assert_eq!(
            config.database,
            "postgres://lifeboat@db.example/lifeboat?sslmode=verify-full\
             &sslrootcert=/etc/lifeboat/pg%20ca.pem"
        );
        let plain =
            "[settings]\ndatabase = \"postgres://db/lifeboat\"\ndatabase_ca = \"/ca.pem\"\n";
        let config = parse_text(&format!("{plain}{PAIR}")).unwrap();
        assert_eq!(
            config.database,
            "postgres://db/lifeboat?sslrootcert=/ca.pem"
        );
        let sqlite = parse_text(&format!("[settings]\ndatabase_ca = \"ca.pem\"\n{PAIR}"))
            .unwrap_err()
            .to_string();
        assert!(sqlite.contains("only a postgres:// database"), "{sqlite}");
    }

    #[test]
    fn a_paired_configuration_is_read_with_defaults_filled_in() {
        let config = parse_text(PAIR).unwrap();
        let west = config.region("west").unwrap();
        assert_eq!(west.redundancy, Redundancy::GeoRead);
        assert_eq!(
            west.geo_copy.as_deref(),
            Some("s3://east-bucket/lifeboat/copies/west")
        );
        let east = config.region("east").unwrap();
        assert_eq!(
            east.geo_copy.as_deref(),
            Some("/srv/lifeboat/west-side/copies/east")
        );
        assert_eq!(
            east.storage[0],
            ("aws_allow_http".to_string(), "true".to_string())
        );
        assert_eq!(
            config.state_directory,
            Path::new("/etc/lifeboat/lifeboat-state")
        );
        assert!(
            config
                .region("north")
                .unwrap_err()
                .to_string()
                .contains("has no region 'north' (it has: west, east)")
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let unknown_pair = PAIR.replace("pair = \"west\"", "pair = \"north\"");
        let error = parse_text(&unknown_pair).unwrap_err().to_string();
        assert_eq!(
            error,
            "/etc/lifeboat/lifeboat.toml, line 11: key 'pair': there is no region 'north'"
        );

        let bad_redundancy = PAIR.replace("\"geo-read\"", "\"triple\"");
        let error = parse_text(&bad_redundancy).unwrap_err().to_string();
        assert!(
            error.starts_with("/etc/lifeboat/lifeboat.toml, line 6: unknown variant `triple`"),
            "{error}"
        );

        let unknown_key = PAIR.replace("redundancy = \"geo\"", "redundency = \"geo\"");
        let error = parse_text(&unknown_key).unwrap_err().to_string();
        assert!(
            error.contains("line 12") && error.contains("redundency"),
            "{error}"
        );

        let twice = PAIR.replace("name = \"east\"", "name = \"west\"");
        let error = parse_text(&twice).unwrap_err().to_string();
        assert!(
            error.contains("line 9") && error.contains("defined twice"),
            "{error}"
        );

        let no_pair = "[[region]]\nname = \"solo\"\nrepository = \"/r\"\nredundancy = \"geo\"\n";
        let error = parse_text(no_pair).unwrap_err().to_string();
        assert!(
            error.contains("line 4") && error.contains("no 'pair'"),
            "{error}"
        );

        let broken = "[[region]\nname = 1\n";
        let error = parse_text(broken).unwrap_err().to_string();
        assert!(
            error.starts_with("/etc/lifeboat/lifeboat.toml, line 1:"),
            "{error}"
        );
    }

    #[test]
    fn control_plane_mistakes_name_the_file_line_and_key() {
        let cases = [
            ("[settings]\nlisten = \"everywhere\"\n", "line 2", "listen"),
            (
                "[[region]]\nname = \"west\"\nrepository = \"/r\"\nprobe = \"ping:10.0.0.1\"\n",
                "line 4",
                "probe",
            ),
            (
                "[[schedule]]\nname = \"nightly\"\nevery = \"often\"\ncommand = [\"verify\"]\n",
                "line 3",
                "every",
            ),
            (
                "[[schedule]]\nname = \"nightly\"\nat = \"25:00\"\ncommand = [\"verify\"]\n",
                "line 3",
                "at",
            ),
            (
                "[[schedule]]\nname = \"nightly\"\nevry = \"1h\"\ncommand = [\"verify\"]\n",
                "line 3",
                "evry",
            ),
            (
                "[[schedule]]\nname = \"weekly\"\nat = \"03:00\"\non = [\"sunday\", \"caturday\"]\ncommand = [\"verify\"]\n",
                "line 4",
                "'caturday' is not a weekday",
            ),
        ];
        for (text, line, key) in cases {
            let error = parse_text(text).unwrap_err().to_string();
            assert!(
                error.starts_with("/etc/lifeboat/lifeboat.toml, ")
                    && error.contains(line)
                    && error.contains(key),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = load(Path::new("/nonexistent/lifeboat.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot read configuration file /nonexistent/lifeboat.toml"),
            "{error}"
        );
    }
}
