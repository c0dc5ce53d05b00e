use crate::{BootId, DeviceId, MerchantId, StoreId, UtcMillis};

/// What a terminal says about itself on its info topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub device_id: DeviceId,
    pub boot_id: BootId,
    pub model: String,
    pub serial: String,
    pub firmware_version: String,
    pub app_version: String,
    pub merchant_id: MerchantId,
    pub store_id: Option<StoreId>,
    pub time_zone: String,
    pub at: UtcMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusReason {
    /// Published by the device right after connecting.
    Birth,
    /// Published by the device before a clean disconnect.
    Shutdown,
    /// The device's last will, published by the broker.
    ConnectionLost,
    Unspecified,
}

/// A connection-state message from the status topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub device_id: DeviceId,
    pub boot_id: BootId,
    pub online: bool,
    pub reason: StatusReason,
    pub at: UtcMillis,
}

/// A message or reading that was rejected, kept with its raw bytes and the
/// reason in words: what the `dead_letter` table holds.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub received_at: UtcMillis,
    pub topic: String,
    pub merchant_id: Option<String>,
    pub device_id: Option<String>,
    /// A stable code ([`crate::RejectReason::code`]).
    pub reason_code: &'static str,
    pub reason: String,
    pub payload: Vec<u8>,
}
