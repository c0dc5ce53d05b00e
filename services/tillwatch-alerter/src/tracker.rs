use std::collections::HashMap;

use tillwatch_domain::connectivity::{
    DeviceConnectivity, SilencePolicy, SilenceTimers, Transition,
};
use tillwatch_domain::{DeviceId, DeviceInfo, DeviceStatus, MerchantId, Reading, UtcMillis};
use tillwatch_meta::{MetaError, MetaStore};

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Store(#[from] MetaError),
    #[error("metadata store holds an invalid device id {0:?}")]
    BadId(String),
}

/// What the tracker learns from, each with the time Tillwatch received it.
#[derive(Debug, Clone)]
pub enum Event {
    Telemetry {
        merchant_id: MerchantId,
        device_id: DeviceId,
        readings: Vec<Reading>,
        received_at: UtcMillis,
    },
    Status {
        status: DeviceStatus,
        received_at: UtcMillis,
    },
    Info(DeviceInfo),
}

/// Live state of every device, backed by the metadata store.
#[derive(Debug)]
pub struct Tracker {
    store: MetaStore,
    policy: SilencePolicy,
    devices: HashMap<DeviceId, DeviceConnectivity>,
    timers: SilenceTimers,
}

impl Tracker {
    /// Resumes from what the store holds: every device's state machine
    /// and its silence deadline.
    pub async fn open(store: MetaStore, policy: SilencePolicy) -> Result<Tracker, TrackerError> {
        let mut devices = HashMap::new();
        let mut timers = SilenceTimers::default();
        for (id, snapshot) in store.load_connectivity().await? {
            let device = DeviceId::new(&id).map_err(|_| TrackerError::BadId(id.clone()))?;
            let conn = DeviceConnectivity::restore(snapshot);
            timers.set(&device, conn.silence_deadline(&policy));
            devices.insert(device, conn);
        }
        Ok(Tracker {
            store,
            policy,
            devices,
            timers,
        })
    }

    /// Applies one event; returns the connectivity changes it caused.
    pub async fn handle(
        &mut self,
        event: Event,
    ) -> Result<Vec<(DeviceId, Transition)>, TrackerError> {
        match event {
            Event::Info(info) => {
                self.store.record_info(&info).await?;
                Ok(Vec::new())
            }
            Event::Telemetry {
                merchant_id,
                device_id,
                readings,
                received_at,
            } => {
                self.store.record_readings(&merchant_id, &readings).await?;
                let conn = self.devices.entry(device_id.clone()).or_default();
                let change = conn.on_telemetry(received_at);
                self.save(&device_id, change).await
            }
            Event::Status {
                status,
                received_at,
            } => {
                let conn = self.devices.entry(status.device_id.clone()).or_default();
                let change =
                    conn.on_status(status.online, status.reason, status.boot_id, received_at);
                self.save(&status.device_id, change).await
            }
        }
    }

    async fn save(
        &mut self,
        device_id: &DeviceId,
        change: Option<Transition>,
    ) -> Result<Vec<(DeviceId, Transition)>, TrackerError> {
        let conn = &self.devices[device_id];
        self.timers
            .set(device_id, conn.silence_deadline(&self.policy));
        self.store
            .save_connectivity(device_id.as_str(), &conn.snapshot(), change.as_ref())
            .await?;
        Ok(change.map(|c| (device_id.clone(), c)).into_iter().collect())
    }

    /// The clock reached `now`: devices silent past their deadline go
    /// offline. Only due devices are touched.
    pub async fn tick(
        &mut self,
        now: UtcMillis,
    ) -> Result<Vec<(DeviceId, Transition)>, TrackerError> {
        let mut changes = Vec::new();
        for device_id in self.timers.due(now) {
            let Some(conn) = self.devices.get_mut(&device_id) else {
                continue;
            };
            let change = conn.on_time(now, &self.policy);
            changes.extend(self.save(&device_id, change).await?);
        }
        Ok(changes)
    }

    /// When [`Tracker::tick`] next has work: sleep until then.
    pub fn next_deadline(&mut self) -> Option<UtcMillis> {
        self.timers.next_deadline()
    }

    /// How many devices it tracks.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn state(&self, device_id: &DeviceId) -> Option<&DeviceConnectivity> {
        self.devices.get(device_id)
    }
}
