//! CPU samples: a perf_event program, attached per thread while that thread runs something
//! slow, records where the thread is (user and kernel stacks) at `--profile-hz`.

use crate::event::EventHeader;

/// User stack frames kept per sample (innermost first).
pub const MAX_USER_FRAMES: usize = 64;
/// Kernel stack frames kept per sample (innermost first).
pub const MAX_KERNEL_FRAMES: usize = 32;
/// Bytes of the user stack copied per sample, from the stack pointer up: what userspace unwinds
/// with the modules' `.eh_frame` when the code has no frame pointers.
pub const STACK_COPY: usize = 16 * 1024;
/// Python frames kept per sample (innermost first), read from a CPython thread's chain of
/// interpreter frames when its thread is in `PY_THREADS`.
pub const MAX_PY_FRAMES: usize = 48;

/// `header.conn_id` of a sample taken by the always-on, per-CPU event (`--profile-always`);
/// a hot thread's samples carry 0.
pub const SAMPLE_BACKGROUND: u64 = 1;

/// `header.conn_id` of the stack a hot thread left the CPU with (the `off_cpu` program, at
/// sched_switch): its `ts_ns` is the switch-out, its `state` the task state it left in.
pub const SAMPLE_OFF_CPU: u64 = 2;

/// One CPU sample of a thread (`header.fd` is -1, `header.conn_id` 0 for a hot thread's,
/// [`SAMPLE_BACKGROUND`] for the always-on event's, [`SAMPLE_OFF_CPU`] for a switch-out's): its
/// fixed part, then the stack copy (userspace reads the two apart, and copies the stack once).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuSampleEvent {
    pub head: CpuSampleHead,
    /// The user stack from `head.sp` up.
    pub stack: [u8; STACK_COPY],
}

/// A CPU sample's fixed part.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuSampleHead {
    pub header: EventHeader,
    /// When the sample was taken: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// Bytes of `user` filled by bpf_get_stack (0 or negative error codes become 0).
    pub user_bytes: u32,
    /// Bytes of `kernel` filled.
    pub kernel_bytes: u32,
    /// Instruction pointers, innermost first: `user[0]` is where the thread was.
    pub user: [u64; MAX_USER_FRAMES],
    pub kernel: [u64; MAX_KERNEL_FRAMES],
    /// The thread's user registers when it was sampled (the ones saved at its last entry into
    /// the kernel when it was sampled in kernel mode): instruction, stack and frame pointers.
    /// All 0 when they could not be read.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of `stack` copied (0: none could be read).
    pub stack_bytes: u32,
    /// For a switch-out ([`SAMPLE_OFF_CPU`]): the `prev_state` sched_switch reported (0 or
    /// [`STATE_PREEMPTED`]: still runnable; 1 sleeping, 2 uninterruptible). 0 otherwise.
    pub state: u32,
    /// Python frames read into `py_*` (0: not a thread of a CPython loupe reads).
    pub py_frames: u32,
    pub _pad: u32,
    /// Each Python frame's code object (`f_code`; `f_executable` on 3.13), innermost first.
    pub py_code: [u64; MAX_PY_FRAMES],
    /// Each frame's instruction pointer (`prev_instr`; `instr_ptr` on 3.13).
    pub py_instr: [u64; MAX_PY_FRAMES],
    /// Each frame's marker byte ([`PyThread::frame_marker`]): 3.11's `is_entry`, 3.12's and
    /// 3.13's `owner`. Userspace reads it by version.
    pub py_marker: [u8; MAX_PY_FRAMES],
}
const _: () = assert!(
    size_of::<CpuSampleHead>()
        == 40 + 8 * (MAX_USER_FRAMES + MAX_KERNEL_FRAMES) + 40 + 17 * MAX_PY_FRAMES
);
const _: () = assert!(size_of::<CpuSampleEvent>() == size_of::<CpuSampleHead>() + STACK_COPY);

/// sched_switch's `prev_state` of a task preempted (Linux's TASK_REPORT_MAX): runnable, waiting
/// for a CPU rather than for something.
pub const STATE_PREEMPTED: u32 = 0x100;

/// A hot thread came back on a CPU ([`crate::EventKind::OffCpu`]): how long it was off.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuEvent {
    pub header: EventHeader,
    /// When it left the CPU (ns since boot), or 0: it was off already when it was heated.
    pub off_ns: u64,
    /// When it came back.
    pub on_ns: u64,
    /// The `prev_state` it left in (see [`CpuSampleEvent::state`]).
    pub state: u32,
    /// 1 when the switch-out's stack was recorded (a [`SAMPLE_OFF_CPU`] sample at `off_ns`).
    pub stacked: u32,
}
const _: () = assert!(size_of::<OffCpuEvent>() == 24 + 24);

/// A hot thread, in `HOT_THREADS` (keyed by thread id): userspace inserts it with `pid` set and
/// the rest 0 when it heats the thread and removes it when it cools; the `off_cpu` program keeps
/// the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HotThread {
    pub pid: u32,
    /// `prev_state` at the last switch-out.
    pub state: u32,
    /// The last switch-out not yet followed by a switch-in (0: none).
    pub off_ns: u64,
    /// When the last switch-out stack was recorded: at most one per `OFF_CPU_GAP_NS`.
    pub stack_ns: u64,
    /// 1 when the stack of the switch-out at `off_ns` was recorded.
    pub stacked: u32,
    /// 1 when the thread woke from a wait it began before it was heated: its next syscall
    /// exit (the return from that wait, with the same user stack) records the stack, stamped
    /// `woke_ns`.
    pub want_stack: u32,
    pub woke_ns: u64,
}

/// A CPython thread, in `PY_THREADS` (keyed by pid_tgid): where the samples read its frame
/// chain. Userspace writes it from the interpreter's thread list with the offsets of its
/// version; the kernel follows `tstate + frame_field` (then `+ cframe_current`, unless
/// [`PY_DIRECT`]) to the innermost frame, then reads each frame's fields at these offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyThread {
    /// The thread's `PyThreadState`.
    pub tstate: u64,
    /// Offset in the thread state of `cframe` (3.11, 3.12) or `current_frame` (3.13).
    pub frame_field: u32,
    /// Offset of `current_frame` in the `_PyCFrame`, or [`PY_DIRECT`].
    pub cframe_current: u32,
    /// Offsets in a `_PyInterpreterFrame` of its code object, its previous frame, its
    /// instruction pointer (each a u64) and its marker byte.
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    pub frame_marker: u32,
}
const _: () = assert!(size_of::<PyThread>() == 32);

/// [`PyThread::cframe_current`] of a version whose thread state points at its frame directly.
pub const PY_DIRECT: u32 = u32::MAX;

/// Threads hot at once, at most (userspace heats at most 64).
pub const HOT_THREADS_MAX: u32 = 256;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers and integer arrays without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::CpuSampleEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuSampleHead {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffCpuEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HotThread {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PyThread {}
}
