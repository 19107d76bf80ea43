//! The chunk map in memory: where every stored chunk can be read.
//!
//! Built by loading every pack index. A chunk may be stored more than once (two backups
//! racing, a repack, a chunk stored again after its first copy was quarantined); the first
//! healthy location is preferred and the others are kept as alternates, so a damaged copy
//! never hides a good one.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::crypto::ChunkId;
use crate::pack::PackEntry;
use crate::pack_index::PackRecord;

/// Chunk ids are already uniformly random: their first eight bytes are a perfect hash.
#[derive(Default)]
pub struct ChunkIdHasher(u64);

impl Hasher for ChunkIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

/// A `HashMap` keyed by chunk id.
pub type ChunkMap<V> = HashMap<ChunkId, V, BuildHasherDefault<ChunkIdHasher>>;
/// A `HashSet` of chunk ids.
pub type ChunkSet = HashSet<ChunkId, BuildHasherDefault<ChunkIdHasher>>;

/// Where one copy of a chunk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Number of the pack in [`ChunkIndex::pack_name`].
    pub pack: u32,
    /// Offset of the sealed blob in the pack.
    pub blob_offset: u32,
    /// Length of the sealed blob.
    pub blob_bytes: u32,
    /// Length of the blob's opened group.
    pub group_bytes: u32,
    /// Where the chunk starts inside the group.
    pub offset_in_group: u32,
    /// Length of the chunk.
    pub raw_bytes: u32,
}

/// Every known copy of every chunk.
#[derive(Debug, Default, Clone)]
pub struct ChunkIndex {
    pack_names: Vec<String>,
    pack_numbers: HashMap<String, u32>,
    primary: ChunkMap<ChunkLocation>,
    alternates: ChunkMap<Vec<ChunkLocation>>,
}

impl ChunkIndex {
    /// Number of distinct chunks.
    pub fn len(&self) -> usize {
        self.primary.len()
    }

    /// True when no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.primary.is_empty()
    }

    /// The pack number for `pack`, adding it if new.
    fn pack_number(&mut self, pack: &str) -> u32 {
        if let Some(&number) = self.pack_numbers.get(pack) {
            return number;
        }
        let number = self.pack_names.len() as u32;
        self.pack_names.push(pack.to_string());
        self.pack_numbers.insert(pack.to_string(), number);
        number
    }

    /// Records one blob of `pack`.
    pub fn insert(&mut self, pack: &str, entry: &PackEntry) {
        let location = ChunkLocation {
            pack: self.pack_number(pack),
            blob_offset: entry.blob_offset,
            blob_bytes: entry.blob_bytes,
            group_bytes: entry.group_bytes,
            offset_in_group: entry.offset_in_group,
            raw_bytes: entry.raw_bytes,
        };
        match self.primary.get(&entry.chunk) {
            None => {
                self.primary.insert(entry.chunk, location);
            }
            Some(existing) if *existing == location => {}
            Some(_) => {
                let alternates = self.alternates.entry(entry.chunk).or_default();
                if !alternates.contains(&location) {
                    alternates.push(location);
                }
            }
        }
    }

    /// Records every blob of a pack record.
    pub fn insert_record(&mut self, record: &PackRecord) {
        // A pack with no blobs is still known, so prune does not treat it as unindexed.
        self.pack_number(&record.pack);
        for entry in &record.entries {
            self.insert(&record.pack, entry);
        }
    }

    /// True when at least one copy of `chunk` is known.
    pub fn contains(&self, chunk: &ChunkId) -> bool {
        self.primary.contains_key(chunk)
    }

    /// Every known copy of `chunk`, preferred first.
    pub fn locations(&self, chunk: &ChunkId) -> Vec<ChunkLocation> {
        let mut locations = Vec::new();
        if let Some(primary) = self.primary.get(chunk) {
            locations.push(*primary);
        }
        if let Some(alternates) = self.alternates.get(chunk) {
            locations.extend_from_slice(alternates);
        }
        locations
    }

    /// The preferred copy of `chunk`.
    pub fn locate(&self, chunk: &ChunkId) -> Option<ChunkLocation> {
        self.primary.get(chunk).copied()
    }

    /// The id of pack number `pack`.
    pub fn pack_name(&self, pack: u32) -> &str {
        &self.pack_names[pack as usize]
    }

    /// Every pack any index names.
    pub fn pack_names(&self) -> &[String] {
        &self.pack_names
    }

    /// Every chunk with all its copies, as (chunk, pack id, location).
    pub fn iter_all(&self) -> impl Iterator<Item = (ChunkId, ChunkLocation)> + '_ {
        self.primary.iter().map(|(id, l)| (*id, *l)).chain(
            self.alternates
                .iter()
                .flat_map(|(id, ls)| ls.iter().map(move |l| (*id, *l))),
        )
    }

    /// Puts the copies in packs for which `last(pack id)` holds after the others, so
    /// readers try them only when no other copy is good.
    pub fn try_last_where(&mut self, last: impl Fn(&str) -> bool) {
        let pack_names = &self.pack_names;
        let demoted = |location: &ChunkLocation| last(&pack_names[location.pack as usize]);
        for (chunk, alternates) in self.alternates.iter_mut() {
            let primary = self
                .primary
                .get_mut(chunk)
                .expect("alternates have a primary");
            if !demoted(primary) {
                continue;
            }
            if let Some(better) = alternates.iter().position(|l| !demoted(l)) {
                let promoted = alternates.remove(better);
                alternates.push(std::mem::replace(primary, promoted));
            }
        }
    }

    /// Drops copies for which `unusable(chunk, pack id)` holds: quarantined blobs, packs
    /// queued for deletion. A chunk left with no usable copy disappears from the index, so a
    /// backup stores it again.
    pub fn remove_where(&mut self, mut unusable: impl FnMut(&ChunkId, &str) -> bool) {
        let chunks: Vec<ChunkId> = self.primary.keys().copied().collect();
        for chunk in chunks {
            let mut usable: Vec<ChunkLocation> = self
                .locations(&chunk)
                .into_iter()
                .filter(|l| !unusable(&chunk, &self.pack_names[l.pack as usize]))
                .collect();
            if usable.is_empty() {
                self.primary.remove(&chunk);
                self.alternates.remove(&chunk);
                continue;
            }
            let first = usable.remove(0);
            self.primary.insert(chunk, first);
            if usable.is_empty() {
                self.alternates.remove(&chunk);
            } else {
                self.alternates.insert(chunk, usable);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(byte: u8, offset: u32) -> PackEntry {
        PackEntry {
            chunk: ChunkId([byte; 32]),
            blob_offset: offset,
            blob_bytes: 10,
            group_bytes: 20,
            offset_in_group: 0,
            raw_bytes: 20,
        }
    }

    #[test]
    fn duplicate_copies_are_kept_as_alternates_and_survive_removal_of_the_first() {
        let mut index = ChunkIndex::default();
        index.insert("pack-a", &entry(1, 0));
        index.insert("pack-b", &entry(1, 40));
        index.insert("pack-b", &entry(2, 0));
        assert_eq!(index.len(), 2);
        assert_eq!(index.locations(&ChunkId([1; 32])).len(), 2);
        index.remove_where(|_, pack| pack == "pack-a");
        let location = index.locate(&ChunkId([1; 32])).unwrap();
        assert_eq!(index.pack_name(location.pack), "pack-b");
        assert_eq!(location.blob_offset, 40);
        index.remove_where(|_, pack| pack == "pack-b");
        assert!(index.is_empty());
    }

    #[test]
    fn copies_in_packs_awaiting_deletion_are_tried_last() {
        let mut index = ChunkIndex::default();
        index.insert("old", &entry(1, 0));
        index.insert("new", &entry(1, 40));
        index.insert("old", &entry(2, 10));
        index.try_last_where(|pack| pack == "old");
        let locations = index.locations(&ChunkId([1; 32]));
        assert_eq!(index.pack_name(locations[0].pack), "new");
        assert_eq!(index.pack_name(locations[1].pack), "old");
        // The only copy stays where it is.
        let only = index.locate(&ChunkId([2; 32])).unwrap();
        assert_eq!(index.pack_name(only.pack), "old");
    }
}
