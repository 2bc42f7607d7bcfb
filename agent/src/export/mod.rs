//! Where finished spans go: an OTLP endpoint or the terminal. One task owns the sink; it reads
//! spans from a bounded channel the stitcher never waits on (a full channel is a counted drop),
//! so a slow or absent collector can never hold up the ring buffer.

pub mod otlp;
pub mod resource;
pub mod terminal;

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use crate::{spans::SpanRecord, stats::Counters};

/// What can go wrong setting an exporter up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("failed to build the OTLP exporter for {endpoint}")]
    Build {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The configured destination.
pub enum Sink {
    Otlp(Box<otlp::OtlpSink>),
    Terminal(terminal::TerminalView),
    /// `loupe report` without an endpoint: spans only feed the problem board.
    Discard,
}

/// Most spans sent in one OTLP request.
const MAX_BATCH: usize = 512;
/// Longest a span waits in a partial batch.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until the channel closes, then flushes and shuts the sink down.
pub async fn run(
    sink: Sink,
    mut rx: mpsc::Receiver<SpanRecord>,
    counters: Arc<Counters>,
    table_interval: Duration,
) {
    match sink {
        Sink::Otlp(mut sink) => {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            loop {
                tokio::select! {
                    span = rx.recv() => match span {
                        Some(span) => {
                            batch.push(span);
                            if batch.len() >= MAX_BATCH {
                                sink.export(std::mem::take(&mut batch)).await;
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        if !batch.is_empty() {
                            sink.export(std::mem::take(&mut batch)).await;
                        }
                    }
                }
            }
            if !batch.is_empty() {
                sink.export(batch).await;
            }
            sink.shutdown();
        }
        Sink::Terminal(mut view) => {
            let mut tick = tokio::time::interval(table_interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    span = rx.recv() => match span {
                        Some(span) => {
                            view.on_span(&span);
                            // One flush per burst, not per line: at 100k requests/s a write
                            // per line would cost more than the rest of loupe.
                            while let Ok(span) = rx.try_recv() {
                                view.on_span(&span);
                            }
                            view.flush();
                        }
                        None => break,
                    },
                    _ = tick.tick() => view.print_table(&counters),
                }
            }
            view.print_table(&counters);
        }
        Sink::Discard => while rx.recv().await.is_some() {},
    }
}
