//! Socket reads and writes: the enter programs note where the buffer is, the exit program copies
//! the first bytes moved into a `DataEvent` of the smallest size class that holds them.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user, generated},
    programs::TracePointContext,
};
use loupe_common::{
    CAPTURE_CLASSES, DataEvent, Direction, EventHeader, EventKind, LossSlot, MAX_CAPTURE,
    RUNTIME_PYTHON, RUNTIME_TLS, SocketKey, TAIL_CAPTURE,
};

use crate::{
    config, emit,
    maps::{
        GATHER, InFlight, PY_CONTEXTS, SOCKETS, count_loss, runtime_has, stash, take_in_flight,
    },
};

/// Offset of syscall argument `n` in a `sys_enter_*` record (after the common header and
/// `__syscall_nr`).
pub const fn arg_offset(n: usize) -> usize {
    16 + 8 * n
}
/// Offset of `ret` in a `sys_exit_*` record.
pub const RET_OFFSET: usize = 16;

/// `struct iovec` as the target's ABI lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// The part of `struct msghdr` up to `msg_iovlen`: name, namelen (+pad), iov, iovlen.
#[repr(C)]
#[derive(Clone, Copy)]
struct MsgHdrHead {
    name: u64,
    namelen: u64,
    iov: u64,
    iovlen: u64,
}

/// Iovecs of one syscall the exit program reads, at most: node-postgres writes a query's five
/// messages as five iovecs, nginx a response head and body as two. Bytes in later iovecs that
/// would have fitted the capture are counted (`LossSlot::IovecsCut`).
pub const MAX_IOVECS: u64 = 16;

/// A socket of a target process, as the current thread uses it.
#[derive(Clone, Copy)]
pub struct Tracked {
    pub pid_tgid: u64,
    pub conn_id: u64,
    /// `SocketInfo::goid_offset`: non-zero in Go programs of a known version.
    pub goid_offset: u32,
}

/// The current thread and the socket's connection, if `fd` is a socket of a target process.
/// Only target sockets are in SOCKETS, so this one lookup is also the PID filter.
pub fn tracked_socket(fd: i32) -> Option<Tracked> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = SocketKey {
        pid: (pid_tgid >> 32) as u32,
        fd,
    };
    // SAFETY: the value is copied out at once, never held across helper calls.
    unsafe { SOCKETS.get(key.as_u64()) }.map(|info| Tracked {
        pid_tgid,
        conn_id: info.conn_id,
        goid_offset: info.goid_offset,
    })
}

/// Offset of `r14` in the user registers the kernel saved at syscall entry (`struct pt_regs`,
/// x86-64: r15, r14, ...).
const PT_REGS_R14: u64 = 8;
/// Offset of `si` there: the syscall's second argument (x86-64: ..., dx, si, di, orig_ax).
const PT_REGS_SI: u64 = 104;
/// Offsets of `bp`, `ip` and `sp` there.
pub const PT_REGS_BP: u64 = 32;
pub const PT_REGS_IP: u64 = 128;
pub const PT_REGS_SP: u64 = 152;

/// The user register at `offset` of those the kernel saved at the current thread's entry into
/// the kernel (a syscall's: it leaves them as they were until the exit; an interrupt's, for a
/// CPU sample taken in user mode); 0 where it cannot be read.
pub fn saved_user_reg(offset: u64) -> u64 {
    // SAFETY: helpers on the current task; the pointer they return is only read through
    // bpf_probe_read_kernel, which faults safely.
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) };
    if regs == 0 {
        return 0;
    }
    // SAFETY: a kernel address read with bpf_probe_read_kernel.
    unsafe { bpf_probe_read_kernel((regs as u64 + offset) as *const u64) }.unwrap_or(0)
}

/// The second argument of the syscall the current thread is in, read at its exit: for a
/// syscall whose entry loupe did not see (a thread already waiting in it at attach). 0 where it
/// cannot be read.
pub fn syscall_arg1() -> u64 {
    saved_user_reg(PT_REGS_SI)
}

/// The ids of the goroutine making this syscall and of its parent: Go keeps the running `g` in
/// r14 (ABIInternal, and its syscall stubs leave r14 alone), `goid` and `parentGoid` at the
/// offsets packed in `offsets` (`TargetInfo::goid_offset`). Zeros where they cannot be read.
fn current_goids(offsets: u32) -> (u64, u64) {
    let (goid_at, parent_at) = (offsets & 0xffff, offsets >> 16);
    if goid_at == 0 {
        return (0, 0);
    }
    let g = saved_user_reg(PT_REGS_R14);
    if g == 0 {
        return (0, 0);
    }
    // SAFETY: user addresses read with bpf_probe_read_user.
    let goid = unsafe { bpf_probe_read_user((g + u64::from(goid_at)) as *const u64) }.unwrap_or(0);
    let parent = match parent_at {
        0 => 0,
        // SAFETY: as above.
        _ => unsafe { bpf_probe_read_user((g + u64::from(parent_at)) as *const u64) }.unwrap_or(0),
    };
    (goid, parent)
}

/// The address of the contextvars Context a Python thread runs in now (in asyncio, the running
/// task's), read where userspace said the thread state keeps it; 0 for other threads or where it
/// cannot be read.
fn current_context(pid_tgid: u64) -> u64 {
    if !runtime_has(RUNTIME_PYTHON) {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(field) = (unsafe { PY_CONTEXTS.get(pid_tgid) }).copied() else {
        return 0;
    };
    // SAFETY: a user address read with bpf_probe_read_user, which faults safely.
    unsafe { bpf_probe_read_user(field as *const u64) }.unwrap_or(0)
}

/// Where a syscall's bytes are: one flat buffer, or an iovec array.
#[derive(Clone, Copy)]
pub enum Buffer {
    Flat { buf: u64, len: u64 },
    Vector { iov: u64, count: u64 },
}

pub fn remember(socket: Tracked, fd: i32, buffer: Buffer, direction: Direction) -> Result<(), i64> {
    let (buf, buf_len, iovcnt) = match buffer {
        Buffer::Flat { buf, len } => (buf, len, 0),
        Buffer::Vector { iov, count } => (iov, 0, count),
    };
    let Tracked {
        pid_tgid,
        conn_id,
        goid_offset,
    } = socket;
    stash(
        pid_tgid,
        InFlight {
            enter_ns: emit::now_ns(),
            buf,
            buf_len,
            iovcnt,
            fd,
            direction: direction as u32,
            conn_id,
            goid_offset: u64::from(goid_offset),
        },
    )
}

/// read, write, recvfrom, sendto: (fd, buf, count, ...).
pub fn try_enter_buf(ctx: &TracePointContext, direction: Direction) -> Result<(), i64> {
    // SAFETY: offsets follow the syscalls' tracepoint format (fd, buf, count are args 0..2).
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let Some(socket) = tracked_socket(fd as i32) else {
        return Ok(());
    };
    // SAFETY: as above.
    let buf: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let count: u64 = unsafe { ctx.read_at(arg_offset(2)) }.map_err(i64::from)?;
    remember(
        socket,
        fd as i32,
        Buffer::Flat { buf, len: count },
        direction,
    )
}

/// readv, writev: (fd, iov, iovcnt). The exit program reads the iovecs (a read's buffers are
/// filled by then).
pub fn try_enter_iov(ctx: &TracePointContext, direction: Direction) -> Result<(), i64> {
    // SAFETY: offsets follow the readv/writev tracepoint format.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let Some(socket) = tracked_socket(fd as i32) else {
        return Ok(());
    };
    // SAFETY: as above.
    let iov: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let count: u64 = unsafe { ctx.read_at(arg_offset(2)) }.map_err(i64::from)?;
    remember(socket, fd as i32, Buffer::Vector { iov, count }, direction)
}

/// recvmsg, sendmsg: (fd, msg, flags). The message's iovecs, like readv/writev.
pub fn try_enter_msg(ctx: &TracePointContext, direction: Direction) -> Result<(), i64> {
    // SAFETY: offsets follow the recvmsg/sendmsg tracepoint format.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let Some(socket) = tracked_socket(fd as i32) else {
        return Ok(());
    };
    // SAFETY: as above.
    let msg: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    // SAFETY: user pointers read with bpf_probe_read_user, which faults safely.
    let head: MsgHdrHead =
        unsafe { bpf_probe_read_user(msg as *const MsgHdrHead) }.map_err(i64::from)?;
    let vector = Buffer::Vector {
        iov: head.iov,
        count: head.iovlen,
    };
    remember(socket, fd as i32, vector, direction)
}

/// sendfile: (out_fd, in_fd, offset, count). The bytes come from a file, so nothing is captured:
/// only the count, which keeps body framing right for servers that send files this way.
pub fn try_enter_sendfile(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: out_fd is arg 0 of sendfile64.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let Some(socket) = tracked_socket(fd as i32) else {
        return Ok(());
    };
    remember(
        socket,
        fd as i32,
        Buffer::Flat { buf: 0, len: 0 },
        Direction::Egress,
    )
}

/// The exit of every data syscall: if its enter left an `InFlight`, emit what it moved.
pub fn try_exit_data(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    // A read that would block (EAGAIN) or failed moved nothing: dropped before any other work.
    if ret <= 0 {
        return Ok(());
    }
    if runtime_has(RUNTIME_TLS)
        && crate::tls::inside_call(pid_tgid, in_flight.conn_id, in_flight.fd)
    {
        // Ciphertext of an OpenSSL call: its plaintext is reported when the call returns.
        return Ok(());
    }
    let mut want = ret as u64;
    let limit = config::capture_bytes() as u64;
    if want > limit {
        want = limit;
    }
    // A vector syscall's bytes are gathered first; `want` becomes what was gathered.
    let gathered = if in_flight.iovcnt > 0 {
        let Some(scratch) = GATHER.get_ptr_mut(0) else {
            return Ok(());
        };
        want = gather(in_flight.buf, in_flight.iovcnt, want, scratch);
        Some(scratch as *const u8)
    } else {
        if want > in_flight.buf_len {
            want = in_flight.buf_len;
        }
        None
    };
    let header = EventHeader {
        kind: EventKind::Data as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: in_flight.fd,
        conn_id: in_flight.conn_id,
    };
    let exit_ns = emit::now_ns();
    // Only for syscalls that moved bytes: Go's netpoller retries reads that would block often.
    let (goid, parent_goid) = match in_flight.goid_offset {
        0 => (current_context(pid_tgid), 0),
        offsets => current_goids(offsets as u32),
    };
    let total = if ret > u32::MAX as i64 {
        u32::MAX
    } else {
        ret as u32
    };
    let args = DataArgs {
        header,
        in_flight: &in_flight,
        goid,
        parent_goid,
        gathered,
        exit_ns,
        total,
        want: want as u32,
        tail: tail_of(&in_flight, ret as u64, want),
    };
    emit_sized(&args)
}

/// How many of a read's last bytes to keep after its first `want`: those past the capture, up
/// to `TAIL_CAPTURE`, for flat-buffer reads that moved more than were captured.
#[inline(always)]
fn tail_of(in_flight: &InFlight, moved: u64, want: u64) -> u32 {
    if in_flight.iovcnt > 0
        || in_flight.direction != Direction::Ingress as u32
        || moved <= want
        || moved > in_flight.buf_len
    {
        return 0;
    }
    let mut tail = moved - want;
    if tail > TAIL_CAPTURE as u64 {
        tail = TAIL_CAPTURE as u64;
    }
    tail as u32
}

/// Emits `args` in the smallest size class that holds its first bytes and its tail.
#[inline(always)]
fn emit_sized(args: &DataArgs<'_>) -> Result<(), i64> {
    let tail = if args.tail > 0 {
        TAIL_CAPTURE as u32
    } else {
        0
    };
    let need = args.want + tail;
    if need <= CAPTURE_CLASSES[0] as u32 {
        emit_data::<{ CAPTURE_CLASSES[0] }>(args)
    } else if need <= CAPTURE_CLASSES[1] as u32 {
        emit_data::<{ CAPTURE_CLASSES[1] }>(args)
    } else {
        emit_data::<{ CAPTURE_CLASSES[2] }>(args)
    }
}

/// Plaintext an OpenSSL call moved on a tracked connection.
pub struct Plaintext {
    pub pid_tgid: u64,
    pub enter_ns: u64,
    /// The user buffer holding it.
    pub buf: u64,
    pub moved: u64,
    pub fd: i32,
    pub conn_id: u64,
    pub direction: Direction,
}

/// Reports `plain` as a `TlsData` record, laid out as a data record.
pub fn emit_plaintext(plain: &Plaintext) -> Result<(), i64> {
    let in_flight = InFlight {
        enter_ns: plain.enter_ns,
        buf: plain.buf,
        buf_len: plain.moved,
        iovcnt: 0,
        fd: plain.fd,
        direction: plain.direction as u32,
        conn_id: plain.conn_id,
        goid_offset: 0,
    };
    let mut want = plain.moved;
    let limit = config::capture_bytes() as u64;
    if want > limit {
        want = limit;
    }
    let header = EventHeader {
        kind: EventKind::TlsData as u32,
        pid: (plain.pid_tgid >> 32) as u32,
        tid: plain.pid_tgid as u32,
        fd: plain.fd,
        conn_id: plain.conn_id,
    };
    let args = DataArgs {
        header,
        in_flight: &in_flight,
        goid: current_context(plain.pid_tgid),
        parent_goid: 0,
        gathered: None,
        exit_ns: emit::now_ns(),
        total: if plain.moved > u32::MAX as u64 {
            u32::MAX
        } else {
            plain.moved as u32
        },
        want: want as u32,
        tail: tail_of(&in_flight, plain.moved, want),
    };
    emit_sized(&args)
}

struct DataArgs<'a> {
    header: EventHeader,
    in_flight: &'a InFlight,
    goid: u64,
    parent_goid: u64,
    /// The gathered bytes of a vector syscall (kernel memory), else None: `in_flight.buf` holds
    /// them.
    gathered: Option<*const u8>,
    exit_ns: u64,
    total: u32,
    want: u32,
    /// The last bytes to keep after the first `want` (flat buffers only; see `tail_of`).
    tail: u32,
}

/// Copies the first `want` bytes (at most `MAX_CAPTURE`) of the iovec array `iov` of `count`
/// entries into `scratch`, in order; returns how many were copied. An iovec that faults ends
/// the gathering where it stands; bytes past `MAX_IOVECS` iovecs are counted as lost.
#[inline(always)]
fn gather(iov: u64, count: u64, want: u64, scratch: *mut [u8; 2 * MAX_CAPTURE]) -> u64 {
    let mut off: u64 = 0;
    let mut i: u64 = 0;
    while i < MAX_IOVECS {
        if i >= count || off >= want {
            return off;
        }
        let at = iov + i * size_of::<IoVec>() as u64;
        // SAFETY: a user pointer read with bpf_probe_read_user, which faults safely.
        let Ok(vec) = (unsafe { bpf_probe_read_user(at as *const IoVec) }) else {
            return off;
        };
        let mut take = want - off;
        if take > vec.len {
            take = vec.len;
        }
        // Both bounds stated so the verifier sees the copy inside the 2 * MAX_CAPTURE scratch.
        let start = (off as usize) & (MAX_CAPTURE - 1);
        let take = (take as u32) & (2 * MAX_CAPTURE as u32 - 1);
        if take > MAX_CAPTURE as u32 {
            return off;
        }
        if take > 0 {
            // SAFETY: `scratch` is this CPU's GATHER value; start < MAX_CAPTURE and take <=
            // MAX_CAPTURE keep the write inside its 2 * MAX_CAPTURE bytes.
            let ret = unsafe {
                generated::bpf_probe_read_user(
                    (*scratch).as_mut_ptr().add(start).cast(),
                    take,
                    vec.base as *const core::ffi::c_void,
                )
            };
            if ret != 0 {
                return off;
            }
        }
        off += take as u64;
        i += 1;
    }
    if off < want && count > MAX_IOVECS {
        count_loss(LossSlot::IovecsCut);
    }
    off
}

/// Reserves a `DataEvent<N>` and fills it in place: the record is too large for the 512-byte
/// BPF stack, so it is never built on the stack.
#[inline(always)]
fn emit_data<const N: usize>(args: &DataArgs<'_>) -> Result<(), i64> {
    let mut entry = emit::reserve::<DataEvent<N>>()?;
    let event = entry.as_mut_ptr();
    let mut len = args.want;
    if len > N as u32 {
        len = N as u32;
    }
    // SAFETY: `event` points at a reserved, writable record of size_of::<DataEvent<N>>(); the
    // fields are written through raw pointers so no reference to uninitialised memory is made,
    // and the payload copy is bounded by N above.
    unsafe {
        (*event).header = args.header;
        (*event).enter_ns = args.in_flight.enter_ns;
        (*event).exit_ns = args.exit_ns;
        (*event).total_len = args.total;
        (*event).direction = args.in_flight.direction;
        (*event).tail_len = 0;
        (*event).goid = args.goid;
        (*event).parent_goid = args.parent_goid;
        let ret = match args.gathered {
            Some(scratch) => generated::bpf_probe_read_kernel(
                (*event).payload.as_mut_ptr().cast(),
                len,
                scratch.cast(),
            ),
            None => generated::bpf_probe_read_user(
                (*event).payload.as_mut_ptr().cast(),
                len,
                args.in_flight.buf as *const core::ffi::c_void,
            ),
        };
        (*event).captured_len = if ret == 0 { len } else { 0 };
        // The tail goes in the payload's last TAIL_CAPTURE bytes (a constant offset the
        // verifier can check); the size class leaves them free of the first bytes.
        let tail = args.tail & (2 * TAIL_CAPTURE as u32 - 1);
        if ret == 0 && tail > 0 && tail <= TAIL_CAPTURE as u32 && len as usize <= N - TAIL_CAPTURE {
            let from = args.in_flight.buf + u64::from(args.total) - u64::from(tail);
            let copied = generated::bpf_probe_read_user(
                (*event).payload.as_mut_ptr().add(N - TAIL_CAPTURE).cast(),
                tail,
                from as *const core::ffi::c_void,
            );
            if copied == 0 {
                (*event).tail_len = tail;
            }
        }
    }
    entry.submit(emit::submit_flags());
    Ok(())
}
