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

/// Tells the data exits whether to look for `bit` (`RUNTIME`): `RUNTIME_PYTHON` while some
/// Python target's threads are known, `RUNTIME_TLS` while OpenSSL is probed somewhere (set
/// before its uprobes are attached).
pub fn set_runtime(ebpf: &mut aya::Ebpf, bit: u32, on: bool) {
    use loupe_common::names::MAP_RUNTIME;
    let Some(map) = ebpf.map_mut(MAP_RUNTIME) else {
        return;
    };
    let Ok(mut word) = aya::maps::Array::<&mut aya::maps::MapData, u32>::try_from(map) else {
        return;
    };
    let flags = word.get(&0, 0).unwrap_or(0);
    let flags = if on { flags | bit } else { flags & !bit };
    if let Err(err) = word.set(0, flags, 0) {
        tracing::debug!("RUNTIME not written: {err}");
    }
}

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
