//! Sockets opening and closing: accept/accept4 (server side), connect (client side), close.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    programs::TracePointContext,
};
use loupe_common::{
    CloseEvent, ConnEvent, ConnLocalEvent, Direction, DupEvent, EventHeader, EventKind, FD_SCAN,
    ParkedEvent, ResyncEvent, SOCKADDR_LEN, SocketInfo, SocketKey, SocketRole,
};

use crate::{
    data::{Buffer, RET_OFFSET, Tracked, arg_offset, remember, syscall_arg1, tracked_socket},
    emit,
    maps::{
        CONNECT_LOCAL, Connecting, InFlight, SOCKETS, SYN_SENT, TARGET_PIDS, peek_in_flight, stash,
        take_in_flight, track_socket, untrack_socket,
    },
};

/// -EINPROGRESS: a non-blocking connect that is under way counts as connected.
const EINPROGRESS: i64 = -115;
/// `TCP_SYN_SENT` and `IPPROTO_TCP` in `sock/inet_sock_set_state`.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Field offsets of `sock/inet_sock_set_state` (stable since 4.16; its format file says so).
mod state_tp {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const SADDR_V6: usize = 40;
}

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
    stash(
        pid_tgid,
        InFlight {
            enter_ns: emit::now_ns(),
            buf: addr,
            buf_len: SOCKADDR_LEN as u64,
            iovcnt: 0,
            fd: fd as i32,
            direction: Direction::Ingress as u32,
            conn_id: 0,
            goid_offset: 0,
        },
    )
}

pub fn try_enter_accept(ctx: &TracePointContext) -> Result<(), i64> {
    remember_addr(ctx)
}

pub fn try_enter_connect(ctx: &TracePointContext) -> Result<(), i64> {
    remember_addr(ctx)
}

/// Records an opened socket and tells userspace, with the peer address when the caller gave a
/// buffer for it.
#[inline(always)]
fn opened(
    pid_tgid: u64,
    fd: i32,
    role: SocketRole,
    addr_ptr: u64,
    local: Option<[u8; SOCKADDR_LEN]>,
) -> Result<(), i64> {
    let pid = (pid_tgid >> 32) as u32;
    let key = SocketKey { pid, fd };
    let conn_id = new_conn_id();
    // SAFETY: copied out at once.
    let goid_offset = unsafe { TARGET_PIDS.get(pid) }.map_or(0, |target| target.goid_offset);
    let info = SocketInfo {
        role: role as u32,
        goid_offset,
        conn_id,
    };
    track_socket(key.as_u64(), &info);
    let mut event = ConnEvent {
        header: EventHeader {
            kind: EventKind::Conn as u32,
            pid,
            tid: pid_tgid as u32,
            fd,
            conn_id,
        },
        ts_ns: emit::now_ns(),
        role: role as u32,
        addr_len: 0,
        addr: [0; SOCKADDR_LEN],
        local_len: 0,
        _pad: 0,
        local: [0; SOCKADDR_LEN],
    };
    if let Some(local) = local {
        event.local = local;
        event.local_len = SOCKADDR_LEN as u32;
    }
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

pub fn try_exit_accept(ctx: &TracePointContext) -> Result<(), i64> {
    // A thread already blocked in accept when loupe attached has no InFlight: its connection is
    // still the target's, and the address buffer it passed is still in the registers saved at
    // its entry (a caller loupe observes finds its request by that peer address).
    let (pid_tgid, addr_ptr) = match take_in_flight() {
        Some((pid_tgid, in_flight)) => (pid_tgid, in_flight.buf),
        None => match current_target() {
            Some(pid_tgid) => (pid_tgid, syscall_arg1()),
            None => return Ok(()),
        },
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    if ret < 0 {
        return Ok(());
    }
    opened(pid_tgid, ret as i32, SocketRole::Server, addr_ptr, None)
}

pub fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    // SAFETY: copied out at once, deleted right after.
    let local = unsafe { CONNECT_LOCAL.get(pid_tgid) }
        .copied()
        .filter(|connecting| connecting.fd == in_flight.fd)
        .map(|connecting| connecting.local);
    let _ = CONNECT_LOCAL.remove(pid_tgid);
    if ret != 0 && ret != EINPROGRESS {
        return Ok(());
    }
    let found = local.is_some();
    opened(
        pid_tgid,
        in_flight.fd,
        SocketRole::Client,
        in_flight.buf,
        local,
    )?;
    if !found {
        // The handshake may have completed on another CPU between the look-up above and the
        // socket's insert in `opened`: then its address went to CONNECT_LOCAL, for no one.
        // Looked up again now that the socket is in SOCKETS (sock_state checks SOCKETS again
        // after its insert), so one of the two always passes it on.
        // SAFETY: copied out at once, deleted right after.
        if let Some(late) = unsafe { CONNECT_LOCAL.get(pid_tgid) }
            .copied()
            .filter(|connecting| connecting.fd == in_flight.fd)
            && CONNECT_LOCAL.remove(pid_tgid).is_ok()
        {
            return conn_local(pid_tgid, &late);
        }
    }
    Ok(())
}

/// Tells userspace the own address of a client socket already in SOCKETS.
#[inline(always)]
fn conn_local(pid_tgid: u64, connecting: &Connecting) -> Result<(), i64> {
    let pid = (pid_tgid >> 32) as u32;
    let key = SocketKey {
        pid,
        fd: connecting.fd,
    };
    // SAFETY: copied out at once.
    let Some(conn_id) = (unsafe { SOCKETS.get(key.as_u64()) }).map(|info| info.conn_id) else {
        return Ok(());
    };
    let event = ConnLocalEvent {
        header: EventHeader {
            kind: EventKind::ConnLocal as u32,
            pid,
            tid: pid_tgid as u32,
            fd: connecting.fd,
            conn_id,
        },
        local: connecting.local,
    };
    emit::output(&event)
}

/// TCP state changes of targets' connecting sockets. Entering SYN_SENT happens inside connect,
/// on the connecting thread (before the kernel picks the port): who connects is noted by the
/// socket's address. Leaving SYN_SENT for ESTABLISHED (in whatever context the handshake
/// completes) gives the socket's own address: for connect's exit program if the connect is
/// still running, else to userspace as a `ConnLocalEvent`. A client connection then knows both
/// of its ends, which the other end, when loupe observes it too, sees as its peer.
pub fn try_sock_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets follow the tracepoint's format (state_tp).
    let protocol: u16 = unsafe { ctx.read_at(state_tp::PROTOCOL) }.map_err(i64::from)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: as above.
    let newstate: i32 = unsafe { ctx.read_at(state_tp::NEWSTATE) }.map_err(i64::from)?;
    // SAFETY: as above.
    let skaddr: u64 = unsafe { ctx.read_at(state_tp::SKADDR) }.map_err(i64::from)?;
    if newstate == TCP_SYN_SENT {
        let Some(pid_tgid) = current_target() else {
            return Ok(());
        };
        let Some(fd) = peek_in_flight(pid_tgid).map(|in_flight| in_flight.fd) else {
            return Ok(());
        };
        let connecting = Connecting {
            pid_tgid,
            fd,
            _pad: 0,
            local: [0; SOCKADDR_LEN],
        };
        return SYN_SENT
            .insert(skaddr, connecting, 0)
            .map_err(|err| err as i64);
    }
    // SAFETY: as above.
    let oldstate: i32 = unsafe { ctx.read_at(state_tp::OLDSTATE) }.map_err(i64::from)?;
    if oldstate != TCP_SYN_SENT {
        return Ok(());
    }
    // SAFETY: copied out at once, deleted right after.
    let Some(mut connecting) = (unsafe { SYN_SENT.get(skaddr) }).copied() else {
        return Ok(());
    };
    let _ = SYN_SENT.remove(skaddr);
    if newstate != TCP_ESTABLISHED {
        return Ok(());
    }
    // SAFETY: as above.
    let family: u16 = unsafe { ctx.read_at(state_tp::FAMILY) }.map_err(i64::from)?;
    // SAFETY: as above; the tracepoint stores the port in host order.
    let port: u16 = unsafe { ctx.read_at(state_tp::SPORT) }.map_err(i64::from)?;
    let local = &mut connecting.local;
    local[0..2].copy_from_slice(&family.to_ne_bytes());
    local[2..4].copy_from_slice(&port.to_be_bytes());
    match family {
        AF_INET => {
            // SAFETY: as above.
            let ip: [u8; 4] = unsafe { ctx.read_at(state_tp::SADDR) }.map_err(i64::from)?;
            local[4..8].copy_from_slice(&ip);
        }
        AF_INET6 => {
            // SAFETY: as above.
            let ip: [u8; 16] = unsafe { ctx.read_at(state_tp::SADDR_V6) }.map_err(i64::from)?;
            local[8..24].copy_from_slice(&ip);
        }
        _ => return Ok(()),
    }
    let pid_tgid = connecting.pid_tgid;
    let key = SocketKey {
        pid: (pid_tgid >> 32) as u32,
        fd: connecting.fd,
    };
    // SAFETY: presence test only.
    if unsafe { SOCKETS.get(key.as_u64()) }.is_some() {
        // connect returned already (a non-blocking connect): tell userspace.
        return conn_local(pid_tgid, &connecting);
    }
    // Still inside connect (a blocking one, on loopback): its exit carries it.
    CONNECT_LOCAL
        .insert(pid_tgid, connecting, 0)
        .map_err(|err| err as i64)?;
    // Unless connect's exit looked before this insert and has put the socket in SOCKETS since
    // (a non-blocking connect returning on another CPU): then it is passed on here.
    // SAFETY: presence test only.
    if unsafe { SOCKETS.get(key.as_u64()) }.is_some()
        // SAFETY: presence test only; whoever removes it passes it on.
        && unsafe { CONNECT_LOCAL.get(pid_tgid) }.is_some_and(|c| c.fd == connecting.fd)
        && CONNECT_LOCAL.remove(pid_tgid).is_ok()
    {
        return conn_local(pid_tgid, &connecting);
    }
    Ok(())
}

pub fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: fd is arg 0 of close.
    let fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    // Only tracked sockets are in SOCKETS, so this one lookup is also the target filter.
    let Some(Tracked {
        pid_tgid, conn_id, ..
    }) = tracked_socket(fd as i32)
    else {
        return Ok(());
    };
    forget(pid_tgid, fd as i32, conn_id)
}

/// Removes a closed socket from SOCKETS and tells userspace.
#[inline(always)]
fn forget(pid_tgid: u64, fd: i32, conn_id: u64) -> Result<(), i64> {
    let pid = (pid_tgid >> 32) as u32;
    untrack_socket(SocketKey { pid, fd }.as_u64());
    emit::output(&CloseEvent {
        header: EventHeader {
            kind: EventKind::Close as u32,
            pid,
            tid: pid_tgid as u32,
            fd,
            conn_id,
        },
        ts_ns: emit::now_ns(),
    })
}

/// `CLOSE_RANGE_CLOEXEC`: the range is only marked close-on-exec (exec closes it).
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// close_range(first, last, flags): every tracked socket in the range is closed as by close.
/// The kernel forgets those among the first `FD_SCAN` fds of the range itself (before the
/// syscall runs, as close does: a socket another thread opens on a freed fd meanwhile is not
/// touched); the exit program asks userspace to re-sync the rest of a longer range.
pub fn try_enter_close_range(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = current_target() else {
        return Ok(());
    };
    // SAFETY: first, last and flags are args 0..2 of close_range.
    let first: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let last: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let flags: u64 = unsafe { ctx.read_at(arg_offset(2)) }.map_err(i64::from)?;
    // The fds are unsigned ints; an fd above i32::MAX cannot be open.
    let (first, last) = (
        first & 0xffff_ffff,
        (last & 0xffff_ffff).min(i32::MAX as u64),
    );
    if flags & CLOSE_RANGE_CLOEXEC != 0 || first > last {
        return Ok(());
    }
    let pid = (pid_tgid >> 32) as u32;
    let mut i: u64 = 0;
    while i < FD_SCAN as u64 {
        let fd = first + i;
        if fd > last {
            break;
        }
        let key = SocketKey { pid, fd: fd as i32 }.as_u64();
        // SAFETY: copied out at once.
        if let Some(conn_id) = unsafe { SOCKETS.get(key) }.map(|info| info.conn_id) {
            let _ = forget(pid_tgid, fd as i32, conn_id);
        }
        i += 1;
    }
    let rest = first + FD_SCAN as u64;
    if rest > last {
        return Ok(());
    }
    stash(
        pid_tgid,
        InFlight {
            enter_ns: emit::now_ns(),
            buf: last,
            buf_len: 0,
            iovcnt: 0,
            fd: rest as i32,
            direction: Direction::Ingress as u32,
            conn_id: 0,
            goid_offset: 0,
        },
    )
}

/// The exit of a close_range whose range went past what its enter program scanned: once the
/// fds are closed, userspace checks the rest of the range against /proc.
pub fn try_exit_close_range(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    if ret != 0 {
        return Ok(());
    }
    resync(pid_tgid, in_flight.fd as u32, in_flight.buf as u32)
}

/// Asks userspace to check the process's tracked sockets with fds in `first..=last`.
fn resync(pid_tgid: u64, first: u32, last: u32) -> Result<(), i64> {
    emit::output(&ResyncEvent {
        header: EventHeader {
            kind: EventKind::Resync as u32,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            fd: -1,
            conn_id: 0,
        },
        first,
        last,
    })
}

/// A target exec'd: its close-on-exec fds are closed by now, but which ones they were is not
/// known here. Its tracked sockets among fds `0..FD_SCAN` leave SOCKETS at once (nothing the
/// new program does on those fds is traced) and go to userspace as `ParkedEvent`s, which puts
/// back those /proc still shows open; the fds past them userspace re-syncs the same way. The
/// exec of a process that is not a target goes to `watch`.
pub fn try_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = current_target() else {
        return crate::watch::try_exec(ctx);
    };
    let pid = (pid_tgid >> 32) as u32;
    let mut fd: u32 = 0;
    while fd < FD_SCAN {
        let key = SocketKey { pid, fd: fd as i32 }.as_u64();
        // SAFETY: copied out at once, deleted right after.
        if let Some(info) = unsafe { SOCKETS.get(key) }.copied() {
            untrack_socket(key);
            let _ = emit::output(&ParkedEvent {
                header: EventHeader {
                    kind: EventKind::Parked as u32,
                    pid,
                    tid: pid_tgid as u32,
                    fd: fd as i32,
                    conn_id: info.conn_id,
                },
                role: info.role,
                _pad: 0,
            });
        }
        fd += 1;
    }
    resync(pid_tgid, FD_SCAN, i32::MAX as u32)
}

/// A connection id unique on this host while loupe runs: the time in ns and the CPU, with the
/// top bit clear (userspace's ids for sockets found at attach set it).
fn new_conn_id() -> u64 {
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { aya_ebpf::helpers::generated::bpf_get_smp_processor_id() } as u64;
    ((emit::now_ns() << 8) | (cpu & 0xff)) & !loupe_common::USER_CONN_ID_BIT
}

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

fn remember_dup(old_fd: i32) -> Result<(), i64> {
    match tracked_socket(old_fd) {
        Some(socket) => remember(
            socket,
            old_fd,
            Buffer::Flat { buf: 0, len: 0 },
            Direction::Ingress,
        ),
        None => Ok(()),
    }
}

/// dup: the old fd is arg 0.
pub fn try_enter_dup(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: oldfd is arg 0 of dup.
    let old_fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    remember_dup(old_fd as i32)
}

/// dup2, dup3 (oldfd, newfd, ...): as dup when the old fd is tracked, and also when only the
/// new one is, because the call closes whatever `newfd` was (the exit reports that close).
pub fn try_enter_dup2(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: oldfd and newfd are args 0 and 1 of dup2 and dup3.
    let old_fd = unsafe { ctx.read_at::<u64>(arg_offset(0)) }.map_err(i64::from)? as i32;
    // SAFETY: as above.
    let new_fd = unsafe { ctx.read_at::<u64>(arg_offset(1)) }.map_err(i64::from)? as i32;
    if old_fd == new_fd {
        return Ok(());
    }
    if tracked_socket(old_fd).is_some() {
        return remember_dup(old_fd);
    }
    let Some(replaced) = tracked_socket(new_fd) else {
        return Ok(());
    };
    // The old fd is no socket of ours: `conn_id` 0 tells the exit there is nothing to copy.
    remember(
        Tracked {
            conn_id: 0,
            ..replaced
        },
        old_fd,
        Buffer::Flat { buf: 0, len: 0 },
        Direction::Ingress,
    )
}

/// fcntl(fd, F_DUPFD or F_DUPFD_CLOEXEC, min): what Rust's `try_clone` and many runtimes use.
pub fn try_enter_fcntl(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: cmd is arg 1 of fcntl.
    let cmd: u64 = unsafe { ctx.read_at(arg_offset(1)) }.map_err(i64::from)?;
    if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
        return Ok(());
    }
    // SAFETY: fd is arg 0 of fcntl.
    let old_fd: u64 = unsafe { ctx.read_at(arg_offset(0)) }.map_err(i64::from)?;
    remember_dup(old_fd as i32)
}

/// The new fd shares the old one's connection. A tracked socket the new fd was (dup2 and dup3
/// close it, or a close loupe never saw left it behind) is closed first.
pub fn try_exit_dup(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pid_tgid, in_flight)) = take_in_flight() else {
        return Ok(());
    };
    // SAFETY: `ret` is at RET_OFFSET in every sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.map_err(i64::from)?;
    if ret < 0 || ret as i32 == in_flight.fd {
        return Ok(());
    }
    let pid = (pid_tgid >> 32) as u32;
    let new_fd = ret as i32;
    // SAFETY: copied out at once.
    let replaced =
        (unsafe { SOCKETS.get(SocketKey { pid, fd: new_fd }.as_u64()) }).map(|info| info.conn_id);
    if let Some(conn_id) = replaced {
        forget(pid_tgid, new_fd, conn_id)?;
    }
    if in_flight.conn_id == 0 {
        return Ok(());
    }
    let key = SocketKey {
        pid,
        fd: in_flight.fd,
    }
    .as_u64();
    // SAFETY: copied out at once.
    let Some(info) = (unsafe { SOCKETS.get(key) }).copied() else {
        return Ok(());
    };
    track_socket(SocketKey { pid, fd: new_fd }.as_u64(), &info);
    emit::output(&DupEvent {
        header: EventHeader {
            kind: EventKind::Dup as u32,
            pid,
            tid: pid_tgid as u32,
            fd: new_fd,
            conn_id: in_flight.conn_id,
        },
        ts_ns: emit::now_ns(),
        old_fd: in_flight.fd,
        _pad: 0,
    })
}
