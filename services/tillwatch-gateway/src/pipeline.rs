//! The ingest pipeline: decode, deduplicate, stage, flush, then release acks.
//!
//! Broker-agnostic: messages arrive on a channel with an opaque
//! [`AckToken`]; tokens come back on another channel only once everything
//! their message carried is durable in the lake (or was a duplicate of
//! something already durable).
//!
//! With ClickHouse configured, a flush first appends its rows to the
//! ClickHouse spool (synced) and only then writes the lake files and
//! commits: an acked message is in both sinks, or in the lake and on its way
//! to ClickHouse through the spool. A full spool holds the flush, so the
//! acks, so the broker.
//!
//! Design: one staging batch fills while at most one flush runs on a
//! blocking thread, so decoding overlaps writing. Memory is bounded by
//! `max_buffered_bytes` over both: when it is reached the pipeline stops
//! reading its input channel, the MQTT poll loop blocks on it, and the
//! broker holds the rest.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tillwatch_clickhouse::{EncodedRows, Spool, SpoolError, encode_parts};
use tillwatch_domain::{
    BootId, DeviceId, Kind, MerchantId, ReadingKey, RejectReason, StoreId, UtcMillis,
};
use tillwatch_storage::{Lake, PartBatch, Staging, StoredReading};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::dedup::{DedupError, DedupIndex, DedupStore};
use crate::metrics as m;
use tillwatch_bus::decode::{DecodeLimits, Decoded, decode_provisioned};
use tillwatch_bus::provisioning::ProvisioningSource;

pub use tillwatch_bus::{AckToken, Incoming, Notice, Release};

/// At most this many messages are taken from the input per wake-up. Small
/// against any flush limit, so a group overshoots them by little.
const RECEIVE_GROUP: usize = 64;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub limits: DecodeLimits,
    pub flush_max_rows: usize,
    pub flush_max_unacked: usize,
    pub flush_max_age: Duration,
    pub max_buffered_bytes: usize,
    /// Prefix of every file this gateway writes; unique per gateway.
    pub writer_id: String,
    /// Dead letters stored per second at most (see [`DeadLetterBudget`]).
    pub dead_letters_per_second: u32,
    /// Boots of one device the dedup index tells apart (readings of more
    /// are dead-lettered).
    pub max_boots_per_device: usize,
    /// Which merchant and store each terminal belongs to, when configured.
    pub provisioning: Option<ProvisioningSource>,
    /// Told when flushes start and stop failing (`/readyz`, the gauge).
    pub health: Arc<crate::GatewayHealth>,
    /// Tell each terminal, after a flush, which of its readings are
    /// durable (`DurableReadings` on its durable topic).
    pub confirm_durable: bool,
}

/// The most ranges one durable notice names.
const NOTICE_MAX_RANGES: usize = 64;

/// How often the dedup index forgets boots past the sample-time horizon.
const EVICT_EVERY_MS: i64 = 3_600_000;

/// How many dead letters may still be stored: a token bucket refilled at
/// `per_second`, holding ten seconds' worth, on the messages' receive
/// clock. A flood of garbage is counted, not stored.
#[derive(Debug)]
pub struct DeadLetterBudget {
    per_second: u32,
    tokens: f64,
    last_ms: Option<i64>,
}

impl DeadLetterBudget {
    pub fn new(per_second: u32) -> DeadLetterBudget {
        DeadLetterBudget {
            per_second,
            tokens: Self::capacity(per_second),
            last_ms: None,
        }
    }

    fn capacity(per_second: u32) -> f64 {
        f64::from(per_second) * 10.0
    }

    /// Whether one more dead letter, received at `now_ms`, may be stored.
    pub fn take(&mut self, now_ms: i64) -> bool {
        let elapsed_ms = self
            .last_ms
            .map_or(0, |last| now_ms.saturating_sub(last).max(0));
        self.last_ms = Some(self.last_ms.map_or(now_ms, |last| last.max(now_ms)));
        self.tokens = (self.tokens + elapsed_ms as f64 * f64::from(self.per_second) / 1000.0)
            .min(Self::capacity(self.per_second));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Rows and acks gathered since the last flush started.
#[derive(Default)]
struct Batch {
    staging: Staging,
    /// The staged readings' keys, each with its sample time.
    keys: Vec<(ReadingKey, i64)>,
    /// Boots staged that the dedup index does not know yet, by device.
    new_boots: HashMap<DeviceId, Vec<BootId>>,
    acks: Vec<AckToken>,
    /// The boots whose readings this batch took (stored or already
    /// durable), with their merchant: told what is durable once it is.
    boots: HashMap<(DeviceId, BootId), MerchantId>,
    messages: usize,
    /// Readings staged, by `Kind` index.
    readings: [u64; 4],
    dead_letters: u64,
    opened_at: Option<Instant>,
    /// The wall clock when the first message arrived: the watermark stays
    /// before it until this batch is durable.
    opened_wall_ms: Option<i64>,
    last_arrival: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.messages == 0
    }

    fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.opened_at.map(|t| t + max_age)
    }
}

struct FlushOutcome {
    store: DedupStore,
    result: Result<FlushStats, DedupOrLake>,
    batch_keys: Vec<(ReadingKey, i64)>,
    acks: Vec<AckToken>,
    /// What each terminal is told is durable, when the flush succeeded.
    notices: Vec<Notice>,
    readings: [u64; 4],
    dead_letters: u64,
}

/// What arrived since the metrics were last published. Per-message counts
/// gather here as plain integers and reach the metrics registry once a
/// second and after each flush: a registry lookup per message (label
/// hashing, an atomic each) cost more than the dedup check.
#[derive(Default)]
struct Tally {
    bytes: u64,
    /// Messages by [`Channel`].
    messages: [u64; 4],
    /// Readings received, by `Kind` index.
    readings: [u64; 4],
    duplicates: u64,
    /// Rejected messages over the dead-letter budget: counted, not stored.
    dead_letters_dropped: u64,
    online: u64,
    offline: u64,
    /// Rejections by reason code (a small, fixed set).
    rejected: Vec<(&'static str, u64)>,
}

/// What a message was, for the per-channel count.
#[derive(Debug, Clone, Copy)]
enum Channel {
    Telemetry = 0,
    Status = 1,
    Info = 2,
    Rejected = 3,
}

impl Channel {
    const ALL: [Channel; 4] = [
        Channel::Telemetry,
        Channel::Status,
        Channel::Info,
        Channel::Rejected,
    ];

    fn label(self) -> &'static str {
        match self {
            Channel::Telemetry => "telemetry",
            Channel::Status => "status",
            Channel::Info => "info",
            Channel::Rejected => "rejected",
        }
    }
}

impl Tally {
    fn message(&mut self, channel: Channel) {
        self.messages[channel as usize] += 1;
    }

    fn reject(&mut self, reason: &'static str) {
        match self.rejected.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.rejected.push((reason, 1)),
        }
    }

    /// Adds what was gathered to the registry and starts again from zero.
    fn publish(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            counter!(m::MESSAGE_BYTES_RECEIVED).increment(bytes);
        }
        for (channel, n) in Channel::ALL
            .into_iter()
            .zip(std::mem::take(&mut self.messages))
        {
            if n > 0 {
                counter!(m::MESSAGES_RECEIVED, "channel" => channel.label()).increment(n);
            }
        }
        for (kind, n) in Kind::ALL
            .into_iter()
            .zip(std::mem::take(&mut self.readings))
        {
            if n > 0 {
                counter!(m::READINGS_RECEIVED, "kind" => kind.as_str()).increment(n);
            }
        }
        let duplicates = std::mem::take(&mut self.duplicates);
        if duplicates > 0 {
            counter!(m::READINGS_DUPLICATE).increment(duplicates);
        }
        let dropped = std::mem::take(&mut self.dead_letters_dropped);
        if dropped > 0 {
            counter!(m::DEAD_LETTERS_DROPPED).increment(dropped);
        }
        let states = [
            ("online", std::mem::take(&mut self.online)),
            ("offline", std::mem::take(&mut self.offline)),
        ];
        for (state, n) in states {
            if n > 0 {
                counter!(m::DEVICE_STATUS, "state" => state).increment(n);
            }
        }
        for (reason, n) in self.rejected.drain(..) {
            counter!(m::REJECTED, "reason" => reason).increment(n);
        }
    }
}

#[derive(Debug, Default)]
struct FlushStats {
    rows: usize,
    files: usize,
    bytes: u64,
}

#[derive(Debug, thiserror::Error)]
enum DedupOrLake {
    #[error(transparent)]
    Dedup(#[from] DedupError),
    #[error(transparent)]
    Lake(#[from] tillwatch_storage::LakeError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The pipeline's state between wake-ups.
struct Pipeline {
    config: PipelineConfig,
    lake: Lake,
    /// The ClickHouse spool, when ClickHouse is configured.
    spool: Option<Spool>,
    /// Every reading already durable (the dedup index, which the flush
    /// thread adds to).
    committed: Arc<RwLock<DedupIndex>>,
    /// Set on the way out: a flush that fails then gives up instead of
    /// retrying, and its messages stay unacked.
    stopping: Arc<AtomicBool>,
    /// The dedup store: here between flushes, with the flush while one
    /// runs.
    store: Option<DedupStore>,
    /// What the next flush writes.
    batch: Batch,
    /// Keys staged or being flushed: not yet in `committed`.
    pending: HashSet<ReadingKey>,
    /// When the dedup index last forgot old boots (wall clock, ms).
    evicted_at_ms: i64,
    /// Each device's store as this gateway's info messages said: the hint
    /// written beside readings (the rollups attribute from the registry),
    /// with when the device last sent anything (wall clock, ms): a device
    /// silent past `max_age` is forgotten at the next eviction.
    stores: HashMap<DeviceId, (StoreId, i64)>,
    /// Dead letters that may still be stored.
    dead_letter_budget: DeadLetterBudget,
    /// The flush running now, and the buffered bytes it holds.
    inflight: Option<(JoinHandle<FlushOutcome>, usize)>,
    /// The oldest message of the flush in flight, by the wall clock (kept
    /// when that flush gave up, for the watermark).
    inflight_opened_ms: Option<i64>,
    watermark: Watermark,
    /// Whether intake is stopped for memory: the gauge's last value.
    backpressure: bool,
    window: WindowStall,
    /// When the last flush's acks went out: a capped broker answers them
    /// at once with its next burst.
    last_release: Option<Instant>,
    tally: Tally,
    /// Where the acks of durable messages go.
    acks: mpsc::UnboundedSender<Release>,
}

impl Pipeline {
    fn inflight_bytes(&self) -> usize {
        self.inflight.as_ref().map_or(0, |(_, b)| *b)
    }

    fn buffered_bytes(&self) -> usize {
        self.batch.staging.approx_bytes() + self.inflight_bytes()
    }

    /// Starts a flush when the batch is due and none runs; says whether
    /// it did.
    fn flush_if_due(&mut self) -> bool {
        let config = &self.config;
        let by_size = self.batch.staging.rows() >= config.flush_max_rows
            || self.batch.acks.len() >= config.flush_max_unacked
            || self.buffered_bytes() >= config.max_buffered_bytes;
        let by_age = self
            .batch
            .deadline(config.flush_max_age)
            .is_some_and(|d| d <= Instant::now());
        if self.batch.is_empty() || !(by_size || by_age) || self.inflight.is_some() {
            return false;
        }
        if !by_size {
            observe_window(&self.batch, self.last_release, config, &mut self.window);
        }
        let bytes = self.batch.staging.approx_bytes();
        self.inflight_opened_ms = self.batch.opened_wall_ms;
        let now_ms = UtcMillis::now().0;
        let evict_before =
            (now_ms.saturating_sub(self.evicted_at_ms) >= EVICT_EVERY_MS).then(|| {
                self.evicted_at_ms = now_ms;
                let cutoff = eviction_cutoff(now_ms, self.config.limits.sample_time.max_age);
                self.stores.retain(|_, (_, seen_ms)| *seen_ms >= cutoff);
                self.stores.shrink_to_fit();
                cutoff
            });
        let handle = start_flush(
            std::mem::take(&mut self.batch),
            self.store
                .take()
                .expect("the store is home when no flush runs"),
            self.lake.clone(),
            self.spool.clone(),
            self.config.writer_id.clone(),
            self.stopping.clone(),
            evict_before,
            self.config.health.clone(),
        );
        self.inflight = Some((handle, bytes));
        true
    }

    /// Whether the batch is full (intake waits for the running flush);
    /// updates the memory gauges, warning when memory is the limit.
    fn full(&mut self) -> bool {
        let buffered = self.buffered_bytes();
        // Only the memory bound is worth a warning: the row limit is the
        // normal flush trigger.
        let over_memory = buffered >= self.config.max_buffered_bytes;
        if over_memory != self.backpressure {
            self.backpressure = over_memory;
            gauge!(m::BACKPRESSURE).set(if over_memory { 1.0 } else { 0.0 });
            if over_memory {
                warn!(
                    buffered_bytes = buffered,
                    limit = self.config.max_buffered_bytes,
                    "buffer full: not taking messages until the current flush completes"
                );
            }
        }
        gauge!(m::BUFFERED_BYTES).set(buffered as f64);
        over_memory || self.batch.staging.rows() >= self.config.flush_max_rows
    }

    /// The running flush ended: its acks go out (when it made it durable).
    fn flushed(&mut self, outcome: FlushOutcome) {
        let durable = outcome.result.is_ok();
        self.tally.publish();
        self.store = Some(finish_flush(outcome, &mut self.pending, &self.acks));
        self.last_release = Some(Instant::now());
        if durable {
            self.inflight_opened_ms = None;
        }
        self.publish_watermark();
    }

    fn publish_watermark(&mut self) {
        self.watermark
            .publish(self.batch.opened_wall_ms, self.inflight_opened_ms);
    }

    /// Lets the running flush finish, then flushes what is staged.
    async fn drain(mut self) {
        self.tally.publish();
        self.stopping.store(true, Ordering::SeqCst);
        if let Some((handle, _)) = self.inflight.take() {
            let outcome = handle.await.expect("the flush task does not panic");
            self.store = Some(finish_flush(outcome, &mut self.pending, &self.acks));
        }
        if !self.batch.is_empty() {
            let handle = start_flush(
                std::mem::take(&mut self.batch),
                self.store.take().expect("the store is home"),
                self.lake.clone(),
                self.spool.clone(),
                self.config.writer_id.clone(),
                self.stopping.clone(),
                None,
                self.config.health.clone(),
            );
            let outcome = handle.await.expect("the flush task does not panic");
            finish_flush(outcome, &mut self.pending, &self.acks);
        }
        gauge!(m::BUFFERED_BYTES).set(0.0);
        info!("pipeline drained");
    }
}

/// Runs until `shutdown` turns true or `input` closes; then flushes what it
/// holds and releases the last acks.
pub async fn run_pipeline(
    config: PipelineConfig,
    lake: Lake,
    spool: Option<Spool>,
    store: DedupStore,
    mut input: mpsc::Receiver<Incoming>,
    acks: mpsc::UnboundedSender<Release>,
    mut shutdown: watch::Receiver<bool>,
) {
    let watermark = Watermark::new(&lake, &config.writer_id);
    let dead_letter_budget = DeadLetterBudget::new(config.dead_letters_per_second);
    let mut p = Pipeline {
        committed: store.index(),
        store: Some(store),
        config,
        lake,
        spool,
        stopping: Arc::new(AtomicBool::new(false)),
        batch: Batch::default(),
        pending: HashSet::new(),
        evicted_at_ms: UtcMillis::now().0,
        stores: HashMap::new(),
        dead_letter_budget,
        inflight: None,
        inflight_opened_ms: None,
        watermark,
        backpressure: false,
        window: WindowStall::default(),
        last_release: None,
        tally: Tally::default(),
        acks,
    };
    // Messages taken from the channel per wake-up: the loop's bookkeeping
    // (limits, gauges, the select) is paid once per group, not per message.
    let mut arrived: Vec<Incoming> = Vec::with_capacity(RECEIVE_GROUP);
    loop {
        if p.flush_if_due() {
            continue;
        }
        let full = p.full();
        let deadline = p.batch.deadline(p.config.flush_max_age);
        tokio::select! {
            outcome = async { (&mut p.inflight.as_mut().expect("guarded").0).await }, if p.inflight.is_some() => {
                p.inflight = None;
                p.flushed(outcome.expect("the flush task does not panic"));
            }
            _ = p.watermark.tick.tick() => {
                p.tally.publish();
                p.publish_watermark();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && p.inflight.is_none() => {}
            received = input.recv_many(&mut arrived, RECEIVE_GROUP), if !full => {
                if received == 0 {
                    break;
                }
                for message in arrived.drain(..) {
                    p.ingest(message);
                }
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    p.drain().await;
}

/// The ingest watermark this gateway publishes in the lake: every message
/// received before it is durable. It is the arrival time of the oldest
/// message not yet durable, or now when there is none; written every
/// second and after each flush, never moving back, on a blocking thread
/// (one write at a time; a value that comes while one is writing waits
/// for the next chance).
struct Watermark {
    lake: Lake,
    writer: String,
    last: i64,
    tick: tokio::time::Interval,
    writing: Option<JoinHandle<()>>,
}

impl Watermark {
    fn new(lake: &Lake, writer: &str) -> Watermark {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watermark {
            lake: lake.clone(),
            writer: writer.to_string(),
            last: i64::MIN,
            tick,
            writing: None,
        }
    }

    fn publish(&mut self, staged: Option<i64>, flushing: Option<i64>) {
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let now = tillwatch_domain::UtcMillis::now().0;
        let at = staged.into_iter().chain(flushing).min().unwrap_or(now);
        if at <= self.last {
            return;
        }
        self.last = at;
        let (lake, writer) = (self.lake.clone(), self.writer.clone());
        // A few bytes and a rename; a failure only delays the rollups.
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = lake.write_watermark(&writer, at) {
                tracing::warn!(error = %e, "cannot record the ingest watermark");
            }
        }));
    }
}

/// Spots a broker that caps this client's unacknowledged messages below
/// `flush_max_unacked` (Mosquitto's default `max_inflight_messages` is 20):
/// the same few messages arrive in a burst right after each flush's acks
/// are released, then nothing until the age limit. Ingest is then capped at that many
/// messages per `flush_max_age`, which an operator must hear about.
#[derive(Debug, Default)]
pub struct WindowStall {
    last_count: usize,
    streak: u32,
    warned: bool,
}

impl WindowStall {
    /// Age-triggered flushes in a row with the same burst before warning.
    const STREAK: u32 = 3;

    /// Records one age-triggered flush of `count` messages; `burst` when
    /// they all arrived in the first quarter of the age window. Returns the
    /// suspected window the first time the pattern is established.
    pub fn observe(&mut self, count: usize, burst: bool) -> Option<usize> {
        if burst && count > 0 && count == self.last_count {
            self.streak += 1;
        } else {
            self.streak = u32::from(burst && count > 0);
        }
        self.last_count = count;
        if self.streak >= Self::STREAK && !self.warned {
            self.warned = true;
            return Some(count);
        }
        None
    }
}

fn observe_window(
    batch: &Batch,
    last_release: Option<Instant>,
    config: &PipelineConfig,
    window: &mut WindowStall,
) {
    let (Some(opened), Some(last), Some(released)) =
        (batch.opened_at, batch.last_arrival, last_release)
    else {
        return;
    };
    let quick = config.flush_max_age / 4;
    // All of it early in the window, and right after the previous acks:
    // a fleet that reports in lockstep bursts too, but on its own clock.
    let burst =
        last.duration_since(opened) < quick && opened.saturating_duration_since(released) < quick;
    tracing::debug!(messages = batch.acks.len(), burst, spread = ?last.duration_since(opened), "age-triggered flush");
    if burst && !batch.acks.is_empty() {
        counter!(m::WINDOW_LIMITED_FLUSHES).increment(1);
    }
    if let Some(count) = window.observe(batch.acks.len(), burst) {
        warn!(
            messages = count,
            flush_max_age = ?config.flush_max_age,
            "the broker appears to send at most {count} unacknowledged messages to this gateway, \
             capping ingest near {count} messages per flush_max_age; raise the broker's in-flight \
             limit (Mosquitto: max_inflight_messages 40000, as in deploy/mosquitto/mosquitto.conf) \
             or set gateway.flush_max_unacked below {count}"
        );
    }
}

impl Pipeline {
    /// Takes one message into the batch: its readings not yet stored,
    /// its dead letters, its ack token.
    fn ingest(&mut self, message: Incoming) {
        let Pipeline {
            config,
            committed,
            pending,
            stores,
            batch,
            tally,
            dead_letter_budget,
            ..
        } = self;
        let received_at = UtcMillis::now();
        tally.bytes += message.payload.len() as u64;
        let now = Instant::now();
        batch.opened_at.get_or_insert(now);
        batch.opened_wall_ms.get_or_insert(received_at.0);
        batch.last_arrival = Some(now);
        batch.messages += 1;
        if let Some(token) = message.ack {
            batch.acks.push(token);
        }
        let provisioning = config
            .provisioning
            .as_ref()
            .map(ProvisioningSource::current);
        match decode_provisioned(
            &message.topic,
            &message.payload,
            received_at,
            &config.limits,
            provisioning.as_deref(),
        ) {
            Decoded::Telemetry {
                merchant_id,
                device_id,
                readings,
                rejected,
            } => {
                tally.message(Channel::Telemetry);
                let store_id = stores.get_mut(&device_id).map(|(store, seen_ms)| {
                    *seen_ms = received_at.0;
                    &*store
                });
                let index = committed.read().unwrap_or_else(PoisonError::into_inner);
                for reading in &readings {
                    let kind = reading.kind() as usize;
                    tally.readings[kind] += 1;
                    let key = reading.key();
                    if let Err(reason) = admit_boot(
                        &index,
                        &mut batch.new_boots,
                        &key,
                        config.max_boots_per_device,
                    ) {
                        tally.reject(reason.code());
                        if dead_letter_budget.take(received_at.0) {
                            let dead = tillwatch_bus::decode::refused_reading(
                                &message.topic,
                                &message.payload,
                                received_at,
                                &key,
                                &merchant_id,
                                reason,
                            );
                            batch.staging.push_dead_letter(&dead);
                            batch.dead_letters += 1;
                        } else {
                            tally.dead_letters_dropped += 1;
                        }
                        continue;
                    }
                    if config.confirm_durable {
                        batch
                            .boots
                            .entry((key.device_id.clone(), key.boot_id))
                            .or_insert_with(|| merchant_id.clone());
                    }
                    if index.contains(&key) || !pending.insert(key.clone()) {
                        tally.duplicates += 1;
                        continue;
                    }
                    batch.staging.push_reading(StoredReading {
                        reading,
                        merchant_id: &merchant_id,
                        store_id,
                        received_at,
                    });
                    batch.keys.push((key, reading.sampled_at.0));
                    batch.readings[kind] += 1;
                }
                drop(index);
                for dead in &rejected {
                    tally.reject(dead.reason_code);
                    if dead_letter_budget.take(received_at.0) {
                        batch.staging.push_dead_letter(dead);
                        batch.dead_letters += 1;
                    } else {
                        tally.dead_letters_dropped += 1;
                    }
                }
            }
            Decoded::Status(status) => {
                tally.message(Channel::Status);
                if status.online {
                    tally.online += 1;
                } else {
                    tally.offline += 1;
                }
            }
            Decoded::Info(info) => {
                tally.message(Channel::Info);
                match info.store_id {
                    Some(store) => stores.insert(info.device_id, (store, received_at.0)),
                    None => stores.remove(&info.device_id),
                };
            }
            Decoded::Rejected(dead) => {
                tally.message(Channel::Rejected);
                tally.reject(dead.reason_code);
                if dead_letter_budget.take(received_at.0) {
                    batch.staging.push_dead_letter(&dead);
                    batch.dead_letters += 1;
                } else {
                    tally.dead_letters_dropped += 1;
                }
            }
        }
    }
}

/// Whether a reading of `key`'s boot may be staged: always for a boot the
/// index or this batch already holds; for a new one, while its device has
/// fewer than `limit` boots. (A flush in flight may hold a few more, so the
/// bound is the limit plus what one flush adds.)
fn admit_boot(
    index: &DedupIndex,
    new_boots: &mut HashMap<DeviceId, Vec<BootId>>,
    key: &ReadingKey,
    limit: usize,
) -> Result<(), RejectReason> {
    if index.knows_boot(&key.device_id, key.boot_id) {
        return Ok(());
    }
    let staged = new_boots.get(&key.device_id);
    if staged.is_some_and(|b| b.contains(&key.boot_id)) {
        return Ok(());
    }
    let count = index.boots_of(&key.device_id) + staged.map_or(0, Vec::len);
    if count >= limit {
        return Err(RejectReason::TooManyBoots {
            boot_id: key.boot_id.0,
            count: count + 1,
            limit,
        });
    }
    new_boots
        .entry(key.device_id.clone())
        .or_default()
        .push(key.boot_id);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_flush(
    batch: Batch,
    mut store: DedupStore,
    lake: Lake,
    spool: Option<Spool>,
    writer_id: String,
    stopping: Arc<AtomicBool>,
    evict_before: Option<i64>,
    health: Arc<crate::GatewayHealth>,
) -> JoinHandle<FlushOutcome> {
    tokio::task::spawn_blocking(move || {
        let parts = batch.staging.finish();
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        // Encoded once, spooled once: a retry after a lake error does not
        // append the same rows again.
        let for_clickhouse = spool.as_ref().map(|_| encode_parts(&parts));
        let mut spooled = false;
        // One flush id for every attempt: a retry writes the same file
        // names, replacing what a failed attempt had already placed, so
        // nothing of it is stored twice.
        let flush_id = store.next_flush_id();
        let result = loop {
            let sink = spool
                .as_ref()
                .zip(for_clickhouse.as_ref())
                .filter(|_| !spooled);
            match write_flush(
                &mut store,
                &lake,
                sink,
                (&writer_id, flush_id),
                &parts,
                &batch.keys,
                &stopping,
            ) {
                Ok(stats) => {
                    if health.storage_problem().is_some() {
                        info!("flushes succeed again: taking readings");
                        health.set_storage(None);
                    }
                    break Ok(stats);
                }
                Err(e) => {
                    spooled |= sink.is_some() && !matches!(e, DedupOrLake::Spool(_));
                    counter!(m::FLUSH_ERRORS).increment(1);
                    health.set_storage(Some(e.to_string()));
                    if stopping.load(Ordering::SeqCst) {
                        break Err(e);
                    }
                    error!(error = %e, retry_in = ?backoff, "flush failed; nothing of it is acked, retrying");
                    // A blocking thread: sleeping here holds no async worker.
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        histogram!(m::FLUSH_DURATION).record(started.elapsed().as_secs_f64());
        // Built here, off the async loop: one index lookup and encoding
        // per boot the batch held.
        let notices = match &result {
            Ok(_) => durable_notices(&store, &batch.boots),
            Err(_) => Vec::new(),
        };
        if let (Ok(_), Some(cutoff)) = (&result, evict_before) {
            evict(&mut store, cutoff);
        }
        report_index(&store);
        FlushOutcome {
            store,
            result,
            batch_keys: batch.keys,
            acks: batch.acks,
            notices,
            readings: batch.readings,
            dead_letters: batch.dead_letters,
        }
    })
}

/// The oldest sample time the dedup index must still know at `now_ms`:
/// readings sampled before `now - max_age` are refused before the index is
/// asked; an hour more covers the clock moving between the two.
pub(crate) fn eviction_cutoff(now_ms: i64, max_age: Duration) -> i64 {
    let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    now_ms
        .saturating_sub(max_age_ms)
        .saturating_sub(EVICT_EVERY_MS)
}

/// Forgets boots sampled before `cutoff` (on the flush thread: it may
/// rewrite the snapshot), and publishes the index's size.
pub(crate) fn evict(store: &mut DedupStore, cutoff: i64) {
    match store.evict_sampled_before(cutoff) {
        Ok(0) => {}
        Ok(n) => {
            counter!(m::DEDUP_BOOTS_EVICTED).increment(n as u64);
            debug!(
                boots = n,
                "dedup index forgot boots older than gateway.max_age"
            );
        }
        Err(e) => {
            warn!(error = %e, "dedup index: writing the snapshot after eviction failed; retried next hour")
        }
    }
}

/// Publishes the dedup index's size.
pub(crate) fn report_index(store: &DedupStore) {
    let boots = store
        .index()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .boots();
    gauge!(m::DEDUP_BOOTS).set(boots as f64);
}

/// Spool, intent, files, commit: see `dedup` for why this order survives a
/// crash at any point. The spool goes first so that rows the dedup index
/// counts as stored (after a crash, from the files) are always spooled too.
fn write_flush(
    store: &mut DedupStore,
    lake: &Lake,
    clickhouse: Option<(&Spool, &Vec<EncodedRows>)>,
    (writer_id, flush_id): (&str, u64),
    parts: &[PartBatch],
    keys: &[(ReadingKey, i64)],
    stopping: &AtomicBool,
) -> Result<FlushStats, DedupOrLake> {
    if parts.is_empty() {
        return Ok(FlushStats::default());
    }
    if let Some((spool, rows)) = clickhouse {
        spool.append(rows, stopping)?;
    }
    let paths: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            lake.file_path(
                p.table,
                p.hour,
                &format!("{writer_id}-{flush_id:012}-{i:03}.parquet"),
            )
        })
        .collect();
    store.write_intent(flush_id, &paths)?;
    let mut stats = FlushStats::default();
    for (part, path) in parts.iter().zip(&paths) {
        let written = lake.write_part(part, path)?;
        stats.rows += written.rows;
        stats.files += 1;
        stats.bytes += written.bytes;
    }
    store.commit(flush_id, keys)?;
    Ok(stats)
}

/// Releases a finished flush's acks (or, when it failed at shutdown, leaves
/// them unsent) and hands back the dedup store.
fn finish_flush(
    outcome: FlushOutcome,
    pending: &mut HashSet<ReadingKey>,
    acks: &mpsc::UnboundedSender<Release>,
) -> DedupStore {
    let FlushOutcome {
        store,
        result,
        batch_keys,
        acks: tokens,
        notices,
        readings,
        dead_letters,
    } = outcome;
    for (key, _) in &batch_keys {
        pending.remove(key);
    }
    match result {
        Ok(stats) => {
            for (kind, n) in Kind::ALL.into_iter().zip(readings) {
                if n > 0 {
                    counter!(m::READINGS_STORED, "kind" => kind.as_str()).increment(n);
                }
            }
            counter!(m::DEAD_LETTERS_STORED).increment(dead_letters);
            histogram!(m::FLUSH_ROWS).record(stats.rows as f64);
            counter!(m::FILES_WRITTEN).increment(stats.files as u64);
            counter!(m::BYTES_WRITTEN).increment(stats.bytes);
            if !tokens.is_empty() || !notices.is_empty() {
                // The receiver is gone only when the MQTT side has already
                // shut down; the broker will redeliver what stays unacked.
                let _ = acks.send(Release {
                    acks: tokens,
                    notices,
                });
            }
        }
        Err(e) => {
            // Shutting down with the disk failing: leave the messages unacked
            // so the broker redelivers them to the next gateway run.
            error!(error = %e, messages = tokens.len(), "giving up on a flush at shutdown; its messages stay unacked");
        }
    }
    store
}

/// One `DurableReadings` per boot the flush took readings of: what the
/// dedup index now holds durable of it (by this gateway).
fn durable_notices(
    store: &DedupStore,
    boots: &HashMap<(DeviceId, BootId), MerchantId>,
) -> Vec<Notice> {
    use prost::Message;
    use tillwatch_proto::telemetry::v1 as pb;
    if boots.is_empty() {
        return Vec::new();
    }
    let index = store.index();
    let index = index.read().unwrap_or_else(PoisonError::into_inner);
    boots
        .iter()
        .filter_map(|((device, boot), merchant)| {
            let ranges = index.stored_ranges(device, *boot, NOTICE_MAX_RANGES);
            if ranges.is_empty() {
                return None;
            }
            let payload = pb::DurableReadings {
                device_id: device.as_str().to_string(),
                boot_id: boot.0,
                ranges: ranges
                    .into_iter()
                    .map(|(from_seq, to_seq)| pb::SeqRange { from_seq, to_seq })
                    .collect(),
            }
            .encode_to_vec();
            Some(Notice {
                topic: tillwatch_proto::topic::durable_topic(merchant.as_str(), device.as_str()),
                payload: payload.into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod budget_tests {
    use super::DeadLetterBudget;

    #[test]
    fn a_flood_of_dead_letters_is_stored_at_the_budgets_rate() {
        let mut budget = DeadLetterBudget::new(10);
        // A burst of ten seconds' worth, then nothing until it refills.
        let stored = (0..1_000).filter(|_| budget.take(0)).count();
        assert_eq!(stored, 100);
        assert!(!budget.take(50), "half a token after 50 ms");
        assert!(budget.take(100), "one after 100 ms");
        // A minute of 1,000 a second stores 10 a second.
        let stored = (0..60_000).filter(|i| budget.take(1_000 + i)).count();
        assert!((600..=610).contains(&stored), "{stored}");
        // A clock that goes back adds nothing.
        assert!(!budget.take(0));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message;
    use tillwatch_domain::{Limits, UtcMillis};
    use tillwatch_proto::telemetry::v1 as pb;

    use super::*;

    fn message(seq: u64) -> Incoming {
        let reading = pb::Reading {
            device_id: "dev-1".into(),
            boot_id: 1,
            seq,
            sampled_at_ms: UtcMillis::now().0,
            kind: Some(pb::reading::Kind::PaymentHealth(pb::PaymentHealth {
                offline_queue_len: 1,
                offline_queue_oldest_age_s: 60,
                tamper_detected: false,
                printer_paper_low: false,
            })),
        };
        Incoming {
            topic: "tw/v1/m-1/dev-1/telemetry".into(),
            payload: pb::TelemetryBatch {
                readings: vec![reading],
            }
            .encode_to_vec()
            .into(),
            ack: Some(AckToken {
                pkid: (seq % 65_000) as u16 + 1,
                qos: 1,
            }),
        }
    }

    type Running = (
        mpsc::Sender<Incoming>,
        mpsc::UnboundedReceiver<Release>,
        JoinHandle<()>,
    );

    /// Starts a pipeline over `lake_root` with the given limits (and a
    /// ClickHouse spool, if any); it runs until its input closes.
    fn spawn_pipeline(
        dir: &std::path::Path,
        lake_root: &std::path::Path,
        flush_max_rows: usize,
        max_buffered_bytes: usize,
        channel: usize,
        spool: Option<Spool>,
    ) -> Running {
        spawn_pipeline_with(
            dir,
            lake_root,
            flush_max_rows,
            max_buffered_bytes,
            channel,
            spool,
            |_| {},
        )
    }

    fn spawn_pipeline_with(
        dir: &std::path::Path,
        lake_root: &std::path::Path,
        flush_max_rows: usize,
        max_buffered_bytes: usize,
        channel: usize,
        spool: Option<Spool>,
        tweak: impl FnOnce(&mut PipelineConfig),
    ) -> Running {
        spawn_pipeline_releasing(
            dir,
            lake_root,
            flush_max_rows,
            max_buffered_bytes,
            channel,
            spool,
            tweak,
        )
    }

    fn spawn_pipeline_releasing(
        dir: &std::path::Path,
        lake_root: &std::path::Path,
        flush_max_rows: usize,
        max_buffered_bytes: usize,
        channel: usize,
        spool: Option<Spool>,
        tweak: impl FnOnce(&mut PipelineConfig),
    ) -> Running {
        let lake = Lake::new(lake_root);
        let (store, _) =
            DedupStore::open(&dir.join("state"), lake.clone(), UtcMillis::now().0).unwrap();
        let mut config = PipelineConfig {
            limits: DecodeLimits {
                max_payload_bytes: 1024,
                sample_time: Limits::default(),
            },
            flush_max_rows,
            flush_max_unacked: 10_000,
            flush_max_age: Duration::from_millis(20),
            max_buffered_bytes,
            writer_id: "test".into(),
            dead_letters_per_second: 1_000,
            max_boots_per_device: 1_000,
            provisioning: None,
            health: Default::default(),
            confirm_durable: true,
        };
        tweak(&mut config);
        let (input_tx, input_rx) = mpsc::channel(channel);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let pipeline = tokio::spawn(async move {
            run_pipeline(config, lake, spool, store, input_rx, ack_tx, shutdown_rx).await;
            drop(shutdown_tx);
        });
        (input_tx, ack_rx, pipeline)
    }

    /// Readings in the lake's reading tables (dead letters not counted).
    fn stored_readings(root: &std::path::Path) -> usize {
        let mut stored = 0;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("dead_letter") {
                        stack.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    stored += tillwatch_storage::read_reading_keys(&path).unwrap().len();
                }
            }
        }
        stored
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// With the lake unwritable, the pipeline stops taking messages once
    /// its memory bound is reached and acks nothing; once the disk works
    /// again every message is stored once and acked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_disk_stops_intake_and_acks_nothing_until_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let lake_root = dir.path().join("lake");
        // A file where the lake's directory should be: every write fails.
        std::fs::write(&lake_root, b"not a directory").unwrap();
        let (input_tx, mut ack_rx, pipeline) =
            spawn_pipeline(dir.path(), &lake_root, 10_000, 4_000, 4, None);

        const TOTAL: u64 = 500;
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sender = {
            let accepted = accepted.clone();
            let input_tx = input_tx.clone();
            tokio::spawn(async move {
                for seq in 0..TOTAL {
                    input_tx.send(message(seq)).await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        wait_for("the input channel to fill up", || input_tx.capacity() == 0).await;
        let taken = accepted.load(Ordering::SeqCst);
        // A reading row is ~100 bytes in the builders: about 40 fit in
        // 4000 bytes, plus the channel's 4 and one being sent.
        assert!(taken < 60, "the pipeline kept taking messages: {taken}");
        assert!(
            ack_rx.try_recv().is_err(),
            "nothing may be acked before it is durable"
        );

        // The disk recovers.
        std::fs::remove_file(&lake_root).unwrap();
        std::fs::create_dir(&lake_root).unwrap();
        let mut acked = 0u64;
        let until = Instant::now() + Duration::from_secs(60);
        while acked < TOTAL {
            let tokens = tokio::time::timeout_at(until, ack_rx.recv())
                .await
                .expect("every message is acked after the disk recovers")
                .expect("the pipeline is running");
            acked += tokens.acks.len() as u64;
        }
        sender.await.unwrap();
        drop(input_tx);
        pipeline.await.unwrap();

        let stored = stored_readings(&lake_root);
        assert_eq!(stored as u64, TOTAL);
    }

    /// A full ClickHouse spool holds the flush, so no message is acked
    /// that is not spooled; once rows ship, everything is acked and every
    /// reading was spooled exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_clickhouse_spool_holds_acks_until_rows_ship() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with_segment_size(&dir.path().join("spool"), 3_000, 1_000).unwrap();
        let (input_tx, mut ack_rx, pipeline) = spawn_pipeline(
            dir.path(),
            &dir.path().join("lake"),
            5,
            1 << 20,
            16,
            Some(spool.clone()),
        );
        const TOTAL: u64 = 300;
        let sender = tokio::spawn(async move {
            for seq in 0..TOTAL {
                input_tx.send(message(seq)).await.unwrap();
            }
        });
        wait_for("the spool to fill", || spool.is_full()).await;
        let mut acked = 0u64;
        while let Ok(tokens) = ack_rx.try_recv() {
            acked += tokens.acks.len() as u64;
        }
        let mut reader = spool.reader();
        let first = reader.read(u64::MAX, u64::MAX).unwrap();
        let spooled: u64 = first.iter().map(|r| u64::from(r.rows)).sum();
        assert!(acked < TOTAL, "a full spool must hold acks");
        assert!(
            acked <= spooled,
            "acked {acked} messages but only {spooled} readings are spooled"
        );

        // ClickHouse is back: ship everything as it comes.
        let mut shipped = spooled;
        spool
            .mark_shipped(first.last().expect("a full spool has records").seq + 1)
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while acked < TOTAL {
            assert!(Instant::now() < until, "acks did not resume: {acked}");
            let records = reader.read(u64::MAX, u64::MAX).unwrap();
            if let Some(last) = records.last() {
                shipped += records.iter().map(|r| u64::from(r.rows)).sum::<u64>();
                spool.mark_shipped(last.seq + 1).unwrap();
            }
            match tokio::time::timeout(Duration::from_millis(20), ack_rx.recv()).await {
                Ok(Some(tokens)) => acked += tokens.acks.len() as u64,
                Ok(None) => panic!("the pipeline ended early"),
                Err(_) => {}
            }
        }
        sender.await.unwrap();
        pipeline.await.unwrap();
        shipped += reader
            .read(u64::MAX, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| u64::from(r.rows))
            .sum::<u64>();
        assert_eq!(shipped, TOTAL, "each reading spooled exactly once");
    }

    #[test]
    fn a_broker_in_flight_cap_is_recognised_once() {
        let mut w = WindowStall::default();
        // Steady traffic spread over the window: never a stall.
        for _ in 0..10 {
            assert_eq!(w.observe(20, false), None);
        }
        // Bursts of varying size: ordinary load.
        assert_eq!(w.observe(20, true), None);
        assert_eq!(w.observe(17, true), None);
        assert_eq!(w.observe(23, true), None);
        // The same burst three times in a row: the broker's window.
        assert_eq!(w.observe(20, true), None);
        assert_eq!(w.observe(20, true), None);
        assert_eq!(w.observe(20, true), Some(20));
        // Said once.
        assert_eq!(w.observe(20, true), None);
    }

    #[tokio::test]
    async fn the_ingest_watermark_advances_when_idle_and_covers_acked_messages() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path().join("lake"));
        let (input_tx, mut ack_rx, pipeline) = spawn_pipeline(
            dir.path(),
            &dir.path().join("lake"),
            1000,
            1 << 20,
            16,
            None,
        );
        // Nothing received: everything received is durable, so it moves.
        wait_for("an idle watermark", || lake.watermark().is_some()).await;
        let sent_at = tillwatch_domain::UtcMillis::now().0;
        let mut m = message(1);
        m.ack = Some(AckToken { pkid: 1, qos: 1 });
        input_tx.send(m).await.unwrap();
        let acked = ack_rx.recv().await.unwrap();
        assert_eq!(acked.acks.len(), 1);
        // Once acked, the message is behind the watermark.
        wait_for("the watermark to pass the acked message", || {
            lake.watermark().is_some_and(|w| w >= sent_at)
        })
        .await;
        assert!(lake.watermark().unwrap() <= tillwatch_domain::UtcMillis::now().0);
        drop(input_tx);
        pipeline.await.unwrap();
    }

    #[tokio::test]
    async fn duplicates_are_acked_but_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (input_tx, mut ack_rx, pipeline) =
            spawn_pipeline(dir.path(), &dir.path().join("lake"), 3, 1 << 20, 16, None);
        // Each reading three times, spread over several flushes.
        for round in 0..3 {
            for seq in 0..5 {
                let mut m = message(seq);
                m.ack = Some(AckToken {
                    pkid: (round * 10 + seq + 1) as u16,
                    qos: 1,
                });
                input_tx.send(m).await.unwrap();
            }
        }
        drop(input_tx);
        pipeline.await.unwrap();
        let mut acked = 0;
        while let Ok(tokens) = ack_rx.try_recv() {
            acked += tokens.acks.len();
        }
        assert_eq!(acked, 15, "duplicates are acked too");
        let (store, _) = DedupStore::open(
            &dir.path().join("state"),
            Lake::new(dir.path().join("lake")),
            UtcMillis::now().0,
        )
        .unwrap();
        assert_eq!(store.index().read().unwrap().boots(), 1);
        let stored = stored_readings(&dir.path().join("lake"));
        assert_eq!(stored, 5);
    }

    /// After each flush the terminal is told what of its boot is durable:
    /// by the end, every reading it sent (a duplicate too), on its own
    /// durable topic; with `confirm_durable` off, nothing is published.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_flush_tells_the_terminal_what_is_durable() {
        for confirm in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (input_tx, mut releases, pipeline) = spawn_pipeline_with(
                dir.path(),
                &dir.path().join("lake"),
                3,
                1 << 20,
                16,
                None,
                |c| c.confirm_durable = confirm,
            );
            for seq in [0, 1, 2, 3, 4, 2] {
                input_tx.send(message(seq)).await.unwrap();
            }
            drop(input_tx);
            pipeline.await.unwrap();
            let mut notices = Vec::new();
            while let Ok(release) = releases.try_recv() {
                notices.extend(release.notices);
            }
            if !confirm {
                assert_eq!(notices, []);
                continue;
            }
            assert!(!notices.is_empty());
            for n in &notices {
                assert_eq!(n.topic, "tw/v1/m-1/dev-1/durable");
            }
            let last = pb::DurableReadings::decode(&notices.last().unwrap().payload[..]).unwrap();
            assert_eq!(last.device_id, "dev-1");
            assert_eq!(last.boot_id, 1);
            assert_eq!(
                last.ranges,
                [pb::SeqRange {
                    from_seq: 0,
                    to_seq: 5
                }]
            );
        }
    }

    /// Dead letters in the lake with `code`, and the boot ids their
    /// payloads (the refused readings) carry.
    fn dead_letter_boots(root: &std::path::Path, code: &str) -> Vec<u64> {
        use arrow::array::{Array, BinaryArray, StringArray};
        let mut boots = Vec::new();
        let mut stack = vec![root.join("dead_letter")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                for batch in tillwatch_storage::read_file(&path).unwrap() {
                    let codes = batch.column_by_name("reason_code").unwrap();
                    let codes = codes.as_any().downcast_ref::<StringArray>().unwrap();
                    let payloads = batch.column_by_name("payload").unwrap();
                    let payloads = payloads.as_any().downcast_ref::<BinaryArray>().unwrap();
                    for i in 0..codes.len() {
                        if codes.value(i) == code {
                            let raw = pb::Reading::decode(payloads.value(i)).unwrap();
                            boots.push(raw.boot_id);
                        }
                    }
                }
            }
        }
        boots.sort_unstable();
        boots
    }

    /// A terminal that makes up a boot id per reading is held to
    /// `max_boots_per_device` boots: the rest are dead-lettered with the
    /// reading kept (and acked), while further readings of a boot already
    /// known are stored as usual.
    #[tokio::test]
    async fn boots_beyond_the_per_device_limit_are_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let (input_tx, mut ack_rx, pipeline) =
            spawn_pipeline_with(dir.path(), &lake, 3, 1 << 20, 16, None, |c| {
                c.max_boots_per_device = 4;
            });
        let with_boot = |boot: u64, seq: u64, pkid: u16| {
            let mut m = message(seq);
            let mut batch = pb::TelemetryBatch::decode(m.payload.as_ref()).unwrap();
            batch.readings[0].boot_id = boot;
            m.payload = batch.encode_to_vec().into();
            m.ack = Some(AckToken { pkid, qos: 1 });
            m
        };
        for boot in 0..10u64 {
            input_tx
                .send(with_boot(boot, 0, boot as u16 + 1))
                .await
                .unwrap();
        }
        // A known boot goes on.
        input_tx.send(with_boot(2, 1, 100)).await.unwrap();
        drop(input_tx);
        pipeline.await.unwrap();
        let mut acked = 0;
        while let Ok(tokens) = ack_rx.try_recv() {
            acked += tokens.acks.len();
        }
        assert_eq!(
            acked, 11,
            "refused readings are acked too: they are kept as dead letters"
        );
        assert_eq!(stored_readings(&lake), 5);
        assert_eq!(
            dead_letter_boots(&lake, "too_many_boots"),
            vec![4, 5, 6, 7, 8, 9]
        );
    }
}
