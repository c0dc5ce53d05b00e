//! The jobs over HTTP, the same operations as `tillwatch jobs`, answered by
//! `tillwatch-query`:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/jobs?owner=` | jobs (of one owning team), settings, partitions by status (stale: inputs changed since it ran), the ingest watermark, what is due now and why |
//! | `GET /api/v1/runs?job=&owner=&status=&limit=` | runs of every job (or one team's), newest first, each with its log |
//! | `GET /api/v1/jobs/{job}/runs?partition=&limit=` | run history, newest first |
//! | `GET /api/v1/jobs/{job}/partitions/{partition}/lineage` | the runs and inputs behind a partition, and its downstream |
//! | `POST /api/v1/jobs/{job}/backfill` | `{"from","to","downstream","dry_run"}`: marks the range for the scheduler, upstream first; answers with the partitions |
//! | `POST /api/v1/jobs/{job}/clear` | the same (a backfill over HTTP is driven by the running scheduler) |
//! | `GET /api/v1/jobs/{job}/progress?from=&to=&downstream=&since=` | each partition of a range: waiting, running, succeeded or failed |
//! | `POST /api/v1/jobs/{job}/pause` | `{"reason"}`: the scheduler starts none of its partitions until it is resumed (who, when and why are on the jobs page) |
//! | `POST /api/v1/jobs/{job}/resume` | it runs again, catching up on what came due meanwhile |
//! | `POST /api/v1/jobs/{job}/partitions/{partition}/mark-succeeded` | `{"reason"}`: records the partition as succeeded without running it (who and why are kept on the run); its readers go on |
//!
//! Errors are JSON `{"error": "…"}` naming what was wrong: 404 for an
//! unknown job, 400 for a bad partition, range or parameter.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tillwatch_query::jobs::{
    JobQueries, JobsOverview, Lineage, Paused, RangeProgress, RangeRequest, Run, RunList,
};

use crate::auth::Caller;
use crate::{ApiError, Doc, Routes, bad};

type Typed<T> = Result<Json<T>, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    owner: Option<String>,
}

async fn list(
    State(jobs): State<JobQueries>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Typed<JobsOverview> {
    let Query(q) = q?;
    let mut overview = jobs.overview().await?;
    if let Some(owner) = q.owner {
        overview.jobs.retain(|j| j.owner == owner);
        let names: std::collections::BTreeSet<String> =
            overview.jobs.iter().map(|j| j.name.clone()).collect();
        overview.due.retain(|d| names.contains(&d.job));
    }
    Ok(Json(overview))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    partition: Option<String>,
    limit: Option<u32>,
}

async fn runs(
    State(jobs): State<JobQueries>,
    Path(job): Path<String>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Typed<RunList> {
    let Query(q) = q?;
    Ok(Json(
        jobs.job_runs(&job, q.partition.as_deref(), q.limit).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllRunsQuery {
    job: Option<String>,
    owner: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn all_runs(
    State(jobs): State<JobQueries>,
    q: Result<Query<AllRunsQuery>, QueryRejection>,
) -> Typed<RunList> {
    let Query(q) = q?;
    Ok(Json(
        jobs.runs(
            q.job.as_deref(),
            q.owner.as_deref(),
            q.status.as_deref(),
            q.limit,
        )
        .await?,
    ))
}

async fn lineage(
    State(jobs): State<JobQueries>,
    Path((job, partition)): Path<(String, String)>,
) -> Typed<Lineage> {
    Ok(Json(jobs.lineage(&job, &partition).await?))
}

/// A range of a job's partitions to run again.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    /// The first partition: a day (`2026-11-22`) or an hour
    /// (`2026-11-22T06`).
    from: String,
    /// The last partition, included.
    to: String,
    /// Also the downstream jobs' partitions that read these.
    #[serde(default)]
    downstream: bool,
    /// Only say what would run.
    #[serde(default)]
    dry_run: bool,
}

/// A range marked to run again, and where to follow it.
#[derive(Serialize, JsonSchema)]
struct Requested {
    #[serde(flatten)]
    request: RangeRequest,
    /// The path of the range's progress (`null` for a dry run).
    progress: Option<String>,
}

async fn request(
    State(jobs): State<JobQueries>,
    Path(job): Path<String>,
    body: Result<Json<RangeBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Requested>), ApiError> {
    let Json(body) = body.map_err(|e| bad(format!("the body: {}", e.body_text())))?;
    let request = jobs
        .request_range(&job, &body.from, &body.to, body.downstream, body.dry_run)
        .await?;
    let (status, progress) = match request.requested_ms {
        Some(now) => (
            StatusCode::ACCEPTED,
            Some(format!(
                "/api/v1/jobs/{job}/progress?from={}&to={}&downstream={}&since={now}",
                body.from, body.to, body.downstream
            )),
        ),
        None => (StatusCode::OK, None),
    };
    Ok((status, Json(Requested { request, progress })))
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
    State(jobs): State<JobQueries>,
    Path(job): Path<String>,
    q: Result<Query<ProgressQuery>, QueryRejection>,
) -> Typed<RangeProgress> {
    let Query(q) = q?;
    Ok(Json(
        jobs.progress(&job, &q.from, &q.to, q.downstream, q.since)
            .await?,
    ))
}

/// Why a job is paused.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// Shown on the jobs page with who paused it and when (1-500
    /// characters).
    reason: String,
}

/// A job's pause, or that it runs.
#[derive(Serialize, JsonSchema)]
struct PauseState {
    job: String,
    /// `null` once resumed.
    paused: Option<Paused>,
}

async fn pause(
    State(jobs): State<JobQueries>,
    Path(job): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<PauseBody>, JsonRejection>,
) -> Typed<PauseState> {
    let Json(body) = body.map_err(|e| bad(format!("the body: {}", e.body_text())))?;
    let by = Caller::who(caller);
    let paused = jobs.pause(&job, &by, &body.reason).await?;
    Ok(Json(PauseState {
        job,
        paused: Some(paused),
    }))
}

/// Why a partition is marked succeeded.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    /// Kept on the run with who marked it (1-500 characters).
    reason: String,
}

async fn mark_succeeded(
    State(jobs): State<JobQueries>,
    Path((job, partition)): Path<(String, String)>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<MarkBody>, JsonRejection>,
) -> Typed<Run> {
    let Json(body) = body.map_err(|e| bad(format!("the body: {}", e.body_text())))?;
    let by = Caller::who(caller);
    Ok(Json(
        jobs.mark_succeeded(&job, &partition, &by, &body.reason)
            .await?,
    ))
}

async fn resume(State(jobs): State<JobQueries>, Path(job): Path<String>) -> Typed<PauseState> {
    jobs.resume(&job).await?;
    Ok(Json(PauseState { job, paused: None }))
}

/// `POST /api/v1/jobs/{job}/<action>` with a [`RangeBody`]: 202 and the
/// range marked, or 200 for a dry run.
fn range_doc(action: &str, summary: &'static str) -> Doc {
    Doc::post(&format!("/api/v1/jobs/{{job}}/{action}"), "jobs", summary)
        .path_param("job", "The job's name")
        .accepts::<RangeBody>(
            r#"{"from": "2026-11-20", "to": "2026-11-21", "downstream": false, "dry_run": false}"#,
        )
        .returns::<Requested>()
        .status(202)
        .also(200)
}

/// The jobs routes over one scheduler catalog.
pub fn router(jobs: JobQueries) -> Routes {
    let job = "The job's name";
    let partition = "A day (2026-11-22) or an hour (2026-11-22T06)";
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/jobs",
                "jobs",
                "Jobs, their settings, partitions by status, the ingest watermark",
            )
            .query("owner", "string", "Only this team's jobs")
            .returns::<JobsOverview>(),
            get(list),
        )
        .route(
            Doc::get(
                "/api/v1/runs",
                "jobs",
                "Runs of every job, newest first, each with its log",
            )
            .query("job", "string", "Only this job's")
            .query("owner", "string", "Only the runs of this team's jobs")
            .query("status", "string", "running, succeeded or failed")
            .query("limit", "integer", "1-1000, default 50")
            .returns::<RunList>(),
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
            .query("limit", "integer", "1-10000, default 50")
            .returns::<RunList>(),
            get(runs),
        )
        .route(
            Doc::get(
                "/api/v1/jobs/{job}/partitions/{partition}/lineage",
                "jobs",
                "The runs and input partitions behind a partition, and its downstream",
            )
            .path_param("job", job)
            .path_param("partition", partition)
            .returns::<Lineage>(),
            get(lineage),
        )
        .route(
            range_doc("backfill", "Re-run a range, upstream first"),
            post(request),
        )
        .route(
            range_doc("clear", "Mark a range to run again"),
            post(request),
        )
        .route(
            Doc::post(
                "/api/v1/jobs/{job}/pause",
                "jobs",
                "Pause a job: none of its partitions start until it is resumed",
            )
            .path_param("job", job)
            .accepts::<PauseBody>(r#"{"reason": "the payments DB is being migrated"}"#)
            .returns::<PauseState>(),
            post(pause),
        )
        .route(
            Doc::post(
                "/api/v1/jobs/{job}/partitions/{partition}/mark-succeeded",
                "jobs",
                "Record a partition as succeeded without running it, with who and why",
            )
            .path_param("job", job)
            .path_param("partition", partition)
            .accepts::<MarkBody>(r#"{"reason": "the source had no refunds that hour"}"#)
            .returns::<Run>(),
            post(mark_succeeded),
        )
        .route(
            Doc::post(
                "/api/v1/jobs/{job}/resume",
                "jobs",
                "Resume a paused job; it catches up on what came due",
            )
            .path_param("job", job)
            .returns::<PauseState>(),
            post(resume),
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
            .query("since", "integer", "Count runs started after this (ms)")
            .returns::<RangeProgress>(),
            get(progress),
        )
        .with_state(jobs)
}
