use std::time::Duration;

use super::*;
use crate::detect::patterns::testing::{MS, call, query, server};

const THRESHOLDS: Thresholds = Thresholds {
    http: Duration::from_millis(100),
    external: Duration::from_secs(2),
    db: Duration::from_millis(500),
    cache: Duration::from_millis(100),
};

fn config() -> LedgerConfig {
    LedgerConfig {
        thresholds: THRESHOLDS,
        slos: vec![Slo::parse("GET /orders=50ms@p95").unwrap()],
        regression_factor: 1.5,
        min_samples: 20,
        baseline: None,
        alert_slow_percent: Some(5.0),
        alert_error_percent: Some(10.0),
    }
}

fn ledger(config: LedgerConfig) -> Ledger {
    Ledger::new(
        config,
        ServiceNames::with_lookup(None, |_| Some("shop".into())),
        0,
    )
}

/// A request of `ms` on GET /orders, with `calls`, recorded at `now`.
fn request(ledger: &mut Ledger, ms: u64, calls: &[SpanRecord], now: u64) -> SpanRecord {
    let mut span = server(0, ms);
    crate::detect::mark_slow(&mut span, &THRESHOLDS);
    for call in calls {
        ledger.record_call(call, now);
    }
    ledger.record_request(&mut span, calls, now);
    span
}

const T0: u64 = 1_000 * window::BLOCK_NS;

#[test]
fn routes_and_types_count_every_request_and_call_over_their_windows() {
    let mut ledger = ledger(config());
    for i in 0..30 {
        let calls = [query("SELECT 1", "f1", 1, 3)];
        request(&mut ledger, 10 + i, &calls, T0);
    }
    let doc = ledger.snapshot(T0);
    let http = &doc.by_type["http"];
    assert_eq!(http.windows.since_start.count, 30);
    assert_eq!(http.windows.last1m.count, 30);
    assert_eq!(doc.by_type["db"].windows.since_start.count, 30);
    assert_eq!(doc.by_type["cache"].windows.since_start.count, 0);
    assert_eq!(http.threshold_ms, 100.0);
    assert_eq!(http.slowness_ratio["<0.25"], 15, "10..=24 ms of 100 ms");
    assert_eq!(http.slowness_ratio["0.25-0.5"], 15);
    assert_eq!(doc.routes.len(), 1);
    let route = &doc.routes[0];
    assert_eq!(
        (route.service.as_str(), route.route.as_str()),
        ("shop", "GET /orders")
    );
    assert!(
        (route.windows.since_start.p95_duration - 38.0).abs() < 0.5,
        "{route:?}"
    );
    assert_eq!(route.windows.since_start.min_duration, 10.0);
    // Five minutes on, the windows are empty and since-start is not.
    let later = ledger.snapshot(T0 + 6 * 60 * 1_000_000_000);
    assert_eq!(later.routes[0].windows.last5m.count, 0);
    assert_eq!(later.routes[0].windows.since_start.count, 30);
    let dependency = &doc.dependencies[0];
    assert_eq!(dependency.kind, "db");
    assert_eq!(dependency.dependency, "SELECT 1");
    assert_eq!(dependency.calls, 30);
    assert_eq!(dependency.requests, 30);
    assert!(dependency.share_of_request_time.unwrap() > 0.05);
    let json = serde_json::to_value(&doc).unwrap();
    assert_eq!(json["byType"]["http"]["count"], 30);
    assert!(json["byType"]["http"]["p95Duration"].is_number());
    assert!(json["byType"]["http"]["slowPercentage"].is_number());
    assert!(json["byType"]["http"]["last1m"]["avgDuration"].is_number());
    assert_eq!(json["routes"][0]["route"], "GET /orders");
    assert_eq!(json["schema"], "loupe.stats/1");
}

#[test]
fn a_route_slower_than_its_saved_baseline_is_regressed_and_its_spans_say_so() {
    let mut config = config();
    config.baseline = Some(baseline::testing::file(vec![baseline::testing::route(
        "shop",
        "GET /orders",
        10.0,
    )]));
    let mut ledger = ledger(config);
    for _ in 0..19 {
        request(&mut ledger, 30, &[], T0);
    }
    assert!(
        !ledger
            .refresh(T0)
            .iter()
            .any(|f| f.kind == AlertKind::Regression),
        "19 requests are too few"
    );
    request(&mut ledger, 30, &[], T0);
    let firing = ledger.refresh(T0);
    let regression = firing
        .iter()
        .find(|f| f.kind == AlertKind::Regression)
        .expect("regressed");
    assert_eq!(regression.key(), "regression:shop GET /orders");
    assert!(
        regression.message.contains("against a baseline of 10.0 ms"),
        "{}",
        regression.message
    );
    let span = request(&mut ledger, 30, &[], T0);
    assert_eq!(span.attr("performance.regression"), Some(&true.into()));
    assert_eq!(span.attr("performance.baseline_p95_ms"), Some(&10.0.into()));
    let doc = ledger.snapshot(T0);
    assert!(doc.routes[0].regression);
    assert_eq!(doc.routes[0].baseline_source, Some("saved"));
}

#[test]
fn the_rolling_baseline_is_the_half_hour_before_and_a_steady_route_never_regresses() {
    let mut ledger = ledger(config());
    for _ in 0..40 {
        request(&mut ledger, 10, &[], T0);
    }
    let next = T0 + window::BLOCK_NS;
    for _ in 0..40 {
        request(&mut ledger, 11, &[], next);
    }
    assert!(
        ledger
            .refresh(next)
            .iter()
            .all(|f| f.kind != AlertKind::Regression)
    );
    assert_eq!(
        ledger.snapshot(next).routes[0].baseline_source,
        Some("rolling")
    );
    for _ in 0..40 {
        request(&mut ledger, 40, &[], next + 60_000_000_000);
    }
    assert!(
        ledger
            .refresh(next + 60_000_000_000)
            .iter()
            .any(|f| f.kind == AlertKind::Regression)
    );
}

#[test]
fn requests_above_the_routes_p95_are_attributed_to_what_they_waited_on() {
    let mut config = config();
    config.slos.clear();
    let mut ledger = ledger(config);
    for _ in 0..40 {
        request(&mut ledger, 10, &[query("SELECT 1", "f1", 1, 2)], T0);
    }
    ledger.refresh(T0);
    // Tail requests: 80 of 100 ms waiting on the documents service, 12 on a query.
    for _ in 0..5 {
        let calls = [
            call("10.0.0.8", 8083, "/docs", 5, 85),
            query("SELECT 1", "f1", 85, 97),
        ];
        request(&mut ledger, 100, &calls, T0);
    }
    let doc = ledger.snapshot(T0);
    let tail = doc.routes[0].tail.as_ref().expect("tail requests seen");
    assert_eq!(tail.requests, 5);
    assert_eq!(tail.parts[0].component, "waiting on 10.0.0.8:8083");
    assert_eq!(tail.parts[0].share, 0.8);
    assert_eq!(tail.parts[1].component, "waiting on SELECT 1");
    assert_eq!(tail.parts[1].share, 0.12);
    assert_eq!(tail.parts[2].component, "own work");
    assert_eq!(
        tail.summary,
        "p95+ requests of GET /orders (5): 80% waiting on 10.0.0.8:8083, 12% waiting on SELECT 1, 8% own work"
    );
    let documents = doc
        .dependencies
        .iter()
        .find(|d| d.dependency == "10.0.0.8:8083")
        .unwrap();
    assert_eq!(
        (documents.kind, documents.calls, documents.requests),
        ("external", 5, 5)
    );
    assert_eq!(documents.share_of_request_time, Some(0.8));
    assert_eq!(
        doc.dependencies[0].dependency, "10.0.0.8:8083",
        "largest share first"
    );
}

#[test]
fn slos_slow_shares_and_error_rates_fire_only_past_their_limits() {
    let mut ledger = ledger(config());
    // 40 requests of 20 ms: within the SLO, none slow, none failed.
    for _ in 0..40 {
        request(&mut ledger, 20, &[], T0);
    }
    assert_eq!(
        ledger.refresh(T0),
        Vec::new(),
        "a healthy route fires nothing"
    );
    let doc = ledger.snapshot(T0);
    let slo = &doc.slos[0];
    assert_eq!(
        (slo.compliance, slo.burn_rate, slo.breached),
        (Some(1.0), Some(0.0), false)
    );
    // 10 of 200 ms, failed: 20% over the SLO, slow, failed.
    for _ in 0..10 {
        let mut span = server(0, 200);
        span.error = Some("500".into());
        crate::detect::mark_slow(&mut span, &THRESHOLDS);
        ledger.record_request(&mut span, &[], T0);
    }
    let kinds: Vec<AlertKind> = ledger.refresh(T0).iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            AlertKind::ErrorRate,
            AlertKind::SloBreach,
            AlertKind::SlowShare
        ],
        "sorted by key"
    );
    let doc = ledger.snapshot(T0);
    let slo = &doc.slos[0];
    assert_eq!(slo.compliance, Some(0.8));
    assert_eq!(slo.burn_rate, Some(4.0));
    assert_eq!(slo.error_budget_remaining, Some(-3.0));
    assert!(slo.breached);
    let json = serde_json::to_value(&doc).unwrap();
    assert_eq!(json["slos"][0]["complianceLast5m"], 0.8);
    assert_eq!(json["routes"][0]["slo"]["objective"], "p95");
}

#[test]
fn tables_are_bounded_and_what_is_past_them_counted() {
    let mut ledger = ledger(config());
    for i in 0..(MAX_ROUTES + 5) {
        let mut span = server(0, 1);
        span.name = format!("GET /r{i}").into();
        ledger.record_request(&mut span, &[], T0);
    }
    assert_eq!(ledger.snapshot(T0).routes.len(), MAX_ROUTES);
    assert_eq!(ledger.untracked, 5);
    assert_eq!(
        ledger.snapshot(T0).by_type["http"]
            .windows
            .since_start
            .count,
        MAX_ROUTES as u64 + 5
    );
    let _ = MS;
}

#[test]
fn the_saved_baseline_has_every_routes_percentiles() {
    let mut ledger = ledger(config());
    for ms in 1..=100 {
        request(&mut ledger, ms, &[], T0);
    }
    let file = ledger.baseline_file();
    assert_eq!(file.schema, baseline::SCHEMA);
    assert_eq!(file.routes.len(), 1);
    assert!((file.routes[0].p95_ms - 95.0).abs() < 1.0);
    assert_eq!(file.routes[0].count, 100);
}
