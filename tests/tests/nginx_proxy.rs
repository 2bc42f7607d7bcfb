//! nginx as people run it: a reverse proxy in front of an app over an upstream keep-alive pool,
//! one worker serving many clients at once. Every request carries a unique id in its path, and
//! nginx passes the path on, so each upstream call can be checked against the request that made
//! it: nearly all must sit under their own request, none under another.

use std::collections::HashMap;

use loupe_tests::{
    client::concurrently,
    jaeger::{Jaeger, Span},
    procs::{Downstream, Loupe, Nginx, args},
    require_root,
};

const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 10;

#[test]
fn nginx_upstream_calls_nest_under_the_request_that_made_them() {
    require_root();
    let jaeger = Jaeger::start();
    let app = Downstream::start();
    let nginx = Nginx::proxy(&app.addr);
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--otlp-endpoint",
        &jaeger.grpc_endpoint(),
    ]));

    concurrently(
        &nginx.addr,
        CLIENTS,
        REQUESTS_PER_CLIENT,
        |client, request| (format!("/sleep/c{client}r{request}?ms=5"), ()),
    );
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("runs each event to completion (nginx)"),
        "{}",
        finished.stderr
    );

    let total = CLIENTS * REQUESTS_PER_CLIENT;
    let spans = jaeger.wait_for_spans("nginx", 2 * total, |_| true);
    let servers: HashMap<&str, &Span> = spans
        .iter()
        .filter(|s| s.kind() == "server")
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let calls: Vec<&Span> = spans.iter().filter(|s| s.kind() == "client").collect();
    assert_eq!(servers.len(), total, "one SERVER span per request");
    assert_eq!(calls.len(), total, "one upstream call per request");

    let path = |span: &Span| span.str_tag("url.path").unwrap_or_default().to_owned();
    let mut right = 0;
    let mut wrong = Vec::new();
    let mut unnested = Vec::new();
    for call in &calls {
        match call.parent.as_deref().and_then(|id| servers.get(id)) {
            Some(parent) if path(parent) == path(call) => right += 1,
            Some(parent) => wrong.push(format!("{} under {}", path(call), path(parent))),
            None => unnested.push(call),
        }
    }
    eprintln!(
        "nginx: {right} of {total} upstream calls under their request, {} un-nested, {} wrong",
        unnested.len(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} upstream calls under another request: {wrong:?}",
        wrong.len()
    );
    assert!(
        right * 100 >= total * 99,
        "only {right} of {total} upstream calls under their request; unnested: {:?}",
        unnested
            .iter()
            .map(|c| (path(c), c.str_tag("loupe.parent").map(str::to_owned)))
            .collect::<Vec<_>>()
    );
    assert!(
        unnested.iter().all(|c| c.str_tag("loupe.parent").is_some()),
        "every un-nested call says why"
    );
    let summary = finished.summary();
    assert_eq!(summary["unnested_calls"], unnested.len() as u64);
}
