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
