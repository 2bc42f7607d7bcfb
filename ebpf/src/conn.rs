//! Sockets opening and closing: accept/accept4 (server side), connect (client side), close.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    programs::TracePointContext,
};
use loupe_common::{
    CloseEvent, ConnEvent, Direction, EventHeader, EventKind, LossSlot, SOCKADDR_LEN, SocketInfo,
    SocketKey, SocketRole,
};

use crate::{
    data::{RET_OFFSET, arg_offset},
    emit,
    maps::{IN_FLIGHT, InFlight, SOCKETS, TARGET_PIDS, count_loss},
};

/// -EINPROGRESS: a non-blocking connect that is under way counts as connected.
const EINPROGRESS: i64 = -115;

fn current_target() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: presence test only.
    unsafe { TARGET_PIDS.get(tgid) }.map(|_| pid_tgid)
}

/// Notes the socket and the caller's address buffer (arg 1 of accept, accept4 and connect).
fn remember_addr(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = current_target() else {
        return Ok(());
    };
    // SAFETY: fd and the sockaddr pointer are args 0 and 1 of accept, accept4 and connect.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let addr: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    let in_flight = InFlight {
        enter_ns: emit::now_ns(),
        buf: addr,
        buf_len: SOCKADDR_LEN as u64,
        fd: fd as i32,
        direction: Direction::Ingress as u32,
    };
    IN_FLIGHT.insert(pid_tgid, in_flight, 0).map_err(|err| {
        count_loss(LossSlot::InFlightFull);
        err as i64
    })
}

pub fn try_enter_accept(ctx: &TracePointContext) -> Result<(), i64> {
    remember_addr(ctx)
}

pub fn try_enter_connect(ctx: &TracePointContext) -> Result<(), i64> {
    remember_addr(ctx)
}

/// Records an opened socket and tells userspace, with the peer address when the caller gave a
/// buffer for it.
fn opened(pid_tgid: u64, fd: i32, role: SocketRole, addr_ptr: u64) -> Result<(), i64> {
    let pid = (pid_tgid >> 32) as u32;
    let key = SocketKey { pid, fd };
    let info = SocketInfo {
        role: role as u32,
        _pad: 0,
    };
    if SOCKETS.insert(key.as_u64(), info, 0).is_err() {
        count_loss(LossSlot::SocketsFull);
    }
    let mut event = ConnEvent {
        header: EventHeader {
            kind: EventKind::Conn as u32,
            pid,
            tid: pid_tgid as u32,
            fd,
        },
        ts_ns: emit::now_ns(),
        role: role as u32,
        addr_len: 0,
        addr: [0; SOCKADDR_LEN],
    };
    if addr_ptr != 0 {
        // SAFETY: a user pointer the target passed to the syscall; the helper faults safely.
        let ret = unsafe {
            generated::bpf_probe_read_user(
                event.addr.as_mut_ptr().cast(),
                SOCKADDR_LEN as u32,
                addr_ptr as *const core::ffi::c_void,
            )
        };
        if ret == 0 {
            event.addr_len = SOCKADDR_LEN as u32;
        }
    }
    emit::output(&event)
}

fn take_in_flight() -> Option<(u64, InFlight)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once; the entry is deleted right after.
    let in_flight = (unsafe { IN_FLIGHT.get(pid_tgid) }).copied()?;
    let _ = IN_FLIGHT.remove(pid_tgid);
    Some((pid_tgid, in_flight))
}

pub fn try_exit_accept(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    if ret < 0 {
        return Ok(());
    }
    opened(pid_tgid, ret as i32, SocketRole::Server, in_flight.buf)
}

pub fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    if ret != 0 && ret != EINPROGRESS {
        return Ok(());
    }
    opened(pid_tgid, in_flight.fd, SocketRole::Client, in_flight.buf)
}

pub fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: fd is arg 0 of close.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let key = SocketKey { pid, fd: fd as i32 }.as_u64();
    // Only tracked sockets are in SOCKETS, so this one lookup is also the target filter.
    if SOCKETS.remove(key).is_err() {
        return Ok(());
    }
    emit::output(&CloseEvent {
        header: EventHeader {
            kind: EventKind::Close as u32,
            pid,
            tid: pid_tgid as u32,
            fd: fd as i32,
        },
        ts_ns: emit::now_ns(),
    })
}
