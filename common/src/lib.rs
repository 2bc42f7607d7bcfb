//! The kernel/user ABI of loupe.
//!
//! Everything that crosses the line between `loupe-ebpf` (kernel) and `loupe` (userspace) is
//! defined here, once: event records written to the ring buffer, map keys and values, the names
//! of programs, maps and globals, and the loss counters. Structs are `#[repr(C)]` with explicit
//! padding and a size assertion beside each, so that a change to one side that the other does not
//! see fails to compile instead of corrupting events.
#![no_std]

pub mod cpu;
pub mod event;
pub mod golang;
pub mod libpq;
pub mod maps;
pub mod names;
pub mod tls;
pub mod watch;

pub use cpu::*;
pub use event::*;
pub use golang::*;
pub use libpq::*;
pub use maps::*;
pub use tls::*;
pub use watch::*;
