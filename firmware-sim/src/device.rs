//! One simulated terminal: its identity, its fault plan and its MQTT client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_proto::topic::{Channel, DURABLE, device_topic, durable_topic};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::signals::Signals;
use crate::{Report, SimConfig};

const MODELS: [&str; 3] = ["Countertop C2", "Handheld H5", "Smart POS S1"];
/// Readings per message when replaying a backlog.
const REPLAY_BATCH: usize = 20;

/// Who a terminal is and which faults it will show, fixed by the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub index: usize,
    pub device_id: String,
    pub merchant_id: String,
    pub store_id: String,
    pub model_index: usize,
    /// Ticks `[from, to)` during which the terminal has no network.
    pub outage: Option<(u64, u64)>,
    pub reboot_at: Option<u64>,
    /// Every n-th message is published twice.
    pub duplicate_every: Option<u64>,
    pub malformed_at: Option<u64>,
    pub spoofed_at: Option<u64>,
    pub out_of_range_at: Option<u64>,
}

pub(crate) fn mix(seed: u64, index: usize, salt: u64) -> u64 {
    // SplitMix64 over (seed, index, salt): a stable per-device choice.
    let mut z = seed
        ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DevicePlan {
    pub fn new(config: &SimConfig, index: usize) -> DevicePlan {
        let merchant = index % config.merchants;
        let store = (index / config.merchants) % config.stores_per_merchant;
        let merchant_id = format!("m-{merchant:03}");
        let store_id = format!("{merchant_id}-s{store}");
        let mut plan = DevicePlan {
            index,
            device_id: format!("term-{index:05}"),
            merchant_id,
            store_id,
            model_index: (mix(config.seed, index, 1) % MODELS.len() as u64) as usize,
            outage: None,
            reboot_at: None,
            duplicate_every: None,
            malformed_at: None,
            spoofed_at: None,
            out_of_range_at: None,
        };
        let faults = config.faults;
        if !faults.any() {
            return plan;
        }
        // Ticks at which faults happen; a run without a reading limit uses
        // a nominal length of 20 ticks for its one round of faults, so a
        // demo shows them within its first minute.
        let n = config.readings_per_device.unwrap_or(20).max(4);
        let pick = |salt: u64, per_mille: u64| mix(config.seed, index, salt) % 1000 < per_mille;
        // The first store of the first merchant loses its uplink as a whole;
        // a few terminals elsewhere lose theirs alone (always terminal 1).
        if faults.store_outage && merchant == 0 && store == 0 {
            plan.outage = Some((n / 2, n / 2 + n / 5 + 1));
        } else if faults.outage && (pick(2, 40) || index == 1) {
            plan.outage = Some((n / 4, n / 4 + n / 4 + 1));
        }
        if faults.reboot && (pick(3, 30) || index == 2) {
            plan.reboot_at = Some(n / 2 + 1);
        }
        if faults.retry && (pick(4, 50) || index == 3) {
            plan.duplicate_every = Some(5);
        }
        if faults.malformed && (pick(5, 20) || index == 4) {
            plan.malformed_at = Some(n / 3);
        }
        if faults.spoofed && (pick(6, 20) || index == 5) {
            plan.spoofed_at = Some(n / 3 + 1);
        }
        if faults.out_of_range && (pick(7, 10) || index == 6) {
            plan.out_of_range_at = Some(n / 3 + 2);
        }
        plan
    }

    fn topic(&self, channel: Channel) -> String {
        device_topic(&self.merchant_id, &self.device_id, channel)
    }

    /// The model its info message reports.
    pub fn model(&self) -> &'static str {
        MODELS[self.model_index]
    }

    /// The serial number its info message reports (fixed by the seed).
    pub fn serial(&self, seed: u64) -> String {
        format!("SN{:08}", mix(seed, self.index, 8) % 100_000_000)
    }

    /// Its status message: online or offline in boot `boot_id`.
    pub(crate) fn status(
        &self,
        boot_id: u64,
        online: bool,
        reason: pb::StatusReason,
        at_ms: i64,
    ) -> Vec<u8> {
        pb::DeviceStatus {
            device_id: self.device_id.clone(),
            boot_id,
            state: if online {
                pb::ConnectionState::Online
            } else {
                pb::ConnectionState::Offline
            } as i32,
            reason: reason as i32,
            at_ms,
        }
        .encode_to_vec()
    }

    /// Its info message: who it is, where, and what it runs.
    pub(crate) fn info(&self, seed: u64, boot_id: u64, signals: &Signals, at_ms: i64) -> Vec<u8> {
        pb::DeviceInfo {
            device_id: self.device_id.clone(),
            boot_id,
            model: self.model().to_string(),
            serial: self.serial(seed),
            firmware_version: signals.firmware_version.clone(),
            app_version: signals.app_version.clone(),
            merchant_id: self.merchant_id.clone(),
            store_id: self.store_id.clone(),
            time_zone: "Europe/London".into(),
            at_ms,
        }
        .encode_to_vec()
    }
}

pub(crate) struct Device {
    plan: DevicePlan,
    config: SimConfig,
    host: String,
    port: u16,
    /// TLS, for an `mqtts://` broker.
    transport: Option<rumqttc::Transport>,
    rng: StdRng,
    signals: Signals,
    boot_id: u64,
    seq: u64,
    report: Report,
    /// Readings sent that no durable notice has named yet, by (boot, seq).
    unconfirmed: BTreeMap<(u64, u64), pb::Reading>,
    /// When a notice last confirmed something, or the first unconfirmed
    /// reading was sent: `resend_after` counts from here.
    last_progress: Instant,
    /// A new connection was made with readings unconfirmed: send them again.
    resend_due: bool,
}

/// A connection that publishes one message at a time and waits for its ack.
struct Link {
    client: AsyncClient,
    eventloop: EventLoop,
    /// Durable notices received and not yet applied.
    notices: Vec<pb::DurableReadings>,
}

impl Link {
    /// Keeps a durable notice that arrived while the link was polled.
    fn note(&mut self, publish: &rumqttc::Publish) {
        if publish.topic.ends_with(DURABLE)
            && let Ok(notice) = pb::DurableReadings::decode(&publish.payload[..])
        {
            self.notices.push(notice);
        }
    }
}

enum Sent {
    Acked,
    /// The connection dropped before the ack; the caller reconnects and
    /// publishes again (as firmware does).
    Lost,
    Stopped,
}

impl Device {
    pub(crate) fn new(
        plan: DevicePlan,
        config: &SimConfig,
        host: String,
        port: u16,
        transport: Option<rumqttc::Transport>,
    ) -> Device {
        let mut rng = StdRng::seed_from_u64(mix(config.seed, plan.index, 99));
        let signals = Signals::new(&mut rng, plan.model_index);
        let boot_id = rng.random::<u64>();
        Device {
            plan,
            config: config.clone(),
            host,
            port,
            transport,
            rng,
            signals,
            boot_id,
            seq: 0,
            report: Report {
                devices: 1,
                ..Default::default()
            },
            unconfirmed: BTreeMap::new(),
            last_progress: Instant::now(),
            resend_due: false,
        }
    }

    fn status(&self, online: bool, reason: pb::StatusReason, at_ms: i64) -> Vec<u8> {
        self.plan.status(self.boot_id, online, reason, at_ms)
    }

    fn info(&self, at_ms: i64) -> Vec<u8> {
        self.plan
            .info(self.config.seed, self.boot_id, &self.signals, at_ms)
    }

    fn now_ms(&self, tick: u64) -> i64 {
        match self.config.start_ms {
            Some(start) => start + (tick as i64) * self.config.interval.as_millis() as i64,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    /// Connects, publishes info and birth, and returns the link; `None`
    /// only when stopped. A connection lost on the way is retried.
    async fn connect(
        &mut self,
        gate: &Semaphore,
        at_ms: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Link> {
        loop {
            let permit = gate.acquire().await.ok()?;
            let mut options =
                MqttOptions::new(self.plan.device_id.clone(), self.host.clone(), self.port);
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_clean_session(true)
                .set_last_will(LastWill::new(
                    self.plan.topic(Channel::Status),
                    self.status(false, pb::StatusReason::ConnectionLost, at_ms),
                    QoS::AtLeastOnce,
                    true,
                ));
            if let Some(transport) = &self.transport {
                options.set_transport(transport.clone());
            }
            if let Some(password) = &self.config.security.password {
                options.set_credentials(self.plan.device_id.clone(), password.clone());
            }
            let (client, eventloop) = AsyncClient::new(options, 16);
            let mut link = Link {
                client,
                eventloop,
                notices: Vec::new(),
            };
            // Wait for the ConnAck, retrying while the broker is unreachable.
            loop {
                let failed = tokio::select! {
                    event = link.eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                        Ok(_) => false,
                        Err(_) => true,
                    },
                    _ = stopped(shutdown) => return None,
                };
                if failed {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stopped(shutdown) => return None,
                    }
                }
            }
            drop(permit);
            let info = self.info(at_ms);
            let birth = self.status(true, pb::StatusReason::Birth, at_ms);
            let mut lost = false;
            for (channel, payload) in [(Channel::Info, info), (Channel::Status, birth)] {
                match publish(&mut link, self.plan.topic(channel), payload, true, shutdown).await {
                    Sent::Acked => {}
                    Sent::Lost => {
                        lost = true;
                        break;
                    }
                    Sent::Stopped => return None,
                }
            }
            if !lost {
                if self.config.durability.unconfirmed_max > 0 {
                    // Clean session: subscribe on every connect.
                    let _ = link.client.try_subscribe(
                        durable_topic(&self.plan.merchant_id, &self.plan.device_id),
                        QoS::AtMostOnce,
                    );
                    self.resend_due = !self.unconfirmed.is_empty();
                }
                return Some(link);
            }
        }
    }

    /// Keeps readings the broker acked until a notice names them.
    fn hold(&mut self, readings: &[pb::Reading]) {
        let max = self.config.durability.unconfirmed_max;
        if max == 0 {
            return;
        }
        if self.unconfirmed.is_empty() {
            self.last_progress = Instant::now();
        }
        for r in readings {
            self.unconfirmed.insert((r.boot_id, r.seq), r.clone());
        }
        while self.unconfirmed.len() > max {
            self.unconfirmed.pop_first();
            self.report.unconfirmed_dropped += 1;
        }
    }

    /// Forgets what the notices received name as durable.
    fn absorb(&mut self, link: &mut Option<Link>) {
        let Some(l) = link else { return };
        for notice in l.notices.drain(..) {
            let before = self.unconfirmed.len();
            for range in &notice.ranges {
                if range.from_seq >= range.to_seq {
                    continue;
                }
                let named: Vec<(u64, u64)> = self
                    .unconfirmed
                    .range((notice.boot_id, range.from_seq)..(notice.boot_id, range.to_seq))
                    .map(|(k, _)| *k)
                    .collect();
                for k in named {
                    self.unconfirmed.remove(&k);
                }
            }
            if self.unconfirmed.len() < before {
                self.last_progress = Instant::now();
            }
        }
    }

    /// Whether what is held should go out again: after a reconnect, or
    /// after `resend_after` without a notice.
    fn resend_is_due(&self) -> bool {
        !self.unconfirmed.is_empty()
            && (self.resend_due
                || self.last_progress.elapsed() >= self.config.durability.resend_after)
    }

    /// Publishes again everything held; false when stopped first.
    async fn resend(
        &mut self,
        link: &mut Option<Link>,
        topic: &str,
        t_ms: i64,
        gate: &Semaphore,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if link.is_none() {
            *link = self.connect(gate, t_ms, shutdown).await;
            if link.is_none() {
                return false;
            }
        }
        // A reconnect during the resend sets it again: what went out
        // before it may be lost with the broker.
        self.resend_due = false;
        self.last_progress = Instant::now();
        let held: Vec<pb::Reading> = self.unconfirmed.values().cloned().collect();
        for chunk in held.chunks(REPLAY_BATCH) {
            if !self
                .send(
                    link,
                    topic.to_string(),
                    Self::batch(chunk.to_vec()),
                    t_ms,
                    gate,
                    shutdown,
                )
                .await
            {
                return false;
            }
            self.report.resent_readings += chunk.len() as u64;
            self.absorb(link);
        }
        true
    }

    /// Publishes until acked, reconnecting as needed. Returns false when
    /// stopped first.
    async fn send(
        &mut self,
        link: &mut Option<Link>,
        topic: String,
        payload: Vec<u8>,
        at_ms: i64,
        gate: &Semaphore,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            if link.is_none() {
                *link = self.connect(gate, at_ms, shutdown).await;
                if link.is_none() {
                    return false;
                }
            }
            self.report.messages_published += 1;
            let l = link.as_mut().expect("connected above");
            match publish(l, topic.clone(), payload.clone(), false, shutdown).await {
                Sent::Acked => {
                    self.report.messages_acked += 1;
                    return true;
                }
                Sent::Lost => {
                    // Firmware retries the same message on a new connection.
                    *link = None;
                    self.report.duplicates_sent += 1;
                }
                Sent::Stopped => return false,
            }
        }
    }

    fn next_reading(&mut self, tick: u64, t_ms: i64, offline: bool) -> pb::Reading {
        let interval_s = self.config.interval.as_secs_f64();
        self.signals.tick(&mut self.rng, t_ms, interval_s, offline);
        let kind = self
            .signals
            .reading(&mut self.rng, (tick % 4) as usize, t_ms);
        let reading = pb::Reading {
            device_id: self.plan.device_id.clone(),
            boot_id: self.boot_id,
            seq: self.seq,
            sampled_at_ms: t_ms,
            kind: Some(kind),
        };
        self.seq += 1;
        reading
    }

    fn batch(readings: Vec<pb::Reading>) -> Vec<u8> {
        pb::TelemetryBatch { readings }.encode_to_vec()
    }

    pub(crate) async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        gate: Arc<Semaphore>,
    ) -> Report {
        let telemetry = self.plan.topic(Channel::Telemetry);
        let mut link: Option<Link> = None;
        let mut backlog: Vec<pb::Reading> = Vec::new();
        let mut messages: u64 = 0;
        let mut tick: u64 = 0;
        let started = Instant::now();
        loop {
            if self
                .config
                .readings_per_device
                .is_some_and(|limit| tick >= limit)
            {
                break;
            }
            if *shutdown.borrow() {
                break;
            }
            if self.config.start_ms.is_none() && tick > 0 {
                // Real time: wait for the next tick, keeping the link alive.
                let next = started + self.config.interval * tick as u32;
                if !wait_until(&mut link, next, &mut shutdown).await {
                    break;
                }
            }
            let t_ms = self.now_ms(tick);
            let offline = self
                .plan
                .outage
                .is_some_and(|(from, to)| tick >= from && tick < to);

            if self.plan.reboot_at == Some(tick) && !offline {
                if let Some(l) = link.take() {
                    let bye = self.status(false, pb::StatusReason::Shutdown, t_ms);
                    let mut l = l;
                    let _ = publish(
                        &mut l,
                        self.plan.topic(Channel::Status),
                        bye,
                        true,
                        &mut shutdown,
                    )
                    .await;
                    let _ = l.client.disconnect().await;
                    drain_disconnect(&mut l).await;
                }
                self.boot_id = self.rng.random::<u64>();
                self.seq = 0;
                self.signals.reboot();
                self.report.reboots += 1;
            }

            let reading = self.next_reading(tick, t_ms, offline);
            if offline {
                if link.take().is_some() {
                    // Dropping the connection without a DISCONNECT: the
                    // broker publishes the last will.
                    self.report.outages += 1;
                }
                backlog.push(reading);
                tick += 1;
                continue;
            }
            self.absorb(&mut link);
            if self.resend_is_due()
                && !self
                    .resend(&mut link, &telemetry, t_ms, &gate, &mut shutdown)
                    .await
            {
                return self.finish(link, t_ms, &gate, &mut shutdown).await;
            }
            if !backlog.is_empty() {
                let late = std::mem::take(&mut backlog);
                let telemetry = telemetry.clone();
                if !self
                    .replay(&mut link, telemetry, late, t_ms, &gate, &mut shutdown)
                    .await
                {
                    return self.finish(link, t_ms, &gate, &mut shutdown).await;
                }
            }

            let payload = Self::batch(vec![reading.clone()]);
            if !self
                .send(
                    &mut link,
                    telemetry.clone(),
                    payload.clone(),
                    t_ms,
                    &gate,
                    &mut shutdown,
                )
                .await
            {
                self.report.unacked_readings += 1;
                break;
            }
            self.report.readings += 1;
            self.hold(std::slice::from_ref(&reading));
            self.absorb(&mut link);
            messages += 1;
            if self
                .plan
                .duplicate_every
                .is_some_and(|n| messages.is_multiple_of(n))
            {
                self.report.duplicates_sent += 1;
                self.send(
                    &mut link,
                    telemetry.clone(),
                    payload,
                    t_ms,
                    &gate,
                    &mut shutdown,
                )
                .await;
            }

            if self.plan.malformed_at == Some(tick) {
                let garbage: Vec<u8> = (0..self.rng.random_range(5..60))
                    .map(|_| self.rng.random::<u8>())
                    .chain([0xff, 0xff])
                    .collect();
                if self
                    .send(
                        &mut link,
                        telemetry.clone(),
                        garbage,
                        t_ms,
                        &gate,
                        &mut shutdown,
                    )
                    .await
                {
                    self.report.malformed_sent += 1;
                }
            }
            if self.plan.spoofed_at == Some(tick) {
                let mut spoof = reading.clone();
                spoof.device_id = format!(
                    "term-{:05}",
                    (self.plan.index + 1) % self.config.devices.max(2)
                );
                if spoof.device_id == self.plan.device_id {
                    spoof.device_id = "term-spoofed".into();
                }
                spoof.seq = 1_000_000 + tick;
                if self
                    .send(
                        &mut link,
                        telemetry.clone(),
                        Self::batch(vec![spoof]),
                        t_ms,
                        &gate,
                        &mut shutdown,
                    )
                    .await
                {
                    self.report.spoofed_sent += 1;
                }
            }
            if self.plan.out_of_range_at == Some(tick) {
                let bad = pb::Reading {
                    device_id: self.plan.device_id.clone(),
                    boot_id: self.boot_id,
                    // A sequence number of its own, outside the real ones.
                    seq: 2_000_000 + tick,
                    sampled_at_ms: t_ms,
                    kind: Some(pb::reading::Kind::Battery(pb::Battery {
                        level_pct: 150,
                        charging: false,
                        temperature_celsius: 30.0,
                        voltage_mv: 3700,
                        health_pct: 90,
                        cycle_count: 1,
                    })),
                };
                if self
                    .send(
                        &mut link,
                        telemetry.clone(),
                        Self::batch(vec![bad]),
                        t_ms,
                        &gate,
                        &mut shutdown,
                    )
                    .await
                {
                    self.report.out_of_range_sent += 1;
                }
            }
            tick += 1;
        }
        // Still offline at the end: come back and replay.
        let t_ms = self.now_ms(tick);
        if !backlog.is_empty() && !*shutdown.borrow() {
            let late = std::mem::take(&mut backlog);
            self.replay(&mut link, telemetry, late, t_ms, &gate, &mut shutdown)
                .await;
        } else {
            self.report.unacked_readings += backlog.len() as u64;
        }
        self.finish(link, t_ms, &gate, &mut shutdown).await
    }

    /// Publishes a backlog in batches of [`REPLAY_BATCH`]; false when
    /// stopped first (the rest then counts as unacked).
    async fn replay(
        &mut self,
        link: &mut Option<Link>,
        topic: String,
        late: Vec<pb::Reading>,
        t_ms: i64,
        gate: &Semaphore,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        self.report.late_readings += late.len() as u64;
        let mut chunks = late.chunks(REPLAY_BATCH);
        for chunk in chunks.by_ref() {
            let payload = Self::batch(chunk.to_vec());
            if !self
                .send(link, topic.clone(), payload, t_ms, gate, shutdown)
                .await
            {
                self.report.unacked_readings +=
                    chunk.len() as u64 + chunks.map(|c| c.len() as u64).sum::<u64>();
                return false;
            }
            self.report.readings += chunk.len() as u64;
            self.hold(chunk);
            self.absorb(link);
        }
        true
    }

    async fn finish(
        mut self,
        mut link: Option<Link>,
        t_ms: i64,
        gate: &Semaphore,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Report {
        // Wait (a while) for the notices of what is still held, resending
        // after a reconnect.
        let until = Instant::now() + self.config.durability.wait_at_end;
        let telemetry = self.plan.topic(Channel::Telemetry);
        while !self.unconfirmed.is_empty() && Instant::now() < until && !*shutdown.borrow() {
            if link.is_none() || self.resend_is_due() {
                if !self
                    .resend(&mut link, &telemetry, t_ms, gate, shutdown)
                    .await
                {
                    break;
                }
                continue;
            }
            let step = (Instant::now() + Duration::from_millis(100)).min(until);
            if !wait_until(&mut link, step, shutdown).await {
                break;
            }
            self.absorb(&mut link);
        }
        self.report.unconfirmed_readings = self.unconfirmed.len() as u64;
        if let Some(mut l) = link {
            let bye = self.status(false, pb::StatusReason::Shutdown, t_ms);
            let mut never = watch::channel(false).1;
            let topic = self.plan.topic(Channel::Status);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                publish(&mut l, topic, bye, true, &mut never),
            )
            .await;
            let _ = l.client.disconnect().await;
            drain_disconnect(&mut l).await;
        }
        std::mem::take(&mut self.report)
    }
}

/// Resolves once shutdown is requested; never, if the sender is gone
/// without asking (a caller that does not use shutdown).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Publishes one QoS 1 message and polls until its PUBACK.
async fn publish(
    link: &mut Link,
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Sent {
    if link
        .client
        .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        .is_err()
    {
        return Sent::Lost;
    }
    let mut pkid = None;
    loop {
        tokio::select! {
            event = link.eventloop.poll() => match event {
                Ok(Event::Outgoing(Outgoing::Publish(id))) => pkid = Some(id),
                Ok(Event::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == pkid => return Sent::Acked,
                Ok(Event::Incoming(Packet::Publish(p))) => link.note(&p),
                Ok(_) => {}
                Err(_) => return Sent::Lost,
            },
            _ = stopped(shutdown) => return Sent::Stopped,
        }
    }
}

/// Keeps the connection serviced until `until`; false when stopped.
async fn wait_until(
    link: &mut Option<Link>,
    until: Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        match link {
            Some(l) => tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                event = l.eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => l.note(&p),
                    Ok(_) => {}
                    Err(_) => *link = None,
                },
                _ = stopped(shutdown) => return false,
            },
            None => tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                _ = stopped(shutdown) => return false,
            },
        }
    }
}

async fn drain_disconnect(link: &mut Link) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match link.eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
