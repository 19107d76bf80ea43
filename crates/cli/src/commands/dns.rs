//! `lifeboat dns serve` and `lifeboat dns records`: the built-in authoritative DNS server.
//!
//! Which address each name has is decided by [`records`] from the configuration and the
//! state file: a VM's names point at its address in the region it runs in, a region's
//! repository endpoint at its primary or, after a storage failover, its copy. The server
//! reads the state again every second and replaces its zones when an answer changes, so a
//! failover moves the names within about a second plus the records' TTL.
//!
//! With `[dns] test_listen`, a second server answers the test view: the same names, except
//! that VMs running as test copies answer with their address in the test region. Test
//! clients ask that server; production never sees a test failover.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use lifeboat_config::Config;
use lifeboat_dns::health::{Check, Prober, choose};
use lifeboat_dns::update::{TsigKey, replace_addresses};
use lifeboat_dns::{DnsServer, ZoneSet};
use lifeboat_geo::{Side, StateFile};
use serde::Serialize;

use crate::cli::{DnsCommand, GlobalOptions};
use crate::output::{print_json, print_json_line};
use crate::placement::Placements;
use crate::repository::required_config;

/// One name and the address it answers with now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsRecord {
    pub name: String,
    pub address: IpAddr,
    /// What the name stands for: `vm:NAME` or `repository:REGION`.
    pub owner: String,
}

/// Whether an address passes a VM's health check (`tcp:PORT`, `http:PORT/PATH`).
pub type Healthy<'a> = &'a dyn Fn(IpAddr, &str) -> bool;

/// Every name and its address as things stand, in the production view or (`test`) the
/// test view. A VM with a health check answers with the first healthy address in priority
/// order: the region it runs in, then its other regions in the file's order. No I/O.
pub fn records(
    config: &Config,
    state: &StateFile,
    placements: &Placements,
    test: bool,
    healthy: Healthy,
) -> Vec<DnsRecord> {
    let mut records = Vec::new();
    for vm in &config.vms {
        // A test copy in the test view; else where a failover placed it, else its own
        // region.
        let region = match placements.tests.get(&vm.name) {
            Some(copy) if test => copy.region.as_str(),
            _ => placements.region_of(&vm.name, &vm.region),
        };
        let address = match &vm.health {
            None => vm.addresses.get(region).copied(),
            Some(check) => {
                let priority: Vec<IpAddr> = vm
                    .addresses
                    .get(region)
                    .into_iter()
                    .chain(
                        config
                            .regions
                            .iter()
                            .filter(|r| r.name != region)
                            .filter_map(|r| vm.addresses.get(&r.name)),
                    )
                    .copied()
                    .collect();
                choose(&priority, |address| healthy(address, check))
            }
        };
        if let Some(address) = address {
            for name in &vm.dns {
                records.push(DnsRecord {
                    name: name.clone(),
                    address,
                    owner: format!("vm:{}", vm.name),
                });
            }
        }
    }
    for region in &config.regions {
        let Some(endpoint) = &region.endpoint else {
            continue;
        };
        let address = match state.region(&region.name).active {
            Side::Primary => Some(endpoint.primary),
            // Without a copy address the name has nothing right to point at.
            Side::Copy => endpoint.copy,
        };
        if let Some(address) = address {
            records.push(DnsRecord {
                name: endpoint.name.clone(),
                address,
                owner: format!("repository:{}", region.name),
            });
        }
    }
    records
}

/// [`records`] as the state files say now, with the prober's view of health (every
/// address healthy without one).
fn current_records(
    config: &Config,
    test: bool,
    prober: Option<&Prober>,
) -> anyhow::Result<Vec<DnsRecord>> {
    let state = StateFile::load(&config.state_directory)?;
    let placements = Placements::load(&config.state_directory)?;
    let healthy = |address: IpAddr, check: &str| match (prober, Check::parse(check)) {
        (Some(prober), Some(check)) => prober.is_healthy(address, &check),
        _ => true,
    };
    Ok(records(config, &state, &placements, test, &healthy))
}

/// Probes every address of every VM with a health check.
fn start_prober(config: &Config, dns: &lifeboat_config::DnsSettings) -> Option<Prober> {
    let targets: Vec<(IpAddr, Check)> = config
        .vms
        .iter()
        .filter_map(|vm| Some((vm, Check::parse(vm.health.as_deref()?)?)))
        .flat_map(|(vm, check)| vm.addresses.values().map(move |&a| (a, check.clone())))
        .collect();
    (!targets.is_empty()).then(|| {
        Prober::start(
            targets,
            Duration::from_secs(dns.health_interval_seconds),
            dns.health_failures,
        )
    })
}

fn zone_set(config: &Config, records: &[DnsRecord], serial: u32) -> anyhow::Result<ZoneSet> {
    let dns = config.dns.as_ref().context(
        "the configuration has no [dns] section: add one with the zones to serve (see docs/configuration.md)",
    )?;
    let pairs: Vec<(String, IpAddr)> = records
        .iter()
        .map(|r| (r.name.clone(), r.address))
        .collect();
    Ok(ZoneSet::new(&dns.zones, &pairs, dns.ttl, serial)?)
}

pub fn run(global: &GlobalOptions, command: &DnsCommand) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    match command {
        DnsCommand::Records(_) => {
            let records = current_records(&config, false, None)?;
            if global.json {
                print_json(&records)?;
            } else {
                for record in &records {
                    say!("{}\t{}\t{}", record.name, record.address, record.owner);
                }
            }
            Ok(0)
        }
        DnsCommand::Serve(arguments) => serve(global, &config, arguments.listen),
        DnsCommand::Push(arguments) => push(global, &config, arguments.follow),
    }
}

/// Pushes `records` to the [dns.update] server: each name's addresses replaced at once.
fn push_records(config: &Config, records: &[DnsRecord]) -> anyhow::Result<()> {
    let dns = config
        .dns
        .as_ref()
        .context("the configuration has no [dns] section: add one with the zones (see docs/configuration.md)")?;
    let update = dns.update.as_ref().context(
        "the [dns] section has no 'update' table: add update = { server = \"ADDRESS:53\", key_file = \"FILE\" }",
    )?;
    let key = match &update.key_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the TSIG key file {}", file.display()))?;
            Some(TsigKey::parse(&text).with_context(|| file.display().to_string())?)
        }
        None => None,
    };
    let mut names: std::collections::BTreeMap<&str, Vec<IpAddr>> = Default::default();
    for record in records {
        names.entry(&record.name).or_default().push(record.address);
    }
    for (name, addresses) in names {
        let zone = dns
            .zone_of(name)
            .expect("the configuration checked that every name is in a zone");
        replace_addresses(update.server, zone, name, &addresses, dns.ttl, key.as_ref())?;
    }
    Ok(())
}

fn push(global: &GlobalOptions, config: &Config, follow: bool) -> anyhow::Result<u8> {
    let mut pushed: Option<Vec<DnsRecord>> = None;
    loop {
        let next = current_records(config, false, None)?;
        if pushed.as_ref() != Some(&next) {
            match push_records(config, &next) {
                Ok(()) => {
                    if global.json {
                        print_json_line(&serde_json::json!({ "pushed": next }))?;
                    } else {
                        tell!("pushed {} names", next.len());
                    }
                    pushed = Some(next);
                }
                Err(error) if follow => tell!("cannot push the names: {error:#}; trying again"),
                Err(error) => return Err(error),
            }
        }
        if !follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One view the server answers: its records now and their serial.
struct View {
    server: DnsServer,
    test: bool,
    current: Vec<DnsRecord>,
    serial: u32,
}

impl View {
    fn start(
        config: &Config,
        address: std::net::SocketAddr,
        test: bool,
        prober: Option<&Prober>,
    ) -> anyhow::Result<View> {
        let current = current_records(config, test, prober)?;
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let server = DnsServer::start(address, zone_set(config, &current, serial)?)
            .with_context(|| format!("cannot answer DNS on {address}"))?;
        Ok(View {
            server,
            test,
            current,
            serial,
        })
    }

    /// Replaces the zones when the state files say something new.
    fn refresh(&mut self, config: &Config, prober: Option<&Prober>) {
        let next = match current_records(config, self.test, prober) {
            Ok(next) => next,
            Err(error) => {
                tell!("cannot read the state ({error:#}); answering as before");
                return;
            }
        };
        if next == self.current {
            return;
        }
        self.serial = self.serial.wrapping_add(1);
        match zone_set(config, &next, self.serial) {
            Ok(zones) => {
                self.server.replace(zones);
                for record in next.iter().filter(|r| !self.current.contains(r)) {
                    tell!(
                        "{}{} now answers {} ({})",
                        if self.test { "test view: " } else { "" },
                        record.name,
                        record.address,
                        record.owner
                    );
                }
                self.current = next;
            }
            Err(error) => tell!("cannot update the zones ({error:#}); answering as before"),
        }
    }
}

fn serve(
    global: &GlobalOptions,
    config: &Config,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<u8> {
    let dns = config.dns.as_ref().context(
        "the configuration has no [dns] section: add one with the zones to serve (see docs/configuration.md)",
    )?;
    let prober = start_prober(config, dns);
    let mut views = vec![View::start(
        config,
        listen.unwrap_or(dns.listen),
        false,
        prober.as_ref(),
    )?];
    if let Some(address) = dns.test_listen {
        views.push(View::start(config, address, true, prober.as_ref())?);
    }
    if global.json {
        print_json_line(&serde_json::json!({
            "listen": views[0].server.address().to_string(),
            "test_listen": views.get(1).map(|v| v.server.address().to_string()),
            "records": views[0].current,
        }))?;
    } else {
        for view in &views {
            tell!(
                "answering for {} on {} (UDP and TCP){}, {} names",
                dns.zones.join(", "),
                view.server.address(),
                if view.test { ", test view" } else { "" },
                view.current.len()
            );
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for view in &mut views {
            view.refresh(config, prober.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_active_side_of_a_region() {
        let config = lifeboat_config::parse(
            std::path::Path::new("lifeboat.toml"),
            r#"
[dns]
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
endpoint = { name = "repo.east.shop.example", primary = "10.1.0.20" }

[[vm]]
name = "web1"
region = "west"
disks = ["/vms/web1.qcow2"]
dns = ["web1.shop.example"]
addresses = { west = "10.0.1.5", east = "10.1.1.5" }
"#,
        )
        .unwrap();
        let mut state = StateFile::default();
        let before = records(&config, &state, &Placements::default(), false, &|_, _| true);
        assert_eq!(before.len(), 3);
        assert_eq!(before[0].address.to_string(), "10.0.1.5");
        assert_eq!(before[1].address.to_string(), "10.0.0.10");
        state.regions.entry("west".into()).or_default().active = Side::Copy;
        state.regions.entry("east".into()).or_default().active = Side::Copy;
        let after = records(&config, &state, &Placements::default(), false, &|_, _| true);
        assert_eq!(after[1].address.to_string(), "10.1.0.10");
        assert!(
            !after.iter().any(|r| r.owner == "repository:east"),
            "east has no copy address: its name is withdrawn rather than left wrong"
        );
        assert!(zone_set(&config, &after, 2).is_ok());
    }

    #[test]
    fn a_vm_with_a_health_check_answers_with_its_first_healthy_address() {
        let config = lifeboat_config::parse(
            std::path::Path::new("lifeboat.toml"),
            r#"
[dns]
zones = ["shop.example"]

[[region]]
name = "west"
repository = "/srv/west"

[[region]]
name = "north"
repository = "/srv/north"

[[region]]
name = "east"
repository = "/srv/east"

[[vm]]
name = "web1"
region = "east"
disks = ["/vms/web1.qcow2"]
dns = ["web1.shop.example"]
addresses = { west = "10.0.1.5", north = "10.2.1.5", east = "10.1.1.5" }
health = "tcp:443"
"#,
        )
        .unwrap();
        let answer = |down: &[&str]| {
            let down: Vec<IpAddr> = down.iter().map(|a| a.parse().unwrap()).collect();
            let healthy = |address: IpAddr, check: &str| {
                assert_eq!(check, "tcp:443");
                !down.contains(&address)
            };
            let records = records(
                &config,
                &StateFile::default(),
                &Placements::default(),
                false,
                &healthy,
            );
            records[0].address.to_string()
        };
        assert_eq!(answer(&[]), "10.1.1.5", "where it runs first");
        assert_eq!(
            answer(&["10.1.1.5"]),
            "10.0.1.5",
            "then the regions in file order"
        );
        assert_eq!(answer(&["10.1.1.5", "10.0.1.5"]), "10.2.1.5");
        assert_eq!(
            answer(&["10.1.1.5", "10.0.1.5", "10.2.1.5"]),
            "10.1.1.5",
            "none: the first"
        );
    }
}
