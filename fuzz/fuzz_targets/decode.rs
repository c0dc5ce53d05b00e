//! A terminal's message, topic and payload, through the decoder and
//! validator every consumer of device topics uses: it must never panic,
//! and a rejection always names a reason and keeps a bounded sample.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillwatch_bus::decode::{
    DecodeLimits, Decoded, MAX_DEAD_LETTER_PAYLOAD, MAX_DEAD_LETTER_TOPIC, decode_message,
};
use tillwatch_domain::{Limits, UtcMillis};

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
    match decode_message(&topic, payload, UtcMillis(1_795_132_800_000), &limits) {
        Decoded::Rejected(dead) => {
            assert!(!dead.reason_code.is_empty());
            assert!(dead.payload.len() <= MAX_DEAD_LETTER_PAYLOAD);
            assert!(dead.topic.len() <= MAX_DEAD_LETTER_TOPIC);
        }
        Decoded::Telemetry { rejected, .. } => {
            for dead in rejected {
                assert!(!dead.reason_code.is_empty());
            }
        }
        _ => {}
    }
});
