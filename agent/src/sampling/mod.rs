//! Tail sampling, decided on the whole request tree after diagnosis: a tree (a request's server
//! span and the calls it made) with a slow span, an error or a pattern is always kept; the others
//! are kept by ratio, a function of the trace id ([`threshold`], OTel's consistent probability
//! sampling), so loupes on different hosts and a collector downstream keep the same traces.
//!
//! A tree is kept or dropped whole: the calls that finish after their request follow its
//! decision (remembered by request span id), and a call whose request is unknown is sampled on
//! its own trace id. Sampled-out spans are marked, not removed: they still count in every
//! statistic and leave the pipeline only at its very end (`spans_sampled_out`).

pub mod args;
mod limit;
mod memory;
mod sampler;
pub mod threshold;

pub use args::{RouteRatio, SamplingArgs, SamplingConfig, SamplingError};
pub use sampler::TailSampler;
pub use threshold::Threshold;

use crate::spans::SpanRecord;

/// The attribute every exported span of a kept tree carries: why it was kept.
pub const REASON_KEY: &str = "loupe.sampling.reason";

/// Why a tree was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A span of the tree (or of an earlier tree of its trace) is `performance.slow`.
    Slow,
    /// A span has error status.
    Error,
    /// The request has a pattern (`performance.patterns`).
    Pattern,
    /// None of those: its trace id fell within the ratio.
    Ratio,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slow => "slow",
            Self::Error => "error",
            Self::Pattern => "pattern",
            Self::Ratio => "ratio",
        }
    }
}

/// What a tree got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Exported, at `threshold` (0 for a cause: kept with probability 1).
    Keep {
        reason: Reason,
        threshold: Threshold,
    },
    /// Counted, not exported.
    Drop,
}

impl Decision {
    /// Writes the decision on a span of the tree.
    pub fn write(self, span: &mut SpanRecord) {
        match self {
            Self::Keep { reason, threshold } => {
                span.set(REASON_KEY, reason.as_str());
                span.sampling_threshold = Some(threshold);
                span.sampled_out = false;
            }
            Self::Drop => {
                span.sampling_threshold = None;
                span.sampled_out = true;
            }
        }
    }
}

/// The `ot` tracestate value of a kept span (`th:...`), from its `sampling_threshold`.
pub fn tracestate(span: &SpanRecord) -> Option<String> {
    span.sampling_threshold.and_then(Threshold::tracestate)
}
