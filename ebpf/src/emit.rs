//! Writing records to the ring buffer: reservation, loss counting and the wakeup policy.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufEntry,
};
use loupe_common::LossSlot;

use crate::{
    config,
    maps::{EVENTS, count_loss},
};

/// Submit flags: no wakeup unless the backlog passed the threshold, so a busy target pays ~25 ns
/// per record instead of a ~1.4 us wakeup, and the reader still wakes before the ring fills.
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config::wakeup_bytes() {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Reserves one record in the ring buffer, or counts it lost (`LossSlot::RingFull`) when the
/// ring is full: every record the kernel writes is reserved here, so no reserve failure goes
/// uncounted. The caller fills the entry and submits (or discards) it.
#[inline(always)]
pub fn reserve<T: 'static>() -> Result<RingBufEntry<T>, i64> {
    EVENTS.reserve::<T>(0).ok_or_else(|| {
        count_loss(LossSlot::RingFull);
        -1
    })
}

/// Writes one fixed-size record built on the stack.
pub fn output<T: Copy + 'static>(record: &T) -> Result<(), i64> {
    let mut entry = reserve::<T>()?;
    entry.write(*record);
    entry.submit(submit_flags());
    Ok(())
}

/// Now, in ns since boot (CLOCK_MONOTONIC): the clock of every timestamp in the ABI.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; it is unsafe only because it is a helper.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
