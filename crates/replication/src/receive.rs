//! The receiver in the recovery region: applies shipped cuts to replica disks and makes
//! recovery points from them in that region's repository.
//!
//! For each committed cut, in order: apply every part's writes to the replicas, fsync them,
//! record the cut as applied; if the cut leaves the replicas consistent, make one point
//! per VM that changed (an incremental backup of its replicas reading only what the cuts
//! wrote), record it, and delete the cut's objects. Killed at any step, the next run
//! redoes from the last recorded step.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use lifeboat_backup::{BackupOptions, NoProgress, RetentionPolicy};
use lifeboat_disk::source::Range;
use lifeboat_repository::{Consistency, ObjectKind, Repository};

use crate::cut::{self, CutCommit, VmLayout};
use crate::error::{ReplicationError, Result, io};
use crate::ranges::RangeSet;
use crate::replica_state::ReplicaState;
use crate::status::{self, ReceiverRecord, VmReceived};

/// Changed ranges are kept at this granularity (the repository's chunks are no smaller).
const PENDING_GRANULARITY: u64 = 64 * 1024;

/// What one run of the receiver did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReceiveReport {
    pub group: String,
    /// Cuts applied.
    pub cuts: u64,
    /// Bytes of writes applied.
    pub bytes_applied: u64,
    /// Points made, `vm` → point.
    pub points: BTreeMap<String, String>,
    /// Time of the last cut applied: the replicas hold every write acknowledged up to then.
    pub applied_time: Option<String>,
    /// False while a resync is in progress.
    pub consistent: bool,
    /// Every VM of the group has a point holding every write acknowledged up to this time.
    pub recovered_time: Option<String>,
    /// Age of `recovered_time`: the data a failover now would lose at most.
    pub rpo_seconds: Option<f64>,
    /// The RPO is above the threshold (or there is no point yet).
    pub alert: bool,
    /// Points removed by the history policy in this round.
    pub points_thinned: u64,
    pub seconds: f64,
}

/// How the receiver thins the history of points it made.
#[derive(Clone, Debug)]
pub struct History {
    /// Which points stay (applied to each VM of the group).
    pub policy: RetentionPolicy,
    /// The policy is applied at most this often.
    pub interval: std::time::Duration,
}

impl Default for History {
    /// Every point for 24 hours, then hourly for 7 days, then daily for a year.
    fn default() -> Self {
        History {
            policy: RetentionPolicy {
                keep_within_seconds: Some(24 * 3600),
                keep_hourly: 7 * 24,
                keep_daily: 365,
                ..RetentionPolicy::default()
            },
            interval: std::time::Duration::from_secs(60),
        }
    }
}

/// Receives one group into a replicas directory.
pub struct Receiver<'a> {
    repository: &'a Repository,
    group: String,
    tag: String,
    directory: PathBuf,
    state: ReplicaState,
    /// The replicas opened for the layout of the last cut, kept open across cuts.
    open: Option<(Vec<VmLayout>, Replicas)>,
    /// Above this RPO the group is in alert.
    rpo_threshold_seconds: f64,
    /// When the status record was last written.
    published: Option<Instant>,
    history: Option<History>,
    /// When the history was last thinned.
    thinned: Option<Instant>,
}

/// The status record is rewritten at least this often while nothing happens.
const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Open replica files, per VM, per disk.
type Replicas = Vec<Vec<(PathBuf, File)>>;

impl<'a> Receiver<'a> {
    /// A receiver of `group` from `repository` into `directory` (created if needed).
    pub fn open(repository: &'a Repository, group: &str, directory: &Path) -> Result<Receiver<'a>> {
        std::fs::create_dir_all(directory).map_err(|e| io(directory, "create", e))?;
        let repository_id = repository.config().repository_id.clone();
        let state = match ReplicaState::load(directory)? {
            Some(state) if state.group != group || state.repository_id != repository_id => {
                return Err(ReplicationError::Invalid(format!(
                    "{} holds replicas of group '{}' from repository {}, not of group '{group}' from {}; use another directory",
                    directory.display(),
                    state.group,
                    state.repository_id,
                    repository.location()
                )));
            }
            Some(state) => state,
            None => ReplicaState::new(group, &repository_id),
        };
        Ok(Receiver {
            tag: cut::group_tag(repository.crypto(), group),
            repository,
            group: group.to_string(),
            directory: directory.to_path_buf(),
            state,
            open: None,
            rpo_threshold_seconds: status::DEFAULT_RPO_THRESHOLD_SECONDS,
            published: None,
            history: Some(History::default()),
            thinned: None,
        })
    }

    /// Sets how the history of points is thinned (`None`: every point is kept).
    pub fn with_history(mut self, history: Option<History>) -> Receiver<'a> {
        self.history = history;
        self
    }

    /// Applies the history policy to every VM of the group, when due.
    fn thin(&mut self, report: &mut ReceiveReport) -> Result<()> {
        let Some(history) = &self.history else {
            return Ok(());
        };
        if self.thinned.is_some_and(|t| t.elapsed() < history.interval) {
            return Ok(());
        }
        for vm in &self.state.vms {
            if !self.state.points.contains_key(&vm.name) {
                continue;
            }
            let forgotten =
                lifeboat_backup::forget(self.repository, &vm.name, &history.policy, false)?;
            report.points_thinned += forgotten.removed.len() as u64;
        }
        self.thinned = Some(Instant::now());
        Ok(())
    }

    /// Sets the RPO above which the group is in alert.
    pub fn with_rpo_threshold(mut self, seconds: f64) -> Receiver<'a> {
        self.rpo_threshold_seconds = seconds;
        self
    }

    /// The replica of a disk.
    pub fn replica_path(&self, vm: &str, disk: &str) -> PathBuf {
        self.directory.join(crate::file_name_for(vm)).join(disk)
    }

    /// Applies every committed cut not applied yet, making points from consistent ones,
    /// and replaces the receiver's status record in the repository (when it can).
    pub fn receive(&mut self) -> Result<ReceiveReport> {
        let result = self.receive_cuts();
        let due = match &result {
            Ok(report) => {
                report.cuts > 0
                    || self
                        .published
                        .is_none_or(|t| t.elapsed() >= PUBLISH_INTERVAL)
            }
            Err(_) => true,
        };
        if due {
            let error = result.as_ref().err().map(ToString::to_string);
            match self.publish(error) {
                Ok(()) => self.published = Some(Instant::now()),
                Err(error) => tracing::debug!(%error, "cannot write the receiver's status record"),
            }
        }
        result
    }

    /// Replaces the receiver's status record.
    fn publish(&self, error: Option<String>) -> Result<()> {
        let non_empty = |time: &String| (!time.is_empty()).then(|| time.clone());
        let record = ReceiverRecord {
            format: status::FORMAT,
            group: self.group.clone(),
            updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            applied_time: non_empty(&self.state.applied_time),
            recovered_time: non_empty(&self.state.sealed_time),
            consistent: self.state.applied_consistent,
            vms: self
                .state
                .vms
                .iter()
                .map(|vm| VmReceived {
                    vm: vm.name.clone(),
                    point: self.state.points.get(&vm.name).cloned(),
                })
                .collect(),
            error,
        };
        status::write_receiver(
            self.repository.storage().as_ref(),
            self.repository.crypto(),
            &record,
        )?;
        Ok(())
    }

    fn receive_cuts(&mut self) -> Result<ReceiveReport> {
        let started = Instant::now();
        let mut report = ReceiveReport {
            group: self.group.clone(),
            ..ReceiveReport::default()
        };
        // A point interrupted after its cut was applied.
        if self.state.applied_consistent && self.state.sealed_ordinal < self.state.applied_ordinal {
            let time = self.state.applied_time.clone();
            let application = self.state.applied_application_consistent;
            self.seal(&time, application, &mut report)?;
        }
        let objects = self.repository.storage().list(ObjectKind::Cut)?;
        let mut commits: Vec<u64> = Vec::new();
        let mut all: Vec<(u64, String)> = Vec::new();
        for object in objects {
            if let Some((ordinal, is_commit)) = cut::parse_name(&self.tag, &object.name) {
                if is_commit && ordinal > self.state.applied_ordinal {
                    commits.push(ordinal);
                }
                all.push((ordinal, object.name));
            }
        }
        commits.sort_unstable();
        // Objects in ordinal order: each applied cut deletes only those not deleted yet.
        all.sort_unstable();
        let mut deleted = 0;
        let mut next = match commits.first() {
            Some(&ordinal) => Some(self.read_commit(ordinal)?),
            None => None,
        };
        let mut position = 0;
        while let Some(commit) = next.take() {
            position += 1;
            next = match commits.get(position) {
                Some(&ordinal) => Some(self.read_commit(ordinal)?),
                None => None,
            };
            report.bytes_applied += self.apply(&commit)?;
            report.cuts += 1;
            // Behind, points are made from the last consistent cut before the replicas
            // change again: the newest state, without a point per cut to catch up with.
            // Application-consistent cuts always make points: they are what was asked for.
            let last_consistent = next.as_ref().is_none_or(|n| !n.consistent);
            if commit.consistent && (last_consistent || commit.application_consistent) {
                self.seal(&commit.time, commit.application_consistent, &mut report)?;
            }
            deleted += self.delete_up_to(commit.ordinal, &all[deleted..]);
        }
        if !report.points.is_empty() {
            self.thin(&mut report)?;
        }
        report.applied_time =
            (!self.state.applied_time.is_empty()).then(|| self.state.applied_time.clone());
        report.consistent = self.state.applied_consistent;
        report.recovered_time =
            (!self.state.sealed_time.is_empty()).then(|| self.state.sealed_time.clone());
        report.rpo_seconds = report
            .recovered_time
            .as_deref()
            .and_then(|time| status::age_seconds(time, chrono::Utc::now()))
            .map(|age| age.max(0.0));
        report.alert = report
            .rpo_seconds
            .is_none_or(|rpo| rpo > self.rpo_threshold_seconds);
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn read_commit(&self, ordinal: u64) -> Result<CutCommit> {
        let name = cut::commit_name(&self.tag, ordinal);
        let sealed = self.repository.storage().read(ObjectKind::Cut, &name)?;
        let commit = cut::open_commit(self.repository.crypto(), &name, &sealed)?;
        if commit.group != self.group || commit.ordinal != ordinal {
            return Err(ReplicationError::DamagedCut {
                name,
                detail: format!(
                    "it belongs to group '{}' cut {}",
                    commit.group, commit.ordinal
                ),
            });
        }
        Ok(commit)
    }

    /// Applies one cut to the replicas and records it; returns the bytes written.
    fn apply(&mut self, commit: &CutCommit) -> Result<u64> {
        let files = match self.open.take() {
            Some((layout, files)) if layout == commit.vms => files,
            _ => self.prepare(&commit.vms)?,
        };
        let mut applied = 0u64;
        for part_name in &commit.parts {
            let sealed = self.repository.storage().read(ObjectKind::Cut, part_name)?;
            let part = cut::open_part(self.repository.crypto(), part_name, sealed)?;
            if part.ordinal != commit.ordinal {
                return Err(ReplicationError::DamagedCut {
                    name: part_name.clone(),
                    detail: format!("it belongs to cut {}, not {}", part.ordinal, commit.ordinal),
                });
            }
            for (write, bytes) in part.iter() {
                let layout = commit
                    .vms
                    .get(write.vm)
                    .and_then(|vm| vm.disks.get(write.disk).map(|disk| (vm, disk)));
                let Some((vm, disk)) = layout else {
                    return Err(ReplicationError::DamagedCut {
                        name: part_name.clone(),
                        detail: format!(
                            "a write names disk {} of VM {}, which the cut does not have",
                            write.disk, write.vm
                        ),
                    });
                };
                if write.offset + write.length > disk.size_bytes {
                    return Err(ReplicationError::DamagedCut {
                        name: part_name.clone(),
                        detail: format!("a write ends past the end of disk '{}'", disk.name),
                    });
                }
                let (path, file) = &files[write.vm][write.disk];
                match bytes {
                    Some(bytes) => file
                        .write_all_at(bytes, write.offset)
                        .map_err(|e| io(path, "write", e))?,
                    None => crate::write_zeroes(file, write.offset, write.length)
                        .map_err(|e| io(path, "write zeros to", e))?,
                }
                applied += write.length;
                let start = write.offset / PENDING_GRANULARITY * PENDING_GRANULARITY;
                let end = (write.offset + write.length).div_ceil(PENDING_GRANULARITY)
                    * PENDING_GRANULARITY;
                self.state.add_pending(
                    &vm.name,
                    &disk.name,
                    start,
                    end.min(disk.size_bytes) - start,
                );
            }
        }
        for (path, file) in files.iter().flatten() {
            file.sync_data().map_err(|e| io(path, "flush", e))?;
        }
        self.open = Some((commit.vms.clone(), files));
        self.state.vms = commit.vms.clone();
        self.state.applied_ordinal = commit.ordinal;
        self.state.applied_time = commit.time.clone();
        self.state.applied_consistent = commit.consistent;
        self.state.applied_application_consistent = commit.application_consistent;
        self.state.save(&self.directory)?;
        Ok(applied)
    }

    /// Opens (creating or growing) every replica of the layout.
    fn prepare(&self, vms: &[VmLayout]) -> Result<Replicas> {
        let mut files = Vec::new();
        for vm in vms {
            let directory = self.directory.join(crate::file_name_for(&vm.name));
            std::fs::create_dir_all(&directory).map_err(|e| io(&directory, "create", e))?;
            let mut disks = Vec::new();
            for disk in &vm.disks {
                if disk.name.contains('/') || disk.name.starts_with('.') || disk.name.is_empty() {
                    return Err(ReplicationError::Invalid(format!(
                        "disk name '{}' of VM '{}' is not a plain file name",
                        disk.name, vm.name
                    )));
                }
                let path = directory.join(&disk.name);
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| io(&path, "open", e))?;
                let size = file
                    .metadata()
                    .map_err(|e| io(&path, "read the size of", e))?
                    .len();
                if size < disk.size_bytes {
                    file.set_len(disk.size_bytes)
                        .map_err(|e| io(&path, "grow", e))?;
                }
                disks.push((path, file));
            }
            files.push(disks);
        }
        Ok(files)
    }

    /// Makes a point of every VM that changed since its last point, from the replicas; of
    /// every VM when the cut is application-consistent.
    fn seal(&mut self, time: &str, application: bool, report: &mut ReceiveReport) -> Result<()> {
        let vms = self.state.vms.clone();
        for vm in &vms {
            let pending = self
                .state
                .pending
                .get(&vm.name)
                .cloned()
                .unwrap_or_default();
            let has_point = self.state.points.contains_key(&vm.name);
            if has_point && !application && pending.values().all(RangeSet::is_empty) {
                continue;
            }
            let disks: Vec<PathBuf> = vm
                .disks
                .iter()
                .map(|disk| self.replica_path(&vm.name, &disk.name))
                .collect();
            let changed: Vec<Vec<Range>> = vm
                .disks
                .iter()
                .map(|disk| {
                    pending
                        .get(&disk.name)
                        .map(|ranges| {
                            ranges
                                .iter()
                                .map(|(offset, length)| Range { offset, length })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect();
            let mut options = BackupOptions::new(vm.name.clone(), disks);
            options.changed_ranges = Some(changed);
            options.time = Some(time.to_string());
            options.recorded_formats =
                Some(vm.disks.iter().map(|disk| disk.format.clone()).collect());
            options.consistency = if application {
                Consistency::App
            } else {
                Consistency::Crash
            };
            let made = lifeboat_backup::backup(self.repository, &options, &NoProgress)?;
            self.state.pending.remove(&vm.name);
            self.state
                .points
                .insert(vm.name.clone(), made.point.clone());
            report.points.insert(vm.name.clone(), made.point);
            // Recorded per VM: a crash between two VMs makes only the missing points again.
            self.state.save(&self.directory)?;
        }
        self.state.sealed_ordinal = self.state.applied_ordinal;
        self.state.sealed_time = time.to_string();
        self.state.save(&self.directory)
    }

    /// Deletes the cut objects of this group up to `ordinal` (failed attempts included)
    /// from the front of `objects` (sorted by ordinal); returns how many it went through.
    fn delete_up_to(&self, ordinal: u64, objects: &[(u64, String)]) -> usize {
        let count = objects.partition_point(|(o, _)| *o <= ordinal);
        for (_, name) in &objects[..count] {
            if let Err(error) = self.repository.storage().delete(ObjectKind::Cut, name) {
                tracing::warn!(object = %name, %error, "cannot delete an applied cut object");
            }
        }
        count
    }
}
