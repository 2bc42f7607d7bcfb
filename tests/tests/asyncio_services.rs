//! A Python asyncio service end to end (tests/apps/async_shop.py): FastAPI on uvicorn, an asyncpg
//! pool (the wire protocol, no libpq) and one shared httpx.AsyncClient to a downstream, against a
//! real PostgreSQL, a real downstream and a real Jaeger, under 16 clients at once. Every request
//! carries a unique numeric id in its path, and so does every outbound HTTP call it makes, so
//! each span is checked against the request that made it.
//!
//! On asyncio's own loop and on uvloop, one thread serves every request: the thread says
//! nothing about which request made a call. Each request runs in an asyncio task of its own, and
//! each task in a contextvars Context of its own; loupe reads the Python thread's current Context
//! at every syscall, so a call made while several requests are in flight belongs to the one
//! whose response is later written from the call's Context. Never a call under a wrong request; a call
//! loupe cannot place stays un-nested, tagged `loupe.parent`, and counted. Under that load, N+1
//! and slow dependencies are still named on their routes and nowhere else.

use loupe_tests::{
    calls::{Audit, Routes, Sent, assert_mostly_nested, is_http_call, route_and_id, show},
    client::{concurrently, get},
    jaeger::{Jaeger, Span},
    postgres::{ORDER_BY_ID, ORDERS_OF_USER, Postgres, Prepared},
    procs::{AsyncShop, Downstream, Loupe, otlp_args},
    queries::is_db,
    require_root,
};

const SERVICE: &str = "asyncio-shop";
const CLIENTS: usize = 16;
const PER_CLIENT: usize = 25;
/// The shop's asyncpg pool.
const POOL_SIZE: usize = 4;
/// The shop's routes that take an id, each with queries and calls of its own.
const ROUTES: &[&str] = &["item", "n_plus_one", "call", "mixed", "slow"];
/// /slow's 400 ms call is a slow dependency; the 5 ms calls of /call and /mixed are not.
const FLAGS: &[&str] = &["--slow-external", "300ms"];

/// What a route of the shop does: queries it runs, downstream calls it makes. With the
/// statements asyncpg prepared before loupe attached: a query's statement is its text, or the
/// text its name was prepared with.
struct AsyncRoutes {
    prepared: Prepared,
}

impl Routes for AsyncRoutes {
    fn queries_of(&self, route: &str) -> usize {
        match route {
            "item" | "mixed" => 1,
            "n_plus_one" => 6,
            _ => 0,
        }
    }

    fn calls_of(&self, route: &str) -> usize {
        match route {
            "call" | "mixed" | "slow" => 1,
            _ => 0,
        }
    }

    /// /n_plus_one runs the orders of a user (`user_id`), /item and /mixed an order by id.
    fn query_fits(&self, route: &str, query: &Span) -> bool {
        match self.prepared.statement_of(query) {
            Some(ORDERS_OF_USER) => route == "n_plus_one",
            Some(ORDER_BY_ID) => route == "item" || route == "mixed",
            _ => false,
        }
    }
}

/// Before loupe attaches: every route from `CLIENTS` clients at once (four times the pool), in
/// rounds, until each of the pool's connections has prepared both statements (the server's log
/// says so); by then the client's keep-alive connections to the downstream are open too. What
/// loupe then sees is a warm service: Bind/Execute of prepared statements, requests on open
/// connections, no connection start-up.
fn warm(shop: &AsyncShop, pg: &Postgres) {
    assert_eq!(get(&shop.addr, "/health").status, 200, "GET /health");
    pg.prepare_on_each(&[ORDER_BY_ID, ORDERS_OF_USER], POOL_SIZE, |round| {
        concurrently(&shop.addr, CLIENTS, 2 * ROUTES.len(), |c, n| {
            let id = 1_000_000 + 10_000 * round + 100 * c + n;
            (format!("/{}/{id}", ROUTES[(c + n) % ROUTES.len()]), ())
        });
    });
}

#[test]
fn asyncio_calls_nest_under_the_request_that_made_them() {
    calls_nest_on("asyncio", SERVICE);
}

/// uvloop (libuv under asyncio's API) runs each task in its Context as asyncio does.
#[test]
fn uvloop_calls_nest_under_the_request_that_made_them() {
    calls_nest_on("uvloop", "uvloop-shop");
}

fn calls_nest_on(event_loop: &str, service: &'static str) {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let downstream = Downstream::start();
    let shop = AsyncShop::start_on(
        event_loop,
        &format!("postgresql://postgres@127.0.0.1:{}/shop", pg.port),
        &downstream.url(),
    );
    warm(&shop, &pg);
    let routes = AsyncRoutes {
        prepared: pg.prepared(),
    };

    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        service,
        FLAGS,
    ));
    // Each client its own keep-alive connection; each request a unique numeric id in its path
    // (the shop takes the id as a number).
    let requests: Vec<(&str, String)> = concurrently(&shop.addr, CLIENTS, PER_CLIENT, |c, n| {
        let route = ROUTES[(c + n) % ROUTES.len()];
        let id = (1000 * c + n + 1).to_string();
        (format!("/{route}/{id}"), (route, id))
    });
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.assert_told(&format!(
        "loupe: pid {} is a Python program: its calls nest by thread, and on an asyncio loop under the request whose response their task wrote",
        shop.pid()
    ));
    finished.assert_told(&format!(
        "loupe: pid {} (CPython 3.11): reading its threads' asyncio contexts",
        shop.pid()
    ));

    let sent = Sent::of(&requests, &routes);
    let spans = sent.spans(&jaeger, service);
    // Every nested call must be under the request that made it (an HTTP call's id is its
    // request's, a query is its request's route's statement, no request has more queries under
    // it than its route runs); every request is one SERVER span, and makes its call once.
    let audit = Audit::of(&spans, &routes);
    audit.assert_sound(&sent, &routes, &finished, service);
    // Every query is one span; every downstream call is one span.
    let (nested_queries, queries) = audit.nested_of(is_db);
    let (nested_http, http_calls) = audit.nested_of(is_http_call);
    assert_eq!(queries, sent.queries, "every query is one span");
    assert_eq!(http_calls, sent.calls, "every downstream call is one span");

    // Nearly everything nests: each call made while other requests were in flight waited for
    // them to answer, and only its own request answered from its Context.
    assert_mostly_nested(service, "queries", nested_queries, queries);
    assert_mostly_nested(service, "HTTP calls", nested_http, http_calls);

    // Under load, N+1 is named on /n_plus_one (on every one whose six queries all nested) and
    // slow_dependency on /slow (on every one whose call nested), and neither anywhere else.
    // /mixed (a query, then a call) may be named sequential when its query ran long enough to
    // matter.
    let mut misdiagnosed = Vec::new();
    let (mut n_plus_ones, mut n_plus_ones_named) = (0, 0);
    let (mut slows, mut slows_named) = (0, 0);
    for server in &audit.servers {
        let patterns = server.patterns();
        let route = server
            .str_tag("url.path")
            .and_then(route_and_id)
            .map_or("", |(route, _)| route);
        let fits = match route {
            "n_plus_one" => {
                n_plus_ones += 1;
                if patterns == ["n_plus_one"] {
                    n_plus_ones_named += 1;
                }
                if audit.queries_under(server) == 6 {
                    patterns == ["n_plus_one"]
                } else {
                    patterns.is_empty() || patterns == ["n_plus_one"]
                }
            }
            "slow" => {
                slows += 1;
                if patterns == ["slow_dependency"] {
                    slows_named += 1;
                }
                // No call is under a wrong request: a child of /slow is its call.
                if !audit.children(server).is_empty() {
                    patterns == ["slow_dependency"]
                } else {
                    patterns.is_empty()
                }
            }
            "mixed" => patterns.is_empty() || patterns == ["sequential_calls"],
            _ => patterns.is_empty(),
        };
        if !fits {
            misdiagnosed.push(audit.verdict(server));
        }
    }
    eprintln!(
        "{service}: n_plus_one named on {n_plus_ones_named} of {n_plus_ones} /n_plus_one \
         requests, slow_dependency on {slows_named} of {slows} /slow requests"
    );
    assert!(
        misdiagnosed.is_empty(),
        "patterns off their route:\n  {}",
        show(&misdiagnosed)
    );
    assert!(
        n_plus_ones_named > 0 && slows_named > 0,
        "N+1 and slow_dependency are named under load"
    );
}
