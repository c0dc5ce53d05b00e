//! Rules over the daily rollups, evaluated when a day's partition
//! completes (`[alerting.rollup_rules]`):
//! - `cohort_regression` (after `fleet_health_daily`): a firmware/app
//!   cohort's crash rate or transaction latency p95 on the day is at least
//!   `factor` times its level over the previous `baseline_days`;
//! - `chronic_poor_connectivity` (after `device_health_daily`): a terminal
//!   with poor connectivity on `min_days` of the last `of_days` days;
//! - `battery_health` (after `device_health_daily`): battery health below
//!   `below_pct`, or fallen `drop_pct` points within `drop_days`.
//!
//! They read the rollups' Parquet files in the lake, which both engines
//! write, with DataFusion. Each evaluation's complete set of findings goes
//! to the metadata store; the alerter raises alerts for them and resolves
//! those a later day no longer flags.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tillwatch_config::RollupRulesConfig;
use tillwatch_meta::FindingRecord;
use tillwatch_scheduler::{Grain, JobError, Partition};

use crate::embedded::Embedded;
use crate::jobs::{DEVICE_HEALTH_DAILY, FLEET_HEALTH_DAILY};

pub const COHORT_REGRESSION: &str = "cohort_regression";
pub const CHRONIC_POOR_CONNECTIVITY: &str = "chronic_poor_connectivity";
pub const BATTERY_HEALTH: &str = "battery_health";

const DAY_MS: i64 = 86_400_000;
/// A cohort whose baseline had no crashes is judged against this rate
/// (per 1,000 transactions), so one crash on a quiet cohort is not a
/// regression "infinitely" many times over.
const CRASH_RATE_FLOOR: f64 = 0.5;

/// The rules to evaluate when `job`'s `day` completes.
pub fn rules_after(job: &str) -> &'static [&'static str] {
    match job {
        FLEET_HEALTH_DAILY => &[COHORT_REGRESSION],
        DEVICE_HEALTH_DAILY => &[CHRONIC_POOR_CONNECTIVITY, BATTERY_HEALTH],
        _ => &[],
    }
}

/// Registers `job`'s daily outputs for `days` days up to and including
/// `day` as `name` (the days that have one).
async fn register_days(
    ctx: &SessionContext,
    lake: &Embedded,
    job: &str,
    name: &str,
    day: Partition,
    days: u32,
) -> Result<(), JobError> {
    let mut paths = Vec::new();
    for back in 0..i64::from(days.max(1)) {
        let d = Partition::containing(Grain::Day, day.start_ms - back * DAY_MS);
        let path = lake.output_path(job, d);
        if lake.exists(&path).await? {
            paths.push(path.display().to_string());
        }
    }
    if paths.is_empty() {
        let schema = Embedded::output_schema(job).await?;
        let empty = MemTable::try_new(schema, vec![vec![]]).map_err(JobError::query)?;
        ctx.register_table(name, Arc::new(empty))
            .map_err(JobError::query)?;
        return Ok(());
    }
    let frame = ctx
        .read_parquet(paths, ParquetReadOptions::default())
        .await
        .map_err(|e| JobError::read(job, e))?;
    ctx.register_table(name, frame.into_view())
        .map_err(JobError::query)?;
    Ok(())
}

async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, JobError> {
    ctx.sql(sql)
        .await
        .map_err(JobError::query)?
        .collect()
        .await
        .map_err(JobError::query)
}

/// Column `name` of row `i`, as text or a number.
fn text(b: &RecordBatch, name: &str, i: usize) -> Option<String> {
    let c = b.column_by_name(name)?;
    if c.is_null(i) {
        return None;
    }
    let c = arrow::compute::cast(c, &DataType::Utf8).ok()?;
    Some(c.as_string::<i32>().value(i).to_string())
}

fn number(b: &RecordBatch, name: &str, i: usize) -> Option<f64> {
    let c = b.column_by_name(name)?;
    if c.is_null(i) {
        return None;
    }
    let c = arrow::compute::cast(c, &DataType::Float64).ok()?;
    Some(c.as_primitive::<Float64Type>().value(i))
}

fn device_finding(
    rule: &str,
    b: &RecordBatch,
    i: usize,
    summary: String,
    value: f64,
    day: Partition,
) -> Option<FindingRecord> {
    let device = text(b, "device_id", i)?;
    let mut labels = BTreeMap::from([
        ("scope".to_string(), "device".to_string()),
        ("device_id".to_string(), device.clone()),
    ]);
    if let Some(m) = text(b, "merchant_id", i) {
        labels.insert("merchant_id".into(), m);
    }
    if let Some(s) = text(b, "store_id", i) {
        labels.insert("store_id".into(), s);
    }
    Some(FindingRecord {
        rule: rule.into(),
        subject: device,
        scope: "device".into(),
        labels,
        summary,
        value,
        day_ms: day.start_ms,
    })
}

async fn chronic_poor_connectivity(
    lake: &Embedded,
    rules: &RollupRulesConfig,
    day: Partition,
) -> Result<Vec<FindingRecord>, JobError> {
    let r = &rules.chronic_poor_connectivity;
    let ctx = lake.session();
    register_days(&ctx, lake, DEVICE_HEALTH_DAILY, "daily", day, r.of_days).await?;
    let poor = format!(
        "CASE WHEN rssi_median_dbm < {} OR host_latency_p95_ms > {} OR disconnects > {} \
         THEN 1 ELSE 0 END",
        r.rssi_median_below, r.host_latency_p95_above_ms, r.disconnects_above
    );
    // A terminal that moved has a row per store on that day: a day is poor
    // when it was poor in any of them, and counts once.
    let sql = format!(
        "WITH per_day AS ( \
           SELECT device_id, day, max(merchant_id) AS merchant_id, max(store_id) AS store_id, \
                  max({poor}) AS poor \
           FROM daily GROUP BY device_id, day) \
         SELECT device_id, last_value(merchant_id ORDER BY day) AS merchant_id, \
                last_value(store_id ORDER BY day) AS store_id, \
                sum(poor) AS poor_days, count(*) AS days \
         FROM per_day GROUP BY device_id HAVING sum(poor) >= {} ORDER BY device_id",
        r.min_days
    );
    let mut out = Vec::new();
    for b in query(&ctx, &sql).await? {
        for i in 0..b.num_rows() {
            let poor = number(&b, "poor_days", i).unwrap_or(0.0);
            let summary = format!(
                "poor connectivity on {poor} of the last {} days (median RSSI below {} dBm, payment-host p95 above {} ms or more than {} drops a day)",
                r.of_days, r.rssi_median_below, r.host_latency_p95_above_ms, r.disconnects_above
            );
            out.extend(device_finding(
                CHRONIC_POOR_CONNECTIVITY,
                &b,
                i,
                summary,
                poor,
                day,
            ));
        }
    }
    Ok(out)
}

async fn battery_health(
    lake: &Embedded,
    rules: &RollupRulesConfig,
    day: Partition,
) -> Result<Vec<FindingRecord>, JobError> {
    let r = &rules.battery_health;
    let ctx = lake.session();
    register_days(
        &ctx,
        lake,
        DEVICE_HEALTH_DAILY,
        "daily",
        day,
        r.drop_days + 1,
    )
    .await?;
    let sql = "SELECT device_id, max(merchant_id) AS merchant_id, max(store_id) AS store_id, \
                last_value(battery_health_min_pct ORDER BY day) AS now_pct, \
                first_value(battery_health_min_pct ORDER BY day) AS then_pct \
         FROM daily WHERE battery_health_min_pct IS NOT NULL \
         GROUP BY device_id ORDER BY device_id";
    let mut out = Vec::new();
    for b in query(&ctx, sql).await? {
        for i in 0..b.num_rows() {
            let (Some(now), Some(then)) = (number(&b, "now_pct", i), number(&b, "then_pct", i))
            else {
                continue;
            };
            let summary = if now < f64::from(r.below_pct) {
                format!("battery health {now}%, below {}%", r.below_pct)
            } else if then - now >= f64::from(r.drop_pct) {
                format!(
                    "battery health fell from {then}% to {now}% within {} days",
                    r.drop_days
                )
            } else {
                continue;
            };
            out.extend(device_finding(BATTERY_HEALTH, &b, i, summary, now, day));
        }
    }
    Ok(out)
}

async fn cohort_regression(
    lake: &Embedded,
    rules: &RollupRulesConfig,
    day: Partition,
) -> Result<Vec<FindingRecord>, JobError> {
    let r = &rules.cohort_regression;
    let ctx = lake.session();
    register_days(
        &ctx,
        lake,
        FLEET_HEALTH_DAILY,
        "fleet",
        day,
        r.baseline_days + 1,
    )
    .await?;
    let sql = format!(
        "WITH c AS (
            SELECT day, firmware_version, coalesce(app_version, '') AS app_version,
                sum(transactions) AS t, sum(crashes + hangs) AS ch,
                approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.95)
                    WITHIN GROUP (ORDER BY txn_latency_p95_ms) AS p95
            FROM fleet WHERE firmware_version IS NOT NULL
            GROUP BY day, firmware_version, coalesce(app_version, '')
        ), base AS (
            SELECT firmware_version, app_version, sum(t) AS bt, sum(ch) AS bch, avg(p95) AS bp95
            FROM c WHERE day < to_timestamp_millis({start}) GROUP BY firmware_version, app_version
        )
        SELECT c.firmware_version, c.app_version, c.t,
            1000.0 * CAST(c.ch AS DOUBLE) / CAST(c.t AS DOUBLE) AS rate,
            1000.0 * CAST(base.bch AS DOUBLE) / CAST(base.bt AS DOUBLE) AS base_rate,
            c.p95, base.bp95
        FROM c JOIN base ON c.firmware_version = base.firmware_version
            AND c.app_version = base.app_version
        WHERE c.day = to_timestamp_millis({start}) AND c.t >= {min} AND base.bt > 0
        ORDER BY c.firmware_version, c.app_version",
        start = day.start_ms,
        min = r.min_transactions
    );
    let mut out = Vec::new();
    for b in query(&ctx, &sql).await? {
        for i in 0..b.num_rows() {
            let firmware = text(&b, "firmware_version", i).unwrap_or_default();
            let app = text(&b, "app_version", i).unwrap_or_default();
            let rate = number(&b, "rate", i).unwrap_or(0.0);
            let base_rate = number(&b, "base_rate", i).unwrap_or(0.0);
            let p95 = number(&b, "p95", i);
            let base_p95 = number(&b, "bp95", i);
            let mut why = Vec::new();
            let mut value = 0.0f64;
            if rate >= r.factor * base_rate.max(CRASH_RATE_FLOOR) {
                why.push(format!(
                    "crash rate {rate:.2} per 1,000 transactions, {:.1}x its {}-day level of {base_rate:.2}",
                    rate / base_rate.max(CRASH_RATE_FLOOR),
                    r.baseline_days
                ));
                value = value.max(rate / base_rate.max(CRASH_RATE_FLOOR));
            }
            if let (Some(p), Some(bp)) = (p95, base_p95)
                && bp > 0.0
                && p >= r.factor * bp
            {
                why.push(format!(
                    "transaction p95 {p:.0} ms, {:.1}x its {}-day level of {bp:.0} ms",
                    p / bp,
                    r.baseline_days
                ));
                value = value.max(p / bp);
            }
            if why.is_empty() {
                continue;
            }
            let labels = BTreeMap::from([
                ("scope".to_string(), "cohort".to_string()),
                ("firmware_version".to_string(), firmware.clone()),
                ("app_version".to_string(), app.clone()),
            ]);
            out.push(FindingRecord {
                rule: COHORT_REGRESSION.into(),
                subject: format!("cohort:{firmware}/{app}"),
                scope: "cohort".into(),
                labels,
                summary: format!("firmware {firmware} / app {app}: {}", why.join("; ")),
                value,
                day_ms: day.start_ms,
            });
        }
    }
    Ok(out)
}

/// Evaluates one rule for `day`; `None` when the rule is disabled.
pub async fn evaluate(
    lake: &Embedded,
    rules: &RollupRulesConfig,
    rule: &str,
    day: Partition,
) -> Result<Option<Vec<FindingRecord>>, JobError> {
    let found = match rule {
        COHORT_REGRESSION if rules.cohort_regression.enabled => {
            cohort_regression(lake, rules, day).await?
        }
        CHRONIC_POOR_CONNECTIVITY if rules.chronic_poor_connectivity.enabled => {
            chronic_poor_connectivity(lake, rules, day).await?
        }
        BATTERY_HEALTH if rules.battery_health.enabled => battery_health(lake, rules, day).await?,
        _ => return Ok(None),
    };
    Ok(Some(found))
}
