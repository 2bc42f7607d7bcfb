//! A Go service end to end (tests/apps/go_shop): net/http's server, a pgxpool in its default
//! statement-cache mode and a shared keep-alive HTTP client, against a real PostgreSQL, a real
//! Go downstream and a real Jaeger. Every request carries a unique id in its path, and so does
//! every outbound HTTP call it makes, so each span is checked against the request that made it.
//!
//! Go moves goroutines between OS threads: the thread that made a call says nothing about which
//! request made it. loupe reads the goroutine of every syscall instead, so a query the handler
//! runs nests under its request, and so does a downstream call (net/http's Transport writes it
//! from the connection's own goroutine: its uprobes say for whom). Never a call under a wrong
//! request; a call loupe cannot place stays un-nested, tagged `loupe.parent`, and counted.

use std::collections::{BTreeSet, HashMap};

use loupe_tests::{
    calls::{
        Audit, Routes, Sent, call_id, describe, is_http_call, route_and_id, same_or_fanned, show,
    },
    client::{Client, concurrently, get, get_each},
    go::{GoDownstream, GoShop, pgx_dsn},
    jaeger::{Jaeger, Span},
    postgres::{ORDER_BY_ID, ORDERS_OF_USER, Postgres},
    procs::{Loupe, otlp_args},
    queries::{assert_query_basics, is_db},
    require_root,
};

const SERVICE: &str = "go-shop";

/// What a route of the shop does: queries it runs, downstream calls it makes, and which calls
/// are a request's own (a call carries its request's id, /fanout's two `<id>-a` and `<id>-b`).
struct GoRoutes;

impl Routes for GoRoutes {
    fn queries_of(&self, route: &str) -> usize {
        match route {
            "item" | "mixed" | "fanout" | "sequential" => 1,
            "n_plus_one" => 6,
            _ => 0,
        }
    }

    fn calls_of(&self, route: &str) -> usize {
        match route {
            "call" | "mixed" | "sequential" => 1,
            "fanout" => 2,
            _ => 0,
        }
    }

    fn same_request(&self, call_id: &str, request_id: &str) -> bool {
        same_or_fanned(call_id, request_id)
    }
}

fn start_services(shop_env: &[(&str, &str)]) -> (Postgres, Jaeger, GoDownstream, GoShop) {
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let downstream = GoDownstream::start();
    let shop = GoShop::start_with_env(&pgx_dsn(pg.port, "shop"), &downstream.url(), shop_env);
    (pg, jaeger, downstream, shop)
}

/// Before loupe attaches: every pool connection opened with both statements prepared (`/warm`
/// holds them all at once), then every route `rounds` times from `threads` concurrent clients,
/// so keep-alive connections to the downstream are open too. What loupe then sees is a warm
/// service: Bind/Execute of cached statements, no Parse, no connection start-up.
/// The shop's routes that take an id, each with queries and calls of its own.
const ROUTES: &[&str] = &[
    "item",
    "n_plus_one",
    "call",
    "mixed",
    "fanout",
    "sequential",
];

fn warm(shop: &GoShop, threads: usize, rounds: usize) {
    assert_eq!(get(&shop.addr, "/health").status, 200, "GET /health");
    let warmed = get(&shop.addr, "/warm");
    assert_eq!(
        warmed.status,
        200,
        "GET /warm: {}",
        String::from_utf8_lossy(&warmed.body)
    );
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut client = Client::connect(&shop.addr).expect("connect to the shop");
                for n in 0..rounds {
                    for route in std::iter::once("health").chain(ROUTES.iter().copied()) {
                        let path = if route == "health" {
                            "/health".to_owned()
                        } else {
                            format!("/{route}/warm{t}x{n}")
                        };
                        client.get_ok(&path);
                    }
                }
            });
        }
    });
}

#[test]
fn go_calls_are_never_nested_under_a_wrong_request() {
    const THREADS: usize = 32;
    const PER_THREAD: usize = 15;
    require_root();
    let (_pg, jaeger, _downstream, shop) = start_services(&[]);
    warm(&shop, THREADS, 2);

    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        SERVICE,
        &[],
    ));
    // Each thread its own keep-alive connection; each request a unique id in its path.
    let requests: Vec<(&str, String)> = concurrently(&shop.addr, THREADS, PER_THREAD, |t, n| {
        let route = ROUTES[(t + n) % ROUTES.len()];
        let id = format!("t{t}r{n}");
        (format!("/{route}/{id}"), (route, id))
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.assert_told(&format!(
        "loupe: pid {} is a Go program: its calls nest under the request their goroutine serves",
        shop.pid()
    ));

    let sent = Sent::of(&requests, &GoRoutes);
    let spans = sent.spans(&jaeger, SERVICE);
    // Every nested call must be under the request that made it; every downstream call is one
    // span.
    let audit = Audit::of(&spans, &GoRoutes);
    let (servers, clients, parentless) = (&audit.servers, &audit.clients, &audit.parentless);
    audit.assert_sound(&sent, &GoRoutes, &finished, SERVICE);
    // Queries run on the handler's goroutine: every one nests under its request.
    let mut unnested_queries = Vec::new();
    for server in servers {
        let route = server
            .str_tag("url.path")
            .and_then(route_and_id)
            .map_or("", |(route, _)| route);
        let nested = audit.queries_under(server);
        if nested != GoRoutes.queries_of(route) {
            unnested_queries.push(format!(
                "{}: {nested} of {} queries nested",
                server.str_tag("url.path").unwrap_or(""),
                GoRoutes.queries_of(route)
            ));
        }
    }
    assert!(
        unnested_queries.is_empty(),
        "{} requests without all their queries:\n  {}",
        unnested_queries.len(),
        show(&unnested_queries)
    );
    // The Transport's writes are keyed by the goroutine that made the call: every downstream
    // call made by a handler nests too. A call from a goroutine the handler started (/fanout's
    // -a and -b) nests when runtime.newproc could tell the goroutine's id (all but those that
    // start a new batch of ids, about one in sixteen): never under another request.
    let fanned_out =
        |c: &Span| call_id(c).is_some_and(|id| id.ends_with("-a") || id.ends_with("-b"));
    let unnested_fanout = parentless
        .iter()
        .filter(|c| is_http_call(c) && fanned_out(c))
        .count();
    let fanout_calls = clients
        .iter()
        .filter(|c| is_http_call(c) && fanned_out(c))
        .count();
    eprintln!("go-shop: {unnested_fanout} of {fanout_calls} fan-out calls un-nested");
    assert!(
        unnested_fanout * 4 <= fanout_calls,
        "{unnested_fanout} of {fanout_calls} fan-out calls un-nested"
    );
    let unnested_http: Vec<String> = parentless
        .iter()
        .filter(|c| is_http_call(c) && !fanned_out(c))
        .map(|c| describe(c))
        .collect();
    assert!(
        unnested_http.is_empty(),
        "{} downstream calls un-nested:\n  {}",
        unnested_http.len(),
        show(&unnested_http)
    );
    // Under load too, N+1 and sequential calls are named on their routes and nowhere else;
    // /mixed (a query, then a call) may be named sequential when its query ran long enough to
    // matter; /fanout's calls overlap: never sequential.
    let mut misdiagnosed = Vec::new();
    for server in servers {
        let path = server.str_tag("url.path").unwrap_or("");
        let patterns = server.patterns();
        let fits = match route_and_id(path) {
            Some(("n_plus_one", _)) => patterns == ["n_plus_one"],
            Some(("sequential", _)) => {
                // Named when calling the two peers concurrently would save 30% of the request
                // (loupe's default): not when the request mostly waited for a free pool
                // connection between them.
                let durations: Vec<u64> = audit
                    .children(server)
                    .iter()
                    .map(|c| c.duration_us)
                    .collect();
                let saving = durations.iter().sum::<u64>() - durations.iter().max().unwrap_or(&0);
                if durations.len() == 2
                    && saving * 10 >= server.duration_us * 3 + server.duration_us / 10
                {
                    patterns == ["sequential_calls"]
                } else {
                    patterns.is_empty() || patterns == ["sequential_calls"]
                }
            }
            Some(("mixed", _)) => patterns.is_empty() || patterns == ["sequential_calls"],
            _ => patterns.is_empty(),
        };
        if !fits {
            misdiagnosed.push(audit.verdict(server));
        }
    }
    assert!(
        misdiagnosed.is_empty(),
        "patterns off their route:\n  {}",
        show(&misdiagnosed)
    );
    assert_eq!(
        clients.iter().filter(|s| is_db(s)).count(),
        sent.queries,
        "every query is one span"
    );
}

#[test]
fn pgx_attached_warm_sees_every_query_with_its_statement() {
    const ITEMS: usize = 10;
    const N_PLUS_ONES: usize = 5;
    require_root();
    // One P: goroutines share one running thread at a time, the closest Go comes to a thread
    // per request (loupe still must not take the thread for a key).
    let (pg, jaeger, _downstream, shop) = start_services(&[("GOMAXPROCS", "1")]);
    warm(&shop, 8, 3);

    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        SERVICE,
        &[],
    ));
    let mut paths = Vec::new();
    for n in 0..ITEMS {
        paths.push(format!("/item/i{n}"));
    }
    for n in 0..N_PLUS_ONES {
        paths.push(format!("/n_plus_one/n{n}"));
    }
    get_each(&shop.addr, paths.iter().map(String::as_str));
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let expected_queries = ITEMS + 6 * N_PLUS_ONES;
    let spans = jaeger.wait_for_requests(SERVICE, paths.len(), paths.len() + expected_queries);
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind() == "server").collect();
    let db: Vec<&Span> = spans.iter().filter(|s| is_db(s)).collect();
    let all_db = db
        .iter()
        .map(|s| describe(s))
        .collect::<Vec<_>>()
        .join("\n  ");
    eprintln!(
        "go-shop warm: {} server spans, {} query spans (of {expected_queries})\n{}",
        servers.len(),
        db.len(),
        finished.summary_line()
    );
    let mut server_paths: Vec<&str> = servers
        .iter()
        .map(|s| s.str_tag("url.path").unwrap_or(""))
        .collect();
    server_paths.sort_unstable();
    let mut expected_paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    expected_paths.sort_unstable();
    assert_eq!(server_paths, expected_paths, "one server span per request");
    assert_eq!(
        db.len(),
        expected_queries,
        "every query is a span:\n  {all_db}"
    );

    for query in &db {
        let what = describe(query);
        assert_query_basics(query, pg.port, &what);
        assert_eq!(
            query.str_tag("db.namespace"),
            Some("shop"),
            "the database of a session opened before loupe, from its server's title: {what}"
        );
        match (
            query.str_tag("db.query.text"),
            query.str_tag("loupe.db.statement_name"),
        ) {
            (Some(text), _) => assert!(
                text == ORDER_BY_ID || text == ORDERS_OF_USER,
                "normalized text: {what}"
            ),
            (None, Some(name)) => {
                // pgx names its cached statements stmtcache_<hash of the text>.
                assert!(name.starts_with("stmtcache_"), "pgx's name: {what}");
                assert_eq!(query.operation, format!("EXECUTE {name}"), "{what}");
            }
            (None, None) => panic!("neither the text nor the statement's name: {what}"),
        }
    }

    // Which request ran each query, from time alone (requests ran one at a time): its span lies
    // within the request's. Independent of nesting.
    let window = |query: &Span| {
        servers
            .iter()
            .copied()
            .find(|s| {
                s.start_us <= query.start_us
                    && query.start_us + query.duration_us <= s.start_us + s.duration_us
            })
            .unwrap_or_else(|| panic!("no request around {}", describe(query)))
    };
    let mut queries_of_request: HashMap<&str, Vec<&Span>> = HashMap::new();
    for query in &db {
        queries_of_request
            .entry(window(query).span_id.as_str())
            .or_default()
            .push(query);
    }
    let mut item_fingerprints = BTreeSet::new();
    let mut n_plus_one_fingerprints = BTreeSet::new();
    for server in &servers {
        let path = server.str_tag("url.path").unwrap_or("");
        let queries = queries_of_request
            .get(server.span_id.as_str())
            .cloned()
            .unwrap_or_default();
        let (expected, fingerprints) = if path.starts_with("/n_plus_one/") {
            (6, &mut n_plus_one_fingerprints)
        } else {
            (1, &mut item_fingerprints)
        };
        assert_eq!(queries.len(), expected, "queries within {path}");
        fingerprints.extend(
            queries
                .iter()
                .filter_map(|q| q.str_tag("loupe.db.fingerprint")),
        );
    }
    assert_eq!(
        item_fingerprints.len(),
        1,
        "one statement: {item_fingerprints:?}"
    );
    assert_eq!(
        n_plus_one_fingerprints.len(),
        1,
        "one statement, six values: {n_plus_one_fingerprints:?}"
    );
    assert_ne!(item_fingerprints, n_plus_one_fingerprints);

    // ---- Parents and the N+1 finding. ------------------------------------------------------
    // The handler's goroutine runs every query: each one nests under the request that ran it,
    // so N+1 is found on every /n_plus_one request and never on /item.
    let unnested: Vec<&&Span> = db.iter().filter(|q| q.parent.is_none()).collect();
    assert!(
        unnested.is_empty(),
        "every query nests under its request: {:?}",
        unnested.iter().map(|q| describe(q)).collect::<Vec<_>>()
    );
    for query in &db {
        match query.parent.as_deref() {
            Some(parent) => assert_eq!(
                parent,
                window(query).span_id,
                "nested under the request that ran it: {}",
                describe(query)
            ),
            None => assert!(
                matches!(query.str_tag("loupe.parent"), Some("ambiguous" | "none")),
                "a parentless query says why: {}",
                describe(query)
            ),
        }
    }
    assert_eq!(
        finished.summary().get("unnested_calls").copied(),
        Some(unnested.len() as u64),
        "unnested_calls counts every parentless query\n{}",
        finished.stderr
    );
    let mut diagnosed = 0;
    for server in &servers {
        let path = server.str_tag("url.path").unwrap_or("");
        let patterns = server.patterns();
        if path.starts_with("/item/") {
            assert!(
                !patterns.iter().any(|p| p == "n_plus_one"),
                "{path} runs one query: {patterns:?}"
            );
            continue;
        }
        let nested = queries_of_request[server.span_id.as_str()]
            .iter()
            .filter(|q| q.parent.as_deref() == Some(server.span_id.as_str()))
            .count();
        assert_eq!(nested, 6, "{path}: its six queries nested under it");
        assert_eq!(
            patterns,
            ["n_plus_one"],
            "{path}: six queries of one statement, one after another"
        );
        diagnosed += 1;
    }
    assert_eq!(diagnosed, N_PLUS_ONES);
}

#[test]
fn a_stripped_go_binary_nests_its_transport_calls_too() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 10;
    const STRIPPED_ROUTES: &[&str] = &["call", "mixed", "fanout"];
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let downstream = GoDownstream::start();
    // No .symtab, no DWARF: the functions loupe probes are found in Go's own .gopclntab.
    let shop = GoShop::start_stripped(&pgx_dsn(pg.port, "shop"), &downstream.url());
    warm(&shop, THREADS, 1);
    let service = "go-shop-stripped";
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        service,
        &[],
    ));
    let requests: Vec<(&str, String)> = concurrently(&shop.addr, THREADS, PER_THREAD, |t, n| {
        let route = STRIPPED_ROUTES[(t + n) % STRIPPED_ROUTES.len()];
        let id = format!("s{t}r{n}");
        (format!("/{route}/{id}"), (route, id))
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.assert_told(&format!("in pid {} (3 uprobes)", shop.pid()));

    let sent = Sent::of(&requests, &GoRoutes);
    let spans = sent.spans(&jaeger, service);
    let audit = Audit::of(&spans, &GoRoutes);
    audit.assert_sound(&sent, &GoRoutes, &finished, service);
    // A handler's own call is written by the Transport's goroutine: it nests only through the
    // uprobes, which found their functions without symbols.
    let own_calls: Vec<&Span> = audit
        .clients
        .iter()
        .copied()
        .filter(|c| is_http_call(c) && call_id(c).is_some_and(|id| !id.contains('-')))
        .collect();
    let unnested: Vec<String> = own_calls
        .iter()
        .filter(|c| c.parent.is_none())
        .map(|c| describe(c))
        .collect();
    assert!(
        !own_calls.is_empty() && unnested.is_empty(),
        "{} of {} handler calls un-nested:\n  {}",
        unnested.len(),
        own_calls.len(),
        show(&unnested)
    );
}
