//! Event loops under concurrency: Node (node:http + node-postgres) and Python asyncio (FastAPI on
//! uvicorn + asyncpg) serve many requests on one thread. Neither may ever put a query under a
//! wrong request, and every query left un-nested says why (`loupe.parent`) and is counted.
//!
//! loupe cannot see Node's callbacks: with several requests in flight on the loop, a query's
//! request is not certain, so some queries stay un-nested. asyncio runs each request in a task
//! of its own contextvars Context, which loupe reads at every syscall: a query nests under the
//! request whose response was written from its Context, so nearly all of them nest
//! (tests/tests/asyncio_services.rs tests that service whole, with its HTTP calls).

use loupe_tests::{
    calls::{Audit, Routes, assert_mostly_nested},
    client::concurrently,
    jaeger::{Jaeger, Span},
    node::NodeShop,
    postgres::Postgres,
    procs::{AsyncShop, Finished, Loupe, otlp_args},
    queries::is_db,
    require_root,
};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 12;

/// Drives `routes` from `CLIENTS` keep-alive clients at once, each request with an id of its own;
/// returns the paths sent.
fn drive(addr: &str, routes: &[&'static str]) -> Vec<String> {
    concurrently(addr, CLIENTS, PER_CLIENT, |c, n| {
        // Numeric ids: the shops take the id as a number.
        let path = format!("/{}/{}", routes[(c + n) % routes.len()], c * 100 + n);
        (path.clone(), path)
    })
}

/// The shops' routes: the queries each runs; a query under a request must be its route's
/// statement.
struct ShopRoutes;

impl Routes for ShopRoutes {
    fn queries_of(&self, route: &str) -> usize {
        match route {
            "item" | "named" => 1,
            "n_plus_one" => 6,
            _ => 0,
        }
    }

    /// /n_plus_one runs the orders of a user (`user_id`), the other routes an order by id.
    fn query_fits(&self, route: &str, query: &Span) -> bool {
        let text = query.str_tag("db.query.text").unwrap_or_default();
        text.contains("user_id") == (route == "n_plus_one")
    }
}

/// How a shop's queries nest under its requests.
#[derive(Clone, Copy)]
enum Nesting {
    /// loupe cannot tell the loop's requests apart (Node): with several in flight, some queries
    /// stay un-nested.
    Ambiguous,
    /// loupe reads each asyncio task's Context: nearly every query nests.
    Tasks,
}

/// No query under a wrong request, every parentless one marked and counted; then as `nesting`
/// says.
fn check(spans: &[Span], sent: &[String], finished: &Finished, who: &str, nesting: Nesting) {
    let audit = Audit::of(spans, &ShopRoutes);
    audit.assert_right_parents(sent, who);
    let expected: usize = sent
        .iter()
        .map(|p| ShopRoutes.queries_of(p.split('/').nth(1).unwrap_or("")))
        .sum();
    let (nested, queries) = audit.nested_of(is_db);
    assert_eq!(queries, expected, "{who}: every query is one span");
    eprintln!(
        "{who}: {queries} queries, {nested} nested, {} un-nested ({} ambiguous in the summary), no wrong parent",
        queries - nested,
        finished.summary()["ambiguous_calls"]
    );
    audit.assert_parentless_counted(finished, who);
    match nesting {
        Nesting::Ambiguous => assert!(
            nested < queries,
            "{who}: with {CLIENTS} clients at once some queries had more than one candidate"
        ),
        Nesting::Tasks => assert_mostly_nested(who, "queries", nested, queries),
    }
}

fn run(
    who: &str,
    pid: u32,
    addr: &str,
    routes: &[&'static str],
    jaeger: &Jaeger,
    nesting: Nesting,
) {
    let loupe = Loupe::attach(&otlp_args(pid, &jaeger.grpc_endpoint(), who, &[]));
    let sent = drive(addr, routes);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let wanted = sent.len()
        + sent
            .iter()
            .map(|p| ShopRoutes.queries_of(p.split('/').nth(1).unwrap_or("")))
            .sum::<usize>();
    let spans = jaeger.wait_for_spans(who, wanted, |_| true);
    check(&spans, &sent, &finished, who, nesting);
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
        Nesting::Ambiguous,
    );
    let asyncio = AsyncShop::start(&format!("postgresql://postgres@127.0.0.1:{}/shop", pg.port));
    run(
        "e2e-asyncio-load",
        asyncio.pid(),
        &asyncio.addr,
        &["item", "n_plus_one"],
        &jaeger,
        Nesting::Tasks,
    );
}
