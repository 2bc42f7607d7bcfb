//! OpenTelemetry's consistent probability sampling ("TraceState: Probability Sampling"): the
//! randomness R of a trace is the lowest 56 bits of its trace id, a sampling ratio becomes a
//! rejection threshold T, and a trace is kept iff R >= T. Every participant that samples a trace
//! id at the same ratio decides the same, and one at a lower ratio keeps a subset of what one at
//! a higher ratio keeps. The threshold travels in the span's tracestate as `ot=th:<hex>`.
//!
//! An explicit randomness value (`rv` in an inbound tracestate) would replace R; loupe reads
//! only the inbound `traceparent`, so R is always the trace id's.

/// 2^56: thresholds and randomness are 56-bit numbers.
pub const SPACE: u64 = 1 << 56;

/// A rejection threshold: a trace is kept iff its randomness is at least this. 0 keeps every
/// trace (`th:0`); [`SPACE`] keeps none (and has no tracestate form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

impl Threshold {
    /// Keeps every trace.
    pub const ALWAYS: Self = Self(0);
    /// Keeps no trace.
    pub const NEVER: Self = Self(SPACE);

    /// The threshold of a ratio in 0..=1 (clamped), at full precision as OTel's collector
    /// computes it: T = 2^56 - round(ratio * 2^56). Scaling the ratio, not 1 - ratio, keeps the
    /// bits a small ratio would lose to rounding.
    pub fn of_ratio(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        // At most 2^56, exactly representable: the cast does not saturate.
        let kept = (ratio * SPACE as f64).round() as u64;
        Self(SPACE - kept.min(SPACE))
    }

    /// The 56-bit value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// Whether a trace with this id is kept.
    pub fn keeps(self, trace_id: u128) -> bool {
        randomness(trace_id) >= self.0
    }

    /// The share of trace ids kept.
    pub fn ratio(self) -> f64 {
        (SPACE - self.0) as f64 / SPACE as f64
    }

    /// The `ot` tracestate value, `th:` and the threshold in 14 hex digits with trailing zeros
    /// removed (`th:0` keeps all, `th:8` half, `th:e6666666666666` a tenth); None for
    /// [`Threshold::NEVER`], which a kept span never carries.
    pub fn tracestate(self) -> Option<String> {
        let mut out = String::new();
        self.write_tracestate(&mut out).then_some(out)
    }

    /// [`Threshold::tracestate`] appended to `out` (no allocation once `out` has the room);
    /// false, and nothing written, for [`Threshold::NEVER`].
    pub fn write_tracestate(self, out: &mut String) -> bool {
        use std::fmt::Write as _;
        if self.0 >= SPACE {
            return false;
        }
        if self.0 == 0 {
            out.push_str("th:0");
            return true;
        }
        let _ = write!(out, "th:{:014x}", self.0);
        let kept = out.trim_end_matches('0').len();
        out.truncate(kept);
        true
    }
}

/// A trace's randomness R: the lowest 56 bits of its id (the W3C id's last 7 bytes).
pub fn randomness(trace_id: u128) -> u64 {
    (trace_id as u64) & (SPACE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_become_the_specs_thresholds() {
        assert_eq!(Threshold::of_ratio(1.0), Threshold::ALWAYS);
        assert_eq!(Threshold::of_ratio(0.0), Threshold::NEVER);
        assert_eq!(Threshold::of_ratio(0.5).value(), 0x80_0000_0000_0000);
        assert_eq!(Threshold::of_ratio(0.25).value(), 0xc0_0000_0000_0000);
        assert_eq!(Threshold::of_ratio(1.0 / 16.0).value(), 0xf0_0000_0000_0000);
        // A tenth: 2^56 - round(2^56 / 10).
        assert_eq!(
            Threshold::of_ratio(0.1).value(),
            SPACE - 7_205_759_403_792_794
        );
        // Out of range is clamped, NaN keeps nothing.
        assert_eq!(Threshold::of_ratio(7.0), Threshold::ALWAYS);
        assert_eq!(Threshold::of_ratio(-1.0), Threshold::NEVER);
        assert_eq!(Threshold::of_ratio(f64::NAN), Threshold::NEVER);
        // Below 2^-56 nothing is kept.
        assert_eq!(Threshold::of_ratio(1e-18), Threshold::NEVER);
        assert_eq!(Threshold::of_ratio(1.0 / SPACE as f64).value(), SPACE - 1);
    }

    #[test]
    fn the_tracestate_drops_trailing_zeros() {
        assert_eq!(Threshold::ALWAYS.tracestate().as_deref(), Some("th:0"));
        assert_eq!(
            Threshold::of_ratio(0.5).tracestate().as_deref(),
            Some("th:8")
        );
        assert_eq!(
            Threshold::of_ratio(0.25).tracestate().as_deref(),
            Some("th:c")
        );
        assert_eq!(
            Threshold::of_ratio(0.1).tracestate().as_deref(),
            Some("th:e6666666666666")
        );
        assert_eq!(
            Threshold::of_ratio(0.01).tracestate().as_deref(),
            Some("th:fd70a3d70a3d71")
        );
        // Leading zeros are kept: the value is always read as 14 digits.
        assert_eq!(
            Threshold(0x00_1000_0000_0000).tracestate().as_deref(),
            Some("th:001")
        );
        assert_eq!(Threshold::NEVER.tracestate(), None);
    }

    #[test]
    fn randomness_is_the_trace_ids_last_seven_bytes() {
        let id = 0x4bf92f3577b34da6_a3ce929d0e0e4736_u128;
        assert_eq!(randomness(id), 0xce929d0e0e4736);
        assert!(Threshold::ALWAYS.keeps(0));
        assert!(!Threshold::NEVER.keeps(u128::MAX));
        let half = Threshold::of_ratio(0.5);
        assert!(half.keeps(0x80_0000_0000_0000));
        assert!(!half.keeps(0x7f_ffff_ffff_ffff));
        // The upper bits play no part.
        assert!(!half.keeps(0xffff_ffff_ffff_ffff_ff7f_ffff_ffff_ffff));
    }

    #[test]
    fn a_lower_ratio_keeps_a_subset_and_about_its_share() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (tenth, fifth) = (Threshold::of_ratio(0.1), Threshold::of_ratio(0.2));
        let mut kept = (0, 0);
        for _ in 0..100_000 {
            let id = (u128::from(next()) << 64) | u128::from(next());
            if tenth.keeps(id) {
                assert!(fifth.keeps(id), "{id:x}");
                kept.0 += 1;
            }
            kept.1 += u32::from(fifth.keeps(id));
        }
        assert!((9_500..=10_500).contains(&kept.0), "{kept:?}");
        assert!((19_300..=20_700).contains(&kept.1), "{kept:?}");
        assert!((tenth.ratio() - 0.1).abs() < 1e-12);
    }
}
