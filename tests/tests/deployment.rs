//! The fleet deployment of docs/deployment.md on one host: loupe exports to a Jaeger v2
//! collector tier started from the config the docs ship (docs/collector-tier.yaml), which tail
//! samples whole traces and forwards them to the Jaeger that stores and serves them. loupe keeps
//! everything (ratio 1); the tier keeps exactly the traces with a slow or failed span, each
//! whole across the two processes, and none of the others (its probabilistic share set to 0).

use std::collections::BTreeSet;

use loupe_tests::{
    client::Client,
    collector_tier::CollectorTier,
    jaeger::{Jaeger, by_trace},
    procs::{DemoApp, Loupe},
    require_root,
    traceparent::{TraceIds, hex, traceparent},
};

/// A request and the tree the test expects of it.
struct Sent {
    trace_id: u128,
    path: String,
    status: u16,
    /// Spans of its trace: the frontend's request, its call to the backend and the backend's
    /// request (3), or the frontend's request alone (1).
    spans: usize,
    /// Slow or failed: the tier keeps it.
    kept: bool,
}

#[test]
fn loupe_through_a_tail_sampling_collector_tier_delivers_whole_traces() {
    require_root();
    let mut ids = TraceIds::new();
    let seed = ids.seed();
    let jaeger = Jaeger::start();
    let tier = CollectorTier::start(
        &format!("127.0.0.1:{}", jaeger.otlp_grpc),
        &[
            ("COLLECTOR_DECISION_WAIT", "2s"),
            ("COLLECTOR_SAMPLING_PERCENTAGE", "0"),
            ("COLLECTOR_LOG_LEVEL", "warn"),
        ],
    );
    let app = DemoApp::start();
    let loupe = Loupe::attach(&app.both_args(&tier.grpc_endpoint(), &[]));

    // Per client: 20 fast checkouts, then the traces the tier must keep: a slow checkout, a
    // failed checkout (the backend answers 404, a clean server span on its side, so only the
    // whole trace says it failed) and a failed request. The kept ones come last on every
    // client: once they are all in Jaeger, the tier has decided every trace before them.
    const CLIENTS: usize = 8;
    let trace_ids = ids.take(CLIENTS * 23);
    let plans: Vec<Vec<Sent>> = trace_ids
        .chunks(23)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(n, &trace_id)| {
                    let (path, status, spans, kept) = match n {
                        0..20 => (format!("/api/checkout?user={c}{n}"), 200, 3, false),
                        20 => (format!("/api/checkout/slow?id={c}"), 200, 3, true),
                        21 => (format!("/api/missing?id={c}"), 502, 3, true),
                        _ => (format!("/api/fail?id={c}"), 500, 1, true),
                    };
                    Sent {
                        trace_id,
                        path,
                        status,
                        spans,
                        kept,
                    }
                })
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for plan in &plans {
            let addr = &app.frontend_addr;
            scope.spawn(move || {
                let mut client =
                    Client::connect(addr).unwrap_or_else(|err| panic!("connect {addr}: {err}"));
                for sent in plan {
                    let header = traceparent(sent.trace_id);
                    let response = client
                        .request_with("GET", &sent.path, &[("traceparent", &header)], b"")
                        .unwrap_or_else(|err| panic!("GET {}: {err}", sent.path));
                    assert_eq!(response.status, sent.status, "GET {}", sent.path);
                }
            });
        }
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let sent: Vec<&Sent> = plans.iter().flatten().collect();
    let all_spans: usize = sent.iter().map(|s| s.spans).sum();
    let kept: Vec<&&Sent> = sent.iter().filter(|s| s.kept).collect();
    let kept_spans: usize = kept.iter().map(|s| s.spans).sum();
    let spans = jaeger.wait_for_spans("demo-app", kept_spans, |_| true);
    let context = format!(
        "seed {seed}; {} spans in Jaeger, {kept_spans} expected; {}\ncollector tier log:\n{}",
        spans.len(),
        finished.summary_line(),
        tier.log()
    );
    // loupe sampled nothing out: the tier got every span.
    let summary = finished.summary();
    assert_eq!(summary["spans_exported"], all_spans as u64, "{context}");
    assert_eq!(summary["spans_sampled_out"], 0, "{context}");

    let by_trace = by_trace(&spans);
    let exported: BTreeSet<String> = by_trace.keys().map(|id| (*id).to_owned()).collect();
    let expected: BTreeSet<String> = kept.iter().map(|s| hex(s.trace_id)).collect();
    let differ: Vec<&String> = exported.symmetric_difference(&expected).collect();
    assert!(
        differ.is_empty(),
        "traces kept by the tier against the expectation: {differ:?}\n{context}"
    );
    let mut failures = Vec::new();
    for sent in &kept {
        let trace = &by_trace[hex(sent.trace_id).as_str()];
        if trace.len() != sent.spans {
            failures.push(format!(
                "{}: {} spans, not {}",
                sent.path,
                trace.len(),
                sent.spans
            ));
        }
        let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        let roots = trace
            .iter()
            .filter(|s| !s.parent.as_deref().is_some_and(|p| ids.contains(p)))
            .count();
        if roots != 1 {
            failures.push(format!("{}: {roots} spans without their parent", sent.path));
        }
    }
    // The failed checkout's backend request is clean on its own: the tier kept it because its
    // trace failed elsewhere.
    let clean_backend = kept
        .iter()
        .filter(|s| s.path.starts_with("/api/missing"))
        .filter(|s| {
            by_trace[hex(s.trace_id).as_str()].iter().any(|span| {
                span.kind() == "server" && span.operation == "GET /missing" && !span.is_error()
            })
        })
        .count();
    if clean_backend != CLIENTS {
        failures.push(format!(
            "{clean_backend} of {CLIENTS} failed checkouts kept their backend's clean request"
        ));
    }
    assert!(failures.is_empty(), "{}\n{context}", failures.join("\n"));
    eprintln!(
        "deployment: loupe exported {all_spans} spans to the collector tier; it kept the {} slow or failed traces ({kept_spans} spans) whole and dropped the {} others",
        kept.len(),
        sent.len() - kept.len()
    );
}
