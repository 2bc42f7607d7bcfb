//! Trace ids a test chooses and sends in a W3C `traceparent`, so it knows each request's trace
//! id whether or not it was exported.

use std::{
    collections::BTreeSet,
    time::{SystemTime, UNIX_EPOCH},
};

/// Random trace ids (splitmix64), from a seed the test prints when it fails.
pub struct TraceIds(u64);

impl TraceIds {
    /// A new seed every run.
    pub fn new() -> Self {
        Self::seeded(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        )
    }

    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `n` distinct, non-zero trace ids, in the order drawn.
    pub fn take(&mut self, n: usize) -> Vec<u128> {
        let mut seen = BTreeSet::new();
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let id = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
            if id != 0 && seen.insert(id) {
                ids.push(id);
            }
        }
        ids
    }
}

impl Default for TraceIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The caller's span id in a request's traceparent: the server span is its child.
pub fn remote_parent(trace_id: u128) -> u64 {
    (trace_id as u64).rotate_left(7) | 1
}

/// `00-<trace id>-<remote_parent>-01`.
pub fn traceparent(trace_id: u128) -> String {
    format!("00-{trace_id:032x}-{:016x}-01", remote_parent(trace_id))
}

/// The trace id as Jaeger writes it.
pub fn hex(trace_id: u128) -> String {
    format!("{trace_id:032x}")
}
