//! The OTLP exporter's requests: how long each took and whether it succeeded, lock-free (the
//! exporter records, a scrape reads).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::histogram::{Histogram, bucket_of};

/// Buckets of an export request's duration, in seconds: a local collector answers in a few
/// milliseconds, one far away or struggling in seconds (the exporter gives up at 10 s).
pub const EXPORT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One outcome's requests.
#[derive(Debug, Default)]
struct Requests {
    /// Per bucket of [`EXPORT_BUCKETS`], and one past them; not cumulated.
    counts: [AtomicU64; EXPORT_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Requests {
    fn record(&self, took: Duration) {
        let bucket = bucket_of(EXPORT_BUCKETS, took.as_secs_f64());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        Histogram::from_counts(EXPORT_BUCKETS, &counts, sum)
    }
}

/// Every export request's duration, by outcome.
#[derive(Debug, Default)]
pub struct ExportStats {
    succeeded: Requests,
    failed: Requests,
}

impl ExportStats {
    /// One request that took `took` and succeeded (`ok`) or failed (refused, an error, a
    /// timeout).
    pub fn record(&self, took: Duration, ok: bool) {
        if ok {
            self.succeeded.record(took);
        } else {
            self.failed.record(took);
        }
    }

    /// The durations of the requests that succeeded, and of those that failed.
    pub fn snapshot(&self) -> (Histogram, Histogram) {
        (self.succeeded.snapshot(), self.failed.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_lands_in_its_outcome_and_bucket() {
        let stats = ExportStats::default();
        stats.record(Duration::from_micros(800), true);
        stats.record(Duration::from_millis(3), true);
        stats.record(Duration::from_secs(12), false);
        let (ok, failed) = stats.snapshot();
        assert_eq!(ok.count(), 2);
        assert!((ok.sum() - 0.0038).abs() < 1e-9);
        let ok: Vec<(f64, u64)> = ok.cumulative().take(3).collect();
        assert_eq!(ok, vec![(0.001, 1), (0.0025, 1), (0.005, 2)]);
        assert_eq!(failed.count(), 1);
        assert_eq!(
            failed.cumulative().nth(EXPORT_BUCKETS.len() - 1),
            Some((10.0, 0))
        );
        assert_eq!(failed.cumulative().last(), Some((f64::INFINITY, 1)));
    }
}
