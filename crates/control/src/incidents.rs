//! Region health, decided without I/O: consecutive failed probes open an incident, the
//! first good probe closes it; availability over a period is the time not covered by
//! incidents.

/// What one probe result changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Enough probes failed in a row: an incident opens, at the first of them.
    Opened { at_ms: i64 },
    /// A good probe after an incident: it closes now.
    Closed { at_ms: i64 },
}

/// The probe history that matters for one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Failed probes in a row, and when the first of them was.
    failures: u32,
    first_failure_ms: Option<i64>,
    /// An incident is open.
    pub open: bool,
}

impl Tracker {
    /// A tracker that knows whether an incident is open already (after a restart).
    pub fn new(open: bool) -> Tracker {
        Tracker {
            open,
            ..Tracker::default()
        }
    }

    /// Records a probe at `at_ms`; `tolerated` failures in a row open an incident.
    pub fn observe(&mut self, ok: bool, at_ms: i64, tolerated: u32) -> Option<Change> {
        if ok {
            self.failures = 0;
            self.first_failure_ms = None;
            if self.open {
                self.open = false;
                return Some(Change::Closed { at_ms });
            }
            return None;
        }
        self.failures += 1;
        let first = *self.first_failure_ms.get_or_insert(at_ms);
        if !self.open && self.failures >= tolerated.max(1) {
            self.open = true;
            return Some(Change::Opened { at_ms: first });
        }
        None
    }
}

/// The fraction of `[from_ms, to_ms)` not covered by `incidents` (start, end or still open).
pub fn availability(incidents: &[(i64, Option<i64>)], from_ms: i64, to_ms: i64) -> f64 {
    if to_ms <= from_ms {
        return 1.0;
    }
    let mut spans: Vec<(i64, i64)> = incidents
        .iter()
        .map(|&(start, end)| (start.max(from_ms), end.unwrap_or(to_ms).min(to_ms)))
        .filter(|(start, end)| start < end)
        .collect();
    spans.sort();
    let mut down = 0;
    let mut reach = from_ms;
    for (start, end) in spans {
        let start = start.max(reach);
        if end > start {
            down += end - start;
            reach = end;
        }
    }
    1.0 - down as f64 / (to_ms - from_ms) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerated_failures_then_an_incident_from_the_first_failure_closed_by_a_good_probe() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.observe(true, 0, 3), None);
        assert_eq!(tracker.observe(false, 10, 3), None);
        assert_eq!(tracker.observe(false, 20, 3), None);
        assert_eq!(
            tracker.observe(false, 30, 3),
            Some(Change::Opened { at_ms: 10 })
        );
        assert_eq!(tracker.observe(false, 40, 3), None);
        assert_eq!(
            tracker.observe(true, 50, 3),
            Some(Change::Closed { at_ms: 50 })
        );
        assert_eq!(
            tracker.observe(false, 60, 3),
            None,
            "a lone failure is tolerated"
        );
        assert_eq!(tracker.observe(true, 70, 3), None);
    }

    #[test]
    fn availability_counts_overlapping_and_open_incidents_once() {
        assert_eq!(availability(&[], 0, 100), 1.0);
        assert_eq!(availability(&[(10, Some(20))], 0, 100), 0.9);
        assert_eq!(availability(&[(10, Some(30)), (20, Some(40))], 0, 100), 0.7);
        assert_eq!(availability(&[(90, None)], 0, 100), 0.9);
        assert_eq!(
            availability(&[(-50, Some(10))], 0, 100),
            0.9,
            "clipped to the period"
        );
    }
}
