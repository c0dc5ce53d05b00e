//! The ingest watermark from the gateways' records: the time before which
//! every reading has arrived, so an hour ending before it (plus a job's
//! lateness) is complete.
//!
//! Each gateway records the arrival time of its oldest message not yet
//! durable, or now when it holds none, and refreshes it every second, so a
//! healthy gateway's record is never more than a flush behind the clock.
//! The watermark is the slowest gateway's record, so no hour is rolled up
//! while one of them still holds its readings. A gateway that stops
//! advancing (taken away for good, or stuck) would hold every rollup back
//! forever: once its record is more than the stall time behind the clock,
//! it no longer counts, and it counts again as soon as it advances. What it
//! delivers later is late data, and re-runs the hours it lands in, as any
//! late data does. When every gateway has stalled, ingestion itself has
//! stopped and the slowest record still holds.
//!
//! Pure: records and the time are passed in.

/// One gateway's record as the scheduler judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterWatermark {
    /// The gateway's client id (its writer id in the lake).
    pub writer: String,
    pub at_ms: i64,
    /// More than the stall time behind the clock: left out.
    pub stalled: bool,
}

/// The ingest watermark (`i64::MIN` before any gateway recorded one) and
/// each writer's standing, from `(writer, at_ms)` records at `now_ms`.
pub fn ingest_watermark(
    records: &[(String, i64)],
    now_ms: i64,
    stall_after_ms: i64,
) -> (i64, Vec<WriterWatermark>) {
    let writers: Vec<WriterWatermark> = records
        .iter()
        .map(|(writer, at_ms)| WriterWatermark {
            writer: writer.clone(),
            at_ms: *at_ms,
            stalled: now_ms.saturating_sub(*at_ms) > stall_after_ms,
        })
        .collect();
    let advancing = writers.iter().filter(|w| !w.stalled).map(|w| w.at_ms).min();
    let slowest = writers.iter().map(|w| w.at_ms).min();
    (advancing.or(slowest).unwrap_or(i64::MIN), writers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn records(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|(w, at)| (w.to_string(), *at)).collect()
    }

    #[test]
    fn the_slowest_advancing_gateway_sets_the_watermark() {
        let now = 100 * MIN;
        let stall = 5 * MIN;
        assert_eq!(ingest_watermark(&[], now, stall), (i64::MIN, vec![]));
        let (w, writers) = ingest_watermark(
            &records(&[("a", now - 1_000), ("b", now - 3 * MIN)]),
            now,
            stall,
        );
        assert_eq!(
            w,
            now - 3 * MIN,
            "b is behind but still within the stall time"
        );
        assert!(writers.iter().all(|w| !w.stalled));
        // b stopped 6 minutes ago: it no longer holds a back.
        let (w, writers) = ingest_watermark(
            &records(&[("a", now - 1_000), ("b", now - 6 * MIN)]),
            now,
            stall,
        );
        assert_eq!(w, now - 1_000);
        assert_eq!(
            writers
                .iter()
                .map(|w| (w.writer.as_str(), w.stalled))
                .collect::<Vec<_>>(),
            [("a", false), ("b", true)]
        );
        // b is back: it counts again at once.
        let (w, _) = ingest_watermark(
            &records(&[("a", now - 1_000), ("b", now - 2_000)]),
            now,
            stall,
        );
        assert_eq!(w, now - 2_000);
        // Everything stalled: ingestion stopped; the slowest still holds.
        let (w, writers) = ingest_watermark(
            &records(&[("a", now - 9 * MIN), ("b", now - 7 * MIN)]),
            now,
            stall,
        );
        assert_eq!(w, now - 9 * MIN);
        assert!(writers.iter().all(|w| w.stalled));
        // Absurd records do not overflow.
        let (w, _) = ingest_watermark(&records(&[("a", i64::MIN), ("b", i64::MAX)]), now, stall);
        assert_eq!(w, i64::MAX);
    }
}
