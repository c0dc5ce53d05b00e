//! Firmware, app and model cohorts side by side, from a day's
//! `fleet_health_daily` partition: its rows (one per merchant, store and
//! cohort) summed per cohort, worst crash rate first.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use tillwatch_domain::HourPartition;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::outputs::FLEET_HEALTH_DAILY;
use tillwatch_storage::{Lake, OutputGrain};

use crate::Queries;
use crate::error::{QueryError, blocking};

/// One firmware, app and model combination over the fleet on one day.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Cohort {
    pub firmware_version: String,
    pub app_version: String,
    pub model: String,
    pub devices: i64,
    pub transactions: i64,
    pub crashes_and_hangs: i64,
    /// Unknown for a cohort without transactions.
    pub crashes_per_1000_transactions: Option<f64>,
    /// The mean of the stores' p95 transaction latencies.
    pub txn_latency_p95_ms: Option<f64>,
    /// The mean of the stores' battery drain.
    pub battery_drain_pct_per_hour: Option<f64>,
}

/// A day's cohorts.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Cohorts {
    /// `2026-11-22`.
    pub day: String,
    pub cohorts: Vec<Cohort>,
}

/// The newest `count` days with a partition of `job` in the lake, newest
/// first. Blocking.
pub(crate) fn rolled_up_days(
    lake: &Lake,
    job: &str,
    count: usize,
) -> Result<Vec<Partition>, QueryError> {
    let dir = lake.root().join(job);
    let mut found: Vec<Partition> = lake
        .subdirectories(&dir)?
        .into_iter()
        .filter_map(|name| Partition::parse_key(name.strip_prefix("date=")?))
        .filter(|p| p.grain == Grain::Day)
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.truncate(count);
    Ok(found)
}

/// Where a day's partition of `job` is.
pub(crate) fn day_path(lake: &Lake, job: &str, day: Partition) -> std::path::PathBuf {
    lake.output_path(
        job,
        HourPartition(day.start_ms.div_euclid(3_600_000)),
        OutputGrain::Day,
    )
}

#[derive(Default)]
struct Sums {
    devices: i64,
    transactions: i64,
    crashes_and_hangs: i64,
    latency: (f64, u32),
    drain: (f64, u32),
}

fn mean((sum, n): (f64, u32)) -> Option<f64> {
    (n > 0).then(|| sum / f64::from(n))
}

const COLUMNS: [&str; 9] = [
    "firmware_version",
    "app_version",
    "model",
    "devices",
    "transactions",
    "crashes",
    "hangs",
    "txn_latency_p95_ms",
    "battery_drain_pct_per_hour",
];

/// The cohorts of one file's rows. Blocking.
fn cohorts_of(lake: &Lake, path: &std::path::Path) -> Result<Vec<Cohort>, QueryError> {
    let rows = lake.read_rows(path, &COLUMNS, &[])?;
    let missing = |c: &str| QueryError::Internal(format!("{}: no column {c}", path.display()));
    let text = |c: &'static str| rows.texts(c).ok_or_else(|| missing(c));
    let int = |c: &'static str| rows.ints(c).ok_or_else(|| missing(c));
    let float = |c: &'static str| rows.floats(c).ok_or_else(|| missing(c));
    let (firmware, app, model) = (
        text("firmware_version")?,
        text("app_version")?,
        text("model")?,
    );
    let (devices, transactions, crashes, hangs) = (
        int("devices")?,
        int("transactions")?,
        int("crashes")?,
        int("hangs")?,
    );
    let (latency, drain) = (
        float("txn_latency_p95_ms")?,
        float("battery_drain_pct_per_hour")?,
    );
    let mut groups: BTreeMap<(String, String, String), Sums> = BTreeMap::new();
    for i in 0..rows.len() {
        let key = (
            firmware[i].clone().unwrap_or_default(),
            app[i].clone().unwrap_or_default(),
            model[i].clone().unwrap_or_default(),
        );
        let g = groups.entry(key).or_default();
        g.devices += devices[i].unwrap_or(0);
        g.transactions += transactions[i].unwrap_or(0);
        if let (Some(c), Some(h)) = (crashes[i], hangs[i]) {
            g.crashes_and_hangs += c + h;
        }
        if let Some(v) = latency[i] {
            g.latency = (g.latency.0 + v, g.latency.1 + 1);
        }
        if let Some(v) = drain[i] {
            g.drain = (g.drain.0 + v, g.drain.1 + 1);
        }
    }
    let mut out: Vec<Cohort> = groups
        .into_iter()
        .map(|((firmware_version, app_version, model), g)| Cohort {
            firmware_version,
            app_version,
            model,
            devices: g.devices,
            transactions: g.transactions,
            crashes_and_hangs: g.crashes_and_hangs,
            crashes_per_1000_transactions: (g.transactions != 0)
                .then(|| 1000.0 * g.crashes_and_hangs as f64 / g.transactions as f64),
            txn_latency_p95_ms: mean(g.latency),
            battery_drain_pct_per_hour: mean(g.drain),
        })
        .collect();
    // Worst crash rate first (unknown rates last), then the largest.
    out.sort_by(|a, b| {
        let rate = |c: &Cohort| c.crashes_per_1000_transactions.unwrap_or(f64::NEG_INFINITY);
        rate(b)
            .total_cmp(&rate(a))
            .then_with(|| b.devices.cmp(&a.devices))
    });
    Ok(out)
}

impl Queries {
    /// The cohorts of `day` (`2026-11-22`), or of the newest day rolled up.
    pub async fn cohorts(&self, day: Option<&str>) -> Result<Cohorts, QueryError> {
        let day = day
            .map(|text| {
                Partition::parse_key(text)
                    .filter(|p| p.grain == Grain::Day)
                    .ok_or_else(|| {
                        QueryError::invalid("day", format!("{text:?} is not a day like 2026-11-22"))
                    })
            })
            .transpose()?;
        let lake = self.lake.clone();
        blocking(move || {
            let day = match day {
                Some(day) => day,
                None => rolled_up_days(&lake, FLEET_HEALTH_DAILY, 1)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| QueryError::NotFound("no day has been rolled up yet".into()))?,
            };
            let path = day_path(&lake, FLEET_HEALTH_DAILY, day);
            if !lake.exists(&path)? {
                return Err(QueryError::NotFound(format!(
                    "{day} has not been rolled up"
                )));
            }
            Ok(Cohorts {
                day: day.key(),
                cohorts: cohorts_of(&lake, &path)?,
            })
        })
        .await
    }
}
