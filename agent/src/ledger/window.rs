//! Durations over time: since start, and rolling windows built of [`SLOT_NS`] slots (the last
//! minute is the newest [`ONE_MINUTE`] slots, the current one partial; five minutes, all
//! [`SLOTS`]). A route also keeps five-minute blocks for its rolling baseline: the
//! [`BASELINE_BLOCKS`] blocks before the current one.

use std::collections::VecDeque;

use hdrhistogram::{Counter, Histogram};
use serde::Serialize;

/// One slot of a rolling window.
pub const SLOT_NS: u64 = 15_000_000_000;
/// Slots in the five-minute window.
pub const SLOTS: usize = 20;
/// Slots in the one-minute window.
pub const ONE_MINUTE: usize = 4;
/// A baseline block: five minutes.
pub const BLOCK_NS: u64 = SLOT_NS * SLOTS as u64;
/// Blocks in the rolling baseline: the thirty minutes before the current block.
pub const BASELINE_BLOCKS: usize = 6;

/// One observation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub micros: u64,
    pub error: bool,
    pub slow: bool,
    /// Within the route's SLO threshold (false when it has none).
    pub good: bool,
}

/// Counts and a duration histogram (microseconds, 2 significant digits, grown as needed: a
/// few KiB). A slot's counts fit a `u32`; what is kept since start counts in `u64` ([`Total`]).
#[derive(Clone, Debug)]
pub struct Cell<C: Counter = u32> {
    pub errors: u64,
    pub slow: u64,
    pub good: u64,
    pub sum_us: u64,
    /// Exact, where the histogram's are its buckets' bounds.
    pub min_us: u64,
    pub max_us: u64,
    pub micros: Histogram<C>,
}

/// A cell kept since start: its buckets never saturate.
pub type Total = Cell<u64>;

impl<C: Counter> Default for Cell<C> {
    fn default() -> Self {
        Self {
            errors: 0,
            slow: 0,
            good: 0,
            sum_us: 0,
            min_us: u64::MAX,
            max_us: 0,
            micros: Histogram::new(2).expect("2 significant digits are valid"),
        }
    }
}

impl<C: Counter> Cell<C> {
    pub fn record(&mut self, sample: Sample) {
        self.errors += u64::from(sample.error);
        self.slow += u64::from(sample.slow);
        self.good += u64::from(sample.good);
        self.sum_us = self.sum_us.saturating_add(sample.micros);
        self.min_us = self.min_us.min(sample.micros);
        self.max_us = self.max_us.max(sample.micros);
        // Grows to hold the value (a slot's bucket would saturate past u32::MAX in 15 s).
        let _ = self.micros.record(sample.micros);
    }

    pub fn count(&self) -> u64 {
        self.micros.len()
    }

    pub fn merge(&mut self, other: &Cell<C>) {
        self.errors += other.errors;
        self.slow += other.slow;
        self.good += other.good;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        // Both grow as needed: adding never fails for want of range.
        let _ = self.micros.add(&other.micros);
    }

    fn clear(&mut self) {
        self.errors = 0;
        self.slow = 0;
        self.good = 0;
        self.sum_us = 0;
        self.min_us = u64::MAX;
        self.max_us = 0;
        self.micros.reset();
    }

    /// The duration at `quantile` (0..=1) in microseconds (within 1%, never past the
    /// largest seen); None when empty.
    pub fn quantile_us(&self, quantile: f64) -> Option<u64> {
        (self.count() > 0).then(|| {
            self.micros
                .value_at_quantile(quantile)
                .clamp(self.min_us, self.max_us)
        })
    }

    /// How many durations fall in each of [`BUCKET_BOUNDS_MS`] (not cumulative), and past
    /// the last one.
    pub fn buckets(&self) -> Vec<Bucket> {
        let mut counts = vec![0u64; BUCKET_BOUNDS_MS.len() + 1];
        for value in self.micros.iter_recorded() {
            let ms = self.micros.lowest_equivalent(value.value_iterated_to()) as f64 / 1000.0;
            let index = BUCKET_BOUNDS_MS
                .iter()
                .position(|bound| ms <= *bound)
                .unwrap_or(BUCKET_BOUNDS_MS.len());
            counts[index] += value.count_at_value().as_u64();
        }
        counts
            .into_iter()
            .enumerate()
            .map(|(index, count)| Bucket {
                le_ms: BUCKET_BOUNDS_MS.get(index).copied(),
                count,
            })
            .collect()
    }

    pub fn summary(&self) -> Summary {
        let count = self.count();
        let ms = |micros: u64| round3(micros as f64 / 1000.0);
        let percent = |n: u64| {
            if count == 0 {
                0.0
            } else {
                round3(100.0 * n as f64 / count as f64)
            }
        };
        let at = |quantile: f64| self.quantile_us(quantile).map_or(0.0, ms);
        Summary {
            count,
            error_count: self.errors,
            error_percentage: percent(self.errors),
            slow_count: self.slow,
            slow_percentage: percent(self.slow),
            min_duration: if count == 0 { 0.0 } else { ms(self.min_us) },
            avg_duration: if count == 0 {
                0.0
            } else {
                round3(self.sum_us as f64 / count as f64 / 1000.0)
            },
            max_duration: if count == 0 { 0.0 } else { ms(self.max_us) },
            p50_duration: at(0.50),
            p95_duration: at(0.95),
            p99_duration: at(0.99),
        }
    }
}

/// The latency histogram's bucket bounds, in milliseconds.
pub const BUCKET_BOUNDS_MS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Durations up to `le_ms` (past the one before); None: past the last bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub le_ms: Option<f64>,
    pub count: u64,
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// What a span of statistics says, durations in milliseconds (the `/stats` schema:
/// docs/stats.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub count: u64,
    pub error_count: u64,
    pub error_percentage: f64,
    pub slow_count: u64,
    pub slow_percentage: f64,
    pub min_duration: f64,
    pub avg_duration: f64,
    pub max_duration: f64,
    pub p50_duration: f64,
    pub p95_duration: f64,
    pub p99_duration: f64,
}

/// Since start, the rolling slots, and (for routes) the baseline blocks.
#[derive(Debug)]
pub struct Windowed {
    pub total: Total,
    /// By slot number modulo [`SLOTS`]: (slot number, its cell); allocated when first used.
    slots: Vec<Option<(u64, Cell)>>,
    /// Completed blocks' summaries, oldest first, and the block being filled: kept only when
    /// asked for.
    blocks: Option<Blocks>,
}

/// A completed baseline block: its number, requests and p95.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    number: u64,
    count: u64,
    p95_us: u64,
}

#[derive(Debug, Default)]
struct Blocks {
    done: VecDeque<Block>,
    current: Option<(u64, Cell)>,
}

fn summarize(number: u64, cell: &Cell) -> Block {
    Block {
        number,
        count: cell.count(),
        p95_us: cell.quantile_us(0.95).unwrap_or(0),
    }
}

impl Windowed {
    /// `baseline`: also keep the blocks a rolling baseline is made of.
    pub fn new(baseline: bool) -> Self {
        Self {
            total: Total::default(),
            slots: (0..SLOTS).map(|_| None).collect(),
            blocks: baseline.then(Blocks::default),
        }
    }

    /// Adds `sample` at `now_ns` (the monotonic clock).
    pub fn record(&mut self, now_ns: u64, sample: Sample) {
        self.total.record(sample);
        let slot = now_ns / SLOT_NS;
        let entry = &mut self.slots[(slot % SLOTS as u64) as usize];
        match entry {
            Some((number, cell)) if *number == slot => cell.record(sample),
            Some((number, cell)) => {
                // An older slot's place: cleared and reused (its histogram keeps its size).
                *number = slot;
                cell.clear();
                cell.record(sample);
            }
            None => {
                let mut cell = Cell::default();
                cell.record(sample);
                *entry = Some((slot, cell));
            }
        }
        if let Some(blocks) = &mut self.blocks {
            let block = now_ns / BLOCK_NS;
            match &mut blocks.current {
                Some((number, cell)) if *number == block => cell.record(sample),
                Some((number, cell)) => {
                    // The block is over: only its summary is kept; the cell starts the next.
                    blocks.done.push_back(summarize(*number, cell));
                    while blocks.done.len() > BASELINE_BLOCKS {
                        blocks.done.pop_front();
                    }
                    *number = block;
                    cell.clear();
                    cell.record(sample);
                }
                None => {
                    let mut cell = Cell::default();
                    cell.record(sample);
                    blocks.current = Some((block, cell));
                }
            }
        }
    }

    /// The newest `slots` slots as of `now_ns` merged (the current one included, partial).
    pub fn window(&self, now_ns: u64, slots: usize) -> Cell {
        let mut merged = Cell::default();
        for cell in self.slots_in(now_ns, slots) {
            merged.merge(cell);
        }
        merged
    }

    /// Of the newest `slots` slots, the requests within the SLO and all of them: (good,
    /// total), no histogram merged.
    pub fn window_counts(&self, now_ns: u64, slots: usize) -> (u64, u64) {
        self.slots_in(now_ns, slots)
            .fold((0, 0), |(good, total), cell| {
                (good + cell.good, total + cell.count())
            })
    }

    fn slots_in(&self, now_ns: u64, slots: usize) -> impl Iterator<Item = &Cell> {
        let newest = now_ns / SLOT_NS;
        let oldest = newest.saturating_sub(slots.saturating_sub(1) as u64);
        self.slots
            .iter()
            .flatten()
            .filter(move |(number, _)| (oldest..=newest).contains(number))
            .map(|(_, cell)| cell)
    }

    /// The rolling baseline p95 as of `now_ns`: the median of the p95s of the completed
    /// blocks, of the [`BASELINE_BLOCKS`] before the current one, that have `min_samples`
    /// requests; None when none has. A median, so that a regression has to last half the
    /// baseline (fifteen minutes) before it is the baseline.
    pub fn baseline_p95(&self, now_ns: u64, min_samples: u64) -> Option<u64> {
        let blocks = self.blocks.as_ref()?;
        let current = now_ns / BLOCK_NS;
        let oldest = current.saturating_sub(BASELINE_BLOCKS as u64);
        let pending = blocks
            .current
            .as_ref()
            .map(|(number, cell)| summarize(*number, cell));
        let mut p95s: Vec<u64> = blocks
            .done
            .iter()
            .copied()
            .chain(pending)
            .filter(|block| block.number < current && block.number >= oldest)
            .filter(|block| block.count >= min_samples.max(1))
            .map(|block| block.p95_us)
            .collect();
        if p95s.is_empty() {
            return None;
        }
        p95s.sort_unstable();
        Some(p95s[(p95s.len() - 1) / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Sample {
        Sample {
            micros: n * 1000,
            ..Sample::default()
        }
    }

    #[test]
    fn a_cell_summarizes_counts_shares_and_percentiles_in_milliseconds() {
        let mut cell: Cell = Cell::default();
        for n in 1..=100 {
            cell.record(Sample {
                micros: n * 1000,
                error: n % 10 == 0,
                slow: n > 95,
                good: n <= 50,
            });
        }
        let summary = cell.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.error_count, 10);
        assert_eq!(summary.error_percentage, 10.0);
        assert_eq!(summary.slow_count, 5);
        assert_eq!(summary.slow_percentage, 5.0);
        assert_eq!(summary.min_duration, 1.0);
        assert_eq!(summary.avg_duration, 50.5);
        assert_eq!(summary.max_duration, 100.0);
        assert!((summary.p50_duration - 50.0).abs() < 0.5, "{summary:?}");
        assert!((summary.p95_duration - 95.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_duration - 99.0).abs() < 1.0, "{summary:?}");
        assert_eq!(cell.good, 50);
        let buckets = cell.buckets();
        assert_eq!(buckets.len(), BUCKET_BOUNDS_MS.len() + 1);
        assert_eq!(
            buckets[0],
            Bucket {
                le_ms: Some(1.0),
                count: 1
            }
        );
        assert_eq!(buckets[4].count, 15, "10 < ms <= 25");
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 100);
        assert_eq!(Cell::<u32>::default().summary(), Summary::default());
    }

    #[test]
    fn windows_hold_the_newest_slots_and_forget_older_ones() {
        let mut durations = Windowed::new(false);
        let t0 = 1_000 * SLOT_NS;
        durations.record(t0, ms(100));
        durations.record(t0 + SLOT_NS, ms(10));
        durations.record(t0 + 4 * SLOT_NS, ms(1));
        let now = t0 + 4 * SLOT_NS;
        // The last minute: slots t0+1 .. t0+4.
        assert_eq!(durations.window(now, ONE_MINUTE).count(), 2);
        assert_eq!(durations.window(now, SLOTS).count(), 3);
        assert_eq!(durations.total.count(), 3);
        // Five minutes on, nothing is in any window; a slot's place reused drops its old count.
        let later = t0 + SLOTS as u64 * SLOT_NS;
        assert_eq!(durations.window(later, SLOTS).count(), 2);
        durations.record(later, ms(5));
        assert_eq!(durations.window(later, SLOTS).count(), 3);
        assert_eq!(durations.window(later, 1).count(), 1);
        assert_eq!(durations.window(later + 100 * SLOT_NS, SLOTS).count(), 0);
        assert_eq!(durations.total.count(), 4);
    }

    #[test]
    fn the_rolling_baseline_is_the_median_p95_of_the_last_half_hours_blocks() {
        let mut durations = Windowed::new(true);
        let t0 = 100 * BLOCK_NS;
        assert!(durations.baseline_p95(t0, 1).is_none());
        for _ in 0..10 {
            durations.record(t0, ms(10));
        }
        assert!(
            durations.baseline_p95(t0, 1).is_none(),
            "the block is not over"
        );
        let next = t0 + BLOCK_NS;
        assert_eq!(durations.baseline_p95(next, 1), Some(10_000));
        assert!(
            durations.baseline_p95(next, 11).is_none(),
            "too few requests"
        );
        // Two more blocks: one of 10 ms, one regressed at 50 ms: the median is still 10 ms.
        for _ in 0..10 {
            durations.record(next, ms(10));
        }
        for _ in 0..10 {
            durations.record(next + BLOCK_NS, ms(50));
        }
        let later = next + 2 * BLOCK_NS;
        assert_eq!(durations.baseline_p95(later, 1), Some(10_000));
        for _ in 0..10 {
            durations.record(later, ms(50));
        }
        assert_eq!(
            durations.baseline_p95(later + BLOCK_NS, 1),
            Some(10_000),
            "two of four blocks regressed: the lower median"
        );
        // Past half an hour the first blocks are out of it.
        let late = t0 + (BASELINE_BLOCKS as u64 + 2) * BLOCK_NS;
        assert_eq!(durations.baseline_p95(late, 1), Some(50_000));
        assert!(durations.baseline_p95(late + 10 * BLOCK_NS, 1).is_none());
        assert!(Windowed::new(false).baseline_p95(t0, 1).is_none());
        assert_eq!(durations.window_counts(later, SLOTS), (0, 10));
    }
}
