//! The kernel's loss counters, summed over CPUs.

use aya::maps::{MapData, PerCpuArray};
use loupe_common::{LOSS_SLOTS, LossSlot};

/// Sums of the per-CPU `LOSS` slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounters {
    pub ring_full: u64,
    pub in_flight_full: u64,
    pub sockets_full: u64,
    pub targets_full: u64,
    /// Vector reads/writes whose bytes went on past the iovecs the kernel reads.
    pub iovecs_cut: u64,
    /// TLS plaintext whose connection was not known.
    pub tls_unplaced: u64,
    /// Not losses: keys the kernel added to and removed from `SOCKETS` (see `probes::sockets`).
    pub sockets_added: u64,
    pub sockets_removed: u64,
}

impl LossCounters {
    /// Reads every slot; a slot that cannot be read counts as zero.
    pub fn read(map: &PerCpuArray<MapData, u64>) -> Self {
        let mut sums = [0u64; LOSS_SLOTS as usize];
        for (slot, sum) in sums.iter_mut().enumerate() {
            if let Ok(values) = map.get(&(slot as u32), 0) {
                *sum = values.iter().sum();
            }
        }
        Self {
            ring_full: sums[LossSlot::RingFull as usize],
            in_flight_full: sums[LossSlot::InFlightFull as usize],
            sockets_full: sums[LossSlot::SocketsFull as usize],
            targets_full: sums[LossSlot::TargetsFull as usize],
            iovecs_cut: sums[LossSlot::IovecsCut as usize],
            tls_unplaced: sums[LossSlot::TlsUnplaced as usize],
            sockets_added: sums[LossSlot::SocketsAdded as usize],
            sockets_removed: sums[LossSlot::SocketsRemoved as usize],
        }
    }

    /// Events that never reached userspace.
    pub fn events_lost(&self) -> u64 {
        self.ring_full + self.in_flight_full
    }
}
