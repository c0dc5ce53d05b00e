//! `[scheduler]`: the rollup scheduler, and per-job settings under
//! `[scheduler.jobs.<name>]` that override each built-in job's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the rollups run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollupEngine {
    /// ClickHouse when `clickhouse.url` is set, else embedded.
    #[default]
    Auto,
    /// DataFusion over the Parquet lake, in the scheduler's process.
    Embedded,
    /// `INSERT … SELECT` inside ClickHouse.
    Clickhouse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Whether `standalone` and `demo` run the scheduler (the `scheduler`
    /// command always does).
    pub enabled: bool,
    /// This scheduler's name on its claims and runs; unset means
    /// `<host>-<pid>`.
    pub name: Option<String>,
    /// How often it looks for due partitions.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// How long a claim on a partition holds without renewal. A scheduler
    /// renews its claims every third of this while it runs them; if it
    /// dies, another scheduler takes its partitions over once this has
    /// passed. The schedulers' clocks must agree to well within it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub engine: RollupEngine,
    /// The first partition of jobs that set no `start` of their own: a date
    /// (`2026-11-01`) or how far back from when the scheduler starts
    /// (`7d`).
    pub start: String,
    pub jobs: BTreeMap<String, JobSettings>,
    /// Roots of the teams' job declarations, one folder per owning team
    /// (`<root>/<owner>/<job>.toml` beside `<job>.datafusion.sql`): one
    /// path or a list. Checked like `tillwatch jobs validate`; a file with
    /// a problem is refused with it (and the jobs reading it), the rest
    /// run.
    #[serde(deserialize_with = "one_or_many")]
    pub jobs_dir: Vec<std::path::PathBuf>,
    /// The merchant directory source, the short way: when set, the
    /// `merchant_directory` job imports merchants and stores (names, time
    /// zones, opening hours) from this database on its schedule (hourly
    /// unless `[scheduler.jobs.merchant_directory]` says otherwise). It is
    /// the same as a declared source job with `feeds =
    /// "merchant-directory"` (see README, "Write your own job"), which is
    /// the way to give the URL in a file or the environment.
    pub merchant_directory: Option<DirectorySource>,
    /// The UTC offsets, in whole hours, that the stores' time zones span,
    /// as `[west, east]` (default `[-12, 14]`: every zone).
    /// `device_health_daily` counts each terminal's hours in its store's
    /// local day (see ARCHITECTURE.md), so a day's partition reads the
    /// hourly ones from `east` hours before the UTC day to `-west` hours
    /// after it, and waits for them. Narrow it to the fleet's zones for
    /// earlier daily rollups (`[0, 2]` for western and central Europe);
    /// `[0, 0]` makes every day a UTC day.
    pub local_day_utc_offsets: [i8; 2],
    /// A gateway whose ingest watermark has not advanced for this long
    /// stops holding the rollups back (a warning, the
    /// `tillwatch_scheduler_ingest_writers_stalled` metric, a line on the
    /// jobs page and an `ingest_watermark_stalled` alert say so); it
    /// counts again as soon as it advances. A healthy gateway advances
    /// every second. Retire a gateway taken away on purpose with
    /// `tillwatch gateway retire CLIENT_ID`.
    #[serde(with = "humantime_serde")]
    pub watermark_stall_after: Duration,
}

/// One path or a list of them.
fn one_or_many<'de, D>(d: D) -> Result<Vec<std::path::PathBuf>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(std::path::PathBuf),
        Many(Vec<std::path::PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// An external PostgreSQL holding the merchants and stores, and the query
/// that reads them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySource {
    /// `postgres://user@host:5432/db`; the password is better given in
    /// `TILLWATCH__SCHEDULER__MERCHANT_DIRECTORY__URL` than in a file.
    pub url: String,
    /// Returns one row per store with the columns `merchant_id` and
    /// `store_id`, and optionally `merchant_name`, `store_name`,
    /// `time_zone` (IANA) and `hours` (`Mon-Fri 08:00-20:00, Sat
    /// 09:00-14:00` or `24h`), all text. Rename with `AS` to match.
    pub query: String,
    /// The longest the import may wait for the database.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_recheck_every() -> Duration {
    Duration::from_secs(10 * 60)
}

impl std::fmt::Debug for DirectorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        let url = crate::without_password(&self.url);
        f.debug_struct("DirectorySource")
            .field("url", &url)
            .field("query", &self.query)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl SchedulerConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        if self.tick.is_zero() {
            errors.push("scheduler.tick: must be more than 0s".into());
        }
        if self.lease < std::time::Duration::from_secs(1) {
            errors.push("scheduler.lease: must be at least 1s".into());
        }
        let [west, east] = self.local_day_utc_offsets;
        if !(-12..=0).contains(&west) || !(0..=14).contains(&east) {
            errors.push(format!(
                "scheduler.local_day_utc_offsets: [{west}, {east}] is not a span of UTC offsets: \
                 the first must be from -12 to 0 and the second from 0 to 14"
            ));
        }
        if let Some(d) = &self.merchant_directory {
            if !(d.url.starts_with("postgres://") || d.url.starts_with("postgresql://")) {
                errors.push("scheduler.merchant_directory.url: must be a postgres:// URL".into());
            }
            if d.query.trim().is_empty() {
                errors.push("scheduler.merchant_directory.query: must not be empty".into());
            }
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            name: None,
            tick: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            engine: RollupEngine::Auto,
            start: "7d".into(),
            jobs: BTreeMap::new(),
            jobs_dir: Vec::new(),
            merchant_directory: None,
            local_day_utc_offsets: [-12, 14],
            watermark_stall_after: Duration::from_secs(5 * 60),
        }
    }
}

/// One job's settings; every key is optional and falls back to the job's
/// built-in default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Cron (five fields) or `@hourly`, `@daily`, `@weekly`, `@monthly`.
    pub schedule: Option<String>,
    /// The zone the schedule is read in (default UTC).
    pub time_zone: Option<String>,
    /// First partition: a date or `7d` (see `scheduler.start`).
    pub start: Option<String>,
    /// No partition after this date.
    pub end: Option<String>,
    /// Run every missed partition (true) or only the newest.
    pub catch_up: Option<bool>,
    /// When runs may start, e.g. `Mon-Sun 02:00-05:00`.
    pub window: Option<String>,
    /// The zone of `window` (default: `time_zone`).
    pub window_time_zone: Option<String>,
    /// How long after an interval's end its data may still arrive.
    #[serde(default, with = "humantime_serde")]
    pub lateness: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub retry_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_max: Option<Duration>,
    pub concurrency: Option<usize>,
    /// The team that owns the job.
    pub owner: Option<String>,
    /// Each partition should succeed within this of its interval's end;
    /// one that has not raises a `job_sla_missed` alert.
    #[serde(default, with = "humantime_serde")]
    pub sla: Option<Duration>,
    /// Each partition should succeed by this time of day (`06:00`) after
    /// its interval's end, in `sla_time_zone`; with `sla` too, the earlier
    /// deadline counts.
    pub sla_at: Option<String>,
    /// The zone of `sla_at` (default: `time_zone`, else UTC).
    pub sla_time_zone: Option<String>,
    /// The receivers told of the job's `job_failed` and `job_sla_missed`
    /// alerts, by name (`[[alerting.receivers]]`, `alertmanager` for
    /// `alerting.alertmanager_url`); unset, every receiver is.
    pub notify: Option<Vec<String>>,
    /// How long a team's job's output is kept, in whole days (`400d`):
    /// the daily `retention` job deletes the partitions that ended before
    /// (from the lake, and from ClickHouse where it has a table). Unset, it
    /// is kept for good. The product's jobs are kept by `[retention]`.
    #[serde(default, with = "humantime_serde")]
    pub keep: Option<Duration>,
}

/// The days a day-grain job's partitions count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DayKind {
    /// Midnight to midnight UTC.
    #[default]
    Utc,
    /// Each terminal's hours in its store's local day, read with the
    /// margins `scheduler.local_day_utc_offsets` gives.
    StoreLocal,
}

/// A partition's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredGrain {
    Hour,
    Day,
    /// ISO weeks, Monday 00:00 to Monday 00:00 UTC (key `2026-W48`).
    Week,
    /// Calendar months in UTC (key `2026-11`).
    Month,
}

/// A job as its declaration file (`<jobs root>/<owner>/<job>.toml`) says:
/// what it is, what it reads, and the settings of [`JobSettings`] (which
/// the operator's `[scheduler.jobs.<job>]` overrides in turn). The owner
/// is the folder's name and the job's name the file's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDeclaration {
    /// What the job's output holds, for the jobs page and `jobs list`.
    pub description: String,
    pub grain: DeclaredGrain,
    /// For `grain = "day"`: UTC days (default) or store-local ones.
    #[serde(default)]
    pub day: DayKind,
    /// What it reads: raw tables (`battery`, `connectivity`,
    /// `app_performance`, `payment_health`), sources
    /// (`device_attributes`) and other jobs, by name.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Whether jobs of other owners may read it (default: only its own
    /// team's jobs and those in `readers`).
    #[serde(default)]
    pub public: bool,
    /// Owners besides its own whose jobs may read it.
    #[serde(default)]
    pub readers: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The output's columns, in order, when given: the SQL is planned and
    /// must give exactly these.
    pub columns: Option<Vec<String>>,
    /// A date (`2026-11-01`, UTC): when the job's code (its SQL, inputs
    /// or grain) changes, its partitions from this date on run again, and
    /// what reads them after. Unset, a change applies to new partitions
    /// (and to those that re-run for changed inputs) only.
    pub rerun_from: Option<String>,
    /// A source job: rows imported from PostgreSQL rather than computed
    /// by SQL over the lake.
    pub source: Option<SourceDeclaration>,
    /// Run by the product's own code rather than SQL (the lake's upkeep).
    #[serde(default)]
    pub builtin: bool,
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub catch_up: Option<bool>,
    pub window: Option<String>,
    pub window_time_zone: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub lateness: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub retry_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_max: Option<Duration>,
    pub concurrency: Option<usize>,
    /// Each partition should succeed within this of its interval's end
    /// (`2h`); one that has not raises a `job_sla_missed` alert.
    #[serde(default, with = "humantime_serde")]
    pub sla: Option<Duration>,
    /// Each partition should succeed by this time of day (`06:00`) after
    /// its interval's end, in `sla_time_zone`.
    pub sla_at: Option<String>,
    pub sla_time_zone: Option<String>,
    /// Who is told when it fails or is late (see [`JobSettings::notify`]).
    pub notify: Option<Vec<String>>,
    /// How long its output is kept (see [`JobSettings::keep`]).
    #[serde(default, with = "humantime_serde")]
    pub keep: Option<Duration>,
}

/// Where a source job reads: a PostgreSQL database, through a query. The
/// URL (with its password) comes from an environment variable or a file,
/// never from the jobs repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDeclaration {
    /// The environment variable holding the database's URL: `postgres://…`,
    /// or a ClickHouse server's `http(s)://[user[:password]@]host:port[/database]`.
    pub url_env: Option<String>,
    /// A file holding the database's URL (a mounted secret).
    pub url_file: Option<std::path::PathBuf>,
    /// One SELECT; its columns become the output's.
    pub query: String,
    /// A timestamp column: each partition imports the rows whose value
    /// falls in its interval (incremental). Without it each run imports
    /// every row (a snapshot) and only the newest partition runs.
    pub cursor: Option<String>,
    /// With a `cursor`: partitions whose interval ended less than this
    /// long ago are imported again every `recheck_every`, so rows that land
    /// late in the database reach their partition; what reads a partition
    /// runs again only when its rows changed. Off by default.
    #[serde(default, with = "humantime_serde")]
    pub recheck_within: Option<Duration>,
    /// How often a partition within `recheck_within` is imported again.
    #[serde(default = "default_recheck_every", with = "humantime_serde")]
    pub recheck_every: Duration,
    /// The longest the import waits for the database.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// What else the rows are: `"merchant-directory"` makes them the
    /// merchant directory (one row per store: `merchant_id`, `store_id`
    /// and optionally `merchant_name`, `store_name`, `time_zone`,
    /// `hours`), so each run also updates the stores' names, time zones
    /// and opening hours the alerter and the pages use. One job at most
    /// feeds it, and it is a snapshot (no `cursor`).
    pub feeds: Option<SourceFeed>,
    /// The URL given in the operator's config (`[scheduler.merchant_directory]`),
    /// never read from a declaration file.
    #[serde(skip)]
    pub url: Option<InlineUrl>,
}

/// What a source's rows stand for besides a lake table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFeed {
    /// The merchants and stores, with the stores' time zones and hours.
    MerchantDirectory,
}

/// A database URL from the operator's config; its password is not shown
/// by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct InlineUrl(pub String);

impl std::fmt::Debug for InlineUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::without_password(&self.0))
    }
}

impl SourceDeclaration {
    /// `[scheduler.merchant_directory]` as the source it stands for.
    pub fn merchant_directory(config: &DirectorySource) -> SourceDeclaration {
        SourceDeclaration {
            url_env: None,
            url_file: None,
            query: config.query.clone(),
            cursor: None,
            recheck_within: None,
            recheck_every: default_recheck_every(),
            connect_timeout: config.connect_timeout,
            feeds: Some(SourceFeed::MerchantDirectory),
            url: Some(InlineUrl(config.url.clone())),
        }
    }
}

impl JobDeclaration {
    /// The declaration's settings, as the operator's would be given.
    pub fn settings(&self, owner: &str) -> JobSettings {
        JobSettings {
            schedule: self.schedule.clone(),
            time_zone: self.time_zone.clone(),
            start: self.start.clone(),
            end: self.end.clone(),
            catch_up: self.catch_up,
            window: self.window.clone(),
            window_time_zone: self.window_time_zone.clone(),
            lateness: self.lateness,
            timeout: self.timeout,
            retries: self.retries,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            concurrency: self.concurrency,
            owner: Some(owner.to_string()),
            sla: self.sla,
            sla_at: self.sla_at.clone(),
            sla_time_zone: self.sla_time_zone.clone(),
            notify: self.notify.clone(),
            keep: self.keep,
        }
    }
}
