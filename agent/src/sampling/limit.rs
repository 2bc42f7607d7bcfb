//! `--max-traces-per-second`: each second's ratio is lowered so that the trees the previous
//! second would have kept fit the budget. Trees kept for a cause (slow, error, pattern) are
//! always kept; they use up the budget first, and the ratio-sampled trees share what is left.
//!
//! The factor changes once a second, never within one: every tree of a second is sampled at the
//! same threshold, so a lowered ratio still keeps a consistent subset of the trace ids the
//! configured ratio keeps (what another loupe, at its own load, keeps overlaps as much as it can).

const SECOND_NS: u64 = 1_000_000_000;

/// Per-second accounting of kept trees.
#[derive(Clone, Debug)]
pub struct RateLimit {
    max_per_second: f64,
    /// The second (monotonic clock) being counted.
    second: u64,
    /// Trees kept for a cause this second.
    caused: u64,
    /// Trees the configured ratios would have kept this second (the sum of their ratios).
    expected: f64,
    /// What this second's ratios are multiplied by.
    factor: f64,
}

impl RateLimit {
    pub fn new(max_per_second: u64) -> Self {
        Self {
            max_per_second: max_per_second as f64,
            second: 0,
            caused: 0,
            expected: 0.0,
            factor: 1.0,
        }
    }

    /// What a tree's configured ratio is multiplied by at `now_ns`.
    pub fn factor(&mut self, now_ns: u64) -> f64 {
        let second = now_ns / SECOND_NS;
        if second != self.second {
            self.factor = if second == self.second + 1 {
                let left = (self.max_per_second - self.caused as f64).max(0.0);
                if self.expected <= left {
                    1.0
                } else {
                    left / self.expected
                }
            } else {
                // A quiet second in between: nothing says the load goes on.
                1.0
            };
            self.second = second;
            self.caused = 0;
            self.expected = 0.0;
        }
        self.factor
    }

    /// A tree kept for a cause at `now_ns`.
    pub fn caused(&mut self, now_ns: u64) {
        self.factor(now_ns);
        self.caused += 1;
    }

    /// A tree sampled by ratio at `now_ns`, at `configured` before the limit.
    pub fn sampled(&mut self, now_ns: u64, configured: f64) {
        self.factor(now_ns);
        self.expected += configured;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_second_lowers_the_next_seconds_ratio_to_fit_the_budget() {
        let mut limit = RateLimit::new(100);
        // Second 10: 1,000 trees at ratio 1 would keep 1,000.
        assert_eq!(limit.factor(10 * SECOND_NS), 1.0);
        for _ in 0..1_000 {
            limit.sampled(10 * SECOND_NS + 5, 1.0);
        }
        let factor = limit.factor(11 * SECOND_NS);
        assert!((factor - 0.1).abs() < 1e-12, "{factor}");
        // Within the second it stays.
        limit.sampled(11 * SECOND_NS + 1, 1.0);
        assert_eq!(limit.factor(11 * SECOND_NS + 999_999_999), factor);
        // Second 11 was quiet: second 12 is back to the configured ratio.
        assert_eq!(limit.factor(12 * SECOND_NS), 1.0);
    }

    #[test]
    fn trees_kept_for_a_cause_use_the_budget_first() {
        let mut limit = RateLimit::new(100);
        for _ in 0..60 {
            limit.caused(SECOND_NS);
        }
        for _ in 0..400 {
            limit.sampled(SECOND_NS, 0.5);
        }
        // 200 expected for 40 left.
        let factor = limit.factor(2 * SECOND_NS);
        assert!((factor - 0.2).abs() < 1e-12, "{factor}");
        for _ in 0..150 {
            limit.caused(2 * SECOND_NS);
        }
        limit.sampled(2 * SECOND_NS, 1.0);
        assert_eq!(limit.factor(3 * SECOND_NS), 0.0, "no budget left");
    }

    #[test]
    fn a_quiet_load_keeps_the_configured_ratio() {
        let mut limit = RateLimit::new(100);
        for _ in 0..99 {
            limit.sampled(0, 1.0);
        }
        assert_eq!(limit.factor(SECOND_NS), 1.0);
        // Another quiet gap after a busy second.
        for _ in 0..1_000 {
            limit.sampled(SECOND_NS, 1.0);
        }
        assert_eq!(limit.factor(5 * SECOND_NS), 1.0);
    }
}
