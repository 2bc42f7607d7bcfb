//! CPU samples. Userspace opens a CPU-clock perf event on a thread only while it runs something
//! past its threshold, so `cpu_sample` runs only for those threads: no PID check, no map lookup.
//! With `--profile-always`, `cpu_sample_always` runs on every CPU at a low rate and keeps a
//! sample only when the CPU runs a target's thread (one map lookup). Each copies the user and
//! kernel stacks (innermost first) into one record, with the user registers and a copy of the
//! user stack for userspace to unwind where the code has no frame pointers.
//!
//! Off-CPU: `off_cpu` runs at sched:sched_switch, attached only while some thread is hot. A hot
//! thread leaving the CPU has its switch-out time kept in `HOT_THREADS` and its stack recorded
//! (at most one stack per `OFF_CPU_GAP_NS` per thread); coming back, it gets one small
//! [`OffCpuEvent`] with both times. A thread asleep since before its heating has its stack
//! recorded by `off_cpu_return` as its wait's syscall returns.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    programs::{PerfEventContext, TracePointContext},
};
use loupe_common::{
    CpuSampleEvent, CpuSampleHead, EventHeader, EventKind, MAX_KERNEL_FRAMES, MAX_PY_FRAMES,
    MAX_USER_FRAMES, OffCpuEvent, PY_DIRECT, PyThread, SAMPLE_BACKGROUND, SAMPLE_OFF_CPU,
    STACK_COPY,
};

use crate::{
    config,
    data::{PT_REGS_BP, PT_REGS_IP, PT_REGS_SP, saved_user_reg},
    emit,
    maps::{HOT_THREADS, PY_THREADS, TARGET_PIDS},
};

/// The sizes tried for the stack copy, largest first: a read fails whole when it crosses the
/// stack's top into unmapped memory, so a thread sampled near its stack's top gets a smaller one.
const COPY_SIZES: [usize; 4] = [STACK_COPY, STACK_COPY / 4, STACK_COPY / 16, STACK_COPY / 64];

pub fn try_sample(ctx: &PerfEventContext) -> Result<(), i64> {
    sample(
        ctx.as_ptr(),
        bpf_get_current_pid_tgid(),
        0,
        0,
        emit::now_ns(),
    )
}

/// The always-on event of one CPU (`--profile-always`): a sample only when the CPU runs a
/// target's thread.
pub fn try_sample_always(ctx: &PerfEventContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: only whether the key is present is read.
    if unsafe { TARGET_PIDS.get((pid_tgid >> 32) as u32) }.is_none() {
        return Ok(());
    }
    sample(ctx.as_ptr(), pid_tgid, SAMPLE_BACKGROUND, 0, emit::now_ns())
}

/// sched_switch's `prev_state` bits of a thread exiting.
const STATE_DEAD: u32 = 0x10;
const STATE_ZOMBIE: u32 = 0x20;

/// sched:sched_switch: the current task is the one leaving (`prev`).
pub fn try_switch(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: reads within the tracepoint's record, at offsets its format file gave.
    let (prev, state, next) = unsafe {
        (
            ctx.read_at::<i32>(config::switch_prev_pid_offset() as usize)? as u32,
            ctx.read_at::<i64>(config::switch_prev_state_offset() as usize)? as u32,
            ctx.read_at::<i32>(config::switch_next_pid_offset() as usize)? as u32,
        )
    };
    let now = emit::now_ns();
    if let Some(hot) = HOT_THREADS.get_ptr_mut(prev) {
        // SAFETY: a value pointer of a map entry, valid for this program's run.
        let (pid, stack_ns) = unsafe { ((*hot).pid, (*hot).stack_ns) };
        // A thread leaving for good (TASK_DEAD, EXIT_ZOMBIE) waits on nothing.
        let exiting = state & (STATE_DEAD | STATE_ZOMBIE) != 0;
        let stacked = !exiting
            && (stack_ns == 0 || now.wrapping_sub(stack_ns) >= config::off_cpu_gap_ns())
            && sample(
                ctx.as_ptr(),
                (u64::from(pid) << 32) | u64::from(prev),
                SAMPLE_OFF_CPU,
                state,
                now,
            )
            .is_ok();
        // SAFETY: as above.
        unsafe {
            (*hot).off_ns = now;
            (*hot).state = state;
            (*hot).stacked = u32::from(stacked);
            if stacked {
                (*hot).stack_ns = now;
            }
        }
    }
    if let Some(hot) = HOT_THREADS.get_ptr_mut(next) {
        // SAFETY: as above.
        let (pid, off_ns, state, stacked) =
            unsafe { ((*hot).pid, (*hot).off_ns, (*hot).state, (*hot).stacked) };
        // SAFETY: as above.
        unsafe {
            (*hot).off_ns = 0;
            (*hot).stacked = 0;
            if off_ns == 0 {
                // Off since before its heating: its stack is taken as the wait returns.
                (*hot).want_stack = 1;
                (*hot).woke_ns = now;
            }
        }
        emit::output(&OffCpuEvent {
            header: EventHeader {
                kind: EventKind::OffCpu as u32,
                pid,
                tid: next,
                fd: -1,
                conn_id: 0,
            },
            off_ns,
            on_ns: now,
            state,
            stacked,
        })?;
    }
    Ok(())
}

/// raw_syscalls:sys_exit, while some thread is hot: a hot thread that woke from a wait begun
/// before its heating returns from it here, its user stack as it was in the wait.
pub fn try_return(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(hot) = HOT_THREADS.get_ptr_mut(pid_tgid as u32) else {
        return Ok(());
    };
    // SAFETY: a value pointer of a map entry, valid for this program's run.
    let woke_ns = unsafe {
        if (*hot).want_stack == 0 {
            return Ok(());
        }
        (*hot).want_stack = 0;
        (*hot).woke_ns
    };
    sample(ctx.as_ptr(), pid_tgid, SAMPLE_OFF_CPU, 1, woke_ns)
}

/// The current thread's Python frames, innermost first, from its thread state: each frame's
/// code object, instruction pointer and marker, as many as fit; a read that fails ends the
/// chain there.
#[inline(always)]
fn python_frames(head: &mut CpuSampleHead, thread: &PyThread) {
    let read = |at: u64| -> Option<u64> {
        // SAFETY: bpf_probe_read_user checks the address; a bad one only fails the read.
        unsafe { bpf_probe_read_user(at as *const u64) }.ok()
    };
    let Some(mut frame) = read(thread.tstate + u64::from(thread.frame_field)) else {
        return;
    };
    if thread.cframe_current != PY_DIRECT {
        if frame == 0 {
            return;
        }
        let Some(current) = read(frame + u64::from(thread.cframe_current)) else {
            return;
        };
        frame = current;
    }
    let mut count = 0;
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 {
            break;
        }
        let (Some(code), Some(previous), Some(instr)) = (
            read(frame + u64::from(thread.frame_code)),
            read(frame + u64::from(thread.frame_previous)),
            read(frame + u64::from(thread.frame_instr)),
        ) else {
            break;
        };
        // SAFETY: as above.
        let Ok(marker) =
            (unsafe { bpf_probe_read_user((frame + u64::from(thread.frame_marker)) as *const u8) })
        else {
            break;
        };
        head.py_code[i] = code;
        head.py_instr[i] = instr;
        head.py_marker[i] = marker;
        count = i as u32 + 1;
        frame = previous;
    }
    head.py_frames = count;
}

#[inline(always)]
fn sample(ctx: *mut c_void, pid_tgid: u64, source: u64, state: u32, ts_ns: u64) -> Result<(), i64> {
    let mut entry = emit::reserve::<CpuSampleEvent>()?;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of size_of::<CpuSampleEvent>();
    // bpf_get_stack writes at most the size it is given into the array it is given.
    unsafe {
        (*event).head.header = EventHeader {
            kind: EventKind::CpuSample as u32,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            fd: -1,
            conn_id: source,
        };
        (*event).head.ts_ns = ts_ns;
        let user = generated::bpf_get_stack(
            ctx,
            (*event).head.user.as_mut_ptr().cast(),
            (MAX_USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        );
        if user <= 0 && source == SAMPLE_OFF_CPU {
            // No user stack to show: a thread past exit_mm, preempted on its way out. Its
            // switch-out is not a wait of the code it ran, so it is not stacked.
            entry.discard(0);
            return Err(-1);
        }
        (*event).head.user_bytes = if user > 0 { user as u32 } else { 0 };
        let kernel = generated::bpf_get_stack(
            ctx,
            (*event).head.kernel.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        );
        (*event).head.kernel_bytes = if kernel > 0 { kernel as u32 } else { 0 };
        let sp = saved_user_reg(PT_REGS_SP);
        (*event).head.ip = saved_user_reg(PT_REGS_IP);
        (*event).head.sp = sp;
        (*event).head.bp = saved_user_reg(PT_REGS_BP);
        (*event).head.state = state;
        (*event).head.stack_bytes = 0;
        (*event).head.py_frames = 0;
        if let Some(thread) = PY_THREADS.get(pid_tgid) {
            python_frames(&mut (*event).head, thread);
        }
        if sp != 0 {
            for size in COPY_SIZES {
                let read = generated::bpf_probe_read_user(
                    (*event).stack.as_mut_ptr().cast(),
                    size as u32,
                    sp as *const c_void,
                );
                if read == 0 {
                    (*event).head.stack_bytes = size as u32;
                    break;
                }
            }
        }
    }
    entry.submit(emit::submit_flags());
    Ok(())
}
