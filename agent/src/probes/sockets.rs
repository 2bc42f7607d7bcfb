//! Userspace's handles on the kernel's `SOCKETS` map, and how many sockets it let go of.
//!
//! `SOCKETS` is an LRU hash: when it is full, the socket unused the longest makes room, and the
//! kernel says nothing of it (that socket's later bytes are not traced). Every key put in or
//! taken out is counted, by the kernel (`LossSlot::SocketsAdded` / `SocketsRemoved`) and here,
//! so the keys that left without being taken out are what went in, less what was taken out,
//! less what is still there: [`evicted`]. [`EvictionAudit`] counts the keys only when the map
//! may be near full.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use loupe_common::SocketInfo;

use super::LossCounters;

/// Keys userspace put in `SOCKETS` that were not there, and took out that were; shared by
/// every handle on the map.
#[derive(Debug, Default)]
struct Tally {
    added: AtomicU64,
    removed: AtomicU64,
}

/// A handle on `SOCKETS` that counts what it adds and removes.
pub struct SocketMap {
    map: HashMap<MapData, u64, SocketInfo>,
    tally: Arc<Tally>,
}

impl SocketMap {
    pub fn new(map: HashMap<MapData, u64, SocketInfo>) -> Self {
        Self {
            map,
            tally: Arc::default(),
        }
    }

    /// Another handle on the same kernel map (`map` is its own fd on it), counted together.
    pub fn sibling(&self, map: HashMap<MapData, u64, SocketInfo>) -> Self {
        Self {
            map,
            tally: Arc::clone(&self.tally),
        }
    }

    pub fn get(&self, key: u64) -> Option<SocketInfo> {
        self.map.get(&key, 0).ok()
    }

    /// Puts `info` at `key`, replacing what was there.
    pub fn insert(&mut self, key: u64, info: SocketInfo) -> Result<(), MapError> {
        let new = self.get(key).is_none();
        self.map.insert(key, info, 0)?;
        if new {
            self.tally.added.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Takes `key` out; whether it was there.
    pub fn remove(&mut self, key: u64) -> bool {
        let was = self.map.remove(&key).is_ok();
        if was {
            self.tally.removed.fetch_add(1, Ordering::Relaxed);
        }
        was
    }

    /// Every entry (a walk of the whole map: one syscall per key).
    pub fn entries(&self) -> impl Iterator<Item = (u64, SocketInfo)> + '_ {
        self.map.iter().flatten()
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.keys().flatten()
    }

    fn added(&self) -> u64 {
        self.tally.added.load(Ordering::Relaxed)
    }

    fn removed(&self) -> u64 {
        self.tally.removed.load(Ordering::Relaxed)
    }
}

/// Keys that left the map without being taken out: the ones the LRU let go of.
pub fn evicted(added: u64, removed: u64, present: u64) -> u64 {
    added.saturating_sub(removed).saturating_sub(present)
}

/// Keeps the count of sockets the LRU map let go of, walking the map only when it may be near
/// full (the LRU makes room only then).
#[derive(Debug)]
pub struct EvictionAudit {
    /// The map's size.
    capacity: u64,
    /// Sockets let go of, as of the last walk.
    evicted: u64,
}

impl EvictionAudit {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity: u64::from(capacity),
            evicted: 0,
        }
    }

    /// The sockets let go of so far, with `before` the kernel's counts read just now. Walks the
    /// map when what went in less what came out (and what was let go of already) is past half
    /// its size. What went in is read before the walk and what came out after it, so a socket
    /// opened or closed meanwhile can only make the count low until the next call, never high.
    pub fn update(
        &mut self,
        sockets: &SocketMap,
        before: &LossCounters,
        loss: &PerCpuArray<MapData, u64>,
    ) -> u64 {
        let added = before.sockets_added + sockets.added();
        let removed = before.sockets_removed + sockets.removed();
        let live = evicted(added, removed, self.evicted);
        if live.saturating_mul(2) < self.capacity {
            return self.evicted;
        }
        let present = sockets.keys().count() as u64;
        let after = LossCounters::read(loss);
        let removed = after.sockets_removed + sockets.removed();
        self.evicted = self.evicted.max(evicted(added, removed, present));
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::evicted;

    #[test]
    fn what_went_in_less_what_came_out_less_what_is_there_was_let_go_of() {
        assert_eq!(evicted(10, 4, 6), 0, "nothing let go of");
        assert_eq!(evicted(100, 10, 64), 26, "a full map of 64");
        assert_eq!(
            evicted(5, 5, 3),
            0,
            "a walk that saw sockets opened after it began"
        );
    }
}
