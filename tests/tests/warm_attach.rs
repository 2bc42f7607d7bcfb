//! Attaching to a warm service: an asyncio shop (tests/apps/async_shop.py) whose asyncpg pool
//! has already opened its 4 connections and prepared both of its statements on each before loupe
//! starts. loupe never sees those connections' start-up or the statements' Parse: from then on
//! every query is a Bind/Execute/Sync naming `__asyncpg_stmt_<n>__`. It must still make one span
//! of each, to the right server, with the statement's text or its name, nested under the request
//! that ran it, and find the N+1 route.

use loupe_tests::{
    client::{Client, get_each},
    jaeger::Jaeger,
    postgres::{ORDER_BY_ID, ORDERS_OF_USER, Postgres},
    procs::{AsyncShop, Loupe, otlp_args},
    queries::{
        assert_query_basics, assert_served, dump, is_db, nested_counts, queries_under,
        servers_by_path,
    },
    require_root,
};

const SERVICE: &str = "e2e-asyncpg-warm";
const POOL_SIZE: usize = 4;

/// Every route, from 8 clients at once (twice the pool), until each of the pool's connections
/// has prepared both statements (the server's log says so); at most 10 rounds.
fn warm_up(shop: &AsyncShop, pg: &Postgres) {
    pg.prepare_on_each(&[ORDER_BY_ID, ORDERS_OF_USER], POOL_SIZE, |round| {
        std::thread::scope(|scope| {
            for client in 0..8 {
                scope.spawn(move || {
                    let mut http = Client::connect(&shop.addr).expect("connect to the async shop");
                    for i in 0..10 {
                        let id = 10_000 * (round + 1) + 100 * client + i;
                        let mut paths = [format!("/item/{id}"), format!("/n_plus_one/{id}")];
                        if (client + i) % 2 == 1 {
                            paths.reverse();
                        }
                        for path in paths.iter().map(String::as_str).chain(["/health"]) {
                            let response = http
                                .get(path)
                                .unwrap_or_else(|err| panic!("warm-up GET {path}: {err}"));
                            assert_eq!(response.status, 200, "warm-up GET {path}");
                        }
                    }
                });
            }
        });
    });
}

#[test]
fn asyncpg_attached_warm_sees_every_query() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = AsyncShop::start(&format!("postgresql://postgres@127.0.0.1:{}/shop", pg.port));
    warm_up(&shop, &pg);
    let prepared = pg.prepared();
    let names = &prepared.names;
    let log_before = pg.log().len();

    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        SERVICE,
        &[],
    ));
    // Path, queries the request runs, their statement; each request's id is its own.
    let mut requests: Vec<(String, usize, &str)> = Vec::new();
    requests.extend((1..=10).map(|id| (format!("/item/{id}"), 1, ORDER_BY_ID)));
    requests.extend((21..=24).map(|id| (format!("/n_plus_one/{id}"), 6, ORDERS_OF_USER)));
    // One at a time on one keep-alive connection, on the shop's one loop thread: each query can
    // only belong to the request in flight.
    get_each(
        &shop.addr,
        requests.iter().map(|(path, _, _)| path.as_str()),
    );
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let log_after = pg.log();
    assert!(
        !log_after[log_before..].contains(" ms  parse "),
        "the test's premise: nothing was prepared after loupe attached\n{}",
        &log_after[log_before..]
    );

    let expected_db: usize = requests.iter().map(|(_, n, _)| n).sum();
    assert_eq!(expected_db, 10 + 24);
    let spans = jaeger.wait_for_spans(SERVICE, requests.len() + expected_db, |s| {
        s.kind() == "server" || is_db(s)
    });
    let servers = servers_by_path(&spans);
    let context = format!(
        "queries nested per request (want 1 per /item, 6 per /n_plus_one): {}\nprepared before attaching: {names:?}\nspans:\n{}\nloupe: {}",
        nested_counts(&spans, requests.iter().map(|(path, _, _)| path.as_str())),
        dump(&spans),
        finished.stderr
    );
    assert_served(
        &servers,
        requests.iter().map(|(path, _, _)| path.as_str()),
        &context,
    );

    let db: Vec<_> = spans.iter().filter(|s| is_db(s)).collect();
    assert_eq!(
        db.len(),
        expected_db,
        "every query on a warm connection is one span: 10 /item, 4 x 6 /n_plus_one\n{context}"
    );
    for span in &db {
        let id = &span.span_id;
        assert_query_basics(span, pg.port, &context);
        assert_eq!(
            span.str_tag("db.namespace"),
            Some("shop"),
            "the database of a session opened before loupe, from its server's title: {context}"
        );
        match (
            span.str_tag("db.query.text"),
            span.str_tag("loupe.db.statement_name"),
        ) {
            (Some(text), _) => {
                assert!(
                    text == ORDER_BY_ID || text == ORDERS_OF_USER,
                    "{id}: `{text}`\n{context}"
                );
                assert_eq!(span.operation, "SELECT orders", "{id}\n{context}");
            }
            (None, Some(name)) => {
                assert!(
                    names.contains_key(name),
                    "{id}: `{name}` is one of the statements asyncpg prepared\n{context}"
                );
                assert_eq!(span.operation, format!("EXECUTE {name}"), "{id}\n{context}");
            }
            (None, None) => {
                panic!("{id} has neither db.query.text nor loupe.db.statement_name\n{context}")
            }
        }
    }

    for (path, count, text) in &requests {
        let server = servers[path.as_str()];
        let under = queries_under(&spans, server);
        assert_eq!(
            under.len(),
            *count,
            "GET {path} ran {count} queries, each nested under it\n{context}"
        );
        for query in &under {
            assert_eq!(query.trace_id, server.trace_id);
            // The statement the request ran: its text, or the text its name was prepared with.
            let ran = prepared.statement_of(query);
            assert_eq!(ran, Some(*text), "GET {path}\n{context}");
            assert!(
                query.start_us >= server.start_us
                    && query.start_us + query.duration_us <= server.start_us + server.duration_us,
                "GET {path}: the query lies within its request\n{context}"
            );
        }
        let patterns = server.patterns();
        assert_eq!(
            patterns.iter().any(|p| p == "n_plus_one"),
            path.starts_with("/n_plus_one/"),
            "GET {path}: patterns {patterns:?}\n{context}"
        );
    }
}
