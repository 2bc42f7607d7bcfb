//! The OTLP exporter's throughput: recorded-shape spans pushed through the real export stage
//! (batching, encoding, transport, all on its one thread) to a real collector.
//!
//!     LOUPE_BENCH_OTLP_GRPC=http://127.0.0.1:4317 LOUPE_BENCH_OTLP_HTTP=http://127.0.0.1:4318 \
//!         cargo bench -p loupe --bench export
//!
//! `cargo xtask bench` starts a Jaeger and runs it. Printed per protocol: spans/s from the first
//! span queued to the last acknowledged, loupe's CPU seconds (the whole process: the producer
//! only moves pre-built spans into the queue), and drops (must be 0).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use loupe::{
    config::OtlpProtocol,
    export::{self, Sink, otlp::OtlpSink, settings::ExportSettings},
    spans::{AttrValue, OpType, SpanKind, SpanRecord, model::Text},
    stage::Stage,
    stats::Counters,
};
use tokio::sync::{mpsc, watch};

/// Spans per run.
const SPANS: u64 = 400_000;

/// An nginx request's span as loupe builds it (the attributes of a real one).
fn server_span(i: u64) -> SpanRecord {
    SpanRecord {
        trace_id: (u128::from(i) << 64) | 0x9e37_79b9_7f4a_7c15,
        span_id: i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        parent_span_id: None,
        kind: SpanKind::Server,
        op: OpType::HttpServer,
        name: Text::Static("GET /items/{id}"),
        start_ns: 1_000_000_000 + i * 10_000,
        end_ns: 1_000_000_000 + i * 10_000 + 7_500,
        attributes: vec![
            ("http.request.method", AttrValue::from("GET")),
            (
                "url.path",
                AttrValue::Str(Text::Owned(format!("/items/{}", i % 10_000))),
            ),
            ("url.scheme", AttrValue::from("http")),
            ("http.route", AttrValue::from("/items/{id}")),
            ("http.response.status_code", AttrValue::Int(200)),
            ("network.protocol.version", AttrValue::from("1.1")),
            ("server.address", AttrValue::from("127.0.0.1")),
            ("server.port", AttrValue::Int(8080)),
            ("client.address", AttrValue::from("127.0.0.1")),
            ("client.port", AttrValue::Int(40_000 + (i % 20_000) as i64)),
            ("user_agent.original", AttrValue::from("wrk/4.2.0")),
            ("http.response.body.size", AttrValue::Int(3)),
            ("loupe.source", AttrValue::from("socket")),
        ],
        error: None,
        pid: 4242 + (i % 2) as u32,
        tid: 4243,
        events: Vec::new(),
        call_key: None,
        cache_key: None,
        sampling_threshold: None,
        sampled_out: false,
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

async fn one_run(endpoint: &str, protocol: OtlpProtocol, settings: ExportSettings) {
    let counters = Arc::new(Counters::default());
    let shape = format!(
        "batches of {}, {} in flight",
        settings.max_batch, settings.concurrency
    );
    let queue = settings.max_queue;
    let sink = OtlpSink::new(
        endpoint,
        protocol,
        Some("export-bench".into()),
        settings,
        counters.clone(),
    )
    .expect("exporter");
    let spans: Vec<SpanRecord> = (0..SPANS).map(server_span).collect();
    let (tx, rx) = mpsc::channel(queue);
    let (_deadline_tx, deadline_rx) = watch::channel(None);
    let cpu = cpu_seconds();
    let started = Instant::now();
    let stage = Stage::spawn_isolated(
        "loupe-export",
        export::run(
            Sink::Otlp(Box::new(sink)),
            rx,
            counters.clone(),
            Duration::from_secs(10),
            deadline_rx,
        ),
    )
    .expect("export stage");
    // The pipeline never waits on the exporter; here the producer does, so that the queue
    // never overflows and what is measured is the exporter's pace.
    for span in spans {
        if tx.send(span).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = stage.join().await;
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let exported = Counters::get(&counters.spans_exported);
    let dropped = Counters::get(&counters.spans_dropped);
    println!(
        "export {:?} to {endpoint} ({shape}): {SPANS} spans in {took:.2} s = {:.0} spans/s; loupe CPU {cpu:.2} s ({:.2} us/span); exported {exported}, dropped {dropped}",
        protocol,
        SPANS as f64 / took,
        cpu * 1e6 / SPANS as f64,
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let grpc = std::env::var("LOUPE_BENCH_OTLP_GRPC").ok();
    let http = std::env::var("LOUPE_BENCH_OTLP_HTTP").ok();
    if grpc.is_none() && http.is_none() {
        println!(
            "export bench: set LOUPE_BENCH_OTLP_GRPC and/or LOUPE_BENCH_OTLP_HTTP to a collector (cargo xtask bench does)"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The defaults, and the high-traffic preset's batches and requests in flight.
    let shapes = [
        ExportSettings::default(),
        ExportSettings {
            max_queue: 65_536,
            max_batch: 4_096,
            concurrency: 4,
            ..ExportSettings::default()
        },
    ];
    runtime.block_on(async {
        for settings in shapes {
            if let Some(endpoint) = &grpc {
                one_run(endpoint, OtlpProtocol::Grpc, settings.clone()).await;
            }
            if let Some(endpoint) = &http {
                let url = loupe::export::otlp::transport::traces_url(endpoint);
                one_run(&url, OtlpProtocol::Http, settings.clone()).await;
            }
        }
    });
}
