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
}

impl TryFrom<u32> for GoFunction {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            1 => Ok(Self::PersistConnRoundTrip),
            2 => Ok(Self::RequestWrite),
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
];

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
    /// The `*Request` handed over or written, as an address (an identity: userspace never
    /// dereferences it).
    pub object: u64,
}
const _: () = assert!(size_of::<GoCallEvent>() == 56);
