//! Counters every stage bumps and the summary shows: loss is a signal, never silent.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a value only ever grows (a total) or goes up and down (a level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One entry of [`Counters::all`]: the name it is shown under, what it counts (its field's doc
/// comment), its kind and its value.
pub struct Described<'a> {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: &'a AtomicU64,
}

/// Declares [`Counters`] from one list, and [`Counters::all`] from the same list: each entry is
/// a field's doc comment (also its help text), its name, its kind, and optionally the name it is
/// shown under when that is not the field's. A counter added to the list is on `/metrics`.
macro_rules! counters {
    (@name $field:ident $shown:literal) => { $shown };
    (@name $field:ident) => { stringify!($field) };
    ($( $(#[doc = $doc:literal])+ $field:ident: $kind:ident $(= $shown:literal)?, )+) => {
        /// Shared, lock-free counters (one `Arc<Counters>` for the whole pipeline).
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[doc = $doc])+ pub $field: AtomicU64, )+
            /// Each OTLP export request's duration and outcome.
            pub export: crate::metrics::ExportStats,
        }

        impl Counters {
            /// How many [`Self::all`] lists.
            pub const LISTED: usize = [$(stringify!($field)),+].len();

            /// Every counter and gauge of the list, in its order: what `/metrics` shows.
            pub fn all(&self) -> [Described<'_>; Self::LISTED] {
                [$(
                    Described {
                        name: counters!(@name $field $($shown)?),
                        help: concat!($($doc),+),
                        kind: Kind::$kind,
                        value: &self.$field,
                    },
                )+]
            }
        }
    };
}

counters! {
    /// Records read from the ring buffer.
    events_read: Counter,
    /// Bytes of the records read from the ring buffer.
    ring_bytes_read: Counter,
    /// Records the kernel could not deliver (ring full, in-flight map full), polled from LOSS.
    events_lost_kernel: Counter = "events_lost",
    /// Records that did not decode.
    decode_errors: Counter,
    /// Spans built by the stitcher.
    spans_built: Counter,
    /// Spans the exporter acknowledged (OTLP) or printed (terminal).
    spans_exported: Counter,
    /// Spans dropped: export queue full, or the endpoint refused or timed out.
    spans_dropped: Counter,
    /// Of the spans dropped, those still queued or in flight when the shutdown timeout ran out.
    spans_dropped_at_exit: Counter,
    /// OTLP requests sent again after a failure the collector may recover from.
    export_retries: Counter,
    /// OTLP metrics requests the collector took (`--otlp-metrics`).
    metric_exports: Counter,
    /// OTLP metrics requests that failed (the next one carries the same totals).
    metric_exports_failed: Counter,
    /// Spans of trees the tail sampler dropped (not a loss: they were counted in every
    /// statistic, then not exported by choice).
    spans_sampled_out: Counter,
    /// Batches of ring-buffer records waiting for the stitch stage (sampled 4 times a second).
    batch_queue_depth: Gauge,
    /// Spans waiting for the exporter (sampled 4 times a second).
    span_queue_depth: Gauge,
    /// Routes the terminal view's table forgot, least recently seen first, past its bound:
    /// their counts and percentiles start again if they come back.
    routes_evicted: Counter,
    /// Outbound calls (HTTP and database) exported without a parent, whatever the reason.
    unnested_calls: Counter,
    /// Outbound calls exported without a parent because several requests in flight may have
    /// made them and loupe could not tell which (`loupe.parent=ambiguous`).
    ambiguous_calls: Counter,
    /// Vector reads/writes whose bytes went on past the iovecs the kernel reads (counted by the
    /// kernel, polled).
    iovecs_cut: Counter,
    /// TLS plaintext whose connection was not known (kernel).
    tls_unplaced: Counter,
    /// Sockets the kernel could not track because its socket map was full (kernel, polled).
    sockets_full: Counter,
    /// Tracked sockets the kernel's LRU socket map let go of to make room for new ones: their
    /// later bytes are not seen (from the kernel's and userspace's insert and remove counts).
    sockets_evicted: Counter,
    /// Processes the kernel could not target because its target map was full (kernel, polled).
    targets_full: Counter,
    /// Execs of processes that were not targets left unchecked against `--exe`/`--name`
    /// because the upkeep's queue was full (a rescan of /proc follows).
    execs_unchecked: Counter,
    /// Connections not tracked because the connection table was full.
    connections_dropped: Counter,
    /// Bytes a parser could not read as its protocol (it resyncs at the next message).
    parse_errors: Counter,
    /// Requests a parser knows were there but could not see (past the captured bytes).
    requests_unseen: Counter,
    /// Requests and calls that started and will never finish: a lost event, an evicted
    /// request, a bound reached (they get no span).
    requests_abandoned: Counter,
    /// HTTP requests that got no response before their connection closed.
    unanswered_requests: Counter,
    /// Requests from a caller loupe observes whose call it did not see in time (a lost event,
    /// or the caller's write handled more than the wait after the request was answered):
    /// exported as a trace of their own instead of under the call.
    callers_unseen: Counter,
    /// libpq queries whose end went unseen (a lost return, a process gone mid-query).
    queries_abandoned: Counter,
    /// Calls exported without their request's verdict: the request never finished within the
    /// hold limit, or the calls waiting for their requests held too many bytes.
    trees_undiagnosed: Counter,
    /// Calls held until their request ends, for its verdict (sampled 4 times a second).
    calls_held: Gauge,
    /// Estimated bytes of the calls held for their request's verdict (sampled 4 times a
    /// second).
    calls_held_bytes: Gauge,
    /// Threads being CPU-sampled right now (running something past its threshold).
    hot_threads: Gauge,
    /// CPU samples taken (while a thread was hot).
    cpu_samples: Counter,
    /// CPU samples no span claimed (taken after its end, or pushed out of the bounded store).
    cpu_samples_unclaimed: Counter,
    /// Stacks recorded as hot threads left a CPU (at most one per sampling period a thread).
    off_cpu_stacks: Counter,
    /// Times a hot thread came back on a CPU after a wait off it.
    off_cpu_waits: Counter,
    /// Waits off the CPU timed without their stack (a second wait within one sampling period,
    /// or a wait begun before the heating that did not end in a syscall's return).
    waits_unstacked: Counter,
    /// CPU samples kept without their copy of the user stack because 64 MiB of copies were
    /// held: their stack is the frame-pointer walk only (cut where the code has none).
    stack_copies_dropped: Counter,
    /// Samples whose user stack could not be unwound to its root (code without unwind
    /// information, such as JIT code, or a copy too short): shown `[truncated]` at the root.
    stacks_truncated: Counter,
    /// Slow spans exported without their profile (symbolizer queue full).
    profiles_skipped: Counter,
    /// Slow threads not sampled because the hot-thread limit was reached.
    threads_over_limit: Counter,
    /// Requests and calls whose threshold was not watched (more than 65,536 of a type open at
    /// once): a thread running one late is heated at the next stitch tick, up to 250 ms late.
    deadlines_unwatched: Counter,
    /// Slow threads not sampled because perf_event_open refused (e.g. the thread had exited).
    threads_unsampleable: Counter,
    /// Observations of the services' request metrics not recorded because their metric already
    /// had as many label sets as it keeps (a new route, status or peer past the bound).
    metric_series_dropped: Counter,
    /// Spans not counted per route or per dependency in the statistics (/stats, the reports,
    /// the alerts) because the table already held its 256 routes or 1,000 dependencies (they
    /// still count in their type).
    stats_untracked: Counter,
    /// Alerts sent (stderr, and the webhook when there is one).
    alerts: Counter,
    /// Evaluations (every 5 s) whose alert was held back because the same alert went out less
    /// than a cooldown ago.
    alerts_suppressed: Counter,
    /// Alerts the webhook did not take: refused, an error, a timeout, or too many in flight.
    alert_webhook_failures: Counter,
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

    /// Every way an event, a request, a query, a span or a sample can be lost or mis-read, in
    /// pipeline order. The summary line and the terminal footer show each of them; the README
    /// says what each means.
    pub fn losses(&self) -> [LossCounter<'_>; 30] {
        let loss = |name, value| LossCounter { name, value };
        [
            loss("events_lost", &self.events_lost_kernel),
            loss("decode_errors", &self.decode_errors),
            loss("sockets_full", &self.sockets_full),
            loss("sockets_evicted", &self.sockets_evicted),
            loss("targets_full", &self.targets_full),
            loss("execs_unchecked", &self.execs_unchecked),
            loss("iovecs_cut", &self.iovecs_cut),
            loss("tls_unplaced", &self.tls_unplaced),
            loss("connections_dropped", &self.connections_dropped),
            loss("parse_errors", &self.parse_errors),
            loss("requests_unseen", &self.requests_unseen),
            loss("requests_abandoned", &self.requests_abandoned),
            loss("unanswered_requests", &self.unanswered_requests),
            loss("callers_unseen", &self.callers_unseen),
            loss("queries_abandoned", &self.queries_abandoned),
            loss("trees_undiagnosed", &self.trees_undiagnosed),
            loss("spans_dropped", &self.spans_dropped),
            loss("routes_evicted", &self.routes_evicted),
            loss("cpu_samples_unclaimed", &self.cpu_samples_unclaimed),
            loss("stack_copies_dropped", &self.stack_copies_dropped),
            loss("waits_unstacked", &self.waits_unstacked),
            loss("stacks_truncated", &self.stacks_truncated),
            loss("profiles_skipped", &self.profiles_skipped),
            loss("threads_over_limit", &self.threads_over_limit),
            loss("deadlines_unwatched", &self.deadlines_unwatched),
            loss("threads_unsampleable", &self.threads_unsampleable),
            loss("ambiguous_calls", &self.ambiguous_calls),
            loss("metric_series_dropped", &self.metric_series_dropped),
            loss("stats_untracked", &self.stats_untracked),
            loss("alert_webhook_failures", &self.alert_webhook_failures),
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
