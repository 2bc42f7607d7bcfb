//! CPU profiles of slow operations. While an operation runs past its threshold its thread is hot:
//! the upkeep opens a CPU-clock perf event on that thread alone ([`crate::probes::perf`]), and
//! its samples ([`samples`]) wait in the stitch stage. When the slow span finishes, the samples in
//! its thread and time window go with it to the symbolizer thread ([`symbolizer`]: blazesym,
//! whose Symbolizer is not Send), which unwinds each user stack from the copy the kernel took
//! ([`unwind`]: `.eh_frame`, so code without frame pointers gives whole stacks), folds the
//! stacks ([`stacks`]) into a `cpu_profile` span event, writes a flamegraph with --profile-dir ([`flame`]), and hands the span to the exporter.
//! Nothing is opened while nothing is slow.

pub mod asleep;
pub mod flame;
pub mod hot;
pub mod maps;
pub mod offcpu;
pub mod python;
pub mod samples;
pub mod stacks;
pub mod symbolizer;
pub mod unwind;

pub use hot::{HotThreads, ProfileCommand};
pub use samples::SampleStore;
pub use symbolizer::{ProfileJob, ProfileSettings, spawn_symbolizer};
