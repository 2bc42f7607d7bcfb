//! Uprobes on a Go program's net/http Transport: its requests are written by a goroutine of the
//! connection's own (`persistConn.writeLoop`), not by the goroutine that made the call. The
//! calling goroutine hands the `*Request` to the connection (`persistConn.roundTrip`); the
//! writing goroutine then writes that same `*Request` (`Request.write`): so a write is keyed by
//! the goroutine that made the call, for connections opened before loupe attached too.

/// A probed Go function; its id is the attach cookie.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoFunction {
    /// `net/http.(*persistConn).roundTrip(req *transportRequest)`: the calling goroutine hands
    /// its request (`req.Request`, the first field) to a connection.
    PersistConnRoundTrip = 1,
    /// `net/http.(*Request).write`: a goroutine writes a request (the receiver) to a
    /// connection.
    RequestWrite = 2,
    /// `runtime.newproc`: a goroutine (on its own stack, before the switch to the scheduler's)
    /// starts another; the record's `object` is the goid the new goroutine will get (the next
    /// in its P's cache), 0 where the cache is empty and the id is not known yet.
    NewProc = 3,
}

impl TryFrom<u32> for GoFunction {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            1 => Ok(Self::PersistConnRoundTrip),
            2 => Ok(Self::RequestWrite),
            3 => Ok(Self::NewProc),
            other => Err(other),
        }
    }
}

/// Symbol names (Go's, as its symbol table spells them) and the function each is.
pub const GO_PROBES: &[(&str, GoFunction)] = &[
    (
        "net/http.(*persistConn).roundTrip",
        GoFunction::PersistConnRoundTrip,
    ),
    ("net/http.(*Request).write", GoFunction::RequestWrite),
    ("runtime.newproc", GoFunction::NewProc),
];

/// Where a Go version keeps what the probes read (x86-64 byte offsets, from the DWARF of that
/// version's own builds): in `runtime.g` the goroutine's id, its parent's id and its `m`; in
/// `runtime.m` its `p`; in `runtime.p` the next goid of its cache (the cache's end follows it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoLayout {
    pub g_goid: u32,
    pub g_parent_goid: u32,
    pub g_m: u32,
    pub m_p: u32,
    pub p_goidcache: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<GoLayout>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::GoLayout {}
}

/// A probed Go function was entered.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoCallEvent {
    pub header: crate::EventHeader,
    /// When: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// A [`GoFunction`] id.
    pub function: u32,
    pub _pad: u32,
    /// The goroutine that entered it (its goid).
    pub goid: u64,
    /// The goroutine that started that one.
    pub parent_goid: u64,
    /// The `*Request` handed over or written, as an address (an identity: userspace never
    /// dereferences it); for `NewProc`, the new goroutine's id.
    pub object: u64,
}
const _: () = assert!(size_of::<GoCallEvent>() == 64);
