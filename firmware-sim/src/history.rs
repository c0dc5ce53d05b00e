//! A fleet's past, generated at once: every message its terminals would
//! have sent over a span of time, step by step in the order the broker
//! would have received them, for `tillwatch demo --history` to play into
//! the product on a virtual clock.
//!
//! The terminals are those [`crate::run`] simulates with the same
//! [`SimConfig`] (ids, merchants, stores, models, serials, firmware and app
//! versions), plus one: the last terminal, which goes quiet two hours
//! before the end and stays offline. Each takes a reading of all four kinds
//! every step. Their past has something to see:
//! - handheld terminals drain in trading hours and charge at night, so
//!   battery alerts fire and resolve;
//! - terminal 1 loses its network for five hours on the second day and
//!   replays what it buffered when it is back (late data);
//! - the first store of the first merchant loses its uplink for three
//!   hours on the fourth day;
//! - terminal 2 reboots every night at 03:00 (a new boot id);
//! - terminals on firmware `fw-7.2` crash ten times as often as the rest
//!   from the third day (a cohort with a bad release);
//! - terminal 5 reports tampering from the afternoon of the sixth day.
//!
//! Boot ids differ from the live simulator's, so a live fleet that
//! continues from the end of a history is a fleet that restarted.

use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_proto::topic::{Channel, device_topic};

use crate::device::mix;
use crate::signals::Signals;
use crate::{DevicePlan, SimConfig};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Readings per message when a terminal replays what it buffered.
const REPLAY_BATCH: usize = 20;
/// The firmware release whose terminals crash more, from the third day.
pub const BAD_FIRMWARE: &str = "fw-7.2";

/// One message as the broker received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Published retained (info, status).
    pub retain: bool,
}

/// One step of the past: the time the messages arrived, and the messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at_ms: i64,
    pub messages: Vec<Message>,
}

/// What a terminal's past holds besides its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Story {
    /// `[from, to)`: no network; readings are buffered and replayed.
    outage: Option<(i64, i64)>,
    /// Reboots every day at this hour (UTC).
    reboot_hour: Option<i64>,
    /// Quiet from here to the end (its last will says offline).
    quiet_from: Option<i64>,
    /// Detects tampering from here on.
    tamper_from: Option<i64>,
}

struct PastDevice {
    plan: DevicePlan,
    story: Story,
    rng: StdRng,
    signals: Signals,
    boot_id: u64,
    seq: u64,
    buffered: Vec<pb::Reading>,
    /// Connected as of the last step.
    online: bool,
    seed: u64,
}

impl PastDevice {
    fn topic(&self, channel: Channel) -> String {
        device_topic(&self.plan.merchant_id, &self.plan.device_id, channel)
    }

    fn status(&self, online: bool, reason: pb::StatusReason, at_ms: i64) -> Message {
        Message {
            topic: self.topic(Channel::Status),
            payload: self.plan.status(self.boot_id, online, reason, at_ms),
            retain: true,
        }
    }

    fn info(&self, at_ms: i64) -> Message {
        Message {
            topic: self.topic(Channel::Info),
            payload: self
                .plan
                .info(self.seed, self.boot_id, &self.signals, at_ms),
            retain: true,
        }
    }

    fn telemetry(&self, readings: Vec<pb::Reading>) -> Message {
        Message {
            topic: self.topic(Channel::Telemetry),
            payload: pb::TelemetryBatch { readings }.encode_to_vec(),
            retain: false,
        }
    }

    /// A connect: birth status, then info (as firmware sends them).
    fn connect(&mut self, at_ms: i64, out: &mut Vec<Message>) {
        out.push(self.status(true, pb::StatusReason::Birth, at_ms));
        out.push(self.info(at_ms));
        self.online = true;
    }

    /// The four readings sampled at `t_ms`.
    fn sample(&mut self, t_ms: i64, step_s: f64, offline: bool, bad_from: i64) -> Vec<pb::Reading> {
        self.signals.tick(&mut self.rng, t_ms, step_s, offline);
        (0..4)
            .map(|kind| {
                let mut kind = self.signals.reading(&mut self.rng, kind, t_ms);
                if let pb::reading::Kind::AppPerformance(app) = &mut kind
                    && app.firmware_version == BAD_FIRMWARE
                    && t_ms >= bad_from
                {
                    app.crashes = u32::from(self.rng.random_bool(0.02));
                }
                let reading = pb::Reading {
                    device_id: self.plan.device_id.clone(),
                    boot_id: self.boot_id,
                    seq: self.seq,
                    sampled_at_ms: t_ms,
                    kind: Some(kind),
                };
                self.seq += 1;
                reading
            })
            .collect()
    }

    /// What this terminal sends at `t_ms`.
    fn step(
        &mut self,
        t_ms: i64,
        first: bool,
        step_ms: i64,
        bad_from: i64,
        out: &mut Vec<Message>,
    ) {
        if self.story.quiet_from.is_some_and(|q| t_ms >= q) {
            if self.online {
                // Gone without a goodbye: the broker publishes its will.
                out.push(self.status(false, pb::StatusReason::ConnectionLost, t_ms));
                self.online = false;
            }
            return;
        }
        let offline = self
            .story
            .outage
            .is_some_and(|(from, to)| t_ms >= from && t_ms < to);
        if first {
            self.connect(t_ms, out);
        }
        if let Some(hour) = self.story.reboot_hour
            && !offline
            && !first
            && (t_ms - hour * HOUR_MS).rem_euclid(DAY_MS) < step_ms
        {
            out.push(self.status(false, pb::StatusReason::Shutdown, t_ms));
            self.boot_id = self.rng.random::<u64>();
            self.seq = 0;
            self.signals.reboot();
            self.connect(t_ms, out);
        }
        if self.story.tamper_from.is_some_and(|at| t_ms >= at) {
            self.signals.tampered();
        }
        let readings = self.sample(t_ms, step_ms as f64 / 1000.0, offline, bad_from);
        if offline {
            if self.online {
                out.push(self.status(false, pb::StatusReason::ConnectionLost, t_ms));
                self.online = false;
            }
            self.buffered.extend(readings);
            return;
        }
        if !self.online {
            self.connect(t_ms, out);
        }
        for chunk in std::mem::take(&mut self.buffered).chunks(REPLAY_BATCH) {
            out.push(self.telemetry(chunk.to_vec()));
        }
        out.push(self.telemetry(readings));
    }
}

/// The past of a fleet from `from_ms` to `to_ms`, a step at a time.
pub struct History {
    devices: Vec<PastDevice>,
    step_ms: i64,
    next_ms: i64,
    to_ms: i64,
    from_ms: i64,
    bad_from: i64,
}

impl History {
    /// The fleet of `config` (plus the terminal that goes quiet) over
    /// `[from_ms, to_ms)`, a reading of each kind every `step`.
    pub fn new(config: &SimConfig, from_ms: i64, to_ms: i64, step: std::time::Duration) -> History {
        let step_ms = (step.as_millis() as i64).max(1_000);
        let day = |n: i64| from_ms + n * DAY_MS;
        let span = to_ms - from_ms;
        // Within the span, however short it is.
        let within = |at: i64| at.clamp(from_ms, to_ms);
        let plain = SimConfig {
            faults: crate::Faults::none(),
            ..config.clone()
        };
        let devices = (0..=config.devices)
            .map(|index| {
                let plan = DevicePlan::new(&plain, index);
                let mut rng = StdRng::seed_from_u64(mix(config.seed, index, 99));
                let mut signals = Signals::new(&mut rng, plan.model_index);
                // A working day takes 40-115% of a handheld's charge: most
                // get through it, some run low by the evening.
                signals.drain_per_min = (0.06, 0.16);
                // One terminal is tampered with, on the sixth day.
                signals.tamper_chance = 0.0;
                let first_store = plan.merchant_id == "m-000" && plan.store_id == "m-000-s0";
                let story = Story {
                    outage: if index == 1 {
                        Some((within(day(1) + 9 * HOUR_MS), within(day(1) + 14 * HOUR_MS)))
                    } else if first_store && span > 3 * DAY_MS {
                        Some((within(day(3) + 10 * HOUR_MS), within(day(3) + 13 * HOUR_MS)))
                    } else {
                        None
                    },
                    reboot_hour: (index == 2).then_some(3),
                    quiet_from: (index == config.devices).then(|| to_ms - 2 * HOUR_MS),
                    tamper_from: (index == 5).then(|| within(day(5) + 15 * HOUR_MS)),
                };
                PastDevice {
                    plan,
                    story,
                    // Its own stream from here: boot ids and readings differ
                    // from the live simulator's.
                    boot_id: mix(config.seed, index, 97),
                    rng: StdRng::seed_from_u64(mix(config.seed, index, 96)),
                    signals,
                    seq: 0,
                    buffered: Vec::new(),
                    online: false,
                    seed: config.seed,
                }
            })
            .collect();
        History {
            devices,
            step_ms,
            next_ms: from_ms,
            to_ms,
            from_ms,
            bad_from: day(2),
        }
    }

    /// The terminals' ids, the quiet one last.
    pub fn device_ids(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| d.plan.device_id.clone())
            .collect()
    }
}

impl Iterator for History {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let t_ms = self.next_ms;
        if t_ms >= self.to_ms {
            return None;
        }
        self.next_ms += self.step_ms;
        let first = t_ms == self.from_ms;
        let mut messages = Vec::new();
        for device in &mut self.devices {
            // Spread over the step as terminals' clocks are.
            let at = t_ms + (device.plan.index as i64 * 977) % self.step_ms.min(60_000);
            device.step(at, first, self.step_ms, self.bad_from, &mut messages);
        }
        Some(Step {
            at_ms: t_ms,
            messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fleet() -> SimConfig {
        SimConfig {
            devices: 12,
            merchants: 2,
            seed: 5,
            ..SimConfig::default()
        }
    }

    const FROM: i64 = 1_795_132_800_000;

    fn decode_telemetry(m: &Message) -> Vec<pb::Reading> {
        pb::TelemetryBatch::decode(&m.payload[..]).unwrap().readings
    }

    #[test]
    fn the_same_fleet_gives_the_same_past() {
        let a: Vec<Step> =
            History::new(&fleet(), FROM, FROM + 6 * HOUR_MS, Duration::from_secs(300)).collect();
        let b: Vec<Step> =
            History::new(&fleet(), FROM, FROM + 6 * HOUR_MS, Duration::from_secs(300)).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 72);
    }

    #[test]
    fn every_terminal_says_who_it_is_then_reads_every_step() {
        let steps: Vec<Step> =
            History::new(&fleet(), FROM, FROM + 2 * HOUR_MS, Duration::from_secs(600)).collect();
        // Two hours: the quiet one is quiet from the start.
        let infos = steps[0]
            .messages
            .iter()
            .filter(|m| m.topic.ends_with("/info"))
            .count();
        assert_eq!(infos, 12);
        let readings: usize = steps
            .iter()
            .flat_map(|s| &s.messages)
            .filter(|m| m.topic.ends_with("/telemetry"))
            .map(|m| decode_telemetry(m).len())
            .sum();
        assert_eq!(readings, 12 * 12 * 4);
    }

    #[test]
    fn an_outage_is_replayed_late_and_the_quiet_terminal_stays_offline() {
        let to = FROM + 7 * DAY_MS;
        let steps: Vec<Step> = History::new(&fleet(), FROM, to, Duration::from_secs(600)).collect();
        // Terminal 1 comes back at 14:00 on the second day with 5 h of
        // readings sampled before they arrive.
        let back = FROM + DAY_MS + 14 * HOUR_MS;
        let late: usize = steps
            .iter()
            .filter(|s| s.at_ms == back)
            .flat_map(|s| &s.messages)
            .filter(|m| m.topic == "tw/v1/m-001/term-00001/telemetry")
            .flat_map(decode_telemetry)
            .filter(|r| r.sampled_at_ms < back)
            .count();
        assert_eq!(late, 5 * 6 * 4);
        let quiet = "tw/v1/m-000/term-00012/";
        let last = steps
            .iter()
            .rfind(|s| s.messages.iter().any(|m| m.topic.starts_with(quiet)))
            .unwrap();
        assert_eq!(last.at_ms, to - 2 * HOUR_MS);
        let will = pb::DeviceStatus::decode(
            &last
                .messages
                .iter()
                .find(|m| m.topic.starts_with(quiet))
                .unwrap()
                .payload[..],
        )
        .unwrap();
        assert_eq!(will.state, pb::ConnectionState::Offline as i32);
    }

    #[test]
    fn the_nightly_reboot_starts_a_new_boot() {
        let steps: Vec<Step> =
            History::new(&fleet(), FROM, FROM + 2 * DAY_MS, Duration::from_secs(600)).collect();
        let boots: std::collections::BTreeSet<u64> = steps
            .iter()
            .flat_map(|s| &s.messages)
            .filter(|m| m.topic == "tw/v1/m-000/term-00002/telemetry")
            .flat_map(decode_telemetry)
            .map(|r| r.boot_id)
            .collect();
        assert_eq!(boots.len(), 3, "the first boot and one a night");
    }
}
