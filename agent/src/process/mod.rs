//! The observed processes: which they are (the named PIDs, the processes `--exe` and `--name`
//! match, and their descendants), how one is told from a later process on its pid, what they
//! are called, and which sockets they already had open when loupe attached.

pub mod gopclntab;
pub mod identity;
pub mod libraries;
pub mod matching;
pub mod python;
pub mod runtime;
pub mod service_name;
pub mod services;
pub mod sockets;
pub mod targets;
pub mod usage;

pub use identity::{Fate, ProcessId};
pub use libraries::{MappedLibrary, mapped_libraries};
pub use matching::{CommName, ExePath, MatchedBy, Matcher};
pub use runtime::runtime_of;
pub use sockets::{
    ExistingSocket, SocketAddrs, existing_sockets, local_postgres_database, socket_addrs,
};
pub use targets::{ProcessInfo, Target, expand_targets, is_live_process};
