//! CPU samples: a perf_event program, attached per thread while that thread runs something
//! slow, records where the thread is (user and kernel stacks) at `--profile-hz`.

use crate::event::EventHeader;

/// User stack frames kept per sample (innermost first).
pub const MAX_USER_FRAMES: usize = 64;
/// Kernel stack frames kept per sample (innermost first).
pub const MAX_KERNEL_FRAMES: usize = 32;

/// One CPU sample of a hot thread (`header.fd` is -1, `header.conn_id` 0).
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
}
const _: () =
    assert!(size_of::<CpuSampleEvent>() == 40 + 8 * (MAX_USER_FRAMES + MAX_KERNEL_FRAMES));

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers and integer arrays without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::CpuSampleEvent {}
}
