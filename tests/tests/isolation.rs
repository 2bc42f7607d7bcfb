//! loupe reports only the processes it was pointed at.

use loupe_tests::{
    client::get,
    jaeger::Jaeger,
    procs::{DemoApp, Loupe, otlp_args},
    require_root,
};

#[test]
fn traffic_of_processes_loupe_was_not_pointed_at_is_not_reported() {
    require_root();
    let jaeger = Jaeger::start();
    let watched = DemoApp::start();
    let other = DemoApp::start();
    let loupe = Loupe::attach(&otlp_args(
        watched.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "watched",
        &[],
    ));
    for i in 0..3 {
        get(&watched.frontend_addr, &format!("/api/users/{i}"));
        get(&other.frontend_addr, &format!("/api/users/{i}"));
        get(&other.frontend_addr, "/api/checkout?user=1");
        // The unwatched backend, called directly.
        get(&watched.backend_addr, "/score");
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let spans = jaeger.wait_for_spans("watched", 3, |s| s.kind() == "server");
    let watched_port: i64 = watched
        .frontend_addr
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        spans.len(),
        3,
        "{:#?}",
        spans.iter().map(|s| &s.operation).collect::<Vec<_>>()
    );
    for span in &spans {
        assert_eq!(span.kind(), "server");
        assert_eq!(span.int_tag("server.port"), Some(watched_port));
        assert_eq!(
            span.process_tags
                .get("process.pid")
                .and_then(|v| v.as_i64()),
            Some(i64::from(watched.frontend_pid()))
        );
    }
    assert_eq!(jaeger.services(), vec!["watched".to_owned()]);
}
