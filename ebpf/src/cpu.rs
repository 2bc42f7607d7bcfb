//! CPU samples. Userspace opens a CPU-clock perf event on a thread only while it runs something
//! past its threshold, so `cpu_sample` runs only for those threads: no PID check, no map lookup.
//! With `--profile-always`, `cpu_sample_always` runs on every CPU at a low rate and keeps a
//! sample only when the CPU runs a target's thread (one map lookup). Each copies the user and kernel stacks (innermost first) into one record, with
//! the user registers and a copy of the user stack for userspace to unwind where the code has
//! no frame pointers.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, generated},
    programs::PerfEventContext,
};
use loupe_common::{
    CpuSampleEvent, EventHeader, EventKind, MAX_KERNEL_FRAMES, MAX_USER_FRAMES, SAMPLE_BACKGROUND,
    STACK_COPY,
};

use crate::{
    data::{PT_REGS_BP, PT_REGS_IP, PT_REGS_SP, saved_user_reg},
    emit,
    maps::TARGET_PIDS,
};

/// The sizes tried for the stack copy, largest first: a read fails whole when it crosses the
/// stack's top into unmapped memory, so a thread sampled near its stack's top gets a smaller one.
const COPY_SIZES: [usize; 4] = [STACK_COPY, STACK_COPY / 4, STACK_COPY / 16, STACK_COPY / 64];

pub fn try_sample(ctx: &PerfEventContext) -> Result<(), i64> {
    sample(ctx, bpf_get_current_pid_tgid(), 0)
}

/// The always-on event of one CPU (`--profile-always`): a sample only when the CPU runs a
/// target's thread.
pub fn try_sample_always(ctx: &PerfEventContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: only whether the key is present is read.
    if unsafe { TARGET_PIDS.get((pid_tgid >> 32) as u32) }.is_none() {
        return Ok(());
    }
    sample(ctx, pid_tgid, SAMPLE_BACKGROUND)
}

#[inline(always)]
fn sample(ctx: &PerfEventContext, pid_tgid: u64, source: u64) -> Result<(), i64> {
    let mut entry = emit::reserve::<CpuSampleEvent>()?;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of size_of::<CpuSampleEvent>();
    // bpf_get_stack writes at most the size it is given into the array it is given.
    unsafe {
        (*event).header = EventHeader {
            kind: EventKind::CpuSample as u32,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            fd: -1,
            conn_id: source,
        };
        (*event).ts_ns = emit::now_ns();
        let user = generated::bpf_get_stack(
            ctx.as_ptr(),
            (*event).user.as_mut_ptr().cast(),
            (MAX_USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        );
        (*event).user_bytes = if user > 0 { user as u32 } else { 0 };
        let kernel = generated::bpf_get_stack(
            ctx.as_ptr(),
            (*event).kernel.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        );
        (*event).kernel_bytes = if kernel > 0 { kernel as u32 } else { 0 };
        let sp = saved_user_reg(PT_REGS_SP);
        (*event).ip = saved_user_reg(PT_REGS_IP);
        (*event).sp = sp;
        (*event).bp = saved_user_reg(PT_REGS_BP);
        (*event)._pad = 0;
        (*event).stack_bytes = 0;
        if sp != 0 {
            for size in COPY_SIZES {
                let read = generated::bpf_probe_read_user(
                    (*event).stack.as_mut_ptr().cast(),
                    size as u32,
                    sp as *const core::ffi::c_void,
                );
                if read == 0 {
                    (*event).stack_bytes = size as u32;
                    break;
                }
            }
        }
    }
    entry.submit(emit::submit_flags());
    Ok(())
}
