//! The built-in jobs with the operator's `[scheduler]` settings applied.

use std::time::Duration;

use tillwatch_config::{JobSettings, RetentionConfig, SchedulerConfig};
use tillwatch_scheduler::{Catalog, JobSpec, RunWindow, Schedule};

use crate::jobs;

/// Every built-in job with its defaults, upstream first.
pub fn builtin() -> Vec<JobSpec> {
    vec![
        jobs::raw_compaction(),
        jobs::device_health_hourly(),
        jobs::device_health_daily(),
        jobs::fleet_health_daily(),
    ]
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

fn apply(
    job: &mut JobSpec,
    s: &JobSettings,
    default_start: i64,
    now_ms: i64,
    errors: &mut Vec<String>,
) {
    let at = |key: &str| format!("scheduler.jobs.{}.{key}", job.name);
    job.start_ms = default_start;
    let tz = s.time_zone.as_deref().unwrap_or("UTC");
    if s.schedule.is_some() || s.time_zone.is_some() {
        let text = s.schedule.as_deref().unwrap_or(job.schedule.as_str());
        match Schedule::parse(text, tz) {
            Ok(schedule) => job.schedule = schedule,
            Err(e) => errors.push(format!("{}: {e}", at("schedule"))),
        }
    }
    if let Some(start) = &s.start {
        match parse_start(start, now_ms) {
            Ok(v) => job.start_ms = v,
            Err(e) => errors.push(format!("{}: {e}", at("start"))),
        }
    }
    if let Some(end) = &s.end {
        match parse_start(end, now_ms) {
            Ok(v) if v > job.start_ms => job.end_ms = Some(v),
            Ok(_) => errors.push(format!("{}: must come after the start", at("end"))),
            Err(e) => errors.push(format!("{}: {e}", at("end"))),
        }
    }
    if let Some(v) = s.catch_up {
        job.catch_up = v;
    }
    if let Some(window) = &s.window {
        let zone = s.window_time_zone.as_deref().unwrap_or(tz);
        match RunWindow::parse(window, zone) {
            Ok(w) => job.window = Some(w),
            Err(e) => errors.push(format!("{}: {e}", at("window"))),
        }
    } else if s.window_time_zone.is_some() {
        errors.push(format!("{}: set without a window", at("window_time_zone")));
    }
    if let Some(v) = s.lateness {
        job.lateness_ms = ms(v);
    }
    if let Some(v) = s.timeout {
        if v.is_zero() {
            errors.push(format!("{}: must be more than 0s", at("timeout")));
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
        errors.push(format!(
            "{}: must be at least retry_base ({} ms)",
            at("retry_max"),
            job.retry_base_ms
        ));
    }
    if let Some(v) = s.concurrency {
        if v == 0 {
            errors.push(format!("{}: must be at least 1", at("concurrency")));
        }
        job.concurrency = v;
    }
    if let Some(v) = &s.owner {
        job.owner = v.clone();
    }
}

/// The jobs as configured, checked together; every problem is reported,
/// each naming its key. With `retention` on, the `retention` job is one
/// of them and every rollup stops at the horizon of what it keeps.
pub fn catalog(
    config: &SchedulerConfig,
    retention: &RetentionConfig,
    now_ms: i64,
) -> Result<Catalog, Vec<String>> {
    let mut errors = Vec::new();
    let default_start = parse_start(&config.start, now_ms).unwrap_or_else(|e| {
        errors.push(format!("scheduler.start: {e}"));
        0
    });
    let mut jobs = builtin();
    if config.merchant_directory.is_some() {
        jobs.push(crate::directory::merchant_directory());
    }
    if retention.enabled {
        jobs.push(crate::retention::retention_job());
    }
    for name in config.jobs.keys() {
        if name == crate::directory::MERCHANT_DIRECTORY && config.merchant_directory.is_none() {
            errors.push(format!(
                "scheduler.jobs.{name}: the source is not configured; add [scheduler.merchant_directory] with url and query"
            ));
        } else if name == crate::retention::RETENTION && !retention.enabled {
            errors.push(format!(
                "scheduler.jobs.{name}: retention.enabled is false, so the job does not run"
            ));
        } else if !jobs.iter().any(|j| &j.name == name) {
            let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
            errors.push(format!(
                "scheduler.jobs.{name}: no such job; the jobs are {}",
                names.join(", ")
            ));
        }
    }
    let none = JobSettings::default();
    let [west, east] = config.local_day_utc_offsets;
    for job in &mut jobs {
        if job.name == jobs::DEVICE_HEALTH_DAILY {
            job.reads_before_ms = i64::from(east.max(0)) * 3_600_000;
            job.reads_after_ms = -i64::from(west.min(0)) * 3_600_000;
        }
        let settings = config.jobs.get(&job.name).unwrap_or(&none);
        apply(job, settings, default_start, now_ms, &mut errors);
        job.kept_ms = crate::retention::kept_for_job(retention, &job.name);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Catalog::new(jobs).map_err(|e| vec![e.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_356_000_000; // 2026-11-22T14:00Z

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
        let catalog = catalog(&config, &RetentionConfig::default(), NOW).unwrap();
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
        let errors = super::catalog(&bad, &RetentionConfig::default(), NOW)
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

    #[test]
    fn a_relative_start_goes_back_to_a_day_boundary() {
        let start = parse_start("7d", NOW).unwrap();
        assert_eq!(start % DAY_MS, 0);
        assert_eq!((NOW - start) / DAY_MS, 7);
        assert!(parse_start("soon", NOW).is_err());
    }
}
