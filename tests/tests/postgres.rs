//! PostgreSQL queries over the wire protocol, seen from psql (libpq, sslmode=prefer, so the
//! session opens with a refused SSLRequest) against a real server: one span per query, with the
//! statement normalized, the server's own timing, rows, SQLSTATE on error, and no literal ever
//! reaching Jaeger.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{
    client::get,
    jaeger::{Jaeger, Span},
    postgres::Postgres,
    procs::{DemoApp, Loupe, PythonShop, otlp_args},
    require_root, wait_until,
};

fn db_spans(spans: &[Span]) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.str_tag("db.system.name") == Some("postgresql"))
        .collect()
}

#[test]
fn psql_queries_become_normalized_database_spans_with_server_timing() {
    require_root();
    let pg = Postgres::start();
    pg.run_sql("postgres", "CREATE DATABASE shop");
    pg.run_sql(
        "shop",
        "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 50) g",
    );
    let jaeger = Jaeger::start();

    // A long-lived shell is the target; the psql processes it forks are followed.
    let mut shell = Command::new("bash")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let loupe = Loupe::attach(&otlp_args(
        shell.id(),
        &jaeger.grpc_endpoint(),
        "e2e-pg",
        &["--slow-db", "200ms"],
    ));
    let statements = [
        "SELECT name FROM users WHERE id = 42",
        "SELECT id, name FROM users WHERE id <= 20",
        "INSERT INTO users (id, name) VALUES (1001, 'secret-name')",
        "SELECT pg_sleep(0.3)",
        "SELECT * FROM no_such_table WHERE token = 'secret-token'",
    ];
    let stdin = shell.stdin.as_mut().unwrap();
    for sql in statements {
        writeln!(
            stdin,
            "/usr/lib/postgresql/15/bin/psql -X -q '{}' -c \"{sql}\"",
            pg.url("shop")
        )
        .unwrap();
    }
    writeln!(stdin, "echo done > /dev/null; exit").unwrap();
    let exited = wait_until(Duration::from_secs(30), || shell.try_wait().ok().flatten());
    assert!(exited.is_some(), "the psql runs finished");
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-pg", statements.len(), |s| {
        s.str_tag("db.system.name") == Some("postgresql")
    });
    let db = db_spans(&spans);
    let texts: Vec<&str> = db
        .iter()
        .map(|s| s.str_tag("db.query.text").unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![
            "SELECT name FROM users WHERE id = $1",
            "SELECT id, name FROM users WHERE id <= $1",
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            "SELECT pg_sleep($1)",
            "SELECT * FROM no_such_table WHERE token = $1",
        ],
        "every query once, normalized, in order\nloupe: {}",
        finished.stderr
    );
    for span in &spans {
        for value in span.tags.values() {
            let text = value.to_string();
            assert!(
                !text.contains("secret") && !text.contains("1001"),
                "a literal reached Jaeger: {text}"
            );
        }
    }
    let by_text = |needle: &str| {
        *db.iter()
            .find(|s| s.str_tag("db.query.text").unwrap().starts_with(needle))
            .unwrap()
    };

    let one = by_text("SELECT name FROM users");
    assert_eq!(one.operation, "SELECT users");
    assert_eq!(one.kind(), "client");
    assert_eq!(one.str_tag("db.operation.name"), Some("SELECT"));
    assert_eq!(one.str_tag("db.collection.name"), Some("users"));
    assert_eq!(one.str_tag("db.namespace"), Some("shop"));
    assert_eq!(one.int_tag("db.response.returned_rows"), Some(1));
    assert_eq!(one.str_tag("server.address"), Some("127.0.0.1"));
    assert_eq!(one.int_tag("server.port"), Some(i64::from(pg.port)));
    assert!(
        one.str_tag("loupe.db.fingerprint")
            .is_some_and(|f| f.len() == 16)
    );
    assert!(!one.is_error() && !one.is_slow());
    assert_eq!(
        by_text("SELECT id, name").int_tag("db.response.returned_rows"),
        Some(20)
    );
    let insert = by_text("INSERT");
    assert_eq!(insert.operation, "INSERT users");
    assert_eq!(insert.int_tag("loupe.db.affected_rows"), Some(1));

    // The server's own timing of the sleep, against the span's.
    let sleep = by_text("SELECT pg_sleep");
    let server_us = pg
        .logged_duration_us("pg_sleep(0.3)")
        .expect("the server logged the statement");
    assert!(server_us >= 300_000);
    assert!(
        sleep.duration_us >= server_us && sleep.duration_us - server_us < 50_000,
        "span {} us vs server {} us",
        sleep.duration_us,
        server_us
    );
    assert!(sleep.is_slow(), "--slow-db 200ms");
    assert_eq!(sleep.int_tag("performance.threshold_ms"), Some(200));
    assert_eq!(db.iter().filter(|s| s.is_slow()).count(), 1);

    let failed = by_text("SELECT * FROM no_such_table");
    assert!(failed.is_error());
    assert_eq!(failed.str_tag("db.response.status_code"), Some("42P01"));
    assert_eq!(db.iter().filter(|s| s.is_error()).count(), 1);
}

#[test]
fn queries_nest_under_the_http_request_that_ran_them() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let database = format!("127.0.0.1:{}/shop", pg.port);
    let demo = DemoApp::start_with(&["--database", &database]);
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "e2e-pg-http",
        &[],
    ));
    for path in ["/api/orders/7", "/api/orders/8", "/api/users/1"] {
        assert_eq!(get(&demo.frontend_addr, path).status, 200, "{path}");
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-pg-http", 5, |_| true);
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind() == "server").collect();
    assert_eq!(servers.len(), 3);
    let db = db_spans(&spans);
    assert_eq!(
        db.len(),
        2,
        "{:#?}",
        spans.iter().map(|s| &s.operation).collect::<Vec<_>>()
    );
    for (query, rows) in db.iter().zip([3, 1]) {
        let parent = servers
            .iter()
            .find(|s| Some(&s.span_id) == query.parent.as_ref())
            .expect("the query's parent is a server span");
        assert_eq!(parent.operation, "GET /api/orders/{id}");
        assert_eq!(parent.trace_id, query.trace_id);
        assert!(query.start_us >= parent.start_us);
        assert!(query.start_us + query.duration_us <= parent.start_us + parent.duration_us);
        assert_eq!(query.operation, "SELECT orders");
        assert_eq!(
            query.str_tag("db.query.text"),
            Some("SELECT id, total FROM orders WHERE user_id = $1")
        );
        assert_eq!(query.int_tag("db.response.returned_rows"), Some(rows));
        assert_eq!(query.str_tag("db.namespace"), Some("shop"));
    }
    assert_ne!(
        db[0].parent, db[1].parent,
        "each query under its own request"
    );
    let users = servers
        .iter()
        .find(|s| s.operation == "GET /api/users/{id}")
        .unwrap();
    assert!(
        !spans
            .iter()
            .any(|s| s.parent.as_ref() == Some(&users.span_id))
    );
}

/// On plaintext sessions the wire alone makes every query's span: libpq's uprobes are not
/// attached (they would add their cost and nothing else).
#[test]
fn python_drivers_queries_appear_once_each_under_their_request() {
    python_drivers_with("auto");
}

/// `--libpq always`: libpq's uprobes too, on both libpq files, and each query is still one
/// span, both views merged.
#[test]
fn python_drivers_queries_seen_by_libpq_too_are_still_one_span_each() {
    python_drivers_with("always");
}

fn python_drivers_with(libpq: &str) {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = PythonShop::start(&pg.url("shop"));
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        "e2e-py",
        &["--libpq", libpq],
    ));
    let drivers = ["psycopg2", "psycopg", "pg8000"];
    for driver in drivers {
        for user in [7, 8] {
            let response = get(&shop.addr, &format!("/{driver}/{user}"));
            assert_eq!(
                response.status,
                200,
                "{driver}: {}",
                String::from_utf8_lossy(&response.body)
            );
        }
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-py", 12, |_| true);
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind() == "server").collect();
    assert_eq!(
        servers.len(),
        6,
        "{:#?}",
        spans.iter().map(|s| &s.operation).collect::<Vec<_>>()
    );
    let text = "SELECT id, total FROM orders WHERE user_id = $1";
    for (i, server) in servers.iter().enumerate() {
        let driver = drivers[i / 2];
        assert_eq!(
            server
                .str_tag("url.path")
                .map(|p| p.starts_with(&format!("/{driver}/"))),
            Some(true)
        );
        let queries: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.parent.as_ref() == Some(&server.span_id)
                    && s.str_tag("db.query.text") == Some(text)
            })
            .collect();
        assert_eq!(
            queries.len(),
            1,
            "{driver}: exactly one span for the query, under its request"
        );
        let query = queries[0];
        assert_eq!(query.trace_id, server.trace_id);
        assert!(query.start_us + query.duration_us <= server.start_us + server.duration_us);
        assert_eq!(
            query.int_tag("db.response.returned_rows"),
            Some(if i % 2 == 0 { 3 } else { 1 }),
            "{driver}"
        );
        assert_eq!(query.str_tag("db.namespace"), Some("shop"), "{driver}");
        // With --libpq always, psycopg2-binary's bundled libpq and the system one psycopg
        // loads were both probed, and each query they ran is one span with both views merged.
        let source = if driver == "pg8000" || libpq == "auto" {
            "wire"
        } else {
            "libpq+wire"
        };
        assert_eq!(query.str_tag("loupe.db.source"), Some(source), "{driver}");
    }
    let probed = finished.stderr.contains("psycopg2_binary.libs/libpq")
        && finished.stderr.contains("/libpq.so.5");
    let none_probed = !finished
        .stderr
        .lines()
        .any(|line| line.contains("probing") && line.contains("libpq"));
    assert!(
        if libpq == "auto" { none_probed } else { probed },
        "--libpq {libpq}: libpq probed {}:\n{}",
        if libpq == "auto" {
            "nowhere"
        } else {
            "in both files"
        },
        finished.stderr
    );
    for span in &spans {
        assert!(
            span.parent.is_some() || span.kind() == "server",
            "{} is not under a request",
            span.operation
        );
    }
}
