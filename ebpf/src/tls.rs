//! OpenSSL uprobes: the plaintext of `SSL_read`/`SSL_write` (and their `_ex` forms). Attached per
//! process by userspace to every libssl a target maps, with the function's `TlsFunction` id as
//! the cookie. The socket syscall a thread makes inside one of these calls is its ciphertext:
//! the data exit program records the connection here and reports nothing for it.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use loupe_common::{Direction, LossSlot, TlsFunction};

use crate::{
    data::{self, Plaintext},
    emit,
    maps::count_loss,
};

/// An OpenSSL call a thread is inside, keyed by pid_tgid: the entry writes, the data exit
/// program adds the connection its ciphertext went over, the return reads and deletes.
#[map]
pub static TLS_IN_FLIGHT: HashMap<u64, TlsCall> = HashMap::with_max_entries(16384, 0);

/// The connection each `SSL *` was last seen on, keyed by [tgid, ssl]: for a read OpenSSL
/// answers from its buffer, with no syscall inside. LRU: entries of closed connections (their
/// `SSL *` freed) age out, never fill it.
#[map]
pub static TLS_CONNS: LruHashMap<[u64; 2], TlsConn> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    pub enter_ns: u64,
    pub ssl: u64,
    pub buf: u64,
    /// The `size_t *` the `_ex` forms write the count to; 0 for the others.
    pub count_at: u64,
    pub function: u32,
    pub fd: i32,
    /// The connection its ciphertext went over (0 until a syscall inside it showed it).
    pub conn_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsConn {
    pub conn_id: u64,
    pub fd: i32,
    pub _pad: u32,
}

pub fn try_enter(ctx: &ProbeContext) -> Result<(), i64> {
    // SAFETY: the context pointer is the program's own.
    let function = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let ex = function == TlsFunction::ReadEx as u32 || function == TlsFunction::WriteEx as u32;
    let call = TlsCall {
        enter_ns: emit::now_ns(),
        ssl: ctx.arg(0).ok_or(-1i64)?,
        buf: ctx.arg(1).ok_or(-1i64)?,
        count_at: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        function,
        fd: -1,
        conn_id: 0,
    };
    TLS_IN_FLIGHT
        .insert(bpf_get_current_pid_tgid(), call, 0)
        .map_err(|err| {
            count_loss(LossSlot::InFlightFull);
            err as i64
        })
}

/// Called by the data exit program for every tracked socket syscall: true when the thread is
/// inside an OpenSSL call (the bytes are its ciphertext), after noting the connection.
pub fn inside_call(pid_tgid: u64, conn_id: u64, fd: i32) -> bool {
    let Some(call) = TLS_IN_FLIGHT.get_ptr_mut(pid_tgid) else {
        return false;
    };
    // SAFETY: the pointer comes from the lookup and the entry is this thread's own.
    unsafe {
        (*call).conn_id = conn_id;
        (*call).fd = fd;
    }
    true
}

pub fn try_return(ctx: &RetProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once; the entry is deleted right after.
    let Some(call) = (unsafe { TLS_IN_FLIGHT.get(pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = TLS_IN_FLIGHT.remove(pid_tgid);
    let ret = i64::from(ctx.ret::<i32>());
    let moved: u64 = if call.count_at != 0 {
        if ret != 1 {
            return Ok(());
        }
        // SAFETY: a user pointer read with bpf_probe_read_user, which faults safely.
        unsafe { bpf_probe_read_user(call.count_at as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return Ok(());
    };
    if moved == 0 {
        return Ok(());
    }
    let key = [pid_tgid >> 32, call.ssl];
    let conn = if call.conn_id != 0 {
        let seen = TlsConn {
            conn_id: call.conn_id,
            fd: call.fd,
            _pad: 0,
        };
        let _ = TLS_CONNS.insert(key, seen, 0);
        seen
    } else {
        // SAFETY: copied out at once.
        match unsafe { TLS_CONNS.get(key) } {
            Some(seen) => *seen,
            // Never seen on a socket (its handshake went by before loupe attached, and OpenSSL
            // answered from its buffer): which connection is not known.
            None => {
                count_loss(LossSlot::TlsUnplaced);
                return Ok(());
            }
        }
    };
    let direction = if call.function == TlsFunction::Read as u32
        || call.function == TlsFunction::ReadEx as u32
    {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    data::emit_plaintext(&Plaintext {
        pid_tgid,
        enter_ns: call.enter_ns,
        buf: call.buf,
        moved,
        fd: conn.fd,
        conn_id: conn.conn_id,
        direction,
    })
}
