//! The `/metrics` endpoint: a small HTTP/1 server. Each connection is read and written by a
//! task of its own (socket I/O only, which never blocks), at most [`MAX_CONNECTIONS`] at once and
//! each within [`DEADLINE`], then closed. The answers are made where [`MetricsServer::serve`]
//! runs, the metrics stage's own thread: a scrape reads the counters' atomics, copies the RED
//! metrics under their lock and reads `/proc/self`, so it never holds up the pipeline.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
};

use super::{exposition::CONTENT_TYPE, own::OwnUsage, red::RedRegistry};
use crate::{
    ledger::{Ledger, StatsDoc, slo::SloStatus},
    spans::clock::monotonic_now_ns,
    stats::Counters,
};

/// Longest one connection is served: reading the request and writing the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// A connection's request, and where its answer goes.
type Asked = (Request, oneshot::Sender<Vec<u8>>);

/// `--metrics-addr` could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// What a scrape shows.
#[derive(Clone)]
pub struct Source {
    pub counters: Arc<Counters>,
    pub red: Arc<Mutex<RedRegistry>>,
    /// The statistics: `/stats`, and the SLO gauges of `/metrics`.
    pub ledger: Option<Arc<Mutex<Ledger>>>,
}

impl Source {
    /// The exposition text as of now.
    pub fn render(&self) -> String {
        let red = self
            .red
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot();
        super::render(&self.counters, red, OwnUsage::read(), &self.slos())
    }

    /// The SLOs' statuses as of now (none without a ledger).
    pub fn slos(&self) -> Vec<SloStatus> {
        let Some(ledger) = &self.ledger else {
            return Vec::new();
        };
        let ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        ledger.slos(monotonic_now_ns())
    }

    fn snapshot(&self) -> Option<StatsDoc> {
        let ledger = self.ledger.as_ref()?;
        let ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        Some(ledger.snapshot(monotonic_now_ns()))
    }

    /// `/stats`' JSON as of now.
    pub fn stats(&self) -> String {
        match self.snapshot() {
            Some(stats) => serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n",
            None => "{}\n".to_owned(),
        }
    }
}

/// A bound, not yet serving, endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    source: Source,
}

impl MetricsServer {
    /// Listens on `addr` (before anything is attached, so a taken port fails the start).
    pub async fn bind(addr: SocketAddr, source: Source) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        Ok(Self { listener, source })
    }

    /// Where it listens (the port chosen when `addr` had port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers scrapes until `stop` fires (or its sender is dropped).
    pub async fn serve(self, mut stop: oneshot::Receiver<()>) {
        let (asked_tx, mut asked) = mpsc::channel::<Asked>(MAX_CONNECTIONS);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // Past the limit the connection is closed at once.
                        if let Ok(slot) = slots.clone().try_acquire_owned() {
                            tokio::spawn(connection(stream, asked_tx.clone(), slot));
                        }
                    }
                    Err(err) => {
                        // Out of fds, most likely: try again shortly rather than spin.
                        tracing::debug!("metrics: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some((request, reply)) = asked.recv() => {
                    let _ = reply.send(respond(
                        &request,
                        || self.source.render(),
                        || self.source.stats(),
                    ));
                }
                _ = &mut stop => return,
            }
        }
    }
}

/// Reads one request, has it answered, writes the answer and closes, all within [`DEADLINE`].
async fn connection(stream: TcpStream, asked: mpsc::Sender<Asked>, _slot: OwnedSemaphorePermit) {
    if tokio::time::timeout(DEADLINE, exchange(stream, asked))
        .await
        .is_err()
    {
        tracing::debug!("metrics: a client took longer than {DEADLINE:?}");
    }
}

async fn exchange(mut stream: TcpStream, asked: mpsc::Sender<Asked>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let request = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        match read_request(&head) {
            Request::Partial if head.len() < MAX_HEAD => continue,
            Request::Partial => break Request::Bad,
            request => break request,
        }
    };
    let (reply_tx, reply) = oneshot::channel();
    if asked.send((request, reply_tx)).await.is_err() {
        return;
    }
    let Ok(reply) = reply.await else {
        return;
    };
    if stream.write_all(&reply).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// A request head as far as it was read.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Partial,
    Bad,
    /// A whole head: its method, and its path without the query.
    Head {
        method: String,
        path: String,
    },
}

pub fn read_request(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (request.method, request.path) else {
                return Request::Bad;
            };
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            Request::Head {
                method: method.to_owned(),
                path: path.to_owned(),
            }
        }
        Ok(httparse::Status::Partial) => Request::Partial,
        Err(_) => Request::Bad,
    }
}

/// The whole answer to `request`: the metrics for `GET /metrics`, the statistics' JSON for
/// `GET /stats` (`HEAD`: their headers), 404 for anything else, 400 for what is not HTTP.
/// `metrics` and `stats` render them.
pub fn respond(
    request: &Request,
    metrics: impl FnOnce() -> String,
    stats: impl FnOnce() -> String,
) -> Vec<u8> {
    const JSON: &str = "application/json";
    let (status, content_type, text, head_only) = match request {
        Request::Head { method, path }
            if (method == "GET" || method == "HEAD")
                && (path == "/metrics" || path == "/stats") =>
        {
            let head_only = method == "HEAD";
            if path == "/metrics" {
                ("200 OK", CONTENT_TYPE, metrics(), head_only)
            } else {
                ("200 OK", JSON, stats(), head_only)
            }
        }
        Request::Head { .. } => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at GET /metrics, the statistics at GET /stats\n".to_owned(),
            false,
        ),
        Request::Bad | Request::Partial => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
            false,
        ),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    )
    .into_bytes();
    if !head_only {
        reply.extend_from_slice(text.as_bytes());
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reply: Vec<u8>) -> String {
        String::from_utf8(reply).unwrap()
    }

    #[test]
    fn get_metrics_answers_the_exposition_and_anything_else_404() {
        let scrape = read_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        let reply = text(respond(&scrape, || "m 1\n".to_owned(), || unreachable!()));
        assert_eq!(
            reply,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\nConnection: close\r\n\r\nm 1\n"
        );
        let head = text(respond(
            &read_request(b"HEAD /metrics HTTP/1.0\r\n\r\n"),
            || "m 1\n".to_owned(),
            || unreachable!(),
        ));
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n")
                && head.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        let stats = text(respond(
            &read_request(b"GET /stats HTTP/1.1\r\n\r\n"),
            || unreachable!(),
            || "{}\n".to_owned(),
        ));
        assert!(
            stats.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                && stats.ends_with("\r\n\r\n{}\n"),
            "{stats}"
        );
        for other in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET /metrics/x HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ] {
            let reply = text(respond(
                &read_request(other),
                || unreachable!("not rendered"),
                || unreachable!("not rendered"),
            ));
            assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
        }
    }

    #[test]
    fn a_partial_head_waits_and_garbage_is_a_bad_request() {
        assert_eq!(read_request(b"GET /metr"), Request::Partial);
        assert_eq!(
            read_request(b"\x16\x03\x01\x00garbage\r\n\r\n"),
            Request::Bad
        );
        let reply = text(respond(
            &Request::Bad,
            || unreachable!("not rendered"),
            || unreachable!("not rendered"),
        ));
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_over_loopback_gets_the_counters_and_a_stop_ends_the_server() {
        let source = Source {
            counters: Arc::default(),
            red: Arc::default(),
            ledger: None,
        };
        Counters::add(&source.counters.events_read, 5);
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), source)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let serving = tokio::spawn(server.serve(stopped));
        // A client that connects and says nothing keeps no one else waiting.
        let _idle = TcpStream::connect(addr).await.unwrap();
        let scrape = async {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            reply
        };
        let reply = tokio::time::timeout(DEADLINE / 2, scrape)
            .await
            .expect("answered while the idle client still holds its connection");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\nloupe_events_read_total 5\n"), "{reply}");
        assert!(
            reply.contains("\nprocess_resident_memory_bytes "),
            "{reply}"
        );
        let _ = stop.send(());
        serving.await.unwrap();
        assert!(
            MetricsServer::bind(
                addr,
                Source {
                    counters: Arc::default(),
                    red: Arc::default(),
                    ledger: None,
                }
            )
            .await
            .is_ok(),
            "the port is free again once it stopped"
        );
    }
}
