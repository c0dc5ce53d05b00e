//! Which of a terminal's recorded identities (merchant, store, model,
//! versions, time zone) a reading or an hour belongs to.
//!
//! The registry keeps each change of a terminal's info as a version valid
//! from the time the terminal stamped on it until the next version. Two
//! rules decide attribution, here and nowhere else:
//!
//! - **A reading** belongs to the version in effect at its sample time.
//!   Readings from before the terminal's first info message belong to its
//!   first version: until a terminal says otherwise, it is where it first
//!   said it is (a new terminal often reports before its info arrives).
//! - **An hour** (a row of the hourly rollup) belongs to the version in
//!   effect for the larger part of it; on a tie, the later one. A terminal
//!   moved at 10:20 counts for its old store until 10:00 and its new one
//!   from 10:00; moved at 10:40, from 11:00.
//!
//! Pure: versions are given by their start times, sorted ascending.

/// The version in effect at `at_ms`, as an index into `starts`: the last
/// one starting at or before it, or the first one for a time before every
/// version. `None` when there are no versions.
pub fn version_at(starts: &[i64], at_ms: i64) -> Option<usize> {
    if starts.is_empty() {
        return None;
    }
    Some(starts.partition_point(|s| *s <= at_ms).saturating_sub(1))
}

/// The version in effect for the larger part of `[start_ms, end_ms)`, as an
/// index into `starts` (ties go to the later version). `None` when there
/// are no versions.
pub fn version_for(starts: &[i64], start_ms: i64, end_ms: i64) -> Option<usize> {
    let first = version_at(starts, start_ms)?;
    let mut best = (first, i64::MIN);
    let mut i = first;
    while i < starts.len() {
        // The first version also stands for the time before it.
        let from = if i == first { start_ms } else { starts[i] };
        if from >= end_ms {
            break;
        }
        let until = starts.get(i + 1).map_or(end_ms, |next| (*next).min(end_ms));
        let covered = until.saturating_sub(from.max(start_ms));
        if covered >= best.1 {
            best = (i, covered);
        }
        i += 1;
    }
    Some(best.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;

    #[test]
    fn a_reading_takes_the_version_of_its_sample_time() {
        let starts = [10 * H, 12 * H + 20 * M];
        assert_eq!(version_at(&[], 5), None);
        assert_eq!(version_at(&starts, 3 * H), Some(0), "before the first info");
        assert_eq!(version_at(&starts, 10 * H), Some(0));
        assert_eq!(version_at(&starts, 12 * H + 20 * M - 1), Some(0));
        assert_eq!(version_at(&starts, 12 * H + 20 * M), Some(1));
        assert_eq!(version_at(&starts, i64::MAX), Some(1));
        assert_eq!(version_at(&starts, i64::MIN), Some(0));
    }

    #[test]
    fn an_hour_takes_the_version_that_held_for_most_of_it() {
        // Moved at 12:20: hour 12 is mostly the new store's.
        let starts = [10 * H, 12 * H + 20 * M];
        assert_eq!(version_for(&starts, 11 * H, 12 * H), Some(0));
        assert_eq!(version_for(&starts, 12 * H, 13 * H), Some(1));
        assert_eq!(version_for(&starts, 13 * H, 14 * H), Some(1));
        // Hours before the first info belong to the first version.
        assert_eq!(version_for(&starts, 2 * H, 3 * H), Some(0));
        // Moved at 12:40: hour 12 is still the old store's.
        let starts = [10 * H, 12 * H + 40 * M];
        assert_eq!(version_for(&starts, 12 * H, 13 * H), Some(0));
        // A tie goes to the later version.
        let starts = [10 * H, 12 * H + 30 * M];
        assert_eq!(version_for(&starts, 12 * H, 13 * H), Some(1));
        // Three versions inside one hour: the one that held longest.
        let starts = [12 * H + 5 * M, 12 * H + 10 * M, 12 * H + 50 * M];
        assert_eq!(version_for(&starts, 12 * H, 13 * H), Some(1));
        assert_eq!(version_for(&[], 0, H), None);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let starts = [i64::MIN, 0, i64::MAX];
        assert_eq!(version_for(&starts, i64::MIN, i64::MAX), Some(1));
        assert_eq!(version_for(&starts, -H, H), Some(1));
        assert_eq!(version_at(&starts, i64::MAX), Some(2));
    }
}
