//! What the rollups read beside the lake, from the metadata store:
//!
//! - minutes online per device and hour, from the connectivity state
//!   history the alerter keeps, and the readings expected in that time at
//!   the terminal's learned reporting interval (`device_health_hourly`:
//!   completeness is readings received over expected);
//! - each device's local time zone, its store's from the merchant
//!   directory or else the one the terminal reports, and its model
//!   (`device_health_daily`, whose model column the fleet cohorts group
//!   by).
//!
//! - which merchant and store each terminal's hour belongs to, from the
//!   history of its identity the registry keeps (`device_health_hourly`;
//!   see [`hour_attribution`]); and, for the scheduler, a fingerprint of
//!   each hour's attribution, so an hour rolled up before its terminals'
//!   info arrived (or before a move was known) runs again by itself.
//!
//! Both engines get them as small tables: DataFusion as in-memory tables,
//! ClickHouse as rows inserted into `rollup_minutes_online`,
//! `rollup_devices`, `rollup_zone_hours` (migration 008) and
//! `rollup_attribution` (009), one partition per interval, cleared before
//! and after the run.
//!
//! **Store-local days.** A daily partition is named by a date D. Each
//! terminal's hours count in D when their start, read in the terminal's
//! zone, falls on D (so a DST day has 23 or 25 hours, and in a zone half
//! an hour off, the hour that straddles midnight counts for the day it
//! starts in). Terminals without a zone count the UTC day. The partition
//! reads the hourly partitions from `east` hours before the UTC day to
//! `-west` hours after it (`scheduler.local_day_utc_offsets`); a zone that
//! reaches beyond is warned about and counted within the span only.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tillwatch_domain::attribution::{Terminal, Version, hour_fingerprints};
use tillwatch_meta::MetaStore;
pub use tillwatch_meta::{AttributionInputs, DeviceFacts, OnlineTime};
use tillwatch_scheduler::{Grain, JobError, Partition};

pub type SideFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, JobError>> + Send + 'a>>;

/// The metadata the rollups read.
pub trait SideInputs: Send + Sync {
    /// Each device's time online within `hour`.
    fn online_time(&self, hour: Partition) -> SideFuture<'_, Vec<OnlineTime>>;
    /// Each known device's time zone and model.
    fn devices(&self) -> SideFuture<'_, Vec<DeviceFacts>>;
    /// Every reporting device's span of samples and identity history.
    fn attribution(&self) -> SideFuture<'_, AttributionInputs>;
}

/// No state history and no zones: minutes online unknown, every day a UTC
/// day. For tools and benchmarks that run the jobs on the lake alone.
pub struct NoSideInputs;

impl SideInputs for NoSideInputs {
    fn online_time(&self, _: Partition) -> SideFuture<'_, Vec<OnlineTime>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn devices(&self) -> SideFuture<'_, Vec<DeviceFacts>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn attribution(&self) -> SideFuture<'_, AttributionInputs> {
        Box::pin(async { Ok(AttributionInputs::default()) })
    }
}

impl SideInputs for MetaStore {
    fn online_time(&self, hour: Partition) -> SideFuture<'_, Vec<OnlineTime>> {
        Box::pin(async move {
            MetaStore::online_time(self, hour.start_ms, hour.end_ms())
                .await
                .map_err(|e| JobError::read(format_args!("the connectivity history of {hour}"), e))
        })
    }

    fn devices(&self) -> SideFuture<'_, Vec<DeviceFacts>> {
        Box::pin(async move {
            self.device_facts()
                .await
                .map_err(|e| JobError::read("the devices' time zones and models", e))
        })
    }

    fn attribution(&self) -> SideFuture<'_, AttributionInputs> {
        Box::pin(async move {
            self.attribution_inputs()
                .await
                .map_err(|e| JobError::read("the devices' identity history", e))
        })
    }
}

/// Side inputs given up front (tests): time online by hour start.
#[derive(Debug, Default, Clone)]
pub struct FixedSideInputs {
    pub online: BTreeMap<i64, Vec<OnlineTime>>,
    pub devices: Vec<DeviceFacts>,
    pub attribution: AttributionInputs,
}

impl SideInputs for FixedSideInputs {
    fn online_time(&self, hour: Partition) -> SideFuture<'_, Vec<OnlineTime>> {
        let rows = self.online.get(&hour.start_ms).cloned().unwrap_or_default();
        Box::pin(async move { Ok(rows) })
    }

    fn devices(&self) -> SideFuture<'_, Vec<DeviceFacts>> {
        let rows = self.devices.clone();
        Box::pin(async move { Ok(rows) })
    }

    fn attribution(&self) -> SideFuture<'_, AttributionInputs> {
        let inputs = self.attribution.clone();
        Box::pin(async move { Ok(inputs) })
    }
}

/// A terminal's merchant and store for one hour of the hourly rollup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourAttribution {
    pub device_id: String,
    pub merchant_id: String,
    pub store_id: Option<String>,
}

/// The registry's facts as the attribution rules take them: each reporting
/// terminal with its versions, oldest first.
fn terminals(inputs: &AttributionInputs) -> Vec<Terminal<'_>> {
    let mut by_device: BTreeMap<&str, Vec<Version<'_>>> = BTreeMap::new();
    for v in &inputs.versions {
        by_device.entry(&v.device_id).or_default().push(Version {
            valid_from_ms: v.valid_from_ms,
            merchant_id: &v.merchant_id,
            store_id: v.store_id.as_deref(),
        });
    }
    for versions in by_device.values_mut() {
        versions.sort_by_key(|v| v.valid_from_ms);
    }
    let mut terminals: Vec<Terminal<'_>> = inputs
        .spans
        .iter()
        .map(|(device, first, last)| Terminal {
            device_id: device,
            first_ms: *first,
            last_ms: *last,
            versions: by_device.remove(device.as_str()).unwrap_or_default(),
        })
        .collect();
    // Known by their info alone so far: no span of readings yet.
    terminals.extend(by_device.into_iter().map(|(device, versions)| Terminal {
        device_id: device,
        first_ms: i64::MAX,
        last_ms: i64::MIN,
        versions,
    }));
    terminals
}

/// Which merchant and store each terminal belongs to for `hour`: the
/// version of its identity that held for most of the hour
/// (`tillwatch_domain::attribution`), for every terminal with one, whether
/// or not the registry has seen its readings of that hour yet (the rollup
/// joins only the terminals with readings in it). Terminals without any
/// recorded info are left out: the rollup then keeps what the gateway wrote
/// beside their readings.
pub fn hour_attribution(inputs: &AttributionInputs, hour: Partition) -> Vec<HourAttribution> {
    terminals(inputs)
        .iter()
        .filter_map(|t| {
            let owner = t.owner(hour.start_ms, hour.end_ms())?;
            Some(HourAttribution {
                device_id: t.device_id.to_string(),
                merchant_id: owner.merchant_id.to_string(),
                store_id: owner.store_id.map(str::to_string),
            })
        })
        .collect()
}

/// The fingerprint of each hour's attribution within `[from_ms, to_ms)`
/// (`tillwatch_domain::attribution::hour_fingerprints`), as the scheduler
/// compares fingerprints.
pub fn attribution_fingerprints(
    inputs: &AttributionInputs,
    from_ms: i64,
    to_ms: i64,
) -> std::collections::HashMap<i64, String> {
    hour_fingerprints(&terminals(inputs), from_ms, to_ms)
        .into_iter()
        .map(|(hour, sum)| (hour, format!("{sum:016x}")))
        .collect()
}

/// The zone key of devices without a (valid) zone: they count UTC days.
pub const UTC_KEY: &str = "";

const HOUR_MS: i64 = 3_600_000;

/// Which UTC hours of the hourly rollup count in each device's local day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalDay {
    /// Device → zone ([`UTC_KEY`] without a known one) and model.
    pub devices: Vec<(String, String, Option<String>)>,
    /// Every (zone, hour start) that counts in the day: for each zone of
    /// `devices` and for [`UTC_KEY`].
    pub zone_hours: Vec<(String, i64)>,
    /// Zones whose day reaches beyond the hours read, and unknown zones:
    /// (zone, what is wrong).
    pub warnings: Vec<(String, String)>,
}

fn date_of(at_ms: i64, tz: &TimeZone) -> Option<jiff::civil::Date> {
    Some(
        Timestamp::from_millisecond(at_ms)
            .ok()?
            .to_zoned(tz.clone())
            .date(),
    )
}

/// The local day `day` for `devices`, reading the hours of
/// `[from_ms, to_ms)`.
pub fn local_day(day: Partition, from_ms: i64, to_ms: i64, devices: Vec<DeviceFacts>) -> LocalDay {
    let date = date_of(day.start_ms, &TimeZone::UTC).expect("a partition is a valid instant");
    let mut names: BTreeSet<String> = devices.iter().filter_map(|d| d.time_zone.clone()).collect();
    let mut known: BTreeMap<String, TimeZone> = BTreeMap::new();
    let mut warnings = Vec::new();
    for name in std::mem::take(&mut names) {
        match TimeZone::get(&name) {
            Ok(tz) => {
                known.insert(name, tz);
            }
            Err(e) => {
                let text =
                    format!("time zone {name:?} is unknown ({e}); its terminals count UTC days");
                warnings.push((name, text));
            }
        }
    }
    let mut zone_hours: Vec<(String, i64)> =
        Partition::overlapping(Grain::Hour, day.start_ms, day.end_ms())
            .into_iter()
            .map(|h| (UTC_KEY.to_string(), h.start_ms))
            .collect();
    // Any zone's day lies within 14 h before and 12 h after the UTC day.
    let widest = Partition::overlapping(
        Grain::Hour,
        day.start_ms - 15 * HOUR_MS,
        day.end_ms() + 13 * HOUR_MS,
    );
    for (name, tz) in &known {
        let mut outside = 0;
        for hour in &widest {
            if date_of(hour.start_ms, tz) != Some(date) {
                continue;
            }
            if hour.start_ms < from_ms || hour.start_ms >= to_ms {
                outside += 1;
            } else {
                zone_hours.push((name.clone(), hour.start_ms));
            }
        }
        if outside > 0 {
            warnings.push((
                name.clone(),
                format!(
                    "the {date} of time zone {name} has {outside} hour(s) outside the hours read \
                     (scheduler.local_day_utc_offsets); they are not counted"
                ),
            ));
        }
    }
    let devices = devices
        .into_iter()
        .map(|d| {
            let zone = d.time_zone.filter(|z| known.contains_key(z));
            (d.device_id, zone.unwrap_or_default(), d.model)
        })
        .collect();
    LocalDay {
        devices,
        zone_hours,
        warnings,
    }
}

fn strings(values: impl Iterator<Item = String>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<StringArray>())
}

/// `online(device_id, minutes_online, readings_expected)` for DataFusion.
pub fn online_batch(rows: &[OnlineTime]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("minutes_online", DataType::Float64, false),
        Field::new("readings_expected", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            strings(rows.iter().map(|o| o.device_id.clone())),
            Arc::new(
                rows.iter()
                    .map(|o| o.minutes_online)
                    .collect::<Float64Array>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|o| o.readings_expected)
                    .collect::<Float64Array>(),
            ),
        ],
    )
    .expect("the columns match the schema")
}

/// `attribution(device_id, merchant_id, store_id)` for DataFusion.
pub fn attribution_batch(rows: &[HourAttribution]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("merchant_id", DataType::Utf8, false),
            Field::new("store_id", DataType::Utf8, true),
        ])),
        vec![
            strings(rows.iter().map(|a| a.device_id.clone())),
            strings(rows.iter().map(|a| a.merchant_id.clone())),
            Arc::new(
                rows.iter()
                    .map(|a| a.store_id.as_deref())
                    .collect::<StringArray>(),
            ),
        ],
    )
    .expect("the columns match the schema")
}

/// `rollup_attribution (hour, device_id, merchant_id, store_id)` rows as
/// RowBinary.
pub fn attribution_row_binary(hour: Partition, rows: &[HourAttribution]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in rows {
        put_time(&mut out, hour.start_ms);
        put_string(&mut out, &a.device_id);
        put_string(&mut out, &a.merchant_id);
        put_nullable(&mut out, a.store_id.as_deref());
    }
    out
}

/// `devices(device_id, zone, model)` and `zone_hours(zone, hour)` for
/// DataFusion.
pub fn local_day_batches(day: &LocalDay) -> (RecordBatch, RecordBatch) {
    let devices = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("zone", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, true),
        ])),
        vec![
            strings(day.devices.iter().map(|(d, _, _)| d.clone())),
            strings(day.devices.iter().map(|(_, z, _)| z.clone())),
            Arc::new(
                day.devices
                    .iter()
                    .map(|(_, _, m)| m.as_deref())
                    .collect::<StringArray>(),
            ),
        ],
    )
    .expect("the columns match the schema");
    let hours = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("zone", DataType::Utf8, false),
            Field::new(
                "hour",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ])),
        vec![
            strings(day.zone_hours.iter().map(|(z, _)| z.clone())),
            Arc::new(TimestampMillisecondArray::from(
                day.zone_hours.iter().map(|(_, h)| *h).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("the columns match the schema");
    (devices, hours)
}

pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_nullable(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(0);
            put_string(out, s);
        }
        None => out.push(1),
    }
}

fn put_time(out: &mut Vec<u8>, at_ms: i64) {
    let s = u32::try_from(at_ms.div_euclid(1000)).unwrap_or(0);
    out.extend_from_slice(&s.to_le_bytes());
}

/// `rollup_minutes_online (hour, device_id, minutes_online,
/// readings_expected)` rows as RowBinary.
pub fn online_row_binary(hour: Partition, rows: &[OnlineTime]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in rows {
        put_time(&mut out, hour.start_ms);
        put_string(&mut out, &o.device_id);
        out.extend_from_slice(&o.minutes_online.to_le_bytes());
        match o.readings_expected {
            Some(v) => {
                out.push(0);
                out.extend_from_slice(&v.to_le_bytes());
            }
            None => out.push(1),
        }
    }
    out
}

/// `rollup_devices (day, device_id, zone, model)` and
/// `rollup_zone_hours (day, zone, hour)` rows as RowBinary.
pub fn local_day_row_binary(day: Partition, local: &LocalDay) -> (Vec<u8>, Vec<u8>) {
    let mut devices = Vec::new();
    for (device, zone, model) in &local.devices {
        put_time(&mut devices, day.start_ms);
        put_string(&mut devices, device);
        put_string(&mut devices, zone);
        put_nullable(&mut devices, model.as_deref());
    }
    let mut hours = Vec::new();
    for (zone, hour) in &local.zone_hours {
        put_time(&mut hours, day.start_ms);
        put_string(&mut hours, zone);
        put_time(&mut hours, *hour);
    }
    (devices, hours)
}

/// Logs the first warning about each zone (a zone outside the span would
/// otherwise warn on every day's run).
pub fn warn_once(warnings: &[(String, String)]) {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    for (zone, text) in warnings {
        if seen.insert(zone.clone()) {
            tracing::warn!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(device: &str, zone: &str) -> DeviceFacts {
        DeviceFacts {
            device_id: device.into(),
            time_zone: Some(zone.into()),
            model: Some("A920".into()),
        }
    }

    fn hours_of(day: &LocalDay, zone: &str) -> Vec<String> {
        day.zone_hours
            .iter()
            .filter(|(z, _)| z == zone)
            .map(|(_, h)| Partition::containing(Grain::Hour, *h).key())
            .collect()
    }

    #[test]
    fn each_zone_counts_the_hours_that_start_on_its_local_date() {
        let day = Partition::parse_key("2026-03-29").unwrap();
        let devices = [
            ("berlin", "Europe/Berlin"),
            ("ny", "America/New_York"),
            ("kolkata", "Asia/Kolkata"),
            ("nowhere", "Mars/Olympus"),
        ]
        .map(|(d, z)| facts(d, z))
        .to_vec();
        let local = local_day(
            day,
            day.start_ms - 14 * HOUR_MS,
            day.end_ms() + 12 * HOUR_MS,
            devices,
        );
        // Berlin moves to summer time on 2026-03-29: 23 hours, from
        // 23:00 UTC the day before to 21:00 UTC.
        let berlin = hours_of(&local, "Europe/Berlin");
        assert_eq!(berlin.len(), 23);
        assert_eq!(berlin[0], "2026-03-28T23");
        assert_eq!(berlin[22], "2026-03-29T21");
        // New York (already on summer time, UTC-4): 04:00 to 03:00 next day.
        let ny = hours_of(&local, "America/New_York");
        assert_eq!((ny.len(), ny[0].as_str()), (24, "2026-03-29T04"));
        // Kolkata (UTC+5:30): the hour starting 18:00 UTC is 23:30 local,
        // so the day starts with the 19:00 UTC hour... of the 28th.
        let kolkata = hours_of(&local, "Asia/Kolkata");
        assert_eq!((kolkata.len(), kolkata[0].as_str()), (24, "2026-03-28T19"));
        assert_eq!(hours_of(&local, UTC_KEY).len(), 24);
        assert_eq!(
            local.devices[3].1, UTC_KEY,
            "the unknown zone counts UTC days"
        );
        assert_eq!(local.devices[0].2.as_deref(), Some("A920"));
        assert_eq!(local.warnings[0].0, "Mars/Olympus");
    }

    fn version(device: &str, from: i64, store: &str) -> tillwatch_meta::AttributeVersion {
        tillwatch_meta::AttributeVersion {
            device_id: device.into(),
            valid_from_ms: from,
            merchant_id: "m-1".into(),
            store_id: Some(store.into()),
            model: None,
            serial: None,
            firmware_version: None,
            app_version: None,
            time_zone: None,
            recorded_at_ms: 0,
        }
    }

    #[test]
    fn the_registry_s_facts_attribute_each_terminal_s_hour() {
        let m = 60_000;
        let inputs = AttributionInputs {
            spans: vec![
                ("a".into(), 10 * HOUR_MS, 20 * HOUR_MS),
                ("no-info".into(), 0, 30 * HOUR_MS),
            ],
            // In any order: the newest first here. "b" is known by its
            // info alone (the registry has seen none of its readings).
            versions: vec![
                version("a", 14 * HOUR_MS + 40 * m, "s-2"),
                version("b", 0, "s-7"),
                version("a", 12 * HOUR_MS, "s-1"),
            ],
        };
        let at = |hour: i64| {
            hour_attribution(&inputs, Partition::containing(Grain::Hour, hour * HOUR_MS))
        };
        let store = |hour: i64, device: &str| {
            at(hour)
                .into_iter()
                .find(|a| a.device_id == device)
                .map(|a| (a.merchant_id, a.store_id.unwrap_or_default()))
        };
        assert_eq!(store(14, "a"), Some(("m-1".into(), "s-1".into())));
        assert_eq!(store(15, "a").unwrap().1, "s-2");
        assert_eq!(store(25, "a").unwrap().1, "s-2", "after its readings too");
        assert_eq!(store(3, "b").unwrap().1, "s-7");
        assert_eq!(
            store(3, "no-info"),
            None,
            "no info: the gateway's store stays"
        );
        let fingerprints = attribution_fingerprints(&inputs, 0, 40 * HOUR_MS);
        assert_eq!(
            fingerprints.len(),
            11,
            "a's hours 10 to 20; b has no span yet"
        );
        assert!(fingerprints.values().all(|f| f.len() == 16));
    }

    #[test]
    fn hours_beyond_the_span_read_are_left_out_and_warned_about() {
        let day = Partition::parse_key("2026-11-20").unwrap();
        // Read only the UTC day, but a terminal is in Tokyo (UTC+9).
        let local = local_day(
            day,
            day.start_ms,
            day.end_ms(),
            vec![facts("t", "Asia/Tokyo")],
        );
        let tokyo = hours_of(&local, "Asia/Tokyo");
        assert_eq!(tokyo.len(), 15);
        assert_eq!(tokyo[0], "2026-11-20T00");
        assert!(
            local.warnings[0].1.contains("9 hour(s)"),
            "{:?}",
            local.warnings
        );
    }
}
