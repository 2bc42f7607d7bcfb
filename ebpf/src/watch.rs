//! The exec of a process that is not a target, while loupe watches for names or executables
//! (`--name`, `--exe`; `loupe_common::watch`). A watched name becomes a target here, before the
//! new program runs its first instruction; an executable is matched by userspace, which this
//! reports the exec to. With nothing watched (the default) it returns at once: an exec costs one
//! global read.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use aya_ebpf::programs::TracePointContext;
use aya_log_ebpf::debug;
use loupe_common::{
    EventHeader, EventKind, ExecEvent, LossSlot, TargetInfo, WATCH_BY_COMM, WATCH_EVERY_EXEC,
};

use crate::{
    config, emit,
    maps::{TARGET_PIDS, WATCH_COMMS, count_loss},
};

pub fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let watch = config::watch_execs();
    if watch == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // At sched_process_exec the comm is already the new program's.
    let comm = bpf_get_current_comm()?;
    let mut adopted = 0;
    // SAFETY: presence test only.
    if watch & WATCH_BY_COMM != 0 && unsafe { WATCH_COMMS.get(comm) }.is_some() {
        // Its own root; userspace fills in a Go program's offsets once it has read its binary.
        let info = TargetInfo {
            root_pid: pid,
            goid_offset: 0,
        };
        if TARGET_PIDS.insert(pid, info, 0).is_ok() {
            adopted = 1;
            debug!(ctx, "exec of watched name: {} is a target", pid);
        } else {
            count_loss(LossSlot::TargetsFull);
        }
    }
    if adopted == 0 && watch & WATCH_EVERY_EXEC == 0 {
        return Ok(());
    }
    emit::output(&ExecEvent {
        header: EventHeader {
            kind: EventKind::Exec as u32,
            pid,
            tid: pid_tgid as u32,
            fd: -1,
            conn_id: 0,
        },
        ts_ns: emit::now_ns(),
        comm,
        adopted,
        _pad: 0,
    })
}
