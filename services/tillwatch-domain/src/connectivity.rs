//! Connectivity state per terminal: online, offline by last will (the
//! broker published the device's will: immediate), offline by silence (no
//! telemetry for longer than the device's own cadence allows), offline by
//! clean shutdown, and back online. Pure: the caller supplies every time,
//! so tests run on injected clocks.
//!
//! Times here are the *receive* times on Tillwatch's clock: a terminal
//! replaying a backlog with old sample times is alive now, and a will's
//! payload was written when the session began, not when it died.
//!
//! **Architecture Invariant:** activity is telemetry. Status messages move
//! the state only as the state machine allows; MQTT pings never reach it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::{BootId, DeviceId, StatusReason, UtcMillis};

/// How silence is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SilencePolicy {
    /// A device is silent after this many of its usual gaps...
    pub gaps: f64,
    /// ...but never sooner than this (ms)...
    pub floor_ms: i64,
    /// ...nor later than this (ms).
    pub ceiling_ms: i64,
    /// The gap assumed before a device's cadence is learned (ms).
    pub initial_gap_ms: i64,
}

impl Default for SilencePolicy {
    fn default() -> Self {
        SilencePolicy {
            gaps: 3.0,
            floor_ms: 30_000,
            ceiling_ms: 30 * 60_000,
            initial_gap_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfflineReason {
    /// The broker published the device's last will: an unclean disconnect.
    LastWill,
    /// The device said goodbye before disconnecting.
    Shutdown,
    /// No telemetry for longer than its cadence allows.
    Silence,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::LastWill => "last_will",
            OfflineReason::Shutdown => "shutdown",
            OfflineReason::Silence => "silence",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    Online,
    Offline(OfflineReason),
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Online => "online",
            ConnState::Offline(r) => r.as_str(),
        }
    }

    /// The inverse of [`ConnState::as_str`].
    pub fn parse(s: &str) -> Option<ConnState> {
        Some(match s {
            "online" => ConnState::Online,
            "last_will" => ConnState::Offline(OfflineReason::LastWill),
            "shutdown" => ConnState::Offline(OfflineReason::Shutdown),
            "silence" => ConnState::Offline(OfflineReason::Silence),
            _ => return None,
        })
    }
}

/// Everything a [`DeviceConnectivity`] knows, to persist across restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectivitySnapshot {
    pub state: Option<ConnState>,
    pub since: UtcMillis,
    pub boot: Option<BootId>,
    pub last_telemetry: Option<UtcMillis>,
    pub gap_ms: Option<f64>,
}

/// A change of state, for the history and for alerting.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// `None` for a device seen for the first time.
    pub from: Option<ConnState>,
    pub to: ConnState,
    pub at: UtcMillis,
}

/// One device's connectivity.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConnectivity {
    state: Option<ConnState>,
    since: UtcMillis,
    boot: Option<BootId>,
    last_telemetry: Option<UtcMillis>,
    /// Learned gap between telemetry arrivals (ms), an exponential average.
    gap_ms: Option<f64>,
}

impl Default for DeviceConnectivity {
    fn default() -> Self {
        DeviceConnectivity {
            state: None,
            since: UtcMillis(0),
            boot: None,
            last_telemetry: None,
            gap_ms: None,
        }
    }
}

impl DeviceConnectivity {
    pub fn snapshot(&self) -> ConnectivitySnapshot {
        ConnectivitySnapshot {
            state: self.state,
            since: self.since,
            boot: self.boot,
            last_telemetry: self.last_telemetry,
            gap_ms: self.gap_ms,
        }
    }

    pub fn restore(s: ConnectivitySnapshot) -> DeviceConnectivity {
        DeviceConnectivity {
            state: s.state,
            since: s.since,
            boot: s.boot,
            last_telemetry: s.last_telemetry,
            gap_ms: s.gap_ms,
        }
    }

    pub fn state(&self) -> Option<ConnState> {
        self.state
    }

    pub fn since(&self) -> UtcMillis {
        self.since
    }

    /// The learned gap between readings, if any.
    pub fn cadence_ms(&self) -> Option<f64> {
        self.gap_ms
    }

    fn go(&mut self, to: ConnState, at: UtcMillis) -> Option<Transition> {
        if self.state == Some(to) {
            return None;
        }
        let from = self.state.replace(to);
        self.since = at;
        Some(Transition { from, to, at })
    }

    /// Telemetry arrived at `now`: the device is online.
    pub fn on_telemetry(&mut self, now: UtcMillis) -> Option<Transition> {
        if let Some(last) = self.last_telemetry {
            let gap = (now.0 - last.0) as f64;
            // Several readings of one message arrive together: only real
            // gaps teach the cadence.
            if gap >= 1_000.0 {
                // Whole milliseconds: plenty, and exact wherever it is stored.
                self.gap_ms = Some(match self.gap_ms {
                    None => gap,
                    Some(avg) => (avg * 0.8 + gap * 0.2).round(),
                });
            }
        }
        self.last_telemetry = Some(self.last_telemetry.map_or(now, |l| l.max(now)));
        self.go(ConnState::Online, now)
    }

    /// A status message (birth, shutdown or last will) arrived at `now`.
    pub fn on_status(
        &mut self,
        online: bool,
        reason: StatusReason,
        boot: BootId,
        now: UtcMillis,
    ) -> Option<Transition> {
        if online {
            self.boot = Some(boot);
            return self.go(ConnState::Online, now);
        }
        // A goodbye from an older session, arriving after the device came
        // back with a new boot, is stale.
        if self.boot.is_some_and(|b| b != boot) {
            return None;
        }
        let why = match reason {
            StatusReason::Shutdown => OfflineReason::Shutdown,
            _ => OfflineReason::LastWill,
        };
        self.go(ConnState::Offline(why), now)
    }

    /// When the device counts as silent if nothing arrives, while online.
    pub fn silence_deadline(&self, policy: &SilencePolicy) -> Option<UtcMillis> {
        self.silence_deadline_since(policy, None)
    }

    /// [`DeviceConnectivity::silence_deadline`] counting silence from no
    /// earlier than `listening_since`: the moment whoever listens could
    /// hear the device again (its broker connection came back), so a
    /// silence it could not have heard is not the device's.
    pub fn silence_deadline_since(
        &self,
        policy: &SilencePolicy,
        listening_since: Option<UtcMillis>,
    ) -> Option<UtcMillis> {
        if self.state != Some(ConnState::Online) {
            return None;
        }
        let mut last = self.last_telemetry.unwrap_or(self.since);
        if let Some(floor) = listening_since {
            last = last.max(floor);
        }
        let gap = self.gap_ms.unwrap_or(policy.initial_gap_ms as f64);
        let allowed = ((gap * policy.gaps) as i64).clamp(policy.floor_ms, policy.ceiling_ms);
        Some(UtcMillis(last.0.saturating_add(allowed)))
    }

    /// The clock reached `now`: silent devices go offline.
    pub fn on_time(&mut self, now: UtcMillis, policy: &SilencePolicy) -> Option<Transition> {
        self.on_time_since(now, policy, None)
    }

    /// [`DeviceConnectivity::on_time`] with silence counted from no
    /// earlier than `listening_since`.
    pub fn on_time_since(
        &mut self,
        now: UtcMillis,
        policy: &SilencePolicy,
        listening_since: Option<UtcMillis>,
    ) -> Option<Transition> {
        match self.silence_deadline_since(policy, listening_since) {
            Some(deadline) if now >= deadline => {
                self.go(ConnState::Offline(OfflineReason::Silence), deadline)
            }
            _ => None,
        }
    }
}

/// Per-device silence deadlines in a heap, so the next one is known
/// without scanning every device. A device's newer deadline supersedes its
/// older entries (they are skipped when they surface).
#[derive(Debug, Default)]
pub struct SilenceTimers {
    heap: BinaryHeap<Reverse<(i64, u64, DeviceId)>>,
    current: HashMap<DeviceId, u64>,
    next_generation: u64,
}

impl SilenceTimers {
    /// Sets (or, with `None`, clears) a device's deadline.
    pub fn set(&mut self, device: &DeviceId, deadline: Option<UtcMillis>) {
        match deadline {
            Some(at) => {
                self.next_generation += 1;
                let generation = self.next_generation;
                self.current.insert(device.clone(), generation);
                self.heap.push(Reverse((at.0, generation, device.clone())));
            }
            None => {
                self.current.remove(device);
            }
        }
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<UtcMillis> {
        while let Some(Reverse((at, generation, device))) = self.heap.peek() {
            if self.current.get(device) == Some(generation) {
                return Some(UtcMillis(*at));
            }
            self.heap.pop();
        }
        None
    }

    /// Devices whose deadline is at or before `now`, earliest first; their
    /// deadlines are cleared.
    pub fn due(&mut self, now: UtcMillis) -> Vec<DeviceId> {
        let mut out = Vec::new();
        while let Some(at) = self.next_deadline() {
            if at.0 > now.0 {
                break;
            }
            let Reverse((_, _, device)) = self.heap.pop().expect("peeked");
            self.current.remove(&device);
            out.push(device);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn t(ms: i64) -> UtcMillis {
        UtcMillis(ms)
    }

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn states_round_trip_through_text_and_snapshots() {
        for s in [
            ConnState::Online,
            ConnState::Offline(OfflineReason::LastWill),
            ConnState::Offline(OfflineReason::Shutdown),
            ConnState::Offline(OfflineReason::Silence),
        ] {
            assert_eq!(ConnState::parse(s.as_str()), Some(s));
        }
        let mut d = DeviceConnectivity::default();
        d.on_status(true, StatusReason::Birth, BootId(9), t(0));
        d.on_telemetry(t(10_000));
        d.on_telemetry(t(30_000));
        assert_eq!(DeviceConnectivity::restore(d.snapshot()), d);
    }

    #[test]
    fn first_telemetry_brings_a_device_online_once() {
        let mut d = DeviceConnectivity::default();
        let first = d.on_telemetry(t(1_000)).unwrap();
        assert_eq!((first.from, first.to), (None, ConnState::Online));
        assert_eq!(d.on_telemetry(t(61_000)), None, "no change, no transition");
    }

    #[test]
    fn a_last_will_is_offline_at_once_and_telemetry_brings_it_back() {
        let mut d = DeviceConnectivity::default();
        d.on_status(true, StatusReason::Birth, BootId(1), t(0));
        d.on_telemetry(t(1_000));
        let will = d
            .on_status(false, StatusReason::ConnectionLost, BootId(1), t(5_000))
            .unwrap();
        assert_eq!(will.to, ConnState::Offline(OfflineReason::LastWill));
        assert_eq!(will.at, t(5_000));
        let back = d.on_telemetry(t(9_000)).unwrap();
        assert_eq!(
            (back.from, back.to),
            (
                Some(ConnState::Offline(OfflineReason::LastWill)),
                ConnState::Online
            )
        );
        let bye = d
            .on_status(false, StatusReason::Shutdown, BootId(1), t(10_000))
            .unwrap();
        assert_eq!(bye.to, ConnState::Offline(OfflineReason::Shutdown));
    }

    #[test]
    fn a_stale_will_from_an_old_session_is_ignored() {
        let mut d = DeviceConnectivity::default();
        d.on_status(true, StatusReason::Birth, BootId(1), t(0));
        // The device rebooted and came back before the broker's will for the
        // old session was processed.
        d.on_status(true, StatusReason::Birth, BootId(2), t(1_000));
        assert_eq!(
            d.on_status(false, StatusReason::ConnectionLost, BootId(1), t(2_000)),
            None
        );
        assert_eq!(d.state(), Some(ConnState::Online));
    }

    #[test]
    fn silence_the_listener_could_not_hear_counts_from_when_it_could() {
        let policy = SilencePolicy::default();
        let mut d = DeviceConnectivity::default();
        for i in 0..20 {
            d.on_telemetry(t(i * 20_000));
        }
        let last = 19 * 20_000;
        // The listener lost the broker at `last` and had it back 10 min
        // later: the device gets its 60 s from then, not from `last`.
        let back = t(last + 600_000);
        assert_eq!(
            d.silence_deadline_since(&policy, Some(back)),
            Some(t(back.0 + 60_000))
        );
        assert_eq!(d.on_time_since(back, &policy, Some(back)), None);
        let silent = d
            .on_time_since(t(back.0 + 60_000), &policy, Some(back))
            .unwrap();
        assert_eq!(silent.at, t(back.0 + 60_000));
        // Heard after the listener came back: its own time counts.
        let mut later = DeviceConnectivity::default();
        later.on_telemetry(t(back.0 + 5_000));
        assert_eq!(
            later.silence_deadline_since(&policy, Some(back)),
            later.silence_deadline(&policy)
        );
    }

    #[test]
    fn silence_is_judged_by_the_devices_own_cadence_within_floor_and_ceiling() {
        let policy = SilencePolicy::default();
        // A device reporting every 20 s: silent after 3 gaps = 60 s.
        let mut fast = DeviceConnectivity::default();
        for i in 0..20 {
            fast.on_telemetry(t(i * 20_000));
        }
        let last = 19 * 20_000;
        assert_eq!(fast.silence_deadline(&policy), Some(t(last + 60_000)));
        assert_eq!(fast.on_time(t(last + 59_999), &policy), None);
        let silent = fast.on_time(t(last + 60_000), &policy).unwrap();
        assert_eq!(silent.to, ConnState::Offline(OfflineReason::Silence));
        assert_eq!(
            silent.at,
            t(last + 60_000),
            "dated at the deadline, not the check"
        );

        // Every 2 s: 3 gaps is 6 s, held up to the 30 s floor.
        let mut chatty = DeviceConnectivity::default();
        for i in 0..50 {
            chatty.on_telemetry(t(i * 2_000));
        }
        assert_eq!(
            chatty.silence_deadline(&policy),
            Some(t(49 * 2_000 + 30_000))
        );

        // Every hour: capped at the 30 min ceiling.
        let mut sleepy = DeviceConnectivity::default();
        for i in 0..5 {
            sleepy.on_telemetry(t(i * 60 * MIN));
        }
        assert_eq!(
            sleepy.silence_deadline(&policy),
            Some(t(4 * 60 * MIN + 30 * MIN))
        );

        // Before any cadence is known: the initial gap.
        let mut new = DeviceConnectivity::default();
        new.on_telemetry(t(0));
        assert_eq!(new.silence_deadline(&policy), Some(t(3 * MIN)));
    }

    #[test]
    fn an_offline_device_has_no_silence_deadline() {
        let policy = SilencePolicy::default();
        let mut d = DeviceConnectivity::default();
        d.on_telemetry(t(0));
        d.on_status(false, StatusReason::ConnectionLost, BootId(1), t(1_000));
        assert_eq!(d.silence_deadline(&policy), None);
        assert_eq!(d.on_time(t(100 * MIN), &policy), None);
    }

    #[test]
    fn timers_yield_due_devices_in_order_and_honour_the_newest_deadline() {
        let mut timers = SilenceTimers::default();
        timers.set(&dev("a"), Some(t(300)));
        timers.set(&dev("b"), Some(t(100)));
        timers.set(&dev("c"), Some(t(200)));
        // b reported again: its deadline moves later.
        timers.set(&dev("b"), Some(t(400)));
        // c went offline: no deadline.
        timers.set(&dev("c"), None);
        assert_eq!(timers.next_deadline(), Some(t(300)));
        assert_eq!(timers.due(t(250)), Vec::<DeviceId>::new());
        assert_eq!(timers.due(t(1_000)), vec![dev("a"), dev("b")]);
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
    }
}
