//! The built-in jobs with the operator's `[scheduler]` settings applied.

use std::collections::BTreeMap;
use std::time::Duration;

use tillwatch_config::{JobSettings, RetentionConfig, SchedulerConfig};
use tillwatch_scheduler::{Catalog, JobSpec, RunWindow, Schedule, SlaAt};

use crate::declared::{self, DeclaredJob, Problem};

/// Every built-in job with its defaults, upstream first.
pub fn builtin() -> Vec<JobSpec> {
    let jobs = declared::builtin().iter().map(DeclaredJob::spec).collect();
    Catalog::new(jobs)
        .expect("the built-in jobs form a catalog")
        .jobs()
        .to_vec()
}

const DAY_MS: i64 = 86_400_000;

/// A job's start or end that is neither a date nor a span.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither a date like 2026-11-01 nor a span like 7d")]
pub struct StartError(String);

/// A date (`2026-11-01`, midnight UTC) or a span back from `now_ms`
/// (`7d`, to the start of that UTC day).
pub fn parse_start(text: &str, now_ms: i64) -> Result<i64, StartError> {
    let bad = || StartError(text.to_string());
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return date
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|_| bad());
    }
    let back = humantime::parse_duration(text).map_err(|_| bad())?;
    let back = i64::try_from(back.as_millis()).map_err(|_| bad())?;
    let at = now_ms.checked_sub(back).ok_or_else(bad)?;
    Ok(at.div_euclid(DAY_MS) * DAY_MS)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A problem with one setting: its key, and what is wrong.
type SettingError = (&'static str, String);

/// Applies `s` to `job`; each problem names its key. `receivers` are the
/// configured receivers' names `notify` may name (none: not checked).
fn apply(
    job: &mut JobSpec,
    s: &JobSettings,
    now_ms: i64,
    receivers: &[String],
    errors: &mut Vec<SettingError>,
) {
    let tz = s.time_zone.as_deref().unwrap_or("UTC");
    if s.schedule.is_some() || s.time_zone.is_some() {
        let text = s.schedule.as_deref().unwrap_or(job.schedule.as_str());
        match Schedule::parse(text, tz) {
            Ok(schedule) => job.schedule = schedule,
            Err(e) => errors.push(("schedule", e.to_string())),
        }
    }
    if let Some(start) = &s.start {
        match parse_start(start, now_ms) {
            Ok(v) => job.start_ms = v,
            Err(e) => errors.push(("start", e.to_string())),
        }
    }
    if let Some(end) = &s.end {
        match parse_start(end, now_ms) {
            Ok(v) if v > job.start_ms => job.end_ms = Some(v),
            Ok(_) => errors.push(("end", "must come after the start".to_string())),
            Err(e) => errors.push(("end", e.to_string())),
        }
    }
    if let Some(v) = s.catch_up {
        job.catch_up = v;
    }
    if let Some(window) = &s.window {
        let zone = s.window_time_zone.as_deref().unwrap_or(tz);
        match RunWindow::parse(window, zone) {
            Ok(w) => job.window = Some(w),
            Err(e) => errors.push(("window", e.to_string())),
        }
    } else if s.window_time_zone.is_some() {
        errors.push(("window_time_zone", "set without a window".to_string()));
    }
    if let Some(v) = s.lateness {
        job.lateness_ms = ms(v);
    }
    if let Some(v) = s.timeout {
        if v.is_zero() {
            errors.push(("timeout", "must be more than 0s".to_string()));
        }
        job.timeout_ms = ms(v);
    }
    if let Some(v) = s.retries {
        job.retries = v;
    }
    if let Some(v) = s.retry_base {
        job.retry_base_ms = ms(v);
    }
    if let Some(v) = s.retry_max {
        job.retry_max_ms = ms(v);
    }
    if job.retry_max_ms < job.retry_base_ms {
        errors.push((
            "retry_max",
            format!("must be at least retry_base ({} ms)", job.retry_base_ms),
        ));
    }
    if let Some(v) = s.concurrency {
        if v == 0 {
            errors.push(("concurrency", "must be at least 1".to_string()));
        }
        job.concurrency = v;
    }
    if let Some(v) = &s.owner {
        job.owner = v.clone();
    }
    if let Some(v) = s.sla {
        if v.is_zero() {
            errors.push(("sla", "must be more than 0s".to_string()));
        }
        job.sla_ms = Some(ms(v));
    }
    if let Some(at) = &s.sla_at {
        let zone = s.sla_time_zone.as_deref().unwrap_or(tz);
        match SlaAt::parse(at, zone) {
            Ok(v) => job.sla_at = Some(v),
            Err(e) => errors.push(("sla_at", e.to_string())),
        }
    } else if s.sla_time_zone.is_some() {
        errors.push(("sla_time_zone", "set without sla_at".to_string()));
    }
    if let Some(keep) = s.keep {
        const DAY_S: u64 = 86_400;
        // More than 100000 days (273 years) is taken for a typo.
        if keep.subsec_nanos() != 0
            || keep.as_secs() % DAY_S != 0
            || !(1..=100_000).contains(&(keep.as_secs() / DAY_S))
        {
            errors.push((
                "keep",
                format!(
                    "{} is not a whole number of days from 1d to 100000d: retention deletes a \
                     day at a time (e.g. keep = \"400d\")",
                    humantime::format_duration(keep)
                ),
            ));
        } else {
            job.output_kept_ms = Some(ms(keep));
        }
    }
    if let Some(names) = &s.notify {
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !receivers.is_empty() && !receivers.contains(n))
            .collect();
        if names.is_empty() {
            errors.push((
                "notify",
                "names no receiver: leave it out to tell every receiver".to_string(),
            ));
        } else if let Some(bad) = names
            .iter()
            .find(|n| n.trim().is_empty() || n.contains(','))
        {
            errors.push(("notify", format!("{bad:?} is not a receiver's name")));
        } else if !unknown.is_empty() {
            errors.push((
                "notify",
                format!(
                    "no receiver {} is configured (the receivers are {})",
                    unknown
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    receivers.join(", ")
                ),
            ));
        }
        job.notify = names.clone();
    }
}

/// Applies a declaration's settings to its job: each problem at the
/// setting's line.
fn apply_declared(
    job: &mut JobSpec,
    d: &DeclaredJob,
    now_ms: i64,
    receivers: &[String],
) -> Vec<Problem> {
    let mut errors = Vec::new();
    apply(
        job,
        &d.declaration.settings(&d.owner),
        now_ms,
        receivers,
        &mut errors,
    );
    errors
        .into_iter()
        .map(|(key, message)| d.problem(key, format!("{key}: {message}")))
        .collect()
}

/// The problems with the declarations' settings (a schedule, a window or
/// an SLA that does not parse), each as the scheduler refuses it, for
/// `jobs validate` (which knows no receivers, so `notify` is not checked
/// against them).
pub fn settings_problems(jobs: &[DeclaredJob], now_ms: i64) -> Vec<Problem> {
    jobs.iter()
        .flat_map(|d| apply_declared(&mut d.spec(), d, now_ms, &[]))
        .collect()
}

/// The teams' declarations under `dirs`, checked together with the
/// product's (`product`: the built-in ones and any the operator's config
/// stands for): those that pass, and what was wrong with the others. A
/// job with a problem is refused, and so is every job reading it; the rest
/// are checked again without them until what is left passes. A job with a
/// `.clickhouse.sql` only is refused unless the rollups run on ClickHouse
/// (`on_clickhouse`) and it can run there.
pub fn team_jobs(
    product: &[DeclaredJob],
    dirs: &[std::path::PathBuf],
    on_clickhouse: bool,
) -> (Vec<DeclaredJob>, Vec<Problem>) {
    let mut team = Vec::new();
    let mut refused = Vec::new();
    for dir in dirs {
        let (found, problems) = declared::load_dir(dir);
        team.extend(found);
        refused.extend(problems);
    }
    loop {
        let all: Vec<DeclaredJob> = product.iter().chain(team.iter()).cloned().collect();
        let mut problems = declared::check(&all);
        if problems.is_empty() {
            problems = engine_problems(&all, on_clickhouse);
        }
        if problems.is_empty() && !team.is_empty() {
            // The SQL reads only what the job declares, and plans.
            problems = declared::plan_blocking(&all);
        }
        if problems.is_empty() {
            return (team, refused);
        }
        let bad: std::collections::BTreeSet<String> =
            problems.iter().map(Problem::declaration).collect();
        refused.extend(problems);
        let before = team.len();
        team.retain(|j| !bad.contains(&j.file));
        drop_orphans(product, &mut team, &mut refused);
        if team.len() == before {
            // A problem no single team file is to blame for: refuse them all.
            for j in team.drain(..) {
                refused.push(Problem {
                    file: j.file,
                    line: None,
                    message: "not loaded with the problems above".into(),
                });
            }
            return (team, refused);
        }
    }
}

/// The jobs with a `.clickhouse.sql` only that cannot run here: every one
/// when the rollups run on the embedded engine, and on ClickHouse those
/// reading what is not there (see
/// [`crate::clickhouse_declared::on_clickhouse`]).
fn engine_problems(all: &[DeclaredJob], on_clickhouse: bool) -> Vec<Problem> {
    let why_not = if on_clickhouse {
        crate::clickhouse_declared::on_clickhouse(all)
    } else {
        Default::default()
    };
    all.iter()
        .filter(|j| j.clickhouse_only() && !j.file.starts_with(declared::BUILTIN_ROOT))
        .filter_map(|j| {
            let message = if !on_clickhouse {
                format!(
                    "{name} has only {name}.clickhouse.sql and the rollups run on the embedded \
                     engine here: it runs where they run on ClickHouse (scheduler.engine); add \
                     {name}.datafusion.sql to run it here too",
                    name = j.name
                )
            } else {
                let why = why_not.get(&j.name).cloned().flatten()?;
                format!(
                    "{name} has only {name}.clickhouse.sql and cannot run on ClickHouse: {why}",
                    name = j.name
                )
            };
            Some(Problem {
                file: j.file.clone(),
                line: None,
                message,
            })
        })
        .collect()
}

/// Refuses the team jobs that read a job no longer there, until none do.
fn drop_orphans(product: &[DeclaredJob], team: &mut Vec<DeclaredJob>, refused: &mut Vec<Problem>) {
    loop {
        let names: std::collections::BTreeSet<String> = product
            .iter()
            .chain(team.iter())
            .map(|j| j.name.clone())
            .collect();
        let orphans: Vec<Problem> = team
            .iter()
            .filter_map(|j| {
                j.declaration
                    .inputs
                    .iter()
                    .find(|i| !declared::is_source(i) && !names.contains(i.as_str()))
                    .map(|i| j.problem("inputs", format!("reads {i}, which was refused")))
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        team.retain(|j| !orphans.iter().any(|p| p.file == j.file));
        refused.extend(orphans);
    }
}

/// The jobs the scheduler runs, with the declarations behind them.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub catalog: Catalog,
    /// Every declared job in the catalog: the built-in ones, then the
    /// teams'.
    pub declared: Vec<DeclaredJob>,
    /// The teams' declarations refused, each problem with its file.
    pub refused: Vec<Problem>,
}

impl Loaded {
    /// A job declared outside the product (a team's, or the operator's
    /// merchant directory) by name.
    pub fn team_job(&self, name: &str) -> Option<&DeclaredJob> {
        self.declared
            .iter()
            .find(|d| d.name == name && !d.file.starts_with(declared::BUILTIN_ROOT))
    }

    /// The refusals as text, one per problem.
    pub fn refused_text(&self) -> Vec<String> {
        self.refused.iter().map(ToString::to_string).collect()
    }
}

/// The jobs as configured, checked together (a `notify` against
/// `receivers`, the configured receivers' names, when there are any); every problem with the
/// operator's settings is reported, each naming its key, and fails the
/// load. The teams' declarations under `scheduler.jobs_dir` that have a
/// problem are refused ([`Loaded::refused`]) and the rest run. With
/// `retention` on, the `retention` job is one of them and every rollup
/// stops at the horizon of what it keeps.
pub fn load(
    config: &SchedulerConfig,
    retention: &RetentionConfig,
    receivers: &[String],
    on_clickhouse: bool,
    now_ms: i64,
) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let default_start = parse_start(&config.start, now_ms).unwrap_or_else(|e| {
        errors.push(format!("scheduler.start: {e}"));
        0
    });
    let mut product = declared::builtin();
    if let Some(directory) = &config.merchant_directory {
        product.push(declared::directory_job(directory));
    }
    let (mut team, mut refused) = team_jobs(&product, &config.jobs_dir, on_clickhouse);
    let [west, east] = config.local_day_utc_offsets;
    let declared_spec = |d: &DeclaredJob, problems: &mut Vec<Problem>| {
        let mut job = d.spec();
        // From the week or month holding the default start, so a monthly
        // job's first partition is not a month away.
        job.start_ms =
            tillwatch_scheduler::Partition::containing(job.grain, default_start).start_ms;
        if d.store_local_day() {
            job.reads_before_ms = i64::from(east.max(0)) * 3_600_000;
            job.reads_after_ms = -i64::from(west.min(0)) * 3_600_000;
        }
        problems.extend(apply_declared(&mut job, d, now_ms, receivers));
        job
    };
    let mut jobs: Vec<JobSpec> = Vec::new();
    for d in &product {
        let mut problems = Vec::new();
        jobs.push(declared_spec(d, &mut problems));
        errors.extend(problems.iter().map(ToString::to_string));
    }
    // A team's settings that do not parse refuse its job (and its readers).
    loop {
        let mut bad = Vec::new();
        for d in &team {
            let mut problems = Vec::new();
            declared_spec(d, &mut problems);
            if !problems.is_empty() {
                refused.extend(problems);
                bad.push(d.file.clone());
            }
        }
        if bad.is_empty() {
            break;
        }
        team.retain(|d| !bad.contains(&d.file));
        drop_orphans(&product, &mut team, &mut refused);
    }
    jobs.extend(team.iter().map(|d| declared_spec(d, &mut Vec::new())));
    if retention.enabled {
        let mut job = crate::retention::retention_job();
        job.start_ms = default_start;
        jobs.push(job);
    }
    let refused_names: std::collections::BTreeSet<&str> =
        refused.iter().filter_map(Problem::job_name).collect();
    for name in config.jobs.keys() {
        if jobs.iter().any(|j| &j.name == name) || refused_names.contains(name.as_str()) {
            // A job, or one whose declaration was refused (the refusal says why).
        } else if name == crate::directory::MERCHANT_DIRECTORY {
            errors.push(format!(
                "scheduler.jobs.{name}: the source is not configured; add \
                 [scheduler.merchant_directory] with url and query, or declare a source job with \
                 feeds = \"merchant-directory\""
            ));
        } else if name == crate::retention::RETENTION && !retention.enabled {
            errors.push(format!(
                "scheduler.jobs.{name}: retention.enabled is false, so the job does not run"
            ));
        } else {
            let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
            errors.push(format!(
                "scheduler.jobs.{name}: no such job; the jobs are {}",
                names.join(", ")
            ));
        }
    }
    let none = JobSettings::default();
    for job in &mut jobs {
        let settings = config.jobs.get(&job.name).unwrap_or(&none);
        let mut problems = Vec::new();
        apply(job, settings, now_ms, receivers, &mut problems);
        let of_product = product.iter().any(|d| d.name == job.name);
        if settings.keep.is_some() && (of_product || job.name == crate::retention::RETENTION) {
            problems.push((
                "keep",
                "the product's tables are kept as [retention] says (retention.tables, \
                 retention.hourly_rollups, retention.daily_rollups)"
                    .to_string(),
            ));
        }
        errors.extend(
            problems
                .into_iter()
                .map(|(key, message)| format!("scheduler.jobs.{}.{key}: {message}", job.name)),
        );
        if of_product || !retention.enabled {
            job.output_kept_ms = crate::retention::product_output_kept(retention, &job.name);
        }
    }
    let outputs_kept: BTreeMap<String, i64> = jobs
        .iter()
        .filter_map(|j| Some((j.name.clone(), j.output_kept_ms?)))
        .collect();
    for job in &mut jobs {
        job.kept_ms = crate::retention::kept_for_job(retention, job, &outputs_kept);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let catalog = Catalog::new(jobs).map_err(|e| vec![e.to_string()])?;
    let mut declared = product;
    declared.extend(team);
    Ok(Loaded {
        catalog,
        declared,
        refused,
    })
}

/// [`load`]'s catalog; each refused declaration is logged as a warning.
pub fn catalog(
    config: &SchedulerConfig,
    retention: &RetentionConfig,
    receivers: &[String],
    on_clickhouse: bool,
    now_ms: i64,
) -> Result<Catalog, Vec<String>> {
    let loaded = load(config, retention, receivers, on_clickhouse, now_ms)?;
    for problem in &loaded.refused {
        tracing::warn!(%problem, "a job declaration was refused; the other jobs run");
    }
    Ok(loaded.catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_356_000_000; // 2026-11-22T14:00Z

    /// A job with ClickHouse SQL only runs where the rollups run on
    /// ClickHouse; elsewhere it is refused, saying why, and so is the job
    /// reading it, while the rest load.
    #[test]
    fn a_clickhouse_only_job_loads_only_where_the_rollups_run_on_clickhouse() {
        let dir = tempfile::tempdir().unwrap();
        let team = dir.path().join("risk");
        std::fs::create_dir_all(&team).unwrap();
        let write = |name: &str, text: &str| std::fs::write(team.join(name), text).unwrap();
        let hourly =
            |inputs: &str| format!("description = \"x\"\ngrain = \"hour\"\ninputs = [{inputs}]\n");
        write("in_server.toml", &hourly("\"battery\""));
        write("in_server.clickhouse.sql", "SELECT 1 AS n");
        write("reader.toml", &hourly("\"in_server\""));
        write("reader.datafusion.sql", "SELECT n FROM in_server");
        write("other.toml", &hourly("\"battery\""));
        write("other.datafusion.sql", "SELECT device_id FROM battery");
        let product = declared::builtin();
        let dirs = [dir.path().to_path_buf()];
        let names = |jobs: &[DeclaredJob]| jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>();

        let (loaded, refused) = team_jobs(&product, &dirs, true);
        assert_eq!(refused, []);
        let mut loaded = names(&loaded);
        loaded.sort();
        assert_eq!(loaded, ["in_server", "other", "reader"]);

        let (loaded, refused) = team_jobs(&product, &dirs, false);
        assert_eq!(names(&loaded), ["other"]);
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert!(
            refused[0].contains(
                "in_server has only in_server.clickhouse.sql and the rollups run on the embedded engine here"
            ),
            "{refused:?}"
        );
        assert!(
            refused[1].contains("reader.toml")
                && refused[1].contains("reads in_server, which was refused"),
            "{refused:?}"
        );
    }

    #[test]
    fn settings_override_the_defaults_and_mistakes_name_their_key() {
        let config: SchedulerConfig = toml::from_str(
            r#"
            start = "2026-11-01"
            [jobs.device_health_daily]
            schedule = "30 2 * * *"
            time_zone = "Europe/Berlin"
            window = "Mon-Sun 02:00-05:00"
            retries = 5
            lateness = "1h"
            "#,
        )
        .unwrap();
        let catalog = catalog(&config, &RetentionConfig::default(), &[], false, NOW).unwrap();
        let daily = catalog.job("device_health_daily").unwrap();
        assert_eq!(daily.schedule.as_str(), "30 2 * * *");
        assert_eq!(daily.retries, 5);
        assert_eq!(daily.lateness_ms, 3_600_000);
        assert!(daily.window.is_some());
        assert_eq!(daily.start_ms, parse_start("2026-11-01", NOW).unwrap());
        assert_eq!(
            catalog.job("device_health_hourly").unwrap().start_ms,
            daily.start_ms
        );

        let bad: SchedulerConfig = toml::from_str(
            r#"
            start = "last week"
            [jobs.device_health_hourlyy]
            retries = 1
            [jobs.fleet_health_daily]
            schedule = "61 * * * *"
            window = "Mon-Sun 05:00-02:00x"
            concurrency = 0
            "#,
        )
        .unwrap();
        let errors = super::catalog(&bad, &RetentionConfig::default(), &[], false, NOW)
            .unwrap_err()
            .join("\n");
        for needle in [
            "scheduler.start",
            "scheduler.jobs.device_health_hourlyy: no such job",
            "scheduler.jobs.fleet_health_daily.schedule",
            "scheduler.jobs.fleet_health_daily.window",
            "scheduler.jobs.fleet_health_daily.concurrency",
        ] {
            assert!(errors.contains(needle), "{needle} missing from:\n{errors}");
        }
    }

    /// `notify` names configured receivers: a team's declaration naming
    /// another is refused at its line, the operator's setting fails the
    /// load; a job's alerts carry the names. Weekly and monthly jobs start
    /// with the week or month holding `scheduler.start`.
    #[test]
    fn notify_names_known_receivers_and_long_grains_start_with_their_interval() {
        let dir = tempfile::tempdir().unwrap();
        let team = dir.path().join("payments-risk");
        std::fs::create_dir_all(&team).unwrap();
        let job = |name: &str, extra: &str| {
            std::fs::write(
                team.join(format!("{name}.toml")),
                format!("description = \"x\"\n{extra}inputs = [\"battery\"]\n"),
            )
            .unwrap();
            std::fs::write(
                team.join(format!("{name}.datafusion.sql")),
                "SELECT device_id FROM battery\n",
            )
            .unwrap();
        };
        job("paged", "grain = \"hour\"\nnotify = [\"risk-pager\"]\n");
        job("misrouted", "grain = \"hour\"\nnotify = [\"risk-pagr\"]\n");
        job("weekly", "grain = \"week\"\n");
        job("monthly", "grain = \"month\"\n");
        let config: SchedulerConfig = toml::from_str(&format!(
            "jobs_dir = {:?}\nstart = \"7d\"\n[jobs.raw_compaction]\nnotify = [\"platform\"]\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        let receivers = ["risk-pager".to_string(), "alertmanager".to_string()];
        let errors =
            load(&config, &RetentionConfig::default(), &receivers, false, NOW).unwrap_err();
        assert_eq!(
            errors,
            [
                "scheduler.jobs.raw_compaction.notify: no receiver \"platform\" is configured \
                 (the receivers are risk-pager, alertmanager)"
            ]
        );
        let config: SchedulerConfig = toml::from_str(&format!(
            "jobs_dir = {:?}\nstart = \"7d\"\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        let loaded = load(&config, &RetentionConfig::default(), &receivers, false, NOW).unwrap();
        let refused = loaded.refused_text().join("\n");
        assert!(
            refused.contains("misrouted.toml:3: notify: no receiver \"risk-pagr\""),
            "{refused}"
        );
        assert_eq!(
            loaded.catalog.job("paged").unwrap().notify,
            ["risk-pager".to_string()]
        );
        assert!(loaded.catalog.job("misrouted").is_none());
        // Without receivers to check against (a config without alerting),
        // the names are taken as they are.
        let unchecked = load(&config, &RetentionConfig::default(), &[], false, NOW).unwrap();
        assert!(unchecked.catalog.job("misrouted").is_some());

        // NOW is Sunday 2026-11-22; seven days back is Sunday the 15th,
        // in the ISO week that began on Monday the 9th.
        let weekly = loaded.catalog.job("weekly").unwrap();
        assert_eq!(
            tillwatch_scheduler::Partition::containing(
                tillwatch_scheduler::Grain::Week,
                weekly.start_ms
            )
            .key(),
            "2026-W46"
        );
        assert_eq!(weekly.start_ms, parse_start("2026-11-09", NOW).unwrap());
        assert_eq!(
            loaded.catalog.job("monthly").unwrap().start_ms,
            parse_start("2026-11-01", NOW).unwrap()
        );
    }

    /// A team's `keep` is whole days: it is how long its output stays, and
    /// its partitions and its readers' stop running at that age; one that
    /// is not whole days is refused at its line. The product's jobs are
    /// kept by `[retention]`, which the operator's `keep` cannot change.
    #[test]
    fn a_teams_keep_is_whole_days_and_holds_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let team = dir.path().join("payments-risk");
        std::fs::create_dir_all(&team).unwrap();
        let job = |name: &str, extra: &str, input: &str| {
            let toml =
                format!("description = \"x\"\ngrain = \"day\"\ninputs = [\"{input}\"]\n{extra}");
            std::fs::write(team.join(format!("{name}.toml")), toml).unwrap();
            std::fs::write(
                team.join(format!("{name}.datafusion.sql")),
                format!("SELECT device_id FROM {input}\n"),
            )
            .unwrap();
        };
        job("kept", "keep = \"30d\"\n", "battery");
        job("reader", "", "kept");
        job("odd", "keep = \"36h\"\n", "battery");
        let text = |extra: &str| {
            format!(
                "jobs_dir = {:?}\nstart = \"7d\"\n{extra}",
                dir.path().display().to_string()
            )
        };
        let config: SchedulerConfig = toml::from_str(&text("")).unwrap();
        let loaded = load(&config, &RetentionConfig::default(), &[], false, NOW).unwrap();
        let day = |n: i64| Some(n * DAY_MS);
        let kept = loaded.catalog.job("kept").unwrap();
        assert_eq!((kept.output_kept_ms, kept.kept_ms), (day(30), day(30)));
        let reader = loaded.catalog.job("reader").unwrap();
        assert_eq!((reader.output_kept_ms, reader.kept_ms), (None, day(30)));
        let hourly = loaded.catalog.job("device_health_hourly").unwrap();
        assert_eq!(hourly.output_kept_ms, day(180), "[retention]'s default");
        let refused = loaded.refused_text().join("\n");
        assert!(
            refused.ends_with(
                "odd.toml:4: keep: 1day 12h is not a whole number of days from 1d to 100000d: \
                 retention deletes a day at a time (e.g. keep = \"400d\")"
            ),
            "{refused}"
        );

        let config: SchedulerConfig = toml::from_str(&text(
            "[jobs.device_health_daily]\nkeep = \"30d\"\n[jobs.kept]\nkeep = \"60d\"\n",
        ))
        .unwrap();
        let errors = load(&config, &RetentionConfig::default(), &[], false, NOW).unwrap_err();
        assert_eq!(
            errors,
            [
                "scheduler.jobs.device_health_daily.keep: the product's tables are kept as \
              [retention] says (retention.tables, retention.hourly_rollups, retention.daily_rollups)"
            ]
        );
        let config: SchedulerConfig =
            toml::from_str(&text("[jobs.kept]\nkeep = \"60d\"\n")).unwrap();
        let loaded = load(&config, &RetentionConfig::default(), &[], false, NOW).unwrap();
        assert_eq!(
            loaded.catalog.job("reader").unwrap().kept_ms,
            day(60),
            "the operator's keep"
        );
        let off = RetentionConfig {
            enabled: false,
            ..Default::default()
        };
        let loaded = load(&config, &off, &[], false, NOW).unwrap();
        assert_eq!(loaded.catalog.job("kept").unwrap().output_kept_ms, None);
    }

    #[test]
    fn a_relative_start_goes_back_to_a_day_boundary() {
        let start = parse_start("7d", NOW).unwrap();
        assert_eq!(start % DAY_MS, 0);
        assert_eq!((NOW - start) / DAY_MS, 7);
        assert!(parse_start("soon", NOW).is_err());
    }
}
