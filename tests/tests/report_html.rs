//! The HTML report end to end: `loupe report --html FILE` on the demo shop (frontend, backend,
//! a real PostgreSQL), the page opened in a real headless Chromium (Debian's, which `cargo xtask
//! setup` installs). It must render without a console message (the page has no script, so any
//! message is an error: a blocked fetch, a broken image), and the DOM Chromium built must hold
//! what the test made: its routes with their percentiles, the N+1 of /api/report with the
//! waterfall of its worst request, and the flamegraph of a slow CPU-bound request. A screenshot
//! is taken too (kept at `$LOUPE_REPORT_SCREENSHOT` when set: docs/report.png is made so).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use loupe_tests::{
    TempDir,
    client::Client,
    postgres::Postgres,
    procs::{DemoApp, Loupe, args},
    require_root, wait_until,
};

/// Requests per route: enough for the p50/p95/p99 to be three different ranks.
const USERS: usize = 25;
const ORDERS: usize = 25;
const REPORTS: usize = 5;
const CRUNCHES: usize = 2;
const SLO: &str = "GET /api/users/{id}=50ms@p95";

/// Debian's chromium, or `$LOUPE_CHROMIUM`; the test fails (never skips) without one.
fn chromium() -> PathBuf {
    let path = std::env::var_os("LOUPE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "no Chromium at {}: this test renders the HTML report in headless Chromium; run `cargo \
         xtask setup` (it installs Debian's chromium) or point LOUPE_CHROMIUM at one",
        path.display()
    );
    path
}

/// Chromium headless on `page` with `extra` flags, a profile of its own under `dir`, killed
/// after a minute.
fn run_chromium(chromium: &Path, dir: &Path, page: &Path, extra: &[String]) -> Output {
    let child = Command::new(chromium)
        .args([
            "--headless=new",
            // Root cannot run Chromium's sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Console messages go to stderr as `INFO:CONSOLE:<line>] "<message>", source: ...`
            // only at log level 0 (INFO).
            "--enable-logging=stderr",
            "--log-level=0",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {}: {err}", chromium.display()));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.expect("wait for chromium"),
        Err(_) => {
            // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("chromium did not finish within a minute: {extra:?}");
        }
    }
}

/// The console messages in Chromium's stderr.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// The start tags of `html`, in order: (where the tag starts, where it ends, its name, its
/// attributes as written).
fn start_tags(html: &str) -> Vec<(usize, usize, &str, &str)> {
    let mut tags = Vec::new();
    let mut at = 0;
    while let Some(found) = html[at..].find('<') {
        let start = at + found;
        let Some(len) = html[start..].find('>') else {
            break;
        };
        let end = start + len + 1;
        let inside = &html[start + 1..end - 1];
        if inside.starts_with(|c: char| c.is_ascii_alphabetic()) {
            let name_len = inside
                .find(|c: char| c.is_ascii_whitespace() || c == '/')
                .unwrap_or(inside.len());
            tags.push((start, end, &inside[..name_len], &inside[name_len..]));
        }
        at = end;
    }
    tags
}

/// The unescaped value of attribute `name` in `attrs` (as Chromium serializes them: `"`-quoted).
fn attr(attrs: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = attrs.find(&key)? + key.len();
    let len = attrs[start..].find('"')?;
    Some(unescape(&attrs[start..start + len]))
}

fn has_class(attrs: &str, class: &str) -> bool {
    attr(attrs, "class").is_some_and(|c| c.split_whitespace().any(|c| c == class))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every `<name class="... class ...">` element of `html`: its attributes and its inner HTML up
/// to the first `</name>` (the report nests none of the elements the test reads in its own
/// kind).
fn elements<'a>(html: &'a str, name: &str, class: &str) -> Vec<(&'a str, &'a str)> {
    let close = format!("</{name}>");
    start_tags(html)
        .into_iter()
        .filter(|(_, _, n, attrs)| *n == name && has_class(attrs, class))
        .map(|(_, end, _, attrs)| {
            let len = html[end..].find(&close).unwrap_or(html.len() - end);
            (attrs, &html[end..end + len])
        })
        .collect()
}

/// The element with `id`: its inner HTML up to its first `</name>`.
fn by_id<'a>(html: &'a str, name: &str, id: &str) -> &'a str {
    let close = format!("</{name}>");
    let (_, end, _, _) = start_tags(html)
        .into_iter()
        .find(|(_, _, n, attrs)| *n == name && attr(attrs, "id").as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no <{name} id=\"{id}\"> in the DOM"));
    let len = html[end..].find(&close).unwrap_or(html.len() - end);
    &html[end..end + len]
}

/// The text of `html` with its tags taken out, unescaped.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(out.trim())
}

/// The number in the `<td class="... class">` of `row`.
fn number(row: &str, class: &str) -> f64 {
    let (_, inner) = elements(row, "td", class)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {class} cell in {row}"));
    let value = text(inner);
    value
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("{class} cell `{value}` is not a number"))
}

#[test]
fn the_html_report_renders_in_chromium_with_routes_problems_and_flamegraphs() {
    require_root();
    let chromium = chromium();
    let pg = Postgres::start();
    pg.create_orders_shop();
    let database = format!("127.0.0.1:{}/shop", pg.port);
    let demo = DemoApp::start_with(&["--database", &database]);
    let dir = TempDir::new("report-html");
    let page = dir.0.join("report.html");
    let loupe = Loupe::attach(&args(&[
        "report",
        "--pid",
        &demo.frontend_pid().to_string(),
        "--slow-http",
        "300ms",
        "--slo",
        SLO,
        "--html",
        &page.display().to_string(),
    ]));
    let mut client = Client::connect(&demo.frontend_addr).expect("connect to the demo app");
    for i in 0..USERS {
        client.get_ok(&format!("/api/users/{}", i + 1));
    }
    for i in 0..ORDERS {
        client.get_ok(&format!("/api/orders/{}", i % 10 + 1));
    }
    for _ in 0..REPORTS {
        client.get_ok("/api/report");
    }
    for i in 0..CRUNCHES {
        client.get_ok(&format!("/api/crunch?ms=800&req={i}"));
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.assert_told(&format!(
        "loupe: wrote the HTML report to {}",
        page.display()
    ));
    let html = std::fs::read_to_string(&page)
        .unwrap_or_else(|err| panic!("no page at {}: {err}\n{}", page.display(), finished.stderr));
    for needle in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(needle), "the page fetches nothing: {needle}");
    }

    // Chromium renders it without a console message and dumps the DOM it built.
    let dumped = run_chromium(&chromium, &dir.0, &page, &args(&["--dump-dom"]));
    let stderr = String::from_utf8_lossy(&dumped.stderr);
    assert!(dumped.status.success(), "chromium --dump-dom: {stderr}");
    let console = console_lines(&stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let dom = String::from_utf8_lossy(&dumped.stdout).into_owned();
    assert!(dom.contains("<title>loupe report"), "{dom}");

    // Every route the test called is a row, its percentiles numbers in order.
    let table = by_id(&dom, "table", "routes");
    let rows = elements(table, "tr", "route");
    let row = |route: &str| {
        rows.iter()
            .find(|(attrs, _)| attr(attrs, "data-route").as_deref() == Some(route))
            .map(|(_, inner)| *inner)
            .unwrap_or_else(|| {
                let names: Vec<_> = rows.iter().map(|(a, _)| attr(a, "data-route")).collect();
                panic!("no {route} row in #routes: {names:?}")
            })
    };
    for (route, count) in [
        ("GET /api/users/{id}", USERS),
        ("GET /api/orders/{id}", ORDERS),
        ("GET /api/report", REPORTS),
        ("GET /api/crunch", CRUNCHES),
    ] {
        let row = row(route);
        assert_eq!(number(row, "count"), count as f64, "{route}: {row}");
        let (p50, p95, p99) = (number(row, "p50"), number(row, "p95"), number(row, "p99"));
        assert!(
            p50 > 0.0 && p50 <= p95 && p95 <= p99,
            "{route}: p50 {p50}, p95 {p95}, p99 {p99}"
        );
        assert_eq!(
            elements(row, "rect", "bar").len(),
            14,
            "{route}: a histogram bar per bucket"
        );
    }
    let crunch = number(row("GET /api/crunch"), "p95");
    assert!((700.0..5000.0).contains(&crunch), "crunch p95 {crunch} ms");
    assert_eq!(number(row("GET /api/crunch"), "slow"), 100.0, "past 300 ms");

    // The SLO has its row.
    let slos = by_id(&dom, "section", "slos");
    let slo = elements(slos, "tr", "slo");
    assert_eq!(slo.len(), 1, "{slos}");
    assert_eq!(
        attr(slo[0].0, "data-route").as_deref(),
        Some("GET /api/users/{id}")
    );

    // The N+1 of /api/report, with its advice and its worst request's waterfall: eight queries.
    let problems = elements(by_id(&dom, "section", "problems"), "article", "problem");
    let patterns: Vec<(Option<String>, Option<String>)> = problems
        .iter()
        .map(|(attrs, _)| (attr(attrs, "data-pattern"), attr(attrs, "data-route")))
        .collect();
    let (_, n_plus_one) = problems
        .iter()
        .find(|(attrs, _)| {
            attr(attrs, "data-pattern").as_deref() == Some("n_plus_one")
                && attr(attrs, "data-route").as_deref() == Some("GET /api/report")
        })
        .unwrap_or_else(|| panic!("no n_plus_one of GET /api/report in #problems: {patterns:?}"));
    let advice = elements(n_plus_one, "p", "advice");
    assert!(!text(advice[0].1).is_empty(), "{n_plus_one}");
    let (waterfall, _) = elements(n_plus_one, "div", "waterfall")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no waterfall: {n_plus_one}"));
    assert_eq!(attr(waterfall, "data-trace-id").map(|t| t.len()), Some(32));
    let calls: Vec<String> = start_tags(n_plus_one)
        .into_iter()
        .filter(|(_, _, name, attrs)| *name == "div" && has_class(attrs, "call"))
        .filter_map(|(_, _, _, attrs)| attr(attrs, "data-kind"))
        .collect();
    assert!(
        calls.iter().filter(|kind| *kind == "db").count() >= 8,
        "eight queries drawn: {calls:?}"
    );
    assert!(
        dom.contains("data-pattern=\"repeated_call\""),
        "{patterns:?}"
    );

    // The slow CPU-bound request's flamegraph, an embedded SVG.
    let flames = by_id(&dom, "section", "flamegraphs");
    let figures = elements(flames, "figure", "flame");
    let (_, crunch_flame) = figures
        .iter()
        .find(|(attrs, _)| attr(attrs, "data-span").as_deref() == Some("GET /api/crunch"))
        .unwrap_or_else(|| panic!("no flamegraph of GET /api/crunch: {flames}"));
    let img = start_tags(crunch_flame)
        .into_iter()
        .find(|(_, _, name, _)| *name == "img")
        .and_then(|(_, _, _, attrs)| attr(attrs, "src"))
        .unwrap_or_else(|| panic!("no img: {crunch_flame}"));
    assert!(img.starts_with("data:image/svg+xml;base64,"), "{img:.80}");
    assert!(img.len() > 1000, "a flamegraph of some size");

    // A screenshot: a PNG of the asked size with something drawn on it.
    let png = dir.0.join("report.png");
    let shot = run_chromium(
        &chromium,
        &dir.0,
        &page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2000".to_owned(),
        ],
    );
    let stderr = String::from_utf8_lossy(&shot.stderr);
    assert!(shot.status.success(), "chromium --screenshot: {stderr}");
    assert!(console_lines(&stderr).is_empty(), "{stderr}");
    let bytes = wait_until(Duration::from_secs(5), || std::fs::read(&png).ok())
        .unwrap_or_else(|| panic!("no screenshot at {}: {stderr}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 2000));
    assert!(
        bytes.len() > 30_000,
        "a blank page compresses to a few KB: {} bytes",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("LOUPE_REPORT_SCREENSHOT") {
        std::fs::copy(&png, &keep).expect("keep the screenshot");
    }
}

#[test]
fn the_console_check_catches_a_page_error() {
    // What the test above relies on: Chromium tells of a script's error and of a fetch the page's
    // policy blocked, and the scanner finds only what is there.
    let chromium = chromium();
    let dir = TempDir::new("report-html-console");
    let page = dir.0.join("broken.html");
    for (body, told) in [
        (
            "<script>no_such_function()</script>",
            "Uncaught ReferenceError",
        ),
        (
            "<meta http-equiv=\"Content-Security-Policy\" content=\"img-src data:\">\
             <img src=\"http://127.0.0.1:9/x.png\">",
            "Content Security Policy",
        ),
    ] {
        std::fs::write(
            &page,
            format!("<!doctype html>{body}<p id=\"x\">a &amp; <b>b</b></p>"),
        )
        .unwrap();
        let output = run_chromium(&chromium, &dir.0, &page, &args(&["--dump-dom"]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let console = console_lines(&stderr);
        assert!(console.iter().any(|l| l.contains(told)), "{told}: {stderr}");
        let dom = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text(by_id(&dom, "p", "x")), "a & b");
        assert!(elements(&dom, "p", "missing").is_empty());
    }
}
