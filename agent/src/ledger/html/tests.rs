use std::time::Duration;

use super::*;
use crate::{
    config::Thresholds,
    detect::patterns::testing::{call, query, server},
    ledger::{
        Ledger, LedgerConfig,
        baseline::{self, BaselineRoute},
        slo::Slo,
        window::BLOCK_NS,
    },
    process::services::ServiceNames,
    spans::SpanRecord,
};

const THRESHOLDS: Thresholds = Thresholds {
    http: Duration::from_millis(100),
    external: Duration::from_secs(2),
    db: Duration::from_millis(500),
    cache: Duration::from_millis(100),
};
const T0: u64 = 1_000 * BLOCK_NS;
/// A route name with everything HTML must escape.
const NASTY: &str = "GET /a<b>&\"c\"";

fn ledger() -> Ledger {
    let config = LedgerConfig {
        thresholds: THRESHOLDS,
        slos: vec![Slo::parse("GET /orders=50ms@p95").unwrap()],
        regression_factor: 1.5,
        min_samples: 20,
        baseline: Some(baseline::testing::file(vec![baseline::testing::route(
            "shop",
            "GET /orders",
            10.0,
        )])),
        alert_slow_percent: None,
        alert_error_percent: None,
    };
    Ledger::new(
        config,
        ServiceNames::with_lookup(None, |_| Some("shop".into())),
        0,
    )
}

fn request(ledger: &mut Ledger, name: &str, ms: u64, calls: &[SpanRecord]) {
    let mut span = server(0, ms);
    span.name = name.to_owned().into();
    crate::detect::mark_slow(&mut span, &THRESHOLDS);
    for call in calls {
        ledger.record_call(call, T0);
    }
    ledger.record_request(&mut span, calls, T0);
}

/// GET /orders (regressed against its saved baseline, with an SLO and a tail), and the nasty
/// route; one N+1 problem with its waterfall, one flamegraph.
fn page() -> ReportPage {
    let mut ledger = ledger();
    for i in 0..30 {
        request(
            &mut ledger,
            "GET /orders",
            20 + i,
            &[query("SELECT 1", "f1", 1, 3)],
        );
        request(&mut ledger, NASTY, 5, &[]);
    }
    ledger.refresh(T0);
    for _ in 0..3 {
        let calls = [
            call("10.0.0.8", 8083, "/docs", 5, 85),
            query("SELECT * FROM t WHERE a < 1 AND b > 'x'", "f2", 85, 97),
        ];
        request(&mut ledger, "GET /orders", 100, &calls);
    }
    let stats = ledger.snapshot(T0);
    let worst = Waterfall {
        request: "GET /orders".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        duration_ms: 100.0,
        rows: (0..10)
            .map(|i| WaterfallRow {
                label: "SELECT id FROM orders WHERE id = $1 AND note <> '<x>'".into(),
                kind: "db",
                start_ms: 50.0 + 4.0 * f64::from(i),
                duration_ms: 4.0,
                error: i == 9,
            })
            .collect(),
    };
    ReportPage {
        title: "loupe report: shop".into(),
        stats,
        problems: vec![ProblemEntry {
            route: "GET /orders".into(),
            pattern: "n_plus_one".into(),
            pattern_words: "N+1 queries".into(),
            requests: 3,
            cost_ms: 120.5,
            advice: "10 queries of one statement per request: fetch them in one <script>alert(1)</script>".into(),
            worst: Some(worst),
        }],
        flamegraphs: vec![FlameEntry {
            span: NASTY.into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            duration_ms: 1234.5,
            folded: vec![
                ("app!main;app!crunch_numbers".into(), 40),
                ("app!main;libcrypto!SHA256<x>".into(), 25),
            ],
        }],
        comparison: None,
    }
}

/// The opening tag of the one element with `needle` in it.
fn tag<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle} in the page"));
    let start = html[..=at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

/// The text of the first `<td class="{class}...">` after `from`.
fn cell<'a>(html: &'a str, from: &str, class: &str) -> &'a str {
    let row = &html[html.find(from).unwrap_or_else(|| panic!("no {from}"))..];
    let open = format!("<td class=\"num {class}\">");
    let start = row.find(&open).unwrap_or_else(|| panic!("no {class} cell")) + open.len();
    &row[start..start + row[start..].find("</td>").unwrap()]
}

#[test]
fn each_route_is_a_row_with_its_percentiles_slo_and_regression() {
    let page = page();
    let html = render(&page);
    assert!(html.starts_with("<!doctype html>"), "{html}");
    let orders = page
        .stats
        .routes
        .iter()
        .find(|r| r.route == "GET /orders")
        .unwrap();
    assert!(orders.regression, "30 ms against a 10 ms baseline");
    let row = "<tr class=\"route regressed\" data-route=\"GET /orders\" data-service=\"shop\">";
    assert!(html.contains(row), "{html}");
    let total = &orders.windows.since_start;
    for (class, value) in [
        ("p50", total.p50_duration),
        ("p95", total.p95_duration),
        ("p99", total.p99_duration),
    ] {
        assert_eq!(cell(&html, row, class), format!("{value:.1}"), "{class}");
        assert!(cell(&html, row, class).parse::<f64>().unwrap() > 0.0);
    }
    assert_eq!(cell(&html, row, "count"), "33");
    // Its histogram has a bar per bucket, and the 100 ms requests are past the threshold.
    let histogram = &html[html.find(row).unwrap()..];
    let histogram = &histogram[..histogram.find("</svg>").unwrap()];
    assert_eq!(histogram.matches("<rect ").count(), orders.histogram.len());
    assert!(
        histogram.contains("<rect class=\"bar over\""),
        "{histogram}"
    );
    assert!(html.contains(
        "<span class=\"badge bad\">regressed</span> <span class=\"dim\">baseline p95 10.0 ms</span>"
    ));
    // The SLO: in the row and in its section.
    assert!(html.contains("<tr class=\"slo\" data-route=\"GET /orders\">"));
    let slos = &html[html.find("<section id=\"slos\">").unwrap()..];
    assert!(!slos.starts_with("<section id=\"slos\">\n<h2>SLOs</h2>\n<p class=\"empty\">"));
    // The tail and the dependencies.
    let tail = tag(
        &html,
        "<div class=\"tail-route\" data-route=\"GET /orders\"",
    );
    assert!(tail.contains("data-service=\"shop\""), "{tail}");
    assert!(html.contains(&format!(
        "<div class=\"tail-summary\">{}</div>",
        Esc(&orders.tail.as_ref().unwrap().summary)
    )));
    assert!(html.contains("<table id=\"dependencies\">"));
    assert!(
        html.contains("<tr class=\"dependency\" data-type=\"external\" data-service=\"shop\">")
    );
    // The by-type cards.
    assert!(html.contains("<div class=\"type\" data-type=\"http\">"));
    assert!(html.contains("<div class=\"type\" data-type=\"cache\">"));
}

#[test]
fn a_problem_has_its_advice_and_its_worst_requests_waterfall() {
    let html = render(&page());
    let problems = &html[html.find("<section id=\"problems\">").unwrap()..];
    let problems = &problems[..problems.find("</section>").unwrap()];
    assert!(
        problems.contains(
            "<article class=\"problem\" data-pattern=\"n_plus_one\" data-route=\"GET /orders\">"
        ),
        "{problems}"
    );
    assert!(problems.contains("<span class=\"badge pattern\">N+1 queries</span>"));
    assert!(problems.contains("<span class=\"requests\">3</span> requests"));
    assert!(problems.contains("<span class=\"cost\">120.5</span> ms lost"));
    assert!(problems.contains("data-trace-id=\"0af7651916cd43dd8448eb211c80319c\""));
    assert_eq!(problems.matches("<div class=\"wf-row call").count(), 10);
    assert_eq!(
        problems.matches("<div class=\"wf-row call error\"").count(),
        1
    );
    // x is the call's start over the request's duration, the width its share.
    assert!(
        problems.contains("style=\"left:50.000%;width:4.000%\""),
        "{problems}"
    );
    assert!(problems.contains("style=\"left:86.000%;width:4.000%\""));
    // Each row is labelled with its call and says its duration.
    let label = "SELECT id FROM orders WHERE id = $1 AND note &lt;&gt; &#39;&lt;x&gt;&#39;";
    assert_eq!(
        problems
            .matches(&format!(
                "<div class=\"wf-label\" title=\"{label}\">{label}</div>"
            ))
            .count(),
        10
    );
    assert_eq!(
        problems
            .matches("<div class=\"wf-ms\">4.0 ms</div>")
            .count(),
        10
    );
    assert!(!html.contains("no problems found"));
}

#[test]
fn a_flamegraph_is_an_embedded_svg_image_with_its_caption() {
    let html = render(&page());
    let flames = &html[html.find("<section id=\"flamegraphs\">").unwrap()..];
    let img = tag(flames, "<img alt=\"CPU flamegraph of ");
    let data = img
        .split("src=\"data:image/svg+xml;base64,")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("\">"))
        .unwrap_or_else(|| panic!("{img}"));
    // `<?xml` and `<svg` in base64, and nothing but base64.
    assert!(
        data.starts_with("PD94bW") || data.starts_with("PHN2Zy"),
        "{data}"
    );
    assert!(
        data.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    );
    assert!(flames.contains("<span class=\"duration\">1234.5</span> ms · 65 CPU samples"));
    assert!(flames.contains("<code class=\"trace\">4bf92f3577b34da6a3ce929d0e0e4736</code>"));
}

#[test]
fn every_text_and_attribute_is_escaped() {
    let html = render(&page());
    assert!(!html.contains(NASTY), "the raw route is nowhere");
    assert!(!html.contains("<b>"));
    assert!(!html.contains("<x>"));
    assert!(
        !html.contains("<script"),
        "no script, not even the advice's"
    );
    let escaped = "GET /a&lt;b&gt;&amp;&quot;c&quot;";
    assert!(html.contains(&format!("<tr class=\"route\" data-route=\"{escaped}\"")));
    assert!(html.contains(&format!("<td class=\"route-name\">{escaped}<span")));
    assert!(html.contains(&format!("<figure class=\"flame\" data-span=\"{escaped}\"")));
    assert!(html.contains("fetch them in one &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("note &lt;&gt; &#39;&lt;x&gt;&#39;"));
    assert_eq!(
        Esc("a'b\"c<d>e&f").to_string(),
        "a&#39;b&quot;c&lt;d&gt;e&amp;f"
    );
    assert_eq!(Esc("plain é").to_string(), "plain é");
}

#[test]
fn milliseconds_keep_a_decimal_and_below_one_the_microseconds() {
    assert_eq!(Ms(12.345).to_string(), "12.3");
    assert_eq!(Ms(1200.0).to_string(), "1200.0");
    assert_eq!(Ms(0.042).to_string(), "0.042");
    assert_eq!(Ms(0.0).to_string(), "0.0");
}

#[test]
fn the_page_fetches_nothing() {
    let html = render(&page());
    for needle in [
        "src=\"http",
        "href=\"http",
        "url(",
        "@import",
        "src=\"//",
        "href=\"//",
    ] {
        assert!(!html.contains(needle), "{needle} in the page");
    }
    assert!(html.contains(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
    ));
    // Every src is a data: image, every href an anchor in the page.
    for (attr, allowed) in [(" src=\"", "data:image/svg+xml;base64,"), (" href=\"", "#")] {
        for (at, _) in html.match_indices(attr) {
            assert!(
                html[at + attr.len()..].starts_with(allowed),
                "{}",
                &html[at..at + 60]
            );
        }
    }
}

#[test]
fn empty_sections_say_so() {
    let ledger = ledger();
    let page = ReportPage {
        title: "loupe report: nothing".into(),
        stats: ledger.snapshot(T0),
        problems: Vec::new(),
        flamegraphs: Vec::new(),
        comparison: None,
    };
    let html = render(&page);
    for words in [
        "no requests seen",
        "no problems found",
        "no SLOs configured",
        "no requests above their route's p95 yet",
        "no outbound calls or queries seen",
        "no slow span was profiled",
        "no alerts fired",
    ] {
        assert!(html.contains(words), "{words}");
    }
    assert!(!html.contains("<tr class=\"route"));
    assert!(
        !html.contains("id=\"comparison\""),
        "no baseline, no comparison"
    );
}

#[test]
fn a_comparison_shows_each_route_before_and_after() {
    let mut page = page();
    let route = |p95_ms: f64| BaselineRoute {
        service: "shop".into(),
        route: "GET /orders".into(),
        count: 100,
        p50_ms: 8.0,
        p95_ms,
        p99_ms: 150.0,
    };
    page.comparison = Some(vec![
        Comparison {
            service: "shop".into(),
            route: "GET /orders".into(),
            before: Some(route(120.0)),
            after: Some(route(30.0)),
            p95_improvement_percent: Some(75.0),
        },
        Comparison {
            service: "shop".into(),
            route: NASTY.into(),
            before: None,
            after: Some(route(5.0)),
            p95_improvement_percent: None,
        },
    ]);
    let html = render(&page);
    let table = &html[html.find("<table id=\"comparison\">").unwrap()..];
    let row = "<tr class=\"compared\" data-route=\"GET /orders\" data-service=\"shop\">";
    assert_eq!(cell(table, row, "before-p95"), "120.0");
    assert_eq!(cell(table, row, "after-p95"), "30.0");
    assert!(
        table
            .contains("<td class=\"num improvement better\" data-percent=\"75\">75.0% faster</td>")
    );
    assert!(table.contains("<td class=\"num dim before-p95\">—</td>"));
    assert!(html.contains("<a href=\"#comparison\">"));
}

#[test]
fn base64_matches_the_rfc_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(charts::base64(plain.as_bytes()), encoded, "{plain}");
    }
    assert_eq!(charts::base64(&[0xff, 0xfe, 0x00]), "//4A");
}
