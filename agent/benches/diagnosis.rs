//! The diagnosis stage's cost per request, in process: `cargo bench -p loupe --bench diagnosis`.
//!
//! Three shapes go through `Diagnoser::push` (hold the calls, write the verdict, release the
//! tree): a request without calls (nginx's case: the pass-through), a request with 12 calls
//! (8 N+1 queries, 2 identical HTTP calls, 2 others: the demo's /api/report), and one with 100
//! queries; each also with the statistics (`loupe::ledger`) counting every span, as loupe runs.
//! Printed: time per request and per span, and the share of a 1 ms request it would be.

use std::{
    hint::black_box,
    sync::{Arc, Mutex},
    time::Instant,
};

use loupe::{
    config::DiagnosisConfig,
    detect::{Diagnoser, ProblemBoard},
    spans::{OpType, SpanKind, SpanRecord, model::call_key},
    stats::Counters,
};

const MS: u64 = 1_000_000;

fn span(
    kind: SpanKind,
    op: OpType,
    id: u64,
    parent: Option<u64>,
    start: u64,
    end: u64,
) -> SpanRecord {
    SpanRecord {
        trace_id: 1,
        span_id: id,
        parent_span_id: parent,
        kind,
        op,
        name: "GET /orders".into(),
        start_ns: start,
        end_ns: end,
        attributes: Vec::new(),
        error: None,
        pid: 1,
        tid: 1,
        events: Vec::new(),
        call_key: None,
        cache_key: None,
        sampling_threshold: None,
        sampled_out: false,
    }
}

fn query(parent: u64, id: u64, n: u64, start: u64) -> SpanRecord {
    let mut q = span(
        SpanKind::Client,
        OpType::DbClient,
        id,
        Some(parent),
        start,
        start + MS / 2,
    );
    let text = format!("SELECT id, total FROM orders WHERE id = {n}");
    q.call_key = Some(call_key(&[&text]));
    q.set(
        "db.query.text",
        "SELECT id, total FROM orders WHERE id = $1",
    );
    q.set("loupe.db.fingerprint", "5f2a9c0d1e2b3a4c");
    q.set("db.operation.name", "SELECT");
    q.set("server.address", "127.0.0.1");
    q.set("server.port", 5432i64);
    q.set("db.response.returned_rows", 1i64);
    q
}

fn call(parent: u64, id: u64, path: &str, port: i64, start: u64) -> SpanRecord {
    let mut c = span(
        SpanKind::Client,
        OpType::HttpClient,
        id,
        Some(parent),
        start,
        start + MS,
    );
    c.call_key = Some(call_key(&["GET", "127.0.0.1", &port.to_string(), path]));
    c.set("http.request.method", "GET");
    c.set("http.route", path.to_owned());
    c.set("server.address", "127.0.0.1");
    c.set("server.port", port);
    c.set("http.response.body.size", 120i64);
    c
}

/// One request of `queries` N+1 queries plus `calls` HTTP calls (the first two identical).
fn tree(parent: u64, queries: u64, calls: u64) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    let mut at = 0;
    for n in 0..queries {
        spans.push(query(parent, parent * 1000 + n, n, at));
        at += MS;
    }
    for n in 0..calls {
        let path = if n < 2 { "/score" } else { "/stock" };
        spans.push(call(
            parent,
            parent * 1000 + 500 + n,
            path,
            8080 + n as i64 % 2,
            at,
        ));
        at += 2 * MS;
    }
    let mut server = span(
        SpanKind::Server,
        OpType::HttpServer,
        parent,
        None,
        0,
        at + MS,
    );
    server.set("http.response.body.size", 2_000i64);
    spans.push(server);
    spans
}

fn bench(name: &str, queries: u64, calls: u64, requests: u64) {
    bench_with(name, queries, calls, requests, true);
}

/// The same, every span also counted in the statistics (`loupe::ledger`, as loupe runs).
fn bench_stats(name: &str, queries: u64, calls: u64, requests: u64) {
    run(
        name,
        queries,
        calls,
        requests,
        true,
        Some(Arc::new(Mutex::new(stats_ledger()))),
    );
}

fn stats_ledger() -> loupe::ledger::Ledger {
    loupe::ledger::Ledger::new(
        loupe::ledger::LedgerConfig {
            thresholds: loupe::config::Thresholds {
                http: std::time::Duration::from_secs(1),
                external: std::time::Duration::from_secs(2),
                db: std::time::Duration::from_millis(500),
                cache: std::time::Duration::from_millis(100),
            },
            slos: vec![loupe::ledger::slo::Slo::parse("GET /orders=50ms@p95").expect("an SLO")],
            regression_factor: 1.5,
            min_samples: 20,
            baseline: None,
            alert_slow_percent: Some(5.0),
            alert_error_percent: None,
        },
        loupe::process::services::ServiceNames::with_lookup(Some("bench".into()), |_| None),
        0,
    )
}

/// `diagnose` false: the spans only move through and drop (what any stage costs), the baseline.
fn bench_with(name: &str, queries: u64, calls: u64, requests: u64, diagnose: bool) {
    run(name, queries, calls, requests, diagnose, None);
}

fn run(
    name: &str,
    queries: u64,
    calls: u64,
    requests: u64,
    diagnose: bool,
    ledger: Option<Arc<Mutex<loupe::ledger::Ledger>>>,
) {
    let board = Arc::new(Mutex::new(ProblemBoard::default()));
    let mut diagnoser = Diagnoser::new(
        DiagnosisConfig::default(),
        board,
        Arc::new(Counters::default()),
    );
    if let Some(ledger) = ledger {
        diagnoser = diagnoser.with_ledger(ledger);
    }
    let trees: Vec<Vec<SpanRecord>> = (1..=requests).map(|p| tree(p, queries, calls)).collect();
    let spans_per_request = queries + calls + 1;
    let mut out = Vec::with_capacity(256);
    let started = Instant::now();
    for spans in trees {
        for span in spans {
            if diagnose {
                diagnoser.push(span, 0, &mut out);
            } else {
                out.push(span);
            }
        }
        black_box(&out);
        out.clear();
    }
    let elapsed = started.elapsed();
    let per_request_ns = elapsed.as_nanos() as f64 / requests as f64;
    println!(
        "| {name} | {spans_per_request} | {:.2} | {:.0} | {:.4} |",
        per_request_ns / 1000.0,
        per_request_ns / spans_per_request as f64,
        per_request_ns / 1e6
    );
}

/// What the alert stage's refresh and a `/stats` read cost under the ledger's lock (the
/// diagnosis stage waits for it meanwhile): `routes` routes, each with requests in every slot
/// of the five-minute window.
fn bench_refresh(routes: usize) {
    let mut ledger = stats_ledger();
    let slot = 15_000_000_000u64;
    let start = 1_000 * slot * 20;
    for r in 0..routes {
        for n in 0..20u64 {
            for k in 0..10u64 {
                let mut request = span(
                    SpanKind::Server,
                    OpType::HttpServer,
                    1,
                    None,
                    0,
                    (k + 1) * MS + r as u64 * 1000,
                );
                request.name = format!("GET /r{r}").into();
                ledger.record_request(&mut request, &[], start + n * slot);
            }
        }
    }
    let now = start + 19 * slot;
    let rounds = 20u32;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(ledger.refresh(now));
    }
    let refresh = started.elapsed() / rounds;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(ledger.snapshot(now));
    }
    let snapshot = started.elapsed() / rounds;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(ledger.slos(now));
    }
    let slos = started.elapsed() / rounds;
    println!(
        "| {routes} routes, 20 slots each | {:.2} ms | {:.2} ms | {:.3} ms |",
        refresh.as_secs_f64() * 1e3,
        snapshot.as_secs_f64() * 1e3,
        slos.as_secs_f64() * 1e3
    );
}

fn main() {
    println!("| request shape | spans | us per request | ns per span | share of a 1 ms request |");
    println!("|---|---|---|---|---|");
    bench_with(
        "baseline: no calls, moved and dropped only",
        0,
        0,
        1_000_000,
        false,
    );
    bench("no calls (pass-through)", 0, 0, 1_000_000);
    bench_stats("no calls, with the statistics", 0, 0, 1_000_000);
    bench_with(
        "baseline: 13 spans moved and dropped only",
        8,
        4,
        100_000,
        false,
    );
    bench("8 N+1 queries + 4 HTTP calls", 8, 4, 100_000);
    bench_stats(
        "8 N+1 queries + 4 HTTP calls, with the statistics",
        8,
        4,
        100_000,
    );
    bench("100 N+1 queries", 100, 0, 10_000);
    bench_stats("100 N+1 queries, with the statistics", 100, 0, 10_000);
    println!();
    println!(
        "| statistics under their lock | refresh (every 5 s) | a /stats read | the SLOs (a scrape) |"
    );
    println!("|---|---|---|---|");
    bench_refresh(16);
    bench_refresh(256);
}
