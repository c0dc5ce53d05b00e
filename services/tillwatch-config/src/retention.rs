//! `[retention]`: how long the lake and the metadata store keep what they
//! hold. The scheduler's `retention` job applies it once a day; ClickHouse
//! drops raw rows itself by TTL (`clickhouse.retention`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const DAY: Duration = Duration::from_secs(86_400);

/// The lake's tables a retention can name: the raw tables, the dead
/// letters and the rollups' outputs (each a directory under the lake's
/// root, dated `date=YYYY-MM-DD`).
pub const RETAINED_LAKE_TABLES: [&str; 8] = [
    "battery",
    "connectivity",
    "app_performance",
    "payment_health",
    "dead_letter",
    "device_health_hourly",
    "device_health_daily",
    "fleet_health_daily",
];

/// Ages are whole days (`90d`); what is older is deleted, a whole UTC day
/// at a time, by the scheduler's daily `retention` job. Rollups never run
/// again over hours whose inputs retention may have deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Whether the scheduler runs the `retention` job at all (off keeps
    /// everything forever).
    pub enabled: bool,
    /// The raw tables (`battery`, `connectivity`, `app_performance`,
    /// `payment_health`).
    #[serde(with = "days")]
    pub raw: Duration,
    /// Messages the gateway could not accept, kept for diagnosis.
    #[serde(with = "days")]
    pub dead_letter: Duration,
    /// `device_health_hourly`.
    #[serde(with = "days")]
    pub hourly_rollups: Duration,
    /// `device_health_daily` and `fleet_health_daily`.
    #[serde(with = "days")]
    pub daily_rollups: Duration,
    /// Per-table ages that override the ones above, by lake table name
    /// (e.g. `battery = "30d"`).
    #[serde(with = "per_table")]
    pub tables: BTreeMap<String, Duration>,
    /// Each terminal's online/offline changes (its newest change is kept
    /// whatever its age).
    #[serde(with = "days")]
    pub connectivity_history: Duration,
    /// The history of job runs (the run that produced each partition's
    /// current output is kept whatever its age).
    #[serde(with = "days")]
    pub job_runs: Duration,
    /// Alerts resolved longer ago than this, and their delivery records.
    #[serde(with = "days")]
    pub resolved_alerts: Duration,
    /// Rollup findings from days older than this.
    #[serde(with = "days")]
    pub findings: Duration,
    /// Silences that ended longer ago than this.
    #[serde(with = "days")]
    pub silences: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            raw: DAY * 90,
            dead_letter: DAY * 30,
            hourly_rollups: DAY * 180,
            daily_rollups: DAY * 730,
            tables: BTreeMap::new(),
            connectivity_history: DAY * 90,
            job_runs: DAY * 90,
            resolved_alerts: DAY * 180,
            findings: DAY * 180,
            silences: DAY * 30,
        }
    }
}

/// Ages read as any span (`90d`, `12w`) and written as whole days.
mod days {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn text(d: Duration) -> String {
        if d.as_secs().is_multiple_of(86_400) && d.subsec_nanos() == 0 {
            format!("{}d", d.as_secs() / 86_400)
        } else {
            humantime::format_duration(d).to_string()
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&text(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

mod per_table {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        v: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<&String, String> =
            v.iter().map(|(k, d)| (k, super::days::text(*d))).collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let text = BTreeMap::<String, String>::deserialize(d)?;
        text.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {v:?}: {e}")))
            })
            .collect()
    }
}

impl RetentionConfig {
    /// How long the lake keeps `table` (one of [`RETAINED_LAKE_TABLES`]).
    pub fn lake_table(&self, table: &str) -> Duration {
        if let Some(d) = self.tables.get(table) {
            return *d;
        }
        match table {
            "dead_letter" => self.dead_letter,
            "device_health_hourly" => self.hourly_rollups,
            "device_health_daily" | "fleet_health_daily" => self.daily_rollups,
            _ => self.raw,
        }
    }

    /// The age as whole days, rounded up.
    pub fn days(age: Duration) -> i64 {
        i64::try_from(age.as_secs().div_ceil(86_400)).unwrap_or(i64::MAX)
    }

    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        // A day of margin keeps rollups away from days being deleted; ten
        // years keeps the arithmetic far from overflow.
        fn check(errors: &mut Vec<String>, key: &str, age: Duration) {
            if age < DAY * 2 || age > DAY * 3650 {
                errors.push(format!(
                    "retention.{key}: {} is out of range: give from 2d to 3650d",
                    days::text(age)
                ));
            }
        }
        check(errors, "raw", self.raw);
        check(errors, "dead_letter", self.dead_letter);
        check(errors, "hourly_rollups", self.hourly_rollups);
        check(errors, "daily_rollups", self.daily_rollups);
        check(errors, "connectivity_history", self.connectivity_history);
        check(errors, "job_runs", self.job_runs);
        check(errors, "resolved_alerts", self.resolved_alerts);
        check(errors, "findings", self.findings);
        check(errors, "silences", self.silences);
        for (table, age) in &self.tables {
            if RETAINED_LAKE_TABLES.contains(&table.as_str()) {
                check(errors, &format!("tables.{table}"), *age);
            } else {
                errors.push(format!(
                    "retention.tables.{table}: no such lake table; the tables are {}",
                    RETAINED_LAKE_TABLES.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_table_ages_override_their_group_and_mistakes_name_their_key() {
        let r: RetentionConfig = toml::from_str(
            r#"
            raw = "30d"
            [tables]
            battery = "7d"
            "#,
        )
        .unwrap();
        assert_eq!(r.lake_table("battery"), DAY * 7);
        assert_eq!(r.lake_table("connectivity"), DAY * 30);
        assert_eq!(r.lake_table("fleet_health_daily"), DAY * 730);
        let mut errors = Vec::new();
        r.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        let bad: RetentionConfig = toml::from_str(
            r#"
            job_runs = "1h"
            [tables]
            batteries = "7d"
            "#,
        )
        .unwrap();
        let mut errors = Vec::new();
        bad.validate(&mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("retention.job_runs: 1h is out of range"));
        assert!(errors[1].starts_with("retention.tables.batteries: no such lake table"));
        assert!(toml::from_str::<RetentionConfig>("[tables]\nbattery = \"soon\"").is_err());
    }
}
