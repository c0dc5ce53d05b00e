//! The `retention` job: once a day, deletes from the lake the days older
//! than each table keeps (`[retention]`), the same intervals of the
//! product's rollup tables in ClickHouse when the rollups run there (the
//! raw tables there have a TTL of their own), and prunes the metadata
//! store.
//! Each run counts from its partition's end (the midnight after its day),
//! not from the wall clock, so running a day again deletes the same.

use std::collections::BTreeMap;

use metrics::{counter, describe_counter};
use tillwatch_config::{RETAINED_LAKE_TABLES, RetentionConfig};
use tillwatch_meta::{MetaStore, PruneBefore};
use tillwatch_scheduler::{Grain, Input, JobError, JobSpec, Output, Partition};
use tillwatch_storage::Lake;

use crate::jobs::{
    DEVICE_HEALTH_DAILY, DEVICE_HEALTH_HOURLY, FLEET_HEALTH_DAILY, PLATFORM_OWNER, RAW_COMPACTION,
    RAW_TABLES,
};

pub const RETENTION: &str = "retention";

const LAKE_DAYS: &str = "tillwatch_retention_lake_days_deleted_total";
const LAKE_FILES: &str = "tillwatch_retention_lake_files_deleted_total";
const RECORDS: &str = "tillwatch_retention_records_deleted_total";
const CLICKHOUSE_PARTITIONS: &str = "tillwatch_retention_clickhouse_partitions_deleted_total";

/// The rollup tables in ClickHouse (and the side tables the engine fills
/// for them, which follow their rollup), the lake table whose retention
/// they keep, and the seconds one partition spans (migrations 007-009).
const CLICKHOUSE_TABLES: [(&str, &str, i64); 7] = [
    (DEVICE_HEALTH_HOURLY, DEVICE_HEALTH_HOURLY, 3_600),
    ("rollup_minutes_online", DEVICE_HEALTH_HOURLY, 3_600),
    ("rollup_attribution", DEVICE_HEALTH_HOURLY, 3_600),
    (DEVICE_HEALTH_DAILY, DEVICE_HEALTH_DAILY, 86_400),
    ("rollup_devices", DEVICE_HEALTH_DAILY, 86_400),
    ("rollup_zone_hours", DEVICE_HEALTH_DAILY, 86_400),
    (FLEET_HEALTH_DAILY, FLEET_HEALTH_DAILY, 86_400),
];

pub fn describe_metrics() {
    describe_counter!(LAKE_DAYS, "Lake days deleted by retention, by table");
    describe_counter!(LAKE_FILES, "Lake files deleted by retention, by table");
    describe_counter!(
        CLICKHOUSE_PARTITIONS,
        "Partitions of ClickHouse rollup tables dropped by retention, by table"
    );
    describe_counter!(
        RECORDS,
        "Metadata records deleted by retention, by kind (connectivity_history, job_runs, resolved_alerts, alert_deliveries, findings, silences)"
    );
    // Every series from the start, so a dashboard reads 0, not "No data".
    for table in RETAINED_LAKE_TABLES {
        counter!(LAKE_DAYS, "table" => table).increment(0);
        counter!(LAKE_FILES, "table" => table).increment(0);
    }
    for (table, _, _) in CLICKHOUSE_TABLES {
        counter!(CLICKHOUSE_PARTITIONS, "table" => table).increment(0);
    }
    for (kind, _) in tillwatch_meta::Pruned::default().by_kind() {
        counter!(RECORDS, "kind" => kind).increment(0);
    }
}

/// The job's definition: one partition per UTC day, run once the day is
/// over; a missed day is not caught up (the next run deletes all that is
/// due anyway).
pub fn retention_job() -> JobSpec {
    let mut job = JobSpec::new(RETENTION, Grain::Day, Vec::new());
    job.owner = PLATFORM_OWNER.into();
    job.description = "Deletes what the retention settings no longer keep, day by day".into();
    job.catch_up = false;
    job.retries = 5;
    job
}

const DAY_MS: i64 = 86_400_000;

fn kept_ms(config: &RetentionConfig, table: &str) -> i64 {
    RetentionConfig::days(config.lake_table(table)).saturating_mul(DAY_MS)
}

/// How long `[retention]` keeps the output of the product's job `job`
/// (`None` for the jobs without one, and for every job with retention off).
pub fn product_output_kept(config: &RetentionConfig, job: &str) -> Option<i64> {
    if !config.enabled {
        return None;
    }
    match job {
        RAW_COMPACTION => RAW_TABLES.iter().map(|t| kept_ms(config, t)).min(),
        DEVICE_HEALTH_HOURLY | DEVICE_HEALTH_DAILY | FLEET_HEALTH_DAILY => {
            Some(kept_ms(config, job))
        }
        _ => None,
    }
}

/// How long each job's inputs and output are kept: the planner's horizon
/// for it (see `JobSpec::frozen`). `None` for jobs retention does not
/// touch, or with retention off. A team's job is held to what it reads
/// directly (a raw table, a product rollup, another team's job with a
/// `keep`, by `outputs_kept`) and to its own `keep`; a team's output
/// without `keep` is never deleted, and a frozen upstream keeps its
/// output, so a job reading only those is never frozen (a monthly job
/// over the daily rollup is not held to the raw tables' 90 days).
pub fn kept_for_job(
    config: &RetentionConfig,
    job: &JobSpec,
    outputs_kept: &BTreeMap<String, i64>,
) -> Option<i64> {
    if !config.enabled {
        return None;
    }
    let raw = RAW_TABLES
        .iter()
        .map(|t| kept_ms(config, t))
        .min()
        .unwrap_or(i64::MAX);
    let hourly = kept_ms(config, DEVICE_HEALTH_HOURLY);
    let daily = kept_ms(config, DEVICE_HEALTH_DAILY);
    let fleet = kept_ms(config, FLEET_HEALTH_DAILY);
    match job.name.as_str() {
        RAW_COMPACTION => Some(raw),
        DEVICE_HEALTH_HOURLY => Some(raw.min(hourly)),
        DEVICE_HEALTH_DAILY => Some(hourly.min(daily)),
        FLEET_HEALTH_DAILY => Some(daily.min(fleet)),
        crate::directory::MERCHANT_DIRECTORY | RETENTION => None,
        _ => job
            .inputs
            .iter()
            .filter_map(|input| match input {
                Input::Source(table) if RAW_TABLES.contains(&table.as_str()) => {
                    Some(kept_ms(config, table))
                }
                Input::Source(_) => None,
                Input::Job(up) => match up.as_str() {
                    RAW_COMPACTION => Some(raw),
                    DEVICE_HEALTH_HOURLY => Some(hourly),
                    DEVICE_HEALTH_DAILY => Some(daily),
                    FLEET_HEALTH_DAILY => Some(fleet),
                    _ => outputs_kept.get(up).copied(),
                },
            })
            .chain(job.output_kept_ms)
            .min(),
    }
}

/// A team's job whose output retention deletes: its name (its lake
/// directory, and its ClickHouse table where it has one), its grain and
/// how long it is kept.
#[derive(Debug, Clone)]
pub struct TeamOutput {
    pub job: String,
    pub grain: Grain,
    pub kept_ms: i64,
}

impl TeamOutput {
    /// The teams' jobs in `jobs` with a `keep` (the product's own tables
    /// are kept by `[retention]`).
    pub fn of(jobs: &[JobSpec]) -> Vec<TeamOutput> {
        const PRODUCT_TABLES: [&str; 4] = [
            RAW_COMPACTION,
            DEVICE_HEALTH_HOURLY,
            DEVICE_HEALTH_DAILY,
            FLEET_HEALTH_DAILY,
        ];
        jobs.iter()
            .filter(|j| !PRODUCT_TABLES.contains(&j.name.as_str()))
            .filter_map(|j| {
                Some(TeamOutput {
                    job: j.name.clone(),
                    grain: j.grain,
                    kept_ms: j.output_kept_ms?,
                })
            })
            .collect()
    }
}

/// Runs the job for `partition` (a day): the lake's tables, the rollup
/// tables in `clickhouse` (when the rollups run there), the teams' outputs
/// with a `keep` (`teams`, in the lake and in ClickHouse), then the
/// metadata store. `rows` on the run is everything deleted (lake files,
/// ClickHouse partitions and records).
pub async fn run(
    config: &RetentionConfig,
    lake: &Lake,
    clickhouse: Option<&tillwatch_clickhouse::ClickHouse>,
    teams: &[TeamOutput],
    store: &MetaStore,
    partition: Partition,
) -> Result<Output, JobError> {
    let base = partition.end_ms();
    let before = |age: std::time::Duration| {
        base.saturating_sub(RetentionConfig::days(age).saturating_mul(DAY_MS))
    };
    let mut deleted = 0u64;
    let mut summary = Vec::new();
    let mut lake_days = async |table: &str, cutoff_ms: i64| -> Result<(), JobError> {
        let dropped = drop_lake_days(lake, table, cutoff_ms).await?;
        if dropped.days > 0 {
            counter!(LAKE_DAYS, "table" => table.to_string()).increment(dropped.days);
            counter!(LAKE_FILES, "table" => table.to_string()).increment(dropped.files);
            summary.push(format!("{table}: {}", plural(dropped.days, "day")));
        }
        deleted += dropped.files;
        Ok(())
    };
    for table in RETAINED_LAKE_TABLES {
        lake_days(table, before(config.lake_table(table))).await?;
    }
    // A team's partitions that ended by the cutoff: those that start
    // before the one holding it (a week or a month lies under its first
    // day's date).
    let team_cutoff = |team: &TeamOutput| {
        Partition::containing(team.grain, base.saturating_sub(team.kept_ms)).start_ms
    };
    for team in teams {
        lake_days(&team.job, team_cutoff(team)).await?;
    }
    if let Some(ch) = clickhouse {
        let mut partitions = async |table: &str, ended_by: &(dyn Fn(i64) -> bool + Sync)| {
            let dropped = drop_clickhouse_partitions(ch, table, ended_by).await?;
            if dropped > 0 {
                counter!(CLICKHOUSE_PARTITIONS, "table" => table.to_string()).increment(dropped);
                summary.push(format!(
                    "ClickHouse {table}: {}",
                    plural(dropped, "partition")
                ));
            }
            deleted += dropped;
            Ok::<_, JobError>(())
        };
        for (table, kept_as, span_s) in CLICKHOUSE_TABLES {
            // Whole partitions that ended before the lake's cutoff.
            let cutoff_s = before(config.lake_table(kept_as)).div_euclid(1000);
            partitions(table, &|id| {
                id.saturating_add(1).saturating_mul(span_s) <= cutoff_s
            })
            .await?;
        }
        // A team's table is partitioned by its partitions' starts, in
        // seconds (absent where the job never ran on ClickHouse).
        for team in teams {
            let cutoff_s = team_cutoff(team).div_euclid(1000);
            partitions(&team.job, &|start_s| start_s < cutoff_s).await?;
        }
    }
    let pruned = store
        .prune(&PruneBefore {
            connectivity_history_ms: before(config.connectivity_history),
            job_runs_ms: before(config.job_runs),
            resolved_alerts_ms: before(config.resolved_alerts),
            findings_ms: before(config.findings),
            silences_ms: before(config.silences),
        })
        .await
        .map_err(|e| JobError::write("the metadata store (pruning)", e))?;
    for (kind, n) in pruned.by_kind() {
        if n > 0 {
            counter!(RECORDS, "kind" => kind).increment(n);
            summary.push(format!("{kind}: {n}"));
        }
        deleted += n;
    }
    if summary.is_empty() {
        tracing::debug!(day = %partition, "retention: nothing old enough to delete");
    } else {
        tracing::info!(day = %partition, deleted = %summary.join(", "), "retention applied");
    }
    Ok(Output {
        rows: deleted,
        // Nothing reads its output.
        fingerprint: String::new(),
        messages: summary.iter().map(|s| format!("deleted {s}")).collect(),
    })
}

/// `n` of `what`, in English.
fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Deletes the days of the lake's `table` before `cutoff_ms`.
async fn drop_lake_days(
    lake: &Lake,
    table: &str,
    cutoff_ms: i64,
) -> Result<tillwatch_storage::DroppedDays, JobError> {
    let lake = lake.clone();
    let name = table.to_string();
    tokio::task::spawn_blocking(move || lake.drop_days_before(&name, cutoff_ms))
        .await
        .map_err(|e| JobError::write(format_args!("the lake table {table}"), e))?
        .map_err(|e| JobError::write(format_args!("the lake table {table}"), e))
}

/// Drops the partitions of the ClickHouse table `table` (partitioned by a
/// number) for which `drop` holds; says how many it dropped.
async fn drop_clickhouse_partitions(
    ch: &tillwatch_clickhouse::ClickHouse,
    table: &str,
    drop: &(dyn Fn(i64) -> bool + Sync),
) -> Result<u64, JobError> {
    let fail = |e: tillwatch_clickhouse::ChError| {
        JobError::write(format_args!("the ClickHouse table {table}"), e)
    };
    let mut dropped = 0u64;
    for id in ch.numbered_partitions(table).await.map_err(fail)? {
        if drop(id) {
            ch.drop_numbered_partition(table, id).await.map_err(fail)?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = DAY_MS;

    /// A team's job is held to what it reads directly, each table by its
    /// own setting.
    #[test]
    fn a_teams_job_is_kept_as_long_as_what_it_reads() {
        let kept_for_job_ =
            |config: &RetentionConfig, job: &JobSpec| kept_for_job(config, job, &BTreeMap::new());
        let mut config: RetentionConfig =
            toml::from_str("raw = \"90d\"\n[tables]\npayment_health = \"30d\"\n").unwrap();
        let job = |name: &str, inputs: Vec<Input>| JobSpec::new(name, Grain::Month, inputs);
        let source = |t: &str| Input::Source(t.into());
        let upstream = |j: &str| Input::Job(j.into());
        assert_eq!(
            kept_for_job_(
                &config,
                &job("monthly_takings", vec![upstream(DEVICE_HEALTH_DAILY)])
            ),
            Some(730 * DAY)
        );
        assert_eq!(
            kept_for_job_(
                &config,
                &job(
                    "risk",
                    vec![source("payment_health"), upstream(DEVICE_HEALTH_HOURLY)]
                )
            ),
            Some(30 * DAY)
        );
        assert_eq!(
            kept_for_job_(
                &config,
                &job("battery", vec![source("battery"), upstream(RAW_COMPACTION)])
            ),
            Some(30 * DAY),
            "reading the compaction is reading every raw table"
        );
        assert_eq!(
            kept_for_job_(
                &config,
                &job("on_team", vec![upstream("another_teams_job")])
            ),
            None
        );
        assert_eq!(
            kept_for_job_(&config, &job("refunds", vec![])),
            None,
            "a source"
        );
        assert_eq!(
            kept_for_job_(&config, &job(DEVICE_HEALTH_DAILY, vec![])),
            Some(180 * DAY)
        );
        config.enabled = false;
        assert_eq!(
            kept_for_job_(&config, &job("risk", vec![source("payment_health")])),
            None
        );
    }

    /// A team's `keep` holds its own partitions and its readers' to it; a
    /// reader of a job without one is not held.
    #[test]
    fn a_teams_keep_holds_the_job_and_what_reads_it() {
        let config = RetentionConfig::default();
        let mut risk = JobSpec::new(
            "risk",
            Grain::Hour,
            vec![Input::Job(DEVICE_HEALTH_DAILY.into())],
        );
        risk.output_kept_ms = Some(30 * DAY_MS);
        let kept: BTreeMap<String, i64> = [("risk".to_string(), 30 * DAY_MS)].into();
        assert_eq!(kept_for_job(&config, &risk, &kept), Some(30 * DAY_MS));
        let reader = JobSpec::new("risk_daily", Grain::Day, vec![Input::Job("risk".into())]);
        assert_eq!(kept_for_job(&config, &reader, &kept), Some(30 * DAY_MS));
        assert_eq!(kept_for_job(&config, &reader, &BTreeMap::new()), None);
        assert_eq!(
            TeamOutput::of(&[risk.clone(), reader])
                .iter()
                .map(|t| (t.job.as_str(), t.kept_ms))
                .collect::<Vec<_>>(),
            [("risk", 30 * DAY_MS)]
        );
        let off = RetentionConfig {
            enabled: false,
            ..config
        };
        assert_eq!(kept_for_job(&off, &risk, &kept), None);
    }
}
