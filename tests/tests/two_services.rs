//! Two observed services, one calling the other over loopback: every backend request is in
//! the trace of the frontend request that called it, under that request's call, from the very
//! first request after attach (the backend's accept was already waiting when loupe attached:
//! the address buffer it passed is read from the registers saved at its entry), under
//! concurrent clients, on a new connection per call.
//!
//! Every request carries a `traceparent` with a trace id the test chose (unique, random): each
//! backend span is checked against the request that made it.

use loupe_tests::{
    client::Client,
    jaeger::{Jaeger, by_trace},
    procs::{DemoApp, Loupe},
    require_root,
    traceparent::{TraceIds, hex, remote_parent, traceparent},
};

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 20;

#[test]
fn every_backend_request_is_under_the_call_that_made_it_from_the_first_request_on() {
    require_root();
    let mut ids = TraceIds::new();
    let seed = ids.seed();
    let jaeger = Jaeger::start();
    let app = DemoApp::start();
    let loupe = Loupe::attach(&app.both_args(&jaeger.grpc_endpoint(), &[]));

    // The first checkout alone, so that its call is the first connection the backend's waiting
    // accept returns; then the rest from concurrent keep-alive clients.
    let trace_ids = ids.take(1 + CLIENTS * PER_CLIENT);
    let user = |n: usize| 1_000 + n;
    let mut first = Client::connect(&app.frontend_addr).expect("connect to the demo");
    first.get_ok_with(
        &format!("/api/checkout?user={}", user(0)),
        &[("traceparent", &traceparent(trace_ids[0]))],
    );
    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let trace_ids = &trace_ids;
            let addr = &app.frontend_addr;
            scope.spawn(move || {
                let mut client = Client::connect(addr).expect("connect to the demo");
                for n in (1 + c..trace_ids.len()).step_by(CLIENTS) {
                    client.get_ok_with(
                        &format!("/api/checkout?user={}", user(n)),
                        &[("traceparent", &traceparent(trace_ids[n]))],
                    );
                }
            });
        }
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("demo-app", 3 * trace_ids.len(), |_| true);
    let by_trace = by_trace(&spans);
    let mut failures = Vec::new();
    for (n, &trace_id) in trace_ids.iter().enumerate() {
        let label = format!("checkout of user {} (trace {})", user(n), hex(trace_id));
        let Some(trace) = by_trace.get(hex(trace_id).as_str()) else {
            failures.push(format!("{label}: not in Jaeger"));
            continue;
        };
        let remote = format!("{:016x}", remote_parent(trace_id));
        let request = trace
            .iter()
            .find(|s| s.kind() == "server" && s.parent.as_deref() == Some(remote.as_str()));
        let call = request.and_then(|request| {
            trace.iter().find(|s| {
                s.kind() == "client" && s.parent.as_deref() == Some(request.span_id.as_str())
            })
        });
        let served = call.and_then(|call| {
            trace.iter().find(|s| {
                s.kind() == "server" && s.parent.as_deref() == Some(call.span_id.as_str())
            })
        });
        match (request, call, served) {
            (Some(_), Some(_), Some(served)) if trace.len() == 3 => {
                if served.operation != "GET /score" {
                    failures.push(format!("{label}: the backend served {}", served.operation));
                }
            }
            _ => failures.push(format!(
                "{label}: {} spans, not request > call > backend request: {:?}",
                trace.len(),
                trace
                    .iter()
                    .map(|s| format!("{} {} parent {:?}", s.kind(), s.operation, s.parent))
                    .collect::<Vec<_>>()
            )),
        }
    }
    // Nothing else: no backend request went out as a trace of its own.
    let alone: Vec<&str> = by_trace
        .keys()
        .copied()
        .filter(|id| !trace_ids.iter().any(|t| hex(*t) == *id))
        .collect();
    if !alone.is_empty() {
        failures.push(format!("{} traces nobody sent: {alone:?}", alone.len()));
    }
    assert!(
        failures.is_empty(),
        "{} problems (seed {seed}):\n{}\nloupe: {}",
        failures.len(),
        failures.join("\n"),
        finished.stderr
    );
    let summary = finished.summary();
    assert_eq!(summary["callers_unseen"], 0, "{}", finished.stderr);
    assert_eq!(summary["events_lost"], 0, "{}", finished.stderr);
}
