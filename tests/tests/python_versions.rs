//! asyncio on every CPython loupe knows, end to end: the standard-library service
//! (tests/apps/stdlib_async.py: `asyncio.start_server`, a task per client connection, a pool of
//! keep-alive connections to a downstream) on Debian's stock python3.11 (static and stripped) and
//! on each pyenv 3.12 and 3.13 build the machine has, under 8 clients at once, each request with
//! an id of its own that its calls carry.
//!
//! The connection's task reads its requests one after another and makes their calls from its own
//! Context: each call nests under the request that made it. `/gather` runs its two calls in tasks
//! of their own (Contexts of their own): they may stay un-nested, marked and counted, never under
//! a wrong request.

use loupe_tests::{
    calls::{Audit, Routes, Sent, assert_mostly_nested, call_id, same_or_fanned},
    client::{concurrently, get},
    jaeger::Jaeger,
    procs::{Downstream, Loupe, StdlibAsync, otlp_args, pythons},
    require_root,
};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 12;
const ROUTES: &[&str] = &["call", "two", "gather"];

struct StdlibRoutes;

impl Routes for StdlibRoutes {
    fn queries_of(&self, _route: &str) -> usize {
        0
    }

    fn calls_of(&self, route: &str) -> usize {
        match route {
            "call" => 1,
            "two" | "gather" => 2,
            _ => 0,
        }
    }

    /// /two and /gather call `/sleep/<id>-a` and `/sleep/<id>-b`.
    fn same_request(&self, call_id: &str, request_id: &str) -> bool {
        same_or_fanned(call_id, request_id)
    }
}

#[test]
fn asyncio_calls_nest_on_every_known_cpython() {
    require_root();
    let jaeger = Jaeger::start();
    let downstream = Downstream::start();
    let mut covered = Vec::new();
    for (version, python) in pythons() {
        let service = format!("stdlib-async-{}", version.replace('.', ""));
        let app = StdlibAsync::start(&python, &downstream.addr);
        // Warm: the pool's connections are open from start-up; every route once.
        for route in ROUTES {
            assert_eq!(get(&app.addr, &format!("/{route}/0")).status, 200);
        }
        let loupe = Loupe::attach(&otlp_args(
            app.pid(),
            &jaeger.grpc_endpoint(),
            &service,
            &[],
        ));
        let requests: Vec<(&str, String)> = concurrently(&app.addr, CLIENTS, PER_CLIENT, |c, n| {
            let route = ROUTES[(c + n) % ROUTES.len()];
            let id = format!("c{c}n{n}");
            (format!("/{route}/{id}"), (route, id))
        });
        let finished = loupe.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        finished.assert_told(&format!(
            "loupe: pid {} (CPython {version}): reading its threads' asyncio contexts",
            app.pid()
        ));

        let sent = Sent::of(&requests, &StdlibRoutes);
        let spans = sent.spans(&jaeger, &service);
        let audit = Audit::of(&spans, &StdlibRoutes);
        let who = format!("{service} ({})", python.display());
        audit.assert_sound(&sent, &StdlibRoutes, &finished, &who);
        // Calls the connection's own task made (/call, /two) nest; /gather's may not.
        let gathered = |span: &loupe_tests::jaeger::Span| {
            requests.iter().any(|(route, id)| {
                *route == "gather"
                    && call_id(span).is_some_and(|call| StdlibRoutes.same_request(&call, id))
            })
        };
        let (nested, own) = audit.nested_of(|span| span.kind() == "client" && !gathered(span));
        assert_eq!(
            own,
            requests
                .iter()
                .map(|(route, _)| if *route == "gather" {
                    0
                } else {
                    StdlibRoutes.calls_of(route)
                })
                .sum::<usize>(),
            "{who}: every call is one span"
        );
        assert_mostly_nested(&who, "calls of the connection's task", nested, own);
        covered.push(format!("{version} ({nested} of {own} nested)"));
    }
    eprintln!("asyncio covered on CPython {}", covered.join(", "));
}
