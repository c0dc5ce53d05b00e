//! An operator's configuration file through the loader and its
//! validation: any text is either a configuration or an error, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tillwatch_config::Config::from_toml(text);
    }
});
