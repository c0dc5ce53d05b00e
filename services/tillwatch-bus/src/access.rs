//! Who may do what on the device bus: the access rules the embedded
//! broker's front applies to every packet a terminal sends (a terminal is
//! only itself), and the framing of that packet stream. Pure: no sockets,
//! so every rule can be tested and fuzzed on bytes alone.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
use tillwatch_proto::topic::{DeviceTopic, PREFIX};

/// How long a new connection has to send its CONNECT.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// The largest MQTT packet taken (rumqttd's own limit).
pub const MAX_PACKET: usize = 1024 * 1024;
/// The largest retained payload taken: a terminal's status and info are
/// a few hundred bytes.
pub const MAX_RETAINED_PAYLOAD: usize = 16 * 1024;

/// Why a terminal's connection was closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("publish on {topic:?}: a topic of another terminal than {login:?}")]
    ForeignPublish { login: String, topic: String },
    #[error("publish on {topic:?}: not a Tillwatch device topic (tw/v1/MERCHANT/DEVICE/CHANNEL)")]
    NotADeviceTopic { topic: String },
    #[error("subscribe to {filter:?}: a terminal may subscribe only to its own device's topics")]
    ForeignSubscribe { filter: String },
    #[error("a retained message of {bytes} bytes on {topic:?}: at most {MAX_RETAINED_PAYLOAD}")]
    RetainedTooLarge { topic: String, bytes: usize },
    #[error("no username: this broker requires logins")]
    NoLogin,
    #[error("the account of Tillwatch's own clients may not connect from outside")]
    InternalAccount,
    #[error("the first packet was not CONNECT")]
    NoConnect,
    #[error("no CONNECT within {} s", CONNECT_WITHIN.as_secs())]
    ConnectTimeout,
    #[error("a malformed or oversized MQTT packet: {0}")]
    Malformed(String),
}

impl Refusal {
    /// The metric label: a fixed set, never a device id.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ForeignPublish { .. } => "foreign_publish",
            Refusal::NotADeviceTopic { .. } => "not_a_device_topic",
            Refusal::ForeignSubscribe { .. } => "foreign_subscribe",
            Refusal::RetainedTooLarge { .. } => "retained_too_large",
            Refusal::NoLogin => "no_login",
            Refusal::InternalAccount => "internal_account",
            Refusal::NoConnect => "no_connect",
            Refusal::ConnectTimeout => "connect_timeout",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

/// The access rules.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `Some(internal username)` when logins are required.
    pub logins: Option<String>,
}

/// Who is on a connection: the device its login names, or anyone (no
/// logins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Device(String),
    Anyone,
}

impl Gate {
    /// Who a CONNECT says it is, and whether its will is its own.
    pub fn connect(&self, connect: &rumqttc::mqttbytes::v4::Connect) -> Result<Who, Refusal> {
        let who = match &self.logins {
            None => Who::Anyone,
            Some(internal) => {
                let login = connect.login.as_ref().ok_or(Refusal::NoLogin)?;
                if login.username == *internal {
                    return Err(Refusal::InternalAccount);
                }
                Who::Device(login.username.clone())
            }
        };
        if let Some(will) = &connect.last_will {
            may_publish(&who, &will.topic, will.retain, will.message.len())?;
        }
        Ok(who)
    }

    /// Whether `who` may send `packet`.
    pub fn check(&self, who: &Who, packet: &Packet) -> Result<(), Refusal> {
        match packet {
            Packet::Publish(p) => may_publish(who, &p.topic, p.retain, p.payload.len()),
            Packet::Subscribe(s) => s
                .filters
                .iter()
                .try_for_each(|f| may_subscribe(who, &f.path)),
            Packet::Connect(_) => Err(Refusal::Malformed("a second CONNECT".into())),
            _ => Ok(()),
        }
    }
}

/// A publish is allowed on a device topic, of the login's own device.
pub fn may_publish(who: &Who, topic: &str, retain: bool, bytes: usize) -> Result<(), Refusal> {
    let Some(parsed) = DeviceTopic::parse(topic) else {
        return Err(Refusal::NotADeviceTopic {
            topic: topic.to_string(),
        });
    };
    if let Who::Device(login) = who
        && parsed.device_id != login
    {
        return Err(Refusal::ForeignPublish {
            login: login.clone(),
            topic: topic.to_string(),
        });
    }
    if retain && bytes > MAX_RETAINED_PAYLOAD {
        return Err(Refusal::RetainedTooLarge {
            topic: topic.to_string(),
            bytes,
        });
    }
    Ok(())
}

/// A subscription is allowed when it can match only one device's topics,
/// named literally (the login's own, with logins):
/// `tw/v1/MERCHANT-or-+/DEVICE/…`.
pub fn may_subscribe(who: &Who, filter: &str) -> Result<(), Refusal> {
    let refused = || Refusal::ForeignSubscribe {
        filter: filter.to_string(),
    };
    let rest = filter
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(refused)?;
    let mut levels = rest.split('/');
    let merchant = levels.next().ok_or_else(refused)?;
    let device = levels.next().ok_or_else(refused)?;
    let literal = |level: &str| !level.is_empty() && !level.contains(['+', '#']);
    if !(literal(merchant) || merchant == "+") || !literal(device) || levels.next().is_none() {
        return Err(refused());
    }
    match who {
        Who::Device(login) if device != login => Err(refused()),
        _ => Ok(()),
    }
}

/// The next whole packet at the front of `buf`, taken off it: its bytes as
/// sent and as parsed. `Ok(None)` when `buf` holds only part of one (read
/// more and ask again); an error for bytes that are not MQTT 3.1.1 or a
/// packet over [`MAX_PACKET`].
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<(Bytes, Packet)>, Refusal> {
    match rumqttc::mqttbytes::check(buf.iter(), MAX_PACKET) {
        Ok(header) => {
            let frame = buf.split_to(header.frame_length()).freeze();
            let mut copy = BytesMut::from(&frame[..]);
            let packet = Packet::read(&mut copy, MAX_PACKET)
                .map_err(|e| Refusal::Malformed(e.to_string()))?;
            Ok(Some((frame, packet)))
        }
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(Refusal::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(d: &str) -> Who {
        Who::Device(d.into())
    }

    #[test]
    fn a_terminal_publishes_only_on_its_own_topics() {
        let t1 = device("t-1");
        for channel in ["telemetry", "status", "info"] {
            let own = format!("tw/v1/m-1/t-1/{channel}");
            assert_eq!(may_publish(&t1, &own, false, 100), Ok(()));
            let other = format!("tw/v1/m-1/t-2/{channel}");
            assert!(matches!(
                may_publish(&t1, &other, false, 100),
                Err(Refusal::ForeignPublish { .. })
            ));
        }
        for topic in [
            "tw/v1/m-1/t-1/telemetry/x",
            "junk",
            "tw/v1/m-1/t-1",
            "$SYS/x",
        ] {
            assert!(matches!(
                may_publish(&t1, topic, false, 1),
                Err(Refusal::NotADeviceTopic { .. })
            ));
            assert!(may_publish(&Who::Anyone, topic, false, 1).is_err());
        }
        assert_eq!(
            may_publish(&Who::Anyone, "tw/v1/m-1/t-2/telemetry", false, 1),
            Ok(())
        );
        assert!(matches!(
            may_publish(&t1, "tw/v1/m-1/t-1/info", true, MAX_RETAINED_PAYLOAD + 1),
            Err(Refusal::RetainedTooLarge { .. })
        ));
    }

    #[test]
    fn a_terminal_subscribes_only_to_its_own_device() {
        let t1 = device("t-1");
        for ok in ["tw/v1/m-1/t-1/#", "tw/v1/+/t-1/ack", "tw/v1/m-1/t-1/+"] {
            assert_eq!(may_subscribe(&t1, ok), Ok(()), "{ok}");
            assert_eq!(may_subscribe(&Who::Anyone, ok), Ok(()), "{ok}");
        }
        for refused in [
            "#",
            "tw/#",
            "tw/v1/#",
            "tw/v1/+/+/telemetry",
            "tw/v1/m-1/+/status",
            "tw/v1/m-1/#",
            "tw/v1/+/t-1",
            "tw/v1/m-1/t-2/#",
            "tw/v1/m+/t-1/#",
            "$SYS/#",
        ] {
            assert!(may_subscribe(&t1, refused).is_err(), "{refused}");
        }
        assert!(may_subscribe(&Who::Anyone, "tw/v1/+/+/telemetry").is_err());
        assert_eq!(may_subscribe(&Who::Anyone, "tw/v1/m-1/t-2/#"), Ok(()));
    }

    /// Its durable notices: a terminal reads its own, never another's, and
    /// cannot forge one (only Tillwatch's own clients publish there).
    #[test]
    fn a_terminal_reads_its_own_durable_notices_and_cannot_forge_them() {
        let t1 = device("t-1");
        let own = tillwatch_proto::topic::durable_topic("m-1", "t-1");
        assert_eq!(may_subscribe(&t1, &own), Ok(()));
        assert_eq!(may_subscribe(&t1, "tw/v1/+/t-1/durable"), Ok(()));
        assert!(may_subscribe(&t1, "tw/v1/+/t-2/durable").is_err());
        assert!(may_subscribe(&t1, "tw/v1/+/+/durable").is_err());
        for who in [t1, Who::Anyone] {
            assert!(matches!(
                may_publish(&who, &own, false, 10),
                Err(Refusal::NotADeviceTopic { .. })
            ));
        }
    }

    #[test]
    fn logins_name_the_device_and_the_internal_account_stays_inside() {
        use rumqttc::mqttbytes::QoS;
        use rumqttc::mqttbytes::v4::{Connect, LastWill, Login};
        let gate = Gate {
            logins: Some("tillwatch-internal-x".into()),
        };
        let mut connect = Connect::new("c-1");
        assert_eq!(gate.connect(&connect), Err(Refusal::NoLogin));
        connect.login = Some(Login::new("tillwatch-internal-x", "p"));
        assert_eq!(gate.connect(&connect), Err(Refusal::InternalAccount));
        connect.login = Some(Login::new("t-1", "p"));
        assert_eq!(gate.connect(&connect), Ok(device("t-1")));
        connect.last_will = Some(LastWill::new(
            "tw/v1/m-1/t-2/status",
            "x",
            QoS::AtLeastOnce,
            true,
        ));
        assert!(matches!(
            gate.connect(&connect),
            Err(Refusal::ForeignPublish { .. })
        ));
        let open = Gate { logins: None };
        assert_eq!(open.connect(&Connect::new("c")), Ok(Who::Anyone));
    }
}
