//! A target that forks (nginx's master starting a worker, a pre-fork server replacing one) makes
//! its child a target too. `task_newtask` fires for every new task, threads included; its
//! `clone_flags` tell them apart, so a thread (CLONE_THREAD) never becomes a target of its own:
//! it is already traced as part of its thread group.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use aya_log_ebpf::debug;
use loupe_common::{EventHeader, EventKind, ForkEvent, LossSlot};

use crate::{
    config, emit,
    maps::{TARGET_PIDS, count_loss},
};

/// `CLONE_THREAD` from linux/sched.h: the new task joins its creator's thread group.
const CLONE_THREAD: u64 = 0x0001_0000;

pub fn try_process_fork(ctx: &TracePointContext) -> Result<(), i64> {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(mut info) = (unsafe { TARGET_PIDS.get(parent) }).copied() else {
        return Ok(());
    };
    // SAFETY: the offset comes from the tracepoint's own format file.
    let flags: u64 =
        unsafe { ctx.read_at(config::newtask_flags_offset() as usize) }.map_err(i64::from)?;
    if flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    // A new thread group's leader: its tid is the process's pid.
    // SAFETY: as above.
    let child: i32 =
        unsafe { ctx.read_at(config::newtask_pid_offset() as usize) }.map_err(i64::from)?;
    let child = child as u32;
    if child == parent {
        return Ok(());
    }
    // A child runs what it execs next: userspace tells what that is, not the parent's offset.
    info.goid_offset = 0;
    if TARGET_PIDS.insert(child, info, 0).is_err() {
        count_loss(LossSlot::TargetsFull);
    }
    debug!(ctx, "target {} forked {}", parent, child);
    emit::output(&ForkEvent {
        header: EventHeader {
            kind: EventKind::Fork as u32,
            pid: parent,
            tid: bpf_get_current_pid_tgid() as u32,
            fd: -1,
            conn_id: 0,
        },
        ts_ns: emit::now_ns(),
        child_pid: child,
        _pad: 0,
    })
}
