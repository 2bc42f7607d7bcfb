//! Verdicts written onto finished spans. Today: slowness against per-type thresholds. The
//! pattern detectors (N+1, sequential calls, ...) join here, reading a server span's children.

pub mod slow;

pub use slow::mark_slow;
