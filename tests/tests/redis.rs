//! Redis end to end: a real redis-server and redis-py behind a threaded Python shop
//! (tests/apps/cache_shop.py), read back through Jaeger's query API. Every command is one CLIENT
//! span under the request that sent it, named by its command, with its arguments redacted;
//! pipelines and transactions are one span a command; an error reply is an error span with its
//! code; a read that found nothing says `loupe.cache.hit=false`, one that found something
//! `true`; the database a connection selected is `db.namespace`.

use std::collections::HashMap;

use loupe_tests::{
    client::{Client, concurrently},
    jaeger::{Jaeger, Span},
    procs::{CacheShop, Downstream, Loupe, otlp_args},
    redis::Redis,
    require_root,
};

const SERVICE: &str = "cache-shop";

fn is_redis(span: &Span) -> bool {
    span.str_tag("db.system.name") == Some("redis")
}

/// What a client sends when it opens a connection (redis-py names itself, selects its database):
/// made inside whichever request opened it.
fn is_setup(span: &Span) -> bool {
    matches!(
        span.operation.as_str(),
        "CLIENT" | "SELECT" | "HELLO" | "AUTH"
    )
}

fn hit(span: &Span) -> Option<bool> {
    span.tag("loupe.cache.hit")
        .and_then(|value| value.as_bool())
}

#[test]
fn redis_commands_are_spans_under_their_request_with_hits_and_misses() {
    require_root();
    let redis = Redis::start();
    let jaeger = Jaeger::start();
    let downstream = Downstream::start();
    let shop = CacheShop::start(&redis.addr(), &downstream.addr);
    // The 300 ms fill of a miss is a slow call.
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        SERVICE,
        &["--slow-external", "200ms"],
    ));

    // One at a time, so each request's calls can be told by order too: a miss, then a hit.
    let mut client = Client::connect(&shop.addr).expect("connect to the shop");
    let sequential = [
        "/cache/1",
        "/cache/1",
        "/pipeline/2",
        "/multi/3",
        "/error/4",
        "/db2/5",
        "/db2/6",
    ];
    for path in sequential {
        client.get_ok(path);
    }
    // Then 6 clients at once, each request an id of its own: each a miss then a hit.
    let concurrent: Vec<String> = concurrently(&shop.addr, 6, 8, |c, n| {
        let path = format!("/cache/{}", 100 + 10 * c + n / 2);
        (path.clone(), path)
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let requests = sequential.len() + concurrent.len();
    jaeger.wait_for_spans(SERVICE, requests, |s| s.kind() == "server");
    // At least: each request, the sequential ones' 15 commands and calls (a miss 3, a hit 1, the
    // pipeline 3, the transaction 4, the error 2, each /db2 1) and the concurrent ones' (24
    // misses, 24 hits); connection set-up commands come on top.
    let spans = jaeger.wait_for_spans(SERVICE, requests + 15 + 24 * 3 + 24, |_| true);
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind() == "server").collect();
    assert_eq!(servers.len(), requests, "one server span per request");
    let children = |server: &Span| -> Vec<&Span> {
        let mut found: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent.as_deref() == Some(server.span_id.as_str()) && !is_setup(s))
            .collect();
        found.sort_by_key(|s| s.start_us);
        found
    };
    let commands = |server: &Span| -> Vec<String> {
        children(server)
            .iter()
            .filter(|s| is_redis(s))
            .map(|s| s.operation.clone())
            .collect()
    };

    // Every Redis span is one command, redacted, under a request (the shop is thread per
    // request: nothing is ambiguous).
    let redis_spans: Vec<&Span> = spans.iter().filter(|s| is_redis(s)).collect();
    for span in &redis_spans {
        let text = span.str_tag("db.query.text").unwrap_or_default();
        // The command, a subcommand word where it has one (`CLIENT SETINFO`), then a `?` per
        // argument: no key or value ever.
        let subcommand = |word: &str| word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        let redacted = text
            .split(' ')
            .enumerate()
            .skip(1)
            .all(|(i, arg)| arg == "?" || arg == "..." || (i == 1 && subcommand(arg)));
        assert!(
            !text.contains(':') && redacted,
            "arguments redacted: {text:?}"
        );
        assert_eq!(
            span.str_tag("db.operation.name"),
            Some(span.operation.as_str())
        );
        assert_eq!(span.int_tag("server.port"), Some(i64::from(redis.port)));
        let parent = span.parent.as_deref().and_then(|id| by_id.get(id));
        assert!(
            parent.is_some_and(|p| p.kind() == "server"),
            "{} {text} is under a request: {:?}",
            span.operation,
            span.tags
        );
    }

    // Cache-aside: the first request for a key misses, pays the downstream and fills; the
    // next one hits and calls nothing else.
    let mut seen_keys: HashMap<&str, usize> = HashMap::new();
    let mut ordered: Vec<&Span> = servers.clone();
    ordered.sort_by_key(|s| s.start_us);
    for server in ordered.iter().filter(|s| {
        s.str_tag("url.path")
            .is_some_and(|p| p.starts_with("/cache/"))
    }) {
        let path = server.str_tag("url.path").unwrap_or_default();
        let nth = seen_keys.entry(path).or_default();
        *nth += 1;
        let calls = children(server);
        let get = calls.first().expect("a GET first");
        assert_eq!(get.operation, "GET", "{path}: {:?}", commands(server));
        assert_eq!(get.str_tag("db.query.text"), Some("GET ?"));
        let patterns = server.patterns();
        let slow_fill = patterns.iter().any(|p| p == "cache_miss_slow_fill");
        if *nth == 1 {
            assert_eq!(hit(get), Some(false), "{path}: the first GET misses");
            assert!(slow_fill, "{path}: a miss paid a slow fill: {patterns:?}");
            assert_eq!(server.int_tag("loupe.cache.misses"), Some(1));
            assert_eq!(server.int_tag("loupe.cache.hits"), Some(0));
            let ops: Vec<&str> = calls.iter().map(|s| s.operation.as_str()).collect();
            assert_eq!(ops.len(), 3, "{path}: GET, the fill, SET: {ops:?}");
            assert_eq!(calls[1].kind(), "client");
            assert!(
                !is_redis(calls[1]),
                "{path}: the fill is the downstream call"
            );
            assert_eq!(calls[2].operation, "SET");
            assert_eq!(calls[2].str_tag("db.query.text"), Some("SET ? ? ? ?"));
            assert_eq!(hit(calls[2]), None, "a write is no hit or miss");
        } else {
            assert_eq!(hit(get), Some(true), "{path}: then it hits");
            assert_eq!(calls.len(), 1, "{path}: a hit calls nothing else");
            assert!(patterns.is_empty(), "{path}: a hit is fine: {patterns:?}");
            assert_eq!(server.int_tag("loupe.cache.hits"), Some(1));
        }
    }

    let server_of = |path: &str| -> &Span {
        servers
            .iter()
            .find(|s| s.str_tag("url.path") == Some(path))
            .unwrap_or_else(|| panic!("no server span for {path}"))
    };
    // A pipeline: one span a command (all written at once: they start together). redis-py
    // sends `incr` as INCRBY.
    let sorted = |mut ops: Vec<String>| {
        ops.sort();
        ops
    };
    assert_eq!(
        sorted(commands(server_of("/pipeline/2"))),
        ["GET", "INCRBY", "SET"],
        "the pipeline's commands"
    );
    // A transaction: MULTI, the queued commands, EXEC.
    assert_eq!(
        sorted(commands(server_of("/multi/3"))),
        ["EXEC", "GET", "MULTI", "SET"],
        "the transaction's commands"
    );
    // An error reply: an error span with its code, not its message.
    let error_calls = children(server_of("/error/4"));
    let lpush = error_calls
        .iter()
        .find(|s| s.operation == "LPUSH")
        .expect("the LPUSH");
    assert!(lpush.is_error(), "{:?}", lpush.tags);
    assert_eq!(lpush.str_tag("db.response.status_code"), Some("WRONGTYPE"));
    // Database 2: its connection opened (and selected 2) during the first /db2 request.
    for path in ["/db2/5", "/db2/6"] {
        let get = children(server_of(path))
            .into_iter()
            .rfind(|s| s.operation == "GET")
            .unwrap_or_else(|| panic!("{path}: its GET"));
        assert_eq!(get.str_tag("db.namespace"), Some("2"), "{path}");
        assert_eq!(hit(get), Some(false), "{path}: nothing there");
    }
    // No other route names a slow fill; the hit rate per route is in the exit summary.
    for server in &servers {
        let path = server.str_tag("url.path").unwrap_or_default();
        if !path.starts_with("/cache/") {
            assert!(
                !server
                    .patterns()
                    .iter()
                    .any(|p| p == "cache_miss_slow_fill"),
                "{path}: {:?}",
                server.patterns()
            );
        }
    }
    finished.assert_told(
        "loupe: cache hit rates\nGET /cache/{id}: 50% hits of 50 cache reads (25 misses)",
    );
    let first_db0 = children(server_of("/cache/1"))[0];
    assert_eq!(
        first_db0.str_tag("db.namespace"),
        None,
        "a connection open before attach: its database is not known"
    );
}
