//! The ring buffer reader: one task that drains `EVENTS` into batches of `Bytes` and sends them
//! on a bounded channel. It decodes nothing. The kernel submits without wakeups until a backlog
//! builds, so the reader drains on a short interval and also whenever it is woken. The interval
//! shortens while traffic is heavy ([`pace`]): many small drains instead of a few large ones,
//! so the pipeline's work comes in short slices and never holds the target's CPU for long (the
//! target's p99), while an idle target costs a wakeup every `interval` only.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use bytes::{Bytes, BytesMut};
use std::os::fd::AsRawFd;

use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};

use crate::stats::Counters;

/// Records drained in one go, in ring order.
pub type Batch = Vec<Bytes>;

/// Most records per batch, so one huge backlog does not become one huge allocation.
const MAX_BATCH: usize = 4096;

/// A drain of at least this many bytes means heavy traffic: the next one comes sooner.
const BUSY_BYTES: usize = 64 * 1024;
/// The interval while traffic is heavy.
const BUSY_INTERVAL: Duration = Duration::from_millis(2);

/// When to drain next, after a drain that read `bytes`: soon while traffic is heavy, else at
/// the idle `interval`.
pub fn pace(bytes: usize, interval: Duration) -> Duration {
    if bytes >= BUSY_BYTES {
        BUSY_INTERVAL.min(interval)
    } else {
        interval
    }
}

/// Drains until `stop` turns true, then drains once more and returns.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    counters: Arc<Counters>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut ring = register_readable(ring)?;
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        let read = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let read = drain(guard.get_inner_mut(), &tx, &counters).await;
                guard.clear_ready();
                read
            }
            _ = tokio::time::sleep_until(next) => drain(ring.get_mut(), &tx, &counters).await,
            _ = stop.changed() => {
                drain(ring.get_mut(), &tx, &counters).await;
                return Ok(());
            }
        };
        let Some(bytes) = read else {
            return Ok(());
        };
        next = tokio::time::Instant::now() + pace(bytes, interval);
    }
}

/// Moves every available record into batches; the bytes moved, or None once the receiver is
/// gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Batch>,
    counters: &Counters,
) -> Option<usize> {
    let mut moved = 0;
    loop {
        let batch = take_batch(ring);
        if batch.is_empty() {
            return Some(moved);
        }
        let full = batch.len() == MAX_BATCH;
        Counters::add(&counters.events_read, batch.len() as u64);
        let bytes: usize = batch.iter().map(|record| record.len()).sum();
        Counters::add(&counters.ring_bytes_read, bytes as u64);
        moved += bytes;
        // Waiting here is the backpressure: the ring fills, and the kernel counts what it drops.
        if tx.send(batch).await.is_err() {
            return None;
        }
        if !full {
            return Some(moved);
        }
    }
}

/// Registers a map's (or the logger's) fd for readability with the runtime.
pub fn register_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and the AsyncFd owns `inner`, so the fd stays open for as long
    // as it is registered and is deregistered before it is closed.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
}

fn take_batch(ring: &mut RingBuf<MapData>) -> Batch {
    let mut gather = Gather::default();
    while gather.len() < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        gather.push(&item);
    }
    gather.finish()
}

/// Records copied out of the ring into one buffer, each then a slice of it: a batch costs one
/// buffer (grown a few times), not an allocation per record.
#[derive(Default)]
pub struct Gather {
    buffer: BytesMut,
    lengths: Vec<usize>,
}

impl Gather {
    pub fn push(&mut self, record: &[u8]) {
        self.buffer.extend_from_slice(record);
        self.lengths.push(record.len());
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    pub fn finish(self) -> Batch {
        let mut frozen = self.buffer.freeze();
        self.lengths
            .into_iter()
            .map(|len| frozen.split_to(len))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gathered_batch_holds_each_record_whole_and_in_order() {
        let mut gather = Gather::default();
        assert!(gather.is_empty());
        for record in [&b"first"[..], b"", b"the third"] {
            gather.push(record);
        }
        assert_eq!(gather.len(), 3);
        let batch = gather.finish();
        assert_eq!(batch, [&b"first"[..], b"", b"the third"]);
    }

    #[test]
    fn heavy_traffic_drains_sooner_and_an_idle_ring_at_the_interval() {
        let idle = Duration::from_millis(10);
        assert_eq!(pace(0, idle), idle);
        assert_eq!(pace(BUSY_BYTES - 1, idle), idle);
        assert_eq!(pace(BUSY_BYTES, idle), BUSY_INTERVAL);
        assert_eq!(
            pace(BUSY_BYTES, Duration::from_millis(1)),
            Duration::from_millis(1),
            "never later than asked"
        );
    }
}
