//! A histogram with fixed bucket bounds, as Prometheus exposes one: per bucket the observations
//! at most its bound (`le`), cumulated when read, plus their count and sum.

/// The OpenTelemetry semantic conventions' buckets for request, call and query durations, in
/// seconds (`http.server.request.duration` and friends).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulated: `counts[i]` were above `bounds[i - 1]` and at
    /// most `bounds[i]`; the last, one more than the bounds, were above every bound.
    counts: Box<[u64]>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`, which ascend.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
        }
    }

    /// From per-bucket counts read elsewhere (one more than the bounds; missing ones are 0).
    pub fn from_counts(bounds: &'static [f64], counts: &[u64], sum: f64) -> Self {
        let mut histogram = Self::new(bounds);
        for (slot, count) in histogram.counts.iter_mut().zip(counts) {
            *slot = *count;
        }
        histogram.sum = sum;
        histogram
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = bucket_of(self.bounds, value);
        self.counts[bucket] += 1;
        self.sum += value;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Observations per bucket, not cumulated: one more than the bounds (OTLP's form).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// (bound, observations at most it) for every bound, then (infinity, all of them).
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().scan(0u64, |total, count| {
                *total += count;
                Some(*total)
            }))
    }
}

/// The bucket `value` falls in: the first whose bound is at least it, else the last (past every
/// bound). A NaN goes past every bound.
pub fn bucket_of(bounds: &[f64], value: f64) -> usize {
    if value.is_nan() {
        return bounds.len();
    }
    bounds.partition_point(|bound| *bound < value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_is_in_that_bucket_and_the_counts_cumulate() {
        let mut histogram = Histogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.1, 0.5, 1.0, 3.0, 7.0] {
            histogram.observe(value);
        }
        let cumulative: Vec<(f64, u64)> = histogram.cumulative().collect();
        assert_eq!(cumulative, vec![(0.1, 2), (1.0, 4), (f64::INFINITY, 6)]);
        assert_eq!(histogram.count(), 6);
        assert!((histogram.sum() - 11.65).abs() < 1e-9);
    }

    #[test]
    fn the_buckets_are_the_semantic_conventions_ones() {
        assert_eq!(DURATION_BUCKETS.len(), 14);
        assert!(DURATION_BUCKETS.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(bucket_of(DURATION_BUCKETS, 0.0), 0);
        assert_eq!(bucket_of(DURATION_BUCKETS, 0.0051), 1);
        assert_eq!(bucket_of(DURATION_BUCKETS, 10.0), 13);
        assert_eq!(bucket_of(DURATION_BUCKETS, 10.5), 14);
        assert_eq!(bucket_of(DURATION_BUCKETS, f64::NAN), 14);
    }

    #[test]
    fn counts_read_elsewhere_make_the_same_histogram() {
        let mut observed = Histogram::new(&[1.0, 2.0]);
        observed.observe(0.5);
        observed.observe(1.5);
        observed.observe(1.7);
        assert_eq!(
            Histogram::from_counts(&[1.0, 2.0], &[1, 2, 0], observed.sum()),
            observed
        );
    }
}
