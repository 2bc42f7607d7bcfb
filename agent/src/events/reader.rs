//! The ring buffer reader: one task that drains `EVENTS` into batches of `Bytes` and sends them
//! on a bounded channel. It decodes nothing. The kernel submits without wakeups until a backlog
//! builds, so the reader drains on a short interval and also whenever it is woken.

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

/// Drains until `stop` turns true, then drains once more and returns.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    counters: Arc<Counters>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut ring = register_readable(ring)?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut(), &tx, &counters).await {
                    return Ok(());
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if !drain(ring.get_mut(), &tx, &counters).await {
                    return Ok(());
                }
            }
            _ = stop.changed() => {
                drain(ring.get_mut(), &tx, &counters).await;
                return Ok(());
            }
        }
    }
}

/// Moves every available record into batches; false once the receiver is gone.
async fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Batch>, counters: &Counters) -> bool {
    loop {
        let batch = take_batch(ring);
        if batch.is_empty() {
            return true;
        }
        let full = batch.len() == MAX_BATCH;
        Counters::add(&counters.events_read, batch.len() as u64);
        let bytes: usize = batch.iter().map(|record| record.len()).sum();
        Counters::add(&counters.ring_bytes_read, bytes as u64);
        // Waiting here is the backpressure: the ring fills, and the kernel counts what it drops.
        if tx.send(batch).await.is_err() {
            return false;
        }
        if !full {
            return true;
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
    let mut buffer = BytesMut::new();
    let mut lengths = Vec::new();
    while lengths.len() < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        buffer.extend_from_slice(&item);
        lengths.push(item.len());
    }
    let mut frozen = buffer.freeze();
    lengths
        .into_iter()
        .map(|len| frozen.split_to(len))
        .collect()
}
