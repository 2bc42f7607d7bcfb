//! Bad input is one line and a non-zero exit, never a panic; a collector that is down costs
//! counted drops and a warning, never loupe itself.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::Command,
    time::Duration,
};

use loupe_tests::{
    TempDir, binary,
    client::get,
    free_port,
    procs::{DemoApp, Loupe, args},
    require_root,
};

fn assert_one_line_error(stderr: &str, expected: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].starts_with("loupe: error: "), "{stderr}");
    assert!(lines[0].contains(expected), "`{expected}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A pid that no process has: one of ours, reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn unknown_pid_is_a_one_line_error() {
    require_root();
    let pid = dead_pid();
    let finished = Loupe::spawn(&args(&["--pid", &pid.to_string()])).wait(Duration::from_secs(30));
    assert_eq!(finished.status.code(), Some(1));
    assert_one_line_error(&finished.stderr, &format!("no process with pid {pid}"));
}

#[test]
fn running_without_privileges_is_a_one_line_error() {
    require_root();
    let me = std::process::id().to_string();
    // `nobody` may not be able to reach the build tree (a clone under /root): run a copy.
    let dir = TempDir::new("nobody");
    let copy = dir.0.join("loupe");
    std::fs::copy(binary("LOUPE_BIN", "loupe"), &copy).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(&copy);
    command.args(["--pid", &me]).uid(65534).gid(65534);
    let finished = Loupe::spawn_with(&mut command).wait(Duration::from_secs(30));
    assert_eq!(finished.status.code(), Some(1));
    assert_one_line_error(&finished.stderr, "needs root");
}

#[test]
fn malformed_flags_are_one_line_usage_errors() {
    require_root();
    let junk =
        std::env::temp_dir().join(format!("loupe-junk-baseline-{}.json", std::process::id()));
    std::fs::write(&junk, "not json").unwrap();
    for (flags, expected) in [
        (
            vec!["--pid", "1", "--slow-http", "fast"],
            "`fast` is not a duration",
        ),
        (
            vec!["--pid", "1", "--slow-http", "abc"],
            "`abc` is not a duration like 500ms, 2s or 1m: give a number and a unit",
        ),
        (vec!["--pid", "x"], "invalid value 'x'"),
        (
            vec!["--pid", "1", "--otlp-endpoint", "localhost:4317"],
            "invalid --otlp-endpoint",
        ),
        (
            vec!["--pid", "1", "--otlp-protocol", "carrier-pigeon"],
            "invalid value 'carrier-pigeon'",
        ),
        (
            vec![],
            "nothing to observe: give --pid PID, --exe PATH or --name COMM",
        ),
        (vec!["--duration", "5s"], "nothing to observe"),
        (
            vec!["--exe", "/no/such/binary"],
            "invalid value '/no/such/binary' for '--exe <PATH>': No such file",
        ),
        (vec!["--name", ""], "--name must not be empty"),
        (
            vec!["--pid", "1", "--slo", "GET /a"],
            "`GET /a` is not an SLO like 'POST /api/loans=500ms@p95': give the route, `=`, a duration, `@` and a percentile",
        ),
        (
            vec![
                "--pid",
                "1",
                "--slo",
                "GET /a=1s@p95",
                "--slo",
                "GET /a=2s@p99",
            ],
            "two SLOs for GET /a: give each route one",
        ),
        (
            vec!["--pid", "1", "--baseline", "/no/such/baseline.json"],
            "cannot read the baseline /no/such/baseline.json: No such file",
        ),
        (
            vec!["--pid", "1", "--baseline", junk.to_str().unwrap()],
            "is not a baseline loupe saved (write one with `loupe report --save-baseline FILE`) (line 1)",
        ),
        (
            vec!["--pid", "1", "--alert-webhook", "ftp://alerts"],
            "`ftp://alerts` is not a URL like http://127.0.0.1:9000/alerts",
        ),
        (
            vec!["--pid", "1", "--regression-factor", "0.5"],
            "`0.5` is not a factor above 1 like 1.5",
        ),
        (
            vec!["--pid", "1", "--alert-slow-percent", "lots"],
            "`lots` is not a percentage between 0 and 100 like 5",
        ),
    ] {
        let finished = Loupe::spawn(&args(&flags)).wait(Duration::from_secs(30));
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{flags:?}: {}",
            finished.stderr
        );
        assert_one_line_error(&finished.stderr, expected);
    }
}

#[test]
fn unreachable_endpoint_counts_dropped_spans_and_warns_without_panicking() {
    require_root();
    let demo = DemoApp::start();
    let closed = free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &demo.frontend_pid().to_string(),
        "--otlp-endpoint",
        &endpoint,
        "--shutdown-timeout",
        "2s",
    ]));
    assert!(
        loupe.stderr().contains(&format!(
            "loupe: warning: the OTLP collector at {endpoint} cannot be reached"
        )),
        "a warning at start: {}",
        loupe.stderr()
    );
    for i in 0..5 {
        assert_eq!(
            get(&demo.frontend_addr, &format!("/api/users/{i}")).status,
            200
        );
    }
    // The traffic must still be served at full speed while the exporter fails.
    let quick = get(&demo.frontend_addr, "/api/users/9");
    assert!(
        quick.elapsed < Duration::from_millis(200),
        "{:?}",
        quick.elapsed
    );
    let asked = std::time::Instant::now();
    loupe.interrupt();
    let summary_after = loupe_tests::wait_until(Duration::from_secs(15), || {
        loupe
            .stderr()
            .contains("loupe: summary")
            .then(|| asked.elapsed())
    });
    assert!(
        summary_after.is_some_and(|took| took < Duration::from_millis(3_500)),
        "the exit is bounded by --shutdown-timeout: summary after {summary_after:?}"
    );
    let finished = loupe.wait(Duration::from_secs(30));
    let summary = finished.summary();
    assert!(summary["spans_dropped"] >= 6, "{summary:?}");
    assert_eq!(summary["spans_exported"], 0);
    assert!(
        finished
            .stderr
            .contains(&format!("OTLP export to {endpoint} failed: Unavailable")),
        "{}",
        finished.stderr
    );
    assert!(!finished.stderr.contains("panicked"), "{}", finished.stderr);
    assert!(
        !finished.stderr.contains('\u{1b}'),
        "no colour codes in a pipe"
    );
    // Every span went nowhere: a failed run, said in one line.
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(&format!(
            "loupe: error: every span ({}) was dropped: the OTLP collector at {endpoint} never took one",
            summary["spans_dropped"]
        )),
        "{}",
        finished.stderr
    );
}
