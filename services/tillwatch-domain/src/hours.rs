//! Weekly opening hours in a time zone: when a store is open, and how long
//! until it closes. Written as `Mon-Fri 08:00-20:00, Sat 09:00-14:00`:
//! days not named are closed, a range past midnight (`Fri 18:00-02:00`)
//! runs into the next day, `24h` is always open and `closed` never.

use jiff::Timestamp;
use jiff::tz::TimeZone;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MINUTES: u16 = 24 * 60;

/// Open intervals per weekday (Monday first), in minutes of the local day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklyHours {
    days: [Vec<(u16, u16)>; 7],
}

fn day(name: &str) -> Option<usize> {
    let name = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| name.starts_with(d) && name.len() <= 9)
}

fn minute(text: &str) -> Option<u16> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    // Lazily: an hour out of range must not reach the multiplication.
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then(|| h * 60 + m)
}

impl WeeklyHours {
    pub fn always() -> WeeklyHours {
        WeeklyHours {
            days: std::array::from_fn(|_| vec![(0, DAY_MINUTES)]),
        }
    }

    pub fn parse(text: &str) -> Result<WeeklyHours, HoursError> {
        let text = text.trim();
        let mut hours = WeeklyHours {
            days: Default::default(),
        };
        match text.to_ascii_lowercase().as_str() {
            "24h" | "24/7" | "always" => return Ok(WeeklyHours::always()),
            "closed" | "" => return Ok(hours),
            _ => {}
        }
        for entry in text
            .split([',', ';'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let bad = || HoursError::Syntax(entry.to_string());
            let (days, range) = entry.split_once(' ').ok_or_else(bad)?;
            let (first, last) = match days.split_once('-') {
                Some((a, b)) => (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?),
                None if days.eq_ignore_ascii_case("daily") => (0, 6),
                None => {
                    let d = day(days).ok_or_else(bad)?;
                    (d, d)
                }
            };
            let (open, close) = range.trim().split_once('-').ok_or_else(bad)?;
            let (open, close) = (
                minute(open).ok_or_else(bad)?,
                minute(close).ok_or_else(bad)?,
            );
            if open == close {
                return Err(HoursError::Empty(entry.to_string()));
            }
            let mut d = first;
            loop {
                if close > open {
                    hours.days[d].push((open, close));
                } else {
                    // Past midnight: the rest of this day and the start of the next.
                    hours.days[d].push((open, DAY_MINUTES));
                    if close > 0 {
                        hours.days[(d + 1) % 7].push((0, close));
                    }
                }
                if d == last {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        for intervals in &mut hours.days {
            intervals.sort_unstable();
        }
        Ok(hours)
    }

    fn local(at_ms: i64, tz: &TimeZone) -> Option<(usize, u16)> {
        let zoned = Timestamp::from_millisecond(at_ms)
            .ok()?
            .to_zoned(tz.clone());
        let weekday = zoned.weekday().to_monday_zero_offset() as usize;
        Some((weekday, zoned.hour() as u16 * 60 + zoned.minute() as u16))
    }

    pub fn is_open(&self, at_ms: i64, tz: &TimeZone) -> bool {
        Self::local(at_ms, tz).is_some_and(|(d, m)| {
            self.days[d]
                .iter()
                .any(|&(open, close)| open <= m && m < close)
        })
    }

    /// Minutes until the store closes, when it is open at `at_ms`; `None`
    /// when closed, or open all week.
    pub fn minutes_to_close(&self, at_ms: i64, tz: &TimeZone) -> Option<u32> {
        let (mut d, m) = Self::local(at_ms, tz)?;
        let mut end = self.days[d]
            .iter()
            .find(|&&(open, close)| open <= m && m < close)?
            .1;
        let mut total = u32::from(end - m);
        // An interval ending at midnight goes on if the next day opens at 0.
        for _ in 0..7 {
            if end != DAY_MINUTES {
                return Some(total);
            }
            d = (d + 1) % 7;
            end = self.days[d].iter().find(|&&(open, _)| open == 0)?.1;
            total += u32::from(end);
        }
        None
    }
}

/// Why opening hours' text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error("{0:?}: expected DAY[-DAY] HH:MM-HH:MM, for example \"Mon-Fri 08:00-20:00\"")]
    Syntax(String),
    #[error("{0:?}: opens and closes at the same time")]
    Empty(String),
}

/// A time-zone name the database does not know.
#[derive(Debug, thiserror::Error)]
#[error("time zone {name:?}: {source}")]
pub struct TimeZoneError {
    pub name: String,
    #[source]
    pub source: jiff::Error,
}

/// A time zone by IANA name, with the name in the error.
pub fn time_zone(name: &str) -> Result<TimeZone, TimeZoneError> {
    TimeZone::get(name).map_err(|source| TimeZoneError {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `schedules` fuzz target: an hour too large for
    /// minutes overflowed before it was refused.
    #[test]
    fn an_hour_past_any_day_is_refused_not_multiplied() {
        assert!(WeeklyHours::parse("fri 62551:0-23:00").is_err());
        assert!(WeeklyHours::parse("mon 65535:59-24:00").is_err());
        assert_eq!(minute("24:00"), Some(1440));
        assert_eq!(minute("24:01"), None);
    }

    fn at(civil: &str, tz: &str) -> i64 {
        let dt: jiff::civil::DateTime = civil.parse().unwrap();
        dt.to_zoned(time_zone(tz).unwrap())
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    #[test]
    fn hours_hold_in_the_stores_own_time_zone() {
        let hours = WeeklyHours::parse("Mon-Fri 08:00-20:00, Sat 09:00-14:00").unwrap();
        let berlin = time_zone("Europe/Berlin").unwrap();
        // 2026-11-23 is a Monday.
        assert!(hours.is_open(at("2026-11-23T08:00", "Europe/Berlin"), &berlin));
        assert!(!hours.is_open(at("2026-11-23T07:59", "Europe/Berlin"), &berlin));
        assert!(!hours.is_open(at("2026-11-23T20:00", "Europe/Berlin"), &berlin));
        assert!(
            !hours.is_open(at("2026-11-23T03:00", "Europe/Berlin"), &berlin),
            "night"
        );
        assert!(
            hours.is_open(at("2026-11-28T13:00", "Europe/Berlin"), &berlin),
            "Saturday"
        );
        assert!(
            !hours.is_open(at("2026-11-29T13:00", "Europe/Berlin"), &berlin),
            "Sunday"
        );
        // 19:30 in Berlin is 18:30 UTC: the same instant judged in UTC is open too,
        // but 07:30 UTC on Monday is 08:30 in Berlin: open, though UTC says closed.
        let utc = time_zone("UTC").unwrap();
        let instant = at("2026-11-23T07:30", "UTC");
        assert!(hours.is_open(instant, &berlin) && !hours.is_open(instant, &utc));
        assert_eq!(
            hours.minutes_to_close(at("2026-11-23T18:30", "Europe/Berlin"), &berlin),
            Some(90)
        );
        assert_eq!(
            hours.minutes_to_close(at("2026-11-23T21:00", "Europe/Berlin"), &berlin),
            None
        );
    }

    #[test]
    fn ranges_past_midnight_always_and_never() {
        let bar = WeeklyHours::parse("Fri-Sat 18:00-02:00").unwrap();
        let utc = time_zone("UTC").unwrap();
        assert!(
            bar.is_open(at("2026-11-28T01:00", "UTC"), &utc),
            "Saturday 01:00, Friday's night"
        );
        assert!(
            bar.is_open(at("2026-11-29T01:59", "UTC"), &utc),
            "Sunday 01:59, Saturday's night"
        );
        assert!(!bar.is_open(at("2026-11-29T02:00", "UTC"), &utc));
        assert_eq!(
            bar.minutes_to_close(at("2026-11-27T23:00", "UTC"), &utc),
            Some(180)
        );
        assert!(WeeklyHours::parse("24h").unwrap().is_open(0, &utc));
        assert_eq!(WeeklyHours::always().minutes_to_close(0, &utc), None);
        assert!(!WeeklyHours::parse("closed").unwrap().is_open(0, &utc));
    }

    #[test]
    fn bad_hours_and_zones_say_what_is_wrong() {
        let err = WeeklyHours::parse("Mon-Fri 8-20").unwrap_err().to_string();
        assert!(
            err.contains("Mon-Fri 8-20") && err.contains("HH:MM"),
            "{err}"
        );
        assert!(WeeklyHours::parse("Funday 08:00-09:00").is_err());
        assert!(WeeklyHours::parse("Mon 25:00-26:00").is_err());
        let err = time_zone("Mars/Olympus").unwrap_err().to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }
}
