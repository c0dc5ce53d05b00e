//! A terminal's message, topic and payload, through the decoder and
//! validator every consumer of device topics uses, and the provisioning
//! check after it: it must never panic, and a rejection always names a
//! reason and keeps a bounded sample.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

use tillwatch_bus::decode::{
    DecodeLimits, Decoded, MAX_DEAD_LETTER_PAYLOAD, MAX_DEAD_LETTER_TOPIC, decode_message,
    decode_provisioned, refused_reading,
};
use tillwatch_bus::provisioning::Provisioning;
use tillwatch_domain::{Limits, RejectReason, UtcMillis};

static PROVISIONING: LazyLock<Provisioning> = LazyLock::new(|| {
    Provisioning::parse("t-1,m-1,s-1\nt-2,m-1\nA,B\n").expect("a valid record")
});

fuzz_target!(|data: &[u8]| {
    // The first byte says how long the topic is; the rest is the payload.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    let topic = String::from_utf8_lossy(topic);
    // Half the inputs under a well-formed topic, so the payload is read.
    let topic = if n % 2 == 0 {
        format!("tw/v1/m-1/{topic}/telemetry")
    } else {
        topic.into_owned()
    };
    let limits = DecodeLimits {
        max_payload_bytes: 64 * 1024,
        sample_time: Limits::default(),
    };
    let now = UtcMillis(1_795_132_800_000);
    let provisioning = (n % 3 == 0).then_some(&*PROVISIONING);
    for decoded in [
        decode_message(&topic, payload, now, &limits),
        decode_provisioned(&topic, payload, now, &limits, provisioning),
    ] {
        match decoded {
            Decoded::Rejected(dead) => {
                assert!(!dead.reason_code.is_empty());
                assert!(dead.payload.len() <= MAX_DEAD_LETTER_PAYLOAD);
                assert!(dead.topic.len() <= MAX_DEAD_LETTER_TOPIC);
            }
            Decoded::Telemetry {
                rejected,
                readings,
                merchant_id,
                ..
            } => {
                for dead in rejected {
                    assert!(!dead.reason_code.is_empty());
                }
                // As the gateway dead-letters a reading over its boot limit.
                if let Some(reading) = readings.first() {
                    let reason = RejectReason::TooManyBoots {
                        boot_id: reading.boot_id.0,
                        count: 2,
                        limit: 1,
                    };
                    let dead =
                        refused_reading(&topic, payload, now, &reading.key(), &merchant_id, reason);
                    assert_eq!(dead.reason_code, "too_many_boots");
                    assert!(dead.payload.len() <= MAX_DEAD_LETTER_PAYLOAD);
                }
            }
            _ => {}
        }
    }
});
