//! The journal of a consistency group: every write acknowledged by any disk of any VM of
//! the group, in one order, and the cuts taken from it. No I/O: the capture path records
//! writes, the shipper takes cuts.
//!
//! # Consistency
//!
//! A write gets its sequence number once it is in the image, just before it is
//! acknowledged, under the journal's lock. A cut is "every write numbered up to N". If write
//! W1 was acknowledged before W2 was issued, W1's number is smaller, so a cut holding W2
//! holds W1: no point made from cuts has a write without every write acknowledged before
//! it — across all disks of all VMs of the group, because they share the sequence.
//!
//! # Resync
//!
//! Writes are kept in memory until shipped, up to a limit. Past it (the link is down, or
//! the recovery region is slower than the writers), the journal *overflows*: its writes are
//! reduced to the ranges they touched, to be read again from the images (resync), and new
//! writes are journaled as before. Ranges to resync also come from the initial sync (every
//! allocated range) and from the persistent dirty map after a crash.
//!
//! A range read from an image at some moment holds every write up to then and perhaps some
//! later ones; the later ones are also in the journal and are applied again after it,
//! in order. So once every resync range has been read, the next cut that carries no resync
//! data leaves the replicas exactly as the images were at that cut: consistent again. Cuts
//! carrying resync data are applied but make no recovery point.

use std::collections::VecDeque;

use lifeboat_nbd::Buffer;

use crate::ranges::RangeSet;

/// Which disk of the group: indexes into the group's list of VMs and their disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskId {
    pub vm: usize,
    pub disk: usize,
}

/// What a journaled write put there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// These bytes.
    Data(Buffer),
    /// Zeros (NBD WRITE_ZEROES, TRIM).
    Zeroes,
}

/// One acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub sequence: u64,
    pub disk: DiskId,
    pub offset: u64,
    pub length: u64,
    pub payload: Payload,
}

impl Write {
    /// The bytes written; `None` for zeros.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Data(bytes) => Some(bytes),
            Payload::Zeroes => None,
        }
    }

    fn memory_bytes(&self) -> u64 {
        match self.payload {
            Payload::Data(_) => self.length,
            Payload::Zeroes => 0,
        }
    }
}

/// A byte range of one disk to read again from its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncRange {
    pub disk: DiskId,
    pub offset: u64,
    pub length: u64,
}

/// What a cut takes: the journaled writes up to `sequence`, and resync ranges to read now.
#[derive(Debug, Default)]
pub struct Cut {
    /// Every write numbered up to this is in the cut (or was in an earlier one).
    pub sequence: u64,
    pub writes: VecDeque<Write>,
    pub resync: Vec<ResyncRange>,
    /// False when resync data is in this cut or still to come: the replicas are not
    /// consistent after it.
    pub consistent: bool,
}

impl Cut {
    /// Bytes of data the cut carries from the journal.
    pub fn journal_bytes(&self) -> u64 {
        self.writes.iter().map(Write::memory_bytes).sum()
    }

    /// Drops every write that a later write of the cut overwrites whole: applied in order,
    /// the rest leaves the disks exactly as all of them would, and only the cut's end
    /// state is ever made a point. Returns the writes dropped.
    pub fn coalesce(&mut self) -> u64 {
        let mut covered: std::collections::HashMap<DiskId, RangeSet> = Default::default();
        let mut keep = vec![true; self.writes.len()];
        for (index, write) in self.writes.iter().enumerate().rev() {
            let ranges = covered.entry(write.disk).or_default();
            let end = write.offset + write.length;
            if ranges.covers(write.offset, end) {
                keep[index] = false;
            } else {
                ranges.insert(write.offset, end);
            }
        }
        let before = self.writes.len();
        let mut flags = keep.into_iter();
        self.writes.retain(|_| flags.next().unwrap_or(true));
        (before - self.writes.len()) as u64
    }
}

/// Counters for status and alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStatus {
    /// Writes journaled and not yet taken by a cut.
    pub pending_writes: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Bytes still to be read again from the images.
    pub resync_bytes: u64,
    /// Times the journal overflowed into resync.
    pub overflows: u64,
    /// The last sequence number given.
    pub sequence: u64,
}

/// The journal of one group.
#[derive(Debug)]
pub struct Journal {
    next_sequence: u64,
    writes: VecDeque<Write>,
    pending_bytes: u64,
    limit_bytes: u64,
    /// Per disk, the ranges to read again.
    resync: std::collections::BTreeMap<DiskId, RangeSet>,
    resync_bytes: u64,
    overflows: u64,
    /// Per VM, bytes written since the journal started (for throughput).
    written_bytes: std::collections::BTreeMap<usize, u64>,
}

/// One VM's share of what the journal holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmCounters {
    /// Writes journaled and not yet taken by a cut.
    pub pending_writes: u64,
    pub pending_bytes: u64,
    /// Bytes written since the journal started.
    pub written_bytes: u64,
}

impl Journal {
    /// An empty journal keeping at most `limit_bytes` of written data in memory.
    pub fn new(limit_bytes: u64) -> Journal {
        Journal {
            next_sequence: 1,
            writes: VecDeque::new(),
            pending_bytes: 0,
            limit_bytes,
            resync: Default::default(),
            resync_bytes: 0,
            overflows: 0,
            written_bytes: Default::default(),
        }
    }

    /// Records an acknowledged write; returns its sequence number.
    pub fn record(&mut self, disk: DiskId, offset: u64, length: u64, payload: Payload) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        *self.written_bytes.entry(disk.vm).or_default() += length;
        let write = Write {
            sequence,
            disk,
            offset,
            length,
            payload,
        };
        if self.pending_bytes + write.memory_bytes() > self.limit_bytes {
            self.overflow();
            self.add_resync(disk, offset, length);
        } else {
            self.pending_bytes += write.memory_bytes();
            self.writes.push_back(write);
        }
        sequence
    }

    /// Turns every journaled write into a range to resync and frees its memory.
    fn overflow(&mut self) {
        self.overflows += 1;
        let writes = std::mem::take(&mut self.writes);
        self.pending_bytes = 0;
        for write in writes {
            self.add_resync(write.disk, write.offset, write.length);
        }
    }

    /// Adds a range to read again from its image (initial sync, dirty map after a crash).
    pub fn add_resync(&mut self, disk: DiskId, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        self.resync_bytes += self
            .resync
            .entry(disk)
            .or_default()
            .insert(offset, offset + length);
    }

    /// Takes a cut: every journaled write, and resync ranges of up to `resync_budget`
    /// bytes (split where needed). The caller reads those ranges from the images after
    /// this returns.
    pub fn take_cut(&mut self, resync_budget: u64) -> Cut {
        let writes = std::mem::take(&mut self.writes);
        self.pending_bytes = 0;
        let had_resync = self.resync_bytes > 0;
        let mut resync = Vec::new();
        let mut budget = resync_budget;
        while budget > 0 {
            let Some((&disk, ranges)) = self.resync.iter_mut().next() else {
                break;
            };
            let Some((offset, take)) = ranges.take_front(budget) else {
                self.resync.remove(&disk);
                continue;
            };
            resync.push(ResyncRange {
                disk,
                offset,
                length: take,
            });
            budget -= take;
            self.resync_bytes -= take;
            if ranges.is_empty() {
                self.resync.remove(&disk);
            }
        }
        Cut {
            sequence: self.next_sequence - 1,
            writes,
            resync,
            consistent: !had_resync,
        }
    }

    /// Puts a cut that could not be shipped back in front of the journal, so the next cut
    /// carries it. Its writes are older than anything journaled since.
    pub fn put_back(&mut self, cut: Cut) {
        for write in cut.writes.into_iter().rev() {
            self.pending_bytes += write.memory_bytes();
            self.writes.push_front(write);
        }
        for range in cut.resync {
            self.add_resync(range.disk, range.offset, range.length);
        }
        if self.pending_bytes > self.limit_bytes {
            self.overflow();
        }
    }

    /// Every range still to be read again from the images.
    pub fn pending_resync(&self) -> Vec<ResyncRange> {
        self.resync
            .iter()
            .flat_map(|(&disk, ranges)| {
                ranges.iter().map(move |(offset, length)| ResyncRange {
                    disk,
                    offset,
                    length,
                })
            })
            .collect()
    }

    /// Counters.
    pub fn status(&self) -> JournalStatus {
        JournalStatus {
            pending_writes: self.writes.len() as u64,
            pending_bytes: self.pending_bytes,
            resync_bytes: self.resync_bytes,
            overflows: self.overflows,
            sequence: self.next_sequence - 1,
        }
    }
}

impl Journal {
    /// Per VM (by index in the group), what is pending and what was written.
    pub fn vm_counters(&self) -> std::collections::BTreeMap<usize, VmCounters> {
        let mut counters: std::collections::BTreeMap<usize, VmCounters> = self
            .written_bytes
            .iter()
            .map(|(&vm, &written_bytes)| {
                (
                    vm,
                    VmCounters {
                        written_bytes,
                        ..VmCounters::default()
                    },
                )
            })
            .collect();
        for write in &self.writes {
            let entry = counters.entry(write.disk.vm).or_default();
            entry.pending_writes += 1;
            entry.pending_bytes += write.memory_bytes();
        }
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DiskId = DiskId { vm: 0, disk: 0 };
    const B: DiskId = DiskId { vm: 1, disk: 1 };

    fn data(length: usize, value: u8) -> Payload {
        Payload::Data(vec![value; length].into())
    }

    #[test]
    fn a_cut_takes_every_write_in_order_across_disks() {
        let mut journal = Journal::new(1 << 20);
        assert_eq!(journal.record(A, 0, 512, data(512, 1)), 1);
        assert_eq!(journal.record(B, 4096, 512, data(512, 2)), 2);
        assert_eq!(journal.record(A, 0, 512, Payload::Zeroes), 3);
        let cut = journal.take_cut(0);
        assert_eq!(cut.sequence, 3);
        assert!(cut.consistent);
        let order: Vec<(u64, DiskId)> = cut.writes.iter().map(|w| (w.sequence, w.disk)).collect();
        assert_eq!(order, vec![(1, A), (2, B), (3, A)]);
        assert_eq!(cut.journal_bytes(), 1024);
        let next = journal.take_cut(0);
        assert_eq!(next.sequence, 3);
        assert!(next.writes.is_empty() && next.consistent);
    }

    #[test]
    fn overflow_turns_writes_into_resync_and_the_cut_after_resync_is_consistent() {
        let mut journal = Journal::new(1000);
        journal.record(A, 0, 600, data(600, 1));
        journal.record(A, 300, 600, data(600, 2));
        assert_eq!(journal.status().overflows, 1);
        assert_eq!(journal.status().resync_bytes, 900);
        journal.record(B, 0, 100, data(100, 3));
        let first = journal.take_cut(500);
        assert!(!first.consistent);
        assert_eq!(first.writes.len(), 1);
        assert_eq!(
            first.resync,
            vec![ResyncRange {
                disk: A,
                offset: 0,
                length: 500
            }]
        );
        let second = journal.take_cut(500);
        assert!(!second.consistent, "resync data in this cut");
        assert_eq!(second.resync[0].offset, 500);
        assert_eq!(second.resync[0].length, 400);
        let third = journal.take_cut(500);
        assert!(third.consistent);
        assert!(third.resync.is_empty());
    }

    #[test]
    fn a_cut_put_back_comes_first_in_the_next() {
        let mut journal = Journal::new(1 << 20);
        journal.record(A, 0, 10, data(10, 1));
        let cut = journal.take_cut(0);
        journal.record(A, 0, 10, data(10, 2));
        journal.put_back(cut);
        let again = journal.take_cut(0);
        let sequences: Vec<u64> = again.writes.iter().map(|w| w.sequence).collect();
        assert_eq!(sequences, vec![1, 2]);
        assert_eq!(again.sequence, 2);
    }

    #[test]
    fn counters_per_vm_follow_writes_and_cuts() {
        let mut journal = Journal::new(1 << 20);
        journal.record(A, 0, 512, data(512, 1));
        journal.record(B, 0, 100, data(100, 2));
        journal.record(B, 0, 4096, Payload::Zeroes);
        let counters = journal.vm_counters();
        assert_eq!(counters[&0].pending_writes, 1);
        assert_eq!(counters[&0].pending_bytes, 512);
        assert_eq!(counters[&1].pending_writes, 2);
        assert_eq!(counters[&1].pending_bytes, 100);
        assert_eq!(counters[&1].written_bytes, 4196);
        journal.take_cut(0);
        let counters = journal.vm_counters();
        assert_eq!(counters[&1].pending_writes, 0);
        assert_eq!(counters[&1].written_bytes, 4196);
    }

    #[test]
    fn coalescing_drops_only_writes_overwritten_whole_and_keeps_the_end_state() {
        let mut journal = Journal::new(1 << 20);
        journal.record(A, 0, 8, data(8, 1)); // overwritten whole by 4
        journal.record(A, 4, 8, data(8, 2)); // only partly by 4: kept
        journal.record(B, 0, 8, data(8, 3)); // another disk: kept
        journal.record(A, 0, 8, data(8, 4));
        journal.record(A, 100, 4, Payload::Zeroes); // overwritten whole by 6
        journal.record(A, 96, 16, data(16, 5));
        let mut cut = journal.take_cut(0);
        let replay = |writes: &VecDeque<Write>| {
            let mut disk = vec![0u8; 128];
            for write in writes.iter().filter(|w| w.disk == A) {
                let range = write.offset as usize..(write.offset + write.length) as usize;
                match write.bytes() {
                    Some(bytes) => disk[range].copy_from_slice(bytes),
                    None => disk[range].fill(0),
                }
            }
            disk
        };
        let whole = replay(&cut.writes);
        assert_eq!(cut.coalesce(), 2);
        let sequences: Vec<u64> = cut.writes.iter().map(|w| w.sequence).collect();
        assert_eq!(sequences, vec![2, 3, 4, 6]);
        assert_eq!(replay(&cut.writes), whole);
    }
}
