//! Tail sampling on the whole request tree: at `--sample-ratio 0.1`, every slow tree is kept
//! whole, about a tenth of the others are, exactly those whose trace ids the OTel consistent
//! probability rule keeps (randomness = the trace id's last 56 bits, kept iff it reaches the
//! threshold 2^56 - round(0.1 * 2^56)), and no tree is ever cut. Two loupes given the same trace
//! ids keep the same ones.
//!
//! Every request carries a `traceparent` with a trace id the test chose (random, unique), so the
//! test knows each request's trace id whether or not loupe exported it.

use std::collections::BTreeSet;

use loupe_tests::{
    client::Client,
    jaeger::{Jaeger, Span, by_trace},
    procs::{DemoApp, Loupe, args},
    require_root,
    traceparent::{TraceIds, hex, remote_parent, traceparent},
};

/// The spec's rule, written out here independently of loupe: kept iff R >= T.
fn kept_at(ratio: f64, trace_id: u128) -> bool {
    const SPACE: u64 = 1 << 56;
    let threshold = SPACE - (ratio * SPACE as f64).round() as u64;
    (trace_id as u64) & (SPACE - 1) >= threshold
}

/// One request to send: where, and what the test expects of its tree.
#[derive(Clone, Debug)]
struct Sent {
    trace_id: u128,
    path: String,
    /// Spans of its tree: the frontend's request, and for a checkout its call to the backend
    /// and the backend's request.
    spans: usize,
    slow: bool,
    /// Sampled at this ratio when not slow (a route's own, or the default).
    ratio: f64,
}

impl Sent {
    fn kept(&self) -> bool {
        self.slow || kept_at(self.ratio, self.trace_id)
    }
}

/// Sends every request of `plan` with its traceparent, `clients` keep-alive connections at once,
/// each taking every `clients`-th request.
fn send(addr: &str, plan: &[Sent], clients: usize) {
    std::thread::scope(|scope| {
        for c in 0..clients {
            scope.spawn(move || {
                let mut client =
                    Client::connect(addr).unwrap_or_else(|err| panic!("connect {addr}: {err}"));
                for sent in plan.iter().skip(c).step_by(clients) {
                    let header = traceparent(sent.trace_id);
                    client.get_ok_with(&sent.path, &[("traceparent", &header)]);
                }
            });
        }
    });
}

/// The tracestate Jaeger shows for a span (its `w3c.tracestate` tag).
fn tracestate(span: &Span) -> Option<&str> {
    span.str_tag("w3c.tracestate")
}

#[test]
fn every_slow_tree_and_a_tenth_of_the_others_are_kept_whole() {
    require_root();
    let mut ids = TraceIds::new();
    let seed = ids.seed();
    let jaeger = Jaeger::start();
    let app = DemoApp::start();
    let flags = app.both_args(
        &jaeger.grpc_endpoint(),
        &["--sample-ratio", "0.1", "--sample", "GET /health=0"],
    );
    let loupe = Loupe::attach(&flags);

    // 1,000 requests, 20 of them slow (a checkout whose backend call takes 2.1 s; one on each
    // client), the others checkouts (three spans over two processes) and user look-ups (one
    // span); then 100 health checks, which their route's ratio 0 drops.
    let trace_ids = ids.take(1_100);
    let plan: Vec<Sent> = trace_ids
        .iter()
        .enumerate()
        .map(|(n, &trace_id)| {
            let (path, spans, slow, ratio) = match n {
                0..980 if n % 49 == 7 => (format!("/api/checkout/slow?id={n}"), 3, true, 0.1),
                0..1_000 if n % 2 == 0 => (format!("/api/checkout?user={n}"), 3, false, 0.1),
                0..1_000 => (format!("/api/users/{n}"), 1, false, 0.1),
                _ => (format!("/health?id={n}"), 1, false, 0.0),
            };
            Sent {
                trace_id,
                path,
                spans,
                slow,
                ratio,
            }
        })
        .collect();
    assert_eq!(plan.iter().filter(|s| s.slow).count(), 20);
    send(&app.frontend_addr, &plan, 20);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let predicted_spans: usize = plan.iter().filter(|s| s.kept()).map(|s| s.spans).sum();
    let spans = jaeger.wait_for_spans("demo-app", predicted_spans, |_| true);
    let by_trace = by_trace(&spans);
    // Why each request's tree is kept: planted slow, else a cause its own spans show (on a
    // loaded machine any request can take a second, and is then rightly kept as slow), else
    // its trace id within the ratio; else it is dropped.
    let observed = |sent: &Sent| -> Option<&'static str> {
        let trace = by_trace.get(hex(sent.trace_id).as_str())?;
        if trace.iter().any(|s| s.is_slow()) {
            Some("slow")
        } else if trace.iter().any(|s| s.is_error()) {
            Some("error")
        } else {
            None
        }
    };
    let reasons: Vec<(&Sent, &str)> = plan
        .iter()
        .filter_map(|sent| {
            let reason = match (sent.slow, observed(sent), sent.kept()) {
                (true, _, _) => "slow",
                (false, Some(cause), _) => cause,
                (false, None, true) => "ratio",
                (false, None, false) => return None,
            };
            Some((sent, reason))
        })
        .collect();
    let incidental: Vec<String> = reasons
        .iter()
        .filter(|(sent, reason)| !sent.slow && *reason != "ratio")
        .map(|(sent, reason)| format!("{} {reason}", sent.path))
        .collect();
    let kept: Vec<&Sent> = reasons.iter().map(|(sent, _)| *sent).collect();
    let kept_spans: usize = kept.iter().map(|s| s.spans).sum();
    let dropped_spans: usize = plan.iter().map(|s| s.spans).sum::<usize>() - kept_spans;
    let context = format!(
        "seed {seed}; {} spans in Jaeger, {kept_spans} predicted (kept for a cause of their own: {incidental:?}); {}",
        spans.len(),
        finished.summary_line()
    );

    let mut failures = Vec::new();
    // Exactly the predicted traces: every slow one, the ratio's share of the others.
    let exported: BTreeSet<String> = by_trace.keys().map(|id| (*id).to_owned()).collect();
    let predicted: BTreeSet<String> = kept.iter().map(|s| hex(s.trace_id)).collect();
    for missing in predicted.difference(&exported) {
        failures.push(format!("trace {missing} predicted kept, not in Jaeger"));
    }
    for extra in exported.difference(&predicted) {
        let trace = &by_trace[extra.as_str()];
        failures.push(format!(
            "trace {extra} in Jaeger, predicted dropped: {:?}",
            trace
                .iter()
                .map(|s| format!(
                    "{} {:?} {:?}",
                    s.operation,
                    s.tag("loupe.sampling.reason"),
                    s.tag("url.path")
                ))
                .collect::<Vec<_>>()
        ));
    }
    // Each kept tree whole, every span carrying why it was kept and the threshold.
    let expected_tracestate = |reason: &str| {
        if reason == "ratio" {
            "ot=th:e6666666666666"
        } else {
            "ot=th:0"
        }
    };
    let mut tracestates_seen = 0;
    for &(sent, reason) in &reasons {
        let Some(trace) = by_trace.get(hex(sent.trace_id).as_str()) else {
            continue;
        };
        let label = format!("{} (trace {:032x})", sent.path, sent.trace_id);
        if trace.len() != sent.spans {
            failures.push(format!(
                "{label}: {} spans, not {}",
                trace.len(),
                sent.spans
            ));
            continue;
        }
        let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        let remote = format!("{:016x}", remote_parent(sent.trace_id));
        let roots: Vec<&&Span> = trace
            .iter()
            .filter(|s| s.parent.as_deref() == Some(remote.as_str()))
            .collect();
        if roots.len() != 1 || roots[0].kind() != "server" {
            failures.push(format!("{label}: {} roots under the caller", roots.len()));
        }
        for span in trace {
            let parent = span.parent.as_deref().unwrap_or("none");
            if parent != remote && !ids.contains(parent) {
                failures.push(format!(
                    "{label}: {} {} without its parent {parent}",
                    span.kind(),
                    span.operation
                ));
            }
            if span.str_tag("loupe.sampling.reason") != Some(reason) {
                failures.push(format!(
                    "{label}: {} has loupe.sampling.reason {:?}, not {reason}",
                    span.operation,
                    span.tag("loupe.sampling.reason")
                ));
            }
            if let Some(state) = tracestate(span) {
                tracestates_seen += 1;
                if state != expected_tracestate(reason) {
                    failures.push(format!(
                        "{label}: tracestate {state}, not {}",
                        expected_tracestate(reason)
                    ));
                }
            }
        }
        if sent.spans == 3 {
            // The checkout's call and the backend's request under it.
            let call = trace.iter().find(|s| s.kind() == "client");
            let served = call.and_then(|call| {
                trace
                    .iter()
                    .find(|s| s.parent.as_deref() == Some(call.span_id.as_str()))
            });
            if served.is_none_or(|s| s.kind() != "server") {
                failures.push(format!("{label}: no backend request under the call"));
            }
            if sent.slow && !trace.iter().all(|s| s.is_slow()) {
                failures.push(format!("{label}: a span of the slow tree is not slow"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n{context}\nloupe: {}",
        failures.len(),
        failures.join("\n"),
        finished.stderr
    );
    assert_eq!(
        tracestates_seen, kept_spans,
        "every span's tracestate: {context}"
    );
    // About a tenth of the 980 trees without a cause (binomial: mean 98, sd 9.4).
    let by_ratio = reasons.iter().filter(|(_, r)| *r == "ratio").count();
    assert!((60..=140).contains(&by_ratio), "{by_ratio} kept: {context}");
    // Every span was built and counted; the dropped ones exactly as predicted.
    let summary = finished.summary();
    assert_eq!(
        summary["spans_sampled_out"], dropped_spans as u64,
        "{context}"
    );
    assert_eq!(summary["spans_exported"], kept_spans as u64, "{context}");
    assert_eq!(summary["spans_dropped"], 0, "{context}");
    eprintln!(
        "sampling: {} trees kept ({} for a cause, {by_ratio} by ratio), {kept_spans} spans exported, {dropped_spans} sampled out; {context}",
        kept.len(),
        kept.len() - by_ratio
    );
}

#[test]
fn two_loupes_given_the_same_trace_ids_keep_the_same_ones() {
    require_root();
    let mut ids = TraceIds::new();
    let seed = ids.seed();
    let jaeger = Jaeger::start();
    let (left, right) = (DemoApp::start(), DemoApp::start());
    let loupe = |app: &DemoApp, service: &str| {
        Loupe::attach(&args(&[
            "--pid",
            &app.frontend_pid().to_string(),
            "--otlp-endpoint",
            &jaeger.grpc_endpoint(),
            "--service-name",
            service,
            "--sample-ratio",
            "0.25",
        ]))
    };
    let (left_loupe, right_loupe) = (loupe(&left, "left"), loupe(&right, "right"));
    let plan: Vec<Sent> = ids
        .take(400)
        .into_iter()
        .enumerate()
        .map(|(n, trace_id)| Sent {
            trace_id,
            path: format!("/api/users/{n}"),
            spans: 1,
            slow: false,
            ratio: 0.25,
        })
        .collect();
    std::thread::scope(|scope| {
        scope.spawn(|| send(&left.frontend_addr, &plan, 8));
        scope.spawn(|| send(&right.frontend_addr, &plan, 8));
    });
    let (left_done, right_done) = (left_loupe.stop(), right_loupe.stop());
    assert!(left_done.status.success(), "{}", left_done.stderr);
    assert!(right_done.status.success(), "{}", right_done.stderr);

    let predicted: BTreeSet<String> = plan
        .iter()
        .filter(|s| s.kept())
        .map(|s| hex(s.trace_id))
        .collect();
    let kept_by = |service: &str| -> BTreeSet<String> {
        jaeger
            .wait_for_spans(service, predicted.len(), |s| s.service == service)
            .iter()
            .filter(|s| s.service == service && s.kind() == "server")
            .map(|s| s.trace_id.clone())
            .collect()
    };
    let (left_kept, right_kept) = (kept_by("left"), kept_by("right"));
    let context = format!(
        "seed {seed}; left {}, right {}",
        left_done.summary_line(),
        right_done.summary_line()
    );
    let differ = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
        a.symmetric_difference(b).cloned().collect()
    };
    assert!(
        left_kept == right_kept,
        "kept by one loupe only: {:?}\n{context}",
        differ(&left_kept, &right_kept)
    );
    assert!(
        left_kept == predicted,
        "kept (or not) against the prediction: {:?}\n{context}",
        differ(&left_kept, &predicted)
    );
    // A quarter of 400 (binomial: mean 100, sd 8.7).
    assert!(
        (60..=140).contains(&predicted.len()),
        "{} kept: {context}",
        predicted.len()
    );
    for done in [&left_done, &right_done] {
        let summary = done.summary();
        assert_eq!(
            summary["spans_sampled_out"] + summary["spans_exported"],
            400,
            "{context}"
        );
    }
    // Jaeger holds each kept trace once, with both services' spans in it.
    let merged = jaeger.spans("left");
    let services = |id: &str| -> BTreeSet<String> {
        merged
            .iter()
            .filter(|s| s.trace_id == id)
            .map(|s| s.service.clone())
            .collect()
    };
    for id in &predicted {
        let both: BTreeSet<String> = ["left", "right"].map(str::to_owned).into();
        assert_eq!(services(id), both, "trace {id}: {context}");
    }
    eprintln!(
        "sampling: both loupes kept the same {} of 400 trace ids; {context}",
        predicted.len()
    );
}
