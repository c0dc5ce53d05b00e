//! Which terminals served a merchant (or one of its stores) on each of its
//! last rolled-up days, from the `device_health_daily` partitions.
//!
//! A terminal belongs to a store for the hours it was there (see
//! `tillwatch_domain::attribution`): one moved mid-day shows on both
//! stores' pages that day, each with its hours there.

use schemars::JsonSchema;
use serde::Serialize;
use tillwatch_storage::outputs::DEVICE_HEALTH_DAILY;

use crate::Queries;
use crate::cohorts::{day_path, rolled_up_days};
use crate::error::{QueryError, blocking};

/// The most days one question reads.
pub const MAX_DAYS: u32 = 31;

/// One terminal at one store on one day.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct TerminalDay {
    pub device_id: String,
    pub store_id: Option<String>,
    pub hours_reported: Option<i64>,
    pub transactions: Option<i64>,
    pub crashes: Option<i64>,
    pub hangs: Option<i64>,
    pub battery_min_pct: Option<f64>,
    pub minutes_online: Option<f64>,
}

/// The terminals of one day, by device and store.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ServedDay {
    /// `2026-11-22`.
    pub day: String,
    pub terminals: Vec<TerminalDay>,
}

/// A merchant's (or store's) last days, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MerchantDays {
    pub merchant_id: String,
    pub store_id: Option<String>,
    pub days: Vec<ServedDay>,
}

const COLUMNS: [&str; 8] = [
    "device_id",
    "store_id",
    "hours_reported",
    "transactions",
    "crashes",
    "hangs",
    "battery_min_pct",
    "minutes_online",
];

impl Queries {
    /// The terminals that served `merchant_id` (only at `store_id`, when
    /// given) on each of its newest `days` rolled-up days (1 to
    /// [`MAX_DAYS`], default 7).
    pub async fn merchant_days(
        &self,
        merchant_id: &str,
        store_id: Option<&str>,
        days: Option<u32>,
    ) -> Result<MerchantDays, QueryError> {
        let wanted = days.unwrap_or(7);
        if !(1..=MAX_DAYS).contains(&wanted) {
            return Err(QueryError::invalid(
                "days",
                format!("must be 1 to {MAX_DAYS}, not {wanted}"),
            ));
        }
        let lake = self.lake.clone();
        let (merchant, store) = (merchant_id.to_string(), store_id.map(str::to_string));
        let days = blocking(move || {
            let mut out = Vec::new();
            for day in rolled_up_days(&lake, DEVICE_HEALTH_DAILY, wanted as usize)? {
                let path = day_path(&lake, DEVICE_HEALTH_DAILY, day);
                let mut equal = vec![("merchant_id", merchant.as_str())];
                if let Some(store) = &store {
                    equal.push(("store_id", store.as_str()));
                }
                let rows = lake.read_rows(&path, &COLUMNS, &equal)?;
                let n = rows.len();
                let texts = |c| rows.texts(c).unwrap_or_else(|| vec![None; n]);
                let ints = |c| rows.ints(c).unwrap_or_else(|| vec![None; n]);
                let floats = |c| rows.floats(c).unwrap_or_else(|| vec![None; n]);
                let (device, store_ids) = (texts("device_id"), texts("store_id"));
                let (hours, transactions) = (ints("hours_reported"), ints("transactions"));
                let (crashes, hangs) = (ints("crashes"), ints("hangs"));
                let (battery, online) = (floats("battery_min_pct"), floats("minutes_online"));
                let mut terminals: Vec<TerminalDay> = (0..n)
                    .map(|i| TerminalDay {
                        device_id: device[i].clone().unwrap_or_default(),
                        store_id: store_ids[i].clone(),
                        hours_reported: hours[i],
                        transactions: transactions[i],
                        crashes: crashes[i],
                        hangs: hangs[i],
                        battery_min_pct: battery[i],
                        minutes_online: online[i],
                    })
                    .collect();
                terminals.sort_by(|a, b| {
                    (a.device_id.as_str(), a.store_id.as_deref())
                        .cmp(&(b.device_id.as_str(), b.store_id.as_deref()))
                });
                out.push(ServedDay {
                    day: day.key(),
                    terminals,
                });
            }
            Ok(out)
        })
        .await?;
        Ok(MerchantDays {
            merchant_id: merchant_id.to_string(),
            store_id: store_id.map(str::to_string),
            days,
        })
    }
}
