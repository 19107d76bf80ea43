//! `[[schedule]]`: what `lifeboat serve` runs on a calendar — any `lifeboat` command line
//! (backups, `forget` for retention, geo-sync, verify, drills), every so often, or at a
//! time (UTC) every day or on given weekdays.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::ConfigError;

/// When a schedule runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Calendar {
    /// At every multiple of this many seconds since the Unix epoch.
    Every { seconds: u64 },
    /// At this minute of the day (UTC), every day or on the weekdays set (Monday first).
    Daily {
        minute_of_day: u32,
        weekdays: Option<[bool; 7]>,
    },
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A scheduled job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub name: String,
    /// The `lifeboat` arguments, after `--config FILE --json`.
    pub command: Vec<String>,
    pub calendar: Calendar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleEntry {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    every: Option<Spanned<String>>,
    at: Option<Spanned<String>>,
    on: Option<Spanned<Vec<String>>>,
}

type Invalid<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

/// Seconds in `15m`, `1h`, `30s`, `2d`.
fn seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(number * scale).filter(|&s| s > 0)
}

pub(crate) fn schedules(
    entries: &[Spanned<ScheduleEntry>],
    invalid: Invalid,
) -> Result<Vec<Schedule>, ConfigError> {
    let mut schedules: Vec<Schedule> = Vec::new();
    for entry in entries {
        let schedule = entry.get_ref();
        let name = schedule.name.get_ref().trim().to_string();
        if name.is_empty() || schedules.iter().any(|s| s.name == name) {
            return Err(invalid(
                schedule.name.span(),
                format!("key 'name': schedule '{name}' is empty or defined twice"),
            ));
        }
        if schedule.command.get_ref().is_empty() {
            return Err(invalid(
                schedule.command.span(),
                format!(
                    "key 'command' of schedule '{name}': give the lifeboat arguments, like [\"--region\", \"west\", \"backup\", …]"
                ),
            ));
        }
        if let (Some(on), None) = (&schedule.on, &schedule.at) {
            return Err(invalid(
                on.span(),
                format!(
                    "key 'on' of schedule '{name}': weekdays go with 'at' (like at = \"03:00\")"
                ),
            ));
        }
        let calendar = match (&schedule.every, &schedule.at) {
            (Some(every), None) => Calendar::Every {
                seconds: seconds(every.get_ref()).ok_or_else(|| {
                    invalid(
                        every.span(),
                        format!(
                            "key 'every' of schedule '{name}': '{}' is not like 30s, 15m, 1h or 1d",
                            every.get_ref()
                        ),
                    )
                })?,
            },
            (None, Some(at)) => {
                let minute = at.get_ref().trim().split_once(':').and_then(|(h, m)| {
                    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
                    (h < 24 && m < 60).then_some(h * 60 + m)
                });
                let weekdays = match &schedule.on {
                    None => None,
                    Some(on) => {
                        let mut days = [false; 7];
                        for day in on.get_ref() {
                            let index = WEEKDAYS
                                .iter()
                                .position(|d| day.to_ascii_lowercase().starts_with(d))
                                .ok_or_else(|| {
                                    invalid(
                                        on.span(),
                                        format!(
                                            "key 'on' of schedule '{name}': '{day}' is not a weekday (mon, tue, wed, thu, fri, sat, sun)"
                                        ),
                                    )
                                })?;
                            days[index] = true;
                        }
                        if !days.contains(&true) {
                            return Err(invalid(
                                on.span(),
                                format!("key 'on' of schedule '{name}': give at least one weekday"),
                            ));
                        }
                        Some(days)
                    }
                };
                Calendar::Daily {
                    minute_of_day: minute.ok_or_else(|| {
                        invalid(
                            at.span(),
                            format!("key 'at' of schedule '{name}': '{}' is not a time like 02:30 (UTC)", at.get_ref()),
                        )
                    })?,
                    weekdays,
                }
            }
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    entry.span(),
                    format!(
                        "schedule '{name}': give exactly one of 'every' (like 1h) or 'at' (like 02:30)"
                    ),
                ));
            }
        };
        schedules.push(Schedule {
            name,
            command: schedule.command.get_ref().clone(),
            calendar,
        });
    }
    Ok(schedules)
}

impl Schedule {
    /// The latest moment at or before `now_ms` the schedule was due (Unix milliseconds).
    /// No I/O.
    pub fn due_at_or_before(&self, now_ms: i64) -> i64 {
        match self.calendar {
            Calendar::Every { seconds } => {
                let period = seconds as i64 * 1000;
                now_ms.div_euclid(period) * period
            }
            Calendar::Daily {
                minute_of_day,
                weekdays,
            } => {
                let day = 86_400_000;
                let today = now_ms.div_euclid(day) * day + i64::from(minute_of_day) * 60_000;
                let mut due = if today <= now_ms { today } else { today - day };
                if let Some(weekdays) = weekdays {
                    // 1970-01-01 was a Thursday (index 3, Monday first).
                    while !weekdays[(due.div_euclid(day) + 3).rem_euclid(7) as usize] {
                        due -= day;
                    }
                }
                due
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_moments_follow_the_calendar() {
        let every = Schedule {
            name: "a".into(),
            command: vec!["status".into()],
            calendar: Calendar::Every { seconds: 3600 },
        };
        assert_eq!(every.due_at_or_before(7_200_000), 7_200_000);
        assert_eq!(every.due_at_or_before(7_199_999), 3_600_000);
        let daily = Schedule {
            calendar: Calendar::Daily {
                minute_of_day: 150,
                weekdays: None,
            },
            ..every.clone()
        };
        let day = 86_400_000;
        assert_eq!(
            daily.due_at_or_before(day + 150 * 60_000),
            day + 150 * 60_000
        );
        assert_eq!(
            daily.due_at_or_before(day + 60_000),
            150 * 60_000,
            "yesterday's"
        );
        // Sundays at 02:30: 1970-01-04 was the first Sunday.
        let mut sundays = [false; 7];
        sundays[6] = true;
        let weekly = Schedule {
            calendar: Calendar::Daily {
                minute_of_day: 150,
                weekdays: Some(sundays),
            },
            ..every
        };
        let first = 3 * day + 150 * 60_000;
        assert_eq!(weekly.due_at_or_before(first + 1), first);
        assert_eq!(weekly.due_at_or_before(first + 6 * day), first, "Saturday");
        assert_eq!(weekly.due_at_or_before(first + 7 * day), first + 7 * day);
        assert_eq!(weekly.due_at_or_before(first - 1), first - 7 * day);
        assert_eq!(seconds("15m"), Some(900));
        assert_eq!(seconds("0s"), None);
        assert_eq!(seconds("1w"), None);
    }
}
