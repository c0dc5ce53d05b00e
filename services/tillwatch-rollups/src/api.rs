//! The jobs over HTTP, the same operations as `tillwatch jobs`:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/jobs` | jobs, settings, partitions by status (stale: inputs changed since it ran), the ingest watermark, what is due now and why |
//! | `GET /api/v1/runs?job=&status=&limit=` | runs of every job, newest first, each with its log |
//! | `GET /api/v1/jobs/{job}/runs?partition=&limit=` | run history, newest first |
//! | `GET /api/v1/jobs/{job}/partitions/{partition}/lineage` | the runs and inputs behind a partition, and its downstream |
//! | `POST /api/v1/jobs/{job}/backfill` | `{"from","to","downstream","dry_run"}`: marks the range for the scheduler, upstream first; answers with the partitions |
//! | `POST /api/v1/jobs/{job}/clear` | the same (a backfill over HTTP is driven by the running scheduler) |
//! | `GET /api/v1/jobs/{job}/progress?from=&to=&downstream=&since=` | each partition of a range: waiting, running, succeeded or failed |
//!
//! Errors are JSON `{"error": "…"}` naming what was wrong: 404 for an
//! unknown job, 400 for a bad partition, range or parameter.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tillwatch_api::{Answer, ApiError, Doc, Routes, bad};
use tillwatch_config::Config;
use tillwatch_meta::JobRunRow;
use tillwatch_scheduler::{Input, Progress, Reason, Runner, Target, ops};
use tillwatch_storage::Lake;

use crate::service::{self, SchedulerError, parse_partition, wall_clock};

#[derive(Clone)]
struct Jobs {
    runner: Arc<Runner>,
    lake: Lake,
    stall_after: std::time::Duration,
}

impl Jobs {
    fn known(&self, job: &str) -> Result<(), ApiError> {
        if self.runner.catalog().job(job).is_some() {
            return Ok(());
        }
        let names: Vec<&str> = self
            .runner
            .catalog()
            .jobs()
            .iter()
            .map(|j| j.name.as_str())
            .collect();
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no job {job:?}; the jobs are {}", names.join(", ")),
        ))
    }
}

/// A run's log: what it did, in order, from its record.
fn run_log(r: &JobRunRow) -> Vec<String> {
    let at = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string() + "Z")
            .unwrap_or_else(|_| ms.to_string())
    };
    let inputs = serde_json::from_str::<Vec<Value>>(&r.inputs).unwrap_or_default();
    let empty = inputs
        .iter()
        .filter(|i| i["fingerprint"].as_str().is_some_and(str::is_empty))
        .count();
    let mut log = vec![
        format!(
            "{} {} started by {} (attempt {}, {})",
            at(r.started_ms),
            r.partition_key,
            r.scheduler,
            r.attempt,
            r.reason
        ),
        format!(
            "{} reading {} input partition(s), {} of them empty; inputs fingerprint {}",
            at(r.started_ms),
            inputs.len(),
            empty,
            if r.inputs_fingerprint.is_empty() {
                "-"
            } else {
                &r.inputs_fingerprint
            }
        ),
    ];
    if let Some(end) = r.finished_ms {
        let took = humantime::format_duration(std::time::Duration::from_millis(
            (end - r.started_ms).max(0) as u64,
        ));
        log.push(match (r.status.as_str(), &r.error) {
            ("succeeded", _) => format!(
                "{} succeeded in {took}: {} row(s) written, output fingerprint {}",
                at(end),
                r.rows_written.unwrap_or(0),
                r.output_fingerprint.as_deref().unwrap_or("-")
            ),
            (_, Some(e)) => format!("{} {} after {took}: {e}", at(end), r.status),
            (status, None) => format!("{} {status} after {took}", at(end)),
        });
    } else {
        log.push("still running".to_string());
    }
    log
}

fn run_json(r: &JobRunRow) -> Value {
    json!({
        "log": run_log(r),
        "run_id": r.run_id,
        "job": r.job,
        "partition": r.partition_key,
        "attempt": r.attempt,
        "reason": r.reason,
        "scheduler": r.scheduler,
        "started_ms": r.started_ms,
        "finished_ms": r.finished_ms,
        "status": r.status,
        "error": r.error,
        "rows": r.rows_written,
        "inputs": serde_json::from_str::<Value>(&r.inputs).unwrap_or(Value::Null),
        "inputs_fingerprint": r.inputs_fingerprint,
        "output_fingerprint": r.output_fingerprint,
    })
}

async fn list(State(s): State<Jobs>) -> Answer {
    let snap = service::snapshot(&s.runner, s.lake.clone(), s.stall_after).await;
    let rows = s.runner.store().job_partitions().await?;
    // What the scheduler would start now, and why: a `stale` partition
    // succeeded on inputs that have changed since.
    let due = s
        .runner
        .due(snap.watermark_ms, &|t, p| snap.fingerprint(t, p))
        .await?;
    let jobs: Vec<Value> = s
        .runner
        .catalog()
        .jobs()
        .iter()
        .map(|job| {
            let count = |status: &str| {
                rows.iter()
                    .filter(|r| r.job == job.name && r.status == status)
                    .count()
            };
            let inputs: Vec<Value> = job
                .inputs
                .iter()
                .map(|i| match i {
                    Input::Source(t) => json!({ "source": t }),
                    Input::Job(j) => json!({ "job": j }),
                })
                .collect();
            json!({
                "name": job.name,
                "owner": job.owner,
                "grain": job.grain.as_str(),
                "schedule": job.schedule.as_str(),
                "start_ms": job.start_ms,
                "end_ms": job.end_ms,
                "catch_up": job.catch_up,
                "lateness_ms": job.lateness_ms,
                "timeout_ms": job.timeout_ms,
                "retries": job.retries,
                "concurrency": job.concurrency,
                "window": job.window.is_some(),
                "inputs": inputs,
                "partitions": {
                    "succeeded": count("succeeded"),
                    "failed": count("failed"),
                    "running": count("running"),
                    "queued": count("queued"),
                    "stale": due
                        .iter()
                        .filter(|t| t.job == job.name && t.reason == Reason::Stale)
                        .count(),
                },
            })
        })
        .collect();
    let due: Vec<Value> = due
        .iter()
        .map(|t| {
            json!({
                "job": t.job,
                "partition": t.partition.key(),
                "reason": t.reason.as_str(),
                "attempt": t.attempt,
            })
        })
        .collect();
    // Each gateway's record: a stalled one no longer holds the rollups back.
    let writers: Vec<Value> = snap
        .writers
        .iter()
        .map(|w| {
            json!({
                "writer": w.writer,
                "watermark_ms": w.at_ms,
                "stalled": w.stalled,
            })
        })
        .collect();
    Ok(Json(json!({
        "watermark_ms": (snap.watermark_ms != i64::MIN).then_some(snap.watermark_ms),
        "watermark_stall_after_ms": s.stall_after.as_millis() as i64,
        "writers": writers,
        "jobs": jobs,
        "due": due,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    partition: Option<String>,
    limit: Option<u32>,
}

async fn runs(
    State(s): State<Jobs>,
    Path(job): Path<String>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    s.known(&job)?;
    if let Some(p) = &q.partition {
        parse_partition(p).map_err(|e| bad(format!("partition: {e}")))?;
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=10_000).contains(&limit) {
        return Err(bad("limit: must be 1 to 10000"));
    }
    let runs = s
        .runner
        .store()
        .job_runs(Some(&job), q.partition.as_deref(), limit)
        .await?;
    Ok(Json(
        json!({ "runs": runs.iter().map(run_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllRunsQuery {
    job: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

/// Runs of every job (or one), newest first, optionally only one status.
async fn all_runs(State(s): State<Jobs>, q: Result<Query<AllRunsQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    if let Some(job) = &q.job {
        s.known(job)?;
    }
    if let Some(status) = &q.status
        && !["running", "succeeded", "failed"].contains(&status.as_str())
    {
        return Err(bad(format!(
            "status: {status:?} is not running, succeeded or failed"
        )));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit: must be 1 to 1000"));
    }
    // Newest first, filtered here: read more while a status filter leaves
    // the page short.
    let mut fetch = limit;
    let found = loop {
        let runs = s
            .runner
            .store()
            .job_runs(q.job.as_deref(), None, fetch)
            .await?;
        let exhausted = runs.len() < fetch as usize;
        let found: Vec<JobRunRow> = runs
            .into_iter()
            .filter(|r| q.status.as_ref().is_none_or(|st| *st == r.status))
            .take(limit as usize)
            .collect();
        if found.len() == limit as usize || exhausted || fetch >= 50_000 {
            break found;
        }
        fetch = fetch.saturating_mul(8).min(50_000);
    };
    Ok(Json(
        json!({ "runs": found.iter().map(run_json).collect::<Vec<_>>() }),
    ))
}

async fn lineage(State(s): State<Jobs>, Path((job, partition)): Path<(String, String)>) -> Answer {
    s.known(&job)?;
    let partition = parse_partition(&partition).map_err(|e| bad(format!("partition: {e}")))?;
    let target = Target { job, partition };
    let l = ops::lineage(s.runner.store(), s.runner.catalog(), &target).await?;
    Ok(Json(json!({
        "job": l.target.job,
        "partition": l.target.partition.key(),
        "status": l.record.as_ref().map(|r| r.status.clone()),
        "output_fingerprint": l.record.as_ref().and_then(|r| r.output_fingerprint.clone()),
        "current_run": l.current.as_ref().map(run_json),
        "runs": l.runs.iter().map(run_json).collect::<Vec<_>>(),
        "downstream": l.downstream.iter().map(|(t, status)| json!({
            "job": t.job,
            "partition": t.partition.key(),
            "status": status,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    from: String,
    to: String,
    #[serde(default)]
    downstream: bool,
    #[serde(default)]
    dry_run: bool,
}

fn range_targets(
    s: &Jobs,
    job: &str,
    from: &str,
    to: &str,
    downstream: bool,
) -> Result<Vec<Target>, ApiError> {
    s.known(job)?;
    let first = parse_partition(from).map_err(|e| bad(format!("from: {e}")))?;
    let last = parse_partition(to).map_err(|e| bad(format!("to: {e}")))?;
    if last.end_ms() <= first.start_ms {
        return Err(bad(format!("to: {last} comes before from {first}")));
    }
    ops::targets(
        s.runner.catalog(),
        job,
        first.start_ms,
        last.end_ms(),
        downstream,
        wall_clock()(),
    )
    .map_err(bad)
}

fn targets_json(targets: &[Target]) -> Vec<Value> {
    targets
        .iter()
        .map(|t| json!({ "job": t.job, "partition": t.partition.key() }))
        .collect()
}

async fn request(
    State(s): State<Jobs>,
    Path(job): Path<String>,
    body: Result<Json<RangeBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| bad(format!("the body: {}", e.body_text())))?;
    let targets = range_targets(&s, &job, &body.from, &body.to, body.downstream)?;
    if body.dry_run {
        return Ok((
            StatusCode::OK,
            Json(json!({ "dry_run": true, "partitions": targets_json(&targets) })),
        ));
    }
    if targets.is_empty() {
        return Err(bad(format!(
            "nothing to run: no partition of {job} in that range has ended within the job's start and end"
        )));
    }
    let now = wall_clock()();
    ops::request(s.runner.store(), &targets, now).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "requested_ms": now,
            "partitions": targets_json(&targets),
            "progress": format!(
                "/api/v1/jobs/{job}/progress?from={}&to={}&downstream={}&since={now}",
                body.from, body.to, body.downstream
            ),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressQuery {
    from: String,
    to: String,
    #[serde(default)]
    downstream: bool,
    /// Runs started before this do not count (the backfill's request time).
    #[serde(default)]
    since: i64,
}

async fn progress(
    State(s): State<Jobs>,
    Path(job): Path<String>,
    q: Result<Query<ProgressQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let targets = range_targets(&s, &job, &q.from, &q.to, q.downstream)?;
    let states = ops::progress(s.runner.store(), s.runner.catalog(), &targets, q.since).await?;
    let done = states.iter().filter(|p| p.finished()).count();
    let items: Vec<Value> = targets
        .iter()
        .zip(&states)
        .map(|(t, p)| {
            let (state, rows, error) = match p {
                Progress::Waiting => ("waiting", None, None),
                Progress::Running => ("running", None, None),
                Progress::Succeeded { rows } => ("succeeded", *rows, None),
                Progress::Failed { error } => ("failed", None, Some(error.clone())),
            };
            json!({
                "job": t.job,
                "partition": t.partition.key(),
                "state": state,
                "rows": rows,
                "error": error,
            })
        })
        .collect();
    Ok(Json(json!({
        "finished": done,
        "total": targets.len(),
        "partitions": items,
    })))
}

/// The jobs routes over the configured metadata store and lake.
pub async fn router(config: &Config) -> Result<Routes, SchedulerError> {
    let (runner, lake) = service::open(config, wall_clock()).await?;
    let state = Jobs {
        runner: Arc::new(runner),
        lake,
        stall_after: config.scheduler.watermark_stall_after,
    };
    let job = "The job's name";
    let partition = "A day (2026-11-22) or an hour (2026-11-22T06)";
    let range = "{\"from\": P, \"to\": P, \"downstream\": false, \"dry_run\": false}";
    Ok(Routes::new()
        .route(
            Doc::get(
                "/api/v1/jobs",
                "jobs",
                "Jobs, their settings, partitions by status, the ingest watermark",
            ),
            get(list),
        )
        .route(
            Doc::get(
                "/api/v1/runs",
                "jobs",
                "Runs of every job, newest first, each with its log",
            )
            .query("job", "string", "Only this job's")
            .query("status", "string", "running, succeeded or failed")
            .query("limit", "integer", "1-1000, default 50"),
            get(all_runs),
        )
        .route(
            Doc::get(
                "/api/v1/jobs/{job}/runs",
                "jobs",
                "A job's run history, newest first",
            )
            .path_param("job", job)
            .query("partition", "string", partition)
            .query("limit", "integer", "1-10000, default 50"),
            get(runs),
        )
        .route(
            Doc::get(
                "/api/v1/jobs/{job}/partitions/{partition}/lineage",
                "jobs",
                "The runs and input partitions behind a partition, and its downstream",
            )
            .path_param("job", job)
            .path_param("partition", partition),
            get(lineage),
        )
        .route(
            Doc::post(
                "/api/v1/jobs/{job}/backfill",
                "jobs",
                "Re-run a range, upstream first",
            )
            .path_param("job", job)
            .body(range)
            .status(202),
            post(request),
        )
        .route(
            Doc::post(
                "/api/v1/jobs/{job}/clear",
                "jobs",
                "Mark a range to run again",
            )
            .path_param("job", job)
            .body(range)
            .status(202),
            post(request),
        )
        .route(
            Doc::get(
                "/api/v1/jobs/{job}/progress",
                "jobs",
                "Each partition of a range: waiting, running, succeeded or failed",
            )
            .path_param("job", job)
            .query_required("from", "string", partition)
            .query_required("to", "string", partition)
            .query(
                "downstream",
                "boolean",
                "Include downstream jobs' partitions",
            )
            .query("since", "integer", "Count runs started after this (ms)"),
            get(progress),
        )
        .with_state(state))
}
