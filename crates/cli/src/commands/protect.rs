//! `lifeboat protect`: serve a consistency group's disks over NBD and ship every write.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lifeboat_disk::inspect;
use lifeboat_nbd::Server;
use lifeboat_replication::capture::CapturedDisk;
use lifeboat_replication::cut::{DiskLayout, VmLayout};
use lifeboat_replication::dirty::DirtyMap;
use lifeboat_replication::fence::Fences;
use lifeboat_replication::image::DiskImage;
use lifeboat_replication::journal::{DiskId, Journal};
use lifeboat_replication::quiesce::{Hook, Quiesce};
use lifeboat_replication::ship::{Sender, SenderOptions, ShipReport};

use crate::cli::{GlobalOptions, ProtectArguments};
use crate::output::{bytes, print_json_line};
use crate::repository::{Access, open};

/// `NAME=DISK[,DISK...]`.
fn parse_vm(text: &str) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let (name, disks) = text
        .split_once('=')
        .with_context(|| format!("--vm '{text}' is not NAME=DISK[,DISK...]"))?;
    let disks: Vec<PathBuf> = disks
        .split(',')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if name.is_empty() || disks.is_empty() {
        bail!("--vm '{text}' needs a name and at least one disk: NAME=DISK[,DISK...]");
    }
    Ok((name.to_string(), disks))
}

/// Where a disk's dirty map lives: `--state DIR/VM/DISK.dirty`, or beside the image.
fn dirty_map_path(arguments: &ProtectArguments, image: &Path, vm: &str, disk: &str) -> PathBuf {
    match &arguments.state {
        Some(directory) => directory
            .join(lifeboat_replication::file_name_for(vm))
            .join(format!("{disk}.dirty")),
        None => {
            let mut name = image.as_os_str().to_owned();
            name.push(".lifeboat-dirty");
            PathBuf::from(name)
        }
    }
}

/// The epoch a VM runs under on this side, kept beside its first disk's dirty map so a
/// restarted capture still knows a failover that happened while it was down: read from
/// there, else, on a first start, 0 — a VM that failed over before is refused, as this
/// side cannot tell it runs here — or with `--accept-epoch` the newest in the recovery
/// repository; then kept.
fn base_epoch(
    arguments: &ProtectArguments,
    repository: &lifeboat_repository::Repository,
    vm: &str,
    dirty_map: &Path,
) -> anyhow::Result<u64> {
    let mut name = dirty_map.as_os_str().to_owned();
    name.push(".epoch");
    let path = PathBuf::from(name);
    if !arguments.accept_epoch
        && let Ok(text) = std::fs::read_to_string(&path)
    {
        return text.trim().parse().with_context(|| {
            format!(
                "{} does not hold an epoch; remove it and start with --accept-epoch",
                path.display()
            )
        });
    }
    let newest = repository.current_epoch(vm)?;
    let epoch = match newest {
        None => 0,
        Some(record) if arguments.accept_epoch => record.epoch,
        Some(record) => bail!(
            "VM '{vm}' runs in region '{}' since epoch {} (claimed at {} by run {} of {}), \
             and this capture holds no epoch of its own for it ({} is missing: a new state \
             directory?): it would take writes for a VM placed elsewhere. If the VM runs \
             here now (a failback or reprotect brought it here), start with --accept-epoch",
            record.region,
            record.epoch,
            record.time,
            record.run,
            record.actor,
            path.display()
        ),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, epoch.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(epoch)
}

/// Reads the epochs every `interval` on a thread of its own, so shipping that waits on the
/// recovery repository does not delay a fence; with a lease, keeps it by time on another,
/// which no request to the repository (one may retry for a minute) holds up.
fn watch_fences(
    fences: Arc<Fences>,
    repository: lifeboat_repository::Repository,
    group: String,
    interval: Duration,
) -> anyhow::Result<()> {
    if fences.lease().is_some() {
        let fences = Arc::clone(&fences);
        let group = group.clone();
        std::thread::Builder::new()
            .name("fence-lease".to_string())
            .spawn(move || {
                loop {
                    for change in fences.enforce_lease() {
                        tell!("group '{group}': {change}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .context("cannot start the fence lease's thread")?;
    }
    std::thread::Builder::new()
        .name("fence-check".to_string())
        .spawn(move || {
            // The first reading was made before serving: the next one is an interval on.
            loop {
                std::thread::sleep(interval);
                for change in fences.check(&repository) {
                    tell!("group '{group}': {change}");
                }
            }
        })
        .context("cannot start the thread that reads the epochs")?;
    Ok(())
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    Ok(path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?
        .to_string_lossy()
        .into_owned())
}

fn show(global: &GlobalOptions, report: &ShipReport) -> anyhow::Result<()> {
    if global.json {
        return print_json_line(report);
    }
    if report.writes == 0 && report.resync_bytes == 0 && !report.application_consistent {
        return Ok(());
    }
    tell!(
        "group '{}': cut {} at {}: {} writes ({}), {} resynced, {} shipped in {:.2} s{}",
        report.group,
        report.sequence,
        report.time,
        report.writes,
        bytes(report.journal_bytes),
        bytes(report.resync_bytes),
        bytes(report.shipped_bytes),
        report.seconds,
        if report.application_consistent {
            " (application-consistent)".to_string()
        } else if report.consistent {
            String::new()
        } else {
            format!(
                "; resync in progress, {} to go",
                bytes(report.resync_pending_bytes)
            )
        }
    );
    Ok(())
}

pub fn run(global: &GlobalOptions, arguments: &ProtectArguments) -> anyhow::Result<u8> {
    if arguments.socket.is_none() && arguments.listen.is_none() {
        bail!("give --socket PATH or --listen ADDRESS: where the VMs reach their disks");
    }
    let repository = open(global, Access::Write)?;
    let journal_bytes = arguments.journal_mib.saturating_mul(1024 * 1024);
    let journal = Arc::new(Mutex::new(Journal::new(journal_bytes)));
    let mut server = Server::new();
    // Shipped writes give their memory to the next ones: up to what the journal may hold.
    server.keep_payload_memory(usize::try_from(journal_bytes).unwrap_or(usize::MAX));
    let mut layouts = Vec::new();
    let mut images = Vec::new();
    let mut names = Vec::new();
    let mut dirty_maps = Vec::new();
    let mut maps = Vec::new();
    let mut opened = Vec::new();
    let mut parsed = Vec::new();
    let mut epochs = Vec::new();
    for text in &arguments.vms {
        let (name, disks) = parse_vm(text)?;
        if names.contains(&name) {
            bail!("VM '{name}' is given twice");
        }
        names.push(name.clone());
        let first = disks.first().context("a VM needs a disk")?;
        let map = dirty_map_path(arguments, first, &name, &file_name(first)?);
        epochs.push((
            name.clone(),
            base_epoch(arguments, &repository, &name, &map)?,
        ));
        parsed.push((name, disks));
    }
    let digest = lifeboat_replication::digest::read(
        repository.storage().as_ref(),
        repository.crypto(),
        &arguments.group,
    )?;
    let fences = Arc::new(Fences::new(
        epochs,
        Arc::clone(&journal),
        arguments.fence_lease.map(Duration::from_secs),
    ));
    for (vm_number, (name, disks)) in parsed.into_iter().enumerate() {
        let mut layout = VmLayout {
            name: name.clone(),
            disks: Vec::new(),
        };
        for (disk_number, path) in disks.iter().enumerate() {
            let disk_name = file_name(path)?;
            if layout.disks.iter().any(|d| d.name == disk_name) {
                bail!(
                    "two disks of VM '{name}' are named '{disk_name}'; give them distinct file names"
                );
            }
            let info = inspect(path)?;
            // Raw images are written directly; others through a private qemu-nbd, which
            // also holds qemu's write lock on them while they are protected.
            let image: Arc<dyn DiskImage> =
                Arc::from(lifeboat_replication::image::open(path, &info.format)?);
            let id = DiskId {
                vm: vm_number,
                disk: disk_number,
            };
            let map_path = dirty_map_path(arguments, path, &name, &disk_name);
            let binding = format!(
                "{}/{}/{name}/{disk_name}",
                repository.config().repository_id,
                arguments.group
            );
            let (map, dirty) = DirtyMap::open(&map_path, info.virtual_size_bytes, &binding)?;
            let map = Arc::new(map);
            let disk = CapturedDisk::new(
                Arc::clone(&image),
                id,
                Arc::clone(&journal),
                Arc::clone(&map),
                fences.of(vm_number),
            );
            // What to send first: after a restart, what the dirty map holds; else the
            // initial sync, every allocated range. Read from the image while writes go on.
            // against the replicas' digest when the receiver published one (the
            // replicas hold an older state already: only differing blocks go).
            let replica = digest.as_ref().and_then(|disks| {
                disks.iter().find(|d| {
                    d.vm == lifeboat_replication::file_name_for(&name) && d.disk == disk_name
                })
            });
            let (ranges, how): (Vec<(u64, u64)>, &str) = match (dirty, replica) {
                (Some(ranges), _) => (ranges, "resyncing what changed,"),
                (None, Some(replica)) => (
                    lifeboat_replication::digest::differing_ranges(
                        repository.crypto(),
                        image.as_ref(),
                        replica,
                    )?,
                    "initial sync of the blocks that differ from the replica's,",
                ),
                (None, None) => (
                    image
                        .data_ranges()?
                        .iter()
                        .map(|range| (range.offset, range.length))
                        .collect(),
                    "initial sync of",
                ),
            };
            let resync: u64 = ranges.iter().map(|(_, length)| length).sum();
            tell!("{name}/{disk_name}: {how} {}", bytes(resync));
            {
                let mut journal = journal.lock().expect("never poisoned");
                for &(offset, length) in &ranges {
                    map.mark(offset, length)?;
                    journal.add_resync(id, offset, length);
                }
            }
            maps.push(map);
            layout.disks.push(DiskLayout {
                name: disk_name.clone(),
                size_bytes: info.virtual_size_bytes,
                format: info.format.name().to_string(),
            });
            server.add_export(format!("{name}/{disk_name}"), Arc::new(disk));
            opened.push(image);
        }
        images.push(std::mem::take(&mut opened));
        layouts.push(layout);
        dirty_maps.push(std::mem::take(&mut maps));
    }
    // No write before the epochs are read: a failover may have happened while this
    // capture was down (until then every VM is fenced).
    for change in fences.check(&repository) {
        tell!("group '{}': {change}", arguments.group);
    }
    let interval = Duration::from_secs_f64(arguments.interval.max(0.05));
    watch_fences(
        Arc::clone(&fences),
        repository.clone(),
        arguments.group.clone(),
        interval,
    )?;
    let sender = Sender::new(
        repository,
        &arguments.group,
        layouts,
        images,
        dirty_maps,
        Arc::clone(&journal),
        SenderOptions {
            interval_seconds: arguments.interval,
            rpo_threshold_seconds: arguments.rpo_threshold,
            coalesce: !arguments.ship_every_write,
            ..SenderOptions::default()
        },
    )?
    .with_fences(Arc::clone(&fences));
    let server = Arc::new(server);
    if let Some(address) = &arguments.listen {
        let listener =
            TcpListener::bind(address).with_context(|| format!("cannot listen on {address}"))?;
        let bound = lifeboat_nbd::server::spawn_tcp(Arc::clone(&server), listener)?;
        tell!(
            "serving {} over NBD at nbd://{bound}",
            server.export_names().join(", ")
        );
    }
    if let Some(path) = &arguments.socket {
        let listener = lifeboat_nbd::server::listen_unix(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        lifeboat_nbd::server::spawn_unix(Arc::clone(&server), listener)?;
        tell!(
            "serving {} over NBD on {}",
            server.export_names().join(", "),
            path.display()
        );
    }
    let hook = arguments.freeze_hook.as_ref().map(|script| Hook {
        script: script.clone(),
        group: arguments.group.clone(),
        timeout: Duration::from_secs(arguments.freeze_timeout.max(1)),
    });
    let every = Duration::from_secs(arguments.app_consistent_every.max(1));
    let mut quiesced: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // Application-consistent on schedule (the first right away); a failed freeze waits
        // for the next turn rather than pausing the applications at every cut.
        let quiesce = hook
            .as_ref()
            .filter(|_| quiesced.is_none_or(|at| at.elapsed() >= every));
        if quiesce.is_some() {
            quiesced = Some(Instant::now());
        }
        match sender.ship_quiesced(quiesce.map(|hook| hook as &dyn Quiesce)) {
            Ok(report) => {
                if let Some(error) = &report.quiesce_error {
                    tell!(
                        "group '{}': no application-consistent point this time: {error}",
                        arguments.group
                    );
                }
                show(global, &report)?
            }
            Err(error) => {
                tell!(
                    "group '{}': shipping failed: {error}; writes go on locally and are shipped when it works again",
                    arguments.group
                );
                let behind = sender.seconds_since_shipped();
                if behind > arguments.rpo_threshold {
                    tell!(
                        "ALERT: group '{}': nothing shipped for {behind:.0} s, above the RPO threshold of {} s",
                        arguments.group,
                        arguments.rpo_threshold
                    );
                }
            }
        }
        server.trim_payload_memory();
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}
