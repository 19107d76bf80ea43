//! The `[dns]` section, region endpoints, `[[vm]]` and `[[plan]]`: what the failover of
//! VMs and the built-in DNS server work from. Checked here; every error names the line and
//! the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::{ConfigError, Region};

/// The built-in DNS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Where it answers, over UDP and TCP.
    pub listen: SocketAddr,
    /// TTL of every record, in seconds: short, so names move quickly.
    pub ttl: u32,
    /// The zones it is authoritative for.
    pub zones: Vec<String>,
    /// Also push every name to an existing DNS server by RFC 2136 updates.
    pub update: Option<DnsUpdate>,
    /// Where the test view answers: the names of VMs started by a test failover, with their
    /// test addresses, apart from the production view.
    pub test_listen: Option<SocketAddr>,
    /// Seconds between health probes of VMs with a `health` check.
    pub health_interval_seconds: u64,
    /// Failed probes in a row before an address is unhealthy.
    pub health_failures: u32,
}

/// An existing DNS server holding the zones, updated by RFC 2136.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsUpdate {
    pub server: SocketAddr,
    /// A TSIG key as `tsig-keygen` writes it; unsigned updates without one.
    pub key_file: Option<PathBuf>,
}

impl DnsSettings {
    /// True when `name` falls in one of the zones.
    pub fn covers(&self, name: &str) -> bool {
        self.zone_of(name).is_some()
    }

    /// The most specific zone holding `name` (zones are kept lower-case, without the
    /// final dot).
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.zones
            .iter()
            .filter(|zone| name == **zone || name.ends_with(&format!(".{zone}")))
            .max_by_key(|zone| zone.len())
            .map(String::as_str)
    }
}

/// The DNS name of a region's repository endpoint and the address of each side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// While the primary repository is active.
    pub primary: IpAddr,
    /// After a storage failover to the geo copy.
    pub copy: Option<IpAddr>,
}

/// A protected VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    /// The region it runs in normally.
    pub region: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<PathBuf>,
    /// DNS names that follow the VM.
    pub dns: Vec<String>,
    /// Its address in each region it may run in (network mapping).
    pub addresses: BTreeMap<String, IpAddr>,
    /// A kernel booted directly (with `initrd` and `append`) instead of the first disk's
    /// boot loader.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    /// How the built-in DNS server checks the VM's address (`tcp:PORT` or
    /// `http:PORT/PATH`): its names answer with the first healthy address, the region it
    /// runs in first.
    pub health: Option<String>,
}

/// A recovery plan: groups of VMs brought up in order, the VMs of a group together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub groups: Vec<Vec<String>>,
    /// Pre-flight: refuse points older than this (the plan's RPO), if set.
    pub max_point_age_seconds: Option<u64>,
    /// Scripts and manual steps around the groups, in file order.
    pub actions: Vec<PlanAction>,
}

/// A step of a plan that is not a VM: a script or a manual step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanAction {
    /// Runs before group `n` (1-based) starts, or after it is up.
    pub position: ActionPosition,
    pub what: ActionKind,
}

/// Where an action sits in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionPosition {
    Before(usize),
    After(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// A command run with `sh -c`, killed after the timeout.
    Script {
        command: String,
        timeout_seconds: u64,
    },
    /// The plan waits until `lifeboat plan continue` after showing this.
    Manual { message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsEntry {
    listen: Option<Spanned<String>>,
    ttl: Option<Spanned<u32>>,
    zones: Spanned<Vec<String>>,
    update: Option<Spanned<UpdateEntry>>,
    test_listen: Option<Spanned<String>>,
    health_interval_seconds: Option<Spanned<u64>>,
    health_failures: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateEntry {
    server: Spanned<String>,
    key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointEntry {
    name: Spanned<String>,
    primary: Spanned<String>,
    copy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmEntry {
    name: Spanned<String>,
    region: Spanned<String>,
    #[serde(default = "one")]
    vcpus: Spanned<u32>,
    #[serde(default = "memory")]
    memory_mib: Spanned<u64>,
    disks: Spanned<Vec<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    #[serde(default)]
    addresses: BTreeMap<String, Spanned<String>>,
    kernel: Option<String>,
    initrd: Option<String>,
    append: Option<String>,
    health: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanEntry {
    name: Spanned<String>,
    groups: Spanned<Vec<Vec<String>>>,
    max_point_age_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    action: Vec<Spanned<ActionEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionEntry {
    before: Option<usize>,
    after: Option<usize>,
    script: Option<String>,
    manual: Option<String>,
    #[serde(default = "five_minutes")]
    timeout_seconds: u64,
}

fn five_minutes() -> u64 {
    300
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn memory() -> Spanned<u64> {
    Spanned::new(0..0, 512)
}

type Invalid<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

fn address(text: &Spanned<String>, key: &str, invalid: Invalid) -> Result<IpAddr, ConfigError> {
    text.get_ref().trim().parse().map_err(|_| {
        invalid(
            text.span(),
            format!("key '{key}': '{}' is not an IP address", text.get_ref()),
        )
    })
}

fn plain_name(text: &Spanned<String>, what: &str, invalid: Invalid) -> Result<String, ConfigError> {
    let name = text.get_ref().trim();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(invalid(
            text.span(),
            format!("key 'name': {what} name '{name}' must be a non-empty word without '/'"),
        ));
    }
    Ok(name.to_string())
}

fn dns_name(text: &str) -> bool {
    let name = text.trim_end_matches('.');
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A VM's `health`: `tcp:PORT` or `http:PORT/PATH`.
fn health_check(text: &Spanned<String>, vm: &str, invalid: Invalid) -> Result<String, ConfigError> {
    let value = text.get_ref().trim();
    let port = value.strip_prefix("tcp:").or_else(|| {
        value
            .strip_prefix("http:")
            .map(|rest| rest.split('/').next().unwrap_or(""))
    });
    if port
        .and_then(|p| p.parse::<u16>().ok())
        .is_none_or(|p| p == 0)
    {
        return Err(invalid(
            text.span(),
            format!(
                "key 'health' of VM '{vm}': '{value}' is not a check like \"tcp:443\" or \"http:80/healthz\""
            ),
        ));
    }
    Ok(value.to_string())
}

pub(crate) fn dns(
    entry: &Spanned<DnsEntry>,
    directory: &std::path::Path,
    invalid: Invalid,
) -> Result<DnsSettings, ConfigError> {
    let dns = entry.get_ref();
    let socket = |text: &Spanned<String>, key: &str| -> Result<SocketAddr, ConfigError> {
        text.get_ref().trim().parse().map_err(|_| {
            invalid(
                text.span(),
                format!(
                    "key '{key}': '{}' is not an address and port like 127.0.0.1:5353",
                    text.get_ref()
                ),
            )
        })
    };
    let listen = match &dns.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 5353)),
        Some(text) => socket(text, "listen")?,
    };
    let test_listen = dns
        .test_listen
        .as_ref()
        .map(|text| socket(text, "test_listen"))
        .transpose()?;
    let ttl = dns.ttl.as_ref().map_or(Ok(30), |ttl| {
        within(ttl, 1..=86400, "ttl", "seconds", invalid)
    })?;
    let zones: Vec<String> = dns
        .zones
        .get_ref()
        .iter()
        .map(|z| z.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if zones.is_empty() || zones.iter().any(|z| !dns_name(z)) {
        return Err(invalid(
            dns.zones.span(),
            "key 'zones': list the DNS zones to serve, like [\"shop.example\"]".to_string(),
        ));
    }
    let update = match &dns.update {
        None => None,
        Some(update) => {
            let update = update.get_ref();
            let server = update.server.get_ref().trim().parse().map_err(|_| {
                invalid(
                    update.server.span(),
                    format!(
                        "key 'update.server': '{}' is not an address and port like 192.0.2.53:53",
                        update.server.get_ref()
                    ),
                )
            })?;
            Some(DnsUpdate {
                server,
                key_file: update.key_file.as_ref().map(|f| directory.join(f.trim())),
            })
        }
    };
    Ok(DnsSettings {
        listen,
        ttl,
        zones,
        update,
        test_listen,
        health_interval_seconds: dns.health_interval_seconds.as_ref().map_or(Ok(10), |v| {
            within(v, 1..=3600, "health_interval_seconds", "seconds", invalid)
        })?,
        health_failures: dns.health_failures.as_ref().map_or(Ok(3), |v| {
            within(v, 1..=100, "health_failures", "a count", invalid)
        })?,
    })
}

/// A number that must lie in `range`; else an error naming `key` and the range of `what`.
pub(crate) fn within<T: PartialOrd + Copy + std::fmt::Display>(
    value: &Spanned<T>,
    range: std::ops::RangeInclusive<T>,
    key: &str,
    what: &str,
    invalid: Invalid,
) -> Result<T, ConfigError> {
    if range.contains(value.get_ref()) {
        Ok(*value.get_ref())
    } else {
        Err(invalid(
            value.span(),
            format!(
                "key '{key}': give {what} between {} and {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// A region's `network` or `test_network`: a qemu `-nic` value.
pub(crate) fn network(
    entry: Option<&Spanned<String>>,
    key: &str,
    default: &str,
    invalid: Invalid,
) -> Result<String, ConfigError> {
    let Some(text) = entry else {
        return Ok(default.to_string());
    };
    let value = text.get_ref().trim();
    let backend = value.split(',').next().unwrap_or_default();
    if ![
        "none", "user", "bridge", "tap", "socket", "stream", "dgram", "vde", "l2tpv3",
    ]
    .contains(&backend)
        || value.contains(char::is_whitespace)
    {
        return Err(invalid(
            text.span(),
            format!(
                "key '{key}': '{value}' is not a qemu -nic value like \"user\", \"bridge,br=br0\" or \"none\""
            ),
        ));
    }
    Ok(value.to_string())
}

pub(crate) fn endpoint(
    entry: &Spanned<EndpointEntry>,
    region: &str,
    invalid: Invalid,
) -> Result<Endpoint, ConfigError> {
    let endpoint = entry.get_ref();
    let name = endpoint.name.get_ref().trim().to_string();
    if !dns_name(&name) {
        return Err(invalid(
            endpoint.name.span(),
            format!("key 'endpoint.name' of region '{region}': '{name}' is not a DNS name"),
        ));
    }
    Ok(Endpoint {
        name,
        primary: address(&endpoint.primary, "endpoint.primary", invalid)?,
        copy: endpoint
            .copy
            .as_ref()
            .map(|copy| address(copy, "endpoint.copy", invalid))
            .transpose()?,
    })
}

pub(crate) fn vms(
    entries: &[Spanned<VmEntry>],
    regions: &[Region],
    dns: Option<&DnsSettings>,
    invalid: Invalid,
) -> Result<Vec<Vm>, ConfigError> {
    let mut vms: Vec<Vm> = Vec::new();
    let known = |name: &str| regions.iter().any(|r| r.name == name);
    let region_names = || {
        regions
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for entry in entries {
        let vm = entry.get_ref();
        let name = plain_name(&vm.name, "VM", invalid)?;
        if vms.iter().any(|v| v.name == name) {
            return Err(invalid(
                vm.name.span(),
                format!("key 'name': VM '{name}' is defined twice"),
            ));
        }
        let region = vm.region.get_ref().trim().to_string();
        if !known(&region) {
            return Err(invalid(
                vm.region.span(),
                format!(
                    "key 'region': there is no region '{region}' (there are: {})",
                    region_names()
                ),
            ));
        }
        if *vm.vcpus.get_ref() == 0 {
            return Err(invalid(
                vm.vcpus.span(),
                format!("key 'vcpus' of VM '{name}': at least 1"),
            ));
        }
        if *vm.memory_mib.get_ref() < 16 {
            return Err(invalid(
                vm.memory_mib.span(),
                format!("key 'memory_mib' of VM '{name}': at least 16"),
            ));
        }
        if vm.disks.get_ref().is_empty() || vm.disks.get_ref().iter().any(|d| d.trim().is_empty()) {
            return Err(invalid(
                vm.disks.span(),
                format!("key 'disks' of VM '{name}': list its disk images"),
            ));
        }
        let mut addresses = BTreeMap::new();
        for (key, text) in &vm.addresses {
            if !known(key) {
                return Err(invalid(
                    text.span(),
                    format!(
                        "key 'addresses.{key}' of VM '{name}': there is no region '{key}' (there are: {})",
                        region_names()
                    ),
                ));
            }
            addresses.insert(
                key.clone(),
                address(text, &format!("addresses.{key}"), invalid)?,
            );
        }
        let mut names = Vec::new();
        for text in &vm.dns {
            let record = text.get_ref().trim().trim_end_matches('.').to_string();
            if !dns_name(&record) {
                return Err(invalid(
                    text.span(),
                    format!("key 'dns' of VM '{name}': '{record}' is not a DNS name"),
                ));
            }
            if let Some(dns) = dns
                && !dns.covers(&record)
            {
                return Err(invalid(
                    text.span(),
                    format!(
                        "key 'dns' of VM '{name}': '{record}' is in none of the DNS zones ({})",
                        dns.zones.join(", ")
                    ),
                ));
            }
            names.push(record);
        }
        if !names.is_empty() && !addresses.contains_key(&region) {
            return Err(invalid(
                entry.span(),
                format!(
                    "VM '{name}' has DNS names but no address in its region: add addresses.{region}"
                ),
            ));
        }
        let health = vm
            .health
            .as_ref()
            .map(|text| health_check(text, &name, invalid))
            .transpose()?;
        vms.push(Vm {
            name,
            region,
            vcpus: *vm.vcpus.get_ref(),
            memory_mib: *vm.memory_mib.get_ref(),
            disks: vm
                .disks
                .get_ref()
                .iter()
                .map(|d| PathBuf::from(d.trim()))
                .collect(),
            dns: names,
            addresses,
            kernel: vm.kernel.as_ref().map(|k| PathBuf::from(k.trim())),
            initrd: vm.initrd.as_ref().map(|i| PathBuf::from(i.trim())),
            append: vm.append.clone(),
            health,
        });
    }
    Ok(vms)
}

pub(crate) fn plans(
    entries: &[Spanned<PlanEntry>],
    vms: &[Vm],
    invalid: Invalid,
) -> Result<Vec<Plan>, ConfigError> {
    let mut plans: Vec<Plan> = Vec::new();
    for entry in entries {
        let plan = entry.get_ref();
        let name = plain_name(&plan.name, "plan", invalid)?;
        if plans.iter().any(|p| p.name == name) {
            return Err(invalid(
                plan.name.span(),
                format!("key 'name': plan '{name}' is defined twice"),
            ));
        }
        let groups = plan.groups.get_ref();
        if groups.is_empty() || groups.iter().any(Vec::is_empty) {
            return Err(invalid(
                plan.groups.span(),
                format!(
                    "key 'groups' of plan '{name}': give groups of VMs, like [[\"db1\"], [\"web1\"]]"
                ),
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for vm in groups.iter().flatten() {
            if !vms.iter().any(|v| &v.name == vm) {
                return Err(invalid(
                    plan.groups.span(),
                    format!("key 'groups' of plan '{name}': there is no VM '{vm}'"),
                ));
            }
            if seen.contains(&vm.as_str()) {
                return Err(invalid(
                    plan.groups.span(),
                    format!("key 'groups' of plan '{name}': VM '{vm}' appears twice"),
                ));
            }
            seen.push(vm);
        }
        let mut actions = Vec::new();
        for action in &plan.action {
            let entry = action.get_ref();
            let bad = |message: String| {
                invalid(
                    action.span(),
                    format!("[[plan.action]] of plan '{name}': {message}"),
                )
            };
            let position = match (entry.before, entry.after) {
                (Some(n), None) => ActionPosition::Before(n),
                (None, Some(n)) => ActionPosition::After(n),
                _ => {
                    return Err(bad(
                        "give exactly one of 'before' or 'after' (a group number, from 1)"
                            .to_string(),
                    ));
                }
            };
            let (ActionPosition::Before(n) | ActionPosition::After(n)) = position;
            if n == 0 || n > groups.len() {
                return Err(bad(format!(
                    "group {n} does not exist (the plan has groups 1 to {})",
                    groups.len()
                )));
            }
            let what = match (&entry.script, &entry.manual) {
                (Some(command), None) if !command.trim().is_empty() => ActionKind::Script {
                    command: command.trim().to_string(),
                    timeout_seconds: entry.timeout_seconds.max(1),
                },
                (None, Some(message)) if !message.trim().is_empty() => ActionKind::Manual {
                    message: message.trim().to_string(),
                },
                _ => return Err(bad("give exactly one of 'script' (a command) or 'manual' (what the operator must do)".to_string())),
            };
            actions.push(PlanAction { position, what });
        }
        plans.push(Plan {
            name,
            groups: groups.clone(),
            max_point_age_seconds: plan.max_point_age_seconds.as_ref().map(|s| *s.get_ref()),
            actions,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::parse;

    const FILE: &str = r#"
[dns]
listen = "127.0.0.1:5353"
ttl = 20
zones = ["shop.example"]

[[region]]
name = "west"
repository = "/srv/west"
pair = "east"
redundancy = "geo"
endpoint = { name = "repo.west.shop.example", primary = "10.0.0.10", copy = "10.1.0.10" }

[[region]]
name = "east"
repository = "/srv/east"

[[vm]]
name = "db1"
region = "west"
disks = ["/var/lib/vms/db1.qcow2"]
dns = ["db1.shop.example"]
addresses = { west = "10.0.1.4", east = "10.1.1.4" }

[[vm]]
name = "web1"
region = "west"
vcpus = 2
memory_mib = 1024
disks = ["/var/lib/vms/web1.qcow2"]
dns = ["web1.shop.example", "www.shop.example"]
addresses = { west = "10.0.1.5", east = "fd00::1:5" }

[[plan]]
name = "shop"
groups = [["db1"], ["web1"]]
"#;

    fn parsed(text: &str) -> Result<crate::Config, crate::ConfigError> {
        parse(Path::new("/etc/lifeboat/lifeboat.toml"), text)
    }

    #[test]
    fn vms_plans_and_dns_are_read() {
        let config = parsed(FILE).unwrap();
        let dns = config.dns.as_ref().unwrap();
        assert_eq!(dns.ttl, 20);
        assert!(dns.covers("WWW.shop.example.") && !dns.covers("shop.example.org"));
        assert_eq!(config.vms.len(), 2);
        assert_eq!(config.vms[0].vcpus, 1);
        assert_eq!(config.vms[0].memory_mib, 512);
        assert_eq!(config.vms[1].addresses["east"].to_string(), "fd00::1:5");
        assert_eq!(config.plans[0].groups, vec![vec!["db1"], vec!["web1"]]);
        let endpoint = config.region("west").unwrap().endpoint.clone().unwrap();
        assert_eq!(endpoint.copy.unwrap().to_string(), "10.1.0.10");
    }

    #[test]
    fn mistakes_name_the_line_and_key() {
        for (from, to, expected) in [
            (
                "region = \"west\"\nvcpus",
                "region = \"north\"\nvcpus",
                "line 27: key 'region': there is no region 'north'",
            ),
            (
                "\"www.shop.example\"",
                "\"www.elsewhere.example\"",
                "line 31: key 'dns' of VM 'web1': 'www.elsewhere.example' is in none of the DNS zones",
            ),
            (
                "east = \"fd00::1:5\"",
                "east = \"not-an-ip\"",
                "line 32: key 'addresses.east': 'not-an-ip' is not an IP address",
            ),
            (
                "[[\"db1\"], [\"web1\"]]",
                "[[\"db1\"], [\"web2\"]]",
                "line 36: key 'groups' of plan 'shop': there is no VM 'web2'",
            ),
            (
                "[[\"db1\"], [\"web1\"]]",
                "[[\"db1\", \"web1\"], [\"web1\"]]",
                "VM 'web1' appears twice",
            ),
            ("ttl = 20", "ttl = 0", "line 4: key 'ttl'"),
            (
                "listen = \"127.0.0.1:5353\"",
                "listen = \"localhost\"",
                "line 3: key 'listen'",
            ),
            (
                "primary = \"10.0.0.10\"",
                "primary = \"ten\"",
                "line 12: key 'endpoint.primary'",
            ),
        ] {
            let text = FILE.replace(from, to);
            assert_ne!(text, FILE, "{from}");
            let error = parsed(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}\nexpected: {expected}");
        }
    }
}
