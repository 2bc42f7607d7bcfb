//! Event loops under concurrency: Node (node:http + node-postgres) and Python asyncio (FastAPI on
//! uvicorn + asyncpg) serve many requests on one thread, and loupe cannot see their tasks yet.
//! With several requests in flight on the loop, a query's request is not certain: it must stay
//! un-nested, say so (`loupe.parent`) and be counted, and never sit under a wrong request.

use loupe_tests::{
    client::concurrently,
    jaeger::{Jaeger, Span},
    node::NodeShop,
    postgres::Postgres,
    procs::{AsyncShop, Finished, Loupe, otlp_args},
    queries::{is_db, servers_by_path},
    require_root,
};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 12;

/// The queries a route runs.
fn queries_of(route: &str) -> usize {
    match route {
        "item" | "named" => 1,
        "n_plus_one" => 6,
        _ => 0,
    }
}

/// Drives `routes` from `CLIENTS` keep-alive clients at once, each request with an id of its own;
/// returns the paths sent.
fn drive(addr: &str, routes: &[&'static str]) -> Vec<String> {
    concurrently(addr, CLIENTS, PER_CLIENT, |c, n| {
        // Numeric ids: the shops take the id as a number.
        let path = format!("/{}/{}", routes[(c + n) % routes.len()], c * 100 + n);
        (path.clone(), path)
    })
}

/// No query under a wrong request, every parentless one marked and counted.
fn check(spans: &[Span], sent: &[String], finished: &Finished, who: &str) {
    let servers = servers_by_path(spans);
    for path in sent {
        assert!(
            servers.contains_key(path.as_str()),
            "{who}: no server span for {path}"
        );
    }
    let by_id: std::collections::HashMap<&str, &Span> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let queries: Vec<&Span> = spans.iter().filter(|s| is_db(s)).collect();
    let expected: usize = sent
        .iter()
        .map(|p| queries_of(p.split('/').nth(1).unwrap_or("")))
        .sum();
    assert_eq!(queries.len(), expected, "{who}: every query is one span");
    let mut under: std::collections::HashMap<&str, usize> = Default::default();
    let mut parentless = 0;
    for query in &queries {
        match query.parent.as_deref() {
            None => {
                parentless += 1;
                assert!(
                    matches!(query.str_tag("loupe.parent"), Some("ambiguous" | "none")),
                    "{who}: a parentless query says why: {:?}",
                    query.tags
                );
            }
            Some(parent) => {
                let server = by_id
                    .get(parent)
                    .unwrap_or_else(|| panic!("{who}: parent {parent} not in Jaeger"));
                let path = server.str_tag("url.path").unwrap_or_default();
                let route = path.split('/').nth(1).unwrap_or("");
                let count = under.entry(server.span_id.as_str()).or_default();
                *count += 1;
                assert!(
                    *count <= queries_of(route),
                    "{who}: query #{count} under {path}, which runs {}",
                    queries_of(route)
                );
                let text = query.str_tag("db.query.text").unwrap_or_default();
                let by_user = text.contains("user_id");
                assert_eq!(
                    by_user,
                    route == "n_plus_one",
                    "{who}: `{text}` under {path}: another route's query"
                );
            }
        }
    }
    let summary = finished.summary();
    eprintln!(
        "{who}: {} queries, {parentless} un-nested ({} ambiguous in the summary), no wrong parent",
        queries.len(),
        summary["ambiguous_calls"]
    );
    assert_eq!(
        summary["unnested_calls"], parentless as u64,
        "{who}: every un-nested query is counted"
    );
    assert!(
        parentless > 0,
        "{who}: with {CLIENTS} clients at once some queries had more than one candidate"
    );
}

fn run(who: &str, pid: u32, addr: &str, routes: &[&'static str], jaeger: &Jaeger) {
    let loupe = Loupe::attach(&otlp_args(pid, &jaeger.grpc_endpoint(), who, &[]));
    let sent = drive(addr, routes);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let wanted = sent.len()
        + sent
            .iter()
            .map(|p| queries_of(p.split('/').nth(1).unwrap_or("")))
            .sum::<usize>();
    let spans = jaeger.wait_for_spans(who, wanted, |_| true);
    check(&spans, &sent, &finished, who);
}

#[test]
fn node_and_asyncio_never_nest_a_query_under_a_wrong_request() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let node = NodeShop::start(&format!("postgres://postgres@127.0.0.1:{}/shop", pg.port));
    run(
        "e2e-node-load",
        node.pid(),
        &node.addr,
        &["item", "named", "n_plus_one"],
        &jaeger,
    );
    let asyncio = AsyncShop::start(&format!("postgresql://postgres@127.0.0.1:{}/shop", pg.port));
    run(
        "e2e-asyncio-load",
        asyncio.pid(),
        &asyncio.addr,
        &["item", "n_plus_one"],
        &jaeger,
    );
}
