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
    /// Of the spans dropped, those still queued or in flight when the shutdown timeout ran out.
    pub spans_dropped_at_exit: AtomicU64,
    /// OTLP requests sent (each attempt), those that failed, and their total time in us.
    pub export_requests: AtomicU64,
    pub export_failures: AtomicU64,
    pub export_us_total: AtomicU64,
    /// OTLP requests sent again after a failure the collector may recover from.
    pub export_retries: AtomicU64,
    /// Spans of trees the tail sampler dropped (not a loss: they were counted in every
    /// statistic, then not exported by choice).
    pub spans_sampled_out: AtomicU64,
    /// Routes the terminal view's table forgot, least recently seen first, past its bound:
    /// their counts and percentiles start again if they come back.
    pub routes_evicted: AtomicU64,
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
    /// Sockets the kernel could not track because its socket map was full (kernel, polled).
    pub sockets_full: AtomicU64,
    /// Processes the kernel could not target because its target map was full (kernel, polled).
    pub targets_full: AtomicU64,
    /// Execs of processes that were not targets left unchecked against `--exe`/`--name`
    /// because the upkeep's queue was full (a rescan of /proc follows).
    pub execs_unchecked: AtomicU64,
    /// Connections not tracked because the connection table was full.
    pub connections_dropped: AtomicU64,
    /// Bytes a parser could not read as its protocol (it resyncs at the next message).
    pub parse_errors: AtomicU64,
    /// Requests a parser knows were there but could not see (past the captured bytes).
    pub requests_unseen: AtomicU64,
    /// Requests and calls that started and will never finish: a lost event, an evicted
    /// request, a bound reached (they get no span).
    pub requests_abandoned: AtomicU64,
    /// HTTP requests that got no response before their connection closed.
    pub unanswered_requests: AtomicU64,
    /// libpq queries whose end went unseen (a lost return, a process gone mid-query).
    pub queries_abandoned: AtomicU64,
    /// Calls exported without their request's verdict: the request never finished within the
    /// hold limit, or the calls waiting for their requests held too many bytes.
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

/// One counter of something loupe lost or could not read: its name in the summary line, the
/// terminal footer and the README's table.
pub struct LossCounter<'a> {
    pub name: &'static str,
    pub value: &'a AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Replaces a count polled as a total (the kernel's loss slots).
    pub fn set(counter: &AtomicU64, total: u64) {
        counter.store(total, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One OTLP request attempt ended after `took`: taken (`ok`) or failed.
    pub fn export_latency(&self, took: std::time::Duration, ok: bool) {
        Self::add(&self.export_requests, 1);
        if !ok {
            Self::add(&self.export_failures, 1);
        }
        Self::add(
            &self.export_us_total,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// Every way an event, a request, a query, a span or a sample can be lost or mis-read, in
    /// pipeline order. The summary line and the terminal footer show each of them; the README
    /// says what each means.
    pub fn losses(&self) -> [LossCounter<'_>; 21] {
        let loss = |name, value| LossCounter { name, value };
        [
            loss("events_lost", &self.events_lost_kernel),
            loss("decode_errors", &self.decode_errors),
            loss("sockets_full", &self.sockets_full),
            loss("targets_full", &self.targets_full),
            loss("execs_unchecked", &self.execs_unchecked),
            loss("iovecs_cut", &self.iovecs_cut),
            loss("tls_unplaced", &self.tls_unplaced),
            loss("connections_dropped", &self.connections_dropped),
            loss("parse_errors", &self.parse_errors),
            loss("requests_unseen", &self.requests_unseen),
            loss("requests_abandoned", &self.requests_abandoned),
            loss("unanswered_requests", &self.unanswered_requests),
            loss("queries_abandoned", &self.queries_abandoned),
            loss("trees_undiagnosed", &self.trees_undiagnosed),
            loss("spans_dropped", &self.spans_dropped),
            loss("routes_evicted", &self.routes_evicted),
            loss("cpu_samples_unclaimed", &self.cpu_samples_unclaimed),
            loss("profiles_skipped", &self.profiles_skipped),
            loss("threads_over_limit", &self.threads_over_limit),
            loss("threads_unsampleable", &self.threads_unsampleable),
            loss("ambiguous_calls", &self.ambiguous_calls),
        ]
    }

    /// The one-line summary printed at exit (its format is a contract: docs/contracts.md): the
    /// headline counts, then every loss counter.
    pub fn summary_line(&self) -> String {
        use std::fmt::Write as _;
        let mut line = format!(
            "loupe: summary events_read={} events_lost={} decode_errors={} spans_exported={} spans_dropped={} unnested_calls={} ambiguous_calls={} cpu_samples={} spans_sampled_out={}",
            Self::get(&self.events_read),
            Self::get(&self.events_lost_kernel),
            Self::get(&self.decode_errors),
            Self::get(&self.spans_exported),
            Self::get(&self.spans_dropped),
            Self::get(&self.unnested_calls),
            Self::get(&self.ambiguous_calls),
            Self::get(&self.cpu_samples),
            Self::get(&self.spans_sampled_out),
        );
        const HEADLINE: [&str; 4] = [
            "events_lost",
            "decode_errors",
            "spans_dropped",
            "ambiguous_calls",
        ];
        for loss in self.losses() {
            if !HEADLINE.contains(&loss.name) {
                let _ = write!(line, " {}={}", loss.name, Self::get(loss.value));
            }
        }
        let _ = write!(
            line,
            " spans_dropped_at_exit={} export_retries={}",
            Self::get(&self.spans_dropped_at_exit),
            Self::get(&self.export_retries)
        );
        line
    }

    /// The losses that happened, `name n` joined by commas, or `none`: the terminal footer's.
    pub fn losses_line(&self) -> String {
        let seen: Vec<String> = self
            .losses()
            .iter()
            .map(|loss| (loss.name, Self::get(loss.value)))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_every_loss_once() {
        let counters = Counters::default();
        Counters::add(&counters.requests_unseen, 7);
        let line = counters.summary_line();
        for loss in counters.losses() {
            let key = format!(" {}=", loss.name);
            assert_eq!(line.matches(&key).count(), 1, "{key} in {line}");
        }
        assert!(line.contains(" requests_unseen=7"), "{line}");
        assert_eq!(line.matches(" spans_sampled_out=0").count(), 1, "{line}");
        assert_eq!(counters.losses_line(), "requests_unseen 7");
        assert_eq!(Counters::default().losses_line(), "none");
    }

    #[test]
    fn the_readme_says_what_every_loss_counter_means() {
        let readme = include_str!("../../README.md");
        for loss in Counters::default().losses() {
            let row = format!("| `{}` |", loss.name);
            assert!(readme.contains(&row), "README has no row {row}");
        }
    }
}
