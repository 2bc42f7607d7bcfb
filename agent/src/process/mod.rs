//! The observed processes: which they are (the named PIDs and their descendants), what they are
//! called, and which sockets they already had open when loupe attached.

pub mod gopclntab;
pub mod libraries;
pub mod python;
pub mod runtime;
pub mod sockets;
pub mod targets;
pub mod usage;

pub use libraries::{MappedLibrary, mapped_libraries};
pub use runtime::runtime_of;
pub use sockets::{
    ExistingSocket, SocketAddrs, existing_sockets, local_postgres_database, socket_addrs,
};
pub use targets::{ProcessInfo, Target, expand_targets, is_live_process};
