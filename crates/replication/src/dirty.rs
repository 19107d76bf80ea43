//! On-disk format of a protected disk's persistent dirty map: which 64 KiB blocks of the
//! image may hold writes the recovery region does not have yet. It is what lets a restarted
//! `lifeboat protect` (after kill -9, a crash of the capture process, or a stop) resync only
//! what changed instead of the whole disk.
//!
//! ```text
//! offset 0      "lifeboat-dirty\n" then JSON {format, granularity, size_bytes, binding,
//!               boot_id}, zero-padded to 4096 bytes
//! 4096          map 0: one bit per block, padded to a multiple of 4096 bytes
//! 4096 + M      map 1: the same
//! ```
//!
//! # Rules
//!
//! * A write sets its blocks in both maps *before* it reaches the image, and is "in flight"
//!   until it is in the journal. Set bits are written to the file at once (one `pwrite` when
//!   a block becomes dirty): they are in the page cache, so they survive the death of the
//!   process, though not necessarily of the host.
//! * Ranges still to resync are set in both maps again at every cut.
//! * After the commit of a cut, one map is cleared — alternately map 0 and map 1 — keeping
//!   the blocks of writes in flight. A write not shipped yet was set in both maps after the
//!   last-but-one commit, or is in flight, so its bit survives in at least one map until a
//!   commit ships it.
//! * On restart, the union of both maps is what to resync. A map written under another boot
//!   of the host (its page cache may not have reached the disk), or for another disk, group
//!   or recovery repository (`binding`), is not trusted: the whole allocated disk is synced.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{ReplicationError, Result, io};

/// `(offset, length)` byte ranges.
pub type ByteRanges = Vec<(u64, u64)>;

/// Bytes per bit.
pub const GRANULARITY: u64 = 64 * 1024;
const MAGIC: &[u8] = b"lifeboat-dirty\n";
const HEADER_BYTES: u64 = 4096;
const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    format: u32,
    granularity: u64,
    size_bytes: u64,
    /// What the map tracks: recovery repository, group, VM and disk.
    binding: String,
    /// `/proc/sys/kernel/random/boot_id` when the map was opened.
    boot_id: String,
}

/// The host's boot id (empty where there is none).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The dirty map of one disk.
#[derive(Debug)]
pub struct DirtyMap {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    size_bytes: u64,
    /// Bytes of one map in the file (padded).
    map_bytes: u64,
    maps: [Vec<u8>; 2],
    /// Block ranges `[first, end)` of writes between `begin` and `end`.
    in_flight: Vec<(u64, u64)>,
}

/// Blocks `[first, end)` covering the byte range.
fn blocks(offset: u64, length: u64) -> (u64, u64) {
    (
        offset / GRANULARITY,
        (offset + length.max(1)).div_ceil(GRANULARITY),
    )
}

impl Inner {
    fn map_offset(&self, map: usize) -> u64 {
        HEADER_BYTES + map as u64 * self.map_bytes
    }

    /// Sets blocks `[first, end)` in `map`; returns the changed byte span.
    fn set(&mut self, map: usize, first: u64, end: u64) -> Option<(usize, usize)> {
        let bits = &mut self.maps[map];
        let mut span: Option<(usize, usize)> = None;
        for block in first..end.min(bits.len() as u64 * 8) {
            let byte = (block / 8) as usize;
            let bit = 1u8 << (block % 8);
            if bits[byte] & bit == 0 {
                bits[byte] |= bit;
                span = Some(match span {
                    None => (byte, byte + 1),
                    Some((start, _)) => (start, byte + 1),
                });
            }
        }
        span
    }

    fn write_span(&self, path: &Path, map: usize, span: (usize, usize)) -> Result<()> {
        self.file
            .write_all_at(
                &self.maps[map][span.0..span.1],
                self.map_offset(map) + span.0 as u64,
            )
            .map_err(|e| io(path, "write the dirty map", e))
    }

    fn mark(&mut self, path: &Path, offset: u64, length: u64) -> Result<()> {
        let (first, end) = blocks(offset, length);
        for map in 0..2 {
            if let Some(span) = self.set(map, first, end) {
                self.write_span(path, map, span)?;
            }
        }
        Ok(())
    }
}

impl DirtyMap {
    /// Opens (or creates) the map at `path` for a disk of `size_bytes` tracked for
    /// `binding`. Returns the map and, when the file is trusted, the byte ranges it holds
    /// dirty; `None` means the whole disk must be synced (a new map, or one not trusted).
    pub fn open(
        path: &Path,
        size_bytes: u64,
        binding: &str,
    ) -> Result<(DirtyMap, Option<ByteRanges>)> {
        let block_count = size_bytes.div_ceil(GRANULARITY);
        let map_bytes = block_count.div_ceil(8).div_ceil(4096).max(1) * 4096;
        let header = Header {
            format: FORMAT,
            granularity: GRANULARITY,
            size_bytes,
            binding: binding.to_string(),
            boot_id: boot_id(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, "create", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, "open the dirty map", e))?;
        let mut inner = Inner {
            file,
            size_bytes,
            map_bytes,
            maps: [vec![0u8; map_bytes as usize], vec![0u8; map_bytes as usize]],
            in_flight: Vec::new(),
        };
        let trusted = Self::read_trusted(&inner, &header)?;
        let dirty = match trusted {
            Some(maps) => {
                inner.maps = maps;
                Some(Self::union(&inner))
            }
            None => None,
        };
        // Write the header (this boot's id) and the maps as they stand.
        let mut bytes = MAGIC.to_vec();
        bytes.extend(serde_json::to_vec(&header).expect("headers serialize"));
        if bytes.len() as u64 > HEADER_BYTES {
            return Err(ReplicationError::Invalid(format!(
                "the names of {} are too long for its dirty map",
                binding
            )));
        }
        bytes.resize(HEADER_BYTES as usize, 0);
        bytes.extend_from_slice(&inner.maps[0]);
        bytes.extend_from_slice(&inner.maps[1]);
        inner
            .file
            .set_len(bytes.len() as u64)
            .and_then(|()| inner.file.write_all_at(&bytes, 0))
            .and_then(|()| inner.file.sync_all())
            .map_err(|e| io(path, "write the dirty map", e))?;
        Ok((
            DirtyMap {
                path: path.to_path_buf(),
                inner: Mutex::new(inner),
            },
            dirty,
        ))
    }

    /// The maps in the file, if it is one this disk can trust.
    fn read_trusted(inner: &Inner, header: &Header) -> Result<Option<[Vec<u8>; 2]>> {
        let length = inner.file.metadata().map(|m| m.len()).unwrap_or(0);
        if length != HEADER_BYTES + 2 * inner.map_bytes {
            return Ok(None);
        }
        let mut head = vec![0u8; HEADER_BYTES as usize];
        if inner.file.read_exact_at(&mut head, 0).is_err() || !head.starts_with(MAGIC) {
            return Ok(None);
        }
        let json = &head[MAGIC.len()..];
        let json = &json[..json.iter().position(|&b| b == 0).unwrap_or(json.len())];
        let Ok(found) = serde_json::from_slice::<Header>(json) else {
            return Ok(None);
        };
        if found != *header || found.boot_id.is_empty() {
            return Ok(None);
        }
        let mut maps = [
            vec![0u8; inner.map_bytes as usize],
            vec![0u8; inner.map_bytes as usize],
        ];
        for (index, map) in maps.iter_mut().enumerate() {
            if inner
                .file
                .read_exact_at(map, inner.map_offset(index))
                .is_err()
            {
                return Ok(None);
            }
        }
        Ok(Some(maps))
    }

    /// Byte ranges dirty in either map, merged.
    fn union(inner: &Inner) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (byte, (a, b)) in inner.maps[0].iter().zip(&inner.maps[1]).enumerate() {
            let bits = a | b;
            if bits == 0 {
                continue;
            }
            for bit in 0..8 {
                if bits & (1 << bit) == 0 {
                    continue;
                }
                let offset = (byte as u64 * 8 + bit) * GRANULARITY;
                if offset >= inner.size_bytes {
                    break;
                }
                let length = GRANULARITY.min(inner.size_bytes - offset);
                match ranges.last_mut() {
                    Some((start, len)) if *start + *len == offset => *len += length,
                    _ => ranges.push((offset, length)),
                }
            }
        }
        ranges
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the dirty map lock is never poisoned: its holders do not panic")
    }

    /// A write to `[offset, offset + length)` is about to reach the image: its blocks are
    /// set in both maps and it is in flight until [`DirtyMap::end`].
    pub fn begin(&self, offset: u64, length: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.mark(&self.path, offset, length)?;
        inner.in_flight.push(blocks(offset, length));
        Ok(())
    }

    /// The write begun with the same range is in the journal (or failed).
    pub fn end(&self, offset: u64, length: u64) {
        let mut inner = self.lock();
        let range = blocks(offset, length);
        if let Some(position) = inner.in_flight.iter().position(|r| *r == range) {
            inner.in_flight.swap_remove(position);
        }
    }

    /// Sets `[offset, offset + length)` in both maps (ranges still to resync).
    pub fn mark(&self, offset: u64, length: u64) -> Result<()> {
        self.lock().mark(&self.path, offset, length)
    }

    /// Clears map `map` (0 or 1) after a commit, keeping the blocks of writes in flight.
    pub fn clear(&self, map: usize) -> Result<()> {
        let mut inner = self.lock();
        let empty = vec![0u8; inner.map_bytes as usize];
        let old = std::mem::replace(&mut inner.maps[map], empty);
        for (first, end) in inner.in_flight.clone() {
            inner.set(map, first, end);
        }
        let new = &inner.maps[map];
        let first = old.iter().zip(new).position(|(a, b)| a != b);
        let last = old.iter().zip(new).rposition(|(a, b)| a != b);
        if let (Some(first), Some(last)) = (first, last) {
            inner.write_span(&self.path, map, (first, last + 1))?;
        }
        Ok(())
    }

    /// Byte ranges dirty now (tests and status).
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        Self::union(&self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 10 * GRANULARITY + 100;

    #[test]
    fn a_new_map_asks_for_a_full_sync_and_a_reopened_one_for_its_dirty_blocks() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("disk.dirty");
        let (map, dirty) = DirtyMap::open(&path, SIZE, "repo/group/vm/disk").unwrap();
        assert_eq!(dirty, None);
        map.begin(GRANULARITY + 10, 20).unwrap();
        map.end(GRANULARITY + 10, 20);
        map.mark(10 * GRANULARITY, 50).unwrap();
        drop(map);
        let (map, dirty) = DirtyMap::open(&path, SIZE, "repo/group/vm/disk").unwrap();
        assert_eq!(
            dirty,
            Some(vec![(GRANULARITY, GRANULARITY), (10 * GRANULARITY, 100)])
        );
        // Cleared in both maps: nothing left.
        map.clear(0).unwrap();
        map.clear(1).unwrap();
        drop(map);
        let (_, dirty) = DirtyMap::open(&path, SIZE, "repo/group/vm/disk").unwrap();
        assert_eq!(dirty, Some(vec![]));
        // Another binding or size is not trusted.
        let (_, dirty) = DirtyMap::open(&path, SIZE, "other-repo/group/vm/disk").unwrap();
        assert_eq!(dirty, None);
        let (_, dirty) = DirtyMap::open(&path, SIZE * 2, "other-repo/group/vm/disk").unwrap();
        assert_eq!(dirty, None);
    }

    #[test]
    fn a_write_survives_one_clear_and_writes_in_flight_survive_both() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("disk.dirty");
        let (map, _) = DirtyMap::open(&path, SIZE, "b").unwrap();
        map.begin(0, 4096).unwrap();
        map.end(0, 4096);
        map.clear(0).unwrap();
        assert_eq!(map.dirty_ranges(), vec![(0, GRANULARITY)]);
        map.clear(1).unwrap();
        assert!(map.dirty_ranges().is_empty());
        map.begin(3 * GRANULARITY, 4096).unwrap();
        map.clear(0).unwrap();
        map.clear(1).unwrap();
        assert_eq!(map.dirty_ranges(), vec![(3 * GRANULARITY, GRANULARITY)]);
        map.end(3 * GRANULARITY, 4096);
        // What the file says matches memory.
        drop(map);
        let (_, dirty) = DirtyMap::open(&path, SIZE, "b").unwrap();
        assert_eq!(dirty, Some(vec![(3 * GRANULARITY, GRANULARITY)]));
    }
}
