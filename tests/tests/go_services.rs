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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use loupe_tests::{
    client::{Client, concurrently, get, get_each},
    go::{GoDownstream, GoShop, pgx_dsn},
    jaeger::{Jaeger, Span},
    postgres::{ORDER_BY_ID, ORDERS_OF_USER, Postgres},
    procs::{Finished, Loupe, otlp_args},
    queries::assert_query_basics,
    require_root,
};

const SERVICE: &str = "go-shop";

/// What a route of the shop does: queries it runs, downstream calls it makes.
fn queries_of(route: &str) -> usize {
    match route {
        "item" | "mixed" | "fanout" | "sequential" => 1,
        "n_plus_one" => 6,
        _ => 0,
    }
}

fn calls_of(route: &str) -> usize {
    match route {
        "call" | "mixed" | "sequential" => 1,
        "fanout" => 2,
        _ => 0,
    }
}

/// `/item/t3r7` -> (`item`, `t3r7`).
fn route_and_id(path: &str) -> Option<(&str, &str)> {
    let (route, id) = path.strip_prefix('/')?.split_once('/')?;
    Some((route, id))
}

fn is_db(span: &Span) -> bool {
    span.str_tag("db.system.name") == Some("postgresql")
}

fn is_http_call(span: &Span) -> bool {
    span.kind() == "client" && !is_db(span)
}

/// An HTTP call's path: `url.path`, else the path part of `url.full`.
fn call_path(span: &Span) -> Option<String> {
    if let Some(path) = span.str_tag("url.path") {
        return Some(path.to_owned());
    }
    let full = span.str_tag("url.full")?;
    let rest = full.split_once("://").map_or(full, |(_, rest)| rest);
    let path = &rest[rest.find('/')?..];
    Some(path.split('?').next().unwrap_or(path).to_owned())
}

/// The request id an HTTP call carries: `/sleep/<id>` (fanout's `<id>-a`, `<id>-b` included).
fn call_id(span: &Span) -> Option<String> {
    call_path(span)?.strip_prefix("/sleep/").map(str::to_owned)
}

/// Whether a downstream call with `call_id` belongs to the request with `request_id`.
fn same_request(call_id: &str, request_id: &str) -> bool {
    call_id == request_id
        || call_id
            .strip_prefix(request_id)
            .is_some_and(|rest| rest == "-a" || rest == "-b")
}

/// One line about a span for a failure message.
fn describe(span: &Span) -> String {
    let keys = [
        "url.path",
        "url.full",
        "db.query.text",
        "loupe.db.statement_name",
        "loupe.parent",
        "network.peer.port",
        "server.port",
    ];
    let tags: Vec<String> = keys
        .iter()
        .filter_map(|k| span.tag(k).map(|v| format!("{k}={v}")))
        .collect();
    format!(
        "{} [{}] start={}us dur={}us",
        span.operation,
        tags.join(" "),
        span.start_us,
        span.duration_us
    )
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

/// Every span of the service, once at least `servers` SERVER spans and `total` spans in all
/// are in Jaeger (or after the wait times out: what there is).
fn read_spans(jaeger: &Jaeger, servers: usize, total: usize) -> Vec<Span> {
    jaeger.wait_for_spans(SERVICE, servers, |s| s.kind() == "server");
    jaeger.wait_for_spans(SERVICE, total, |_| true)
}

fn summary_value(finished: &Finished, key: &str) -> Option<u64> {
    finished.summary().get(key).copied()
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
    assert!(
        finished.stderr.contains(&format!(
            "loupe: pid {} is a Go program: its calls nest under the request their goroutine serves",
            shop.pid()
        )),
        "the user is told how Go calls nest:\n{}",
        finished.stderr
    );

    let expected_queries: usize = requests.iter().map(|(r, _)| queries_of(r)).sum();
    let expected_calls: usize = requests.iter().map(|(r, _)| calls_of(r)).sum();
    let spans = read_spans(
        &jaeger,
        requests.len(),
        requests.len() + expected_queries + expected_calls,
    );
    let by_span_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind() == "server").collect();
    let clients: Vec<&Span> = spans.iter().filter(|s| s.kind() == "client").collect();

    // Every request is exactly one SERVER span with its path.
    let mut servers_by_path: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for server in &servers {
        servers_by_path
            .entry(server.str_tag("url.path").unwrap_or(""))
            .or_default()
            .push(server);
    }
    let mut server_problems = Vec::new();
    for (route, id) in &requests {
        let path = format!("/{route}/{id}");
        let seen = servers_by_path.get(path.as_str()).map_or(0, Vec::len);
        if seen != 1 {
            server_problems.push(format!("{path}: {seen} server spans"));
        }
    }
    let expected_paths: Vec<String> = requests
        .iter()
        .map(|(route, id)| format!("/{route}/{id}"))
        .collect();
    for (path, spans) in &servers_by_path {
        if !expected_paths.iter().any(|p| p == path) {
            server_problems.push(format!("unexpected server span(s) {path}: {}", spans.len()));
        }
    }

    // Every nested call must be under the request that made it.
    let mut wrong = Vec::new();
    let mut db_children: HashMap<&str, usize> = HashMap::new();
    let mut parentless = Vec::new();
    let mut untagged = Vec::new();
    let mut ambiguous = 0;
    for call in &clients {
        let Some(parent_id) = call.parent.as_deref() else {
            match call.str_tag("loupe.parent") {
                Some("ambiguous") => ambiguous += 1,
                Some("none") => {}
                _ => untagged.push(describe(call)),
            }
            parentless.push(*call);
            continue;
        };
        let Some(parent) = by_span_id.get(parent_id) else {
            wrong.push(format!(
                "{}: parent {parent_id} is not in Jaeger",
                describe(call)
            ));
            continue;
        };
        let parent_path = parent.str_tag("url.path").unwrap_or("");
        if parent.kind() != "server" {
            wrong.push(format!(
                "{}: parent is a {} span ({})",
                describe(call),
                parent.kind(),
                describe(parent)
            ));
            continue;
        }
        let Some((route, request_id)) = route_and_id(parent_path) else {
            wrong.push(format!("{}: parent path {parent_path}", describe(call)));
            continue;
        };
        if is_db(call) {
            let count = db_children.entry(parent.span_id.as_str()).or_default();
            *count += 1;
            if queries_of(route) == 0 {
                wrong.push(format!(
                    "{}: a query under {parent_path}, a route without queries",
                    describe(call)
                ));
            } else if *count > queries_of(route) {
                wrong.push(format!(
                    "{}: query #{count} under {parent_path}, which runs {}",
                    describe(call),
                    queries_of(route)
                ));
            }
        } else {
            let id = call_id(call);
            if !id.as_deref().is_some_and(|id| same_request(id, request_id)) {
                wrong.push(format!(
                    "{}: under {parent_path} (call id {id:?}, request id {request_id})",
                    describe(call)
                ));
            }
        }
    }

    // Every downstream call is one span; every query is one span.
    let mut calls_by_id: BTreeMap<String, usize> = BTreeMap::new();
    for call in clients.iter().filter(|s| is_http_call(s)) {
        *calls_by_id
            .entry(call_id(call).unwrap_or_else(|| describe(call)))
            .or_default() += 1;
    }
    let mut call_problems = Vec::new();
    for (route, id) in &requests {
        if calls_of(route) == 1 && calls_by_id.get(id.as_str()) != Some(&1) {
            call_problems.push(format!(
                "/{route}/{id}: {} downstream call spans /sleep/{id}",
                calls_by_id.get(id.as_str()).copied().unwrap_or(0)
            ));
        }
    }
    let db_spans = clients.iter().filter(|s| is_db(s)).count();
    let http_calls = clients.iter().filter(|s| is_http_call(s)).count();
    let nested = clients.len() - parentless.len();
    let summary = finished.summary();
    let unnested_calls = summary.get("unnested_calls").copied();
    let ambiguous_calls = summary.get("ambiguous_calls").copied();

    eprintln!(
        "go-shop: {} requests ({} server spans), {http_calls}/{expected_calls} downstream call spans, \
         {db_spans}/{expected_queries} query spans; {nested} calls nested, {} parentless \
         ({ambiguous} tagged ambiguous, {} untagged); {} wrong parents\n\
         loupe summary: unnested_calls={unnested_calls:?} ambiguous_calls={ambiguous_calls:?}\n{}",
        requests.len(),
        servers.len(),
        parentless.len(),
        untagged.len(),
        wrong.len(),
        finished
            .stderr
            .lines()
            .find(|l| l.starts_with("loupe: summary"))
            .unwrap_or("(no summary line)")
    );
    let show = |what: &[String]| {
        what.iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    };

    assert!(
        wrong.is_empty(),
        "{} calls nested under a wrong request (of {nested} nested); the first:\n  {}",
        wrong.len(),
        show(&wrong)
    );
    assert!(
        server_problems.is_empty(),
        "every request is one server span:\n  {}",
        show(&server_problems)
    );
    assert!(
        untagged.is_empty(),
        "{} parentless calls without `loupe.parent`; the first:\n  {}",
        untagged.len(),
        show(&untagged)
    );
    assert_eq!(
        unnested_calls,
        Some(parentless.len() as u64),
        "the summary's unnested_calls counts every parentless call Jaeger holds\n{}",
        finished.stderr
    );
    let ambiguous_calls = ambiguous_calls.unwrap_or_else(|| {
        panic!(
            "no ambiguous_calls in the summary line:\n{}",
            finished.stderr
        )
    });
    assert!(
        ambiguous_calls >= ambiguous as u64,
        "ambiguous_calls={ambiguous_calls}, but {ambiguous} spans are tagged ambiguous"
    );
    assert!(
        call_problems.is_empty(),
        "every downstream call is one span:\n  {}",
        show(&call_problems)
    );
    // Queries run on the handler's goroutine: every one nests under its request.
    let mut unnested_queries = Vec::new();
    for server in &servers {
        let route = server
            .str_tag("url.path")
            .and_then(route_and_id)
            .map_or("", |(route, _)| route);
        let nested = db_children
            .get(server.span_id.as_str())
            .copied()
            .unwrap_or(0);
        if nested != queries_of(route) {
            unnested_queries.push(format!(
                "{}: {nested} of {} queries nested",
                server.str_tag("url.path").unwrap_or(""),
                queries_of(route)
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
    for server in &servers {
        let path = server.str_tag("url.path").unwrap_or("");
        let patterns = server.patterns();
        let fits = match route_and_id(path) {
            Some(("n_plus_one", _)) => patterns == ["n_plus_one"],
            Some(("sequential", _)) => {
                // Named when calling the two peers concurrently would save 30% of the request
                // (loupe's default): not when the request mostly waited for a free pool
                // connection between them.
                let durations: Vec<u64> = clients
                    .iter()
                    .filter(|c| c.parent.as_deref() == Some(server.span_id.as_str()))
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
            let calls: Vec<String> = clients
                .iter()
                .filter(|c| c.parent.as_deref() == Some(server.span_id.as_str()))
                .map(|c| {
                    format!(
                        "{} {}us at +{}us {:?}:{:?}",
                        c.operation,
                        c.duration_us,
                        c.start_us - server.start_us,
                        c.str_tag("server.address"),
                        c.int_tag("server.port")
                    )
                })
                .collect();
            misdiagnosed.push(format!(
                "{path} ({}us): {:?}; calls {calls:?}; {:?}",
                server.duration_us,
                server.patterns(),
                server.str_tag("performance.diagnosis")
            ));
        }
    }
    assert!(
        misdiagnosed.is_empty(),
        "patterns off their route:\n  {}",
        show(&misdiagnosed)
    );
    assert_eq!(db_spans, expected_queries, "every query is one span");
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
    let spans = read_spans(&jaeger, paths.len(), paths.len() + expected_queries);
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
        finished
            .stderr
            .lines()
            .find(|l| l.starts_with("loupe: summary"))
            .unwrap_or("(no summary line)")
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
        summary_value(&finished, "unnested_calls"),
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
