//! node-postgres end to end: a Node.js shop (tests/apps/node_shop) whose pool speaks the
//! extended protocol with no libpq, writing each query's Parse, Bind, Describe, Execute and Sync
//! with one writev of one iovec per message. loupe sees every query on the wire, once, named and
//! normalized, nested under the request that ran it, and the N+1 route is diagnosed. A route
//! that runs one query twice with the same bound value is a repeated call: only a reader of the
//! whole writev (the Bind is its second iovec) can tell.

use std::collections::HashMap;

use loupe_tests::{
    client::get_each,
    jaeger::Jaeger,
    node::NodeShop,
    postgres::{ORDER_BY_ID, ORDERS_OF_USER, Postgres},
    procs::{Loupe, otlp_args},
    queries::{
        assert_query_basics, assert_served, dump, is_db, nested_counts, queries_under,
        servers_by_path,
    },
    require_root,
};

const SERVICE: &str = "e2e-node-pg";

/// One request the test makes: its path, the queries it runs (all of one statement), and the
/// patterns its server span must carry, exactly.
#[derive(Clone)]
struct Request {
    path: String,
    queries: usize,
    text: &'static str,
    patterns: &'static [&'static str],
}

fn batch(
    route: &str,
    ids: std::ops::RangeInclusive<u32>,
    queries: usize,
    text: &'static str,
    patterns: &'static [&'static str],
) -> Vec<Request> {
    ids.map(|id| Request {
        path: format!("/{route}/{id}"),
        queries,
        text,
        patterns,
    })
    .collect()
}

#[test]
fn node_postgres_queries_are_spans_nested_one_request_at_a_time() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = NodeShop::start(&format!("postgres://postgres@127.0.0.1:{}/shop", pg.port));
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        SERVICE,
        &[],
    ));

    // Each request's id is its own.
    let requests: Vec<Request> = [
        batch("item", 1..=10, 1, ORDER_BY_ID, &[]),
        batch("named", 11..=15, 1, ORDER_BY_ID, &[]),
        batch("n_plus_one", 16..=19, 6, ORDERS_OF_USER, &["n_plus_one"]),
        batch("repeated", 20..=22, 2, ORDER_BY_ID, &["repeated_call"]),
    ]
    .concat();
    // One at a time on one keep-alive connection: each query can only belong to one request.
    get_each(&shop.addr, requests.iter().map(|r| r.path.as_str()));
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let expected_db: usize = requests.iter().map(|r| r.queries).sum();
    assert_eq!(expected_db, 10 + 5 + 24 + 6);
    let spans = jaeger.wait_for_spans(SERVICE, requests.len() + expected_db, |s| {
        s.kind() == "server" || is_db(s)
    });
    let servers = servers_by_path(&spans);
    let context = format!(
        "queries nested per request (want 1 per /item and /named, 6 per /n_plus_one, 2 per /repeated): {}\nspans:\n{}\nloupe: {}",
        nested_counts(&spans, requests.iter().map(|r| r.path.as_str())),
        dump(&spans),
        finished.stderr
    );
    assert_served(&servers, requests.iter().map(|r| r.path.as_str()), &context);

    let db: Vec<_> = spans.iter().filter(|s| is_db(s)).collect();
    assert_eq!(
        db.len(),
        expected_db,
        "every query is one span: 10 /item, 5 /named, 4 x 6 /n_plus_one, 3 x 2 /repeated\n{context}"
    );
    let mut fingerprints: HashMap<&str, &str> = HashMap::new();
    for span in &db {
        let id = &span.span_id;
        assert_eq!(span.operation, "SELECT orders", "{id}\n{context}");
        let text = span
            .str_tag("db.query.text")
            .unwrap_or_else(|| panic!("{id} has no db.query.text\n{context}"));
        assert!(
            text == ORDER_BY_ID || text == ORDERS_OF_USER,
            "{id}: `{text}`\n{context}"
        );
        let fingerprint = assert_query_basics(span, pg.port, &context);
        assert_eq!(
            *fingerprints.entry(text).or_insert(fingerprint),
            fingerprint,
            "{id}: one statement, one fingerprint, named or not\n{context}"
        );
    }
    assert_ne!(
        fingerprints.get(ORDER_BY_ID),
        fingerprints.get(ORDERS_OF_USER)
    );

    for Request {
        path,
        queries: count,
        text,
        patterns: expected,
    } in &requests
    {
        let server = servers[path.as_str()];
        let under = queries_under(&spans, server);
        assert_eq!(
            under.len(),
            *count,
            "GET {path} ran {count} queries, each nested under it\n{context}"
        );
        for query in &under {
            assert_eq!(query.trace_id, server.trace_id);
            assert_eq!(query.str_tag("db.query.text"), Some(*text), "GET {path}");
            assert!(
                query.start_us >= server.start_us
                    && query.start_us + query.duration_us <= server.start_us + server.duration_us,
                "GET {path}: the query lies within its request\n{context}"
            );
        }
        let mut patterns = server.patterns();
        patterns.sort();
        assert_eq!(patterns, *expected, "GET {path}: patterns\n{context}");
    }
}
