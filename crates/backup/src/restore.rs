//! `restore`: write every disk of a point into a directory, bit-exact and sparse.
//!
//! # Guarantees
//!
//! * Every chunk is authenticated, decompressed and hashed before its bytes are written;
//!   a chunk that fails is read from another stored copy if one exists, and otherwise the
//!   restore stops with an error naming point, disk, offset and chunk.
//! * Disks are written under hidden temporary names and renamed into place only when
//!   complete; if any disk of the point fails, the disks already restored by this run are
//!   removed too, so a directory never holds a partial point that looks whole.
//! * Holes are never written: the target is created sparse and zero chunks stay holes.
//!
//! # Pipeline
//!
//! ```text
//! planner ──requests──▶ readers (3 at once) ──runs──▶ workers (open, decompress, hash,
//!                                                    place in the window) ──▶ two writers
//! ```
//!
//! A disk is restored window by window ([`WINDOW_BYTES`]), in disk order, a few windows
//! at a time. Within a window, chunks are read in storage order (each blob read and opened
//! once, packs front to back, adjacent blobs in one request); once every chunk of a window
//! is in place, the window goes to the disk as a few large writes, holes skipped. So the
//! target is written front to back in large pieces even when an incremental point's
//! chunks lie scattered over many packs. A group of chunks straddling two windows is read
//! for each.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use lifeboat_directio::AlignedBuffer as WindowBuffer;
use lifeboat_disk::{Format, TargetDisk, restored_file_name};
use lifeboat_repository::blob::chunk_from_group;
use lifeboat_repository::{
    BlobDecoder, ChunkId, ChunkIndex, ChunkLocation, DiskIndex, Manifest, ObjectKind, Repository,
    RepositoryError,
};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::progress::Progress;

/// Adjacent blobs of one pack are read together up to this size.
const READ_RUN_BYTES: u64 = 8 * 1024 * 1024;
/// Reads outstanding at once.
const READERS: usize = 3;
/// Disk bytes restored as one window.
const WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// Windows being filled or written at once (two are written at a time).
const WINDOWS_IN_FLIGHT: usize = 4;

/// Where and how to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Directory that receives the disks; created if missing.
    pub target_directory: PathBuf,
    /// Format of the restored disks; `None` keeps each disk's original format.
    pub format: Option<Format>,
    /// Worker threads for decryption and decompression.
    pub threads: usize,
}

/// One restored disk.
#[derive(Clone, Debug, Serialize)]
pub struct RestoredDisk {
    pub name: String,
    pub path: String,
    pub format: String,
    pub virtual_size_bytes: u64,
    pub bytes_written: u64,
}

/// The result of a restore.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub point: String,
    pub vm: String,
    pub disks: Vec<RestoredDisk>,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// A chunk to restore: its position on the disk and where it is stored.
#[derive(Clone, Copy)]
struct Wanted {
    chunk_index: usize,
    id: ChunkId,
    location: ChunkLocation,
}

/// Adjacent stored blobs to read with one request, for one window.
struct ReadRequest {
    window: Arc<Window>,
    pack: u32,
    start: u64,
    length: u64,
    chunks: Vec<Wanted>,
}

/// A request and what it read.
struct ReadRun {
    request: ReadRequest,
    bytes: Result<Vec<u8>, RepositoryError>,
}

/// A part of the disk being assembled in memory.
struct Window {
    /// The first chunk of the window.
    first_chunk: usize,
    /// Wanted (non-zero) chunk indexes of the window, ascending.
    chunks: Vec<usize>,
    /// The window's bytes (aligned, so large writes of them bypass the page cache
    /// without a copy); taken back for the next window once written.
    buffer: Mutex<Option<WindowBuffer>>,
    /// Chunks not placed yet; the worker placing the last one writes the window.
    remaining: AtomicUsize,
}

impl Window {
    /// Copies a chunk's bytes to its place in the window.
    fn place(&self, chunk_index: usize, chunk_size: usize, data: &[u8]) -> Result<()> {
        let mut buffer = self.buffer.lock().map_err(|_| worker_failed())?;
        let buffer = buffer.as_mut().ok_or_else(worker_failed)?;
        let at = (chunk_index - self.first_chunk) * chunk_size;
        buffer.bytes_mut()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Takes the buffer of the complete window.
    fn take_buffer(&self) -> Result<WindowBuffer> {
        self.buffer
            .lock()
            .map_err(|_| worker_failed())?
            .take()
            .ok_or_else(worker_failed)
    }
}

fn worker_failed() -> EngineError {
    EngineError::Refused("a restore worker failed".to_string())
}

/// Restores every disk of `manifest`.
pub fn restore(
    repository: &Repository,
    manifest: &Manifest,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    // Held to the end: no pack this chunk map names is deleted meanwhile.
    let _reading = repository.lock_read("restore");
    let index = repository.load_read_index()?.chunks;
    let quarantined: lifeboat_repository::ChunkSet = repository
        .list_quarantine()?
        .iter()
        .filter_map(|record| record.chunk_id())
        .collect();
    std::fs::create_dir_all(&options.target_directory).map_err(|e| {
        EngineError::Invalid(format!(
            "cannot create target directory {}: {e}",
            options.target_directory.display()
        ))
    })?;

    // Check everything that can be checked before writing a byte.
    let mut disks = Vec::new();
    for entry in &manifest.disks {
        let source_format = Format::from_name(&entry.format);
        let format = options.format.clone().unwrap_or(match &source_format {
            Format::Other(_) => Format::Raw,
            known => known.clone(),
        });
        let name = restored_file_name(&entry.name, &source_format, &format);
        let path = options.target_directory.join(&name);
        if path.exists() {
            return Err(lifeboat_disk::DiskError::TargetExists { path }.into());
        }
        let disk_index = repository.read_disk_index(&entry.index)?;
        if disk_index.virtual_size_bytes != entry.virtual_size_bytes {
            return Err(RepositoryError::damaged(
                repository.location(),
                ObjectKind::DiskIndex,
                &entry.index,
                "its size differs from the manifest's",
            )
            .into());
        }
        for (position, id) in disk_index.chunks.iter().enumerate() {
            if !id.is_zero() && !index.contains(id) {
                return Err(EngineError::RestoreDamaged {
                    point: manifest.point.clone(),
                    disk: entry.name.clone(),
                    offset: disk_index.chunk_range(position).0,
                    damage: Box::new(if quarantined.contains(id) {
                        RepositoryError::QuarantinedChunk {
                            location: repository.location(),
                            chunk: *id,
                        }
                    } else {
                        RepositoryError::MissingChunk {
                            location: repository.location(),
                            chunk: *id,
                        }
                    }),
                });
            }
        }
        disks.push((entry, format, path, disk_index));
    }

    let total: u64 = disks
        .iter()
        .map(|(_, _, _, d)| {
            d.chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.is_zero())
                .map(|(i, _)| d.chunk_range(i).1 as u64)
                .sum::<u64>()
        })
        .sum();
    progress.start("restore", total);
    let mut restored: Vec<RestoredDisk> = Vec::new();
    let mut bytes_written = 0u64;
    for (entry, format, path, disk_index) in &disks {
        let result = restore_disk(
            repository,
            manifest,
            &entry.name,
            &index,
            disk_index,
            format,
            path,
            options.threads,
            progress,
        );
        match result {
            Ok(written) => {
                bytes_written += written;
                restored.push(RestoredDisk {
                    name: entry.name.clone(),
                    path: path.display().to_string(),
                    format: format.name().to_string(),
                    virtual_size_bytes: entry.virtual_size_bytes,
                    bytes_written: written,
                });
            }
            Err(error) => {
                for disk in &restored {
                    let _ = std::fs::remove_file(&disk.path);
                }
                return Err(error);
            }
        }
    }
    progress.finish();
    Ok(RestoreReport {
        point: manifest.point.clone(),
        vm: manifest.vm.clone(),
        disks: restored,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn restore_disk(
    repository: &Repository,
    manifest: &Manifest,
    disk_name: &str,
    index: &ChunkIndex,
    disk_index: &DiskIndex,
    format: &Format,
    path: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<u64> {
    let target = TargetDisk::create(path, format, disk_index.virtual_size_bytes)?;
    let wanted: Vec<Wanted> = disk_index
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, id)| !id.is_zero())
        .map(|(chunk_index, id)| Wanted {
            chunk_index,
            id: *id,
            location: index.locate(id).expect("presence checked before writing"),
        })
        .collect();
    let threads = threads.clamp(1, 16);
    let abort = AtomicBool::new(false);
    let chunk_size = disk_index.chunk_size_bytes as u64;
    let chunks_per_window = (WINDOW_BYTES / chunk_size).max(1) as usize;
    let (run_sender, run_receiver) = bounded::<ReadRun>(threads * 2);
    let (done_sender, done_receiver) = bounded::<Result<Arc<Window>>>(WINDOWS_IN_FLIGHT);
    // Buffers of windows; a window takes one before its first read and gives it back once
    // written, so at most WINDOWS_IN_FLIGHT windows are in memory.
    let (free_sender, free_receiver) = bounded::<WindowBuffer>(WINDOWS_IN_FLIGHT);
    for _ in 0..WINDOWS_IN_FLIGHT {
        let _ = free_sender.send(WindowBuffer::new(chunks_per_window * chunk_size as usize));
    }
    let place = Place {
        point: &manifest.point,
        disk: disk_name,
        disk_index,
    };

    let written = std::thread::scope(|scope| -> Result<u64> {
        let abort = &abort;
        let wanted = &wanted;
        let place = &place;
        let free_receiver = &free_receiver;
        let (request_sender, request_receiver) = bounded::<ReadRequest>(READERS);
        scope.spawn(move || {
            plan_windows(
                wanted,
                chunks_per_window,
                free_receiver,
                request_sender,
                abort,
            )
        });
        for _ in 0..READERS {
            let requests = request_receiver.clone();
            let runs = run_sender.clone();
            scope.spawn(move || read_ranges(repository, index, requests, runs, abort));
        }
        drop(request_receiver);
        drop(run_sender);
        for _ in 0..threads {
            let runs = run_receiver.clone();
            let done = done_sender.clone();
            scope.spawn(move || fill_windows(repository, index, place, runs, done, abort));
        }
        drop(run_receiver);
        drop(done_sender);
        // This thread and one more write each window once complete, while the workers
        // fill the next: two writes in flight keep the disk busier than one.
        let (target, free_sender) = (&target, &free_sender);
        let write_windows = move |done: Receiver<Result<Arc<Window>>>| -> Result<u64> {
            let mut total = 0u64;
            for item in done {
                let written = item.and_then(|window| {
                    let buffer = window.take_buffer()?;
                    let written = write_window(target, disk_index, &window, &buffer);
                    let _ = free_sender.send(buffer);
                    written
                });
                match written {
                    Ok(bytes) => {
                        total += bytes;
                        progress.advance(bytes);
                    }
                    Err(error) => {
                        abort.store(true, Ordering::SeqCst);
                        return Err(error);
                    }
                }
            }
            Ok(total)
        };
        let second = {
            let done = done_receiver.clone();
            scope.spawn(move || write_windows(done))
        };
        let mine = write_windows(done_receiver);
        let theirs = second.join().unwrap_or_else(|_| {
            Err(EngineError::Refused(
                "a restore writer thread failed".to_string(),
            ))
        });
        Ok(mine? + theirs?)
    })?;
    let expected: u64 = wanted
        .iter()
        .map(|w| disk_index.chunk_range(w.chunk_index).1 as u64)
        .sum();
    if written != expected {
        return Err(EngineError::Refused(format!(
            "restore of disk '{disk_name}' wrote {written} of {expected} bytes; nothing was kept"
        )));
    }
    target.finish()?;
    Ok(written)
}

/// Which disk of which point is being restored, for errors.
struct Place<'a> {
    point: &'a str,
    disk: &'a str,
    disk_index: &'a DiskIndex,
}

impl Place<'_> {
    fn damaged(&self, chunk_index: usize, source: RepositoryError) -> EngineError {
        EngineError::RestoreDamaged {
            point: self.point.to_string(),
            disk: self.disk.to_string(),
            offset: self.disk_index.chunk_range(chunk_index).0,
            damage: Box::new(source),
        }
    }
}

/// Plans the reads window by window in disk order; within a window, in storage order
/// with adjacent blobs of one pack in one request.
fn plan_windows(
    wanted: &[Wanted],
    chunks_per_window: usize,
    free: &Receiver<WindowBuffer>,
    requests: Sender<ReadRequest>,
    abort: &AtomicBool,
) {
    // `wanted` is in disk order.
    for in_window in wanted
        .chunk_by(|a, b| a.chunk_index / chunks_per_window == b.chunk_index / chunks_per_window)
    {
        if abort.load(Ordering::Relaxed) {
            return;
        }
        // Wait for a free buffer, unless the restore is being abandoned.
        let buffer = loop {
            match free.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(buffer) => break buffer,
                Err(RecvTimeoutError::Timeout) if !abort.load(Ordering::Relaxed) => {}
                Err(_) => return,
            }
        };
        let window = Arc::new(Window {
            first_chunk: in_window[0].chunk_index / chunks_per_window * chunks_per_window,
            chunks: in_window.iter().map(|w| w.chunk_index).collect(),
            buffer: Mutex::new(Some(buffer)),
            remaining: AtomicUsize::new(in_window.len()),
        });
        let mut order = in_window.to_vec();
        order.sort_by_key(|w| {
            (
                w.location.pack,
                w.location.blob_offset,
                w.location.offset_in_group,
                w.chunk_index,
            )
        });
        let mut position = 0;
        while position < order.len() {
            if abort.load(Ordering::Relaxed) {
                return;
            }
            let first = order[position];
            let start = first.location.blob_offset as u64;
            let mut last_blob = first.location.blob_offset;
            let mut end = start + first.location.blob_bytes as u64;
            let mut chunks = vec![first];
            position += 1;
            // Take following chunks from the same blob, or from the blob right after it.
            while position < order.len() {
                let next = order[position].location;
                let same_blob = next.pack == first.location.pack && next.blob_offset == last_blob;
                let adjacent = next.pack == first.location.pack
                    && next.blob_offset as u64 == end
                    && end - start < READ_RUN_BYTES;
                if !same_blob && !adjacent {
                    break;
                }
                if adjacent {
                    last_blob = next.blob_offset;
                    end += next.blob_bytes as u64;
                }
                chunks.push(order[position]);
                position += 1;
            }
            let request = ReadRequest {
                window: Arc::clone(&window),
                pack: first.location.pack,
                start,
                length: end - start,
                chunks,
            };
            if requests.send(request).is_err() {
                return;
            }
        }
    }
}

/// Reads requested ranges; several of these run at once, so the storage always has reads
/// outstanding (one direct read at a time leaves a disk idle between requests).
fn read_ranges(
    repository: &Repository,
    index: &ChunkIndex,
    requests: Receiver<ReadRequest>,
    runs: Sender<ReadRun>,
    abort: &AtomicBool,
) {
    for request in requests {
        if abort.load(Ordering::Relaxed) {
            return;
        }
        let bytes = repository
            .storage()
            .read_range(
                ObjectKind::Pack,
                index.pack_name(request.pack),
                request.start,
                request.length,
            )
            .map_err(RepositoryError::from);
        if runs.send(ReadRun { request, bytes }).is_err() {
            return;
        }
    }
}

/// Writes a complete window: one write per run of consecutive non-zero chunks.
fn write_window(
    target: &TargetDisk,
    disk_index: &DiskIndex,
    window: &Window,
    buffer: &WindowBuffer,
) -> Result<u64> {
    let bytes = buffer.bytes();
    let mut total = 0u64;
    for run in window.chunks.chunk_by(|a, b| *b == *a + 1) {
        let (offset, _) = disk_index.chunk_range(run[0]);
        let (last_offset, last_length) = disk_index.chunk_range(run[run.len() - 1]);
        let length = (last_offset + last_length as u64 - offset) as usize;
        let from = (run[0] - window.first_chunk) * disk_index.chunk_size_bytes as usize;
        target.write(offset, &bytes[from..from + length])?;
        total += length as u64;
    }
    Ok(total)
}

/// Opens each blob of each run once (in place, in the run's buffer), checks every chunk
/// taken from it and copies it into its window; a chunk whose copy fails is read again the
/// careful way. A window whose last chunk is placed goes to the writer.
fn fill_windows(
    repository: &Repository,
    index: &ChunkIndex,
    place: &Place,
    runs: Receiver<ReadRun>,
    done: Sender<Result<Arc<Window>>>,
    abort: &AtomicBool,
) {
    let mut decoder = BlobDecoder::new();
    for run in runs {
        if abort.load(Ordering::Relaxed) {
            return;
        }
        let ReadRun { request, bytes } = run;
        let placed = place_run(repository, index, place, &mut decoder, &request, bytes.ok());
        let window = request.window;
        let result = match placed {
            Ok(placed) if window.remaining.fetch_sub(placed, Ordering::AcqRel) != placed => {
                continue;
            }
            Ok(_) => Ok(window),
            Err(error) => Err(error),
        };
        let is_error = result.is_err();
        if done.send(result).is_err() || is_error {
            return;
        }
    }
}

/// Places the chunks of one run into their window; returns how many were placed.
fn place_run(
    repository: &Repository,
    index: &ChunkIndex,
    place: &Place,
    decoder: &mut BlobDecoder,
    request: &ReadRequest,
    mut bytes: Option<Vec<u8>>,
) -> Result<usize> {
    let window = &request.window;
    let start = request.start;
    let crypto = repository.crypto();
    let chunk_size = place.disk_index.chunk_size_bytes as usize;
    let mut failed: Vec<Wanted> = Vec::new();
    let mut placed = 0usize;
    for blob in request
        .chunks
        .chunk_by(|a, b| a.location.blob_offset == b.location.blob_offset)
    {
        let first = blob[0].location;
        debug_assert_eq!(first.pack, request.pack);
        let group = bytes.as_mut().and_then(|bytes| {
            let at = (first.blob_offset as u64 - start) as usize;
            let sealed = &mut bytes[at..at + first.blob_bytes as usize];
            decoder.open(crypto, sealed, first.group_bytes).ok()
        });
        let Some(group) = group else {
            failed.extend_from_slice(blob);
            continue;
        };
        for wanted in blob {
            match chunk_from_group(
                crypto,
                &wanted.id,
                group,
                wanted.location.offset_in_group,
                wanted.location.raw_bytes,
            ) {
                Ok(data) => {
                    window.place(wanted.chunk_index, chunk_size, data)?;
                    placed += 1;
                }
                Err(_) => failed.push(*wanted),
            }
        }
    }
    // Every stored copy in turn, and an error naming chunk and pack if none is good.
    for wanted in &failed {
        let data = repository
            .read_chunk(index, &wanted.id, decoder)
            .map_err(|error| place.damaged(wanted.chunk_index, error))?;
        window.place(wanted.chunk_index, chunk_size, &data)?;
        placed += 1;
    }
    Ok(placed)
}
