//! Each device's view: its newest signals and the short windows of its
//! readings (disconnects, crashes, latency, battery), and what the rules
//! read from them.

use std::collections::{HashMap, VecDeque};

use jiff::tz::TimeZone;
use tillwatch_domain::connectivity::{ConnState, OfflineReason};
use tillwatch_domain::hours::{WeeklyHours, time_zone};

use super::{Engine, HOUR_MS, NO_RISK_S, StoreView};

#[derive(Debug, Default)]
pub(super) struct DeviceView {
    pub(super) merchant_id: String,
    pub(super) store_id: Option<String>,
    pub(super) model: Option<String>,
    pub(super) firmware_version: Option<String>,
    pub(super) app_version: Option<String>,
    pub(super) time_zone: Option<String>,
    /// First seen after the engine started: its windows are complete.
    pub(super) new_since_start: bool,
    pub(super) latest: HashMap<&'static str, (f64, i64)>,
    pub(super) disconnects: VecDeque<(i64, f64)>,
    pub(super) crashes: VecDeque<(i64, f64)>,
    /// (sampled at, mean latency, transactions).
    pub(super) latency: VecDeque<(i64, f64, f64)>,
    /// Levels while discharging.
    pub(super) battery: VecDeque<(i64, f64)>,
    pub(super) conn: Option<(ConnState, i64)>,
    /// When anything last came from or about it: a reading or info
    /// message arriving, a connectivity change.
    pub(super) last_seen_ms: i64,
}

impl DeviceView {
    /// Drops samples older than the windows (`keep_from`, and
    /// `forecast_from` for the battery), giving back emptied buffers.
    pub(super) fn prune(&mut self, keep_from: i64, forecast_from: i64) {
        prune(&mut self.disconnects, |s| s.0, keep_from);
        prune(&mut self.crashes, |s| s.0, keep_from);
        prune(&mut self.latency, |s| s.0, keep_from);
        prune(&mut self.battery, |s| s.0, forecast_from);
        for empty in [&mut self.disconnects, &mut self.crashes, &mut self.battery] {
            if empty.is_empty() && empty.capacity() > 0 {
                *empty = VecDeque::new();
            }
        }
        if self.latency.is_empty() && self.latency.capacity() > 0 {
            self.latency = VecDeque::new();
        }
    }
}

/// Weighted 95th percentile of per-interval mean latencies.
pub(super) fn p95(samples: &VecDeque<(i64, f64, f64)>) -> f64 {
    let mut by_latency: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.2 > 0.0)
        .map(|s| (s.1, s.2))
        .collect();
    let total: f64 = by_latency.iter().map(|s| s.1).sum();
    if total == 0.0 {
        return 0.0;
    }
    by_latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen = 0.0;
    for (latency, count) in &by_latency {
        seen += count;
        if seen >= 0.95 * total {
            return *latency;
        }
    }
    by_latency.last().map(|s| s.0).unwrap_or(0.0)
}

/// Least-squares slope of (ms, level), in % per hour.
pub(super) fn slope_per_hour(samples: &VecDeque<(i64, f64)>) -> f64 {
    let n = samples.len() as f64;
    let t0 = samples.front().map(|s| s.0).unwrap_or(0);
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for &(t, y) in samples {
        let x = (t - t0) as f64 / HOUR_MS as f64;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let denominator = n * sxx - sx * sx;
    if denominator.abs() < 1e-12 {
        0.0
    } else {
        (n * sxy - sx * sy) / denominator
    }
}

pub(super) fn prune<T>(window: &mut VecDeque<T>, time: impl Fn(&T) -> i64, from: i64) {
    while window.front().is_some_and(|s| time(s) < from) {
        window.pop_front();
    }
}

pub(super) fn sum(window: &VecDeque<(i64, f64)>, from: i64) -> f64 {
    window
        .iter()
        .filter(|s| s.0 >= from)
        .fold(0.0, |total, s| total + s.1)
}

impl Engine {
    pub(super) fn counts_as_offline(&self, state: ConnState) -> bool {
        match state {
            ConnState::Online => false,
            ConnState::Offline(OfflineReason::Shutdown) => self.include_shutdown,
            ConnState::Offline(_) => true,
        }
    }

    pub(super) fn store_of(&self, view: &DeviceView) -> Option<&StoreView> {
        let store = view.store_id.as_ref()?;
        self.stores.get(&(view.merchant_id.clone(), store.clone()))
    }

    /// The store's hours and zone (falling back to the terminal's zone).
    pub(super) fn store_hours(&self, view: &DeviceView) -> Option<(&WeeklyHours, TimeZone)> {
        let store = self.store_of(view)?;
        let hours = store.hours.as_ref()?;
        let tz = match &store.time_zone {
            Some(tz) => tz.clone(),
            None => time_zone(view.time_zone.as_deref()?).ok()?,
        };
        Some((hours, tz))
    }

    pub(super) fn signals(&self, view: &DeviceView, now: i64) -> HashMap<&'static str, f64> {
        let mut s: HashMap<&'static str, f64> = view
            .latest
            .iter()
            .map(|(k, (value, _))| (*k, *value))
            .collect();
        if let Some((state, _)) = view.conn {
            s.insert(
                "offline",
                f64::from(u8::from(self.counts_as_offline(state))),
            );
        }
        let hours = self.store_hours(view);
        if let Some((hours, tz)) = &hours {
            s.insert("store_closed", f64::from(u8::from(!hours.is_open(now, tz))));
        }
        let warm = |window: i64| view.new_since_start || now - self.started_at >= window;
        if warm(HOUR_MS) {
            s.insert(
                "disconnects_per_hour",
                sum(&view.disconnects, now - HOUR_MS),
            );
        }
        if warm(self.crash_window_ms) {
            s.insert(
                "crashes_in_window",
                sum(&view.crashes, now - self.crash_window_ms),
            );
        }
        if warm(self.latency_window_ms) {
            let from = now - self.latency_window_ms;
            let recent: VecDeque<_> = view
                .latency
                .iter()
                .filter(|x| x.0 >= from)
                .copied()
                .collect();
            s.insert("transaction_latency_p95_ms", p95(&recent));
        }
        if let Some(margin) = self.forecast(view, &mut s, hours, now) {
            s.insert("battery_forecast_margin_s", margin);
        }
        s
    }

    /// Seconds to spare between the battery reaching critical and the
    /// store closing (or the horizon); also records the drain rate.
    pub(super) fn forecast(
        &self,
        view: &DeviceView,
        s: &mut HashMap<&'static str, f64>,
        hours: Option<(&WeeklyHours, TimeZone)>,
        now: i64,
    ) -> Option<f64> {
        let (&level, &charging) = (s.get("battery_level_pct")?, s.get("battery_charging")?);
        if charging != 0.0 || level <= self.battery_critical_pct {
            return Some(NO_RISK_S);
        }
        let samples = &view.battery;
        let span = samples.back()?.0 - samples.front()?.0;
        if samples.len() < 3 || span < 10 * 60_000 {
            return None;
        }
        let drain = -slope_per_hour(samples);
        if drain <= 0.0 {
            return Some(NO_RISK_S);
        }
        let to_critical_s = (level - self.battery_critical_pct) / drain * 3600.0;
        s.insert("battery_drain_pct_per_hour", (drain * 10.0).round() / 10.0);
        s.insert("battery_minutes_to_critical", to_critical_s / 60.0);
        let until_s = match hours {
            Some((hours, tz)) => f64::from(hours.minutes_to_close(now, &tz)?) * 60.0,
            None => self.forecast_horizon_s,
        };
        Some(to_critical_s - until_s)
    }
}
