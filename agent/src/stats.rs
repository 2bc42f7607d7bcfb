//! Counters every stage bumps and the summary shows: loss is a signal, never silent.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shared, lock-free counters (one `Arc<Counters>` for the whole pipeline).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the ring buffer.
    pub events_read: AtomicU64,
    /// Records the kernel could not deliver (ring full, in-flight map full), polled from LOSS.
    pub events_lost_kernel: AtomicU64,
    /// Records that did not decode.
    pub decode_errors: AtomicU64,
    /// Spans built by the stitcher.
    pub spans_built: AtomicU64,
    /// Spans the exporter acknowledged (OTLP) or printed (terminal).
    pub spans_exported: AtomicU64,
    /// Spans dropped: export queue full, or the endpoint refused or timed out.
    pub spans_dropped: AtomicU64,
    /// Outbound calls (HTTP and database) exported without a parent, whatever the reason.
    pub unnested_calls: AtomicU64,
    /// Of those, the calls that some request in flight may have made, where loupe could not
    /// tell which (`loupe.parent=ambiguous`).
    pub ambiguous_calls: AtomicU64,
    /// Vector reads/writes whose bytes went on past the iovecs the kernel reads (counted by the
    /// kernel, polled).
    pub iovecs_cut: AtomicU64,
    /// TLS plaintext whose connection was not known (kernel).
    pub tls_unplaced: AtomicU64,
    /// Connections not tracked because the connection table was full.
    pub connections_dropped: AtomicU64,
    /// HTTP requests that got no response before their connection closed.
    pub unanswered_requests: AtomicU64,
    /// libpq queries whose end went unseen (a lost return, a process gone mid-query).
    pub queries_abandoned: AtomicU64,
    /// Calls exported without their request's verdict: the request never finished within the
    /// hold limit, or too many calls were waiting for their requests.
    pub trees_undiagnosed: AtomicU64,
    /// Threads being CPU-sampled right now (running something past its threshold).
    pub hot_threads: AtomicU64,
    /// CPU samples taken (while a thread was hot).
    pub cpu_samples: AtomicU64,
    /// CPU samples no span claimed (taken after its end, or pushed out of the bounded store).
    pub cpu_samples_unclaimed: AtomicU64,
    /// Slow spans exported without their profile (symbolizer queue full).
    pub profiles_skipped: AtomicU64,
    /// Slow threads not sampled because the hot-thread limit was reached.
    pub threads_over_limit: AtomicU64,
    /// Slow threads not sampled because perf_event_open refused (e.g. the thread had exited).
    pub threads_unsampleable: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The one-line summary printed at exit (its format is a contract: docs/contracts.md).
    pub fn summary_line(&self) -> String {
        format!(
            "loupe: summary events_read={} events_lost={} decode_errors={} spans_exported={} spans_dropped={} unnested_calls={} ambiguous_calls={} cpu_samples={}",
            Self::get(&self.events_read),
            Self::get(&self.events_lost_kernel),
            Self::get(&self.decode_errors),
            Self::get(&self.spans_exported),
            Self::get(&self.spans_dropped),
            Self::get(&self.unnested_calls),
            Self::get(&self.ambiguous_calls),
            Self::get(&self.cpu_samples),
        )
    }
}
