//! Uprobes on a Go program's net/http Transport (`loupe_common::golang`): which goroutine
//! entered which function, with which receiver. Attached per process by userspace, only to Go
//! programs whose goroutine ids loupe reads, with the function's id as the attach cookie.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::ProbeContext,
};
use loupe_common::{EventHeader, EventKind, GoCallEvent, GoFunction};

use crate::{emit, maps::GO_LAYOUTS};

/// The u64 at `base + offset` in the target's memory.
///
/// # Safety
/// None beyond the helper's: a bad address faults safely and comes back as an error.
unsafe fn read(base: u64, offset: u32) -> Result<u64, i64> {
    // SAFETY: see above.
    unsafe { bpf_probe_read_user((base + u64::from(offset)) as *const u64) }.map_err(i64::from)
}

/// Entry to a probed Go function (ABIInternal: arguments in RAX, RBX, ...; the running g in
/// R14).
pub fn try_enter(ctx: &ProbeContext) -> Result<(), i64> {
    // SAFETY: the context pointer is the program's own.
    let function = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(layout) = (unsafe { GO_LAYOUTS.get(pid) }).copied() else {
        return Ok(());
    };
    // SAFETY: `regs` is the probed thread's saved user registers, which the program may read.
    let (rax, rbx, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    // SAFETY: user addresses read with bpf_probe_read_user, which faults safely.
    let goid = unsafe { read(g, layout.g_goid) }?;
    // SAFETY: as above.
    let parent_goid = unsafe { read(g, layout.g_parent_goid) }.unwrap_or(0);
    let request = if function == GoFunction::PersistConnRoundTrip as u32 {
        // The *transportRequest's first field is its *Request.
        // SAFETY: as above.
        unsafe { read(rbx, 0) }?
    } else if function == GoFunction::NewProc as u32 {
        // The goid the new goroutine gets: the next of its P's cache (g.m.p.goidcache), when
        // the cache is not used up (then newproc1 takes a new batch: unknown here).
        // SAFETY: as above.
        let p = unsafe { read(read(g, layout.g_m)?, layout.m_p) }?;
        // SAFETY: as above.
        let (next, end) = unsafe {
            (
                read(p, layout.p_goidcache)?,
                read(p, layout.p_goidcache + 8)?,
            )
        };
        if next < end { next } else { 0 }
    } else {
        rax
    };
    emit::output(&GoCallEvent {
        header: EventHeader {
            kind: EventKind::GoCall as u32,
            pid,
            tid: pid_tgid as u32,
            fd: -1,
            conn_id: 0,
        },
        ts_ns: emit::now_ns(),
        function,
        _pad: 0,
        goid,
        parent_goid,
        object: request,
    })
}
