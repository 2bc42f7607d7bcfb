//! Diagnosis end to end: a shop with one route per anti-pattern and clean control routes
//! (tests/apps/diag_shop.py), a real PostgreSQL and two real downstream HTTP services. Each
//! pattern must be named on its route and nowhere else, controls carry no performance flag, and
//! the bottleneck share matches the timing the test planted.

use std::collections::BTreeMap;

use loupe_tests::{
    client::get,
    jaeger::{Jaeger, Span},
    postgres::Postgres,
    procs::{DiagShop, Loupe, args, otlp_args},
    require_root,
};

/// Route, the patterns it must carry (exactly), how often the test calls it.
const ROUTES: &[(&str, &[&str])] = &[
    ("/n_plus_one", &["n_plus_one"]),
    ("/sequential", &["sequential_calls"]),
    ("/repeated", &["repeated_call"]),
    ("/repeated_bound", &["repeated_call"]),
    ("/oversized", &["oversized_response"]),
    ("/oversized_rows", &["oversized_response"]),
    ("/slow_dependency", &["slow_dependency"]),
    ("/burn", &[]),
    ("/control/db", &[]),
    ("/control/parallel", &[]),
    ("/control/fast", &[]),
    ("/control/bound", &[]),
];
const CALLS_PER_ROUTE: usize = 2;
/// Thresholds the test runs with: the planted 400 ms dependency is slow, the 150 ms and 100 ms
/// calls are not; /burn (600 ms of CPU) and /slow_dependency (500 ms) are slow requests.
const FLAGS: &[&str] = &[
    "--slow-external",
    "300ms",
    "--slow-http",
    "450ms",
    "--large-result-rows",
    "1000",
];

fn float(span: &Span, key: &str) -> f64 {
    span.float_tag(key)
        .unwrap_or_else(|| panic!("{} has no {key}: {:?}", span.operation, span.tags))
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent.as_deref() == Some(parent.span_id.as_str()))
        .collect()
}

fn exercise(shop: &DiagShop) {
    for _ in 0..CALLS_PER_ROUTE {
        for (route, _) in ROUTES {
            let response = get(&shop.addr, route);
            assert_eq!(response.status, 200, "GET {route}");
        }
    }
}

#[test]
fn each_pattern_is_named_on_its_route_and_nowhere_else() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = DiagShop::start(&pg.url("shop"));
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        "e2e-diag",
        FLAGS,
    ));
    exercise(&shop);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let expected_servers = ROUTES.len() * CALLS_PER_ROUTE;
    let spans = jaeger.wait_for_spans("e2e-diag", expected_servers, |s| s.kind() == "server");
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind() == "server").collect();
    assert_eq!(
        servers.len(),
        expected_servers,
        "one server span per request\nloupe: {}",
        finished.stderr
    );

    let mut by_route: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for server in &servers {
        let route = server.operation.trim_start_matches("GET ");
        let (name, expected) = ROUTES
            .iter()
            .find(|(r, _)| *r == route)
            .unwrap_or_else(|| panic!("unexpected route {}", server.operation));
        by_route.entry(name).or_default().push(server);
        let mut patterns = server.patterns();
        patterns.sort();
        assert_eq!(
            patterns, *expected,
            "patterns of {route}: {:?}",
            server.tags
        );
        for event in *expected {
            assert!(
                !server.events(event).is_empty(),
                "{route} carries a {event} event: {:?}",
                server.logs
            );
        }
        if route.starts_with("/control/") {
            assert!(!server.is_slow(), "control {route} is not slow");
            assert!(server.tag("performance.patterns").is_none());
            for child in children(&spans, server) {
                assert!(!child.is_slow(), "a call of control {route} is not slow");
            }
        }
        // Every child says how much of its request it took.
        for child in children(&spans, server) {
            let share = float(child, "performance.share_of_parent");
            assert!((0.0..=1.0).contains(&share), "{share}");
        }
    }
    assert_eq!(by_route.len(), ROUTES.len(), "every route seen");

    // Jaeger's own search finds every request with a pattern, and only those.
    for pattern in [
        "n_plus_one",
        "sequential_calls",
        "repeated_call",
        "oversized_response",
        "slow_dependency",
    ] {
        let found = jaeger.search(
            "e2e-diag",
            &format!("performance.pattern.{pattern}"),
            "true",
        );
        let mut routes: Vec<&str> = found
            .iter()
            .filter(|s| s.kind() == "server")
            .map(|s| s.operation.trim_start_matches("GET "))
            .collect();
        routes.sort();
        let mut expected: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, patterns)| patterns.contains(&pattern))
            .flat_map(|(route, _)| std::iter::repeat_n(*route, CALLS_PER_ROUTE))
            .collect();
        expected.sort();
        assert_eq!(routes, expected, "search for {pattern}");
    }
    // As the README says: the array is for reading; a search matches the boolean tags.
    assert!(
        jaeger
            .search("e2e-diag", "performance.patterns", "n_plus_one")
            .is_empty()
    );
    let slow: Vec<String> = jaeger
        .search("e2e-diag", "performance.slow", "true")
        .iter()
        .filter(|s| s.is_slow())
        .map(|s| s.operation.clone())
        .collect();
    assert!(
        slow.iter().all(|op| !op.contains("/control/")),
        "no control is slow: {slow:?}"
    );

    // N+1: ten queries of one statement, named in its event.
    for server in &by_route["/n_plus_one"] {
        let event = &server.events("n_plus_one")[0];
        assert_eq!(event["count"].as_i64(), Some(10), "{event:?}");
        assert_eq!(
            event["db.query.text"].as_str(),
            Some("SELECT id, total FROM orders WHERE id = $1")
        );
        assert_eq!(
            server.str_tag("performance.bottleneck"),
            Some("SELECT id, total FROM orders WHERE id = $1 (x10)")
        );
    }

    // Sequential: two 150 ms calls one after another; in parallel they would save ~150 ms,
    // about half of the request; each was about half of it.
    for server in &by_route["/sequential"] {
        let event = &server.events("sequential_calls")[0];
        let saving = event["saving_ms"].as_f64().unwrap();
        assert!((140.0..=220.0).contains(&saving), "saving {saving} ms");
        let share = float(server, "performance.bottleneck_share");
        assert!((share - 0.5).abs() <= 0.05, "bottleneck share {share}");
    }

    // Bound values (psycopg 3, extended protocol): the same value three times is one call
    // repeated; three different values (/control/bound) are not.
    for server in &by_route["/repeated_bound"] {
        let event = &server.events("repeated_call")[0];
        assert_eq!(event["count"].as_i64(), Some(3));
        assert_eq!(
            event["call"].as_str(),
            Some("SELECT id, total FROM orders WHERE id = $1")
        );
    }

    for server in &by_route["/repeated"] {
        let event = &server.events("repeated_call")[0];
        assert_eq!(event["count"].as_i64(), Some(3));
        let call = event["call"].as_str().unwrap();
        assert!(call.starts_with(&format!("GET {}", shop.peer_a)), "{call}");
    }

    // Slow dependency: 100 ms of own work, then a 400 ms call over its 300 ms threshold: the
    // call is 400 / 500 of the request.
    for server in &by_route["/slow_dependency"] {
        let share = float(server, "performance.bottleneck_share");
        assert!((share - 0.8).abs() <= 0.05, "bottleneck share {share}");
        let diagnosis = server.str_tag("performance.diagnosis").unwrap();
        // The finding leads.
        assert!(
            diagnosis.starts_with("slow dependency: ")
                && diagnosis.ends_with(&format!(
                    "% of the request waited on GET {}/sleep",
                    shop.peer_a
                )),
            "{diagnosis}"
        );
        let calls = children(&spans, server);
        assert_eq!(calls.len(), 1);
        let call = calls[0];
        assert!(call.is_slow());
        assert!((float(call, "performance.share_of_parent") - 0.8).abs() <= 0.05);
        // The slow call carries its process's resource snapshot.
        assert!(call.int_tag("performance.process.rss_bytes").unwrap() > 1 << 20);
        // (The request's own thread may have ended by the time the snapshot is read.)
        assert!(call.int_tag("performance.process.threads").unwrap() >= 1);
        assert!(call.int_tag("performance.process.open_fds").unwrap() >= 3);
    }

    // A slow request that only burns CPU: its snapshot says so.
    for server in &by_route["/burn"] {
        assert!(server.is_slow());
        let cpu = server.int_tag("performance.process.cpu_ms").unwrap();
        assert!(cpu >= 500, "600 ms of CPU planted, {cpu} ms measured");
        assert_eq!(
            server.str_tag("performance.diagnosis"),
            Some("no outbound calls seen: the time was the service's own work")
        );
    }

    // Controls: no flag anywhere in their traces; nothing but controls is clean.
    let control_parallel = &by_route["/control/parallel"];
    for server in control_parallel {
        assert_eq!(children(&spans, server).len(), 2, "both calls nested");
    }

    // The exit summary ranks the problems.
    assert!(
        finished.stderr.contains("loupe: top problems"),
        "{}",
        finished.stderr
    );
    for route in ["GET /n_plus_one", "GET /sequential", "GET /slow_dependency"] {
        assert!(finished.stderr.contains(route), "{}", finished.stderr);
    }
    assert!(
        !finished.stderr.contains("/control/"),
        "{}",
        finished.stderr
    );
}

#[test]
fn report_lists_the_top_problems_with_advice() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let shop = DiagShop::start(&pg.url("shop"));
    let mut report_args = args(&["report", "--pid", &shop.pid().to_string()]);
    report_args.extend(args(FLAGS));
    let loupe = Loupe::attach(&report_args);
    for _ in 0..3 {
        for route in ["/n_plus_one", "/repeated", "/control/fast"] {
            assert_eq!(get(&shop.addr, route).status, 200);
        }
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = &finished.stdout;
    assert!(
        report.starts_with("loupe report: top problems\n"),
        "{report}\n{}",
        finished.stderr
    );
    let line = |route: &str| {
        report
            .lines()
            .find(|l| l.starts_with(route))
            .unwrap_or_else(|| panic!("no {route} in\n{report}"))
            .to_owned()
    };
    let n_plus_one = line("GET /n_plus_one");
    assert!(n_plus_one.contains(" n_plus_one "), "{n_plus_one}");
    let columns: Vec<&str> = n_plus_one.split_whitespace().collect();
    assert_eq!(columns[3], "3", "three requests: {n_plus_one}");
    assert!(
        n_plus_one.contains("10 queries of one statement per request"),
        "{n_plus_one}"
    );
    let repeated = line("GET /repeated");
    assert!(
        repeated.contains("the same call made 3 times in one request"),
        "{repeated}"
    );
    // The problems name no control route; the route table after them has every route.
    let (problems, numbers) = report
        .split_once("loupe report: routes (slowest p95 first)\n")
        .unwrap_or_else(|| panic!("no route table in\n{report}"));
    assert!(!problems.contains("/control/"), "{report}");
    for route in ["GET /n_plus_one", "GET /repeated", "GET /control/fast"] {
        let row = numbers
            .lines()
            .find(|l| l.starts_with(&format!("{route} ")))
            .unwrap_or_else(|| panic!("no {route} row in\n{numbers}"));
        assert_eq!(row.split_whitespace().nth(2), Some("3"), "{row}");
    }
    // No live view in report mode: the report is all stdout holds.
    assert!(!report.contains("  call "), "{report}");
}
