//! nginx, unmodified and started as Debian ships it (a master and a worker): loupe pointed at the
//! master follows it to the worker that serves.

use loupe_tests::{
    client::Client,
    jaeger::Jaeger,
    procs::{Loupe, Nginx, args},
    require_root,
};

#[test]
fn nginx_requests_become_spans_with_their_status_codes() {
    require_root();
    let jaeger = Jaeger::start();
    let nginx = Nginx::start();
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--otlp-endpoint",
        &jaeger.grpc_endpoint(),
    ]));
    let plan = [
        ("/", 200),
        ("/missing", 404),
        ("/", 200),
        ("/down", 503),
        ("/items/42", 200),
        ("/", 200),
    ];
    let mut client = Client::connect(&nginx.addr).unwrap();
    for (path, status) in plan {
        assert_eq!(client.get(path).unwrap().status, status, "{path}");
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("attached to 2 process(es)"),
        "the master and its worker: {}",
        finished.stderr
    );

    // No --service-name: the process name.
    let spans = jaeger.wait_for_spans("nginx", plan.len(), |s| s.kind() == "server");
    let seen: Vec<(String, i64)> = spans
        .iter()
        .map(|s| {
            (
                s.str_tag("url.path").unwrap().to_owned(),
                s.int_tag("http.response.status_code").unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = plan
        .iter()
        .map(|(p, s)| ((*p).to_owned(), i64::from(*s)))
        .collect();
    assert_eq!(seen, expected);
    let errors: Vec<&str> = spans
        .iter()
        .filter(|s| s.is_error())
        .map(|s| s.str_tag("url.path").unwrap())
        .collect();
    assert_eq!(
        errors,
        vec!["/down"],
        "5xx is an error on a server span, 404 is not"
    );
    assert_eq!(spans[4].operation, "GET /items/{id}");
    let worker_pid = spans[0]
        .process_tags
        .get("process.pid")
        .and_then(|v| v.as_i64())
        .unwrap();
    assert_ne!(
        worker_pid,
        i64::from(nginx.master_pid()),
        "the worker serves, not the master"
    );
    assert_eq!(
        spans[0]
            .process_tags
            .get("process.executable.name")
            .and_then(|v| v.as_str()),
        Some("nginx")
    );
}
