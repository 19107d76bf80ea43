//! Deciding, per chunk, where a backup takes it from. Pure: no I/O.
//!
//! Given what is known about a disk now (which ranges hold data, which changed since the
//! base point) and the base point's disk index, each chunk is
//!
//! * `Zero` — no data there: a hole in the index, nothing read or stored;
//! * `Base` — unchanged since a base point whose copy of the chunk is healthy: its id is
//!   reused without reading the disk;
//! * `Read` — read, hashed, and stored if new.
//!
//! A base chunk that is missing from the repository or quarantined is never reused: that
//! chunk is read again. This is how "incremental only from a verified base" is enforced
//! chunk by chunk, and how a damaged repository heals itself on the next backup.

use lifeboat_disk::Range;
use lifeboat_repository::{ChunkId, DiskIndex};

/// What is known about how a disk changed since its base point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing is known: read every chunk that may hold data.
    Unknown,
    /// The disk is byte-for-byte as it was at the base point (raw file identity unchanged).
    Unchanged,
    /// Only these ranges were written since the base point (a dirty bitmap).
    Dirty(Vec<Range>),
}

/// Where one chunk comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkSource {
    Zero,
    Base(ChunkId),
    Read,
}

/// The plan for one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    /// One entry per chunk.
    pub chunks: Vec<ChunkSource>,
    /// Chunk size in bytes.
    pub chunk_size_bytes: u32,
    /// Size of the disk.
    pub virtual_size_bytes: u64,
}

impl DiskPlan {
    /// Bytes that will be read from the disk.
    pub fn bytes_to_read(&self) -> u64 {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, source)| **source == ChunkSource::Read)
            .map(|(index, _)| self.chunk_length(index) as u64)
            .sum()
    }

    /// Length of chunk `index` (the last may be short).
    pub fn chunk_length(&self, index: usize) -> u32 {
        let offset = index as u64 * self.chunk_size_bytes as u64;
        (self.virtual_size_bytes - offset).min(self.chunk_size_bytes as u64) as u32
    }
}

/// Marks every chunk overlapping `ranges`.
fn chunks_touched(ranges: &[Range], chunk_size_bytes: u32, chunk_count: usize) -> Vec<bool> {
    let mut touched = vec![false; chunk_count];
    let size = chunk_size_bytes as u64;
    for range in ranges.iter().filter(|r| r.length > 0) {
        let first = (range.offset / size) as usize;
        let last = ((range.end() - 1) / size) as usize;
        for flag in touched
            .iter_mut()
            .take(last.min(chunk_count - 1) + 1)
            .skip(first)
        {
            *flag = true;
        }
    }
    touched
}

/// Plans one disk. `usable(id)` tells whether the repository holds a healthy copy of a
/// base chunk.
pub fn plan_disk(
    virtual_size_bytes: u64,
    chunk_size_bytes: u32,
    data: &[Range],
    change: &Change,
    base: Option<&DiskIndex>,
    usable: impl Fn(&ChunkId) -> bool,
) -> DiskPlan {
    let chunk_count = virtual_size_bytes.div_ceil(chunk_size_bytes as u64) as usize;
    let has_data = chunks_touched(data, chunk_size_bytes, chunk_count);
    let base = base.filter(|b| {
        b.virtual_size_bytes == virtual_size_bytes && b.chunk_size_bytes == chunk_size_bytes
    });
    let changed: Option<Vec<bool>> = match (change, base) {
        (Change::Unchanged, Some(_)) => Some(vec![false; chunk_count]),
        (Change::Dirty(ranges), Some(_)) => {
            Some(chunks_touched(ranges, chunk_size_bytes, chunk_count))
        }
        _ => None,
    };
    let chunks = (0..chunk_count)
        .map(|index| {
            let reusable = match (&changed, base) {
                (Some(changed), Some(base)) if !changed[index] => Some(base.chunks[index]),
                _ => None,
            };
            match reusable {
                Some(id) if id.is_zero() => ChunkSource::Zero,
                Some(id) if usable(&id) => ChunkSource::Base(id),
                _ if has_data[index] => ChunkSource::Read,
                _ => ChunkSource::Zero,
            }
        })
        .collect();
    DiskPlan {
        chunks,
        chunk_size_bytes,
        virtual_size_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 65536;

    fn range(offset: u64, length: u64) -> Range {
        Range { offset, length }
    }

    fn base_with(ids: &[u8]) -> DiskIndex {
        DiskIndex {
            virtual_size_bytes: ids.len() as u64 * CHUNK as u64,
            chunk_size_bytes: CHUNK,
            chunks: ids
                .iter()
                .map(|&b| {
                    if b == 0 {
                        ChunkId::ZERO
                    } else {
                        ChunkId([b; 32])
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn without_change_information_every_chunk_with_data_is_read() {
        let plan = plan_disk(
            4 * CHUNK as u64,
            CHUNK,
            &[range(100, 10), range(3 * CHUNK as u64, 1)],
            &Change::Unknown,
            None,
            |_| true,
        );
        assert_eq!(
            plan.chunks,
            [
                ChunkSource::Read,
                ChunkSource::Zero,
                ChunkSource::Zero,
                ChunkSource::Read
            ]
        );
        assert_eq!(plan.bytes_to_read(), 2 * CHUNK as u64);
    }

    #[test]
    fn a_dirty_bitmap_limits_reads_to_dirty_chunks() {
        let base = base_with(&[1, 2, 0, 4]);
        let data = [range(0, 4 * CHUNK as u64)];
        let dirty = Change::Dirty(vec![range(CHUNK as u64 + 5, 3)]);
        let plan = plan_disk(4 * CHUNK as u64, CHUNK, &data, &dirty, Some(&base), |_| {
            true
        });
        assert_eq!(
            plan.chunks,
            [
                ChunkSource::Base(ChunkId([1; 32])),
                ChunkSource::Read,
                ChunkSource::Zero,
                ChunkSource::Base(ChunkId([4; 32]))
            ]
        );
    }

    #[test]
    fn unusable_base_chunks_are_read_again() {
        let base = base_with(&[1, 2]);
        let data = [range(0, 2 * CHUNK as u64)];
        let plan = plan_disk(
            2 * CHUNK as u64,
            CHUNK,
            &data,
            &Change::Unchanged,
            Some(&base),
            |id| id.0[0] != 2,
        );
        assert_eq!(
            plan.chunks,
            [ChunkSource::Base(ChunkId([1; 32])), ChunkSource::Read]
        );
    }

    #[test]
    fn a_base_of_another_size_is_ignored() {
        let base = base_with(&[1, 2]);
        let plan = plan_disk(
            3 * CHUNK as u64,
            CHUNK,
            &[range(0, 3 * CHUNK as u64)],
            &Change::Unchanged,
            Some(&base),
            |_| true,
        );
        assert!(plan.chunks.iter().all(|c| *c == ChunkSource::Read));
    }

    #[test]
    fn dirty_ranges_that_are_now_holes_become_zero() {
        let base = base_with(&[1, 2]);
        let dirty = Change::Dirty(vec![range(0, CHUNK as u64)]);
        let plan = plan_disk(
            2 * CHUNK as u64,
            CHUNK,
            &[range(CHUNK as u64, CHUNK as u64)],
            &dirty,
            Some(&base),
            |_| true,
        );
        assert_eq!(
            plan.chunks,
            [ChunkSource::Zero, ChunkSource::Base(ChunkId([2; 32]))]
        );
    }

    #[test]
    fn the_short_last_chunk_has_its_own_length() {
        let plan = plan_disk(
            CHUNK as u64 + 512,
            CHUNK,
            &[range(0, CHUNK as u64 + 512)],
            &Change::Unknown,
            None,
            |_| true,
        );
        assert_eq!(plan.chunk_length(1), 512);
        assert_eq!(plan.bytes_to_read(), CHUNK as u64 + 512);
    }
}
