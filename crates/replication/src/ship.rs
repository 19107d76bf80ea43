//! Shipping cuts of a group's journal into the recovery region's repository.
//!
//! Each round takes a cut, writes its parts and then its commit (create-if-absent) into
//! `cuts/` of the recovery repository, and frees the cut's memory. A round that fails (the
//! link is down, the repository is full) puts the cut back into the journal: the next round
//! ships it together with what came since, and nothing acknowledged is lost. While the link
//! stays down the journal overflows into resync ranges, read again from the images once it
//! is back — only what changed is sent.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use lifeboat_directio::AlignedBuffer;
use lifeboat_repository::{ObjectKind, Repository};

use crate::cut::{self, CutCommit, PartBuilder, VmLayout};
use crate::dirty::DirtyMap;
use crate::error::{Result, io};
use crate::fence::Fences;
use crate::image::DiskImage;
use crate::journal::{Cut, Journal, JournalStatus};
use crate::quiesce::Quiesce;
use crate::status::{self, SenderRecord, VmSending};

/// Largest part object.
const PART_BYTES: usize = 32 * 1024 * 1024;
/// Largest read from an image while resyncing.
const RESYNC_READ_BYTES: u64 = 4 * 1024 * 1024;

/// Settings of a sender.
#[derive(Clone, Debug)]
pub struct SenderOptions {
    /// Bytes read again from the images per cut while resyncing.
    pub resync_bytes_per_cut: u64,
    /// Seconds between cuts, as the caller runs them (reported in the status record).
    pub interval_seconds: f64,
    /// Above this RPO the group is in alert.
    pub rpo_threshold_seconds: f64,
    /// Ship only the end state of a cut: writes overwritten whole later in the same cut are
    /// dropped (false ships every write, as a plain journal would).
    pub coalesce: bool,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            resync_bytes_per_cut: 256 * 1024 * 1024,
            interval_seconds: 5.0,
            rpo_threshold_seconds: status::DEFAULT_RPO_THRESHOLD_SECONDS,
            coalesce: true,
        }
    }
}

/// Throughput is averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A moment's cumulative counters, for throughput.
struct Sample {
    at: Instant,
    written: BTreeMap<usize, u64>,
    shipped: u64,
}

/// What the sender remembers for its status record.
#[derive(Default)]
struct Progress {
    samples: VecDeque<Sample>,
    shipped_total: u64,
    last_shipped: Option<String>,
    last_success: Option<Instant>,
}

/// What one round shipped.
#[derive(Clone, Debug, Serialize)]
pub struct ShipReport {
    pub group: String,
    /// The cut's ordinal (its name in the repository).
    pub ordinal: u64,
    /// The last write sequence number in the cut.
    pub sequence: u64,
    pub time: String,
    pub writes: u64,
    /// Bytes of journaled writes.
    pub journal_bytes: u64,
    /// Writes and bytes shipped of them, after dropping those overwritten whole within
    /// the cut.
    pub writes_shipped: u64,
    pub journal_bytes_shipped: u64,
    /// Bytes read again from the images.
    pub resync_bytes: u64,
    /// Bytes of part objects written.
    pub shipped_bytes: u64,
    pub consistent: bool,
    /// Taken while the group's applications were frozen.
    pub application_consistent: bool,
    /// Why a freeze asked for did not happen (the cut is crash-consistent).
    pub quiesce_error: Option<String>,
    pub seconds: f64,
    /// The journal after the round.
    pub pending_writes: u64,
    pub pending_bytes: u64,
    pub resync_pending_bytes: u64,
}

/// Ships one group's cuts.
pub struct Sender {
    repository: Repository,
    group: String,
    tag: String,
    vms: Vec<VmLayout>,
    images: Vec<Vec<Arc<dyn DiskImage>>>,
    journal: Arc<Mutex<Journal>>,
    incarnation: String,
    /// The ordinal of the last cut shipped or found in the repository.
    last_ordinal: Mutex<u64>,
    options: SenderOptions,
    progress: Mutex<Progress>,
    started: Instant,
    /// Per VM, per disk, the persistent dirty maps.
    dirty: Vec<Vec<Arc<DirtyMap>>>,
    /// Cuts committed by this sender: which dirty map the next commit clears.
    commits: Mutex<u64>,
    /// The VMs' fences, when epochs are watched.
    fences: Option<Arc<Fences>>,
}

impl Sender {
    /// A sender of `group` into `repository`, reading resync ranges from `images` and
    /// clearing the disks' `dirty` maps as cuts commit (both per VM, per disk, in the order
    /// of `vms`).
    pub fn new(
        repository: Repository,
        group: &str,
        vms: Vec<VmLayout>,
        images: Vec<Vec<Arc<dyn DiskImage>>>,
        dirty: Vec<Vec<Arc<DirtyMap>>>,
        journal: Arc<Mutex<Journal>>,
        options: SenderOptions,
    ) -> Result<Sender> {
        let mut incarnation = [0u8; 8];
        lifeboat_repository::crypto::fill_random(&mut incarnation);
        let tag = cut::group_tag(repository.crypto(), group);
        let last_ordinal = repository
            .storage()
            .list(ObjectKind::Cut)?
            .iter()
            .filter_map(|object| cut::parse_name(&tag, &object.name))
            .map(|(ordinal, _)| ordinal)
            .max()
            .unwrap_or(0);
        Ok(Sender {
            tag,
            last_ordinal: Mutex::new(last_ordinal),
            repository,
            group: group.to_string(),
            vms,
            images,
            journal,
            incarnation: hex::encode(incarnation),
            options,
            progress: Mutex::new(Progress::default()),
            started: Instant::now(),
            dirty,
            commits: Mutex::new(0),
            fences: None,
        })
    }

    /// Watches the VMs' epochs through `fences` (in the order of the VMs).
    pub fn with_fences(mut self, fences: Arc<Fences>) -> Sender {
        self.fences = Some(fences);
        self
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal
            .lock()
            .expect("the journal lock is never poisoned: recording cannot panic")
    }

    /// The journal's counters.
    pub fn status(&self) -> JournalStatus {
        self.journal().status()
    }

    /// Seconds since the last cut was shipped (since the sender started, before the first):
    /// how far behind the recovery region can be at most, on this side.
    pub fn seconds_since_shipped(&self) -> f64 {
        let progress = self.progress.lock().expect("never poisoned");
        progress
            .last_success
            .unwrap_or(self.started)
            .elapsed()
            .as_secs_f64()
    }

    /// Takes a cut and ships it; on failure the cut goes back into the journal. Either way
    /// the sender's status record in the recovery repository is replaced (when it can be).
    pub fn ship(&self) -> Result<ShipReport> {
        self.ship_quiesced(None)
    }

    /// The same; with `quiesce`, the cut is taken while the group's applications are
    /// frozen, and thawed right after (before shipping): an application-consistent cut.
    pub fn ship_quiesced(&self, quiesce: Option<&dyn Quiesce>) -> Result<ShipReport> {
        let result = self.ship_cut(quiesce);
        {
            let mut progress = self.progress.lock().expect("never poisoned");
            if let Ok(report) = &result {
                progress.shipped_total += report.shipped_bytes;
                progress.last_shipped = Some(report.time.clone());
                progress.last_success = Some(Instant::now());
            }
        }
        let error = result.as_ref().err().map(ToString::to_string);
        if let Err(error) = self.publish(error) {
            tracing::debug!(%error, "cannot write the sender's status record");
        }
        result
    }

    /// Replaces the sender's status record.
    fn publish(&self, error: Option<String>) -> Result<()> {
        let now = Instant::now();
        let (journal, counters) = {
            let journal = self.journal();
            (journal.status(), journal.vm_counters())
        };
        let record = {
            let mut progress = self.progress.lock().expect("never poisoned");
            let written: BTreeMap<usize, u64> = counters
                .iter()
                .map(|(&vm, c)| (vm, c.written_bytes))
                .collect();
            let shipped = progress.shipped_total;
            progress.samples.push_back(Sample {
                at: now,
                written: written.clone(),
                shipped,
            });
            while progress.samples.len() > 2
                && now.duration_since(progress.samples[1].at) >= RATE_WINDOW
            {
                progress.samples.pop_front();
            }
            let first = &progress.samples[0];
            let seconds = now.duration_since(first.at).as_secs_f64();
            let rate = |now: u64, then: u64| {
                if seconds > 0.0 {
                    now.saturating_sub(then) as f64 / seconds
                } else {
                    0.0
                }
            };
            let vms = self
                .vms
                .iter()
                .enumerate()
                .map(|(index, vm)| {
                    let c = counters.get(&index).copied().unwrap_or_default();
                    let fenced = self.fences.as_ref().and_then(|f| f.of(index).state());
                    VmSending {
                        fenced_at: fenced.as_ref().map(|f| f.at.clone()),
                        fenced_because: fenced.map(|f| f.reason),
                        vm: vm.name.clone(),
                        pending_writes: c.pending_writes,
                        pending_bytes: c.pending_bytes,
                        write_bytes_per_second: rate(
                            c.written_bytes,
                            first.written.get(&index).copied().unwrap_or(0),
                        ),
                    }
                })
                .collect();
            SenderRecord {
                format: status::FORMAT,
                group: self.group.clone(),
                updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                interval_seconds: self.options.interval_seconds,
                rpo_threshold_seconds: self.options.rpo_threshold_seconds,
                last_shipped: progress.last_shipped.clone(),
                pending_writes: journal.pending_writes,
                pending_bytes: journal.pending_bytes,
                resync_pending_bytes: journal.resync_bytes,
                ship_bytes_per_second: rate(shipped, first.shipped),
                vms,
                error,
                fence_lease_seconds: self
                    .fences
                    .as_ref()
                    .and_then(|f| f.lease())
                    .map(|lease| lease.as_secs_f64()),
            }
        };
        status::write_sender(
            self.repository.storage().as_ref(),
            self.repository.crypto(),
            &record,
        )?;
        Ok(())
    }

    fn ship_cut(&self, quiesce: Option<&dyn Quiesce>) -> Result<ShipReport> {
        let started = Instant::now();
        let frozen = quiesce.map(|q| q.freeze());
        let (cut, pending) = {
            let mut journal = self.journal();
            let cut = journal.take_cut(self.options.resync_bytes_per_cut);
            (cut, journal.pending_resync())
        };
        let mut cut = cut;
        let written_bytes = cut.journal_bytes();
        let written_count = cut.writes.len() as u64;
        if self.options.coalesce {
            cut.coalesce();
        }
        if let Some(quiesce) = quiesce {
            // Thawed whatever the freeze did: a half-frozen group must not stay frozen.
            if let Err(error) = quiesce.thaw() {
                tracing::error!(group = %self.group, %error, "thaw failed");
                // Never `eprintln!`: a closed log pipe must not end the capture.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "group '{}': THAW FAILED: {error}",
                    self.group
                );
            }
        }
        let quiesce_error = match &frozen {
            Some(Err(error)) => Some(error.clone()),
            Some(Ok(())) if !cut.consistent => {
                Some("a resync is in progress: the replicas are not consistent yet".to_string())
            }
            _ => None,
        };
        let application_consistent = matches!(frozen, Some(Ok(()))) && cut.consistent;
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // Ranges still to resync stay dirty through the commit that clears a map.
        let marked = pending.iter().try_for_each(|range| {
            self.dirty[range.disk.vm][range.disk.disk].mark(range.offset, range.length)
        });
        let written = marked.and_then(|()| self.write_cut(&cut, &time, application_consistent));
        if written.is_ok()
            && let Err(error) = self.clear_dirty()
        {
            // Blocks left set are only resynced again after a restart: safe.
            tracing::warn!(%error, "cannot clear the dirty maps after a commit");
        }
        match written {
            Ok((ordinal, shipped_bytes, resync_bytes)) => {
                let status = self.status();
                Ok(ShipReport {
                    group: self.group.clone(),
                    ordinal,
                    sequence: cut.sequence,
                    time,
                    writes: written_count,
                    journal_bytes: written_bytes,
                    writes_shipped: cut.writes.len() as u64,
                    journal_bytes_shipped: cut.journal_bytes(),
                    resync_bytes,
                    shipped_bytes,
                    consistent: cut.consistent,
                    application_consistent,
                    quiesce_error,
                    seconds: started.elapsed().as_secs_f64(),
                    pending_writes: status.pending_writes,
                    pending_bytes: status.pending_bytes,
                    resync_pending_bytes: status.resync_bytes,
                })
            }
            Err(error) => {
                self.journal().put_back(cut);
                Err(error)
            }
        }
    }

    /// After a commit: clears one of the two dirty maps of every disk, alternately.
    fn clear_dirty(&self) -> Result<()> {
        let mut commits = self.commits.lock().expect("never poisoned");
        let map = (*commits % 2) as usize;
        *commits += 1;
        for dirty in self.dirty.iter().flatten() {
            dirty.clear(map)?;
        }
        Ok(())
    }

    /// Writes the parts and the commit of `cut`; returns its ordinal, bytes shipped and
    /// bytes resynced.
    fn write_cut(
        &self,
        cut: &Cut,
        time: &str,
        application_consistent: bool,
    ) -> Result<(u64, u64, u64)> {
        let ordinal = {
            let mut last = self.last_ordinal.lock().expect("never poisoned");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            *last = now.max(*last + 1);
            *last
        };
        let storage = self.repository.storage();
        let crypto = self.repository.crypto();
        let mut attempt = [0u8; 4];
        lifeboat_repository::crypto::fill_random(&mut attempt);
        let attempt = hex::encode(attempt);
        let mut parts = Vec::new();
        let mut shipped = 0u64;
        let mut builder = PartBuilder::new(ordinal);
        let mut sealed = AlignedBuffer::default();
        let mut flush = |builder: &mut PartBuilder| -> Result<()> {
            if builder.is_empty() {
                return Ok(());
            }
            let full = std::mem::replace(builder, PartBuilder::new(ordinal));
            let name = cut::part_name(&self.tag, ordinal, &attempt, parts.len());
            let length = full.seal_into(crypto, &mut sealed);
            shipped += length as u64;
            storage.create(ObjectKind::Cut, &name, &sealed.bytes()[..length])?;
            parts.push(name);
            Ok(())
        };
        for write in &cut.writes {
            builder.push(
                write.disk.vm,
                write.disk.disk,
                write.offset,
                write.length,
                write.bytes().map(Cow::Borrowed),
            );
            if builder.data_bytes() >= PART_BYTES {
                flush(&mut builder)?;
            }
        }
        // Resync ranges are read now, after the cut: they may hold later writes, which the
        // next cuts apply again in order.
        let mut resynced = 0u64;
        let mut buffer = Vec::new();
        for range in &cut.resync {
            let image = &self.images[range.disk.vm][range.disk.disk];
            let mut offset = range.offset;
            let end = range.offset + range.length;
            while offset < end {
                let length = (end - offset).min(RESYNC_READ_BYTES);
                buffer.resize(length as usize, 0);
                image
                    .read_at(offset, &mut buffer)
                    .map_err(|e| io(image.path(), "read for resync", e))?;
                // Data moves into the part (a zero read's memory serves the next read).
                let data = (!lifeboat_backup::backup::is_zero(&buffer))
                    .then(|| Cow::Owned(std::mem::take(&mut buffer)));
                builder.push(range.disk.vm, range.disk.disk, offset, length, data);
                resynced += length;
                if builder.data_bytes() >= PART_BYTES {
                    flush(&mut builder)?;
                }
                offset += length;
            }
        }
        flush(&mut builder)?;
        let commit = CutCommit {
            format: cut::FORMAT,
            group: self.group.clone(),
            ordinal,
            sequence: cut.sequence,
            time: time.to_string(),
            vms: self.vms.clone(),
            parts,
            consistent: cut.consistent,
            application_consistent,
            sender: self.incarnation.clone(),
        };
        let sealed = cut::seal_commit(crypto, &commit);
        let name = cut::commit_name(&self.tag, ordinal);
        storage.create(ObjectKind::Cut, &name, &sealed)?;
        Ok((ordinal, shipped + sealed.len() as u64, resynced))
    }
}
