//! Socket reads and writes: the enter programs note where the buffer is, the exit program copies
//! the first bytes moved into a `DataEvent` of the smallest size class that holds them.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    programs::TracePointContext,
};
use loupe_common::{
    CAPTURE_CLASSES, DataEvent, Direction, EventHeader, EventKind, LossSlot, MAX_CAPTURE, SocketKey,
};

use crate::{
    config, emit,
    maps::{InFlight, SOCKETS, count_loss, stash, take_in_flight},
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

/// The part of `struct msghdr` before `msg_iovlen`: name, namelen (+pad), iov.
#[repr(C)]
#[derive(Clone, Copy)]
struct MsgHdrHead {
    name: u64,
    namelen: u64,
    iov: u64,
}

/// The pid_tgid of the current thread and the connection id, if `fd` is a socket of a target
/// process. Only target sockets are in SOCKETS, so this one lookup is also the PID filter.
pub fn tracked_socket(fd: i32) -> Option<(u64, u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = SocketKey {
        pid: (pid_tgid >> 32) as u32,
        fd,
    };
    // SAFETY: the value is copied out at once, never held across helper calls.
    unsafe { SOCKETS.get(key.as_u64()) }.map(|info| (pid_tgid, info.conn_id))
}

pub fn remember(
    (pid_tgid, conn_id): (u64, u64),
    fd: i32,
    buf: u64,
    buf_len: u64,
    direction: Direction,
) -> Result<(), i64> {
    stash(
        pid_tgid,
        InFlight {
            enter_ns: emit::now_ns(),
            buf,
            buf_len,
            fd,
            direction: direction as u32,
            conn_id,
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
    remember(socket, fd as i32, buf, count, direction)
}

/// readv, writev: (fd, iov, iovcnt). Only the first iovec is captured from; the rest of the
/// bytes are counted by the return value.
pub fn try_enter_iov(ctx: &TracePointContext, direction: Direction) -> Result<(), i64> {
    // SAFETY: offsets follow the readv/writev tracepoint format.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let Some(socket) = tracked_socket(fd as i32) else {
        return Ok(());
    };
    // SAFETY: as above.
    let iov: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    // SAFETY: `iov` is a user pointer; bpf_probe_read_user faults safely on a bad one.
    let first: IoVec = unsafe { bpf_probe_read_user(iov as *const IoVec) }.map_err(i64::from)?;
    remember(socket, fd as i32, first.base, first.len, direction)
}

/// recvmsg, sendmsg: (fd, msg, flags). Captures from the message's first iovec.
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
    // SAFETY: as above.
    let first: IoVec =
        unsafe { bpf_probe_read_user(head.iov as *const IoVec) }.map_err(i64::from)?;
    remember(socket, fd as i32, first.base, first.len, direction)
}

/// sendfile: (out_fd, in_fd, offset, count). The bytes come from a file, so nothing is captured:
/// only the count, which keeps body framing right for servers that send files this way.
pub fn try_enter_sendfile(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: out_fd is arg 0 of sendfile64.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let Some(socket) = tracked_socket(fd as i32) else {
        return Ok(());
    };
    remember(socket, fd as i32, 0, 0, Direction::Egress)
}

/// The exit of every data syscall: if its enter left an `InFlight`, emit what it moved.
pub fn try_exit_data(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    if ret <= 0 {
        return Ok(());
    }
    let mut want = ret as u64;
    if want > in_flight.buf_len {
        want = in_flight.buf_len;
    }
    let limit = config::capture_bytes() as u64;
    if want > limit {
        want = limit;
    }
    let header = EventHeader {
        kind: EventKind::Data as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: in_flight.fd,
        conn_id: in_flight.conn_id,
    };
    let exit_ns = emit::now_ns();
    let total = if ret > u32::MAX as i64 {
        u32::MAX
    } else {
        ret as u32
    };
    let args = DataArgs {
        header,
        in_flight: &in_flight,
        exit_ns,
        total,
        want: want as u32,
    };
    if want <= CAPTURE_CLASSES[0] as u64 {
        emit_data::<{ CAPTURE_CLASSES[0] }>(&args)
    } else if want <= CAPTURE_CLASSES[1] as u64 {
        emit_data::<{ CAPTURE_CLASSES[1] }>(&args)
    } else {
        emit_data::<MAX_CAPTURE>(&args)
    }
}

struct DataArgs<'a> {
    header: EventHeader,
    in_flight: &'a InFlight,
    exit_ns: u64,
    total: u32,
    want: u32,
}

/// Reserves a `DataEvent<N>` and fills it in place: the record is too large for the 512-byte
/// BPF stack, so it is never built on the stack.
#[inline(always)]
fn emit_data<const N: usize>(args: &DataArgs<'_>) -> Result<(), i64> {
    let Some(mut entry) = crate::maps::EVENTS.reserve::<DataEvent<N>>(0) else {
        count_loss(LossSlot::RingFull);
        return Err(-1);
    };
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
        (*event)._pad = 0;
        let ret = generated::bpf_probe_read_user(
            (*event).payload.as_mut_ptr().cast(),
            len,
            args.in_flight.buf as *const core::ffi::c_void,
        );
        (*event).captured_len = if ret == 0 { len } else { 0 };
    }
    entry.submit(emit::submit_flags());
    Ok(())
}
