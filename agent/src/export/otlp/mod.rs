//! OTLP export: spans batched, encoded once straight to protobuf, and sent over gRPC or HTTP
//! with several requests in flight. A request the collector may take later (unavailable, timed
//! out, overloaded) is retried with backoff while the queue in front holds what arrives; when
//! the queue is full, the pipeline counts its drops and never waits. At exit, whatever has not
//! gone by the shutdown deadline is counted as dropped, so a collector that refuses, blackholes
//! or crawls never stretches the exit.

pub mod encode;
pub mod transport;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

use self::{
    encode::Encoder,
    transport::{SendError, Signal, Transport},
};
use super::{ExportError, resource::Resources, settings::ExportSettings};
use crate::{config::OtlpProtocol, spans::SpanRecord, stats::Counters};

/// At most one export warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// First wait before a retry; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries: export resumes within this of the collector's return.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest a batch is retried before it is dropped (it waits for the collector's return,
/// while newer spans wait in the queue).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The OTLP sink: settings, transport, encoder. Built before attach (so a bad endpoint or
/// certificate fails first); [`OtlpSink::run`] drives it on the export stage's own runtime.
pub struct OtlpSink {
    transport: Transport,
    encoder: Encoder,
    settings: ExportSettings,
    endpoint: String,
    counters: Arc<Counters>,
}

/// Throttled export warnings, shared by the requests in flight.
#[derive(Clone)]
struct Warner {
    endpoint: Arc<str>,
    last: Arc<Mutex<Option<std::time::Instant>>>,
    counters: Arc<Counters>,
}

impl Warner {
    fn warn(&self, what: &str) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        tracing::warn!(
            "OTLP export to {} failed: {what} (spans dropped so far: {})",
            self.endpoint,
            Counters::get(&self.counters.spans_dropped)
        );
    }
}

/// How one request ended.
struct Delivered {
    spans: u64,
    exported: u64,
    dropped: u64,
}

impl OtlpSink {
    pub fn new(
        endpoint: &str,
        protocol: OtlpProtocol,
        service_name: Option<String>,
        settings: ExportSettings,
        counters: Arc<Counters>,
    ) -> Result<Self, ExportError> {
        let transport = Transport::new(endpoint, protocol, &settings, Signal::Traces)?;
        Ok(Self {
            transport,
            encoder: Encoder::new(Resources::new(service_name)),
            settings,
            endpoint: endpoint.to_owned(),
            counters,
        })
    }

    /// Exports until `rx` closes and everything in flight has ended, or until the deadline
    /// `stop` announces has passed: then what is left is counted as dropped.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<SpanRecord>,
        mut stop: watch::Receiver<Option<Instant>>,
    ) {
        self.transport.connect();
        let warner = Warner {
            endpoint: self.endpoint.as_str().into(),
            last: Arc::default(),
            counters: self.counters.clone(),
        };
        let max_batch = self.settings.max_batch;
        let concurrency = self.settings.concurrency.max(1);
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(max_batch);
        let mut inflight: JoinSet<Delivered> = JoinSet::new();
        // Spans in requests not yet ended.
        let mut pending: u64 = 0;
        let mut tick = tokio::time::interval(self.settings.schedule_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<Instant> = None;
        let mut open = true;
        loop {
            // A full batch goes as soon as a request slot is free.
            if batch.len() >= max_batch && inflight.len() < concurrency {
                pending += self.start(&mut inflight, &mut batch, &warner);
            }
            if !open && batch.is_empty() && inflight.is_empty() {
                break;
            }
            let at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(done) = done {
                        pending -= done.spans;
                        self.account(&done);
                    }
                }
                span = rx.recv(), if open && batch.len() < max_batch => match span {
                    Some(span) => {
                        batch.push(span);
                        // Take what is already queued without a trip through select.
                        while batch.len() < max_batch {
                            match rx.try_recv() {
                                Ok(span) => batch.push(span),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        open = false;
                        // The pipeline has ended: flush what is left now.
                        if !batch.is_empty() && inflight.len() < concurrency {
                            pending += self.start(&mut inflight, &mut batch, &warner);
                        }
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() && inflight.len() < concurrency {
                        pending += self.start(&mut inflight, &mut batch, &warner);
                    }
                }
                changed = stop.changed(), if deadline.is_none() => {
                    if changed.is_err() {
                        // The run ended without a deadline: keep today's flush-then-exit.
                        deadline = Some(Instant::now() + self.settings.shutdown_timeout);
                    } else {
                        deadline = *stop.borrow();
                    }
                }
                _ = tokio::time::sleep_until(at), if deadline.is_some() => {
                    inflight.abort_all();
                    let mut left = pending + batch.len() as u64;
                    rx.close();
                    while rx.try_recv().is_ok() {
                        left += 1;
                    }
                    if left > 0 {
                        Counters::add(&self.counters.spans_dropped, left);
                        Counters::add(&self.counters.spans_dropped_at_exit, left);
                        tracing::warn!(
                            "OTLP export to {} did not finish within the shutdown timeout ({}): {left} spans dropped",
                            self.endpoint,
                            humantime::format_duration(self.settings.shutdown_timeout)
                        );
                    }
                    break;
                }
            }
        }
    }

    /// Encodes `batch` and starts its request; returns its span count.
    fn start(
        &mut self,
        inflight: &mut JoinSet<Delivered>,
        batch: &mut Vec<SpanRecord>,
        warner: &Warner,
    ) -> u64 {
        let spans = std::mem::replace(batch, Vec::with_capacity(self.settings.max_batch));
        let count = spans.len() as u64;
        let body = Bytes::from(self.encoder.encode(spans));
        let transport = self.transport.clone();
        let warner = warner.clone();
        let counters = self.counters.clone();
        inflight.spawn(deliver(transport, body, count, warner, counters));
        count
    }

    fn account(&self, done: &Delivered) {
        Counters::add(&self.counters.spans_exported, done.exported);
        Counters::add(&self.counters.spans_dropped, done.dropped);
    }
}

/// Sends one request until it is taken, refused for good, or has been retried for
/// [`RETRY_FOR`].
async fn deliver(
    transport: Transport,
    body: Bytes,
    spans: u64,
    warner: Warner,
    counters: Arc<Counters>,
) -> Delivered {
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let sent = Instant::now();
        let outcome = transport.send(body.clone()).await;
        counters.export.record(sent.elapsed(), outcome.is_ok());
        match outcome {
            Ok(accepted) => {
                let rejected = accepted.rejected.min(spans);
                if rejected > 0 {
                    warner.warn(&format!(
                        "the collector rejected {rejected} of {spans} spans"
                    ));
                }
                return Delivered {
                    spans,
                    exported: spans - rejected,
                    dropped: rejected,
                };
            }
            Err(SendError { retryable, message }) => {
                if !retryable || started.elapsed() + backoff > RETRY_FOR {
                    warner.warn(&format!("{message}; {spans} spans dropped"));
                    return Delivered {
                        spans,
                        exported: 0,
                        dropped: spans,
                    };
                }
                warner.warn(&format!("{message}; retrying"));
                Counters::add(&counters.export_retries, 1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Tries to open a TCP connection to the collector within `within`: the warning at start when
/// it cannot be reached. None when it answered.
pub async fn unreachable(endpoint: &str, within: Duration) -> Option<String> {
    let address = transport::host_port(endpoint)?;
    match tokio::time::timeout(within, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!(
            "no answer within {}",
            humantime::format_duration(within)
        )),
    }
}
