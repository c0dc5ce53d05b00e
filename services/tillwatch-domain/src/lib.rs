//! Tillwatch's domain: devices, readings and the rules a reading must meet.
//!
//! **Architecture Invariant:** this crate does no IO (beyond reading the
//! time-zone database, in [`hours::time_zone`]) and knows no wire or
//! storage format. Protobuf is converted to these types in the gateway;
//! Arrow and Parquet are built from them in the storage crate. Serde is
//! known only as far as [`Written`] needs it: configuration values parsed
//! at load.

pub mod attribution;
pub mod connectivity;
mod device;
pub mod health;
pub mod hours;
mod ids;
pub mod matchers;
mod reading;
pub mod signals;
mod time;
mod validate;
pub mod written;

pub use device::{DeadLetter, DeviceInfo, DeviceStatus, StatusReason};
pub use ids::{BootId, DeviceId, IdError, MerchantId, StoreId};
pub use reading::{
    AppPerformance, Battery, Connectivity, Kind, NetworkType, PaymentHealth, Reading, ReadingKey,
    Signal,
};
pub use time::{HourPartition, UtcMillis};
pub use validate::{Limits, RejectReason, validate_reading};
pub use written::{FromText, Written};
