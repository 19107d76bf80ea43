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
//! reader (pack ranges in storage order, coalesced) ──▶ workers (open, decompress, hash) ──▶ this thread (write)
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
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

/// Adjacent stored blobs read with one request.
struct ReadRun {
    pack: u32,
    start: u64,
    chunks: Vec<Wanted>,
    bytes: Result<Vec<u8>, RepositoryError>,
}

/// Restores every disk of `manifest`.
pub fn restore(
    repository: &Repository,
    manifest: &Manifest,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
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
    let mut wanted: Vec<Wanted> = disk_index
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
    // In storage order: every blob is read and opened once, packs are read front to back,
    // and the target takes writes in any order. (In disk order, an incremental's scattered
    // new chunks would interleave with their neighbours' older groups and reopen them.)
    wanted.sort_by_key(|w| {
        (
            w.location.pack,
            w.location.blob_offset,
            w.location.offset_in_group,
            w.chunk_index,
        )
    });
    let threads = threads.clamp(1, 16);
    let abort = AtomicBool::new(false);
    let (run_sender, run_receiver) = bounded::<ReadRun>(threads * 2);
    let (written_sender, written_receiver) = bounded::<Result<u64>>(threads * 8);
    let place = Place {
        point: &manifest.point,
        disk: disk_name,
        disk_index,
    };

    let written = std::thread::scope(|scope| -> Result<u64> {
        let abort = &abort;
        let wanted = &wanted;
        let target = &target;
        let place = &place;
        scope.spawn(move || read_runs(repository, index, wanted, run_sender, abort));
        for _ in 0..threads {
            let runs = run_receiver.clone();
            let written = written_sender.clone();
            scope.spawn(move || write_runs(repository, index, target, place, runs, written, abort));
        }
        drop(run_receiver);
        drop(written_sender);
        let mut total = 0u64;
        for item in written_receiver {
            match item {
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

fn read_runs(
    repository: &Repository,
    index: &ChunkIndex,
    wanted: &[Wanted],
    runs: Sender<ReadRun>,
    abort: &AtomicBool,
) {
    let mut position = 0;
    while position < wanted.len() && !abort.load(Ordering::Relaxed) {
        let first = wanted[position];
        let start = first.location.blob_offset as u64;
        let mut last_blob = first.location.blob_offset;
        let mut end = start + first.location.blob_bytes as u64;
        let mut chunks = vec![first];
        position += 1;
        // Take following chunks from the same blob, or from the blob right after it.
        while position < wanted.len() {
            let next = wanted[position].location;
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
            chunks.push(wanted[position]);
            position += 1;
        }
        let bytes = repository
            .storage()
            .read_range(
                ObjectKind::Pack,
                index.pack_name(first.location.pack),
                start,
                end - start,
            )
            .map_err(RepositoryError::from);
        if runs
            .send(ReadRun {
                pack: first.location.pack,
                start,
                chunks,
                bytes,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Opens each blob of each run once (in place, in the run's buffer), checks every chunk
/// taken from it, and writes runs of chunks that are consecutive both in the group and on
/// the disk with one write each. A chunk whose copy fails is read again the careful way.
fn write_runs(
    repository: &Repository,
    index: &ChunkIndex,
    target: &TargetDisk,
    place: &Place,
    runs: Receiver<ReadRun>,
    written: Sender<Result<u64>>,
    abort: &AtomicBool,
) {
    let mut decoder = BlobDecoder::new();
    let crypto = repository.crypto();
    let chunk_size = place.disk_index.chunk_size_bytes as u64;
    let check = |group: &[u8], wanted: &Wanted| {
        chunk_from_group(
            crypto,
            &wanted.id,
            group,
            wanted.location.offset_in_group,
            wanted.location.raw_bytes,
        )
        .is_ok()
    };
    for run in runs {
        let ReadRun {
            pack,
            start,
            chunks,
            bytes,
        } = run;
        let mut bytes = bytes.ok();
        for blob in chunks.chunk_by(|a, b| a.location.blob_offset == b.location.blob_offset) {
            if abort.load(Ordering::Relaxed) {
                return;
            }
            let first = blob[0].location;
            debug_assert_eq!(first.pack, pack);
            let mut failed: Vec<Wanted> = Vec::new();
            let result = (|| -> Result<u64> {
                let mut total = 0u64;
                let group = bytes.as_mut().and_then(|bytes| {
                    let at = (first.blob_offset as u64 - start) as usize;
                    let sealed = &mut bytes[at..at + first.blob_bytes as usize];
                    decoder.open(crypto, sealed, first.group_bytes).ok()
                });
                let Some(group) = group else {
                    failed.extend_from_slice(blob);
                    return Ok(0);
                };
                let mut position = 0;
                while position < blob.len() {
                    let first_chunk = blob[position];
                    if !check(group, &first_chunk) {
                        failed.push(first_chunk);
                        position += 1;
                        continue;
                    }
                    // Extend over following chunks adjacent in the group and on the disk.
                    let mut end = position + 1;
                    while end < blob.len() {
                        let previous = blob[end - 1];
                        let next = blob[end];
                        let adjacent = next.chunk_index == previous.chunk_index + 1
                            && next.location.offset_in_group
                                == previous.location.offset_in_group + previous.location.raw_bytes;
                        if !adjacent || !check(group, &next) {
                            break;
                        }
                        end += 1;
                    }
                    let last = blob[end - 1].location;
                    let from = first_chunk.location.offset_in_group as usize;
                    let to = (last.offset_in_group + last.raw_bytes) as usize;
                    target.write(
                        first_chunk.chunk_index as u64 * chunk_size,
                        &group[from..to],
                    )?;
                    total += (to - from) as u64;
                    position = end;
                }
                Ok(total)
            })()
            .and_then(|mut total| {
                // Every stored copy in turn, and an error naming chunk and pack if none is good.
                for wanted in &failed {
                    let data = repository
                        .read_chunk(index, &wanted.id, &mut decoder)
                        .map_err(|error| place.damaged(wanted.chunk_index, error))?;
                    target.write(wanted.chunk_index as u64 * chunk_size, &data)?;
                    total += data.len() as u64;
                }
                Ok(total)
            });
            let is_error = result.is_err();
            if written.send(result).is_err() || is_error {
                return;
            }
        }
    }
}
