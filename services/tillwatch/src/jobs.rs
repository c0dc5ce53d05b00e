//! `tillwatch scheduler` and `tillwatch jobs …`: the rollup scheduler, and
//! what operators do with its jobs (list, runs, clear, backfill, lineage),
//! straight against the metadata store and the lake, beside (or without) a
//! running scheduler.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use tillwatch_config::Config;
use tillwatch_meta::MetaStore;
use tillwatch_rollups::service::{self, wall_clock};
use tillwatch_scheduler::{Partition, Progress, Target, ops};

use crate::alerts::{StoreArgs, when};
use crate::load;

#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// The jobs, their settings, how their partitions stand and what is due.
    List(ListArgs),
    /// Runs, newest first.
    Runs(RunsArgs),
    /// Mark a range to run again; the scheduler re-runs it (upstream first).
    Clear(RangeArgs),
    /// Re-run a range now, in dependency order, showing progress; shares
    /// the work with a running scheduler without running anything twice.
    Backfill(RangeArgs),
    /// Which runs and input partitions produced a partition, and what
    /// depends on it.
    Lineage(LineageArgs),
    /// Pause a job: the scheduler starts none of its partitions (its
    /// readers wait for it) until it is resumed.
    Pause(PauseArgs),
    /// Resume a paused job; it catches up on what came due meanwhile.
    Resume(JobArgs),
    /// Record a partition as succeeded without running it (its readers go
    /// on); the run history keeps who and why.
    MarkSucceeded(MarkArgs),
    /// Check job declarations (`<dir>/<owner>/<job>.toml` and their SQL)
    /// together with the built-in jobs, without a store or data: every
    /// problem is printed with its file and line, and the command fails if
    /// there is one. With no directory, the built-in jobs alone.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PauseArgs {
    #[command(flatten)]
    store: StoreArgs,
    job: String,
    /// Why, for everyone who sees it paused (the jobs page, `jobs list`).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct MarkArgs {
    #[command(flatten)]
    store: StoreArgs,
    job: String,
    /// 2026-11-22 or 2026-11-22T06.
    partition: String,
    /// Why, kept on the run.
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    #[command(flatten)]
    store: StoreArgs,
    job: String,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Jobs roots, each holding one folder per owning team.
    dirs: Vec<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this team's jobs.
    #[arg(long)]
    owner: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this job's runs.
    job: Option<String>,
    /// Only this partition's runs (2026-11-22 or 2026-11-22T06).
    #[arg(long)]
    partition: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Debug, Args)]
pub(crate) struct RangeArgs {
    #[command(flatten)]
    store: StoreArgs,
    job: String,
    /// First partition: a day (2026-11-16) or an hour (2026-11-16T05).
    #[arg(long)]
    from: String,
    /// Last partition, included.
    #[arg(long)]
    to: String,
    /// The downstream jobs' partitions over the same range too, each of
    /// its own interval, after their inputs.
    #[arg(long)]
    downstream: bool,
    /// Print what would run, in order, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LineageArgs {
    #[command(flatten)]
    store: StoreArgs,
    job: String,
    /// 2026-11-22 or 2026-11-22T06.
    partition: String,
}

/// The runner over the configured jobs and store, and the lake.
async fn open(
    config: &Config,
) -> anyhow::Result<(tillwatch_scheduler::Runner, tillwatch_storage::Lake)> {
    let store = MetaStore::open(config).await?;
    Ok(service::open(config, store, wall_clock())?)
}

fn config(args: &StoreArgs) -> anyhow::Result<Config> {
    let mut config = load(&args.common)?;
    if let Some(url) = &args.metadata_url {
        config.metadata.url = Some(url.clone());
    }
    crate::validate(&config)?;
    Ok(config)
}

pub(crate) async fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    tillwatch_serve::roles::scheduler(config(&args.store)?).await
}

/// `[from, to]` from the command line, as milliseconds `[from, to)`.
fn range(from: &str, to: &str) -> anyhow::Result<(i64, i64)> {
    let from: Partition = from.parse().context("--from")?;
    let to: Partition = to.parse().context("--to")?;
    anyhow::ensure!(
        to.end_ms() > from.start_ms,
        "--to {to} comes before --from {from}"
    );
    Ok((from.start_ms, to.end_ms()))
}

/// The store, the lake and the partitions a clear or backfill covers,
/// upstream first, with the time it is asked at.
async fn open_range(
    args: &RangeArgs,
) -> anyhow::Result<(
    tillwatch_scheduler::Runner,
    tillwatch_storage::Lake,
    Vec<Target>,
    i64,
)> {
    let config = config(&args.store)?;
    let (runner, lake) = open(&config).await?;
    let (from, to) = range(&args.from, &args.to)?;
    let now = wall_clock()();
    let targets = ops::targets(runner.catalog(), &args.job, from, to, args.downstream, now)?;
    Ok((runner, lake, targets, now))
}

fn counts(targets: &[Target]) -> String {
    let mut per: Vec<(String, usize)> = Vec::new();
    for t in targets {
        match per.iter_mut().find(|(j, _)| *j == t.job) {
            Some((_, n)) => *n += 1,
            None => per.push((t.job.clone(), 1)),
        }
    }
    per.iter()
        .map(|(j, n)| format!("{n} of {j}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `jobs validate`: the built-in jobs and those under `dirs`, checked
/// together.
async fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    use tillwatch_rollups::declared;
    let mut jobs = declared::builtin();
    let mut problems = Vec::new();
    for dir in &args.dirs {
        let (found, more) = declared::load_dir(dir);
        jobs.extend(found);
        problems.extend(more);
    }
    problems.extend(declared::check(&jobs));
    problems.extend(tillwatch_rollups::catalog::settings_problems(
        &jobs,
        wall_clock()(),
    ));
    // Jobs whose graph is broken (an unknown input, a cycle) are not planned;
    // readers of a source are, against its query's columns, when its
    // database can be reached from here.
    let (sources, undescribed) = tillwatch_rollups::source::describe_all(&jobs).await;
    problems.extend(declared::plan(&jobs, &sources).await.1);
    for job in &jobs {
        let engines: Vec<&str> = [
            job.sql.datafusion.as_ref().map(|_| "embedded"),
            job.sql.clickhouse.as_ref().map(|_| "clickhouse"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let engines = if job.declaration.builtin {
            "built in".to_string()
        } else if let Some(source) = &job.declaration.source {
            match tillwatch_rollups::source::database_kind(source) {
                Some(kind) => format!("{kind} source"),
                None => "source".to_string(),
            }
        } else {
            engines.join(", ")
        };
        println!(
            "{:<24} {:<14} {:<5} {:<22} {}",
            job.name,
            job.owner,
            format!("{:?}", job.declaration.grain).to_lowercase(),
            engines,
            job.file
        );
    }
    for (source, why) in &undescribed {
        let readers: Vec<&str> = jobs
            .iter()
            .filter(|j| j.declaration.inputs.contains(source))
            .map(|j| j.name.as_str())
            .collect();
        if !readers.is_empty() {
            eprintln!(
                "note: not planned: {} (reading {source}, whose columns could not be read here: {why})",
                readers.join(", ")
            );
        }
    }
    for upstream in jobs.iter().filter(|j| j.clickhouse_only()) {
        let readers: Vec<&str> = jobs
            .iter()
            .filter(|j| j.sql.datafusion.is_some() && j.declaration.inputs.contains(&upstream.name))
            .map(|j| j.name.as_str())
            .collect();
        if !readers.is_empty() {
            eprintln!(
                "note: not planned: {} (reading {}, whose columns the ClickHouse server gives when it runs)",
                readers.join(", "),
                upstream.name
            );
        }
    }
    for p in &problems {
        eprintln!("{p}");
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} problem{} in the job declarations",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    println!("{} jobs, no problems", jobs.len());
    Ok(())
}

/// The job's runner, or an error naming the jobs when there is no such job.
async fn open_job(store: &StoreArgs, job: &str) -> anyhow::Result<tillwatch_scheduler::Runner> {
    let (runner, _) = open(&config(store)?).await?;
    anyhow::ensure!(
        runner.catalog().job(job).is_some(),
        "no job {job:?} (see `tillwatch jobs list`)"
    );
    Ok(runner)
}

pub(crate) async fn run(command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::Validate(args) => validate(&args).await?,
        JobsCommand::Pause(args) => {
            let runner = open_job(&args.store, &args.job).await?;
            let reason = ops::reason(&args.reason).map_err(|e| anyhow::anyhow!("--reason: {e}"))?;
            let by = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            );
            let pause = tillwatch_meta::JobPause {
                job: args.job.clone(),
                paused_at_ms: runner.now(),
                paused_by: by,
                reason: reason.to_string(),
            };
            if runner.store().pause_job(&pause).await? {
                println!(
                    "paused {}: its partitions wait until `tillwatch jobs resume {}`",
                    args.job, args.job
                );
            } else {
                println!(
                    "{} was already paused (see `tillwatch jobs list`)",
                    args.job
                );
            }
        }
        JobsCommand::MarkSucceeded(args) => {
            let partition: Partition = args.partition.parse().context("the partition")?;
            let reason = ops::reason(&args.reason).map_err(|e| anyhow::anyhow!("--reason: {e}"))?;
            let config = config(&args.store)?;
            let (runner, lake) = open(&config).await?;
            anyhow::ensure!(
                runner.catalog().job(&args.job).is_some(),
                "no job {:?} (see `tillwatch jobs list`)",
                args.job
            );
            let snap =
                service::snapshot(&runner, lake, config.scheduler.watermark_stall_after).await;
            let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let run_id = runner
                .mark_succeeded(
                    &args.job,
                    partition,
                    &format!("marked succeeded by cli:{by}: {reason}"),
                    snap.watermark_ms,
                    &|t, h| snap.fingerprint(t, h),
                )
                .await?
                .map_err(anyhow::Error::msg)?;
            println!(
                "{} {partition} marked succeeded (run {run_id}); what reads it runs on it",
                args.job
            );
        }
        JobsCommand::Resume(args) => {
            let runner = open_job(&args.store, &args.job).await?;
            if runner.store().resume_job(&args.job).await? {
                println!(
                    "resumed {}: the scheduler runs what came due on its next tick",
                    args.job
                );
            } else {
                println!("{} was not paused", args.job);
            }
        }
        JobsCommand::List(args) => {
            let config = config(&args.store)?;
            let (runner, lake) = open(&config).await?;
            let snap =
                service::snapshot(&runner, lake, config.scheduler.watermark_stall_after).await;
            let due = runner
                .due(snap.watermark_ms, &|t, h| snap.fingerprint(t, h))
                .await?;
            let rows = runner.store().job_partitions().await?;
            let paused = runner.store().paused_jobs().await?;
            println!(
                "ingest watermark: {}",
                if snap.watermark_ms == i64::MIN {
                    "none yet (no gateway has written to this lake)".to_string()
                } else {
                    when(snap.watermark_ms)
                }
            );
            for job in runner
                .catalog()
                .jobs()
                .iter()
                .filter(|j| args.owner.as_ref().is_none_or(|o| *o == j.owner))
            {
                let mine: Vec<_> = rows.iter().filter(|r| r.job == job.name).collect();
                let count = |s: &str| mine.iter().filter(|r| r.status == s).count();
                let inputs: Vec<String> = job
                    .inputs
                    .iter()
                    .map(|i| match i {
                        tillwatch_scheduler::Input::Source(t) => t.clone(),
                        tillwatch_scheduler::Input::Job(j) => format!("job {j}"),
                    })
                    .collect();
                let due_now: Vec<String> = due
                    .iter()
                    .filter(|t| t.job == job.name)
                    .map(|t| format!("{} ({:?})", t.partition, t.reason).to_lowercase())
                    .collect();
                println!(
                    "\n{} (owner {}, per {})",
                    job.name,
                    job.owner,
                    job.grain.as_str()
                );
                println!(
                    "  schedule {}  from {}{}  lateness {} s  timeout {} s  retries {}  concurrency {}{}",
                    job.schedule.as_str(),
                    when(job.start_ms),
                    job.end_ms
                        .map(|e| format!(" to {}", when(e)))
                        .unwrap_or_default(),
                    job.lateness_ms / 1000,
                    job.timeout_ms / 1000,
                    job.retries,
                    job.concurrency,
                    if job.window.is_some() {
                        "  (run window set)"
                    } else {
                        ""
                    }
                );
                if let Some(p) = paused.iter().find(|p| p.job == job.name) {
                    println!(
                        "  PAUSED   since {} by {}: {}",
                        when(p.paused_at_ms),
                        p.paused_by,
                        p.reason
                    );
                }
                println!("  reads    {}", inputs.join(", "));
                if let Some(kept) = job.output_kept_ms {
                    println!(
                        "  kept     {} days (older partitions are deleted by retention)",
                        kept / 86_400_000
                    );
                }
                println!(
                    "  partitions: {} succeeded, {} failed, {} running, {} queued",
                    count("succeeded"),
                    count("failed"),
                    count("running"),
                    count("queued")
                );
                if !due_now.is_empty() {
                    println!("  due now  {}", due_now.join(", "));
                }
            }
        }
        JobsCommand::Runs(args) => {
            let config = config(&args.store)?;
            let (runner, _) = open(&config).await?;
            if let Some(job) = &args.job {
                anyhow::ensure!(
                    runner.catalog().job(job).is_some(),
                    "no job {job:?} (see `tillwatch jobs list`)"
                );
            }
            if let Some(p) = &args.partition {
                p.parse::<Partition>().context("--partition")?;
            }
            let runs = runner
                .store()
                .job_runs(args.job.as_deref(), args.partition.as_deref(), args.limit)
                .await?;
            for r in runs {
                let took = r
                    .finished_ms
                    .map(|f| format!("{:.1} s", (f - r.started_ms) as f64 / 1000.0))
                    .unwrap_or_else(|| "…".into());
                println!(
                    "{}  {:<22} {:<14} #{} {:<9} {:<10} {:>8} rows  {:>8}  {}  code {}{}",
                    when(r.started_ms),
                    r.job,
                    r.partition_key,
                    r.attempt,
                    r.reason,
                    r.status,
                    r.rows_written.map(|n| n.to_string()).unwrap_or_default(),
                    took,
                    r.scheduler,
                    r.code.as_deref().unwrap_or("-"),
                    r.error.map(|e| format!("  error: {e}")).unwrap_or_default()
                );
            }
        }
        JobsCommand::Clear(args) | JobsCommand::Backfill(args) if args.dry_run => {
            let (_, _, targets, _) = open_range(&args).await?;
            println!(
                "would run {} partitions, in this order ({}):",
                targets.len(),
                counts(&targets)
            );
            for t in &targets {
                println!("  {t}");
            }
        }
        JobsCommand::Clear(args) => {
            let (runner, _, targets, now) = open_range(&args).await?;
            ops::request(runner.store(), &targets, now).await?;
            println!(
                "cleared {} partitions ({}); the scheduler runs them again, upstream first",
                targets.len(),
                counts(&targets)
            );
        }
        JobsCommand::Backfill(args) => {
            let (runner, lake, targets, now) = open_range(&args).await?;
            let stall_after = config(&args.store)?.scheduler.watermark_stall_after;
            anyhow::ensure!(
                !targets.is_empty(),
                "nothing to run: no partition of {} in that range has ended within the job's start and end",
                args.job
            );
            // A paused job's partitions would never run: say so now.
            let paused = runner.store().paused_jobs().await?;
            if let Some(p) = paused
                .iter()
                .find(|p| targets.iter().any(|t| t.job == p.job))
            {
                anyhow::bail!(
                    "{} is paused (by {}: {}); `tillwatch jobs resume {}` first",
                    p.job,
                    p.paused_by,
                    p.reason,
                    p.job
                );
            }
            ops::request(runner.store(), &targets, now).await?;
            println!(
                "backfilling {} partitions ({})",
                targets.len(),
                counts(&targets)
            );
            let started = Instant::now();
            let total = targets.len();
            let states = ops::drive(
                &runner,
                &targets,
                now,
                || service::snapshot(&runner, lake.clone(), stall_after),
                Duration::from_secs(1),
                |ran, states| {
                    let done = states.iter().filter(|p| p.finished()).count();
                    let what = match &ran.result {
                        Ok(out) => format!("succeeded, {} rows", out.rows),
                        Err(e) => format!("failed (attempt {}): {e}", ran.task.attempt),
                    };
                    println!(
                        "[{done:>3}/{total}] {} {}  {what}  ({:.1} s in)",
                        ran.task.job,
                        ran.task.partition,
                        started.elapsed().as_secs_f64()
                    );
                },
            )
            .await?;
            let failed: Vec<String> = targets
                .iter()
                .zip(&states)
                .filter_map(|(t, p)| match p {
                    Progress::Failed { error } => Some(format!("{t}: {error}")),
                    _ => None,
                })
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "{} partitions failed:\n  {}",
                failed.len(),
                failed.join("\n  ")
            );
            println!(
                "backfilled {total} partitions in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        JobsCommand::Lineage(args) => {
            let config = config(&args.store)?;
            let (runner, _) = open(&config).await?;
            anyhow::ensure!(
                runner.catalog().job(&args.job).is_some(),
                "no job {:?} (see `tillwatch jobs list`)",
                args.job
            );
            let partition: Partition = args.partition.parse()?;
            let target = Target {
                job: args.job.clone(),
                partition,
            };
            let l = ops::lineage(runner.store(), runner.catalog(), &target).await?;
            println!(
                "{target}: {}",
                l.record
                    .as_ref()
                    .map(|r| r.status.as_str())
                    .unwrap_or("never ran")
            );
            match &l.current {
                Some(run) => {
                    println!(
                        "  produced by run {} at {} ({} rows), from:",
                        run.run_id,
                        when(run.started_ms),
                        run.rows_written.unwrap_or(0)
                    );
                    println!("    {}", run.inputs);
                }
                None => println!("  no output yet"),
            }
            println!("  runs ({}):", l.runs.len());
            for r in &l.runs {
                println!(
                    "    {}  #{} {} {}{}",
                    when(r.started_ms),
                    r.attempt,
                    r.reason,
                    r.status,
                    r.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            println!("  downstream:");
            for (t, status) in &l.downstream {
                println!("    {t}  {}", status.as_deref().unwrap_or("never ran"));
            }
        }
    }
    Ok(())
}
