//! Records the kernel writes to the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`]; its `kind` says which struct follows. Data records
//! come in size classes (the payload array is a const generic) so that a 40-byte write does not
//! reserve a 4 KiB slot; userspace never relies on the class, only on `captured_len`.

/// Upper bound of the first bytes captured from one syscall (`--capture-bytes` at most).
pub const MAX_CAPTURE: usize = 4096;
/// The last bytes of a read longer than the capture, kept after its first ones: where a reply
/// ends (PostgreSQL's CommandComplete and ReadyForQuery after thousands of rows).
pub const TAIL_CAPTURE: usize = 128;
/// Payload size classes, smallest first: room for the first bytes and, from the second class
/// up, a tail. Each is a constant so the verifier accepts the reserve.
pub const CAPTURE_CLASSES: [usize; 3] = [256, 1024 + TAIL_CAPTURE, MAX_CAPTURE + TAIL_CAPTURE];

/// What an event record is. Ids are explicit and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A socket read or written by a target thread: [`DataEvent`].
    Data = 1,
    /// A socket accepted (server side) or connected (client side): [`ConnEvent`].
    Conn = 2,
    /// A tracked socket closed: [`CloseEvent`].
    Close = 3,
    /// A target process forked a child, which is now a target too: [`ForkEvent`].
    Fork = 4,
    /// A tracked socket's fd was duplicated (dup, dup2, dup3, fcntl F_DUPFD): [`DupEvent`].
    Dup = 5,
    /// A target thread entered a libpq query function: [`crate::LibpqCallEvent`].
    LibpqCall = 6,
    /// A libpq query function or PQgetResult returned: [`crate::LibpqResultEvent`].
    LibpqResult = 7,
    /// A CPU sample of a hot thread: [`crate::CpuSampleEvent`].
    CpuSample = 8,
    /// A connected socket's own address, learnt once its handshake completed after its
    /// connect returned: [`ConnLocalEvent`].
    ConnLocal = 9,
    /// A probed Go function was entered: [`crate::GoCallEvent`].
    GoCall = 10,
    /// Plaintext an OpenSSL record function moved on a tracked socket: a [`DataEvent`].
    TlsData = 11,
    /// A tracked socket taken out of `SOCKETS` when its process exec'd: [`ParkedEvent`].
    Parked = 12,
    /// Tracked sockets of a process that userspace should check against `/proc/PID/fd`:
    /// [`ResyncEvent`].
    Resync = 13,
    /// A process that was not a target exec'd while loupe watches for executables or names
    /// (`crate::watch`): [`ExecEvent`].
    Exec = 14,
    /// A hot thread came back on a CPU after leaving it: [`crate::OffCpuEvent`].
    OffCpu = 15,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            1 => Ok(Self::Data),
            2 => Ok(Self::Conn),
            3 => Ok(Self::Close),
            4 => Ok(Self::Fork),
            5 => Ok(Self::Dup),
            6 => Ok(Self::LibpqCall),
            7 => Ok(Self::LibpqResult),
            8 => Ok(Self::CpuSample),
            9 => Ok(Self::ConnLocal),
            10 => Ok(Self::GoCall),
            11 => Ok(Self::TlsData),
            12 => Ok(Self::Parked),
            13 => Ok(Self::Resync),
            14 => Ok(Self::Exec),
            15 => Ok(Self::OffCpu),
            other => Err(other),
        }
    }
}

/// Which way bytes moved, seen from the target process.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// read, readv, recvfrom, recvmsg.
    Ingress = 0,
    /// write, writev, sendto, sendmsg.
    Egress = 1,
}

impl TryFrom<u32> for Direction {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            0 => Ok(Self::Ingress),
            1 => Ok(Self::Egress),
            other => Err(other),
        }
    }
}

/// Which side of a connection the target is on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketRole {
    /// Not known: a socket found already open, whose role userspace has not worked out yet.
    Unknown = 0,
    /// The target accepted it: it serves requests on it.
    Server = 1,
    /// The target connected it: it sends requests on it.
    Client = 2,
}

impl TryFrom<u32> for SocketRole {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        match raw {
            0 => Ok(Self::Unknown),
            1 => Ok(Self::Server),
            2 => Ok(Self::Client),
            other => Err(other),
        }
    }
}

/// The first field of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] id.
    pub kind: u32,
    /// Thread group id (the process id as userspace sees it).
    pub pid: u32,
    /// Thread id (the kernel's pid of the thread).
    pub tid: u32,
    /// The file descriptor the event is about (-1 where none, e.g. fork).
    pub fd: i32,
    /// The connection the fd refers to: assigned at accept/connect (or by userspace for sockets
    /// open before attach) and shared by every duplicate of the fd. 0 where none.
    pub conn_id: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// Bytes read from or written to a tracked socket by one syscall.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent<const N: usize> {
    pub header: EventHeader,
    /// When the syscall was entered: ns since boot, bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub enter_ns: u64,
    /// When the syscall returned: ns since boot, bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub exit_ns: u64,
    /// Bytes the syscall moved (its return value, > 0).
    pub total_len: u32,
    /// Bytes of `payload` that hold the first bytes moved (<= total_len, <= N).
    pub captured_len: u32,
    /// A [`Direction`] id.
    pub direction: u32,
    /// Bytes at the start of the payload's last [`TAIL_CAPTURE`] that hold the *last* bytes
    /// moved (a read longer than the capture; then `captured_len <= N - TAIL_CAPTURE`), else 0.
    pub tail_len: u32,
    /// What made the syscall in the program's own scheduler, else 0: in a Go program of a known
    /// version the goroutine's id; in a Python thread loupe found in its interpreter, the
    /// address of the contextvars Context it ran in (in asyncio, the running task's).
    pub goid: u64,
    /// The id of the goroutine that started that one (Go), else 0.
    pub parent_goid: u64,
    /// The first `captured_len` bytes moved, and from `N - TAIL_CAPTURE` the last `tail_len`;
    /// the rest of the array is undefined.
    pub payload: [u8; N],
}
/// Bytes of a [`DataEvent`] before its payload.
pub const DATA_EVENT_HEADER_LEN: usize = 72;
const _: () = assert!(size_of::<DataEvent<0>>() == DATA_EVENT_HEADER_LEN);
const _: () = assert!(size_of::<DataEvent<256>>() == DATA_EVENT_HEADER_LEN + 256);

/// Raw socket address as the kernel copied it from the syscall's `sockaddr` argument:
/// big enough for `sockaddr_in6` (28 bytes) and the start of `sockaddr_un`.
pub const SOCKADDR_LEN: usize = 32;

/// A socket accepted or connected by a target thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// When the syscall returned: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// A [`SocketRole`] id: Server for accept/accept4, Client for connect.
    pub role: u32,
    /// Bytes of `addr` the kernel filled (0 where the target passed no address buffer).
    pub addr_len: u32,
    /// The peer's address (`struct sockaddr_*`, family first, network byte order fields).
    pub addr: [u8; SOCKADDR_LEN],
    /// Bytes of `local` filled: the socket's own address, known for a connect whose handshake
    /// completed inside it (loopback), 0 otherwise (then a [`ConnLocalEvent`] follows).
    pub local_len: u32,
    pub _pad: u32,
    /// The socket's own address, laid out as `addr`.
    pub local: [u8; SOCKADDR_LEN],
}
const _: () = assert!(size_of::<ConnEvent>() == 112);

/// A target's connected socket: its own address, from the TCP state change SYN_SENT ->
/// ESTABLISHED (which can come after connect returned, in another context).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnLocalEvent {
    pub header: EventHeader,
    /// The socket's own address, laid out as [`ConnEvent::addr`].
    pub local: [u8; SOCKADDR_LEN],
}
const _: () = assert!(size_of::<ConnLocalEvent>() == 56);

/// A tracked socket closed by a target thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub header: EventHeader,
    /// When close was entered: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<CloseEvent>() == 32);

/// A target process forked: the child is traced too.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// When it happened: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// The new process's thread group id.
    pub child_pid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ForkEvent>() == 40);

/// A tracked socket's fd duplicated: `header.fd` is the new fd, `header.conn_id` the shared
/// connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DupEvent {
    pub header: EventHeader,
    /// When the syscall returned: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// The fd that was duplicated.
    pub old_fd: i32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<DupEvent>() == 40);

/// File descriptors the kernel scans itself when a target closes a range of them
/// (`close_range(2)`) or execs: fds `first..first + FD_SCAN` of a range, fds `0..FD_SCAN` at
/// exec. A bounded loop of map lookups; the fds past it are left to userspace ([`ResyncEvent`]).
pub const FD_SCAN: u32 = 1024;

/// A tracked socket the kernel took out of `SOCKETS` when its process exec'd (fds below
/// [`FD_SCAN`]): the exec closed it if it was close-on-exec. Userspace puts it back when
/// `/proc/PID/fd` still shows a socket at `header.fd`, else reports the connection closed. Until
/// then nothing on that fd is traced, so bytes the new program moves on an fd it reused are
/// never taken for the old connection's.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ParkedEvent {
    pub header: EventHeader,
    /// The socket's `SocketInfo::role`.
    pub role: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ParkedEvent>() == 32);

/// Userspace should check the tracked sockets of `header.pid` with fds in `first..=last`
/// against `/proc/PID/fd` and forget those no longer open: the part of a closed range, or of
/// an exec, past what the kernel scanned itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResyncEvent {
    pub header: EventHeader,
    pub first: u32,
    pub last: u32,
}
const _: () = assert!(size_of::<ResyncEvent>() == 32);

/// A process that was not a target exec'd (`sched:sched_process_exec`) while loupe watches for
/// executables or names. `header.pid` is its pid (`header.tid` the thread that exec'd, now its
/// only one). Sent for every such exec when userspace matches executables
/// ([`crate::WATCH_EVERY_EXEC`]), else only for those the kernel adopted by name.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// When it exec'd: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// The new program's `comm` (the kernel's 15-byte cut of its file name), NUL-padded.
    pub comm: [u8; crate::COMM_LEN],
    /// 1 when the kernel made it a target at once (its comm is in `WATCH_COMMS`), else 0.
    pub adopted: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExecEvent>() == 56);

/// Connection ids userspace assigns to sockets found open at attach have this bit set, so they
/// never collide with the kernel's.
pub const USER_CONN_ID_BIT: u64 = 1 << 63;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) of integers and byte arrays with explicit padding, so
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CloseEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnLocalEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ParkedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ResyncEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecEvent {}
}
