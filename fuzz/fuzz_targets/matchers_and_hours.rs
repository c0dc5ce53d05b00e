//! Silence matchers (from the API) and store opening hours (from the
//! merchant directory): any text parses or is refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillwatch_domain::hours::WeeklyHours;
use tillwatch_domain::matchers::Matcher;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Matcher::parse(text);
        let _ = WeeklyHours::parse(text);
    }
});
