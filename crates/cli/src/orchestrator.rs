//! The steps of recovery plans that touch points, VMs and replication: Lifeboat's
//! [`Executor`] for `lifeboat-orchestration`'s runner.
//!
//! A VM's home in a region is `<state>/vms/NAME/REGION` (`<state>/tests/NAME/REGION` for a
//! test copy): `disks/` (restored disks, or instant overlays — qcow2 files under the
//! disks' own names, so a disk keeps its name through reprotect and failback), `run/` (QMP sockets and
//! serial console), and for an instant start the `lifeboat export` of its point and the
//! `lifeboat vm hydrate` that copies the disks, each a process of its own that outlives
//! the orchestrator (their process ids in `export.pid` and `hydrate.pid`; `hydrated` once
//! the disks stand alone).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lifeboat_backup::{RestoreOptions, restore};
use lifeboat_config::{Config, Plan, Vm as DeclaredVm};
use lifeboat_disk::Format;
use lifeboat_geo::status::settings_for;
use lifeboat_geo::{StateFile, locations};
use lifeboat_hypervisor::{
    DirectBoot, DiskSpec, Vm, VmSpec, create_overlay, is_running_detached, probe, stop_detached,
};
use lifeboat_orchestration::{Action, Executor, Operation, RunRecord, StepState};
use lifeboat_replication::status::{GroupRecords, read_all};
use lifeboat_repository::{Claim, Consistency, EpochRecord, Manifest, Repository};
use serde::{Deserialize, Serialize};

use crate::cli::GlobalOptions;
use crate::placement::{Placement, Placements};
use crate::repository::{base_settings, open_location};

/// What a failover run was asked for, kept in its record so a resumed run does the same.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunOptions {
    /// `latest`, `processed`, `app`, or a point id.
    pub point: String,
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    pub instant: bool,
    /// Seconds a guest gets to power off by itself when Lifeboat stops it.
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
}

fn default_grace() -> u64 {
    60
}

/// How long `--point latest` waits for the recovery region to process what it received.
const PROCESSING_WAIT: Duration = Duration::from_secs(120);
/// How long a planned failover waits for the last writes to arrive.
const FINAL_SYNC_WAIT: Duration = Duration::from_secs(600);
/// How long a failover waits for a live capture on the old side to fence the VM.
const FENCE_WAIT: Duration = Duration::from_secs(60);

pub struct PlanExecutor<'a> {
    pub global: &'a GlobalOptions,
    pub config: &'a Config,
    pub plan: &'a Plan,
    pub options: RunOptions,
}

/// The `[[vm]]` called `name`.
pub fn declared_vm<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a DeclaredVm> {
    config
        .vms
        .iter()
        .find(|vm| vm.name == name)
        .with_context(|| format!("{} declares no VM '{name}'", config.path.display()))
}

/// Where a VM's disks and runtime files live in a region.
pub fn vm_home(config: &Config, vm: &str, region: &str, test: bool) -> PathBuf {
    config
        .state_directory
        .join(if test { "tests" } else { "vms" })
        .join(vm)
        .join(region)
}

impl Executor for PlanExecutor<'_> {
    fn execute(&self, run: &RunRecord, action: &Action) -> Result<String, String> {
        let result = match action {
            Action::Preflight => self.preflight(run).map(|checks| checks.join("; ")),
            Action::StartVm { vm } => self.start_vm(run, vm),
            Action::StopVm { vm } => self.stop_source(run, vm),
            Action::FinalSync { vms } => self.final_sync(run, vms),
            Action::RemoveTestVm { vm } => self.remove_test_copy(vm),
            Action::CommitVm { vm } => self.commit(run, vm),
            Action::HaltVm { vm } => self.halt(run, vm),
            Action::StartCapture { vms } => self.start_capture(run, vms),
            Action::StopCapture { vms } => self.stop_capture(vms),
            Action::Script { .. } | Action::Manual { .. } => {
                Err(anyhow::anyhow!("the runner does this step itself"))
            }
        };
        result.map_err(|error| format!("{error:#}"))
    }

    fn report(&self, run: &RunRecord, index: usize) {
        if crate::progress::lines_wanted() {
            report_steps(run, index);
        }
        if self.global.json {
            return;
        }
        let step = &run.steps[index];
        let state = match step.state {
            StepState::Pending => "pending",
            StepState::Running => "…",
            StepState::Waiting => "WAITING",
            StepState::Done => "done",
            StepState::Failed => "FAILED",
        };
        match &step.detail {
            Some(detail) if !detail.is_empty() => {
                tell!("[{}] {state:>7}  {}: {detail}", step.batch, step.action)
            }
            _ => tell!("[{}] {state:>7}  {}", step.batch, step.action),
        }
    }
}

/// A progress line for `lifeboat serve`: every step of the run and its state, the step
/// that changed as the message.
fn report_steps(run: &RunRecord, index: usize) {
    let done = run
        .steps
        .iter()
        .filter(|s| s.state == StepState::Done)
        .count();
    crate::progress::emit(&lifeboat_control::store::JobProgress {
        done: done as u64,
        total: run.steps.len() as u64,
        unit: "steps".to_string(),
        message: run.steps[index].action.to_string(),
        steps: Some(run.steps.iter().map(Into::into).collect()),
    });
}

impl PlanExecutor<'_> {
    /// The active repository of `region` (its geo copy after a storage failover).
    fn repository(&self, region: &str) -> anyhow::Result<Repository> {
        let region = self.config.region(region)?;
        let state = StateFile::load(&self.config.state_directory)?;
        let places = locations(self.config, region, &state.region(&region.name));
        open_location(
            self.global,
            &places.active,
            &settings_for(&base_settings(), &places.active_settings),
        )
    }

    /// The point `vm` starts from, as the run's options say; `wait` lets `latest` wait
    /// for the recovery region to process what it has received.
    fn choose_point(
        &self,
        repository: &Repository,
        vm: &str,
        wait: bool,
    ) -> anyhow::Result<(Manifest, Option<String>)> {
        if let Some(at) = self.options.at {
            return Ok((lifeboat_backup::resolve_at(repository, vm, at)?, None));
        }
        let mut note = None;
        match self.options.point.as_str() {
            "latest" | "processed" => {
                if self.options.point == "latest" && wait {
                    note = wait_until_processed(repository, vm)?;
                }
                Ok((
                    lifeboat_backup::resolve_point(repository, "latest", Some(vm))?,
                    note,
                ))
            }
            "app" => {
                let points = repository.list_points()?.points;
                let point = points
                    .into_iter()
                    .rev()
                    .find(|p| p.vm == vm && p.consistency == Consistency::App)
                    .with_context(|| {
                        format!(
                            "VM '{vm}' has no app-consistent point in {}",
                            repository.location()
                        )
                    })?;
                Ok((point, None))
            }
            id => Ok((
                lifeboat_backup::resolve_point(repository, id, Some(vm))?,
                None,
            )),
        }
    }

    /// Checks everything the run needs, all of it, and says what failed.
    pub fn preflight(&self, run: &RunRecord) -> anyhow::Result<Vec<String>> {
        if run.operation == Operation::Reprotect {
            return self.preflight_reprotect(run);
        }
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        let region = self.config.region(&run.region)?;
        let test = run.operation == Operation::TestFailover;
        let placements = Placements::load(&self.config.state_directory)?;
        let repository = match self.repository(&region.name) {
            Ok(repository) => Some(repository),
            Err(error) => {
                failed.push(format!(
                    "the repository of region '{}': {error:#}",
                    region.name
                ));
                None
            }
        };
        let vms: Vec<&str> = self
            .plan
            .groups
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let mut memory_mib = 0;
        for name in &vms {
            let vm = declared_vm(self.config, name)?;
            memory_mib += vm.memory_mib;
            if !vm.dns.is_empty() && !vm.addresses.contains_key(&region.name) {
                failed.push(format!(
                    "VM '{}' has no address in region '{}': add addresses.{} to its [[vm]] entry",
                    vm.name, region.name, region.name
                ));
            }
            for file in vm.kernel.iter().chain(&vm.initrd) {
                if std::fs::metadata(file).is_err() {
                    failed.push(format!("VM '{}': cannot read {}", vm.name, file.display()));
                }
            }
            if let Some(placement) = placements.vms.get(*name)
                && placement.committed
                && placement.region == region.name
                && !test
            {
                failed.push(format!(
                    "VM '{name}' runs in '{}' already, committed: nothing to fail over",
                    region.name
                ));
            }
            if run.operation == Operation::PlannedFailover
                && let Some(repository) = &repository
                && replication_group(repository, name)?.is_none()
            {
                failed.push(format!(
                    "VM '{name}' is not replicated to region '{}' (no lifeboat protect ships to it): a planned failover needs replication; use an unplanned failover",
                    region.name
                ));
            }
            let Some(repository) = &repository else {
                continue;
            };
            match self.choose_point(repository, name, false) {
                Ok((point, _)) => {
                    let age =
                        lifeboat_replication::status::age_seconds(&point.time, chrono::Utc::now())
                            .unwrap_or(f64::INFINITY);
                    let unreadable = point
                        .disks
                        .iter()
                        .filter_map(|disk| repository.read_disk_index(&disk.index).err())
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>();
                    if !unreadable.is_empty() {
                        failed.push(format!(
                            "VM '{name}': point {} cannot be read: {}",
                            short(&point.point),
                            unreadable.join("; ")
                        ));
                    } else if let Some(limit) = self.plan.max_point_age_seconds
                        && self.options.at.is_none()
                        && matches!(self.options.point.as_str(), "latest" | "processed")
                        && age > limit as f64
                        && run.operation != Operation::PlannedFailover
                    {
                        failed.push(format!(
                            "VM '{name}': its newest point {} is {age:.0} s old, beyond the plan's max_point_age_seconds of {limit}",
                            short(&point.point)
                        ));
                    } else {
                        passed.push(format!(
                            "{name}: point {} of {} ({age:.0} s old), {} disk(s) readable",
                            short(&point.point),
                            point.time,
                            point.disks.len()
                        ));
                    }
                }
                Err(error) if run.operation == Operation::PlannedFailover => passed.push(format!(
                    "{name}: no point yet ({error:#}); the final sync makes one"
                )),
                Err(error) => failed.push(format!("VM '{name}': {error:#}")),
            }
        }
        let network = if test {
            &region.test_network
        } else {
            &region.network
        };
        if let Some(bridge) = network
            .strip_prefix("bridge,")
            .and_then(|options| options.split(',').find_map(|o| o.strip_prefix("br=")))
            && !Path::new("/sys/class/net").join(bridge).exists()
        {
            failed.push(format!(
                "network of region '{}' is bridge '{bridge}', which this host does not have",
                region.name
            ));
        } else {
            passed.push(format!("network '{network}'"));
        }
        match available_memory_mib() {
            Some(available) if available < memory_mib => failed.push(format!(
                "the plan's VMs need {memory_mib} MiB of memory; this host has {available} MiB available"
            )),
            Some(available) => {
                passed.push(format!("memory: {memory_mib} MiB needed, {available} MiB available"))
            }
            None => {}
        }
        if failed.is_empty() {
            Ok(passed)
        } else {
            bail!("pre-flight checks failed: {}", failed.join("; "))
        }
    }

    fn start_vm(&self, run: &RunRecord, name: &str) -> anyhow::Result<String> {
        if run.operation == Operation::Reprotect {
            return self.start_on_capture(run, name);
        }
        let started = Instant::now();
        let test = run.operation == Operation::TestFailover;
        let vm = declared_vm(self.config, name)?;
        let region = self.config.region(&run.region)?;
        let repository = self.repository(&region.name)?;
        // Fenced first, so that the latest point can hold the last write.
        let (epoch, fence) = if test {
            (0, None)
        } else {
            let epoch = self.claim_epoch(run, name, &repository)?;
            (epoch, self.wait_for_fence(name, &repository)?)
        };
        let (manifest, note) = if run.operation == Operation::PlannedFailover {
            // The final sync made sure the newest point holds the last write.
            (
                lifeboat_backup::resolve_point(&repository, "latest", Some(name))?,
                None,
            )
        } else {
            self.choose_point(&repository, name, true)?
        };
        let home = vm_home(self.config, name, &region.name, test);
        let runtime = home.join("run");
        // Idempotent: whatever an earlier attempt left here goes first.
        stop_home(&home)?;
        let disks_directory = home.join("disks");
        if disks_directory.exists() {
            std::fs::remove_dir_all(&disks_directory)
                .with_context(|| format!("cannot clear {}", disks_directory.display()))?;
        }
        let _ = std::fs::remove_file(home.join("hydrated"));
        let disks: Vec<DiskSpec> = if self.options.instant {
            std::fs::create_dir_all(&disks_directory)
                .with_context(|| format!("cannot create {}", disks_directory.display()))?;
            let socket = home.join("export.sock");
            start_export(
                self.global,
                self.config,
                &region.name,
                &manifest.point,
                &home,
            )?;
            let mut disks = Vec::new();
            for disk in &manifest.disks {
                // Named as the disk is, whatever its format: the capture of a reprotect
                // names its disks by file name, and the replicas at home by the disk's.
                let overlay = disks_directory.join(&disk.name);
                create_overlay(&overlay, &socket, &disk.name, disk.virtual_size_bytes)?;
                disks.push(DiskSpec {
                    path: overlay,
                    format: "qcow2".to_string(),
                    export: None,
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
                    threads: crate::commands::threads(),
                },
                &lifeboat_backup::NoProgress,
            )?
            .disks
            .iter()
            .map(|disk| DiskSpec {
                path: disk.path.clone().into(),
                format: Format::from_name(&disk.format).qemu_name().to_string(),
                export: None,
            })
            .collect()
        };
        let disk_count = disks.len();
        let disk_files: Vec<PathBuf> = disks.iter().map(|d| d.path.clone()).collect();
        let network = if test {
            &region.test_network
        } else {
            &region.network
        };
        let status = start_detached(vm, disks, &runtime, network)?;
        if self.options.instant {
            spawn_hydrator(&home, disk_count)?;
        }
        let placement = Placements::update(&self.config.state_directory, |placements| {
            let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let entry = if test {
                &mut placements.tests
            } else {
                &mut placements.vms
            };
            let placement = Placement {
                region: region.name.clone(),
                epoch,
                point: Some(manifest.point.clone()),
                since,
                run: Some(run.id.clone()),
                instant: self.options.instant,
                committed: false,
                disks: disk_files,
                capture: None,
            };
            entry.insert(name.to_string(), placement.clone());
            placement
        })?;
        Ok(format!(
            "{status} in '{}' from point {} of {}{}{} after {:.1} s{}; console {}",
            region.name,
            short(&manifest.point),
            manifest.time,
            if test {
                " (test copy)".to_string()
            } else {
                format!(", epoch {}", placement.epoch)
            },
            if self.options.instant {
                ", disks copying in the background"
            } else {
                ""
            },
            started.elapsed().as_secs_f64(),
            note.into_iter()
                .chain(fence)
                .map(|n| format!(" ({n})"))
                .collect::<String>(),
            runtime.join("serial.log").display()
        ))
    }

    /// Claims the VM's next epoch for `run` in the repository of the region it goes to
    /// (the one its capture ships into, which fences it there) and, when reachable, in the
    /// repository of the region it leaves. Idempotent for one run.
    fn claim_epoch(&self, run: &RunRecord, name: &str, target: &Repository) -> anyhow::Result<u64> {
        let vm = declared_vm(self.config, name)?;
        let placements = Placements::load(&self.config.state_directory)?;
        let current = target.current_epoch(name)?;
        if let Some(record) = &current
            && record.run == run.id
        {
            return Ok(record.epoch);
        }
        let placed = placements.vms.get(name).map_or(0, |p| p.epoch);
        let record = EpochRecord {
            vm: name.to_string(),
            epoch: current.as_ref().map_or(0, |r| r.epoch).max(placed) + 1,
            region: run.region.clone(),
            run: run.id.clone(),
            actor: run.actor.clone(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        if let Claim::Taken(holder) = target.claim_epoch(&record)? {
            bail!(
                "VM '{name}' was failed over meanwhile by run {} of {} (epoch {} in '{}'): at most one region runs it; see lifeboat audit",
                holder.run,
                holder.actor,
                holder.epoch,
                holder.region
            );
        }
        let source = placements.region_of(name, &vm.region).to_string();
        if source != run.region
            && let Ok(repository) = self.repository(&source)
        {
            // Best effort: the region left may be down.
            let _ = repository.claim_epoch(&record);
        }
        Ok(record.epoch)
    }

    /// Before `name` starts in `run`'s region: makes sure its capture on the old side no
    /// longer accepts writes, or says what cannot be ruled out.
    fn wait_for_fence(
        &self,
        name: &str,
        repository: &Repository,
    ) -> anyhow::Result<Option<String>> {
        let deadline = Instant::now() + FENCE_WAIT;
        loop {
            let Some((group, records)) = replication_group(repository, name)? else {
                return Ok(None);
            };
            let Some(sender) = records.sender else {
                return Ok(None);
            };
            if sender
                .vms
                .iter()
                .any(|v| v.vm == name && v.fenced_at.is_some())
            {
                return Ok(Some(format!("its capture in group '{group}' is fenced")));
            }
            let seen =
                lifeboat_replication::status::age_seconds(&sender.updated, chrono::Utc::now())
                    .unwrap_or(f64::INFINITY);
            // A capture that answers sees the new epoch at its next round.
            let alive = seen < (3.0 * sender.interval_seconds).max(15.0);
            match sender.fence_lease_seconds {
                // Not heard of for its lease (and a round): it fenced itself, or it still
                // reads epochs and sees the new one at that round.
                Some(lease) if seen >= lease + sender.interval_seconds => {
                    return Ok(Some(format!(
                        "its capture in group '{group}' was last seen {seen:.0} s ago, beyond its fence lease of {lease:.0} s: it fenced itself"
                    )));
                }
                None if !alive => {
                    return Ok(Some(format!(
                        "WARNING: its capture in group '{group}' was last seen {seen:.0} s ago and has no fence lease: it refuses writes only once it reaches this region again; make sure the old VM is stopped"
                    )));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "the capture of VM '{name}' (group '{group}', last seen {seen:.0} s ago) has not fenced it after {} s: stop the VM at the source, or wait for its fence lease",
                    FENCE_WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops `name` where it runs as primary, if Lifeboat runs it there, and fences it.
    fn stop_source(&self, run: &RunRecord, name: &str) -> anyhow::Result<String> {
        let vm = declared_vm(self.config, name)?;
        let epoch = self.claim_epoch(run, name, &self.repository(&run.region)?)?;
        let placements = Placements::load(&self.config.state_directory)?;
        let region = placements.region_of(name, &vm.region).to_string();
        let home = vm_home(self.config, name, &region, false);
        if !is_running_detached(&home.join("run")) {
            return Ok(format!(
                "epoch {epoch} claimed: its capture in '{region}' refuses its writes from now on (a VM run by its own hypervisor is stopped there)"
            ));
        }
        let how = self.graceful_stop(&home)?;
        stop_home(&home)?;
        Ok(format!("stopped in '{region}'{how}, epoch {epoch} claimed"))
    }

    /// Waits until the recovery region holds every write the stopped VMs made.
    fn final_sync(&self, run: &RunRecord, vms: &[String]) -> anyhow::Result<String> {
        let stopped = run
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::StopVm { .. }))
            .filter_map(|s| s.finished.as_deref())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .max()
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(chrono::Utc::now);
        let repository = self.repository(&run.region)?;
        let deadline = Instant::now() + FINAL_SYNC_WAIT;
        let mut groups = Vec::new();
        for vm in vms {
            let (group, _) = replication_group(&repository, vm)?.with_context(|| {
                format!("VM '{vm}' is not replicated to region '{}'", run.region)
            })?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        let parse = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        loop {
            let records = read_all(repository.storage().as_ref(), repository.crypto())?;
            // Every write acknowledged before the VM was stopped and fenced must be in a
            // point: the receiver has recovered past both moments.
            let behind: Vec<String> = groups
                .iter()
                .filter(|group| {
                    let group_records = records.get(*group);
                    let fenced = group_records.and_then(|r| r.sender.as_ref()).map(|sender| {
                        sender
                            .vms
                            .iter()
                            .filter(|v| vms.contains(&v.vm))
                            .map(|v| v.fenced_at.as_deref().and_then(parse))
                            .collect::<Option<Vec<_>>>()
                    });
                    let Some(Some(fenced)) = fenced else {
                        return true;
                    };
                    let needed = fenced.into_iter().max().unwrap_or(stopped).max(stopped);
                    let recovered = group_records
                        .and_then(|r| r.receiver.as_ref())
                        .and_then(|r| r.recovered_time.as_deref())
                        .and_then(parse);
                    recovered.is_none_or(|t| t < needed)
                })
                .cloned()
                .collect();
            if behind.is_empty() {
                return Ok(format!(
                    "group(s) {} hold every write made before the VMs were stopped and fenced",
                    groups.join(", ")
                ));
            }
            if Instant::now() >= deadline {
                bail!(
                    "group(s) {} did not fence and receive the last writes within {} s: check that lifeboat protect and lifeboat receive run (lifeboat status)",
                    behind.join(", "),
                    FINAL_SYNC_WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn remove_test_copy(&self, name: &str) -> anyhow::Result<String> {
        let placements = Placements::load(&self.config.state_directory)?;
        let Some(copy) = placements.tests.get(name).cloned() else {
            return Ok("no test copy".to_string());
        };
        let home = vm_home(self.config, name, &copy.region, true);
        stop_detached(&home.join("run"), Duration::from_secs(5))?;
        stop_home(&home)?;
        if home.exists() {
            std::fs::remove_dir_all(&home)
                .with_context(|| format!("cannot remove {}", home.display()))?;
        }
        // The VM's directory goes too once it holds no other region's copy.
        if let Some(parent) = home.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Placements::update(&self.config.state_directory, |placements| {
            placements.tests.remove(name);
        })?;
        Ok(format!(
            "test copy in '{}' stopped and removed",
            copy.region
        ))
    }

    fn commit(&self, run: &RunRecord, name: &str) -> anyhow::Result<String> {
        let placements = Placements::load(&self.config.state_directory)?;
        let placement = placements
            .vms
            .get(name)
            .filter(|p| p.region == run.region)
            .with_context(|| format!("VM '{name}' was not failed over to '{}'", run.region))?
            .clone();
        if placement.committed {
            return Ok("committed already".to_string());
        }
        let home = vm_home(self.config, name, &run.region, false);
        if placement.instant {
            wait_hydrated(&home)?;
        }
        Placements::update(&self.config.state_directory, |placements| {
            if let Some(p) = placements.vms.get_mut(name) {
                p.committed = true;
            }
        })?;
        Ok(format!(
            "committed in '{}' at epoch {}",
            run.region, placement.epoch
        ))
    }
}

impl PlanExecutor<'_> {
    /// The capture group that replicates `plan`'s VMs home after a reprotect.
    pub fn capture_group(&self) -> String {
        format!("reprotect-{}", self.plan.name.replace(':', "-"))
    }

    fn capture_directory(&self, group: &str) -> PathBuf {
        self.config.state_directory.join("captures").join(group)
    }

    /// The home region of every VM of the plan (one: a capture ships to one repository).
    pub fn home_region(&self) -> anyhow::Result<String> {
        let mut homes: Vec<&str> = Vec::new();
        for name in self.plan.groups.iter().flatten() {
            let vm = declared_vm(self.config, name)?;
            if !homes.contains(&vm.region.as_str()) {
                homes.push(&vm.region);
            }
        }
        match homes.as_slice() {
            [home] => Ok(home.to_string()),
            _ => bail!(
                "the VMs of plan '{}' come from several regions ({}): reprotect and fail back one region's VMs at a time",
                self.plan.name,
                homes.join(", ")
            ),
        }
    }

    fn preflight_reprotect(&self, run: &RunRecord) -> anyhow::Result<Vec<String>> {
        let home = self.home_region()?;
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        if home == run.region {
            bail!(
                "the VMs of plan '{}' run in their home region '{home}' already",
                self.plan.name
            );
        }
        let placements = Placements::load(&self.config.state_directory)?;
        match self.repository(&home) {
            Ok(repository) => {
                let digest = lifeboat_replication::digest::read(
                    repository.storage().as_ref(),
                    repository.crypto(),
                    &self.capture_group(),
                )?;
                passed.push(match digest {
                    Some(disks) => {
                        let whole = undigested_disks(self.plan, &placements, &disks);
                        if whole.is_empty() {
                            format!(
                                "the receiver in '{home}' published a digest of {} replica disk(s): only blocks that differ are sent",
                                disks.len()
                            )
                        } else {
                            format!(
                                "the receiver in '{home}' published a digest of {} replica disk(s), none of them for {}: those are sent whole, the others as differences",
                                disks.len(),
                                whole.join(", ")
                            )
                        }
                    }
                    None => format!(
                        "no replica digest in '{home}' yet: the first sync sends every allocated block (start the receiver there first with --digest to send only what differs)"
                    ),
                });
            }
            Err(error) => failed.push(format!("the repository of region '{home}': {error:#}")),
        }
        for name in self.plan.groups.iter().flatten() {
            let Some(placement) = placements.vms.get(name).filter(|p| p.region == run.region)
            else {
                failed.push(format!(
                    "VM '{name}' was not failed over to '{}'",
                    run.region
                ));
                continue;
            };
            let home_directory = vm_home(self.config, name, &run.region, false);
            if placement.instant && !home_directory.join("hydrated").exists() {
                failed.push(format!(
                    "VM '{name}' still reads from its point's export: run lifeboat commit first"
                ));
            } else if placement.disks.is_empty() || placement.disks.iter().any(|d| !d.exists()) {
                failed.push(format!(
                    "VM '{name}': its disks in {} are missing",
                    home_directory.display()
                ));
            } else {
                passed.push(format!(
                    "{name}: {} disk(s) to capture",
                    placement.disks.len()
                ));
            }
        }
        if failed.is_empty() {
            Ok(passed)
        } else {
            bail!("pre-flight checks failed: {}", failed.join("; "))
        }
    }

    /// Stops `name` where it runs, keeping its placement.
    fn halt(&self, run: &RunRecord, name: &str) -> anyhow::Result<String> {
        let home = vm_home(self.config, name, &run.region, false);
        Ok(format!("stopped{}", self.graceful_stop(&home)?))
    }

    /// Stops the VM of `home` (power button, then a hard stop after the run's grace);
    /// says whether it had to be forced.
    fn graceful_stop(&self, home: &Path) -> anyhow::Result<String> {
        let grace = self.options.grace_seconds;
        let clean = stop_detached(&home.join("run"), Duration::from_secs(grace))?;
        Ok(if clean {
            String::new()
        } else {
            format!(" (forced after {grace} s)")
        })
    }

    /// Starts `lifeboat protect` over the VMs' disks here, shipping to their home region.
    fn start_capture(&self, run: &RunRecord, vms: &[String]) -> anyhow::Result<String> {
        let home = self.home_region()?;
        let group = self.capture_group();
        let directory = self.capture_directory(&group);
        std::fs::create_dir_all(&directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
        kill_recorded(&directory.join("protect.pid"));
        let placements = Placements::load(&self.config.state_directory)?;
        let socket = directory.join("capture.sock");
        let _ = std::fs::remove_file(&socket);
        let mut command = detached_lifeboat(
            self.global.password_file.as_deref(),
            &directory.join("protect.log"),
        )?;
        command
            .arg("--config")
            .arg(&self.config.path)
            .args(["--region", &home, "protect", "--group", &group, "--socket"])
            .arg(&socket)
            // The VMs run here now: this run placed them, so their newest epochs are ours.
            .arg("--accept-epoch")
            .arg("--state")
            .arg(directory.join("state"));
        for name in vms {
            let placement = placements
                .vms
                .get(name)
                .with_context(|| format!("VM '{name}' has no placement"))?;
            let disks: Vec<String> = placement
                .disks
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            command
                .arg("--vm")
                .arg(format!("{name}={}", disks.join(",")));
        }
        let mut child = command.spawn().context("cannot start lifeboat protect")?;
        std::fs::write(directory.join("protect.pid"), child.id().to_string())
            .with_context(|| format!("cannot write {}", directory.join("protect.pid").display()))?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "lifeboat protect stopped ({status}): {}",
                    std::fs::read_to_string(directory.join("protect.log"))
                        .unwrap_or_default()
                        .trim()
                );
            }
            if Instant::now() >= deadline {
                bail!("lifeboat protect did not serve the disks within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Placements::update(&self.config.state_directory, |placements| {
            for name in vms {
                if let Some(p) = placements.vms.get_mut(name) {
                    p.capture = Some(group.clone());
                }
            }
        })?;
        Ok(format!(
            "group '{group}' ships from '{}' to '{home}' (log {}); in '{home}' run: lifeboat --region {home} receive --group {group} --replicas DIR --follow",
            run.region,
            directory.join("protect.log").display()
        ))
    }

    /// Stops the capture that served `vms` where they ran (after a failback took them).
    fn stop_capture(&self, vms: &[String]) -> anyhow::Result<String> {
        let placements = Placements::load(&self.config.state_directory)?;
        let mut stopped = Vec::new();
        for group in vms
            .iter()
            .filter_map(|vm| placements.vms.get(vm)?.capture.clone())
        {
            if stopped.contains(&group) {
                continue;
            }
            kill_recorded(&self.capture_directory(&group).join("protect.pid"));
            stopped.push(group);
        }
        Ok(if stopped.is_empty() {
            "no capture run by Lifeboat".to_string()
        } else {
            format!("stopped {}", stopped.join(", "))
        })
    }

    /// Starts `name` again where it runs, on the capture's exports of its disks.
    fn start_on_capture(&self, run: &RunRecord, name: &str) -> anyhow::Result<String> {
        let vm = declared_vm(self.config, name)?;
        let region = self.config.region(&run.region)?;
        let placements = Placements::load(&self.config.state_directory)?;
        let placement = placements
            .vms
            .get(name)
            .with_context(|| format!("VM '{name}' has no placement"))?;
        let group = placement
            .capture
            .clone()
            .with_context(|| format!("VM '{name}' has no capture"))?;
        let socket = self.capture_directory(&group).join("capture.sock");
        let home = vm_home(self.config, name, &region.name, false);
        stop_detached(&home.join("run"), Duration::from_secs(5))?;
        let disks = placement
            .disks
            .iter()
            .map(|disk| -> anyhow::Result<DiskSpec> {
                let file = disk
                    .file_name()
                    .with_context(|| format!("{} is not a file", disk.display()))?
                    .to_string_lossy()
                    .into_owned();
                Ok(DiskSpec {
                    path: socket.clone(),
                    format: "raw".to_string(),
                    export: Some(format!("{name}/{file}")),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let status = start_detached(vm, disks, &home.join("run"), &region.network)?;
        Ok(format!(
            "{status} in '{}' on capture '{group}'",
            region.name
        ))
    }
}

/// Starts declared VM `vm` on `disks` (runtime files in `runtime`, on `network`) and lets
/// it run on after this process; returns its run state.
fn start_detached(
    vm: &DeclaredVm,
    disks: Vec<DiskSpec>,
    runtime: &Path,
    network: &str,
) -> anyhow::Result<String> {
    let spec = VmSpec {
        name: vm.name.clone(),
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disks,
        runtime_directory: runtime.to_path_buf(),
        accelerator: probe(),
        direct_boot: vm.kernel.as_ref().map(|kernel| DirectBoot {
            kernel: kernel.clone(),
            initrd: vm.initrd.clone(),
            append: vm.append.clone().unwrap_or_default(),
        }),
        network: network.to_string(),
    };
    let mut running = Vm::start(&spec)?;
    let status = running.status()?;
    running.detach();
    Ok(status)
}

fn short(point: &str) -> &str {
    &point[..point.len().min(12)]
}

/// The replication group `vm` belongs to in `repository`, with its records.
fn replication_group(
    repository: &Repository,
    vm: &str,
) -> anyhow::Result<Option<(String, GroupRecords)>> {
    let records = read_all(repository.storage().as_ref(), repository.crypto())?;
    Ok(records.into_iter().find(|(_, records)| {
        records
            .sender
            .iter()
            .any(|s| s.vms.iter().any(|v| v.vm == vm))
            || records
                .receiver
                .iter()
                .any(|r| r.vms.iter().any(|v| v.vm == vm))
    }))
}

/// For `--point latest`: waits until the receiver has made points of every cut the sender
/// had shipped when asked (bounded); says so if it gave up.
fn wait_until_processed(repository: &Repository, vm: &str) -> anyhow::Result<Option<String>> {
    let Some((group, records)) = replication_group(repository, vm)? else {
        return Ok(None);
    };
    let Some(shipped) = records.sender.and_then(|s| s.last_shipped) else {
        return Ok(None);
    };
    let deadline = Instant::now() + PROCESSING_WAIT;
    loop {
        let records = read_all(repository.storage().as_ref(), repository.crypto())?;
        let recovered = records
            .get(&group)
            .and_then(|r| r.receiver.as_ref())
            .and_then(|r| r.recovered_time.clone());
        if recovered
            .as_deref()
            .is_some_and(|r| later_or_equal(r, &shipped))
        {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Ok(Some(format!(
                "the receiver had not processed the cut of {shipped} after {} s: started from the newest processed point",
                PROCESSING_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn later_or_equal(first: &str, second: &str) -> bool {
    match (
        chrono::DateTime::parse_from_rfc3339(first),
        chrono::DateTime::parse_from_rfc3339(second),
    ) {
        (Ok(a), Ok(b)) => a >= b,
        _ => false,
    }
}

/// `MemAvailable` of this host, in MiB.
fn available_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Stops a VM home's background processes (the hydrator, then the export) and its VM.
pub fn stop_home(home: &Path) -> anyhow::Result<()> {
    stop_detached(&home.join("run"), Duration::from_secs(5))?;
    for name in ["hydrate.pid", "export.pid"] {
        kill_recorded(&home.join(name));
    }
    Ok(())
}

/// Ends the Lifeboat process whose id `pid_file` holds, if it still runs.
fn kill_recorded(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let _ = std::fs::remove_file(pid_file);
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    // Only a lifeboat process: the id may have been reused since.
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&command).contains("lifeboat") {
        return;
    }
    // SAFETY: kill(2) with a process id read back and checked just now.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // Reap it if it is our child; harmless otherwise.
        // SAFETY: waitpid with WNOHANG on a known id.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Lifeboat subprocess that outlives this one: its own process group, output in `log`.
fn detached_lifeboat(password_file: Option<&Path>, log: &Path) -> anyhow::Result<Command> {
    let mut command =
        Command::new(std::env::current_exe().context("cannot find the lifeboat executable")?);
    if let Some(file) = password_file {
        command.arg("--password-file").arg(file);
    }
    let output =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(output.try_clone().context("cannot open a log twice")?)
        .stderr(output)
        .process_group(0);
    Ok(command)
}

/// Starts `lifeboat export POINT` of `region`'s repository on `<home>/export.sock`;
/// returns once it serves.
fn start_export(
    global: &GlobalOptions,
    config: &Config,
    region: &str,
    point: &str,
    home: &Path,
) -> anyhow::Result<()> {
    let socket = home.join("export.sock");
    let log = home.join("export.log");
    let _ = std::fs::remove_file(&socket);
    let mut child = detached_lifeboat(global.password_file.as_deref(), &log)?
        .arg("--config")
        .arg(&config.path)
        .args(["--region", region, "--json", "export", point, "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .spawn()
        .context("cannot start lifeboat export for the instant disks")?;
    std::fs::write(home.join("export.pid"), child.id().to_string())
        .with_context(|| format!("cannot write {}", home.join("export.pid").display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|text| text.contains("\"exports\"")) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "lifeboat export of point {point} stopped ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("lifeboat export of point {point} did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `lifeboat vm hydrate` for the VM of `home`.
fn spawn_hydrator(home: &Path, disks: usize) -> anyhow::Result<()> {
    let child = detached_lifeboat(None, &home.join("hydrate.log"))?
        .args(["vm", "hydrate", "--home"])
        .arg(home)
        .args(["--disks", &disks.to_string()])
        .spawn()
        .context("cannot start the hydration of the instant disks")?;
    std::fs::write(home.join("hydrate.pid"), child.id().to_string())
        .with_context(|| format!("cannot write {}", home.join("hydrate.pid").display()))
}

/// Waits until the instant disks of `home` stand alone, starting the hydration again if
/// its process is gone.
fn wait_hydrated(home: &Path) -> anyhow::Result<()> {
    let mut restarted = false;
    loop {
        if home.join("hydrated").exists() {
            return Ok(());
        }
        let alive = std::fs::read_to_string(home.join("hydrate.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            if restarted || !is_running_detached(&home.join("run")) {
                bail!(
                    "the instant disks in {} were not copied: see {}",
                    home.display(),
                    home.join("hydrate.log").display()
                );
            }
            let disks = std::fs::read_dir(home.join("disks"))
                .map(|entries| entries.count())
                .unwrap_or(0);
            spawn_hydrator(home, disks)?;
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lifeboat vm hydrate`: copies the instant disks of `home`, then stops the export.
pub fn hydrate(home: &Path, disks: usize) -> anyhow::Result<()> {
    lifeboat_hypervisor::hydrate_detached(
        &home.join("run"),
        disks,
        Duration::from_secs(7 * 86400),
    )?;
    kill_recorded(&home.join("export.pid"));
    std::fs::write(home.join("hydrated"), b"")
        .with_context(|| format!("cannot write {}", home.join("hydrated").display()))
}

/// The disks of `plan`'s VMs (as `VM/DISK`) that the replica digest lacks under the names a
/// capture gives them (their file names): those are sent whole, not as differences.
fn undigested_disks(
    plan: &Plan,
    placements: &Placements,
    digest: &[lifeboat_replication::digest::DiskDigest],
) -> Vec<String> {
    let mut whole = Vec::new();
    for name in plan.groups.iter().flatten() {
        let Some(placement) = placements.vms.get(name) else {
            continue;
        };
        let vm = lifeboat_replication::file_name_for(name);
        for path in &placement.disks {
            let Some(disk) = path.file_name().map(|f| f.to_string_lossy()) else {
                continue;
            };
            if !digest.iter().any(|d| d.vm == vm && d.disk == disk) {
                whole.push(format!("{name}/{disk}"));
            }
        }
    }
    whole
}
