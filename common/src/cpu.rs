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

/// `header.conn_id` of a sample taken by the always-on, per-CPU event (`--profile-always`);
/// a hot thread's samples carry 0.
pub const SAMPLE_BACKGROUND: u64 = 1;

/// One CPU sample of a thread (`header.fd` is -1, `header.conn_id` 0 for a hot thread's,
/// [`SAMPLE_BACKGROUND`] for the always-on event's).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuSampleEvent {
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
    pub _pad: u32,
    /// The user stack from `sp` up.
    pub stack: [u8; STACK_COPY],
}
const _: () = assert!(
    size_of::<CpuSampleEvent>() == 40 + 8 * (MAX_USER_FRAMES + MAX_KERNEL_FRAMES) + 32 + STACK_COPY
);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers and integer arrays without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::CpuSampleEvent {}
}
