//! Phases measured in alternating rounds (nothing, floor, loupe, nothing, floor, loupe, ...), so
//! that whatever else runs on a shared machine falls on every phase alike. Each ratio is taken
//! within its round, against that round's baseline (the first phase), and reported as the
//! median of the rounds with its spread; a run whose baseline moved more than
//! [`BASELINE_MOVE`] between rounds is flagged.

/// How far the baseline may move between rounds (max / min - 1) before a run is flagged.
pub const BASELINE_MOVE: f64 = 0.15;

/// One phase's measure in one round.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Requests (or transactions) a second.
    pub rate: f64,
    /// The target's p99 in microseconds, where the load generator gives one.
    pub p99_us: Option<f64>,
    /// loupe's CPU seconds during the phase (0 where loupe did not run).
    pub cpu: f64,
    /// loupe's peak RSS in KiB (0 where loupe did not run).
    pub rss_kib: u64,
}

/// A value's median over the rounds and its range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            low: sorted.first().copied().unwrap_or(0.0),
            high: sorted.last().copied().unwrap_or(0.0),
        }
    }

    /// `0.912 (0.897-0.930)`.
    pub fn ratio(&self) -> String {
        format!("{:.3} ({:.3}-{:.3})", self.median, self.low, self.high)
    }

    /// Percentage points, `12.3 (10.1-14.0)`.
    pub fn points(&self) -> String {
        format!("{:.1} ({:.1} to {:.1})", self.median, self.low, self.high)
    }
}

/// A phase: its name, and what measures it once.
pub type Phase<'a> = (String, Box<dyn FnMut() -> anyhow::Result<Sample> + 'a>);

/// Every phase's samples, one per round, in the order measured; phase 0 is the baseline.
pub struct Rounds {
    pub names: Vec<String>,
    pub samples: Vec<Vec<Sample>>,
}

impl Rounds {
    /// Runs each phase once per round, `rounds` times, in order.
    pub fn measure<'a>(rounds: usize, mut phases: Vec<Phase<'a>>) -> anyhow::Result<Self> {
        let mut samples = vec![Vec::new(); phases.len()];
        for round in 0..rounds {
            for (i, (name, phase)) in phases.iter_mut().enumerate() {
                let sample = phase()?;
                eprintln!(
                    "bench: round {}/{rounds} {name}: {:.0}/s",
                    round + 1,
                    sample.rate
                );
                samples[i].push(sample);
            }
        }
        Ok(Self {
            names: phases.into_iter().map(|(name, _)| name).collect(),
            samples,
        })
    }

    pub fn rate(&self, phase: usize) -> Spread {
        self.of(phase, |s| s.rate)
    }

    /// `phase`'s rate over the baseline's, round by round.
    pub fn ratio(&self, phase: usize) -> Spread {
        Spread::of(&self.per_round(phase, |s, base| s.rate / base.rate))
    }

    /// How many points of the baseline's throughput `phase` costs beyond `than`, round by round.
    pub fn points_beyond(&self, phase: usize, than: usize) -> Spread {
        let values: Vec<f64> = (0..self.samples[0].len())
            .map(|r| {
                let base = self.samples[0][r].rate;
                (self.samples[than][r].rate - self.samples[phase][r].rate) / base * 100.0
            })
            .collect();
        Spread::of(&values)
    }

    /// `phase`'s p99 over `than`'s, round by round (rounds without both left out).
    pub fn p99_ratio(&self, phase: usize, than: usize) -> Option<Spread> {
        let values: Vec<f64> = self.samples[phase]
            .iter()
            .zip(&self.samples[than])
            .filter_map(|(a, b)| match (a.p99_us, b.p99_us) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            })
            .collect();
        (!values.is_empty()).then(|| Spread::of(&values))
    }

    pub fn p99_us(&self, phase: usize) -> Option<f64> {
        let values: Vec<f64> = self.samples[phase]
            .iter()
            .filter_map(|s| s.p99_us)
            .collect();
        (!values.is_empty()).then(|| Spread::of(&values).median)
    }

    pub fn cpu(&self, phase: usize) -> f64 {
        self.of(phase, |s| s.cpu).median
    }

    /// loupe's CPU per request in microseconds: its CPU over the requests of each round.
    pub fn cpu_per_request_us(&self, phase: usize, seconds: u64) -> f64 {
        self.of(phase, |s| s.cpu * 1e6 / (s.rate * seconds as f64).max(1.0))
            .median
    }

    pub fn rss_mib(&self, phase: usize) -> f64 {
        self.samples[phase]
            .iter()
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    }

    /// How far the baseline moved between rounds (max / min - 1), when more than
    /// [`BASELINE_MOVE`].
    pub fn baseline_moved(&self) -> Option<f64> {
        let rate = self.rate(0);
        let moved = if rate.low > 0.0 {
            rate.high / rate.low - 1.0
        } else {
            f64::INFINITY
        };
        (moved > BASELINE_MOVE).then_some(moved)
    }

    /// The warning line for a moved baseline, if it moved.
    pub fn flag(&self, target: &str) -> Option<String> {
        self.baseline_moved().map(|moved| {
            let rate = self.rate(0);
            format!(
                "WARNING: {target}'s baseline moved {:.0}% between rounds ({:.0} to {:.0}/s): something else ran on the machine; its ratios are not to be trusted",
                moved * 100.0,
                rate.low,
                rate.high
            )
        })
    }

    /// `f` of each of `phase`'s rounds.
    fn of(&self, phase: usize, f: impl Fn(&Sample) -> f64) -> Spread {
        Spread::of(&self.samples[phase].iter().map(f).collect::<Vec<_>>())
    }

    fn per_round(&self, phase: usize, f: impl Fn(&Sample, &Sample) -> f64) -> Vec<f64> {
        self.samples[phase]
            .iter()
            .zip(&self.samples[0])
            .map(|(s, base)| f(s, base))
            .collect()
    }
}

/// A microsecond count as wrk prints it.
pub fn micros(us: Option<f64>) -> String {
    match us {
        Some(us) if us >= 1e6 => format!("{:.2}s", us / 1e6),
        Some(us) if us >= 1e3 => format!("{:.2}ms", us / 1e3),
        Some(us) => format!("{us:.0}us"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(rates: &[&[f64]]) -> Rounds {
        Rounds {
            names: (0..rates.len()).map(|i| i.to_string()).collect(),
            samples: rates
                .iter()
                .map(|phase| {
                    phase
                        .iter()
                        .map(|rate| Sample {
                            rate: *rate,
                            p99_us: Some(1000.0 / rate),
                            ..Sample::default()
                        })
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn ratios_are_taken_within_each_round_then_the_median() {
        // The machine halved in round 2: within it every phase halved alike.
        let r = rounds(&[
            &[100.0, 50.0, 100.0],
            &[90.0, 45.0, 80.0],
            &[80.0, 40.0, 70.0],
        ]);
        let floor = r.ratio(1);
        assert!((floor.median - 0.9).abs() < 1e-9, "{floor:?}");
        assert!((floor.low - 0.8).abs() < 1e-9 && (floor.high - 0.9).abs() < 1e-9);
        let beyond = r.points_beyond(2, 1);
        assert!((beyond.median - 10.0).abs() < 1e-9, "{beyond:?}");
        assert!(r.baseline_moved().is_some_and(|m| (m - 1.0).abs() < 1e-9));
        assert!(r.flag("nginx").unwrap().contains("moved 100%"));
        // p99 is 1000/rate here: 1.25x in the first two rounds, 100/70 in the third.
        let p99 = r.p99_ratio(2, 0).unwrap();
        assert!((p99.median - 1.25).abs() < 1e-9, "{p99:?}");
        assert!((p99.high - 100.0 / 70.0).abs() < 1e-9, "{p99:?}");
    }

    #[test]
    fn a_steady_baseline_is_not_flagged() {
        let r = rounds(&[&[100.0, 110.0, 105.0], &[90.0, 99.0, 94.0]]);
        assert_eq!(r.baseline_moved(), None);
        assert!(r.flag("nginx").is_none());
        // 15% exactly is allowed; 16% is not.
        assert!(rounds(&[&[100.0, 115.0]]).baseline_moved().is_none());
        assert!(rounds(&[&[100.0, 116.0]]).baseline_moved().is_some());
    }

    #[test]
    fn medians_of_even_counts_average_the_middle_two() {
        assert_eq!(
            Spread::of(&[4.0, 1.0, 3.0, 2.0]),
            Spread {
                median: 2.5,
                low: 1.0,
                high: 4.0
            }
        );
        assert_eq!(micros(Some(681.0)), "681us");
        assert_eq!(micros(Some(3260.0)), "3.26ms");
        assert_eq!(micros(None), "");
    }
}
