//! The byte stream a terminal sends the embedded broker, framed and
//! checked as the broker's front does (with logins and without): packets
//! parse or are refused, the first must be CONNECT, and every later one
//! passes the access rules or ends the connection, never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4::Packet;
use tillwatch_bus::access::{Gate, Who, next_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let gate = Gate {
        logins: (mode & 1 == 1).then(|| "tillwatch-internal".to_string()),
    };
    let mut buf = BytesMut::from(stream);
    let mut who: Option<Who> = None;
    while let Ok(Some((frame, packet))) = next_frame(&mut buf) {
        assert!(!frame.is_empty());
        match &who {
            None => match &packet {
                Packet::Connect(connect) => match gate.connect(connect) {
                    Ok(w) => who = Some(w),
                    Err(refusal) => {
                        assert!(!refusal.reason().is_empty());
                        return;
                    }
                },
                _ => return,
            },
            Some(w) => {
                if let Err(refusal) = gate.check(w, &packet) {
                    assert!(!refusal.reason().is_empty());
                    return;
                }
            }
        }
    }
});
