use chrono::{DateTime, Datelike, Timelike, Utc};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UtcMillis(pub i64);

impl UtcMillis {
    pub fn now() -> Self {
        UtcMillis(Utc::now().timestamp_millis())
    }

    /// The hour this instant falls in, as the lake partitions it.
    pub fn hour(self) -> HourPartition {
        HourPartition(self.0.div_euclid(3_600_000))
    }

    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(self.0)
    }
}

/// One UTC hour, counted in hours since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HourPartition(pub i64);

impl HourPartition {
    pub fn start(self) -> UtcMillis {
        UtcMillis(self.0 * 3_600_000)
    }

    /// `date=YYYY-MM-DD/hour=HH`, the hive-style path of this hour.
    pub fn hive_path(self) -> String {
        match self.start().to_datetime() {
            Some(t) => format!(
                "date={:04}-{:02}-{:02}/hour={:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            ),
            // Out of chrono's range; validation keeps such readings out of
            // the lake, so this only names dead letters' odd receive times.
            None => format!("date=invalid/hour={}", self.0),
        }
    }

    /// The inverse of [`HourPartition::hive_path`], from its two directory
    /// names.
    pub fn from_hive(date_dir: &str, hour_dir: &str) -> Option<HourPartition> {
        let date = date_dir.strip_prefix("date=")?;
        let hour: u32 = hour_dir.strip_prefix("hour=")?.parse().ok()?;
        let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let t = day.and_hms_opt(hour, 0, 0)?.and_utc();
        Some(UtcMillis(t.timestamp_millis()).hour())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_partition_by_utc_hour() {
        // 2026-11-22T13:59:59.999Z and 14:00:00.000Z
        let before = UtcMillis(1_795_355_999_999);
        let after = UtcMillis(1_795_356_000_000);
        assert_eq!(before.hour().hive_path(), "date=2026-11-22/hour=13");
        assert_eq!(after.hour().hive_path(), "date=2026-11-22/hour=14");
        assert_eq!(UtcMillis(-1).hour().hive_path(), "date=1969-12-31/hour=23");
        assert_eq!(
            HourPartition::from_hive("date=2026-11-22", "hour=13"),
            Some(before.hour())
        );
        assert_eq!(HourPartition::from_hive("date=2026-11-22", "hour=24"), None);
        assert_eq!(HourPartition::from_hive("x", "hour=1"), None);
    }
}
