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
//! Pure: versions are given oldest first. [`hour_fingerprints`] tells the
//! scheduler which hours' attribution changed.

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

const HOUR_MS: i64 = 3_600_000;

/// One version of a terminal's identity, as the rollups group by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version<'a> {
    pub valid_from_ms: i64,
    pub merchant_id: &'a str,
    pub store_id: Option<&'a str>,
}

/// A terminal that has reported: the span of its readings' sample times
/// and its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal<'a> {
    pub device_id: &'a str,
    pub first_ms: i64,
    pub last_ms: i64,
    pub versions: Vec<Version<'a>>,
}

impl<'a> Terminal<'a> {
    fn starts(&self) -> Vec<i64> {
        self.versions.iter().map(|v| v.valid_from_ms).collect()
    }

    /// Whether its readings may lie in `[start_ms, end_ms)`.
    pub fn spans(&self, start_ms: i64, end_ms: i64) -> bool {
        self.first_ms < end_ms && self.last_ms >= start_ms
    }

    /// Who it belongs to for the hour (or any interval) `[start_ms,
    /// end_ms)`: the version that held for most of it; `None` without any
    /// version. Whether it reported then is the readings' to say.
    pub fn owner(&self, start_ms: i64, end_ms: i64) -> Option<Version<'a>> {
        version_for(&self.starts(), start_ms, end_ms).map(|i| self.versions[i])
    }
}

fn owner_hash(device: &str, v: &Version) -> u64 {
    // FNV-1a over the three, separated: stable across builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [device, v.merchant_id, v.store_id.unwrap_or("\u{0}none")] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The fingerprint of each hour's attribution within `[from_ms, to_ms)`,
/// by hour start: a hash over every terminal whose readings span the hour
/// ([`Terminal::spans`]) of who it belongs to then ([`Terminal::owner`]). An hour whose
/// fingerprint changes (a first info arriving after the readings, a move
/// learnt late) must be rolled up again. Hours no terminal with a version
/// spans are absent.
///
/// Design: a terminal's owner changes only in the hours holding one of its
/// version starts, so each version adds its hash to the run of hours it
/// covers (a difference array over the hours) and only those hours are
/// looked at one by one: the cost grows with terminals and versions, not
/// with terminals times hours.
pub fn hour_fingerprints(
    terminals: &[Terminal],
    from_ms: i64,
    to_ms: i64,
) -> std::collections::HashMap<i64, u64> {
    let ceil_hour = |ms: i64| ms.div_euclid(HOUR_MS) + i64::from(ms.rem_euclid(HOUR_MS) > 0);
    let first_hour = from_ms.div_euclid(HOUR_MS);
    let end_hour = ceil_hour(to_ms);
    if end_hour <= first_hour {
        return Default::default();
    }
    let len = (end_hour - first_hour) as usize;
    // Per hour: the sum of the hashes, and how many terminals span it.
    let mut diff = vec![0u64; len + 1];
    let mut spanned = vec![0i64; len + 1];
    let mut add = |from_h: i64, to_h: i64, value: u64, terminals: i64| {
        let (a, b) = (from_h.max(first_hour), to_h.min(end_hour));
        if a < b {
            let (a, b) = ((a - first_hour) as usize, (b - first_hour) as usize);
            diff[a] = diff[a].wrapping_add(value);
            diff[b] = diff[b].wrapping_sub(value);
            spanned[a] += terminals;
            spanned[b] -= terminals;
        }
    };
    for t in terminals.iter().filter(|t| !t.versions.is_empty()) {
        let starts = t.starts();
        let (lo, hi) = (
            t.first_ms.div_euclid(HOUR_MS),
            t.last_ms.div_euclid(HOUR_MS) + 1,
        );
        let hashes: Vec<u64> = t
            .versions
            .iter()
            .map(|v| owner_hash(t.device_id, v))
            .collect();
        // Each hour by the version in effect at its start...
        for i in 0..starts.len() {
            let from_h = if i == 0 {
                lo
            } else {
                ceil_hour(starts[i]).max(lo)
            };
            let to_h = starts.get(i + 1).map_or(hi, |s| ceil_hour(*s).min(hi));
            add(from_h, to_h, hashes[i], 1);
        }
        // ...corrected where a version starting inside the hour held longer.
        let mut inside: Vec<i64> = starts[1..]
            .iter()
            .filter(|s| s.rem_euclid(HOUR_MS) != 0)
            .map(|s| s.div_euclid(HOUR_MS))
            .filter(|h| (lo..hi).contains(h))
            .collect();
        inside.dedup();
        for h in inside {
            let (s, e) = (h * HOUR_MS, (h + 1) * HOUR_MS);
            let (Some(base), Some(best)) = (version_at(&starts, s), version_for(&starts, s, e))
            else {
                continue;
            };
            if base != best {
                add(h, h + 1, hashes[best].wrapping_sub(hashes[base]), 0);
            }
        }
    }
    let (mut sum, mut spanning) = (0u64, 0i64);
    let mut out = std::collections::HashMap::new();
    for i in 0..len {
        sum = sum.wrapping_add(diff[i]);
        spanning += spanned[i];
        if spanning > 0 {
            out.insert((first_hour + i as i64) * HOUR_MS, sum);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;

    fn v(from: i64, store: &str) -> Version<'_> {
        Version {
            valid_from_ms: from,
            merchant_id: "m-1",
            store_id: Some(store),
        }
    }

    /// The fingerprints the slow way: every hour looked at alone.
    fn one_by_one(
        terminals: &[Terminal],
        from_ms: i64,
        to_ms: i64,
    ) -> std::collections::HashMap<i64, u64> {
        let mut out = std::collections::HashMap::new();
        let mut hour = from_ms.div_euclid(H) * H;
        while hour < to_ms {
            for t in terminals.iter().filter(|t| t.spans(hour, hour + H)) {
                if let Some(owner) = t.owner(hour, hour + H) {
                    let sum = out.entry(hour).or_insert(0u64);
                    *sum = sum.wrapping_add(owner_hash(t.device_id, &owner));
                }
            }
            hour += H;
        }
        out
    }

    #[test]
    fn an_hour_belongs_to_the_store_of_most_of_it_and_its_fingerprint_says_so() {
        let a = Terminal {
            device_id: "a",
            first_ms: 10 * H,
            last_ms: 20 * H + 5 * M,
            // First info at 12:00, moved from s-1 to s-2 at 14:40.
            versions: vec![v(12 * H, "s-1"), v(14 * H + 40 * M, "s-2")],
        };
        let b = Terminal {
            device_id: "b",
            first_ms: 0,
            last_ms: 30 * H,
            versions: vec![v(5 * H, "s-3")],
        };
        fn store_of<'a>(t: &Terminal<'a>, hour: i64) -> Option<&'a str> {
            t.owner(hour * H, (hour + 1) * H).and_then(|o| o.store_id)
        }
        assert_eq!(store_of(&a, 10), Some("s-1"), "before its first info");
        assert_eq!(store_of(&a, 14), Some("s-1"), "40 of 60 minutes");
        assert_eq!(store_of(&a, 15), Some("s-2"));
        assert_eq!(store_of(&a, 21), Some("s-2"), "after its last reading too");
        assert!(!a.spans(21 * H, 22 * H) && a.spans(20 * H, 21 * H));
        assert_eq!(store_of(&b, 2), Some("s-3"));

        let fleet = [a.clone(), b.clone()];
        let fast = hour_fingerprints(&fleet, 0, 40 * H);
        assert_eq!(fast, one_by_one(&fleet, 0, 40 * H));
        assert_eq!(fast.len(), 31, "hours 0 to 30 are spanned");
        // A late first info for a third terminal changes exactly its hours.
        let late = Terminal {
            device_id: "c",
            first_ms: 3 * H,
            last_ms: 5 * H + 30 * M,
            versions: vec![v(25 * H, "s-9")],
        };
        let before_info = Terminal {
            versions: Vec::new(),
            ..late.clone()
        };
        let without = hour_fingerprints(&[a.clone(), b.clone(), before_info], 0, 40 * H);
        assert_eq!(without, fast, "a terminal without info is not in it");
        let with = hour_fingerprints(&[a.clone(), b.clone(), late], 0, 40 * H);
        let changed: Vec<i64> = (0..=30)
            .filter(|h| with[&(h * H)] != fast[&(h * H)])
            .collect();
        assert_eq!(changed, [3, 4, 5]);
        // Learning of a move only changes the hours from the move on.
        let mut moved = b.clone();
        moved.versions.push(v(20 * H + 10 * M, "s-4"));
        let after = hour_fingerprints(&[a, moved], 0, 40 * H);
        let changed: Vec<i64> = (0..=30)
            .filter(|h| after[&(h * H)] != fast[&(h * H)])
            .collect();
        assert_eq!(changed, (20..=30).collect::<Vec<_>>());
    }

    #[test]
    fn fingerprints_the_fast_way_match_looking_at_every_hour() {
        // Many shapes of history, compared with the obvious computation.
        let mut seed = 7u64;
        let mut next = |n: i64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((seed >> 33) as i64).rem_euclid(n)
        };
        let stores = ["s-0", "s-1", "s-2"];
        for _ in 0..300 {
            let mut fleet = Vec::new();
            for d in ["t-0", "t-1", "t-2", "t-3", "t-4"] {
                let first = next(60) * H / 2 + next(H);
                let last = first + next(40) * H / 3 + next(H);
                let mut versions: Vec<Version> = Vec::new();
                for _ in 0..next(4) {
                    let from = next(70) * H / 2 + next(3) * 20 * M + next(2) * M;
                    if versions.iter().all(|v| v.valid_from_ms != from) {
                        versions.push(v(from, stores[next(3) as usize]));
                    }
                }
                versions.sort_by_key(|v| v.valid_from_ms);
                fleet.push(Terminal {
                    device_id: d,
                    first_ms: first,
                    last_ms: last,
                    versions,
                });
            }
            let (from, to) = (next(20) * H + next(H), 50 * H + next(H));
            assert_eq!(
                hour_fingerprints(&fleet, from, to),
                one_by_one(&fleet, from, to),
                "{fleet:?} from {from} to {to}"
            );
        }
    }

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
