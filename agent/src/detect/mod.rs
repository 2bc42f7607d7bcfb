//! Verdicts written onto finished spans: slowness against per-type thresholds ([`slow`]), and,
//! once a request finishes with its children, its bottleneck, the patterns in it and a diagnosis
//! line ([`assembly`] holds the tree, [`verdict`] writes it, [`patterns`] find what is wrong).
//! Slow spans carry a resource snapshot of their process ([`resources`]); [`board`] keeps the
//! problems per route for the terminal and the report.

pub mod assembly;
pub mod board;
pub mod intervals;
pub mod patterns;
pub mod resources;
pub mod slow;
pub mod tree;
pub mod verdict;

pub use assembly::Diagnoser;
pub use board::ProblemBoard;
pub use resources::ResourceSampler;
pub use slow::mark_slow;

/// Rounds a share to three decimals (what the attributes carry).
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
