//! The export path under the collectors production has: one killed for 30 s under load and
//! restarted, one that accepts and never answers, one that answers slowly, one that wants a
//! header and gzip, one behind TLS (one that is not there: tests/tests/bad_input.rs). The target never stalls, the ring
//! buffer never loses, what fits the queue arrives, every other span is counted, export
//! resumes within 5 s of the collector's return, and the exit stays within its timeout.

use std::{
    collections::HashSet,
    process::Command,
    time::{Duration, Instant},
};

use loupe_tests::{
    TempDir,
    collector::{Gate, Load, ca_signed_cert},
    jaeger::Jaeger,
    procs::{Finished, Loupe, Nginx, args, otlp_args},
    require_root, wait_until,
};

/// The unique request numbers (`/items/<n>`) of `prefix` among Jaeger's server spans.
fn ids_in_jaeger(jaeger: &Jaeger, service: &str, prefix: &str) -> HashSet<u64> {
    jaeger
        .spans_of_traces(service, 50_000)
        .iter()
        .filter(|span| span.kind() == "server")
        .filter_map(|span| span.str_tag("url.path")?.strip_prefix(prefix)?.parse().ok())
        .collect()
}

fn summary(finished: &Finished) -> std::collections::HashMap<String, u64> {
    finished.summary()
}

fn no_colour_codes(stderr: &str) {
    assert!(
        !stderr.contains('\u{1b}'),
        "stderr is not a terminal: no colour codes:\n{stderr}"
    );
}

#[test]
fn a_collector_killed_for_30s_under_load_gets_what_fit_the_queue_and_export_resumes() {
    require_root();
    let mut jaeger = Jaeger::start();
    let nginx = Nginx::start();
    let service = "outage";
    let queue = 2_000;
    let batch = 200;
    let loupe = Loupe::attach(&otlp_args(
        nginx.master_pid(),
        &jaeger.grpc_endpoint(),
        service,
        &[
            "--queue-size",
            &queue.to_string(),
            "--batch-size",
            &batch.to_string(),
            "--export-concurrency",
            "1",
            "--schedule-delay",
            "100ms",
            "--shutdown-timeout",
            "10s",
        ],
    ));

    // Before: every request arrives.
    let before = Load::start(&nginx.addr, "/items/a", 2, 200);
    std::thread::sleep(Duration::from_secs(2));
    let (sent_before, _) = before.stop();
    let arrived = wait_until(Duration::from_secs(20), || {
        let ids = ids_in_jaeger(&jaeger, service, "/items/a");
        (ids.len() as u64 == sent_before).then_some(ids)
    });
    assert!(
        arrived.is_some(),
        "all {sent_before} spans before the outage"
    );

    // The collector dies under load; the target keeps serving at once.
    jaeger.kill();
    let during = Load::start(&nginx.addr, "/items/b", 2, 200);
    std::thread::sleep(Duration::from_secs(30));
    let (sent_during, slowest_during) = during.stop();
    assert!(
        sent_during as usize > queue + batch,
        "the outage overflows the queue: {sent_during}"
    );
    assert!(
        slowest_during < Duration::from_secs(1),
        "the target never stalls while the collector is down: slowest request {slowest_during:?}"
    );

    // It comes back: what was queued and retried arrives within 5 s.
    jaeger.restart();
    let back = Instant::now();
    let resumed = wait_until(Duration::from_secs(20), || {
        (!ids_in_jaeger(&jaeger, service, "/items/b").is_empty()).then(|| back.elapsed())
    })
    .expect("export resumed after the collector came back");
    assert!(
        resumed <= Duration::from_secs(5),
        "export resumed {resumed:?} after the collector's return"
    );
    // The queue drains (until then new spans may still find it full), then every span arrives.
    let kept = wait_until(Duration::from_secs(20), || {
        let first = ids_in_jaeger(&jaeger, service, "/items/b");
        std::thread::sleep(Duration::from_secs(1));
        let again = ids_in_jaeger(&jaeger, service, "/items/b");
        (first.len() == again.len()).then_some(again)
    })
    .expect("the queue drained");
    let after = Load::start(&nginx.addr, "/items/c", 2, 200);
    std::thread::sleep(Duration::from_secs(2));
    let (sent_after, _) = after.stop();
    let arrived = wait_until(Duration::from_secs(20), || {
        (ids_in_jaeger(&jaeger, service, "/items/c").len() as u64 == sent_after).then_some(())
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    no_colour_codes(&finished.stderr);
    assert!(
        arrived.is_some(),
        "all {sent_after} spans after the return arrive: {}",
        finished.stderr
    );
    // The queue and the batch being retried, no more and not much less (a batch may be taking
    // shape between them).
    assert!(
        kept.len() >= queue && kept.len() <= queue + 2 * batch,
        "{} spans of the outage arrived; the queue holds {queue}, a batch {batch}",
        kept.len()
    );
    let counts = summary(&finished);
    let total = sent_before + sent_during + sent_after;
    assert_eq!(counts["events_lost"], 0, "the ring buffer never stalls");
    assert_eq!(
        counts["spans_exported"] + counts["spans_dropped"],
        total,
        "every span is exported or counted: {}",
        finished.stderr
    );
    assert_eq!(
        counts["spans_dropped"],
        sent_during - kept.len() as u64,
        "what did not fit the queue is what was dropped"
    );
    assert!(counts["export_retries"] > 0);
}

/// `n` requests, each answered before the next: their events are in the ring buffer once the
/// last answer is read, and loupe's stop drains and stitches everything in it.
fn serve(nginx: &Nginx, prefix: &str, n: usize) {
    let mut client = loupe_tests::client::Client::connect(&nginx.addr).unwrap();
    for i in 0..n {
        client.get_ok(&format!("{prefix}{i}"));
    }
}

/// SIGINT; the summary must come within `limit`. (The process ends a moment later: the kernel
/// detaches loupe's probes as its file descriptors close.)
fn stop_within(loupe: Loupe, limit: Duration) -> Finished {
    let asked = Instant::now();
    loupe.interrupt();
    let summary = wait_until(limit + Duration::from_secs(10), || {
        loupe
            .stderr()
            .contains("loupe: summary")
            .then(|| asked.elapsed())
    });
    let finished = loupe.wait(Duration::from_secs(30));
    let took = summary.expect("a summary line");
    assert!(
        took <= limit,
        "loupe took {took:?} to print its summary (limit {limit:?}):\n{}",
        finished.stderr
    );
    finished
}

#[test]
fn a_collector_that_never_answers_never_stretches_the_exit() {
    require_root();
    let gate = Gate::blackhole();
    let nginx = Nginx::start();
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--otlp-endpoint",
        &gate.endpoint(),
        "--export-timeout",
        "60s",
        "--shutdown-timeout",
        "2s",
    ]));
    serve(&nginx, "/items/", 200);
    let finished = stop_within(loupe, Duration::from_millis(3_500));
    no_colour_codes(&finished.stderr);
    let counts = summary(&finished);
    assert_eq!(counts["spans_exported"], 0);
    assert_eq!(counts["spans_dropped"], 200, "{}", finished.stderr);
    assert_eq!(counts["spans_dropped_at_exit"], 200);
    assert_eq!(
        finished.status.code(),
        Some(1),
        "every span dropped is a failed run"
    );
    assert!(
        finished
            .stderr
            .contains("every span (200) was dropped: the OTLP collector at"),
        "{}",
        finished.stderr
    );
}

#[test]
fn a_slow_collector_gets_every_span_and_the_exit_stays_bounded() {
    require_root();
    let jaeger = Jaeger::start();
    let gate = Gate::delay(jaeger.otlp_grpc, 0.5);
    let nginx = Nginx::start();
    let service = "slow-collector";
    let loupe = Loupe::attach(&otlp_args(
        nginx.master_pid(),
        &gate.endpoint(),
        service,
        &["--batch-size", "100", "--shutdown-timeout", "5s"],
    ));
    let load = Load::start(&nginx.addr, "/items/", 2, 300);
    std::thread::sleep(Duration::from_secs(4));
    let (sent, slowest) = load.stop();
    assert!(
        slowest < Duration::from_secs(1),
        "the target never waits on the collector: slowest request {slowest:?}"
    );
    let arrived = wait_until(Duration::from_secs(30), || {
        (ids_in_jaeger(&jaeger, service, "/items/").len() as u64 == sent).then_some(())
    });
    assert!(
        arrived.is_some(),
        "all {sent} spans through a slow collector"
    );
    let finished = stop_within(loupe, Duration::from_millis(6_500));
    assert!(finished.status.success(), "{}", finished.stderr);
    let counts = summary(&finished);
    assert_eq!(counts["spans_exported"], sent);
    assert_eq!(counts["spans_dropped"], 0);
}

/// loupe with OTEL_* variables set (the harness clears them for every other test).
fn loupe_with_env(args: &[String], env: &[(&str, &str)]) -> Loupe {
    let mut command = Command::new(loupe_tests::binary("LOUPE_BIN", "loupe"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let loupe = Loupe::spawn_with(&mut command);
    let attached = wait_until(Duration::from_secs(30), || {
        loupe.stderr().contains("loupe: attached").then_some(())
    });
    assert!(
        attached.is_some(),
        "loupe did not attach:\n{}",
        loupe.stderr()
    );
    loupe
}

#[test]
fn an_authenticated_collector_gets_gzip_over_http_with_the_header_from_the_environment() {
    require_root();
    let jaeger = Jaeger::start();
    let gate = Gate::auth(jaeger.otlp_http, "authorization=Bearer s3cret");
    let nginx = Nginx::start();
    let service = "authed";
    let loupe = loupe_with_env(
        &otlp_args(
            nginx.master_pid(),
            &gate.endpoint(),
            service,
            &["--otlp-protocol", "http"],
        ),
        &[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    serve(&nginx, "/items/", 100);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let arrived = wait_until(Duration::from_secs(20), || {
        (ids_in_jaeger(&jaeger, service, "/items/").len() == 100).then_some(())
    });
    assert!(
        arrived.is_some(),
        "100 spans through the authenticated front"
    );
    let requests: Vec<String> = gate.lines().into_iter().filter(|l| l != "ready").collect();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|l| l == "request encoding=gzip status=200"),
        "{requests:?}"
    );
    assert!(
        !finished.stderr.contains("s3cret"),
        "a header's value never shows: {}",
        finished.stderr
    );

    // Without the header: refused for good, not retried, every span counted.
    let loupe = Loupe::attach(&otlp_args(
        nginx.master_pid(),
        &gate.endpoint(),
        "refused",
        &["--otlp-protocol", "http", "--shutdown-timeout", "2s"],
    ));
    serve(&nginx, "/items/", 20);
    let finished = loupe.stop();
    let counts = summary(&finished);
    assert_eq!(counts["spans_dropped"], 20, "{}", finished.stderr);
    assert_eq!(counts["export_retries"], 0, "a 401 is not retried");
    assert_eq!(finished.status.code(), Some(1));
    assert!(
        gate.lines().iter().any(|l| l.ends_with("status=401")),
        "{:?}",
        gate.lines()
    );
}

#[test]
fn a_tls_collector_is_reached_with_its_ca_certificate_over_grpc_and_http() {
    require_root();
    let dir = TempDir::new("collector-tls");
    let (ca, cert, key) = ca_signed_cert(&dir.0);
    let jaeger = Jaeger::start_tls(&cert, &key);
    let nginx = Nginx::start();
    for (protocol, port, service) in [
        ("grpc", jaeger.otlp_grpc, "tls-grpc"),
        ("http", jaeger.otlp_http, "tls-http"),
    ] {
        let loupe = Loupe::attach(&otlp_args(
            nginx.master_pid(),
            &format!("https://127.0.0.1:{port}"),
            service,
            &[
                "--otlp-protocol",
                protocol,
                "--otlp-ca",
                ca.to_str().unwrap(),
            ],
        ));
        serve(&nginx, "/items/", 30);
        let finished = loupe.stop();
        assert!(finished.status.success(), "{protocol}: {}", finished.stderr);
        let arrived = wait_until(Duration::from_secs(20), || {
            (ids_in_jaeger(&jaeger, service, "/items/").len() == 30).then_some(())
        });
        assert!(arrived.is_some(), "{protocol}: 30 spans over TLS");
    }

    // Without the CA, the collector's certificate is not trusted: nothing is sent.
    let loupe = Loupe::attach(&otlp_args(
        nginx.master_pid(),
        &format!("https://127.0.0.1:{}", jaeger.otlp_grpc),
        "untrusted",
        &["--shutdown-timeout", "2s"],
    ));
    serve(&nginx, "/items/", 10);
    let finished = loupe.stop();
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
}
