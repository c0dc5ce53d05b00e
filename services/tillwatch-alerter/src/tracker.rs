use std::collections::HashMap;

use tillwatch_domain::connectivity::{
    DeviceConnectivity, SilencePolicy, SilenceTimers, Transition,
};
use tillwatch_domain::{DeviceId, DeviceInfo, DeviceStatus, MerchantId, Reading, UtcMillis};
use tillwatch_meta::{MetaError, MetaStore, StateBatch};

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
///
/// Silence is only the device's when the listener could have heard it:
/// while the listener's own broker connection is down
/// ([`Tracker::set_listening`]) nobody goes offline by silence, and once
/// it is back every online device gets its full allowed silence counted
/// from then.
#[derive(Debug)]
pub struct Tracker {
    store: MetaStore,
    policy: SilencePolicy,
    devices: HashMap<DeviceId, DeviceConnectivity>,
    timers: SilenceTimers,
    /// `Some(since)` while the listener cannot hear the devices.
    deaf_since: Option<UtcMillis>,
    /// When the listener last started hearing again.
    listening_since: Option<UtcMillis>,
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
            deaf_since: None,
            listening_since: None,
        })
    }

    /// The listener's broker connection went down (`false`) or came back
    /// (`true`) at `now`. Coming back re-arms every online device's
    /// silence from `now`. Returns whether anything changed.
    pub fn set_listening(&mut self, listening: bool, now: UtcMillis) -> bool {
        match (listening, self.deaf_since) {
            (false, None) => {
                self.deaf_since = Some(now);
                true
            }
            (true, Some(_)) => {
                self.deaf_since = None;
                self.listening_since = Some(now);
                for (device, conn) in &self.devices {
                    self.timers
                        .set(device, conn.silence_deadline_since(&self.policy, Some(now)));
                }
                true
            }
            _ => false,
        }
    }

    /// When the listener last started hearing, if it ever did.
    pub fn listening_since(&self) -> Option<UtcMillis> {
        self.listening_since
    }

    /// Since when the listener has not heard the devices, if it cannot.
    pub fn deaf_since(&self) -> Option<UtcMillis> {
        self.deaf_since
    }

    /// Applies one event; returns the connectivity changes it caused.
    pub async fn handle(
        &mut self,
        event: Event,
    ) -> Result<Vec<(DeviceId, Transition)>, TrackerError> {
        self.handle_batch(std::slice::from_ref(&event)).await
    }

    /// Applies events in order and writes what they changed in one
    /// transaction. On an error nothing has changed: retry with the same
    /// events.
    pub async fn handle_batch(
        &mut self,
        events: &[Event],
    ) -> Result<Vec<(DeviceId, Transition)>, TrackerError> {
        let mut batch = StateBatch::default();
        let mut touched: HashMap<DeviceId, Option<DeviceConnectivity>> = HashMap::new();
        let mut changes = Vec::new();
        for event in events {
            let (device_id, change) = match event {
                Event::Info(info) => {
                    batch.info(info);
                    continue;
                }
                Event::Telemetry {
                    merchant_id,
                    device_id,
                    readings,
                    received_at,
                } => {
                    batch.readings(merchant_id, readings);
                    self.remember(&mut touched, device_id);
                    let conn = self.devices.entry(device_id.clone()).or_default();
                    (device_id, conn.on_telemetry(*received_at))
                }
                Event::Status {
                    status,
                    received_at,
                } => {
                    self.remember(&mut touched, &status.device_id);
                    let conn = self.devices.entry(status.device_id.clone()).or_default();
                    let change =
                        conn.on_status(status.online, status.reason, status.boot_id, *received_at);
                    (&status.device_id, change)
                }
            };
            let conn = &self.devices[device_id];
            batch.connectivity(device_id.as_str(), conn.snapshot(), change.as_ref());
            changes.extend(change.map(|c| (device_id.clone(), c)));
        }
        self.commit(batch, touched).await?;
        Ok(changes)
    }

    /// Keeps a device's state from before this batch, to undo it.
    fn remember(
        &self,
        touched: &mut HashMap<DeviceId, Option<DeviceConnectivity>>,
        device_id: &DeviceId,
    ) {
        touched
            .entry(device_id.clone())
            .or_insert_with(|| self.devices.get(device_id).cloned());
    }

    /// Writes the batch; on success moves the touched devices' silence
    /// deadlines, on failure puts their state machines back.
    async fn commit(
        &mut self,
        batch: StateBatch,
        touched: HashMap<DeviceId, Option<DeviceConnectivity>>,
    ) -> Result<(), TrackerError> {
        if let Err(e) = self.store.record_batch(&batch).await {
            for (device, before) in touched {
                match before {
                    Some(conn) => self.devices.insert(device, conn),
                    None => self.devices.remove(&device),
                };
            }
            return Err(e.into());
        }
        for device in touched.keys() {
            let deadline =
                self.devices[device].silence_deadline_since(&self.policy, self.listening_since);
            self.timers.set(device, deadline);
        }
        Ok(())
    }

    /// The clock reached `now`: devices silent past their deadline go
    /// offline. Only due devices are touched.
    pub async fn tick(
        &mut self,
        now: UtcMillis,
    ) -> Result<Vec<(DeviceId, Transition)>, TrackerError> {
        if self.deaf_since.is_some() {
            // Deaf: no silence is the devices' (re-armed when it hears).
            return Ok(Vec::new());
        }
        let mut batch = StateBatch::default();
        let mut touched = HashMap::new();
        let mut changes = Vec::new();
        let due = self.timers.due(now);
        for device_id in &due {
            if !self.devices.contains_key(device_id) {
                continue;
            }
            self.remember(&mut touched, device_id);
            let conn = self.devices.get_mut(device_id).expect("checked");
            let change = conn.on_time_since(now, &self.policy, self.listening_since);
            batch.connectivity(device_id.as_str(), conn.snapshot(), change.as_ref());
            changes.extend(change.map(|c| (device_id.clone(), c)));
        }
        if let Err(e) = self.commit(batch, touched).await {
            // Due again at the next tick.
            for device_id in due {
                self.timers.set(&device_id, Some(now));
            }
            return Err(e);
        }
        Ok(changes)
    }

    /// When [`Tracker::tick`] next has work: sleep until then.
    pub fn next_deadline(&mut self) -> Option<UtcMillis> {
        if self.deaf_since.is_some() {
            return None;
        }
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
