//! One terminal's time series over HTTP, for the device page's charts:
//!
//! `GET /api/v1/devices/{device_id}/series?from=&to=&resolution=`
//!
//! - `from`, `to`: milliseconds since 1970 or RFC 3339 (`2026-11-22T06:00:00Z`);
//!   default the last 24 hours; at most 31 days apart.
//! - `resolution`: `raw` (every reading, from the raw lake; at most 6 hours),
//!   `hour` (the hourly rollup) or `auto` (default: raw up to 6 hours,
//!   hourly beyond).
//!
//! The answer: `{"resolution", "from_ms", "to_ms", "series": {name: [[ms, value], …]},
//! "connectivity": [{"at_ms", "state"}, …], "cadence_ms", "completeness":
//! {"received", "expected", "ratio"}, "gaps": [{"from_ms", "to_ms"}, …]}`
//! with the same series names at both resolutions (at `hour`, a latency is
//! the hour's p95, a battery level its mean, RSSI its median; counts are
//! the hour's sums). The device id reaches the query engine as a value,
//! never as SQL text.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use datafusion::prelude::{ParquetReadOptions, SessionContext, col, lit};
use serde::Deserialize;
use serde_json::{Value, json};
use tillwatch_api::{Answer, ApiError, Doc, Routes, bad, not_found};
use tillwatch_domain::{HourPartition, Kind, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::{Lake, Table};

use crate::embedded::Embedded;
use crate::jobs::DEVICE_HEALTH_HOURLY;

const HOUR_MS: i64 = 3_600_000;
/// The longest range served from raw readings.
pub const RAW_MAX_MS: i64 = 6 * HOUR_MS;
/// The longest range served at all.
pub const MAX_RANGE_MS: i64 = 31 * 24 * HOUR_MS;

/// (series name, raw column) per raw table.
const RAW: [(Kind, &[(&str, &str)]); 4] = [
    (Kind::Battery, &[("battery_pct", "level_pct")]),
    (
        Kind::Connectivity,
        &[
            ("rssi_dbm", "rssi_dbm"),
            ("host_latency_ms", "payment_host_latency_ms"),
            ("disconnects", "disconnects"),
        ],
    ),
    (
        Kind::AppPerformance,
        &[
            ("transactions", "transactions"),
            ("txn_latency_ms", "transaction_latency_avg_ms"),
            ("crashes", "crashes"),
        ],
    ),
    (
        Kind::PaymentHealth,
        &[("offline_queue", "offline_queue_len")],
    ),
];

/// (series name, column of `device_health_hourly`).
const HOURLY: &[(&str, &str)] = &[
    ("battery_pct", "battery_avg_pct"),
    ("battery_min_pct", "battery_min_pct"),
    ("rssi_dbm", "rssi_median_dbm"),
    ("host_latency_ms", "host_latency_p95_ms"),
    ("disconnects", "disconnects"),
    ("transactions", "transactions"),
    ("txn_latency_ms", "txn_latency_p95_ms"),
    ("crashes", "crashes"),
    ("offline_queue", "offline_queue_max"),
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
const RAW_COUNTED: [&str; 4] = ["battery_pct", "rssi_dbm", "transactions", "offline_queue"];
const HOURLY_COUNTS: [&str; 4] = [
    "battery_readings",
    "connectivity_readings",
    "app_readings",
    "payment_readings",
];

#[derive(Clone)]
struct SeriesState {
    lake: Lake,
    store: MetaStore,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    resolution: Option<String>,
}

/// Milliseconds since 1970, or an RFC 3339 instant.
fn instant(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            bad(format!(
                "{name}: {text:?} is neither milliseconds since 1970 nor an RFC 3339 time like 2026-11-22T06:00:00Z"
            ))
        })
}

fn values(batch: &RecordBatch, column: &str) -> Option<Vec<Option<f64>>> {
    let c = batch.column_by_name(column)?;
    let c = arrow::compute::cast(c, &DataType::Float64).ok()?;
    let c = c.as_primitive::<Float64Type>();
    Some(
        (0..c.len())
            .map(|i| (c.is_valid(i) && c.value(i).is_finite()).then(|| c.value(i)))
            .collect(),
    )
}

fn millis(batch: &RecordBatch, column: &str) -> Option<Vec<i64>> {
    let c = batch.column_by_name(column)?;
    let c = arrow::compute::cast(c, &DataType::Int64).ok()?;
    let c = c.as_primitive::<Int64Type>();
    Some((0..c.len()).map(|i| c.value(i)).collect())
}

type Points = BTreeMap<String, Vec<(i64, f64)>>;

/// Reads `files`, keeps `device`'s rows in `[from, to)` by `time`, and adds
/// each `(name, column)` present to `out`.
async fn collect(
    ctx: &SessionContext,
    files: Vec<String>,
    device: &str,
    time: &str,
    columns: &[(&str, &str)],
    (from, to): (i64, i64),
    out: &mut Points,
) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    let frame = ctx
        .read_parquet(files, ParquetReadOptions::default())
        .await
        .map_err(|e| e.to_string())?
        .filter(col("device_id").eq(lit(device.to_string())))
        .map_err(|e| e.to_string())?;
    let batches = frame.collect().await.map_err(|e| e.to_string())?;
    for batch in &batches {
        let Some(times) = millis(batch, time) else {
            continue;
        };
        for (name, column) in columns {
            let Some(vals) = values(batch, column) else {
                continue;
            };
            let points = out.entry(name.to_string()).or_default();
            for (t, v) in times.iter().zip(vals) {
                if let Some(v) = v
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

async fn series(
    State(s): State<SeriesState>,
    Path(device): Path<String>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let to = q.to.as_deref().map(|t| instant("to", t)).transpose()?;
    let from = q.from.as_deref().map(|t| instant("from", t)).transpose()?;
    let answer = device_series(
        &s.lake,
        &s.store,
        &device,
        from,
        to,
        q.resolution.as_deref(),
    )
    .await?;
    Ok(Json(answer))
}

/// One terminal's series over `[from, to)` (default: the 24 hours up to
/// now) at `resolution` (`auto`, `raw` or `hour`), as the HTTP API answers
/// it; the gRPC API converts the same answer.
pub async fn device_series(
    lake: &Lake,
    store: &MetaStore,
    device: &str,
    from: Option<i64>,
    to: Option<i64>,
    resolution: Option<&str>,
) -> Result<Value, ApiError> {
    let s = SeriesState {
        lake: lake.clone(),
        store: store.clone(),
    };
    let device = device.to_string();
    let now = UtcMillis::now().0;
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - 24 * HOUR_MS);
    if from >= to {
        return Err(bad("from: must be before to"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(bad("from: the range may be at most 31 days"));
    }
    let raw = match resolution.unwrap_or("auto") {
        "auto" => to - from <= RAW_MAX_MS,
        "raw" if to - from <= RAW_MAX_MS => true,
        "raw" => {
            return Err(bad(
                "resolution: raw readings are served for at most 6 hours; use hour",
            ));
        }
        "hour" => false,
        other => {
            return Err(bad(format!(
                "resolution: {other:?} is not auto, raw or hour"
            )));
        }
    };
    let Some(record) = s.store.device(&device).await? else {
        return Err(not_found(format!("no device {device:?}")));
    };
    let cadence_ms = s
        .store
        .device_connectivity(&device)
        .await?
        .and_then(|c| c.gap_ms)
        .filter(|g| *g > 0.0);
    let changes: Vec<Value> = s
        .store
        .connectivity_between(&device, from, to, 10_000)
        .await?
        .iter()
        .map(|h| json!({ "at_ms": h.at_ms.max(from), "state": h.to.as_str() }))
        .collect();
    let hours = Partition::overlapping(Grain::Hour, from, to);
    let mut out = Points::new();
    let outputs = Embedded::new(s.lake.clone());
    let ctx = outputs.session();
    let failed = |e: String| {
        ApiError(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the lake: {e}"),
        )
    };
    if raw {
        for (kind, columns) in RAW {
            let table = Table::Reading(kind);
            let lake = s.lake.clone();
            let list = hours.clone();
            let files: Vec<String> = tokio::task::spawn_blocking(move || {
                let mut files = Vec::new();
                for h in &list {
                    let hour = HourPartition(h.start_ms / HOUR_MS);
                    let listed = lake
                        .try_hour_files(table, hour)
                        .map_err(|e| e.to_string())?;
                    files.extend(listed.iter().map(|p| p.display().to_string()));
                }
                Ok::<_, String>(files)
            })
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(failed)?;
            collect(
                &ctx,
                files,
                &device,
                "sampled_at",
                columns,
                (from, to),
                &mut out,
            )
            .await
            .map_err(failed)?;
        }
    } else {
        let lake = s.lake.clone();
        let paths: Vec<_> = hours
            .iter()
            .map(|h| outputs.output_path(DEVICE_HEALTH_HOURLY, *h))
            .collect();
        let files: Vec<String> = tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            for p in paths {
                if lake.exists(&p).map_err(|e| e.to_string())? {
                    files.push(p.display().to_string());
                }
            }
            Ok::<_, String>(files)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?;
        // An hour counts whole when it starts in the range.
        let range = (Partition::containing(Grain::Hour, from).start_ms, to);
        collect(&ctx, files, &device, "hour", HOURLY, range, &mut out)
            .await
            .map_err(failed)?;
    }
    // What was expected: every kind once per reporting interval, from the
    // terminal's first reading (or `from`) to `to` (or now).
    let window = (from.max(record.first_seen_ms), to.min(now));
    let coverage = if raw {
        raw_coverage(&out, window, cadence_ms)
    } else {
        hourly_coverage(&mut out, window, cadence_ms)
    };
    let series: BTreeMap<String, Value> = out
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by_key(|(t, _)| *t);
            let list: Vec<Value> = points.iter().map(|(t, v)| json!([t, v])).collect();
            (name, Value::Array(list))
        })
        .collect();
    Ok(json!({
        "device_id": device,
        "resolution": if raw { "raw" } else { "hour" },
        "from_ms": from,
        "to_ms": to,
        "series": series,
        "connectivity": changes,
        "cadence_ms": cadence_ms,
        "completeness": coverage.completeness,
        "gaps": coverage.gaps.iter().map(|(a, b)| json!({ "from_ms": a, "to_ms": b })).collect::<Vec<_>>(),
    }))
}

/// How much of the expected telemetry arrived, and the stretches with none.
///
/// Counted in reports: a terminal reports once per reporting interval (the
/// gap between its messages, learned by the connectivity state machine),
/// with one reading of each kind or one kind at a time, so a window of
/// `span` expects `span / interval` reports.
struct Coverage {
    completeness: Value,
    gaps: Vec<(i64, i64)>,
}

fn completeness(received: f64, window: (i64, i64), cadence_ms: Option<f64>) -> Value {
    let Some(cadence) = cadence_ms else {
        return Value::Null;
    };
    let span = (window.1 - window.0).max(0) as f64;
    let expected = (span / cadence).floor();
    if expected < 1.0 {
        return Value::Null;
    }
    json!({
        "received": received.min(expected),
        "expected": expected,
        "ratio": (received / expected).min(1.0),
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
            gaps.push((previous, t));
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
    let mut gaps: Vec<(i64, i64)> = Vec::new();
    let mut pct = Vec::new();
    let mut hour = Partition::containing(Grain::Hour, window.0).start_ms;
    while hour < window.1 {
        let (a, b) = (hour.max(window.0), (hour + HOUR_MS).min(window.1));
        let counts = per_hour.get(&hour).cloned().unwrap_or_default();
        if counts.iter().sum::<f64>() == 0.0 {
            match gaps.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => gaps.push((a, b)),
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

/// The series route over the lake, checking devices in the store.
pub fn router(lake: Lake, store: MetaStore) -> Routes {
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/devices/{device_id}/series",
                "fleet",
                "A terminal's time series: every reading up to 6 hours, the hourly rollup beyond",
            )
            .path_param("device_id", "The terminal")
            .query(
                "from",
                "string",
                "Start: ms since 1970 or RFC 3339 (default: 24 h before to)",
            )
            .query(
                "to",
                "string",
                "End: ms since 1970 or RFC 3339 (default: now)",
            )
            .query("resolution", "string", "auto (default), raw or hour"),
            get(series),
        )
        .with_state(SeriesState { lake, store })
}

#[cfg(test)]
mod tests {
    use super::hour_reports;

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
