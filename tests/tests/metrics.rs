//! `--metrics-addr`: the demo shop under concurrent load while loupe serves /metrics, scraped
//! during the load and after it and read with the Prometheus client library's parser. Each
//! route's request count is the number of requests the clients made, with the right statuses;
//! the outbound calls are counted per peer and status; every histogram is cumulative and
//! never goes back; loupe's own counters match what reached Jaeger; its CPU and RSS are there.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use loupe_tests::{
    client::Client,
    free_port,
    jaeger::Jaeger,
    procs::{DemoApp, Loupe, args, otlp_args},
    prometheus::{Scrape, parse, request, scrape, scrape_text},
    require_root, wait_until,
};

const CLIENTS: usize = 8;
const ROUNDS: usize = 30;
const SERVICE: &str = "e2e-metrics";
const SERVER: &str = "http_server_request_duration_seconds";
const CLIENT: &str = "http_client_request_duration_seconds";

/// What a request is: its method, its path (with the request's unique id), the route loupe
/// templates it to, the status the shop answers, and the status of the backend call it makes.
struct Route {
    method: &'static str,
    path: fn(u64) -> String,
    route: &'static str,
    status: u16,
    call: Option<u16>,
}

/// The routes, and in which rounds a client requests each: every route a different number of
/// times, so that a count under the wrong route or status cannot come out right.
const ROUTES: &[(Route, usize)] = &[
    (
        Route {
            method: "GET",
            path: |id| format!("/api/users/{id}"),
            route: "/api/users/{id}",
            status: 200,
            call: None,
        },
        1,
    ),
    (
        Route {
            method: "GET",
            path: |id| format!("/api/checkout?user={id}"),
            route: "/api/checkout",
            status: 200,
            call: Some(200),
        },
        2,
    ),
    (
        Route {
            method: "GET",
            path: |id| format!("/api/missing?id={id}"),
            route: "/api/missing",
            status: 502,
            call: Some(404),
        },
        3,
    ),
    (
        Route {
            method: "GET",
            path: |id| format!("/api/fail?id={id}"),
            route: "/api/fail",
            status: 500,
            call: None,
        },
        5,
    ),
    (
        Route {
            method: "POST",
            path: |id| format!("/api/orders?id={id}"),
            route: "/api/orders",
            status: 201,
            call: None,
        },
        6,
    ),
];

/// The requests of round `round` (every route whose period divides it).
fn round_of(round: usize) -> impl Iterator<Item = &'static Route> {
    ROUTES
        .iter()
        .filter(move |(_, every)| round.is_multiple_of(*every))
        .map(|(route, _)| route)
}

fn server_labels<'a>(route: &'a Route, status: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("service_name", SERVICE),
        ("http_request_method", route.method),
        ("url_scheme", "http"),
        ("http_route", route.route),
        ("http_response_status_code", status),
    ]
}

/// Every histogram series is cumulative (its buckets never decrease, `+Inf` is its count) and
/// none is behind what `earlier` had.
fn assert_histograms_sound(scrape: &Scrape, earlier: Option<&Scrape>) {
    let earlier = earlier.map(Scrape::histograms).unwrap_or_default();
    for (key, series) in scrape.histograms() {
        let (family, labels) = &key;
        let mut last = (f64::NEG_INFINITY, 0.0);
        for (le, cumulated) in &series.buckets {
            let bound: f64 = le.parse().unwrap_or_else(|_| panic!("le `{le}`"));
            assert!(bound > last.0, "{family}{labels:?}: buckets in order");
            assert!(
                *cumulated >= last.1,
                "{family}{labels:?}: cumulative buckets"
            );
            last = (bound, *cumulated);
        }
        assert_eq!(last.0, f64::INFINITY, "{family}{labels:?} ends with +Inf");
        assert_eq!(
            Some(last.1),
            series.count,
            "{family}{labels:?}: +Inf is the count"
        );
        assert!(
            series.sum.is_some_and(|sum| sum >= 0.0),
            "{family}{labels:?}"
        );
        if let Some(before) = earlier.get(&key) {
            assert!(series.count >= before.count, "{family}{labels:?} went back");
            for ((_, now), (_, then)) in series.buckets.iter().zip(&before.buckets) {
                assert!(now >= then, "{family}{labels:?}: a bucket went back");
            }
        }
    }
}

#[test]
fn metrics_count_every_request_by_route_and_status_during_and_after_load() {
    require_root();
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        SERVICE,
        &["--metrics-addr", &metrics],
    ));
    let told = format!("loupe: serving metrics at http://{metrics}/metrics");
    assert!(loupe.stderr().contains(&told), "{}", loupe.stderr());
    let before = scrape(&metrics);
    assert_eq!(before.total(&format!("{SERVER}_count"), &[]), 0.0);

    let total: usize = CLIENTS
        * (0..ROUNDS)
            .map(|round| round_of(round).count())
            .sum::<usize>();
    let done = AtomicUsize::new(0);
    let scraped_during_load = AtomicBool::new(false);
    // (method, route, status) -> requests answered so far; (status) -> calls to the backend.
    let sent: Mutex<BTreeMap<(&str, &str, u16), usize>> = Mutex::default();
    let calls: Mutex<BTreeMap<u16, usize>> = Mutex::default();
    let mut during = Vec::new();
    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let (done, scraped, sent, calls) = (&done, &scraped_during_load, &sent, &calls);
            let addr = demo.frontend_addr.clone();
            scope.spawn(move || {
                let mut client = Client::connect(&addr).expect("connect to the demo");
                for round in 0..ROUNDS {
                    if round == ROUNDS / 2 {
                        // The second half of the load waits until the first half was seen on /metrics.
                        wait_until(Duration::from_secs(60), || {
                            scraped.load(Ordering::SeqCst).then_some(())
                        })
                        .expect("a scrape during the load");
                    }
                    for (k, route) in round_of(round).enumerate() {
                        let id = ((c * 1_000 + round) * 10 + k) as u64;
                        let path = (route.path)(id);
                        let body: &[u8] = if route.method == "POST" {
                            br#"{"item":"book"}"#
                        } else {
                            b""
                        };
                        let response = client.request(route.method, &path, body).expect("request");
                        assert_eq!(response.status, route.status, "{} {path}", route.method);
                        *sent
                            .lock()
                            .unwrap()
                            .entry((route.method, route.route, route.status))
                            .or_default() += 1;
                        if let Some(status) = route.call {
                            *calls.lock().unwrap().entry(status).or_default() += 1;
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        // The first half: scraped until requests show up (each scrape checked as it comes).
        let check = |text: &str, answered: usize, during: &mut Vec<Scrape>| -> f64 {
            let scrape = parse(text);
            let counted = scrape.total(&format!("{SERVER}_count"), &[("service_name", SERVICE)]);
            // A client may have its answer and not have counted it yet: one per client.
            assert!(
                counted <= (answered + CLIENTS) as f64,
                "{counted} requests counted, {answered} answered"
            );
            assert_histograms_sound(&scrape, during.last());
            during.push(scrape);
            counted
        };
        let shown = wait_until(Duration::from_secs(60), || {
            let text = scrape_text(&metrics);
            let answered = done.load(Ordering::SeqCst);
            (check(&text, answered, &mut during) > 0.0).then_some(())
        });
        let half = done.load(Ordering::SeqCst);
        // The second half runs while it is scraped again and again: the first of these scrapes
        // starts before any client is back to work (they look every 100 ms).
        scraped_during_load.store(true, Ordering::SeqCst);
        let mut texts = Vec::new();
        while done.load(Ordering::SeqCst) < total {
            let started_at = done.load(Ordering::SeqCst);
            texts.push((
                started_at,
                scrape_text(&metrics),
                done.load(Ordering::SeqCst),
            ));
        }
        shown.expect("requests counted while the load ran");
        assert!(
            half < total && texts[0].0 < total,
            "scraped during the load"
        );
        let overlapped = texts.iter().filter(|(_, _, after)| *after < total).count();
        // Every scrape of the second half parsed and checked (at most 8 of them, spread out).
        let step = texts.len().div_ceil(8);
        for (_, text, answered) in texts.iter().step_by(step) {
            check(text, *answered, &mut during);
        }
        eprintln!(
            "{} scrapes during the load ({overlapped} while the second half ran, from {half} of {total} requests answered); \
             the last counted {} requests",
            during.len() + texts.len() - texts.iter().step_by(step).count(),
            during
                .last()
                .map_or(0.0, |s| s.total(&format!("{SERVER}_count"), &[])),
        );
    });
    let sent = sent.into_inner().unwrap();
    let calls = calls.into_inner().unwrap();
    assert_eq!(sent.values().sum::<usize>(), total);
    let total_calls: usize = calls.values().sum();
    let spans = total + total_calls;

    // After the load: every request counted under its route and status, every span exported.
    let counted = |scrape: &Scrape| -> BTreeMap<(&str, &str, u16), usize> {
        let mut counts = BTreeMap::new();
        for (route, _) in ROUTES {
            let status = route.status.to_string();
            let n = scrape
                .value(&format!("{SERVER}_count"), &server_labels(route, &status))
                .or_else(|| {
                    // A server error also carries its error.type.
                    let mut labels = server_labels(route, &status).to_vec();
                    labels.push(("error_type", &status));
                    scrape.value(&format!("{SERVER}_count"), &labels)
                });
            if let Some(n) = n {
                counts.insert((route.method, route.route, route.status), n as usize);
            }
        }
        counts
    };
    let after = wait_until(Duration::from_secs(60), || {
        let scrape = scrape(&metrics);
        let exported = scrape
            .value("loupe_spans_exported_total", &[])
            .unwrap_or(0.0);
        (counted(&scrape) == sent && exported >= spans as f64).then_some(scrape)
    })
    .unwrap_or_else(|| {
        let scrape = scrape(&metrics);
        panic!(
            "counted {:?}, sent {sent:?}; spans exported {:?} of {spans}\n{}",
            counted(&scrape),
            scrape.value("loupe_spans_exported_total", &[]),
            loupe.stderr()
        )
    });
    assert_histograms_sound(&after, during.last());
    assert_eq!(
        after.total(&format!("{SERVER}_count"), &[("service_name", SERVICE)]),
        total as f64,
        "no request counted twice or under another route"
    );
    for (route, _) in ROUTES {
        let status = route.status.to_string();
        let errors: Vec<_> = after
            .matching(&format!("{SERVER}_count"), &[("http_route", route.route)])
            .into_iter()
            .filter(|s| s.labels.contains_key("error_type"))
            .collect();
        if route.status >= 500 {
            assert!(
                errors.iter().all(|s| s.labels["error_type"] == status) && errors.len() == 1,
                "{}: error.type is the status: {errors:?}",
                route.route
            );
        } else {
            assert!(
                errors.is_empty(),
                "{}: not an error: {errors:?}",
                route.route
            );
        }
    }
    // Fast routes in the first buckets, all of them under 10 s.
    let users = server_labels(&ROUTES[0].0, "200");
    let mut under_10s = users.to_vec();
    under_10s.push(("le", "10"));
    assert_eq!(
        after.value(&format!("{SERVER}_bucket"), &under_10s),
        Some(sent[&("GET", "/api/users/{id}", 200)] as f64)
    );
    assert!(
        after
            .value(&format!("{SERVER}_sum"), &users)
            .is_some_and(|sum| sum > 0.0)
    );

    // The backend calls: by the backend's address and port, and status; a 404 is an error.
    let backend_port = demo.backend_addr.rsplit(':').next().unwrap();
    for (status, n) in &calls {
        let status = status.to_string();
        let labels = [
            ("service_name", SERVICE),
            ("http_request_method", "GET"),
            ("server_address", "127.0.0.1"),
            ("server_port", backend_port),
            ("http_response_status_code", status.as_str()),
        ];
        let found = after.matching(&format!("{CLIENT}_count"), &labels);
        assert_eq!(
            found.len(),
            1,
            "one series of calls answered {status}: {found:?}"
        );
        assert_eq!(found[0].value, *n as f64, "calls answered {status}");
        let error = found[0].labels.get("error_type").map(String::as_str);
        assert_eq!(error, (status == "404").then_some("404"), "{status}");
    }
    assert_eq!(after.kind(SERVER), Some("histogram"));
    assert_eq!(after.kind(CLIENT), Some("histogram"));
    assert_eq!(
        after.kind("db_client_operation_duration_seconds"),
        Some("histogram")
    );

    // loupe's own: counters, the export's latency, its CPU and memory.
    let value = |name: &str| {
        after
            .value(name, &[])
            .unwrap_or_else(|| panic!("no {name} in the scrape"))
    };
    assert!(value("loupe_events_read_total") > 0.0);
    assert!(value("loupe_ring_bytes_read_total") > value("loupe_events_read_total"));
    assert_eq!(value("loupe_spans_exported_total"), spans as f64);
    assert!(value("loupe_spans_built_total") >= spans as f64);
    assert_eq!(value("loupe_spans_dropped_total"), 0.0);
    assert_eq!(value("loupe_events_lost_total"), 0.0);
    assert_eq!(value("loupe_metric_series_dropped_total"), 0.0);
    assert_eq!(after.kind("loupe_events_read"), Some("counter"));
    assert_eq!(after.kind("loupe_span_queue_depth"), Some("gauge"));
    assert!(after.value("loupe_calls_held", &[]).is_some());
    let exports = after
        .value("loupe_export_duration_seconds_count", &[("outcome", "ok")])
        .unwrap_or(0.0);
    assert!(exports >= 1.0, "the export requests were timed");
    assert_eq!(value("loupe_export_failures_total"), 0.0);
    assert!(value("process_resident_memory_bytes") > 1_048_576.0);
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert_eq!(after.kind("process_resident_memory_bytes"), Some("gauge"));
    assert_eq!(after.kind("process_cpu_seconds"), Some("counter"));

    // Only GET /metrics is served.
    for (method, path) in [("GET", "/"), ("GET", "/metricsx"), ("POST", "/metrics")] {
        let (status, _) = request(&metrics, method, path).expect("the endpoint answers");
        assert_eq!(status, 404, "{method} {path}");
    }

    // What the counters say reached Jaeger did.
    let in_jaeger = jaeger.wait_for_spans(SERVICE, total, |s| s.kind() == "server");
    assert_eq!(
        in_jaeger.iter().filter(|s| s.kind() == "server").count(),
        total
    );
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_eq!(summary["spans_exported"], spans as u64);
    assert_eq!(summary["metric_series_dropped"], 0);
}

#[test]
fn a_metrics_address_that_cannot_be_listened_on_stops_loupe_before_it_attaches() {
    require_root();
    let demo = DemoApp::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let pid = demo.frontend_pid().to_string();
    let finished = Loupe::spawn(&args(&["--pid", &pid, "--metrics-addr", &addr]))
        .wait(Duration::from_secs(30));
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(
        lines,
        [format!(
            "loupe: error: cannot serve metrics on {addr}: Address already in use (os error 98)"
        )],
        "one line, and nothing attached"
    );

    let finished = Loupe::spawn(&args(&["--pid", &pid, "--metrics-addr", "9464"]))
        .wait(Duration::from_secs(30));
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .starts_with("loupe: error: invalid value '9464' for '--metrics-addr <HOST:PORT>'")
            && finished.stderr.lines().count() == 1,
        "{}",
        finished.stderr
    );
}

/// `--otlp-metrics`: the same metrics pushed over OTLP to a collector (Jaeger v2 with a metrics
/// pipeline into its Prometheus exporter, scraped and parsed as Prometheus would). Two loupes
/// watch the same shop under their own service names: one over gRPC every second, one over
/// OTLP/HTTP once an hour, whose counts arrive only by the last push at its exit.
#[test]
fn otlp_metrics_reach_the_collector_with_every_request_counted() {
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 25;
    require_root();
    let jaeger = Jaeger::start_with_metrics();
    let collector = format!("127.0.0.1:{}", jaeger.metrics.expect("a metrics pipeline"));
    let demo = DemoApp::start();
    let grpc_service = "e2e-otlp-metrics-grpc";
    let http_service = "e2e-otlp-metrics-http";
    let grpc = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        grpc_service,
        &[
            "--otlp-metrics",
            "--otlp-metrics-interval",
            "1s",
            "--slo",
            "GET /api/users/{id}=2s@p95",
        ],
    ));
    let mut http_args = otlp_args(
        demo.frontend_pid(),
        &jaeger.http_endpoint(),
        http_service,
        &["--otlp-metrics", "--otlp-metrics-interval", "1h"],
    );
    http_args.extend(args(&["--otlp-protocol", "http"]));
    let http = Loupe::attach(&http_args);

    // Keep-alive clients, a unique id in every request: users (200) and failures (500).
    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let addr = demo.frontend_addr.clone();
            scope.spawn(move || {
                let mut client = Client::connect(&addr).expect("connect to the demo");
                for round in 0..ROUNDS {
                    let id = (c * 1_000 + round) as u64;
                    let users = client.get(&format!("/api/users/{id}")).expect("request");
                    assert_eq!(users.status, 200);
                    if round % 5 == 0 {
                        let fail = client.get(&format!("/api/fail?id={id}")).expect("request");
                        assert_eq!(fail.status, 500);
                    }
                }
            });
        }
    });
    let users = (CLIENTS * ROUNDS) as f64;
    let fails = (CLIENTS * ROUNDS / 5) as f64;
    let count = format!("{SERVER}_count");
    let counted = |scrape: &Scrape, service: &str| {
        let of = |route: &str, status: &str| {
            scrape.total(
                &count,
                &[
                    ("service_name", service),
                    ("http_route", route),
                    ("http_response_status_code", status),
                ],
            )
        };
        (of("/api/users/{id}", "200"), of("/api/fail", "500"))
    };

    // The gRPC loupe's pushes: every request counted under its route and status.
    let seen = wait_until(Duration::from_secs(60), || {
        let scrape = scrape(&collector);
        (counted(&scrape, grpc_service) == (users, fails)).then_some(scrape)
    })
    .unwrap_or_else(|| {
        let scrape = scrape(&collector);
        panic!(
            "counted {:?} of {:?}\n{}\njaeger: {}",
            counted(&scrape, grpc_service),
            (users, fails),
            grpc.stderr(),
            jaeger.log()
        )
    });
    let failed = seen.matching(
        &count,
        &[("service_name", grpc_service), ("http_route", "/api/fail")],
    );
    assert!(
        failed
            .iter()
            .all(|s| s.labels.get("error_type").map(String::as_str) == Some("500")),
        "error.type is the status: {failed:?}"
    );
    assert!(
        seen.kind(SERVER) == Some("histogram"),
        "a histogram: {:?}",
        seen.kind(SERVER)
    );
    // loupe's own counters, under its own resource.
    let own = |name: &str| seen.total(name, &[("service_name", "loupe")]);
    assert!(own("loupe_events_read_total") > 0.0, "loupe's own counters");
    // The SLO's gauges, with its service's metrics: every users request was within its 2 s.
    let slo = [
        ("service_name", grpc_service),
        ("http_request_method", "GET"),
        ("http_route", "/api/users/{id}"),
        ("objective", "p95"),
    ];
    let compliant = wait_until(Duration::from_secs(30), || {
        let scrape = scrape(&collector);
        (scrape.total("loupe_slo_compliance", &slo) == 1.0).then_some(scrape)
    })
    .unwrap_or_else(|| panic!("no SLO gauge:\n{}", scrape_text(&collector)));
    assert_eq!(
        compliant.total("loupe_slo_error_budget_remaining", &slo),
        1.0
    );
    // A push counts itself once the collector took it: the next push carries that.
    let taken = wait_until(Duration::from_secs(30), || {
        let total =
            scrape(&collector).total("loupe_metric_exports_total", &[("service_name", "loupe")]);
        (total >= 1.0).then_some(())
    });
    assert!(taken.is_some(), "pushes counted: {}", grpc.stderr());
    assert_eq!(
        counted(&seen, http_service),
        (0.0, 0.0),
        "the hourly loupe has not pushed yet"
    );

    // The HTTP loupe's only push is the one at its exit.
    let finished = http.stop();
    assert!(
        !finished.stderr.contains("OTLP metrics to"),
        "no push failed: {}",
        finished.stderr
    );
    let after = wait_until(Duration::from_secs(30), || {
        let scrape = scrape(&collector);
        (counted(&scrape, http_service) == (users, fails)).then_some(())
    });
    assert!(
        after.is_some(),
        "the last push at exit: counted {:?}\n{}",
        counted(&scrape(&collector), http_service),
        finished.stderr
    );
    let finished = grpc.stop();
    assert!(
        !finished.stderr.contains("OTLP metrics to"),
        "no push failed: {}",
        finished.stderr
    );
}
