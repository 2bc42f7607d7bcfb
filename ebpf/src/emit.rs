//! Writing records to the ring buffer: reservation, loss counting and the wakeup policy.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
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

/// Writes one fixed-size record, counting a full ring as a loss.
pub fn output<T: Copy + 'static>(record: &T) -> Result<(), i64> {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(*record);
            entry.submit(submit_flags());
            Ok(())
        }
        None => {
            count_loss(LossSlot::RingFull);
            Err(-1)
        }
    }
}

/// Now, in ns since boot (CLOCK_MONOTONIC): the clock of every timestamp in the ABI.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; it is unsafe only because it is a helper.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
