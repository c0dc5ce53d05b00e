//! A job's schedule (cron), run window (weekly hours) and time zone as an
//! operator writes them in `[scheduler.jobs.*]`, and partition keys as the
//! API and CLI take them: any text parses or is refused, never a panic;
//! a partition key that parses prints back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillwatch_scheduler::{Grain, Partition, RunWindow, Schedule};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // "SCHEDULE\nZONE", so both parts vary.
    let (spec, tz) = text.split_once('\n').unwrap_or((&text, "UTC"));
    let _ = Schedule::parse(spec, tz);
    let _ = RunWindow::parse(spec, tz);
    let _ = Grain::parse(spec);
    if let Some(p) = Partition::parse_key(spec) {
        assert_eq!(Partition::parse_key(&p.key()), Some(p));
    }
});
