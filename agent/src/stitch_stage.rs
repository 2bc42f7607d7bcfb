//! The stitch stage: decode the ring buffer's batches, stitch events into spans, write the
//! verdicts (slowness, resources, diagnosis, sampling, the services' metrics), and hand each span
//! to the exporter or the symbolizer without ever waiting on them.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use crate::{
    config::Thresholds,
    detect::{self, Diagnoser, ResourceSampler},
    events::{self, Batch},
    membership, metrics,
    profile::{
        HotThreads, ProfileCommand, ProfileJob, SampleStore,
        samples::{Heated, Wait},
    },
    spans::{self, SpanRecord, Stitcher, clock::monotonic_now_ns, parent::Unnested},
    stats::Counters,
};

const STITCH_TICK: Duration = Duration::from_millis(250);
/// How long after an operation's deadline the stage wakes to heat its thread: past it, so the
/// operation is strictly over its threshold (the timer's own resolution is a millisecond).
const DEADLINE_SLACK: Duration = Duration::from_millis(1);

/// What the stitch stage writes on finished spans before they leave.
pub(crate) struct Verdicts {
    pub(crate) counters: Arc<Counters>,
    pub(crate) thresholds: Thresholds,
    pub(crate) diagnoser: Diagnoser,
    pub(crate) resources: ResourceSampler,
    pub(crate) samples: SampleStore,
    pub(crate) hot: HotThreads,
    pub(crate) commands: mpsc::Sender<ProfileCommand>,
    pub(crate) jobs: std::sync::mpsc::SyncSender<ProfileJob>,
    /// Samples and waits claimed by slow spans as they finished, by span id, until the span
    /// leaves the diagnosis stage (a slow query waits for its request; its samples must not age
    /// out).
    pub(crate) claimed: rustc_hash::FxHashMap<u64, (Vec<events::CpuSample>, Vec<Wait>)>,
    /// Sampled-out spans still go to the terminal view, which counts them in its route table
    /// without printing them; every other sink never sees them.
    pub(crate) tally_sampled_out: bool,
    /// The services' RED metrics, with `--metrics-addr`: every span counts, sampled out or not.
    pub(crate) red: Option<metrics::RedRecorder>,
}

impl Verdicts {
    /// Flags slowness, snapshots resources, and hands the span to the diagnoser, which puts in
    /// `ready` whatever can be exported now. `now` is the monotonic clock, read once per batch.
    fn take(&mut self, mut span: SpanRecord, now: u64, ready: &mut Vec<SpanRecord>) {
        if let Some(red) = &mut self.red {
            red.record(&span);
        }
        if span.kind == spans::SpanKind::Client && span.parent_span_id.is_none() {
            Counters::add(&self.counters.unnested_calls, 1);
            if span.attr_str("loupe.parent") == Some(Unnested::Ambiguous.as_str()) {
                Counters::add(&self.counters.ambiguous_calls, 1);
            }
        }
        if detect::mark_slow(&mut span, &self.thresholds) {
            self.resources.annotate(&mut span, now);
            let samples = self
                .samples
                .claim(span.pid, span.tid, span.start_ns, span.end_ns);
            let waits = self
                .samples
                .claim_waits(span.pid, span.tid, span.start_ns, span.end_ns);
            if !samples.is_empty() || !waits.is_empty() {
                self.claimed.insert(span.span_id, (samples, waits));
            }
        }
        self.diagnoser.push(span, now, ready);
    }

    /// Heats the threads running something slow, cools the others, forgets old samples.
    fn heat(&mut self, stitcher: &Stitcher, now_ns: u64, counters: &Counters) {
        let mut orders = Vec::new();
        self.hot.update(
            &stitcher.slow_threads(now_ns, &self.thresholds),
            &mut orders,
        );
        for order in orders {
            // 1024 orders for at most 64 hot threads: the queue does not fill.
            let _ = self.commands.try_send(order);
        }
        self.samples.prune(now_ns);
        counters
            .threads_over_limit
            .store(self.hot.over_limit, std::sync::atomic::Ordering::Relaxed);
        counters
            .cpu_samples_unclaimed
            .store(self.samples.unclaimed, std::sync::atomic::Ordering::Relaxed);
        Counters::set(
            &counters.stack_copies_dropped,
            self.samples.stacks_dropped(),
        );
        Counters::set(&counters.waits_unstacked, self.samples.waits_unstacked);
    }

    /// Routes a ready span: through the symbolizer when its thread was sampled while it ran
    /// (None: the symbolizer sends it on), else back to the caller for the exporter. A span
    /// its tree's sampling dropped ends here (None), counted, after every statistic saw it.
    fn route(&mut self, span: SpanRecord, counters: &Counters) -> Option<SpanRecord> {
        if span.sampled_out {
            Counters::add(&counters.spans_sampled_out, 1);
            self.claimed.remove(&span.span_id);
            return self.tally_sampled_out.then_some(span);
        }
        let Some((samples, waits)) = self.claimed.remove(&span.span_id) else {
            return Some(span);
        };
        match self.jobs.try_send(ProfileJob {
            span,
            samples,
            waits,
        }) {
            Ok(()) => None,
            Err(
                std::sync::mpsc::TrySendError::Full(job)
                | std::sync::mpsc::TrySendError::Disconnected(job),
            ) => {
                Counters::add(&counters.profiles_skipped, 1);
                Some(job.span)
            }
        }
    }
}

/// The stitch stage's line to the fd re-sync thread: the kernel's news about fds goes there, the
/// connections it forgets come back as closes.
pub(crate) struct FdChannels {
    pub(crate) news: std::sync::mpsc::Sender<events::FdNews>,
    pub(crate) closes: mpsc::UnboundedReceiver<Vec<events::Event>>,
    /// What the upkeep saw of each thread it heated (asleep where, for off-CPU profiles).
    pub(crate) heated: mpsc::UnboundedReceiver<Heated>,
}

/// The stitching stage: decode, stitch, write verdicts, hand spans to the exporter without ever
/// waiting on it.
pub(crate) async fn stitch(
    mut rx: mpsc::Receiver<Batch>,
    mut fds: FdChannels,
    mut targets: membership::TargetLines,
    mut stitcher: Stitcher,
    tx: mpsc::Sender<SpanRecord>,
    mut verdicts: Verdicts,
    counters: Arc<Counters>,
) {
    let mut tick = tokio::time::interval(STITCH_TICK);
    // Woken when the earliest open operation passes its threshold (`armed`, the events' clock).
    stitcher.watch_deadlines(&verdicts.thresholds);
    let deadline = tokio::time::sleep(STITCH_TICK);
    tokio::pin!(deadline);
    let mut armed: Option<u64> = None;
    let mut sample = tokio::time::interval(detect::resources::SAMPLE_INTERVAL);
    let mut out = Vec::new();
    let mut ready = Vec::new();
    loop {
        // Before the next batch: a target that left is seen leaving before any later event of a
        // new process on its pid.
        while let Ok(news) = targets.news.try_recv() {
            targets.on_news(news, &mut stitcher, &mut verdicts.resources, &mut out);
        }
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    for record in &batch {
                        match events::decode_fd_news(record) {
                            // The re-sync thread lives as long as this sender.
                            Some(Ok(news)) => {
                                let _ = fds.news.send(news);
                                continue;
                            }
                            Some(Err(err)) => {
                                Counters::add(&counters.decode_errors, 1);
                                tracing::debug!("dropped a record: {err}");
                                continue;
                            }
                            None => {}
                        }
                        match events::decode(record) {
                            Ok(events::Event::CpuSample(sample)) => {
                                if matches!(sample.source, events::SampleSource::OffCpu { .. }) {
                                    Counters::add(&counters.off_cpu_stacks, 1);
                                } else {
                                    Counters::add(&counters.cpu_samples, 1);
                                }
                                verdicts.samples.push(sample);
                            }
                            Ok(events::Event::OffCpu(record)) => {
                                Counters::add(&counters.off_cpu_waits, 1);
                                verdicts.samples.push_off_cpu(record);
                            }
                            Ok(event) => {
                                targets.on_event(&event, &mut verdicts.resources, &counters);
                                stitcher.handle(event, &mut out);
                            }
                            Err(err) => {
                                Counters::add(&counters.decode_errors, 1);
                                tracing::debug!("dropped a record: {err}");
                            }
                        }
                    }
                }
                None => break,
            },
            Some(heated) = fds.heated.recv() => verdicts.samples.push_heated(heated),
            Some(closed) = fds.closes.recv() => {
                for event in closed {
                    stitcher.handle(event, &mut out);
                }
            }
            Some(news) = targets.news.recv() => {
                targets.on_news(news, &mut stitcher, &mut verdicts.resources, &mut out);
            }
            _ = tick.tick() => {
                let now = monotonic_now_ns();
                targets.forget_left(now, &mut stitcher, &mut verdicts.resources, &mut out);
                stitcher.tick(now, &mut out);
                verdicts.diagnoser.tick(now, &mut ready);
                verdicts.heat(&stitcher, now, &counters);
                // The levels /metrics shows.
                Counters::set(&counters.batch_queue_depth, rx.len() as u64);
                Counters::set(&counters.span_queue_depth, (tx.max_capacity() - tx.capacity()) as u64);
                Counters::set(&counters.calls_held, verdicts.diagnoser.held() as u64);
                Counters::set(&counters.calls_held_bytes, verdicts.diagnoser.held_bytes() as u64);
            }
            _ = sample.tick() => verdicts.resources.sample(monotonic_now_ns()),
            () = &mut deadline, if armed.is_some() => {
                armed = None;
                let now = monotonic_now_ns();
                if stitcher.deadlines_due(now) {
                    verdicts.heat(&stitcher, now, &counters);
                }
            }
        }
        let next = stitcher.next_deadline();
        if next != armed {
            if let Some(due) = next {
                let wait = Duration::from_nanos(due.saturating_sub(monotonic_now_ns()));
                deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + wait + DEADLINE_SLACK);
            }
            armed = next;
        }
        targets.ask_for_libpq(&mut stitcher);
        if !out.is_empty() {
            let now = monotonic_now_ns();
            for span in out.drain(..) {
                verdicts.take(span, now, &mut ready);
            }
        }
        for span in ready.drain(..) {
            Counters::add(&counters.spans_built, 1);
            if let Some(span) = verdicts.route(span, &counters)
                && tx.try_send(span).is_err()
            {
                Counters::add(&counters.spans_dropped, 1);
            }
        }
    }
    stitcher.finish(&mut out);
    let now = monotonic_now_ns();
    for span in out.drain(..) {
        verdicts.take(span, now, &mut ready);
    }
    verdicts.diagnoser.finish(&mut ready);
    for span in ready.drain(..) {
        Counters::add(&counters.spans_built, 1);
        // At shutdown the exporter is draining: waiting here loses nothing and stalls no one.
        if let Some(span) = verdicts.route(span, &counters)
            && tx.send(span).await.is_err()
        {
            Counters::add(&counters.spans_dropped, 1);
        }
    }
}
