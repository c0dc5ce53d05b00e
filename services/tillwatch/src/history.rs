//! `tillwatch demo --history`: a simulated past played into the lake and
//! the metadata store on a virtual clock, before the live fleet starts, so
//! a new demo has rolled-up days, cohorts, health scores, alerts that fired
//! and resolved, job runs and lineage.
//!
//! The past comes from [`tillwatch_sim::history::History`]. Its messages go
//! the way live ones do, in process: each is decoded and validated as the
//! gateway decodes it; the readings are written to the lake as the
//! gateway's flushes are (one file per table and hour), under the store
//! the terminal's last info named; the alerter takes every message and
//! the clock's ticks; and the scheduler, on the same clock, runs every job
//! as each hour of the past closes. The alerter and the scheduler are the
//! product's own ([`Alerter`], [`service::open`]); only time is virtual.
//!
//! A data dir that holds a past already is left as it is (the file
//! `demo-history.json` says what was played).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tillwatch_alerter::{Alerter, Event};
use tillwatch_bus::decode::{DecodeLimits, Decoded, decode_message};
use tillwatch_config::Config;
use tillwatch_domain::{DeviceId, StoreId, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_rollups::service;
use tillwatch_sim::SimConfig;
use tillwatch_sim::history::History;
use tillwatch_storage::{Lake, Staging, StoredReading};

const HOUR_MS: i64 = 3_600_000;
/// The watermark writer the past is written under; retired at the end,
/// so the live scheduler waits only for the live gateway.
const WRITER: &str = "demo-history";
/// How often the past's terminals take their readings.
const STEP: Duration = Duration::from_secs(900);
/// How often the past's scheduler catches up (virtual time): its hourly
/// jobs run several hours a round.
const JOBS_EVERY_MS: i64 = 6 * HOUR_MS;
/// Hours a round of the past's scheduler may run of each hourly job.
const HOURS_A_ROUND: usize = 6;

/// What was played.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Played {
    pub from_ms: i64,
    pub to_ms: i64,
    pub terminals: usize,
    pub readings: u64,
    pub runs: usize,
    pub alerts_fired: usize,
    pub alerts_resolved: usize,
    pub took_s: f64,
    /// Of which: the alerter, the jobs, writing the lake.
    pub alerter_s: f64,
    pub jobs_s: f64,
    pub lake_s: f64,
}

fn marker(config: &Config) -> PathBuf {
    config.data_dir.join("demo-history.json")
}

/// Whether the data dir holds a past already; an error when a past was
/// started there and not finished (the demo was stopped while it played).
pub fn played_before(config: &Config) -> anyhow::Result<bool> {
    let path = marker(config);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.contains(PLAYING) => anyhow::bail!(
            "{} holds a history that was stopped while it played; delete {} to start the demo afresh, \
             or give --history 0 to run on what is there",
            config.data_dir.display(),
            config.data_dir.display()
        ),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// What the marker holds while the past is being played.
const PLAYING: &str = "\"playing\"";

/// Plays the past of `fleet` from `from_ms` to `to_ms` into the lake and
/// the metadata store of `config`.
pub async fn play(
    config: &Config,
    fleet: &SimConfig,
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Played> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    std::fs::write(marker(config), format!("{{\"state\": {PLAYING}}}\n"))
        .with_context(|| format!("writing {}", marker(config).display()))?;
    let store = MetaStore::open(config)
        .await
        .context("opening the metadata store for the demo's history")?;
    let clock = Arc::new(PlayClock::new(from_ms));
    let now = clock.clone();
    let mut jobs_config = config.clone();
    for job in [
        tillwatch_rollups::jobs::RAW_COMPACTION,
        tillwatch_rollups::jobs::DEVICE_HEALTH_HOURLY,
    ] {
        let settings = jobs_config.scheduler.jobs.entry(job.into()).or_default();
        settings.concurrency.get_or_insert(HOURS_A_ROUND);
    }
    let (runner, lake) = service::open(&jobs_config, store.clone(), Arc::new(move || now.now()))
        .context("opening the scheduler for the demo's history")?;
    let mut alerter = Alerter::open(
        store.clone(),
        tillwatch_alerter::silence_policy(config),
        &config.alerting,
        &tillwatch_alerter::public_url(config),
        UtcMillis(from_ms),
    )
    .await
    .context("opening the alerter for the demo's history")?;
    let limits = DecodeLimits::from_config(&config.gateway);
    let mut played = Played {
        from_ms,
        to_ms,
        terminals: fleet.devices + 1,
        ..Played::default()
    };
    let mut stores: HashMap<DeviceId, StoreId> = HashMap::new();
    let mut staging = Staging::new();
    let mut hour_end = from_ms - from_ms.rem_euclid(HOUR_MS) + HOUR_MS;
    let mut flushes = 0u64;
    for step in History::new(fleet, from_ms, to_ms, STEP) {
        if step.at_ms >= hour_end {
            // The hour closed: its readings are durable, the clock moves
            // on, and every job due by then runs.
            let t = Instant::now();
            flush(&lake, &mut staging, &mut flushes, hour_end).await?;
            played.lake_s += t.elapsed().as_secs_f64();
            clock.set(hour_end);
            let t = Instant::now();
            alerter.tick(UtcMillis(hour_end)).await?;
            played.alerter_s += t.elapsed().as_secs_f64();
            if hour_end % JOBS_EVERY_MS == 0 {
                let t = Instant::now();
                played.runs += settle(&runner, &lake).await?;
                played.jobs_s += t.elapsed().as_secs_f64();
            }
            hour_end += HOUR_MS;
        }
        clock.set(step.at_ms);
        let at = UtcMillis(step.at_ms);
        let mut events = Vec::with_capacity(step.messages.len());
        for message in &step.messages {
            match decode_message(&message.topic, &message.payload, at, &limits) {
                Decoded::Telemetry {
                    merchant_id,
                    device_id,
                    readings,
                    ..
                } => {
                    for reading in &readings {
                        staging.push_reading(StoredReading {
                            reading,
                            merchant_id: &merchant_id,
                            store_id: stores.get(&device_id),
                            received_at: at,
                        });
                    }
                    played.readings += readings.len() as u64;
                    events.push(Event::Telemetry {
                        merchant_id,
                        device_id,
                        readings,
                        received_at: at,
                    });
                }
                Decoded::Status(status) => events.push(Event::Status {
                    status,
                    received_at: at,
                }),
                Decoded::Info(info) => {
                    match &info.store_id {
                        Some(s) => stores.insert(info.device_id.clone(), s.clone()),
                        None => stores.remove(&info.device_id),
                    };
                    events.push(Event::Info(info));
                }
                Decoded::Rejected(dead) => {
                    anyhow::bail!(
                        "the demo's history sent a message the gateway refuses ({}): {}",
                        dead.reason_code,
                        dead.reason
                    )
                }
            }
        }
        let t = Instant::now();
        alerter.handle_batch(&events, at).await?;
        alerter.tick(at).await?;
        played.alerter_s += t.elapsed().as_secs_f64();
    }
    flush(&lake, &mut staging, &mut flushes, to_ms).await?;
    clock.set(to_ms);
    alerter.tick(UtcMillis(to_ms)).await?;
    let t = Instant::now();
    played.runs += settle(&runner, &lake).await?;
    played.jobs_s += t.elapsed().as_secs_f64();
    // Findings of the last day's rollups become alerts on the next sweep.
    alerter
        .tick(UtcMillis(
            to_ms + config.alerting.evaluation_interval.as_millis() as i64,
        ))
        .await?;
    let retire = lake.clone();
    tokio::task::spawn_blocking(move || retire.retire_writer(WRITER))
        .await
        .context("the history's watermark task failed")??;
    let alerts = store
        .alerts(tillwatch_meta::AlertFilter::All, u32::MAX >> 1)
        .await?;
    played.alerts_fired = alerts.iter().filter(|a| a.fired_at_ms.is_some()).count();
    played.alerts_resolved = alerts.iter().filter(|a| a.resolved_at_ms.is_some()).count();
    played.took_s = started.elapsed().as_secs_f64();
    std::fs::write(
        marker(config),
        serde_json::to_string_pretty(&played).unwrap_or_default(),
    )
    .with_context(|| format!("writing {}", marker(config).display()))?;
    Ok(played)
}

/// Writes what `staging` holds as one file per table and hour, then moves
/// the history's watermark to `at_ms`.
async fn flush(
    lake: &Lake,
    staging: &mut Staging,
    flushes: &mut u64,
    at_ms: i64,
) -> anyhow::Result<()> {
    let parts = std::mem::take(staging).finish();
    *flushes += 1;
    let name = format!("{WRITER}-{flushes:06}.parquet");
    let lake = lake.clone();
    tokio::task::spawn_blocking(move || {
        for part in parts {
            let path = lake.file_path(part.table, part.hour, &name);
            lake.write_part(&part, &path)?;
        }
        lake.write_watermark(WRITER, at_ms)
    })
    .await
    .context("the history's lake task failed")??;
    Ok(())
}

/// The history's time for the scheduler: where the play has reached, going
/// on with the wall clock from there (a minute at most) so that a run's
/// start and finish are as far apart as the run took, not both the same
/// instant.
struct PlayClock(std::sync::Mutex<(i64, Instant)>);

impl PlayClock {
    fn new(at_ms: i64) -> PlayClock {
        PlayClock(std::sync::Mutex::new((at_ms, Instant::now())))
    }

    fn set(&self, at_ms: i64) {
        *self.0.lock().expect("never poisoned") = (at_ms, Instant::now());
    }

    fn now(&self) -> i64 {
        let (at_ms, since) = *self.0.lock().expect("never poisoned");
        let gone = since.elapsed().min(Duration::from_secs(60)).as_millis();
        at_ms.saturating_add(gone as i64)
    }
}

/// Every job due at the clock's time, round after round until none is;
/// the runs started.
async fn settle(runner: &tillwatch_scheduler::Runner, lake: &Lake) -> anyhow::Result<usize> {
    let mut runs = 0;
    loop {
        let snap = service::snapshot(runner, lake.clone(), Duration::from_secs(3600)).await;
        let ran = runner
            .step(snap.watermark_ms, &|t, p| snap.fingerprint(t, p))
            .await?;
        if ran.is_empty() {
            return Ok(runs);
        }
        for r in &ran {
            if let Err(e) = &r.result {
                anyhow::bail!(
                    "the demo's history could not run {} {}: {e}",
                    r.task.job,
                    r.task.partition
                );
            }
        }
        runs += ran.len();
    }
}
