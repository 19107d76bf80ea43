//! `lifeboat failover --vm NAME --to REGION`: start a VM in another region from a recovery
//! point of that region's repository, and move its names there.
//!
//! The point (latest, an id, or the VM's point at --at TIME) is restored in full into the
//! state directory (`vms/NAME/REGION/`), the VM is started there with qemu (detached: it
//! runs on after this command) and recorded as placed in REGION with a new epoch, which
//! `lifeboat dns serve` and `dns push` follow.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lifeboat_backup::{RestoreOptions, restore};
use lifeboat_disk::Format;
use lifeboat_geo::status::settings_for;
use lifeboat_geo::{StateFile, locations};
use lifeboat_hypervisor::{DirectBoot, DiskSpec, Vm, VmSpec, create_overlay, probe, stop_detached};
use serde_json::json;

use crate::cli::{FailoverArguments, GlobalOptions, VmStopArguments};
use crate::output::print_json;
use crate::placement::{Placement, Placements};
use crate::progress::Bar;
use crate::repository::{base_settings, open_location, required_config};

/// Where a VM's disks and runtime files live in a region: `<state>/vms/NAME/REGION`.
fn vm_home(config: &lifeboat_config::Config, vm: &str, region: &str) -> std::path::PathBuf {
    config.state_directory.join("vms").join(vm).join(region)
}

/// The `[[vm]]` called `name`.
fn declared_vm<'a>(
    config: &'a lifeboat_config::Config,
    name: &str,
) -> anyhow::Result<&'a lifeboat_config::Vm> {
    config
        .vms
        .iter()
        .find(|vm| vm.name == name)
        .with_context(|| format!("{} declares no VM '{name}'", config.path.display()))
}

pub fn run(global: &GlobalOptions, arguments: &FailoverArguments) -> anyhow::Result<u8> {
    let started = Instant::now();
    let config = required_config(global)?;
    let vm = declared_vm(&config, &arguments.vm)?;
    let region = config.region(&arguments.to)?;
    // Pre-flight: the VM has somewhere to live in that region.
    if !vm.dns.is_empty() && !vm.addresses.contains_key(&region.name) {
        bail!(
            "VM '{}' has no address in region '{}': add addresses.{} to its [[vm]] entry",
            vm.name,
            region.name,
            region.name
        );
    }
    let state = StateFile::load(&config.state_directory)?;
    let places = locations(&config, region, &state.region(&region.name));
    let repository = open_location(
        global,
        &places.active,
        &settings_for(&base_settings(), &places.active_settings),
    )?;
    let manifest = super::named_point(
        &repository,
        Some(arguments.point.as_deref().unwrap_or("latest")),
        Some(&vm.name),
        arguments.at,
    )?;
    let home = vm_home(&config, &vm.name, &region.name);
    let runtime = home.join("run");
    // A VM already running from an earlier failover here is stopped first.
    stop_detached(&runtime, Duration::from_secs(5))?;
    let disks_directory = home.join("disks");
    if disks_directory.exists() {
        std::fs::remove_dir_all(&disks_directory)
            .with_context(|| format!("cannot clear {}", disks_directory.display()))?;
    }
    // Instantly: overlays on the point's export, served by a `lifeboat export` beside the
    // VM until hydration is done. Else: the point restored in full first.
    let mut export = None;
    let disks: Vec<DiskSpec> = if arguments.instant {
        std::fs::create_dir_all(&disks_directory)
            .with_context(|| format!("cannot create {}", disks_directory.display()))?;
        let socket = home.join("export.sock");
        export = Some(start_export(
            global,
            &config,
            &region.name,
            &manifest.point,
            &socket,
        )?);
        let mut disks = Vec::new();
        for disk in &manifest.disks {
            let overlay = disks_directory.join(format!("{}.overlay.qcow2", disk.name));
            create_overlay(&overlay, &socket, &disk.name, disk.virtual_size_bytes)?;
            disks.push(DiskSpec {
                path: overlay,
                format: "qcow2".to_string(),
            });
        }
        disks
    } else {
        restore(
            &repository,
            &manifest,
            &RestoreOptions {
                target_directory: disks_directory,
                format: None,
                threads: super::threads(),
            },
            &Bar::new(global.json),
        )?
        .disks
        .iter()
        .map(|disk| DiskSpec {
            path: disk.path.clone().into(),
            format: Format::from_name(&disk.format).qemu_name().to_string(),
        })
        .collect()
    };
    let spec = VmSpec {
        name: vm.name.clone(),
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disks,
        runtime_directory: runtime.clone(),
        accelerator: probe(),
        direct_boot: vm.kernel.as_ref().map(|kernel| DirectBoot {
            kernel: kernel.clone(),
            initrd: vm.initrd.clone(),
            append: vm.append.clone().unwrap_or_default(),
        }),
    };
    let mut running = Vm::start(&spec)?;
    let status = running.status()?;
    let running_after = started.elapsed().as_secs_f64();
    let mut placements = Placements::load(&config.state_directory)?;
    let epoch = placements.vms.get(&vm.name).map_or(0, |p| p.epoch) + 1;
    placements.vms.insert(
        vm.name.clone(),
        Placement {
            region: region.name.clone(),
            epoch,
            point: Some(manifest.point.clone()),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        },
    );
    placements.save(&config.state_directory)?;
    if export.is_some() && !global.json {
        println!(
            "VM '{}' {status} in region '{}' from point {} after {running_after:.1} s; copying its disks in the background…",
            vm.name,
            region.name,
            &manifest.point[..12]
        );
    }
    // The VM runs meanwhile; its disks stop needing the export once hydrated.
    if let Some(mut export) = export {
        for index in 0..spec.disks.len() {
            running.hydrate(index, Duration::from_secs(24 * 3600))?;
        }
        let _ = export.kill();
        let _ = export.wait();
    }
    let pid = running.detach();
    let report = json!({
        "vm": vm.name,
        "region": region.name,
        "epoch": epoch,
        "point": manifest.point,
        "point_time": manifest.time,
        "status": status,
        "pid": pid,
        "accelerator": spec.accelerator.name(),
        "serial_log": runtime.join("serial.log").display().to_string(),
        "instant": arguments.instant,
        "running_after_seconds": running_after,
        "seconds": started.elapsed().as_secs_f64(),
    });
    if global.json {
        print_json(&report)?;
    } else {
        println!(
            "VM '{}' {} in region '{}' (epoch {epoch}) from point {} of {}, after {:.1} s; console: {}",
            vm.name,
            status,
            region.name,
            &manifest.point[..12],
            manifest.time,
            started.elapsed().as_secs_f64(),
            runtime.join("serial.log").display()
        );
    }
    Ok(0)
}

/// Starts `lifeboat export POINT` of `region`'s repository on Unix socket `socket`, as a
/// separate process that outlives a failure of this one while the VM still reads from it;
/// returns once it serves.
fn start_export(
    global: &GlobalOptions,
    config: &lifeboat_config::Config,
    region: &str,
    point: &str,
    socket: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    use std::io::BufRead;
    let _ = std::fs::remove_file(socket);
    let mut command = std::process::Command::new(
        std::env::current_exe().context("cannot find the lifeboat executable")?,
    );
    command
        .arg("--config")
        .arg(&config.path)
        .args(["--region", region, "--json"]);
    if let Some(file) = &global.password_file {
        command.arg("--password-file").arg(file);
    }
    let mut child = command
        .args(["export", point, "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("cannot start lifeboat export for the instant disks")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("lifeboat export did not start")?;
    if line.trim().is_empty() {
        let _ = child.wait();
        bail!("lifeboat export of point {point} did not start (see its error above)");
    }
    Ok(child)
}

/// `lifeboat vm stop --vm NAME`: stops the VM where its placement says it runs.
pub fn stop(global: &GlobalOptions, arguments: &VmStopArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let vm = declared_vm(&config, &arguments.vm)?;
    let placements = Placements::load(&config.state_directory)?;
    let region = placements.region_of(&vm.name, &vm.region);
    let runtime = vm_home(&config, &vm.name, region).join("run");
    let clean = stop_detached(&runtime, Duration::from_secs(arguments.grace))?;
    if global.json {
        print_json(&json!({ "vm": vm.name, "region": region, "clean": clean }))?;
    } else {
        println!(
            "VM '{}' in region '{region}' stopped{}",
            vm.name,
            if clean {
                ""
            } else {
                " (forced: the guest did not power off in time)"
            }
        );
    }
    Ok(0)
}
