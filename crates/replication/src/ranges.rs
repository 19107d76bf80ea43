//! A set of byte ranges, merged as they are added: O(log n) per insertion however many
//! disjoint ranges a long outage of random writes leaves. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Disjoint, non-adjacent `[start, end)` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `[start, end)`; returns how many bytes were not in the set before.
    pub fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let (mut start, mut end) = (start, end);
        let mut covered = 0;
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            covered += e - s;
            self.ranges.remove(&s);
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            covered += e - s;
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        end - start - covered
    }

    /// True when `[start, end)` is wholly in the set.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.ranges
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| e >= end)
    }

    /// Removes and returns up to `budget` bytes from the front: `(offset, length)`.
    pub fn take_front(&mut self, budget: u64) -> Option<(u64, u64)> {
        let (&start, &end) = self.ranges.iter().next()?;
        let take = (end - start).min(budget);
        if take == 0 {
            return None;
        }
        self.ranges.remove(&start);
        if start + take < end {
            self.ranges.insert(start + take, end);
        }
        Some((start, take))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// `(offset, length)` of every range, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e - s))
    }
}

/// Stored as `[[offset, length], …]`.
impl Serialize for RangeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for RangeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RangeSet, D::Error> {
        let ranges: Vec<(u64, u64)> = Vec::deserialize(deserializer)?;
        let mut set = RangeSet::default();
        for (offset, length) in ranges {
            set.insert(offset, offset.saturating_add(length));
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_count_what_they_add() {
        let mut set = RangeSet::default();
        assert_eq!(set.insert(10, 20), 10);
        assert_eq!(set.insert(30, 40), 10);
        assert_eq!(set.insert(20, 30), 10);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(10, 30)]);
        assert_eq!(set.insert(0, 5), 5);
        assert_eq!(set.insert(50, 60), 10);
        assert_eq!(set.insert(4, 55), 15);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(0, 60)]);
        assert!(set.covers(3, 60) && !set.covers(3, 61));
        assert_eq!(set.take_front(25), Some((0, 25)));
        assert_eq!(set.take_front(100), Some((25, 35)));
        assert_eq!(set.take_front(1), None);
        assert!(set.is_empty());
    }

    #[test]
    fn a_hundred_thousand_random_ranges_insert_quickly() {
        let mut set = RangeSet::default();
        let mut state = 7u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let block = state % (1 << 20);
            set.insert(block * 4096, block * 4096 + 4096);
        }
        assert!(set.iter().count() > 50_000);
        let json = serde_json::to_string(&set).unwrap();
        let back: RangeSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert_eq!(serde_json::to_string(&RangeSet::default()).unwrap(), "[]");
    }
}
