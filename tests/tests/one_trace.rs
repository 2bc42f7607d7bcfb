//! One trace across the processes of a host: nginx in front of a Python shop that queries
//! PostgreSQL and calls a downstream service, all three observed by one loupe. Without touching
//! the traffic, the callee's SERVER span becomes the child of the caller's CLIENT span, matched
//! by the connection (the caller's own address is the callee's peer) and the request's place on
//! it: one trace per request, from nginx down to the queries and the downstream's work, and the
//! shop's diagnosis unchanged.

use std::collections::HashMap;

use loupe_tests::{
    client::concurrently,
    jaeger::{Jaeger, Span},
    postgres::Postgres,
    procs::{DiagShop, Loupe, Nginx, args},
    require_root,
};

const CLIENTS: usize = 8;
const REQUESTS_PER_CLIENT: usize = 6;

fn path(span: &Span) -> &str {
    span.str_tag("url.path").unwrap_or_default()
}

#[test]
fn a_request_is_one_trace_through_nginx_the_app_and_its_downstream() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = DiagShop::start(&pg.url("shop"));
    let nginx = Nginx::proxy(&shop.addr);
    let mut flags = vec!["--otlp-endpoint".to_owned(), jaeger.grpc_endpoint()];
    for pid in [nginx.master_pid(), shop.pid()]
        .into_iter()
        .chain(shop.downstream_pids())
    {
        flags.extend(args(&["--pid", &pid.to_string()]));
    }
    let loupe = Loupe::attach(&flags);

    let expected = concurrently(&nginx.addr, CLIENTS, REQUESTS_PER_CLIENT, |client, n| {
        let route = if n % 2 == 0 {
            "/n_plus_one"
        } else {
            "/control/fast"
        };
        let path = format!("{route}/id-c{client}r{n}");
        (path.clone(), (route, path))
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let total = CLIENTS * REQUESTS_PER_CLIENT;
    // Per request: nginx's server and client spans, the shop's server span, and its calls (10
    // queries, or one call and the downstream's server span).
    let wanted = total * 3 + (total / 2) * 10 + (total / 2) * 2;
    let spans = jaeger.wait_for_spans("nginx", wanted, |_| true);
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.parent.as_deref() == Some(parent.span_id.as_str()))
            .collect()
    };
    let nginx_servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "nginx" && s.kind() == "server")
        .collect();
    assert_eq!(
        nginx_servers.len(),
        total,
        "one nginx SERVER span per request"
    );

    let mut failures = Vec::new();
    for (route, sent) in &expected {
        let Some(root) = nginx_servers.iter().find(|s| path(s) == sent) else {
            failures.push(format!("{sent}: no nginx span"));
            continue;
        };
        let trace: Vec<&Span> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let upstream = children(root);
        let [upstream] = upstream.as_slice() else {
            failures.push(format!("{sent}: nginx made {} calls", upstream.len()));
            continue;
        };
        let app = children(upstream);
        let [app] = app.as_slice() else {
            failures.push(format!(
                "{sent}: {} shop requests under nginx's call (trace of {} spans)",
                app.len(),
                trace.len()
            ));
            continue;
        };
        if path(app) != *sent || app.service == "nginx" || app.kind() != "server" {
            failures.push(format!("{sent}: under nginx's call sits {}", path(app)));
            continue;
        }
        let calls = children(app);
        match *route {
            "/n_plus_one" => {
                let queries = calls
                    .iter()
                    .filter(|c| c.str_tag("db.system.name") == Some("postgresql"))
                    .count();
                if queries != 10 || calls.len() != 10 {
                    failures.push(format!(
                        "{sent}: {queries} queries of {} calls",
                        calls.len()
                    ));
                }
                if app.patterns() != ["n_plus_one"] {
                    failures.push(format!("{sent}: the shop's patterns {:?}", app.patterns()));
                }
            }
            _ => {
                let [call] = calls.as_slice() else {
                    failures.push(format!("{sent}: {} calls", calls.len()));
                    continue;
                };
                let served = children(call);
                let ok =
                    matches!(served.as_slice(), [s] if s.kind() == "server" && path(s) == "/rates");
                if !ok {
                    failures.push(format!(
                        "{sent}: the downstream's span under the shop's call: {:?}",
                        served.iter().map(|s| path(s)).collect::<Vec<_>>()
                    ));
                }
            }
        }
        // One trace: every span of the request's tree is in the root's trace, and nothing else.
        let tree = 3 + calls.len() + calls.iter().map(|c| children(c).len()).sum::<usize>();
        if trace.len() != tree {
            failures.push(format!(
                "{sent}: its trace has {} spans, its tree {tree}",
                trace.len()
            ));
        }
    }
    // Nothing nested wrongly: every span's parent path matches where both carry one.
    for span in &spans {
        if let Some(parent) = span.parent.as_deref().and_then(|id| by_id.get(id))
            && span.kind() == "server"
            && parent.kind() == "client"
            && span.service != "nginx"
            && parent.service == "nginx"
            && path(span) != path(parent)
        {
            failures.push(format!("{} under {}", path(span), path(parent)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} requests are not one whole trace:\n{}\nloupe: {}",
        failures.len(),
        failures.join("\n"),
        finished.stderr
    );
}
