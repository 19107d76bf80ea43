//! What prune may delete and when. Pure: no I/O.
//!
//! See `lifeboat_repository::garbage` for why deletion has two phases. This module decides
//! (1) which packs to queue for deletion or to repack, from how much of each pack any point
//! still needs, and (2) whether a queued record is ripe: every writer that might not have
//! seen it has finished.

use std::collections::HashSet;

use lifeboat_repository::lease::LeaseRecord;

/// Leases from other hosts must have started this much after a record to count as having
/// seen it, to allow for clocks that disagree.
pub const CLOCK_SKEW_MARGIN_MS: u64 = 60_000;
/// A pack is repacked when at least this share of its bytes is no longer needed.
pub const REPACK_DEAD_SHARE: f64 = 0.5;

/// How much of one indexed pack is still needed.
#[derive(Clone, Debug, PartialEq)]
pub struct PackUsage {
    pub pack: String,
    /// Sealed bytes of all its blobs.
    pub total_bytes: u64,
    /// Sealed bytes of blobs some point needs.
    pub live_bytes: u64,
    /// It holds a quarantined blob: kept as evidence, never deleted or repacked.
    pub has_quarantined: bool,
}

/// Phase one's decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectionPlan {
    /// Packs to queue for deletion as they are.
    pub unreferenced: Vec<String>,
    /// Packs whose live blobs are copied to new packs first, then queued.
    pub repack: Vec<String>,
}

/// Decides phase one. `unindexed` are packs in storage that no pack index names (left by
/// writers that died, or still being written by a running backup: the two-phase delete
/// covers both); `already_queued` are packs named by existing garbage records.
pub fn plan_collection(
    usage: &[PackUsage],
    unindexed: &[String],
    already_queued: &HashSet<String>,
) -> CollectionPlan {
    let mut plan = CollectionPlan::default();
    for pack in usage
        .iter()
        .filter(|p| !p.has_quarantined && !already_queued.contains(&p.pack))
    {
        if pack.live_bytes == 0 {
            plan.unreferenced.push(pack.pack.clone());
        } else if pack.total_bytes > 0
            && (pack.total_bytes - pack.live_bytes) as f64
                >= REPACK_DEAD_SHARE * pack.total_bytes as f64
        {
            plan.repack.push(pack.pack.clone());
        }
    }
    plan.unreferenced.extend(
        unindexed
            .iter()
            .filter(|p| !already_queued.contains(*p))
            .cloned(),
    );
    plan.unreferenced.sort();
    plan.repack.sort();
    plan
}

/// True when a garbage record written at `record_created_unix_ms` may be carried out:
/// every live lease (other than prune's own) was taken after the record existed.
pub fn is_ripe(record_created_unix_ms: u64, live_leases: &[LeaseRecord], this_host: &str) -> bool {
    live_leases.iter().all(|lease| {
        let margin = if lease.host == this_host {
            0
        } else {
            CLOCK_SKEW_MARGIN_MS
        };
        lease.started_unix_ms > record_created_unix_ms + margin
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(pack: &str, total: u64, live: u64, quarantined: bool) -> PackUsage {
        PackUsage {
            pack: pack.to_string(),
            total_bytes: total,
            live_bytes: live,
            has_quarantined: quarantined,
        }
    }

    #[test]
    fn dead_packs_are_queued_half_dead_ones_repacked_and_evidence_kept() {
        let plan = plan_collection(
            &[
                usage("dead", 100, 0, false),
                usage("half", 100, 50, false),
                usage("mostly-live", 100, 90, false),
                usage("evidence", 100, 0, true),
                usage("queued", 100, 0, false),
            ],
            &["orphan".to_string()],
            &HashSet::from(["queued".to_string()]),
        );
        assert_eq!(plan.unreferenced, ["dead", "orphan"]);
        assert_eq!(plan.repack, ["half"]);
    }

    fn lease(host: &str, started: u64) -> LeaseRecord {
        LeaseRecord {
            operation: "backup".to_string(),
            host: host.to_string(),
            pid: 1,
            process_start_ticks: 1,
            started_unix_ms: started,
            refreshed_unix_ms: started,
        }
    }

    #[test]
    fn a_record_is_ripe_only_once_every_older_writer_is_gone() {
        assert!(is_ripe(1000, &[], "here"));
        assert!(!is_ripe(1000, &[lease("here", 999)], "here"));
        assert!(is_ripe(1000, &[lease("here", 1001)], "here"));
        assert!(!is_ripe(1000, &[lease("there", 1001)], "here"));
        assert!(is_ripe(
            1000,
            &[lease("there", 1001 + CLOCK_SKEW_MARGIN_MS)],
            "here"
        ));
    }
}
