//! Loading the eBPF object, attaching its programs and handing out its maps: the only module that
//! talks to aya's program API.

pub mod libraries;
pub mod loader;
pub mod loss;
pub mod perf;
pub mod python;
pub mod resync;
pub mod sockets;
pub mod targets;
pub mod upkeep;

pub use libraries::{LibraryNews, LibraryProbes};
pub use loader::{ExecWatch, ProbeConfig, Probes, load_and_attach};
pub use loss::LossCounters;
pub use perf::ThreadSampler;
pub use python::PythonThreads;
pub use resync::FdResync;
pub use sockets::{EvictionAudit, SocketMap};
pub use targets::{TargetNews, Targets};
pub use upkeep::Upkeep;

/// What went wrong while loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("failed to load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("program `{name}` is not what loupe expects")]
    ProgramType {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("failed to load program `{name}` into the kernel")]
    Verify {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("failed to attach `{name}` to tracepoint {category}:{tracepoint}")]
    Attach {
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("failed to use map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}
