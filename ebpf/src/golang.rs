//! Uprobes on a Go program's net/http Transport (`loupe_common::golang`): which goroutine
//! entered which function, with which receiver. Attached per process by userspace, only to Go
//! programs whose goroutine ids loupe reads, with the function's id as the attach cookie.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::ProbeContext,
};
use loupe_common::{EventHeader, EventKind, GoCallEvent, GoFunction};

use crate::{emit, maps::TARGET_PIDS};

/// Entry to a probed Go function (ABIInternal: arguments in RAX, RBX, ...; the running g in
/// R14).
pub fn try_enter(ctx: &ProbeContext) -> Result<(), i64> {
    // SAFETY: the context pointer is the program's own.
    let function = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(offset) = (unsafe { TARGET_PIDS.get(pid) }).map(|target| target.goid_offset) else {
        return Ok(());
    };
    if offset == 0 {
        return Ok(());
    }
    // SAFETY: `regs` is the probed thread's saved user registers, which the program may read.
    let (rax, rbx, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    let request = if function == GoFunction::PersistConnRoundTrip as u32 {
        // The *transportRequest's first field is its *Request.
        // SAFETY: a user address read with bpf_probe_read_user, which faults safely.
        unsafe { bpf_probe_read_user(rbx as *const u64) }.map_err(i64::from)?
    } else {
        rax
    };
    // SAFETY: a user address read with bpf_probe_read_user, which faults safely.
    let goid =
        unsafe { bpf_probe_read_user((g + u64::from(offset)) as *const u64) }.map_err(i64::from)?;
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
        object: request,
    })
}
