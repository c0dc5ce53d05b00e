//! Partitions: the hour or the UTC day a job's run covers.

use std::fmt;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Hour,
    Day,
}

impl Grain {
    pub fn ms(self) -> i64 {
        match self {
            Grain::Hour => HOUR_MS,
            Grain::Day => DAY_MS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Grain> {
        match s {
            "hour" | "hourly" => Some(Grain::Hour),
            "day" | "daily" => Some(Grain::Day),
            _ => None,
        }
    }
}

/// One interval of one grain, `[start_ms, start_ms + grain)`, aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub grain: Grain,
    pub start_ms: i64,
}

impl Partition {
    /// The partition of `grain` holding the instant `at_ms`.
    pub fn containing(grain: Grain, at_ms: i64) -> Partition {
        Partition {
            grain,
            start_ms: at_ms.div_euclid(grain.ms()) * grain.ms(),
        }
    }

    pub fn end_ms(self) -> i64 {
        self.start_ms + self.grain.ms()
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

    /// `2026-11-22` or `2026-11-22T06`: the key in lake paths and the API.
    pub fn key(self) -> String {
        let t =
            jiff::Timestamp::from_millisecond(self.start_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        match self.grain {
            Grain::Day => t.strftime("%Y-%m-%d").to_string(),
            Grain::Hour => t.strftime("%Y-%m-%dT%H").to_string(),
        }
    }

    /// The inverse of [`Partition::key`].
    pub fn parse_key(key: &str) -> Option<Partition> {
        let (grain, civil) = if key.len() == 10 {
            (Grain::Day, format!("{key}T00:00"))
        } else if key.len() == 13 {
            (Grain::Hour, format!("{key}:00"))
        } else {
            return None;
        };
        let dt: jiff::civil::DateTime = civil.parse().ok()?;
        let ms = dt
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond();
        Some(Partition::containing(grain, ms)).filter(|p| p.start_ms == ms)
    }
}

/// A partition key that names no partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a partition: give a day (2026-11-22) or an hour (2026-11-22T06)")]
pub struct PartitionKeyError(pub String);

impl std::str::FromStr for Partition {
    type Err = PartitionKeyError;

    /// A key from the command line or the API: `2026-11-22` or
    /// `2026-11-22T06`.
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
    }
}
