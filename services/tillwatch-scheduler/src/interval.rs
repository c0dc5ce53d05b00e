//! Partitions: the hour, UTC day, ISO week (Monday to Monday, UTC) or
//! calendar month (UTC) a job's run covers.

use std::fmt;

use jiff::civil::{Date, ISOWeekDate, Weekday};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-01 was a Thursday: the Monday of its ISO week is 3 days earlier.
const FIRST_MONDAY_MS: i64 = -3 * DAY_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Hour,
    Day,
    Week,
    Month,
}

impl Grain {
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Hour => "hour",
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Grain> {
        match s {
            "hour" | "hourly" => Some(Grain::Hour),
            "day" | "daily" => Some(Grain::Day),
            "week" | "weekly" => Some(Grain::Week),
            "month" | "monthly" => Some(Grain::Month),
            _ => None,
        }
    }

    /// The cron expression that fires as each partition ends (UTC).
    pub fn schedule(self) -> &'static str {
        match self {
            Grain::Hour => "@hourly",
            Grain::Day => "@daily",
            Grain::Week => "0 0 * * MON",
            Grain::Month => "@monthly",
        }
    }
}

/// The UTC date of an instant (instants outside jiff's range are clamped
/// to its ends: no partition lies there).
fn utc_date(at_ms: i64) -> Date {
    let t = jiff::Timestamp::from_millisecond(at_ms).unwrap_or(if at_ms < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    t.to_zoned(jiff::tz::TimeZone::UTC).date()
}

/// Midnight UTC of a date, in milliseconds.
fn utc_midnight_ms(date: Date) -> Option<i64> {
    Some(
        date.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond(),
    )
}

/// One interval of one grain, `[start_ms, end_ms)`, aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub grain: Grain,
    pub start_ms: i64,
}

impl Partition {
    /// The partition of `grain` holding the instant `at_ms`.
    pub fn containing(grain: Grain, at_ms: i64) -> Partition {
        let start_ms = match grain {
            Grain::Hour => at_ms.div_euclid(HOUR_MS) * HOUR_MS,
            Grain::Day => at_ms.div_euclid(DAY_MS) * DAY_MS,
            Grain::Week => {
                (at_ms - FIRST_MONDAY_MS).div_euclid(WEEK_MS) * WEEK_MS + FIRST_MONDAY_MS
            }
            Grain::Month => {
                let first = utc_date(at_ms).first_of_month();
                utc_midnight_ms(first).unwrap_or(at_ms.div_euclid(DAY_MS) * DAY_MS)
            }
        };
        Partition { grain, start_ms }
    }

    pub fn end_ms(self) -> i64 {
        match self.grain {
            Grain::Hour => self.start_ms + HOUR_MS,
            Grain::Day => self.start_ms + DAY_MS,
            Grain::Week => self.start_ms + WEEK_MS,
            Grain::Month => utc_date(self.start_ms)
                .first_of_month()
                .checked_add(jiff::Span::new().months(1))
                .ok()
                .and_then(utc_midnight_ms)
                .unwrap_or(self.start_ms + 31 * DAY_MS),
        }
    }

    pub fn next(self) -> Partition {
        Partition {
            start_ms: self.end_ms(),
            ..self
        }
    }

    /// The partitions of `grain` that overlap this one, in order: a day's
    /// 24 hours, or an hour's day.
    pub fn covering(self, grain: Grain) -> Vec<Partition> {
        Partition::overlapping(grain, self.start_ms, self.end_ms())
    }

    /// The partitions of `grain` that overlap `[from_ms, to_ms)`, in order.
    pub fn overlapping(grain: Grain, from_ms: i64, to_ms: i64) -> Vec<Partition> {
        let mut p = Partition::containing(grain, from_ms);
        let mut out = Vec::new();
        while p.start_ms < to_ms {
            out.push(p);
            p = p.next();
        }
        out
    }

    /// Partitions of `grain` from the one holding `from_ms` up to the last
    /// that ends by `to_ms`.
    pub fn range(grain: Grain, from_ms: i64, to_ms: i64) -> Vec<Partition> {
        let mut p = Partition::containing(grain, from_ms);
        let mut out = Vec::new();
        while p.end_ms() <= to_ms {
            out.push(p);
            p = p.next();
        }
        out
    }

    /// The UTC date the partition starts on.
    pub fn start_date(self) -> Date {
        utc_date(self.start_ms)
    }

    /// `2026-11-22T06` (hour), `2026-11-22` (day), `2026-W48` (ISO week)
    /// or `2026-11` (month): the key in the API, the CLI and the run
    /// history.
    pub fn key(self) -> String {
        let t =
            jiff::Timestamp::from_millisecond(self.start_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        match self.grain {
            Grain::Hour => t.strftime("%Y-%m-%dT%H").to_string(),
            Grain::Day => t.strftime("%Y-%m-%d").to_string(),
            Grain::Week => {
                let week = self.start_date().iso_week_date();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Grain::Month => t.strftime("%Y-%m").to_string(),
        }
    }

    /// The inverse of [`Partition::key`].
    pub fn parse_key(key: &str) -> Option<Partition> {
        let number = |s: &str| -> Option<i16> {
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse().ok())
                .flatten()
        };
        let (grain, date) = match key.len() {
            13 => {
                let (day, hour) = key.split_once('T')?;
                let hour = number(hour).filter(|h| (0..24).contains(h))?;
                let date: Date = day.parse().ok()?;
                let ms = utc_midnight_ms(date)? + i64::from(hour) * HOUR_MS;
                return Some(Partition {
                    grain: Grain::Hour,
                    start_ms: ms,
                })
                .filter(|p| p.key() == key);
            }
            10 => (Grain::Day, key.parse::<Date>().ok()?),
            8 => {
                let (year, week) = key.split_once("-W")?;
                let monday = ISOWeekDate::new(
                    number(year)?,
                    i8::try_from(number(week)?).ok()?,
                    Weekday::Monday,
                )
                .ok()?;
                (Grain::Week, monday.date())
            }
            7 => {
                let (year, month) = key.split_once('-')?;
                let month = i8::try_from(number(month)?).ok()?;
                (Grain::Month, Date::new(number(year)?, month, 1).ok()?)
            }
            _ => return None,
        };
        let p = Partition {
            grain,
            start_ms: utc_midnight_ms(date)?,
        };
        Some(p).filter(|p| p.key() == key)
    }
}

/// A partition key that names no partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a partition: give an hour (2026-11-22T06), a day (2026-11-22), an ISO week \
     (2026-W48) or a month (2026-11)"
)]
pub struct PartitionKeyError(pub String);

impl std::str::FromStr for Partition {
    type Err = PartitionKeyError;

    /// A key from the command line or the API (see [`Partition::key`]).
    fn from_str(text: &str) -> Result<Partition, PartitionKeyError> {
        Partition::parse_key(text).ok_or_else(|| PartitionKeyError(text.to_string()))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_covered_by_its_24_hours_and_keys_round_trip() {
        let day = Partition::parse_key("2026-11-22").unwrap();
        let hours = day.covering(Grain::Hour);
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[0].key(), "2026-11-22T00");
        assert_eq!(hours[23].key(), "2026-11-22T23");
        assert_eq!(hours[5].covering(Grain::Day), [day]);
        assert_eq!(Partition::parse_key("2026-11-22T06"), Some(hours[6]));
        assert_eq!(Partition::parse_key("2026-11-22T6"), None);
        assert_eq!(
            Partition::range(Grain::Hour, day.start_ms + 1, day.end_ms()).len(),
            24
        );
        assert_eq!(Partition::parse_key("2026-11-22T24"), None);
        assert_eq!(Partition::parse_key("2026-02-30"), None);
    }

    #[test]
    fn weeks_run_monday_to_monday_and_months_are_calendar_months() {
        // 2026-11-22 is a Sunday: its ISO week 47 began on Monday the 16th.
        let sunday = Partition::parse_key("2026-11-22").unwrap();
        let week = Partition::containing(Grain::Week, sunday.start_ms + 5 * HOUR_MS);
        assert_eq!(week.key(), "2026-W47");
        assert_eq!(week.start_date().to_string(), "2026-11-16");
        assert_eq!(week.start_date().weekday(), Weekday::Monday);
        assert_eq!(week.end_ms() - week.start_ms, WEEK_MS);
        assert_eq!(week.covering(Grain::Day).len(), 7);
        assert_eq!(Partition::parse_key("2026-W47"), Some(week));
        // ISO years: 2027-01-01 is a Friday, in 2026's week 53.
        let new_year = Partition::parse_key("2027-01-01").unwrap();
        let w = Partition::containing(Grain::Week, new_year.start_ms);
        assert_eq!(w.key(), "2026-W53");
        assert_eq!(w.start_date().to_string(), "2026-12-28");
        assert_eq!(Partition::parse_key("2026-W53"), Some(w));
        assert_eq!(Partition::parse_key("2025-W53"), None, "2025 has 52 weeks");
        assert_eq!(Partition::parse_key("2026-W00"), None);
        // Before 1970 too.
        let old = Partition::containing(Grain::Week, -1);
        assert_eq!(old.start_date().to_string(), "1969-12-29");

        let feb = Partition::parse_key("2028-02").unwrap();
        assert_eq!(feb.grain, Grain::Month);
        assert_eq!(feb.start_date().to_string(), "2028-02-01");
        assert_eq!(feb.covering(Grain::Day).len(), 29, "a leap year");
        assert_eq!(feb.next().key(), "2028-03");
        let dec = Partition::parse_key("2026-12").unwrap();
        assert_eq!(dec.next().key(), "2027-01");
        assert_eq!(dec.covering(Grain::Hour).len(), 31 * 24);
        assert_eq!(
            Partition::containing(Grain::Month, dec.end_ms() - 1),
            dec,
            "the last millisecond of December"
        );
        // A week that straddles two months is read by both.
        let straddling = Partition::parse_key("2026-W49").unwrap();
        assert_eq!(
            straddling.covering(Grain::Month),
            [
                Partition::parse_key("2026-11").unwrap(),
                Partition::parse_key("2026-12").unwrap()
            ]
        );
        assert_eq!(Partition::parse_key("2026-13"), None);
        assert_eq!(Partition::parse_key("2026-1x"), None);
        assert!("2026-W4".parse::<Partition>().is_err());
    }
}
