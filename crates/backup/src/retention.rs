//! Which points a retention policy keeps. Pure: no I/O.
//!
//! The rules are those operators know from restic and Proxmox Backup Server: keep the
//! newest N points; and for each period (hour, day, ISO week, month, year) keep the newest
//! point of each of the last N periods that have points. A point kept by any rule stays.
//! Periods are taken in UTC, so a policy means the same on every host. `keep_within` keeps
//! every point up to that long before the newest one (not before now: a VM whose points
//! stopped coming keeps its history).

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

/// How many points to keep per rule; zero disables a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub keep_last: usize,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
    pub keep_yearly: usize,
    /// Keep every point at most this many seconds older than the newest.
    pub keep_within_seconds: Option<u64>,
}

impl RetentionPolicy {
    /// True when no rule keeps anything.
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// A point as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dated {
    pub point: String,
    pub time: String,
}

/// The decision for one point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub point: String,
    pub time: String,
    /// The rules that keep it; empty means it is removed.
    pub reasons: Vec<&'static str>,
}

type PeriodKey = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);

fn hour(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), t.hour())
}
fn day(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), 0)
}
fn week(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    let week = t.iso_week();
    (week.year(), week.week(), 0, 0)
}
fn month(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), 0, 0)
}
fn year(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), 0, 0, 0)
}

/// Decides for each point (any order) whether `policy` keeps it; newest first. A point
/// whose time cannot be read is kept and counts toward no rule: a rule cannot judge it.
pub fn apply(policy: &RetentionPolicy, points: &[Dated]) -> Vec<Decision> {
    let mut dated: Vec<(DateTime<Utc>, &Dated)> = Vec::new();
    let mut undated: Vec<&Dated> = Vec::new();
    for point in points {
        match DateTime::parse_from_rfc3339(&point.time) {
            Ok(time) => dated.push((time.with_timezone(&Utc), point)),
            Err(_) => undated.push(point),
        }
    }
    dated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.point.cmp(&a.1.point)));
    let mut decisions: Vec<Decision> = dated
        .iter()
        .map(|(_, p)| Decision {
            point: p.point.clone(),
            time: p.time.clone(),
            reasons: Vec::new(),
        })
        .collect();
    for decision in decisions.iter_mut().take(policy.keep_last) {
        decision.reasons.push("last");
    }
    if let (Some(seconds), Some((newest, _))) = (policy.keep_within_seconds, dated.first()) {
        // A window longer than chrono can count keeps everything.
        let oldest = i64::try_from(seconds)
            .ok()
            .and_then(chrono::TimeDelta::try_seconds)
            .and_then(|window| newest.checked_sub_signed(window))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        for ((time, _), decision) in dated.iter().zip(decisions.iter_mut()) {
            if *time < oldest {
                break;
            }
            decision.reasons.push("within");
        }
    }
    let rules: [(&'static str, usize, PeriodKey); 5] = [
        ("hourly", policy.keep_hourly, hour),
        ("daily", policy.keep_daily, day),
        ("weekly", policy.keep_weekly, week),
        ("monthly", policy.keep_monthly, month),
        ("yearly", policy.keep_yearly, year),
    ];
    for (name, count, key) in rules {
        let mut kept = 0;
        let mut last_period = None;
        for ((time, _), decision) in dated.iter().zip(decisions.iter_mut()) {
            if kept >= count {
                break;
            }
            let period = key(time);
            if last_period != Some(period) {
                decision.reasons.push(name);
                last_period = Some(period);
                kept += 1;
            }
        }
    }
    decisions.extend(undated.into_iter().map(|p| Decision {
        point: p.point.clone(),
        time: p.time.clone(),
        reasons: vec!["unreadable-time"],
    }));
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(times: &[&str]) -> Vec<Dated> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Dated {
                point: format!("p{i}"),
                time: t.to_string(),
            })
            .collect()
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| !d.reasons.is_empty())
            .map(|d| d.point.as_str())
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let list = points(&[
            "2026-01-01T00:00:00Z",
            "2026-01-03T00:00:00Z",
            "2026-01-02T00:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_last: 2,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&policy, &list)), ["p1", "p2"]);
    }

    #[test]
    fn keep_within_keeps_everything_near_the_newest_and_thins_beyond() {
        // A replicated VM: a point every 5 minutes for two days.
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let times: Vec<String> = (0..(2 * 24 * 12))
            .map(|i| (start + chrono::Duration::minutes(5 * i)).to_rfc3339())
            .collect();
        let list = points(&times.iter().map(String::as_str).collect::<Vec<_>>());
        let policy = RetentionPolicy {
            keep_within_seconds: Some(24 * 3600),
            keep_hourly: 7 * 24,
            keep_daily: 365,
            ..Default::default()
        };
        let decisions = apply(&policy, &list);
        let kept: Vec<&Decision> = decisions.iter().filter(|d| !d.reasons.is_empty()).collect();
        // The last day whole (289 points: both ends included), then one per hour before.
        let within = kept
            .iter()
            .filter(|d| d.reasons.contains(&"within"))
            .count();
        assert_eq!(within, 24 * 12 + 1);
        assert_eq!(kept.len(), 24 * 12 + 1 + 23);
        for decision in &kept[24 * 12 + 1..] {
            assert!(decision.time.contains(":55:00"), "{decision:?}");
        }
        // Nothing is removed while all points are within the window.
        let policy = RetentionPolicy {
            keep_within_seconds: Some(3 * 24 * 3600),
            ..Default::default()
        };
        assert!(apply(&policy, &list).iter().all(|d| !d.reasons.is_empty()));
    }

    #[test]
    fn keep_daily_keeps_the_newest_point_of_each_day() {
        let list = points(&[
            "2026-01-01T08:00:00Z",
            "2026-01-01T20:00:00Z",
            "2026-01-02T09:00:00Z",
            "2026-01-04T09:00:00Z",
            "2026-01-04T10:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&policy, &list)), ["p4", "p2"]);
        let policy = RetentionPolicy {
            keep_daily: 10,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&policy, &list)), ["p4", "p2", "p1"]);
    }

    #[test]
    fn rules_combine_and_name_their_reasons() {
        let list = points(&[
            "2025-06-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_yearly: 2,
            ..Default::default()
        };
        let decisions = apply(&policy, &list);
        assert_eq!(decisions[0].reasons, ["last", "yearly"]);
        assert!(decisions[1].reasons.is_empty());
        assert_eq!(decisions[2].reasons, ["yearly"]);
    }

    #[test]
    fn iso_weeks_span_year_ends() {
        // 2025-12-29 and 2026-01-01 are both in ISO week 2026-W01.
        let list = points(&["2025-12-29T00:00:00Z", "2026-01-01T00:00:00Z"]);
        let policy = RetentionPolicy {
            keep_weekly: 5,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&policy, &list)), ["p1"]);
    }

    #[test]
    fn points_with_unreadable_times_are_kept() {
        let list = points(&["yesterday", "2026-01-01T00:00:00Z"]);
        let policy = RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&policy, &list)).len(), 2);
    }
}
