//! The libpq uprobes against a real server. They are attached only where the wire cannot read a
//! session (`--libpq auto`): over TLS (sslmode=require: the socket carries ciphertext; the first
//! encrypted session asks for them, and from then on libpq and the plaintext OpenSSL hands over
//! both see each query, one span), never for pgbench on plaintext; with `--libpq always`, a
//! libpq loaded after loupe attached, and pgbench's asynchronous API at speed, each query once.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{
    client::get,
    jaeger::{Jaeger, Span},
    postgres::Postgres,
    procs::{Loupe, PythonShop, otlp_args},
    require_root, wait_until,
};

const ORDERS: &str = "SELECT id, total FROM orders WHERE user_id = $1";

/// The database spans under the server span of the request to `path`.
fn queries_of<'a>(spans: &'a [Span], path: &str) -> Vec<&'a Span> {
    let server = spans
        .iter()
        .find(|s| s.kind() == "server" && s.str_tag("url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}"));
    spans
        .iter()
        .filter(|s| {
            s.parent.as_ref() == Some(&server.span_id)
                && s.str_tag("db.system.name") == Some("postgresql")
        })
        .collect()
}

#[test]
fn queries_over_tls_are_seen_through_libpq() {
    require_root();
    let pg = Postgres::start_tls();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = PythonShop::start(&format!("{} sslmode=require", pg.url("shop")));
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        "e2e-tls",
        &["--slow-db", "100ms"],
    ));
    // Nothing encrypted seen yet: libpq is not probed.
    let probing = |library: &str| {
        loupe
            .stderr()
            .lines()
            .any(|line| line.contains("probing") && line.contains(library))
    };
    assert!(!probing("libpq"), "{}", loupe.stderr());
    // The first encrypted session asks for libpq's uprobes, in both libpq files the shop maps.
    assert_eq!(get(&shop.addr, "/psycopg2/1").status, 200);
    let probed = wait_until(Duration::from_secs(10), || {
        (probing("psycopg2_binary.libs/libpq") && probing("/libpq.so.5")).then_some(())
    });
    assert!(probed.is_some(), "{}", loupe.stderr());
    let paths = [
        "/psycopg2/7",
        "/psycopg/8",
        "/psycopg2/sleep",
        "/psycopg/fail",
    ];
    for path in paths {
        let response = get(&shop.addr, path);
        let expected = if path.ends_with("fail") { 500 } else { 200 };
        assert_eq!(response.status, expected, "{path}");
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let log = pg.log();
    assert!(
        log.contains("database=shop SSL enabled") && !log.contains("database=shop\n"),
        "the shop's sessions used TLS:\n{log}"
    );

    let spans = jaeger.wait_for_spans("e2e-tls", 10, |_| true);
    // The session that asked: one span, whichever sources saw it (libpq raced its query).
    let first = queries_of(&spans, "/psycopg2/1");
    assert_eq!(first.len(), 1, "the first encrypted session's query");
    for path in paths {
        let queries = queries_of(&spans, path);
        assert_eq!(queries.len(), 1, "{path}: one query span under the request");
        let query = queries[0];
        assert_eq!(
            query.str_tag("loupe.db.source"),
            Some("libpq+wire"),
            "{path}: the wire is encrypted; its plaintext is read where OpenSSL hands it over, \
             so both saw it, and it is one span"
        );
        assert_eq!(query.str_tag("server.address"), Some("127.0.0.1"), "{path}");
        assert_eq!(query.int_tag("server.port"), Some(i64::from(pg.port)));
    }
    let seven = queries_of(&spans, "/psycopg2/7")[0];
    assert_eq!(seven.str_tag("db.query.text"), Some(ORDERS));
    assert_eq!(seven.operation, "SELECT orders");
    assert_eq!(seven.int_tag("db.response.returned_rows"), Some(3));
    assert!(!seven.is_error());
    let eight = queries_of(&spans, "/psycopg/8")[0];
    assert_eq!(eight.str_tag("db.query.text"), Some(ORDERS));
    assert_eq!(eight.int_tag("db.response.returned_rows"), Some(1));

    let sleep = queries_of(&spans, "/psycopg2/sleep")[0];
    let server_us = pg
        .logged_duration_us("pg_sleep(0.2)")
        .expect("the server logged the statement");
    assert!(
        sleep.duration_us >= server_us && sleep.duration_us - server_us < 50_000,
        "span {} us vs server {} us",
        sleep.duration_us,
        server_us
    );
    assert!(sleep.is_slow(), "--slow-db 100ms");

    let failed = queries_of(&spans, "/psycopg/fail")[0];
    assert!(failed.is_error());
    assert_eq!(failed.str_tag("db.response.status_code"), Some("42P01"));
    for span in &spans {
        for value in span.tags.values() {
            assert!(
                !value.to_string().contains("secret"),
                "a literal reached Jaeger"
            );
        }
    }
}

fn maps_libpq(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.contains("libpq"))
}

#[test]
fn a_libpq_loaded_after_attach_is_probed_too() {
    require_root();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let jaeger = Jaeger::start();
    let shop = PythonShop::start_with(&pg.url("shop"), &["--lazy"]);
    assert!(!maps_libpq(shop.pid()), "no driver imported yet");
    let loupe = Loupe::attach(&otlp_args(
        shop.pid(),
        &jaeger.grpc_endpoint(),
        "e2e-lazy",
        &["--libpq", "always"],
    ));
    let probing_libpq = |stderr: &str| {
        stderr
            .lines()
            .any(|line| line.contains("probing") && line.contains("libpq"))
    };
    assert!(!probing_libpq(&loupe.stderr()), "{}", loupe.stderr());

    // psycopg loads the system libpq with ctypes on import; psycopg2 brings its own copy.
    for (driver, library) in [
        ("psycopg", "/libpq.so"),
        ("psycopg2", "psycopg2_binary.libs/libpq"),
    ] {
        assert_eq!(get(&shop.addr, &format!("/{driver}/7")).status, 200);
        let probed = wait_until(Duration::from_secs(10), || {
            loupe
                .stderr()
                .lines()
                .any(|line| line.contains("probing") && line.contains(library))
                .then_some(())
        });
        assert!(probed.is_some(), "{driver}: {}", loupe.stderr());
        assert_eq!(get(&shop.addr, &format!("/{driver}/8")).status, 200);
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-lazy", 8, |_| true);
    for driver in ["psycopg", "psycopg2"] {
        // The first query ran while the library was being loaded: the wire saw it.
        let first = queries_of(&spans, &format!("/{driver}/7"));
        assert_eq!(first.len(), 1, "{driver}");
        assert_eq!(first[0].str_tag("db.query.text"), Some(ORDERS));
        let later = queries_of(&spans, &format!("/{driver}/8"));
        assert_eq!(later.len(), 1, "{driver}: still one span per query");
        assert_eq!(
            later[0].str_tag("loupe.db.source"),
            Some("libpq+wire"),
            "{driver}: the library loaded after attach is probed"
        );
        assert_eq!(later[0].int_tag("db.response.returned_rows"), Some(1));
    }
}

#[test]
fn pgbench_select_only_queries_appear_once_each() {
    require_root();
    let pg = Postgres::start();
    let url = pg.url("postgres");
    let init = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-q", "-i", "-s", "1", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pgbench -i");
    assert!(init.success());
    let jaeger = Jaeger::start();
    // Plaintext: the wire alone, no uprobe attached. Then with libpq's uprobes as well.
    for libpq in ["auto", "always"] {
        pgbench_once(&jaeger, &url, libpq);
    }
}

fn pgbench_once(jaeger: &Jaeger, url: &str, libpq: &str) {
    let service = format!("e2e-pgbench-{libpq}");
    // pgbench waits on its stdin until loupe is attached, then replaces the shell.
    let clients = 2;
    let per_client = 300;
    let mut bench = Command::new("bash")
        .args([
            "-c",
            &format!(
                "read go; exec /usr/lib/postgresql/15/bin/pgbench -n -S -c {clients} -j 1 -t {per_client} -R 300 '{url}'"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let loupe = Loupe::attach(&otlp_args(
        bench.id(),
        &jaeger.grpc_endpoint(),
        &service,
        &["--libpq", libpq],
    ));
    writeln!(bench.stdin.as_mut().unwrap(), "go").unwrap();
    let exited = wait_until(Duration::from_secs(60), || bench.try_wait().ok().flatten());
    assert!(exited.is_some_and(|s| s.success()), "pgbench ran");
    let mut report = String::new();
    std::io::Read::read_to_string(&mut bench.stdout.take().unwrap(), &mut report).unwrap();
    let processed: usize = report
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("pgbench's report: {report}"));
    assert_eq!(processed, clients * per_client);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let spans = jaeger.wait_for_spans(&service, processed, |s| {
        s.str_tag("db.query.text") == Some(text)
    });
    let selects: Vec<&Span> = spans
        .iter()
        .filter(|s| s.str_tag("db.query.text") == Some(text))
        .collect();
    let others: Vec<(&str, Option<&str>)> = spans
        .iter()
        .filter(|s| s.str_tag("db.query.text") != Some(text))
        .map(|s| (s.operation.as_str(), s.str_tag("db.query.text")))
        .collect();
    assert_eq!(
        selects.len(),
        processed,
        "--libpq {libpq}: every transaction's query once\nloupe: {}\nother spans: {others:?}",
        finished.stderr
    );
    assert!(
        selects
            .iter()
            .all(|s| s.int_tag("db.response.returned_rows") == Some(1) && !s.is_error())
    );
    let merged = selects
        .iter()
        .filter(|s| s.str_tag("loupe.db.source") == Some("libpq+wire"))
        .count();
    let probed = finished
        .stderr
        .lines()
        .any(|line| line.contains("probing") && line.contains("libpq"));
    if libpq == "auto" {
        assert!(
            !probed && merged == 0,
            "plaintext: no uprobe attached, the wire saw every query ({merged} merged)\n{}",
            finished.stderr
        );
        assert!(
            selects
                .iter()
                .all(|s| s.str_tag("loupe.db.source") == Some("wire"))
        );
    } else {
        assert!(probed, "{}", finished.stderr);
        assert!(
            merged * 2 > processed,
            "once pgbench's libpq is probed (within a scan of its exec), its queries are seen by both: {merged} of {processed}"
        );
    }
}
