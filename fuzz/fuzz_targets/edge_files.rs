//! What operators hand the edge as files and terminals as topics: a
//! Mosquitto password file, a provisioning record, a device topic. Any
//! text parses or is refused with the line it failed on, never a panic,
//! and a refused password file never quotes a hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillwatch_bus::passwords::PasswordFile;
use tillwatch_bus::provisioning::Provisioning;
use tillwatch_proto::topic::DeviceTopic;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match PasswordFile::parse(&text) {
        Ok(file) => {
            // Iteration counts are the operator's; verify only cheap ones.
            let _ = file.len();
        }
        Err((line, _)) => assert!(line >= 1),
    }
    if let Ok(p) = Provisioning::parse(&text) {
        for line in text.lines() {
            let mut fields = line.split(',');
            if let (Some(device), Some(merchant)) = (fields.next(), fields.next()) {
                let _ = p.check(merchant.trim(), device.trim(), fields.next());
            }
        }
    }
    if let Some(topic) = DeviceTopic::parse(&text) {
        assert!(!topic.device_id.is_empty() && !topic.merchant_id.is_empty());
        assert!(!topic.device_id.contains('/'));
    }
});
