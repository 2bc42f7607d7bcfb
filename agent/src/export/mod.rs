//! Where finished spans go: an OTLP endpoint or the terminal. One task owns the sink; it reads
//! spans from a bounded channel the stitcher never waits on (a full channel is a counted drop),
//! so a slow or absent collector can never hold up the ring buffer.

pub mod otlp;
pub mod resource;
pub mod settings;
pub mod terminal;

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use crate::{spans::SpanRecord, stats::Counters};

/// What can go wrong setting an exporter up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Transport(#[from] otlp::transport::TransportError),
}

/// The configured destination.
pub enum Sink {
    Otlp(Box<otlp::OtlpSink>),
    Terminal(Box<terminal::TerminalView>),
    /// `loupe report` without an endpoint: spans only feed the problem board.
    Discard,
}

/// Runs until the channel closes, then flushes and shuts the sink down. `stop` carries the
/// shutdown deadline once the run is stopping: the OTLP sink gives up on what is left then.
pub async fn run(
    sink: Sink,
    mut rx: mpsc::Receiver<SpanRecord>,
    counters: Arc<Counters>,
    table_interval: Duration,
    stop: watch::Receiver<Option<Instant>>,
) {
    match sink {
        Sink::Otlp(sink) => sink.run(rx, stop).await,
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
