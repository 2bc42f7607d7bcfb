//! Keys and values of the maps shared by kernel and userspace.

/// Value of `TARGET_PIDS`: present means "trace this thread group".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TargetInfo {
    /// The pid the user named that this process belongs to (itself, or an ancestor for children).
    pub root_pid: u32,
    /// For a Go program of a known version: where its `runtime.g` keeps `goid` (low 16 bits)
    /// and `parentGoid` (high 16 bits), so the data programs read the running goroutine's ids
    /// (g is in r14 at every syscall Go makes). 0: not Go, or a version loupe has no layout for.
    pub goid_offset: u32,
}

impl TargetInfo {
    /// `goid_offset` from the two offsets.
    pub const fn pack_go_offsets(goid: u32, parent_goid: u32) -> u32 {
        (goid & 0xffff) | (parent_goid << 16)
    }
}
const _: () = assert!(size_of::<TargetInfo>() == 8);

/// Key of `SOCKETS`: one open socket of a target process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketKey {
    /// Thread group id.
    pub pid: u32,
    /// File descriptor.
    pub fd: i32,
}
const _: () = assert!(size_of::<SocketKey>() == 8);

impl SocketKey {
    /// The key as one u64, the form used where a single integer key is cheaper.
    pub const fn as_u64(self) -> u64 {
        ((self.pid as u64) << 32) | (self.fd as u32 as u64)
    }

    /// The pid part of a key made by [`SocketKey::as_u64`].
    pub const fn pid_of(key: u64) -> u32 {
        (key >> 32) as u32
    }
}

/// Value of `SOCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketInfo {
    /// A `SocketRole` id.
    pub role: u32,
    /// The owning process's `TargetInfo::goid_offset`, so the data programs need no second
    /// lookup.
    pub goid_offset: u32,
    /// The connection this fd refers to (see `EventHeader::conn_id`).
    pub conn_id: u64,
}
const _: () = assert!(size_of::<SocketInfo>() == 16);

/// Slots of the per-CPU `LOSS` counter array. Every event the kernel could not deliver is
/// counted in one of these; userspace sums the CPUs and shows them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossSlot {
    /// The ring buffer was full when a record was reserved.
    RingFull = 0,
    /// The in-flight syscall map was full at syscall entry.
    InFlightFull = 1,
    /// The sockets map was full when a new connection was recorded.
    SocketsFull = 2,
    /// The targets map was full when a forked child was added.
    TargetsFull = 3,
    /// A vector read or write (readv, writev, recvmsg, sendmsg) had more iovecs than the exit
    /// program reads, and bytes that would have fitted the capture were in the ones it left.
    IovecsCut = 4,
    /// Plaintext an OpenSSL call moved on a connection loupe could not tell (its socket never
    /// seen inside an OpenSSL call: the data was buffered since before attach).
    TlsUnplaced = 5,
    /// Not a loss: keys the kernel put in `SOCKETS` that were not there. With
    /// `SocketsRemoved`, userspace's own inserts and removes, and the keys still there, it tells
    /// how many sockets the LRU map let go of to make room.
    SocketsAdded = 6,
    /// Not a loss: keys the kernel removed from `SOCKETS` that were there.
    SocketsRemoved = 7,
}
/// Number of slots in `LOSS`.
pub const LOSS_SLOTS: u32 = 8;
/// `RUNTIME` bit: some target's Python threads are in `PY_CONTEXTS` (the data exits read the
/// current Context only then).
pub const RUNTIME_PYTHON: u32 = 1;
/// `RUNTIME` bit: OpenSSL uprobes are attached somewhere (the data exits check whether their
/// syscall is inside an OpenSSL call only then).
pub const RUNTIME_TLS: u32 = 2;

/// Entries of the kernel's `SOCKETS` map unless the loader sets another size.
pub const SOCKETS_MAX: u32 = 65_536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::TargetInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketInfo {}
}
