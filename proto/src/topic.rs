//! MQTT topic layout: `tw/v1/{merchant_id}/{device_id}/{channel}`.

use std::fmt;

/// The first two levels of every Tillwatch topic.
pub const PREFIX: &str = "tw/v1";

/// What a message on a device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A `TelemetryBatch`.
    Telemetry,
    /// A retained `DeviceStatus`; also the last will.
    Status,
    /// A retained `DeviceInfo`.
    Info,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Telemetry, Channel::Status, Channel::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Telemetry => "telemetry",
            Channel::Status => "status",
            Channel::Info => "info",
        }
    }

    /// The subscription filter matching this channel of every device.
    pub fn filter(self) -> String {
        format!("{PREFIX}/+/+/{}", self.as_str())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed device topic, borrowing from the topic string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTopic<'a> {
    pub merchant_id: &'a str,
    pub device_id: &'a str,
    pub channel: Channel,
}

impl<'a> DeviceTopic<'a> {
    /// Parses a topic; `None` when it is not a Tillwatch device topic.
    pub fn parse(topic: &'a str) -> Option<Self> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let merchant_id = parts.next()?;
        let device_id = parts.next()?;
        let channel = match parts.next()? {
            "telemetry" => Channel::Telemetry,
            "status" => Channel::Status,
            "info" => Channel::Info,
            _ => return None,
        };
        if parts.next().is_some() || merchant_id.is_empty() || device_id.is_empty() {
            return None;
        }
        Some(DeviceTopic {
            merchant_id,
            device_id,
            channel,
        })
    }
}

/// The last level of the topic on which Tillwatch tells a terminal which
/// of its readings are durable (`DurableReadings`); not a [`Channel`]: no
/// terminal publishes there.
pub const DURABLE: &str = "durable";

/// The topic on which Tillwatch tells terminal `device_id` of
/// `merchant_id` which of its readings are durable.
pub fn durable_topic(merchant_id: &str, device_id: &str) -> String {
    format!("{PREFIX}/{merchant_id}/{device_id}/{DURABLE}")
}

/// Formats the topic of one channel of one device.
pub fn device_topic(merchant_id: &str, device_id: &str, channel: Channel) -> String {
    format!("{PREFIX}/{merchant_id}/{device_id}/{}", channel.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for channel in Channel::ALL {
            let topic = device_topic("m-1", "dev-9", channel);
            let parsed = DeviceTopic::parse(&topic).expect("parses");
            assert_eq!(parsed.merchant_id, "m-1");
            assert_eq!(parsed.device_id, "dev-9");
            assert_eq!(parsed.channel, channel);
        }
    }

    #[test]
    fn foreign_topics_are_not_device_topics() {
        for topic in [
            "tw/v1/m/d",
            "tw/v1/m/d/telemetry/extra",
            "tw/v2/m/d/telemetry",
            "tw/v1//d/telemetry",
            "tw/v1/m//telemetry",
            "tw/v1/m/d/firmware",
            "other",
        ] {
            assert_eq!(DeviceTopic::parse(topic), None, "{topic}");
        }
    }
}
