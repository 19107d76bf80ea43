//! `backup`: one consistent recovery point of all disks of a VM.
//!
//! # Consistency
//!
//! Every disk is opened, and locked the way qemu locks images, before the first byte of
//! any disk is read; the point's time is taken at that moment. While the locks are held no
//! VM can write any of the disks, so the point is one cut across all of them. A disk that a
//! running VM holds is refused with an error, never copied torn.
//!
//! # Pipeline
//!
//! ```text
//! reader ──blocks──▶ workers (hash, zero check, dedup, compress, seal) ──chunks──▶ packer ──packs──▶ writer
//!  1 thread           N threads                                           this thread     1 thread (fsync)
//! ```
//!
//! All queues are bounded, so memory stays flat whatever the disk size: at most a few
//! read blocks, a few hundred chunk results, one pack being filled and two being written.
//!
//! # Commit
//!
//! The writer stores packs and, after every [`PACKS_PER_INDEX`] packs and at the end, a pack
//! index naming them. Then the disk indexes are written, then the manifest. Only then is the
//! change tracking moved on to the new point (the old point's dirty bitmaps removed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use lifeboat_directio::AlignedBuffer;
use lifeboat_disk::{DiskError, FileState, Format, ImageInfo, Range, SourceDisk, bitmap, inspect};
use lifeboat_repository::blob::{BlobEncoder, DEFAULT_COMPRESSION_LEVEL, MAXIMUM_GROUP_BYTES};
use lifeboat_repository::lease::host_name;
use lifeboat_repository::manifest::new_point_id;
use lifeboat_repository::pack::{
    DEFAULT_PACK_TARGET_BYTES, FinishedPack, GroupMember, PackBuilder,
};
use lifeboat_repository::pack_index::PackRecord;
use lifeboat_repository::{
    BackupStatistics, ChunkId, ChunkIndex, ChunkSet, Consistency, DiskEntry, DiskIndex, Manifest,
    Repository,
};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::plan::{Change, ChunkSource, DiskPlan, plan_disk};
use crate::progress::Progress;

/// Bytes read from a disk in one request.
const READ_BLOCK_BYTES: usize = 4 * 1024 * 1024;
/// A pack index is written after this many packs, bounding what a crash leaves unindexed
/// and what the writer holds in memory.
pub const PACKS_PER_INDEX: usize = 256;
/// Longest VM name accepted.
const MAXIMUM_VM_NAME_BYTES: usize = 128;

/// What to back up and how.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The VM the point belongs to.
    pub vm: String,
    /// All its disks; one point holds them all.
    pub disks: Vec<PathBuf>,
    /// zstd level for new chunks.
    pub compression_level: i32,
    /// Use change information (dirty bitmaps, file identity) and leave it for the next backup.
    /// Off means every disk is read in full and images are not touched.
    pub change_tracking: bool,
    /// Worker threads for hashing, compression and encryption.
    pub threads: usize,
    /// Per disk, the only ranges written since the VM's previous point, when the caller
    /// knows them (replication). Disks without a previous point are read in full.
    pub changed_ranges: Option<Vec<Vec<Range>>>,
    /// The point's time (RFC 3339) when it is not now: a replicated cut's time.
    pub time: Option<String>,
    /// What the point is consistent with.
    pub consistency: Consistency,
    /// Per disk, the format to record for it when it is not the image's own: a replica
    /// (raw) of a protected qcow2 disk is recorded as qcow2, so restores give back the
    /// format the VM used.
    pub recorded_formats: Option<Vec<String>>,
}

impl BackupOptions {
    /// Defaults for `vm` and `disks`: change tracking on, one worker per core.
    pub fn new(vm: impl Into<String>, disks: Vec<PathBuf>) -> BackupOptions {
        BackupOptions {
            vm: vm.into(),
            disks,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            change_tracking: true,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            changed_ranges: None,
            time: None,
            consistency: Consistency::Crash,
            recorded_formats: None,
        }
    }
}

/// What one disk cost.
#[derive(Clone, Debug, Serialize)]
pub struct DiskReport {
    pub name: String,
    pub format: String,
    pub virtual_size_bytes: u64,
    /// `full` (no usable change information), `dirty-bitmap` or `unchanged`.
    pub mode: &'static str,
    pub bytes_read: u64,
}

/// The result of a backup.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub point: String,
    pub vm: String,
    pub time: String,
    pub parent: Option<String>,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub seconds: f64,
    pub disks: Vec<DiskReport>,
}

/// Checks a VM name: printable, not empty, bounded.
pub fn validate_vm_name(vm: &str) -> Result<()> {
    if vm.is_empty() || vm.len() > MAXIMUM_VM_NAME_BYTES || vm.chars().any(char::is_control) {
        return Err(EngineError::Invalid(format!(
            "VM name '{}' must be 1 to {MAXIMUM_VM_NAME_BYTES} printable characters",
            vm.escape_debug()
        )));
    }
    Ok(())
}

fn disk_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| EngineError::Invalid(format!("{} is not a file name", path.display())))
}

fn fingerprint(state: &FileState) -> String {
    format!(
        "{}:{}:{}:{}",
        state.device, state.inode, state.size_bytes, state.change_time_ns
    )
}

fn bitmap_prefix(repository: &Repository) -> String {
    format!("lifeboat-{}-", &repository.config().repository_id[..8])
}

/// The new point's name, its base, and when the backup started.
struct PointIdentity {
    point: String,
    parent: Option<String>,
    started: Instant,
}

/// One disk being backed up.
struct DiskWork {
    name: String,
    info: ImageInfo,
    base: Option<(DiskEntry, DiskIndex)>,
    new_bitmap: Option<String>,
}

/// Makes one recovery point of `options.disks`.
pub fn backup(
    repository: &Repository,
    options: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    validate_vm_name(&options.vm)?;
    if options.disks.is_empty() {
        return Err(EngineError::Invalid(
            "a backup needs at least one disk".to_string(),
        ));
    }
    let mut names = Vec::new();
    for path in &options.disks {
        let name = disk_name(path)?;
        if names.contains(&name) {
            return Err(EngineError::Invalid(format!(
                "two disks are named '{name}'; a point keeps disks by file name, so give them distinct names"
            )));
        }
        names.push(name);
    }

    let _lease = repository.lock_vm_backup(&options.vm)?;
    let point = new_point_id();

    // Inspect every disk and find its base before touching anything.
    let dedup = repository.load_dedup_index()?;
    let points = repository.list_points()?;
    let base_point = points.points.iter().rev().find(|p| p.vm == options.vm);
    let mut work = Vec::new();
    for (path, name) in options.disks.iter().zip(&names) {
        let info = inspect(path)?;
        if info.is_marked_corrupt {
            return Err(DiskError::Unreadable {
                path: info.path,
                detail: "qemu has marked the image corrupt; repair it with 'qemu-img check -r all' first".to_string(),
            }
            .into());
        }
        lifeboat_disk::inspect::check(&info)?;
        let base = match base_point.and_then(|p| p.disks.iter().find(|d| &d.name == name)) {
            Some(entry) => match repository.read_disk_index(&entry.index) {
                Ok(index) => Some((entry.clone(), index)),
                Err(error) => {
                    tracing::warn!(disk = %name, %error, "the base point's disk index is unreadable; reading the disk in full");
                    None
                }
            },
            None => None,
        };
        work.push(DiskWork {
            name: name.clone(),
            info,
            base,
            new_bitmap: None,
        });
    }

    // Start change tracking for the new point before reading: writes that land after this
    // are recorded for the next backup.
    let mut refused = None;
    if options.change_tracking {
        for disk in work.iter_mut().filter(|d| d.info.format == Format::Qcow2) {
            let name = format!("{}{}", bitmap_prefix(repository), &point[..16]);
            match bitmap::add(&disk.info.path, &name, repository.chunk_size_bytes()) {
                Ok(()) => disk.new_bitmap = Some(name),
                Err(error @ DiskError::InUse { .. }) => {
                    refused = Some(error.into());
                    break;
                }
                Err(error) => {
                    tracing::warn!(disk = %disk.name, %error, "cannot add a dirty bitmap; the next backup of this disk reads it in full");
                }
            }
        }
    }

    let parent = base_point
        .filter(|_| work.iter().any(|d| d.base.is_some()))
        .map(|p| p.point.clone());
    let identity = PointIdentity {
        point: point.clone(),
        parent,
        started,
    };
    let result = match refused {
        Some(error) => Err(error),
        None => backup_locked(
            repository,
            options,
            progress,
            &identity,
            &mut work,
            &dedup.chunks,
        ),
    };
    // Change tracking follows the outcome: on success the old bitmaps go, on failure the new.
    for disk in &work {
        let prefix = bitmap_prefix(repository);
        let keep = if result.is_ok() {
            disk.new_bitmap.as_deref()
        } else {
            disk.base
                .as_ref()
                .and_then(|(entry, _)| entry.change_tracking_bitmap.as_deref())
        };
        if disk.info.format != Format::Qcow2 || !options.change_tracking {
            continue;
        }
        let current = match inspect(&disk.info.path) {
            Ok(info) => info.bitmaps,
            Err(error) => {
                tracing::warn!(disk = %disk.name, %error, "cannot list dirty bitmaps to tidy them");
                continue;
            }
        };
        for stale in current
            .iter()
            .filter(|b| b.name.starts_with(&prefix) && Some(b.name.as_str()) != keep)
        {
            if let Err(error) = bitmap::remove(&disk.info.path, &stale.name) {
                tracing::warn!(disk = %disk.name, bitmap = %stale.name, %error, "cannot remove an old dirty bitmap");
            }
        }
    }
    result
}

fn backup_locked(
    repository: &Repository,
    options: &BackupOptions,
    progress: &dyn Progress,
    identity: &PointIdentity,
    work: &mut [DiskWork],
    dedup: &ChunkIndex,
) -> Result<BackupReport> {
    let point = identity.point.as_str();
    let parent = identity.parent.clone();
    // Open (and lock) every disk before reading any: this is the consistent cut.
    let mut sources = Vec::new();
    for disk in work.iter() {
        let base_bitmap = disk
            .base
            .as_ref()
            .and_then(|(entry, _)| entry.change_tracking_bitmap.as_ref())
            .filter(|name| {
                options.change_tracking
                    && disk
                        .info
                        .bitmaps
                        .iter()
                        .any(|b| &b.name == *name && b.is_trustworthy)
            });
        sources.push(SourceDisk::open(
            disk.info.clone(),
            base_bitmap.map(String::as_str),
        )?);
    }
    let time = options
        .time
        .clone()
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));

    let chunk_size = repository.chunk_size_bytes();
    let mut plans = Vec::new();
    let mut reports = Vec::new();
    let mut fingerprints = Vec::new();
    for (number, (disk, source)) in work.iter().zip(sources.iter_mut()).enumerate() {
        let data = source.data_ranges()?;
        let state = source.file_state().map(|s| fingerprint(&s));
        let known = options
            .changed_ranges
            .as_ref()
            .and_then(|disks| disks.get(number));
        let (change, mode) = match (&disk.base, known, source.dirty_ranges()?) {
            _ if !options.change_tracking => (Change::Unknown, "full"),
            (Some(_), Some(known), _) => (Change::Dirty(known.clone()), "replicated"),
            (Some((entry, _)), None, _) if state.is_some() && entry.source_fingerprint == state => {
                (Change::Unchanged, "unchanged")
            }
            (Some(_), None, Some(dirty)) => (Change::Dirty(dirty), "dirty-bitmap"),
            _ => (Change::Unknown, "full"),
        };
        let plan = plan_disk(
            disk.info.virtual_size_bytes,
            chunk_size,
            &data,
            &change,
            disk.base.as_ref().map(|(_, index)| index),
            |id| dedup.contains(id),
        );
        let recorded = options
            .recorded_formats
            .as_ref()
            .and_then(|formats| formats.get(number).cloned());
        reports.push(DiskReport {
            name: disk.name.clone(),
            format: recorded.unwrap_or_else(|| disk.info.format.name().to_string()),
            virtual_size_bytes: disk.info.virtual_size_bytes,
            mode,
            bytes_read: plan.bytes_to_read(),
        });
        fingerprints.push(if options.change_tracking { state } else { None });
        plans.push(plan);
    }

    let total_to_read: u64 = plans.iter().map(DiskPlan::bytes_to_read).sum();
    progress.start("backup", total_to_read);
    let outcome = run_pipeline(repository, options, progress, &mut sources, &plans, dedup)?;
    progress.finish();
    // The cut is read: release the images before committing.
    drop(sources);

    let mut disks = Vec::new();
    for (((disk, index), report), fingerprint) in work
        .iter()
        .zip(&outcome.indexes)
        .zip(&reports)
        .zip(fingerprints)
    {
        let index_id = repository.write_disk_index(index)?;
        let allocated_chunks = index.chunks.iter().filter(|c| !c.is_zero()).count() as u64;
        disks.push(DiskEntry {
            name: disk.name.clone(),
            format: report.format.clone(),
            virtual_size_bytes: disk.info.virtual_size_bytes,
            index: index_id,
            source: disk.info.path.display().to_string(),
            allocated_bytes: (allocated_chunks * chunk_size as u64)
                .min(disk.info.virtual_size_bytes),
            change_tracking_bitmap: disk.new_bitmap.clone(),
            source_fingerprint: fingerprint,
        });
    }
    let seconds = identity.started.elapsed().as_secs_f64();
    let manifest = Manifest {
        point: point.to_string(),
        vm: options.vm.clone(),
        time: time.clone(),
        consistency: options.consistency,
        parent: parent.clone(),
        host: host_name(),
        lifeboat_version: env!("CARGO_PKG_VERSION").to_string(),
        disks,
        statistics: BackupStatistics {
            bytes_read: outcome.bytes_read,
            bytes_new: outcome.bytes_new,
            bytes_stored: outcome.bytes_stored,
            milliseconds: (seconds * 1000.0) as u64,
        },
    };
    repository.write_manifest(&manifest)?;
    Ok(BackupReport {
        point: point.to_string(),
        vm: options.vm.clone(),
        time,
        parent,
        bytes_read: outcome.bytes_read,
        bytes_new: outcome.bytes_new,
        bytes_stored: outcome.bytes_stored,
        seconds,
        disks: reports,
    })
}

/// A run of chunks read from one disk: the first `length` bytes of `data`. The buffer
/// comes from a pool and goes back to it once the block is processed.
struct ReadBlock {
    disk: usize,
    first_chunk: usize,
    data: AlignedBuffer,
    length: usize,
}

/// One chunk after hashing.
struct ChunkResult {
    disk: usize,
    chunk: usize,
    id: ChunkId,
    raw_bytes: u32,
}

/// Consecutive new chunks compressed and sealed together.
struct SealedGroup {
    sealed: Vec<u8>,
    group_bytes: u32,
    members: Vec<GroupMember>,
}

/// What a worker made of one read block.
struct BlockResult {
    chunks: Vec<ChunkResult>,
    groups: Vec<SealedGroup>,
}

struct PipelineOutcome {
    indexes: Vec<DiskIndex>,
    bytes_read: u64,
    bytes_new: u64,
    bytes_stored: u64,
}

/// True when every byte is zero; compares 16 bytes at a time.
pub fn is_zero(data: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe { data.align_to::<u128>() };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

fn run_pipeline(
    repository: &Repository,
    options: &BackupOptions,
    progress: &dyn Progress,
    sources: &mut [SourceDisk],
    plans: &[DiskPlan],
    dedup: &ChunkIndex,
) -> Result<PipelineOutcome> {
    let mut indexes: Vec<DiskIndex> = plans
        .iter()
        .map(|plan| DiskIndex {
            virtual_size_bytes: plan.virtual_size_bytes,
            chunk_size_bytes: plan.chunk_size_bytes,
            chunks: plan
                .chunks
                .iter()
                .map(|source| match source {
                    ChunkSource::Base(id) => *id,
                    _ => ChunkId::ZERO,
                })
                .collect(),
        })
        .collect();
    let abort = AtomicBool::new(false);
    let claimed = Mutex::new(ChunkSet::default());
    let crypto = repository.crypto();
    let threads = options.threads.clamp(1, 16);

    let (block_sender, block_receiver) = bounded::<ReadBlock>(threads);
    let (result_sender, result_receiver) = bounded::<BlockResult>(threads);
    let (pack_sender, pack_receiver) = bounded::<FinishedPack>(1);
    // Buffers circulate instead of being allocated (and faulted in) for every block or pack.
    let block_bytes = plans
        .iter()
        .map(|plan| plan.chunk_size_bytes as usize)
        .max()
        .unwrap_or(0)
        .max(READ_BLOCK_BYTES);
    let block_buffers = threads + 2;
    // Aligned, so that raw images are read without a page-cache copy.
    let (buffer_return, buffer_pool) = bounded::<AlignedBuffer>(block_buffers);
    for _ in 0..block_buffers {
        buffer_return
            .send(AlignedBuffer::new(block_bytes))
            .expect("the pool has room");
    }
    let (pack_return, pack_pool) = bounded::<Vec<u8>>(2);

    std::thread::scope(|scope| -> Result<PipelineOutcome> {
        let abort = &abort;
        let reader =
            scope.spawn(move || read_blocks(sources, plans, buffer_pool, block_sender, abort));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let blocks = block_receiver.clone();
            let results = result_sender.clone();
            let buffers = buffer_return.clone();
            let claimed = &claimed;
            let level = options.compression_level;
            workers.push(scope.spawn(move || {
                hash_and_seal(
                    crypto, dedup, claimed, level, plans, blocks, results, buffers,
                )
            }));
        }
        drop(block_receiver);
        drop(result_sender);
        drop(buffer_return);
        let writer =
            scope.spawn(move || write_packs(repository, pack_receiver, pack_return, abort));

        let packed = pack_results(
            crypto,
            progress,
            &mut indexes,
            result_receiver,
            (pack_sender, pack_pool),
            abort,
        );
        if packed.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        let read = reader.join().expect("the reader thread does not panic");
        for worker in workers {
            worker.join().expect("worker threads do not panic");
        }
        let written = writer.join().expect("the writer thread does not panic");
        // The first failure in pipeline order is the cause; later ones are consequences.
        let bytes_read = read?;
        written?;
        let (bytes_new, bytes_stored) = packed?;
        Ok(PipelineOutcome {
            indexes: std::mem::take(&mut indexes),
            bytes_read,
            bytes_new,
            bytes_stored,
        })
    })
}

fn read_blocks(
    sources: &mut [SourceDisk],
    plans: &[DiskPlan],
    buffers: Receiver<AlignedBuffer>,
    blocks: Sender<ReadBlock>,
    abort: &AtomicBool,
) -> Result<u64> {
    let mut bytes_read = 0u64;
    for (disk, (source, plan)) in sources.iter_mut().zip(plans).enumerate() {
        let chunk_size = plan.chunk_size_bytes as usize;
        let chunks_per_block = (READ_BLOCK_BYTES / chunk_size).max(1);
        let mut index = 0;
        while index < plan.chunks.len() {
            if abort.load(Ordering::Relaxed) {
                return Ok(bytes_read);
            }
            if plan.chunks[index] != ChunkSource::Read {
                index += 1;
                continue;
            }
            let first = index;
            while index < plan.chunks.len()
                && index - first < chunks_per_block
                && plan.chunks[index] == ChunkSource::Read
            {
                index += 1;
            }
            let offset = first as u64 * chunk_size as u64;
            let length: usize = (first..index).map(|i| plan.chunk_length(i) as usize).sum();
            let Ok(mut data) = buffers.recv() else {
                return Ok(bytes_read);
            };
            if let Err(error) = source.read(offset, &mut data.bytes_mut()[..length]) {
                abort.store(true, Ordering::SeqCst);
                return Err(error.into());
            }
            bytes_read += length as u64;
            if blocks
                .send(ReadBlock {
                    disk,
                    first_chunk: first,
                    data,
                    length,
                })
                .is_err()
            {
                return Ok(bytes_read);
            }
        }
    }
    Ok(bytes_read)
}

#[allow(clippy::too_many_arguments)]
fn hash_and_seal(
    crypto: &lifeboat_repository::Crypto,
    dedup: &ChunkIndex,
    claimed: &Mutex<ChunkSet>,
    level: i32,
    plans: &[DiskPlan],
    blocks: Receiver<ReadBlock>,
    results: Sender<BlockResult>,
    buffers: Sender<AlignedBuffer>,
) {
    let mut encoder = BlobEncoder::new(level);
    for block in blocks {
        let plan = &plans[block.disk];
        let mut result = BlockResult {
            chunks: Vec::new(),
            groups: Vec::new(),
        };
        // The run of consecutive new chunks being gathered into one group: bytes
        // `run_start..run_end` of the block.
        let mut run_start = 0usize;
        let mut run_end = 0usize;
        let mut members: Vec<GroupMember> = Vec::new();
        let data = &block.data.bytes()[..block.length];
        let mut at = 0usize;
        let mut chunk = block.first_chunk;
        while at <= data.len() {
            let finished = at == data.len();
            let (length, id, is_new) = if finished {
                (0, ChunkId::ZERO, false)
            } else {
                let length = plan.chunk_length(chunk) as usize;
                let bytes = &data[at..at + length];
                let id = if is_zero(bytes) {
                    ChunkId::ZERO
                } else {
                    crypto.chunk_id(bytes)
                };
                let is_new = !id.is_zero()
                    && !dedup.contains(&id)
                    && claimed.lock().expect("not poisoned").insert(id);
                (length, id, is_new)
            };
            // A chunk that is not new, the end of the block, or a full group seals the run.
            if !members.is_empty()
                && (!is_new || run_end - run_start + length > MAXIMUM_GROUP_BYTES)
            {
                let group = &data[run_start..run_end];
                result.groups.push(SealedGroup {
                    sealed: encoder.encode(crypto, group),
                    group_bytes: group.len() as u32,
                    members: std::mem::take(&mut members),
                });
            }
            if finished {
                break;
            }
            if is_new {
                if members.is_empty() {
                    run_start = at;
                }
                members.push(GroupMember {
                    chunk: id,
                    offset_in_group: (at - run_start) as u32,
                    raw_bytes: length as u32,
                });
                run_end = at + length;
            }
            result.chunks.push(ChunkResult {
                disk: block.disk,
                chunk,
                id,
                raw_bytes: length as u32,
            });
            at += length;
            chunk += 1;
        }
        let _ = buffers.send(block.data);
        if results.send(result).is_err() {
            return;
        }
    }
}

fn pack_results(
    crypto: &lifeboat_repository::Crypto,
    progress: &dyn Progress,
    indexes: &mut [DiskIndex],
    results: Receiver<BlockResult>,
    (packs, pack_buffers): (Sender<FinishedPack>, Receiver<Vec<u8>>),
    abort: &AtomicBool,
) -> Result<(u64, u64)> {
    let capacity = DEFAULT_PACK_TARGET_BYTES + MAXIMUM_GROUP_BYTES + 4096;
    let next_builder = || {
        pack_buffers
            .try_recv()
            .map(PackBuilder::reusing)
            .unwrap_or_else(|_| PackBuilder::with_capacity(capacity))
    };
    let mut builder = PackBuilder::with_capacity(capacity);
    let mut bytes_new = 0u64;
    let mut bytes_stored = 0u64;
    let writer_gone = || EngineError::Refused("the pack writer stopped".to_string());
    for result in results {
        for chunk in &result.chunks {
            indexes[chunk.disk].chunks[chunk.chunk] = chunk.id;
            progress.advance(chunk.raw_bytes as u64);
        }
        for group in result.groups {
            bytes_new += group.group_bytes as u64;
            bytes_stored += group.sealed.len() as u64;
            builder.add(&group.sealed, group.group_bytes, &group.members);
            if builder.len_bytes() >= DEFAULT_PACK_TARGET_BYTES {
                let full = std::mem::replace(&mut builder, next_builder());
                packs.send(full.finish(crypto)).map_err(|_| writer_gone())?;
            }
        }
        if abort.load(Ordering::Relaxed) {
            return Err(EngineError::Refused("backup aborted".to_string()));
        }
    }
    if !builder.is_empty() {
        packs
            .send(builder.finish(crypto))
            .map_err(|_| writer_gone())?;
    }
    Ok((bytes_new, bytes_stored))
}

fn write_packs(
    repository: &Repository,
    packs: Receiver<FinishedPack>,
    buffers: Sender<Vec<u8>>,
    abort: &AtomicBool,
) -> Result<()> {
    let mut pending: Vec<PackRecord> = Vec::new();
    let result = (|| {
        for pack in packs.iter() {
            pending.push(repository.write_pack(&pack)?);
            let _ = buffers.try_send(pack.bytes);
            if pending.len() >= PACKS_PER_INDEX {
                repository.write_pack_index(&pending)?;
                pending.clear();
            }
        }
        if !pending.is_empty() {
            repository.write_pack_index(&pending)?;
        }
        Ok(())
    })();
    if result.is_err() {
        abort.store(true, Ordering::SeqCst);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_handles_every_alignment() {
        let mut data = vec![0u8; 1000];
        for start in 0..17 {
            assert!(is_zero(&data[start..]));
        }
        for position in [0, 15, 16, 500, 999] {
            data[position] = 1;
            assert!(!is_zero(&data));
            data[position] = 0;
        }
    }

    #[test]
    fn vm_names_must_be_printable_and_bounded() {
        assert!(validate_vm_name("web-1").is_ok());
        assert!(validate_vm_name("").is_err());
        assert!(validate_vm_name("a\nb").is_err());
        assert!(validate_vm_name(&"x".repeat(200)).is_err());
    }
}
