//! The history of each terminal's identity: every change of merchant,
//! store, model, serial, firmware or app version and time zone, valid from
//! the time the terminal stamped on its info message until the next one.
//! The alerter records it as info messages arrive (in any order: a late
//! one slots into the past); the rollups attribute readings from it
//! (`tillwatch_domain::attribution` says which version a reading or an
//! hour belongs to).

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tillwatch_domain::DeviceInfo;

use crate::{MetaError, MetaStore};

/// One version of a terminal's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeVersion {
    pub device_id: String,
    /// When the terminal stamped the info message that started it.
    pub valid_from_ms: i64,
    pub merchant_id: String,
    pub store_id: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware_version: Option<String>,
    pub app_version: Option<String>,
    pub time_zone: Option<String>,
    /// When Tillwatch recorded it.
    pub recorded_at_ms: i64,
}

impl AttributeVersion {
    /// The version an info message describes.
    pub fn of_info(info: &DeviceInfo, recorded_at_ms: i64) -> AttributeVersion {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        AttributeVersion {
            device_id: info.device_id.as_str().to_string(),
            valid_from_ms: info.at.0,
            merchant_id: info.merchant_id.as_str().to_string(),
            store_id: info.store_id.as_ref().map(|s| s.as_str().to_string()),
            model: text(&info.model),
            serial: text(&info.serial),
            firmware_version: text(&info.firmware_version),
            app_version: text(&info.app_version),
            time_zone: text(&info.time_zone),
            recorded_at_ms,
        }
    }

    /// Whether two versions say the same of the terminal (times aside).
    pub fn same_identity(&self, other: &AttributeVersion) -> bool {
        (
            &self.merchant_id,
            &self.store_id,
            &self.model,
            &self.serial,
            &self.firmware_version,
            &self.app_version,
            &self.time_zone,
        ) == (
            &other.merchant_id,
            &other.store_id,
            &other.model,
            &other.serial,
            &other.firmware_version,
            &other.app_version,
            &other.time_zone,
        )
    }
}

const COLUMNS: &str = "device_id, valid_from_ms, merchant_id, store_id, model, serial, \
     firmware_version, app_version, time_zone, recorded_at_ms";

fn version_from_row(row: &AnyRow) -> Result<AttributeVersion, sqlx::Error> {
    Ok(AttributeVersion {
        device_id: row.try_get("device_id")?,
        valid_from_ms: row.try_get("valid_from_ms")?,
        merchant_id: row.try_get("merchant_id")?,
        store_id: row.try_get("store_id")?,
        model: row.try_get("model")?,
        serial: row.try_get("serial")?,
        firmware_version: row.try_get("firmware_version")?,
        app_version: row.try_get("app_version")?,
        time_zone: row.try_get("time_zone")?,
        recorded_at_ms: row.try_get("recorded_at_ms")?,
    })
}

/// What the rollups need to attribute readings: each terminal that has
/// reported, with the span of its sample times, and its versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributionInputs {
    /// `(device, oldest sample time, newest sample time)`, by device.
    pub spans: Vec<(String, i64, i64)>,
    /// Every version, by device, then oldest first.
    pub versions: Vec<AttributeVersion>,
}

/// Which neighbour of a new version [`MetaStore::neighbour`] reads.
enum Neighbour {
    InEffect,
    Next,
}

impl MetaStore {
    /// Records the version `info` describes, inside `tx`: nothing when the
    /// version in effect at its time already says the same; otherwise it
    /// starts there, and a following version that says the same as it is
    /// folded into it (an old info arriving late slots into the past).
    pub(crate) async fn record_attributes(
        &self,
        tx: &mut Transaction<'_, Any>,
        info: &DeviceInfo,
        recorded_at_ms: i64,
    ) -> Result<(), MetaError> {
        let new = AttributeVersion::of_info(info, recorded_at_ms);
        let before = self.neighbour(tx, &new, Neighbour::InEffect).await?;
        if before.as_ref().is_some_and(|b| b.same_identity(&new)) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO device_attributes (device_id, valid_from_ms, merchant_id, store_id, model, \
             serial, firmware_version, app_version, time_zone, recorded_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (device_id, valid_from_ms) DO UPDATE SET \
               merchant_id = excluded.merchant_id, store_id = excluded.store_id, \
               model = excluded.model, serial = excluded.serial, \
               firmware_version = excluded.firmware_version, app_version = excluded.app_version, \
               time_zone = excluded.time_zone, recorded_at_ms = excluded.recorded_at_ms",
        )
        .bind(&new.device_id)
        .bind(new.valid_from_ms)
        .bind(&new.merchant_id)
        .bind(&new.store_id)
        .bind(&new.model)
        .bind(&new.serial)
        .bind(&new.firmware_version)
        .bind(&new.app_version)
        .bind(&new.time_zone)
        .bind(new.recorded_at_ms)
        .execute(&mut **tx)
        .await
        .map_err(self.db())?;
        let after = self.neighbour(tx, &new, Neighbour::Next).await?;
        if let Some(after) = after.filter(|a| a.same_identity(&new)) {
            sqlx::query(
                "DELETE FROM device_attributes WHERE device_id = $1 AND valid_from_ms = $2",
            )
            .bind(&after.device_id)
            .bind(after.valid_from_ms)
            .execute(&mut **tx)
            .await
            .map_err(self.db())?;
        }
        Ok(())
    }

    /// The version of `new`'s terminal in effect at `new`'s start, or the
    /// one after it.
    async fn neighbour(
        &self,
        tx: &mut Transaction<'_, Any>,
        new: &AttributeVersion,
        which: Neighbour,
    ) -> Result<Option<AttributeVersion>, MetaError> {
        let (condition, order) = match which {
            Neighbour::InEffect => ("valid_from_ms <= $2", "valid_from_ms DESC"),
            Neighbour::Next => ("valid_from_ms > $2", "valid_from_ms"),
        };
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM device_attributes WHERE device_id = $1 AND {condition} \
             ORDER BY {order} LIMIT 1"
        ))
        .bind(&new.device_id)
        .bind(new.valid_from_ms)
        .fetch_optional(&mut **tx)
        .await
        .map_err(self.db())?
        .as_ref()
        .map(version_from_row)
        .transpose()
        .map_err(self.db())
    }

    /// A terminal's versions, oldest first.
    pub async fn attribute_history(
        &self,
        device_id: &str,
    ) -> Result<Vec<AttributeVersion>, MetaError> {
        self.all(sqlx::query(&format!(
            "SELECT {COLUMNS} FROM device_attributes WHERE device_id = $1 ORDER BY valid_from_ms"
        ))
        .bind(device_id), version_from_row).await
    }

    /// Every reporting terminal's span of sample times and every version:
    /// two reads, so the scheduler can fingerprint each hour's attribution
    /// and a rollup attribute its hour from the same facts.
    pub async fn attribution_inputs(&self) -> Result<AttributionInputs, MetaError> {
        let spans = self
            .all(
                sqlx::query(
                    "SELECT device_id, first_sample_ms, last_seen_ms FROM devices \
                     WHERE last_seen_ms IS NOT NULL AND first_sample_ms IS NOT NULL \
                     ORDER BY device_id",
                ),
                |r| {
                    Ok((
                        r.try_get("device_id")?,
                        r.try_get("first_sample_ms")?,
                        r.try_get("last_seen_ms")?,
                    ))
                },
            )
            .await?;
        let versions = self
            .all(
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM device_attributes ORDER BY device_id, valid_from_ms"
                )),
                version_from_row,
            )
            .await?;
        Ok(AttributionInputs { spans, versions })
    }
}
