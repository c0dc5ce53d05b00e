//! One terminal's time series, for the device page's charts and the gRPC
//! `GetDeviceSeries`: every reading up to [`RAW_MAX_MS`] (from the raw
//! tables), the hourly rollup beyond (the newest hours, until they are
//! rolled up, summarised from their raw readings), with the same series names at both
//! resolutions (at the hourly one a latency is the hour's p95, a battery
//! level its mean, RSSI its median; counts are the hour's sums), the
//! terminal's connectivity changes, and how much of the expected telemetry
//! arrived. The device id filters rows as a value; nothing becomes SQL.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use tillwatch_domain::{HourPartition, Kind};
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::outputs::DEVICE_HEALTH_HOURLY;
use tillwatch_storage::{Lake, OutputGrain, Table};

use crate::error::{QueryError, blocking};
use crate::{Queries, check_instant};

const HOUR_MS: i64 = 3_600_000;
/// The longest range served from raw readings.
pub const RAW_MAX_MS: i64 = 6 * HOUR_MS;
/// At the hourly resolution, hours this recent that are not rolled up yet
/// are summarised from their raw readings.
pub const RAW_FILL_MS: i64 = 48 * HOUR_MS;
/// The longest range served at all.
pub const MAX_RANGE_MS: i64 = 31 * 24 * HOUR_MS;

/// (series name, raw column) per raw table.
const RAW: [(Kind, &[(&str, &str)]); 4] = [
    (Kind::Battery, &[("battery_level_pct", "level_pct")]),
    (
        Kind::Connectivity,
        &[
            ("rssi_dbm", "rssi_dbm"),
            ("payment_host_latency_ms", "payment_host_latency_ms"),
            ("disconnects", "disconnects"),
        ],
    ),
    (
        Kind::AppPerformance,
        &[
            ("transactions", "transactions"),
            ("transaction_latency_ms", "transaction_latency_avg_ms"),
            ("crashes", "crashes"),
        ],
    ),
    (
        Kind::PaymentHealth,
        &[("offline_queue_len", "offline_queue_len")],
    ),
];

/// (series name, column of `device_health_hourly`).
const HOURLY: &[(&str, &str)] = &[
    ("battery_level_pct", "battery_avg_pct"),
    ("battery_level_min_pct", "battery_min_pct"),
    ("rssi_dbm", "rssi_median_dbm"),
    ("payment_host_latency_ms", "host_latency_p95_ms"),
    ("disconnects", "disconnects"),
    ("transactions", "transactions"),
    ("transaction_latency_ms", "txn_latency_p95_ms"),
    ("crashes", "crashes"),
    ("offline_queue_len", "offline_queue_max"),
    ("minutes_online", "minutes_online"),
    ("battery_readings", "battery_readings"),
    ("connectivity_readings", "connectivity_readings"),
    ("app_readings", "app_readings"),
    ("payment_readings", "payment_readings"),
    ("readings_expected", "readings_expected"),
];

/// One series per reading kind: every reading of the kind has a point in
/// it (raw), or its hourly count of readings (hour); they count what
/// arrived.
const RAW_COUNTED: [&str; 4] = [
    "battery_level_pct",
    "rssi_dbm",
    "transactions",
    "offline_queue_len",
];
const HOURLY_COUNTS: [&str; 4] = [
    "battery_readings",
    "connectivity_readings",
    "app_readings",
    "payment_readings",
];

/// Which readings to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// Raw up to [`RAW_MAX_MS`], hourly beyond.
    #[default]
    Auto,
    Raw,
    Hour,
}

impl Resolution {
    /// `auto`, `raw` or `hour`.
    pub fn parse(text: &str) -> Result<Resolution, QueryError> {
        match text {
            "auto" => Ok(Resolution::Auto),
            "raw" => Ok(Resolution::Raw),
            "hour" => Ok(Resolution::Hour),
            other => Err(QueryError::invalid(
                "resolution",
                format!("{other:?} is not auto, raw or hour"),
            )),
        }
    }
}

/// The resolution a series was served at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Served {
    Raw,
    Hour,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Raw => "raw",
            Served::Hour => "hour",
        }
    }
}

/// What was asked: a terminal, a range (default: the 24 hours up to now)
/// and a resolution.
#[derive(Debug, Clone)]
pub struct SeriesRequest {
    pub device_id: String,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub resolution: Resolution,
}

/// A change of the terminal's connectivity within the range (one before
/// the range is shown at its start).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StateChange {
    pub at_ms: i64,
    pub state: String,
}

/// How much of the expected telemetry arrived, counted in reports.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Completeness {
    pub received: f64,
    pub expected: f64,
    /// `received / expected`, at most 1.
    pub ratio: f64,
}

/// A stretch with no telemetry at all.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Gap {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// A point of a series: `(ms since 1970, value)`.
pub type Point = (i64, f64);

/// One terminal's series over a range.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeviceSeries {
    pub device_id: String,
    pub resolution: Served,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Each series by name, its points in time order.
    pub series: BTreeMap<String, Vec<Point>>,
    pub connectivity: Vec<StateChange>,
    /// The terminal's reporting interval, once learned.
    pub cadence_ms: Option<f64>,
    /// Unknown until the reporting interval is.
    pub completeness: Option<Completeness>,
    pub gaps: Vec<Gap>,
}

type Points = BTreeMap<String, Vec<Point>>;

/// Reads `device`'s rows of `files`, keeping those in `[from, to)` by
/// `time`, and adds each `(name, column)` present to `out`. Blocking.
fn collect(
    lake: &Lake,
    files: &[std::path::PathBuf],
    device: &str,
    time: &str,
    columns: &[(&str, &str)],
    (from, to): (i64, i64),
    out: &mut Points,
) -> Result<(), QueryError> {
    let mut wanted: Vec<&str> = vec![time];
    wanted.extend(columns.iter().map(|(_, c)| *c));
    for file in files {
        let rows = lake.read_rows(file, &wanted, &[("device_id", device)])?;
        let Some(times) = rows.ints(time) else {
            continue;
        };
        for (name, column) in columns {
            let Some(values) = rows.floats(column) else {
                continue;
            };
            let points = out.entry(name.to_string()).or_default();
            for (t, v) in times.iter().zip(values) {
                if let (Some(t), Some(v)) = (t, v)
                    && *t >= from
                    && *t < to
                {
                    points.push((*t, v));
                }
            }
        }
    }
    Ok(())
}

/// `device`'s raw readings of `hours` within `range`, each series named
/// as [`RAW`] names it, added to `out`. Blocking.
fn collect_raw(
    lake: &Lake,
    hours: &[Partition],
    device: &str,
    range: (i64, i64),
    out: &mut Points,
) -> Result<(), QueryError> {
    for (kind, columns) in RAW {
        let table = Table::Reading(kind);
        let mut files = Vec::new();
        for h in hours {
            files.extend(lake.try_hour_files(table, HourPartition(h.start_ms / HOUR_MS))?);
        }
        collect(lake, &files, device, "sampled_at", columns, range, out)?;
    }
    Ok(())
}

impl Queries {
    /// One terminal's series (see the module's documentation), `now_ms`
    /// being the present.
    pub async fn device_series(
        &self,
        request: SeriesRequest,
        now_ms: i64,
    ) -> Result<DeviceSeries, QueryError> {
        let SeriesRequest {
            device_id: device,
            from_ms,
            to_ms,
            resolution,
        } = request;
        let to = to_ms.map(|t| check_instant("to", t)).transpose()?;
        let from = from_ms.map(|t| check_instant("from", t)).transpose()?;
        let to = to.unwrap_or(now_ms);
        let from = from.unwrap_or(to - 24 * HOUR_MS);
        if from >= to {
            return Err(QueryError::invalid("from", "must be before to"));
        }
        if to - from > MAX_RANGE_MS {
            return Err(QueryError::invalid(
                "from",
                "the range may be at most 31 days",
            ));
        }
        let raw = match resolution {
            Resolution::Auto => to - from <= RAW_MAX_MS,
            Resolution::Raw if to - from <= RAW_MAX_MS => true,
            Resolution::Raw => {
                return Err(QueryError::invalid(
                    "resolution",
                    "raw readings are served for at most 6 hours; use hour",
                ));
            }
            Resolution::Hour => false,
        };
        let Some(record) = self.store.device(&device).await? else {
            return Err(QueryError::NotFound(format!("no device {device:?}")));
        };
        let cadence_ms = self
            .store
            .device_connectivity(&device)
            .await?
            .and_then(|c| c.gap_ms)
            .filter(|g| *g > 0.0);
        let connectivity: Vec<StateChange> = self
            .store
            .connectivity_between(&device, from, to, 10_000)
            .await?
            .iter()
            .map(|h| StateChange {
                at_ms: h.at_ms.max(from),
                state: h.to.as_str().to_string(),
            })
            .collect();
        let hours = Partition::overlapping(Grain::Hour, from, to);
        let lake = self.lake.clone();
        let reader = device.clone();
        let mut out = blocking(move || {
            let mut out = Points::new();
            if raw {
                collect_raw(&lake, &hours, &reader, (from, to), &mut out)?;
            } else {
                let mut files = Vec::new();
                let mut unrolled = Vec::new();
                for h in &hours {
                    let path = lake.output_path(
                        DEVICE_HEALTH_HOURLY,
                        HourPartition(h.start_ms.div_euclid(HOUR_MS)),
                        OutputGrain::Hour,
                    );
                    if lake.exists(&path)? {
                        files.push(path);
                    } else if h.end_ms() > now_ms - RAW_FILL_MS {
                        unrolled.push(*h);
                    }
                }
                // An hour counts whole when it starts in the range.
                let range = (Partition::containing(Grain::Hour, from).start_ms, to);
                collect(&lake, &files, &reader, "hour", HOURLY, range, &mut out)?;
                // The newest hours are not rolled up yet: their figures
                // come from the raw readings, so every range shows them.
                let mut raw_points = Points::new();
                collect_raw(&lake, &unrolled, &reader, range, &mut raw_points)?;
                hourly_from_raw(&raw_points, &mut out);
            }
            Ok(out)
        })
        .await?;
        // What was expected: every kind once per reporting interval, from the
        // terminal's first reading (or `from`) to `to` (or now).
        let window = (from.max(record.first_seen_ms), to.min(now_ms));
        let coverage = if raw {
            raw_coverage(&out, window, cadence_ms)
        } else {
            hourly_coverage(&mut out, window, cadence_ms)
        };
        for points in out.values_mut() {
            points.sort_by_key(|(t, _)| *t);
        }
        Ok(DeviceSeries {
            device_id: device,
            resolution: if raw { Served::Raw } else { Served::Hour },
            from_ms: from,
            to_ms: to,
            series: out,
            connectivity,
            cadence_ms,
            completeness: coverage.completeness,
            gaps: coverage.gaps,
        })
    }
}

/// The hourly series of hours not rolled up yet, from their raw readings
/// (`raw`, named as [`RAW`] names them), added to `out`: as the hourly
/// rollup has them (a battery level is the hour's mean and its minimum,
/// RSSI the median, latencies the 95th percentile of the readings, counts
/// the hour's sums, the longest offline queue, readings per kind), except
/// that the transaction latency's percentile is over the readings' means
/// rather than weighted by their transactions, and minutes online are not
/// known until the rollup runs.
fn hourly_from_raw(raw: &Points, out: &mut Points) {
    fn by_hour(points: &[Point]) -> BTreeMap<i64, Vec<f64>> {
        let mut hours: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for (t, v) in points {
            hours
                .entry(t.div_euclid(HOUR_MS) * HOUR_MS)
                .or_default()
                .push(*v);
        }
        hours
    }
    fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
        values.sort_by(f64::total_cmp);
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    }
    type Summary = fn(Vec<f64>) -> f64;
    let mean: Summary = |v| v.iter().sum::<f64>() / v.len() as f64;
    let sum: Summary = |v| v.iter().sum();
    let count: Summary = |v| v.len() as f64;
    let min: Summary = |v| v.into_iter().fold(f64::INFINITY, f64::min);
    let max: Summary = |v| v.into_iter().fold(f64::NEG_INFINITY, f64::max);
    let median: Summary = |v| quantile(v, 0.5);
    let p95: Summary = |v| quantile(v, 0.95);
    let summaries: [(&str, &str, Summary); 13] = [
        ("battery_level_pct", "battery_level_pct", mean),
        ("battery_level_pct", "battery_level_min_pct", min),
        ("rssi_dbm", "rssi_dbm", median),
        ("payment_host_latency_ms", "payment_host_latency_ms", p95),
        ("disconnects", "disconnects", sum),
        ("transactions", "transactions", sum),
        ("transaction_latency_ms", "transaction_latency_ms", p95),
        ("crashes", "crashes", sum),
        ("offline_queue_len", "offline_queue_len", max),
        ("battery_level_pct", "battery_readings", count),
        ("rssi_dbm", "connectivity_readings", count),
        ("transactions", "app_readings", count),
        ("offline_queue_len", "payment_readings", count),
    ];
    for (from, to, summary) in summaries {
        let Some(points) = raw.get(from) else {
            continue;
        };
        let series = out.entry(to.to_string()).or_default();
        for (hour, values) in by_hour(points) {
            series.push((hour, summary(values)));
        }
    }
}

/// How much of the expected telemetry arrived, and the stretches with none.
///
/// Counted in reports: a terminal reports once per reporting interval (the
/// gap between its messages, learned by the connectivity state machine),
/// with one reading of each kind or one kind at a time, so a window of
/// `span` expects `span / interval` reports.
struct Coverage {
    completeness: Option<Completeness>,
    gaps: Vec<Gap>,
}

fn completeness(
    received: f64,
    window: (i64, i64),
    cadence_ms: Option<f64>,
) -> Option<Completeness> {
    let cadence = cadence_ms?;
    let span = (window.1 - window.0).max(0) as f64;
    let expected = (span / cadence).floor();
    if expected < 1.0 {
        return None;
    }
    Some(Completeness {
        received: received.min(expected),
        expected,
        ratio: (received / expected).min(1.0),
    })
}

/// Raw readings: a report is a distinct sample time; a gap is more than
/// three reporting intervals (or five minutes when the interval is not
/// known yet) with no reading of any kind.
fn raw_coverage(out: &Points, window: (i64, i64), cadence_ms: Option<f64>) -> Coverage {
    let mut times: Vec<i64> = RAW_COUNTED
        .iter()
        .filter_map(|name| out.get(*name))
        .flat_map(|points| points.iter().map(|(t, _)| *t))
        .collect();
    times.sort_unstable();
    times.dedup();
    let received = times.len() as f64;
    let longest = cadence_ms.map_or(300_000, |c| (3.0 * c) as i64);
    let mut gaps = Vec::new();
    let mut previous = window.0;
    for t in times.into_iter().chain([window.1]) {
        if t - previous > longest {
            gaps.push(Gap {
                from_ms: previous,
                to_ms: t,
            });
        }
        previous = previous.max(t);
    }
    Coverage {
        completeness: completeness(received, window, cadence_ms),
        gaps,
    }
}

/// An hour's reports from its readings of each kind, when `expected`
/// reports were due: a terminal sending one kind per report has as many
/// reports as readings; one sending every kind in each report has as many
/// as its most frequent kind. Readings beyond the reports due mean the
/// latter.
fn hour_reports(counts: &[f64], expected: f64) -> f64 {
    let readings: f64 = counts.iter().sum();
    let most = counts.iter().copied().fold(0.0, f64::max);
    let reports = if readings <= expected * 1.05 {
        readings
    } else {
        most
    };
    reports.min(expected)
}

/// Hourly rollups: a gap is an hour with no reading at all; each hour's
/// completeness becomes the `completeness_pct` series.
fn hourly_coverage(out: &mut Points, window: (i64, i64), cadence_ms: Option<f64>) -> Coverage {
    let mut per_hour: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for name in HOURLY_COUNTS {
        for (t, n) in out.get(name).into_iter().flatten() {
            per_hour.entry(*t).or_default().push(*n);
        }
    }
    let mut received = 0.0;
    let mut gaps: Vec<Gap> = Vec::new();
    let mut pct = Vec::new();
    let mut hour = Partition::containing(Grain::Hour, window.0).start_ms;
    while hour < window.1 {
        let (a, b) = (hour.max(window.0), (hour + HOUR_MS).min(window.1));
        let counts = per_hour.get(&hour).cloned().unwrap_or_default();
        if counts.iter().sum::<f64>() == 0.0 {
            match gaps.last_mut() {
                Some(last) if last.to_ms == a => last.to_ms = b,
                _ => gaps.push(Gap {
                    from_ms: a,
                    to_ms: b,
                }),
            }
        }
        if let Some(cadence) = cadence_ms {
            let expected = (b - a) as f64 / cadence;
            if expected >= 1.0 {
                let reports = hour_reports(&counts, expected);
                received += reports;
                pct.push((hour, 100.0 * reports / expected));
            }
        }
        hour += HOUR_MS;
    }
    if !pct.is_empty() {
        out.insert("completeness_pct".to_string(), pct);
    }
    Coverage {
        completeness: completeness(received, window, cadence_ms),
        gaps,
    }
}

#[cfg(test)]
mod tests {
    use super::{HOUR_MS, Points, hour_reports, hourly_from_raw};

    #[test]
    fn an_hour_not_rolled_up_is_summarised_from_its_raw_readings() {
        let h = 10 * HOUR_MS;
        let mut raw = Points::new();
        raw.insert(
            "battery_level_pct".into(),
            vec![(h, 80.0), (h + 60_000, 78.0), (h + HOUR_MS, 70.0)],
        );
        raw.insert("transactions".into(), vec![(h, 3.0), (h + 60_000, 4.0)]);
        raw.insert(
            "rssi_dbm".into(),
            vec![(h, -70.0), (h + 1, -60.0), (h + 2, -90.0)],
        );
        let mut out = Points::new();
        hourly_from_raw(&raw, &mut out);
        assert_eq!(out["battery_level_pct"], [(h, 79.0), (h + HOUR_MS, 70.0)]);
        assert_eq!(
            out["battery_level_min_pct"],
            [(h, 78.0), (h + HOUR_MS, 70.0)]
        );
        assert_eq!(out["battery_readings"], [(h, 2.0), (h + HOUR_MS, 1.0)]);
        assert_eq!(out["transactions"], [(h, 7.0)]);
        assert_eq!(out["app_readings"], [(h, 2.0)]);
        assert_eq!(out["rssi_dbm"], [(h, -70.0)]);
        assert!(!out.contains_key("offline_queue_len"));
    }

    #[test]
    fn reports_are_readings_or_the_most_frequent_kind() {
        // One kind per report, 60 due: every reading is a report.
        assert_eq!(hour_reports(&[15.0, 15.0, 15.0, 15.0], 60.0), 60.0);
        assert_eq!(hour_reports(&[10.0, 10.0, 10.0, 0.0], 60.0), 30.0);
        // Every kind in each report.
        assert_eq!(hour_reports(&[60.0, 60.0, 60.0, 60.0], 60.0), 60.0);
        assert_eq!(hour_reports(&[30.0, 30.0, 30.0, 30.0], 60.0), 30.0);
        // Never more than due.
        assert_eq!(hour_reports(&[90.0, 90.0, 90.0, 90.0], 60.0), 60.0);
        assert_eq!(hour_reports(&[], 60.0), 0.0);
    }
}
