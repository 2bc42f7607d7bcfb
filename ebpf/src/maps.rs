//! Every map of the eBPF object, with who writes and who reads it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use loupe_common::{
    COMM_LEN, GoLayout, HOT_THREADS_MAX, HotThread, LOSS_SLOTS, LossSlot, MAX_CAPTURE,
    MAX_WATCH_COMMS, PyThread, SOCKADDR_LEN, SOCKETS_MAX, SocketInfo, TargetInfo,
};

/// Event records. Kernel writes (without a wakeup below `WAKEUP_BYTES` of backlog); userspace's
/// `events::reader` drains it.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Thread groups to trace, keyed by tgid. Userspace writes the targets at attach and the
/// processes it matches later by executable, and removes those that exited; the fork program
/// adds children of targets, the exec program processes whose name is watched.
#[map]
pub static TARGET_PIDS: HashMap<u32, TargetInfo> = HashMap::with_max_entries(4096, 0);

/// Hot threads (those running something past its threshold), keyed by thread id: userspace
/// inserts one when it heats the thread and removes it when it cools; the `off_cpu` program
/// keeps its last switch-out there.
#[map]
pub static HOT_THREADS: HashMap<u32, HotThread> = HashMap::with_max_entries(HOT_THREADS_MAX, 0);

/// CPython threads of targets, by pid_tgid: where a sample reads the thread's Python frames
/// (userspace writes them from the interpreter's thread list, and removes them with their
/// process).
#[map]
pub static PY_THREADS: HashMap<u64, PyThread> = HashMap::with_max_entries(16384, 0);

/// Process names to make targets of at exec (`--name`), keyed by `loupe_common::comm_key`.
/// Userspace writes them at load; the exec program reads them.
#[map]
pub static WATCH_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(MAX_WATCH_COMMS, 0);

/// Open sockets of target processes, keyed by `SocketKey::as_u64`. The accept/connect/dup exit
/// programs insert; close, close_range and exec remove (exec sets its sockets aside for
/// userspace, which puts back those still open); userspace inserts the sockets already open at
/// attach and removes those of processes that exited or whose fds /proc shows closed. Data
/// programs read it: only fds in it are traced. LRU: a socket whose close was never seen cannot
/// fill it; when it is full, the socket unused the longest makes room (an insert that still
/// fails is counted, `LossSlot::SocketsFull`). Every insert and remove goes through
/// `track_socket` and `untrack_socket`, which count them, so userspace can tell how many made
/// room (`sockets_evicted`).
#[map]
pub static SOCKETS: LruHashMap<u64, SocketInfo> = LruHashMap::with_max_entries(SOCKETS_MAX, 0);

/// Arguments of a syscall a target thread is inside, in the slot of its thread id (modulo
/// `IN_FLIGHT_SLOTS`): enter programs write, the matching exit program reads and empties it.
/// An array, not a hash: no insert and delete on every syscall, one lookup each side. Two
/// threads whose ids share a slot, inside traced syscalls at once, are a counted loss
/// (`LossSlot::InFlightFull`). Kernel only.
#[map]
pub static IN_FLIGHT: Array<Slot> = Array::with_max_entries(IN_FLIGHT_SLOTS, 0);

/// Slots of `IN_FLIGHT`: a power of two.
const IN_FLIGHT_SLOTS: u32 = 65_536;

/// One `IN_FLIGHT` slot: whose syscall it holds (0: none) and its arguments.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    pub pid_tgid: u64,
    pub in_flight: InFlight,
}

/// Connecting sockets of targets, keyed by the kernel's `struct sock` address: the TCP state
/// change to SYN_SENT (inside connect, on the connecting thread) writes who connects it, the
/// change out of SYN_SENT reads and deletes it. Kernel only.
#[map]
pub static SYN_SENT: HashMap<u64, Connecting> = HashMap::with_max_entries(16384, 0);

/// A socket's own address whose handshake completed while its connect was still running, keyed
/// by pid_tgid: the state change writes it, connect's exit program reads and deletes it.
/// Kernel only.
#[map]
pub static CONNECT_LOCAL: HashMap<u64, Connecting> = HashMap::with_max_entries(16384, 0);

/// Who connects a socket, and (once known) its own address.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    pub pid_tgid: u64,
    pub fd: i32,
    pub _pad: u32,
    /// `struct sockaddr_*` layout, zero until the handshake completed.
    pub local: [u8; SOCKADDR_LEN],
}

/// The `PGconn *` a thread passed to PQgetResult, keyed by pid_tgid: the entry probe writes, the
/// return probe reads and deletes. Kernel only.
#[map]
pub static LIBPQ_CONN: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// Scratch space where the exit program gathers a vector syscall's iovecs before copying them
/// into a record: twice the largest capture, so a copy that starts anywhere below
/// `MAX_CAPTURE` and is at most `MAX_CAPTURE` long stays inside it (what the verifier checks).
/// Kernel only, one per CPU.
#[map]
pub static GATHER: PerCpuArray<[u8; 2 * MAX_CAPTURE]> = PerCpuArray::with_max_entries(1, 0);

/// Go programs' runtime layouts, keyed by tgid. Userspace writes them at attach for Go targets;
/// the Go uprobes read them.
#[map]
pub static GO_LAYOUTS: HashMap<u32, GoLayout> = HashMap::with_max_entries(4096, 0);

/// Python threads of targets, keyed by pid_tgid: the address of the thread state's `context`
/// field (the running asyncio task's contextvars Context). Userspace writes them from the
/// interpreter's thread list (upkeep) and removes them with their process; the data exit program
/// reads the pointer there.
#[map]
pub static PY_CONTEXTS: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// What the data exits must look for (`RUNTIME_PYTHON`, `RUNTIME_TLS` bits). Userspace writes;
/// a one-entry array, so reading it costs next to nothing next to the hash lookups it spares.
#[map]
pub static RUNTIME: Array<u32> = Array::with_max_entries(1, 0);

/// Whether userspace set `bit` in `RUNTIME`.
pub fn runtime_has(bit: u32) -> bool {
    RUNTIME.get(0).is_some_and(|flags| flags & bit != 0)
}

/// Per-CPU loss counters, indexed by `LossSlot`. Kernel increments; userspace sums and shows.
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// What an enter program leaves for its exit program. Kernel-only, so it lives here, not in
/// `loupe_common`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// Syscall entry: ns since boot, bpf_ktime_get_ns.
    pub enter_ns: u64,
    /// User pointer: the data buffer, the `struct iovec` array for the vector forms (readv,
    /// writev, recvmsg, sendmsg: `iovcnt` > 0), or the sockaddr buffer for accept/connect (0
    /// where the caller passed none).
    pub buf: u64,
    /// Bytes available at `buf` (flat buffers only).
    pub buf_len: u64,
    /// Entries of the iovec array at `buf`; 0 for a flat buffer.
    pub iovcnt: u64,
    pub fd: i32,
    /// A `Direction` id for data syscalls; unused for accept/connect.
    pub direction: u32,
    /// The connection of `fd` (data and dup syscalls); 0 for accept/connect.
    pub conn_id: u64,
    /// `SocketInfo::goid_offset` of the socket (data syscalls): the exit program reads the
    /// running goroutine's ids with it, once the syscall moved bytes.
    pub goid_offset: u64,
}

fn slot_of(pid_tgid: u64) -> Option<*mut Slot> {
    IN_FLIGHT.get_ptr_mut((pid_tgid as u32) & (IN_FLIGHT_SLOTS - 1))
}

/// Leaves `in_flight` for the exit program of the syscall this thread is entering. A slot that
/// holds another thread's syscall still is taken over, counted as a loss (that exit finds
/// nothing).
pub fn stash(pid_tgid: u64, in_flight: InFlight) -> Result<(), i64> {
    let Some(slot) = slot_of(pid_tgid) else {
        return Err(-1);
    };
    // SAFETY: `slot` is a valid array value; the owner is cleared before the arguments are
    // written and set after, so a reader on another CPU never takes half of them for its own
    // (see `take_in_flight`).
    unsafe {
        let owner = core::ptr::read_volatile(&(*slot).pid_tgid);
        if owner != 0 && owner != pid_tgid {
            count_loss(LossSlot::InFlightFull);
        }
        core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        core::ptr::write_volatile(&mut (*slot).in_flight, in_flight);
        core::ptr::write_volatile(&mut (*slot).pid_tgid, pid_tgid);
    }
    Ok(())
}

/// What the current thread's enter program left, if it left anything, without taking it.
pub fn peek_in_flight(pid_tgid: u64) -> Option<InFlight> {
    let slot = slot_of(pid_tgid)?;
    // SAFETY: as in `take_in_flight`.
    unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) != pid_tgid {
            return None;
        }
        let in_flight = core::ptr::read_volatile(&(*slot).in_flight);
        (core::ptr::read_volatile(&(*slot).pid_tgid) == pid_tgid).then_some(in_flight)
    }
}

/// Takes what the current thread's enter program left, if it left anything.
pub fn take_in_flight() -> Option<(u64, InFlight)> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let in_flight = peek_in_flight(pid_tgid)?;
    let slot = slot_of(pid_tgid)?;
    // SAFETY: `slot` is a valid array value. Emptied only if still this thread's (another
    // thread of the same slot may have taken it over since).
    unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) == pid_tgid {
            core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        }
    }
    Some((pid_tgid, in_flight))
}

/// `BPF_NOEXIST`: an update that only adds a key.
const BPF_NOEXIST: u64 = 1;

/// Puts a socket in `SOCKETS`, counting a key that was not there (`LossSlot::SocketsAdded`); a
/// stale entry for the fd (its close never seen) is replaced. An insert that fails is counted
/// (`LossSlot::SocketsFull`).
pub fn track_socket(key: u64, info: &SocketInfo) {
    if SOCKETS.insert(key, info, BPF_NOEXIST).is_ok() {
        count_loss(LossSlot::SocketsAdded);
    } else if SOCKETS.insert(key, info, 0).is_err() {
        count_loss(LossSlot::SocketsFull);
    }
}

/// Takes a socket out of `SOCKETS`, counting a key that was there (`LossSlot::SocketsRemoved`).
pub fn untrack_socket(key: u64) {
    if SOCKETS.remove(key).is_ok() {
        count_loss(LossSlot::SocketsRemoved);
    }
}

/// Adds one to a loss slot.
pub fn count_loss(slot: LossSlot) {
    if let Some(counter) = LOSS.get_ptr_mut(slot as u32) {
        // SAFETY: the pointer comes from the map lookup and is this CPU's slot; per-CPU values are
        // not shared with other CPUs while this program runs.
        unsafe { *counter += 1 };
    }
}
