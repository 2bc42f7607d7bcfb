//! The demo shop under loupe, asserted through Jaeger's query API: one SERVER span per request,
//! durations inside what the client measured (and close to it on the slow routes), outbound calls as CLIENT children of the right
//! request, slow flags exactly where the routes are slow, and the semantic-convention attributes.

use loupe_tests::{
    client::Client,
    jaeger::{Jaeger, Span},
    procs::{DemoApp, Loupe, otlp_args},
    require_root,
};

struct Sent {
    path: &'static str,
    status: u16,
    elapsed_us: u64,
}

const ROUTES: &[(&str, &str, u16)] = &[
    ("GET", "/api/users/1", 200),
    ("GET", "/api/users/2", 200),
    ("GET", "/api/checkout?user=11", 200),
    ("GET", "/api/users/3", 200),
    ("GET", "/api/checkout?user=12", 200),
    ("GET", "/api/missing", 502),
    ("GET", "/api/fail", 500),
    ("GET", "/api/stream", 200),
    ("POST", "/api/orders", 201),
    ("GET", "/api/slow", 200),
    ("GET", "/api/checkout/slow", 200),
    ("GET", "/api/users/4", 200),
];

fn server_spans(spans: &[Span]) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind() == "server").collect()
}

#[test]
fn demo_requests_become_nested_spans_in_jaeger_with_slow_flags_and_attributes() {
    require_root();
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let service = "e2e-demo";
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        service,
        &[],
    ));

    let mut client = Client::connect(&demo.frontend_addr).expect("connect to the demo");
    let mut sent = Vec::new();
    for &(method, path, status) in ROUTES {
        let body: &[u8] = if method == "POST" {
            br#"{"item":"book"}"#
        } else {
            b""
        };
        let response = client.request(method, path, body).expect("request");
        assert_eq!(response.status, status, "{method} {path}");
        sent.push(Sent {
            path,
            status,
            elapsed_us: response.elapsed.as_micros() as u64,
        });
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_eq!(summary["events_lost"], 0);
    assert_eq!(summary["spans_dropped"], 0);

    let spans = jaeger.wait_for_spans(service, ROUTES.len(), |s| s.kind() == "server");
    let servers = server_spans(&spans);
    assert_eq!(
        servers.len(),
        ROUTES.len(),
        "one server span per request: {:#?}\nloupe: {}",
        servers.iter().map(|s| &s.operation).collect::<Vec<_>>(),
        finished.stderr
    );

    // The client sent one request at a time, so server spans in start order are the requests.
    for (span, request) in servers.iter().zip(&sent) {
        let (path, _) = request.path.split_once('?').unwrap_or((request.path, ""));
        assert_eq!(span.str_tag("url.path"), Some(path));
        assert_eq!(
            span.int_tag("http.response.status_code"),
            Some(i64::from(request.status))
        );
        assert!(
            span.duration_us <= request.elapsed_us,
            "{}: the server span ({} us) lies inside what the client measured ({} us)",
            request.path,
            span.duration_us,
            request.elapsed_us
        );
        // Where the route itself takes long (the planted slow ones), the span covers nearly
        // all of what the client waited; on fast routes the client's own scheduling on a busy
        // machine can be most of it, so only the inclusion above holds there.
        if request.elapsed_us >= 100_000 {
            let slack = request.elapsed_us / 10 + 20_000;
            assert!(
                request.elapsed_us - span.duration_us <= slack,
                "{}: span {} us vs client {} us",
                request.path,
                span.duration_us,
                request.elapsed_us
            );
        }
    }

    // Attributes, resource and naming.
    let users = servers
        .iter()
        .find(|s| s.str_tag("url.path") == Some("/api/users/3"))
        .unwrap();
    let frontend_port: i64 = demo
        .frontend_addr
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(users.operation, "GET /api/users/{id}");
    assert_eq!(users.str_tag("http.request.method"), Some("GET"));
    assert_eq!(users.str_tag("http.route"), Some("/api/users/{id}"));
    assert_eq!(users.str_tag("server.address"), Some("127.0.0.1"));
    assert_eq!(users.int_tag("server.port"), Some(frontend_port));
    assert_eq!(users.str_tag("client.address"), Some("127.0.0.1"));
    assert_eq!(users.str_tag("network.peer.address"), Some("127.0.0.1"));
    assert!(users.int_tag("network.peer.port").is_some_and(|p| p > 0));
    assert_eq!(users.int_tag("http.request.body.size"), Some(0));
    assert!(
        users
            .int_tag("http.response.body.size")
            .is_some_and(|n| n > 0)
    );
    assert!(!users.is_error() && !users.is_slow());
    assert_eq!(users.service, service);
    assert_eq!(
        users
            .process_tags
            .get("process.pid")
            .and_then(|v| v.as_i64()),
        Some(i64::from(demo.frontend_pid()))
    );
    assert_eq!(
        users
            .process_tags
            .get("process.executable.name")
            .and_then(|v| v.as_str()),
        Some("demo-app")
    );
    assert!(users.process_tags.contains_key("host.name"));
    let post = servers
        .iter()
        .find(|s| s.operation == "POST /api/orders")
        .unwrap();
    assert_eq!(post.int_tag("http.request.body.size"), Some(15));
    assert_eq!(post.int_tag("http.response.status_code"), Some(201));

    // Query values never reach Jaeger.
    let checkout = servers
        .iter()
        .find(|s| s.operation == "GET /api/checkout")
        .unwrap();
    assert_eq!(checkout.str_tag("url.query"), Some("user=?"));
    for span in &spans {
        for value in span.tags.values() {
            let text = value.to_string();
            assert!(
                !text.contains("user=11") && !text.contains("user=12"),
                "{}: {text}",
                span.operation
            );
        }
    }

    // Outbound calls: CLIENT children of the request that made them, in its trace.
    let clients: Vec<&Span> = spans.iter().filter(|s| s.kind() == "client").collect();
    assert_eq!(
        clients.len(),
        4,
        "{:#?}",
        clients.iter().map(|s| &s.operation).collect::<Vec<_>>()
    );
    let backend_port: i64 = demo
        .backend_addr
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for call in &clients {
        let parent = servers
            .iter()
            .find(|s| Some(&s.span_id) == call.parent.as_ref())
            .unwrap_or_else(|| panic!("{} has no server parent", call.operation));
        assert_eq!(parent.trace_id, call.trace_id);
        // `http.route` is a server's attribute; a client's templated path is `url.template`.
        assert_eq!(call.str_tag("http.route"), None, "{}", call.operation);
        assert_eq!(
            call.str_tag("url.template"),
            call.operation.split_once(' ').map(|(_, route)| route),
            "{}",
            call.operation
        );
        assert!(call.start_us >= parent.start_us);
        assert!(call.start_us + call.duration_us <= parent.start_us + parent.duration_us);
        assert_eq!(call.int_tag("server.port"), Some(backend_port));
        let expected_parent = match call.operation.as_str() {
            "GET /score" => "GET /api/checkout",
            "GET /score/slow" => "GET /api/checkout/slow",
            "GET /missing" => "GET /api/missing",
            other => panic!("unexpected call {other}"),
        };
        assert_eq!(parent.operation, expected_parent);
    }
    let missing_call = clients
        .iter()
        .find(|s| s.operation == "GET /missing")
        .unwrap();
    assert!(
        missing_call.is_error(),
        "a 404 from a dependency is an error on the client span"
    );
    assert_eq!(missing_call.int_tag("http.response.status_code"), Some(404));
    let score = clients
        .iter()
        .find(|s| s.operation == "GET /score")
        .unwrap();
    assert_eq!(score.str_tag("url.query"), Some("user=?"));

    // Errors.
    let errors: Vec<&str> = servers
        .iter()
        .filter(|s| s.is_error())
        .map(|s| s.operation.as_str())
        .collect();
    assert_eq!(errors, vec!["GET /api/missing", "GET /api/fail"]);

    // Slow flags exactly on the slow routes, with their own thresholds.
    let mut slow: Vec<(&str, &str, i64)> = spans
        .iter()
        .filter(|s| s.is_slow())
        .map(|s| {
            (
                s.kind(),
                s.operation.as_str(),
                s.int_tag("performance.threshold_ms").unwrap(),
            )
        })
        .collect();
    slow.sort();
    assert_eq!(
        slow,
        vec![
            ("client", "GET /score/slow", 2000),
            ("server", "GET /api/checkout/slow", 1000),
            ("server", "GET /api/slow", 1000),
        ]
    );
    let slow_route = servers
        .iter()
        .find(|s| s.operation == "GET /api/slow")
        .unwrap();
    let ratio = slow_route
        .tag("performance.slowness_ratio")
        .and_then(|v| v.as_f64())
        .unwrap();
    assert!((1.15..1.5).contains(&ratio), "1.2 s over 1 s: {ratio}");

    // The backend is not a target: its routes never show up as server spans.
    assert!(
        !servers
            .iter()
            .any(|s| s.operation.starts_with("GET /score"))
    );
    assert!(jaeger.services().contains(&service.to_owned()));
}

#[test]
fn otlp_over_http_reaches_jaeger_too() {
    require_root();
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.http_endpoint(),
        "e2e-http",
        &["--otlp-protocol", "http", "--slow-http", "100ms"],
    ));
    let mut client = Client::connect(&demo.frontend_addr).unwrap();
    for path in ["/api/users/1", "/api/users/2", "/api/slow"] {
        client.get(path).unwrap();
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let spans = jaeger.wait_for_spans("e2e-http", 3, |s| s.kind() == "server");
    assert_eq!(server_spans(&spans).len(), 3);
    let slow: Vec<&str> = spans
        .iter()
        .filter(|s| s.is_slow())
        .map(|s| s.operation.as_str())
        .collect();
    assert_eq!(
        slow,
        vec!["GET /api/slow"],
        "--slow-http 100ms moves the threshold"
    );
    let ratio = spans
        .iter()
        .find(|s| s.is_slow())
        .unwrap()
        .tag("performance.slowness_ratio")
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(ratio > 10.0, "1.2 s over 100 ms: {ratio}");
}
