//! Without an endpoint, loupe shows the spans in the terminal: a line per finished request and a
//! per-route table with percentiles.

use std::time::Duration;

use loupe_tests::{
    client::Client,
    procs::{DemoApp, Loupe, args},
    require_root,
};

#[test]
fn terminal_view_prints_a_line_per_request_and_a_route_table() {
    require_root();
    let demo = DemoApp::start();
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &demo.frontend_pid().to_string(),
        "--duration",
        "30s",
    ]));
    let mut client = Client::connect(&demo.frontend_addr).unwrap();
    for path in [
        "/api/users/5",
        "/api/users/6",
        "/api/fail",
        "/api/slow",
        "/api/checkout?user=1",
    ] {
        client.get(path).unwrap();
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let out = &finished.stdout;
    // Request lines start with the time; the route table's rows start with the span kind.
    let request_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" GET /"))
        .collect();
    assert_eq!(
        request_lines
            .iter()
            .filter(|l| !l.contains(" call "))
            .count(),
        5,
        "one line per request:\n{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("GET /api/users/{id} 200 "))
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("GET /api/fail 500 ") && l.ends_with("ERROR")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("GET /api/slow 200 ") && l.contains("SLOW (1.")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("call GET /score -> 127.0.0.1:")),
        "{out}"
    );
    let header = out
        .lines()
        .find(|l| l.contains("p50"))
        .expect("route table");
    assert!(header.contains("p95") && header.contains("p99") && header.contains("slow%"));
    let slow_row = out
        .lines()
        .find(|l| l.starts_with("server") && l.contains("GET /api/slow"))
        .expect("a row for /api/slow");
    assert!(slow_row.contains("100.0%"), "{slow_row}");
}

#[test]
fn duration_flag_stops_loupe_by_itself_with_a_summary() {
    require_root();
    let demo = DemoApp::start();
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &demo.frontend_pid().to_string(),
        "--duration",
        "2s",
    ]));
    let finished = loupe.wait(Duration::from_secs(20));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.summary().contains_key("events_read"));
}

#[test]
fn terminal_view_marks_patterns_per_route_and_shows_problems_and_hot_frames() {
    require_root();
    let pg = loupe_tests::postgres::Postgres::start();
    pg.create_orders_shop();
    let database = format!("127.0.0.1:{}/shop", pg.port);
    let demo = DemoApp::start_with(&["--database", &database]);
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &demo.frontend_pid().to_string(),
        "--slow-http",
        "300ms",
        "--summary-interval",
        "1h",
    ]));
    let mut client = Client::connect(&demo.frontend_addr).unwrap();
    for path in ["/api/report", "/api/crunch?ms=800", "/api/users/5"] {
        assert_eq!(client.get(path).unwrap().status, 200, "{path}");
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let out = &finished.stdout;
    // The request's line names its patterns and says the diagnosis.
    let report_line = out
        .lines()
        .find(|l| l.contains(" GET /api/report 200 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        report_line.contains("  [n_plus_one, repeated_call] "),
        "{report_line}"
    );
    assert!(report_line.contains("of the request"), "{report_line}");
    let user_line = out
        .lines()
        .find(|l| l.contains(" GET /api/users/{id} 200 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!user_line.contains('['), "{user_line}");
    // The table marks the route, lists the problems and the hottest frames.
    let row = out
        .lines()
        .find(|l| l.starts_with("server") && l.contains("GET /api/report"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.ends_with("n_plus_one,repeated_call"), "{row}");
    assert!(out.contains("top problems:"), "{out}");
    let frames = out
        .lines()
        .skip_while(|l| !l.starts_with("hottest frames of slow spans:"))
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        frames.starts_with("GET /api/crunch (") && frames.contains("crunch_numbers"),
        "{frames}"
    );
}
