//! The numbers over time (issue 19), against a real Python service under concurrent keep-alive
//! load, a unique id in every request: loupe's `/stats` counts every request of each route
//! exactly, with its percentiles; a baseline saved by one run (`--save-baseline`) is what the
//! next run (`--baseline`) judges regressions by and compares against; a planted regression, a
//! breached SLO and a slow share each give exactly one alert to a local webhook receiver over
//! several evaluations (the cooldown holds the rest back), and the healthy route none; the
//! regressed route's spans say so in Jaeger, the healthy route's do not; the SLO gauges are on
//! `/metrics`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use loupe_tests::{
    client::Client,
    free_port,
    jaeger::Jaeger,
    procs::{DemoApp, Downstream, Finished, Loupe, args},
    prometheus::{request, scrape_text},
    require_root, wait_until,
};
use serde_json::Value;

const CLIENTS: usize = 4;
/// Fast checkouts before the slow ones.
const FAST: u64 = 200;

/// How often loupe refreshes the routes' verdicts (its alert stage).
fn alerts_every() -> Duration {
    Duration::from_secs(5)
}
const SERVICE: &str = "e2e-numbers";
/// The route whose latency the second run plants, and the one that stays as it was.
const PLANTED: &str = "GET /sleep/planted";
const HEALTHY: &str = "GET /sleep/healthy";

/// JSON bodies POSTed to it, each answered 200.
struct Webhook {
    addr: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("its address").to_string();
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let value = serde_json::from_slice(&body)
                    .unwrap_or_else(|err| panic!("the webhook got no JSON ({err}): {body:?}"));
                sink.lock().expect("not poisoned").push(value);
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/alerts", self.addr)
    }

    fn alerts(&self) -> Vec<Value> {
        self.received.lock().expect("not poisoned").clone()
    }

    fn keys(&self) -> BTreeMap<String, usize> {
        let mut keys = BTreeMap::new();
        for alert in self.alerts() {
            *keys
                .entry(alert["key"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        keys
    }
}

/// `/stats` from `addr`.
fn stats(addr: &str) -> Value {
    let (status, body) = request(addr, "GET", "/stats").expect("GET /stats");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("/stats is not JSON ({err}): {body}"))
}

fn route<'a>(stats: &'a Value, name: &str) -> Option<&'a Value> {
    stats["routes"]
        .as_array()?
        .iter()
        .find(|route| route["route"] == name)
}

fn count(stats: &Value, name: &str) -> u64 {
    route(stats, name).map_or(0, |route| route["count"].as_u64().unwrap_or(0))
}

/// Keep-alive clients sending `planted_ms` and 20 ms requests by turns, each with its own id,
/// until `stop`; counts what was answered per route.
fn load(
    addr: &str,
    planted_ms: u64,
    stop: &AtomicBool,
    sent: &[AtomicU64; 2],
    rounds: Option<u64>,
) {
    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            scope.spawn(move || {
                let mut client = Client::connect(addr).expect("connect to the service");
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && rounds.is_none_or(|n| i < n) {
                    client.get_ok(&format!("/sleep/planted?ms={planted_ms}&id=c{c}-{i}"));
                    sent[0].fetch_add(1, Ordering::SeqCst);
                    client.get_ok(&format!("/sleep/healthy?ms=20&id=c{c}-{i}"));
                    sent[1].fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            });
        }
    });
}

/// Waits until `/stats` has counted every request sent, route by route.
fn counted(addr: &str, sent: &[AtomicU64; 2]) -> Value {
    let want = [
        sent[0].load(Ordering::SeqCst),
        sent[1].load(Ordering::SeqCst),
    ];
    wait_until(Duration::from_secs(20), || {
        let now = stats(addr);
        (count(&now, PLANTED) == want[0] && count(&now, HEALTHY) == want[1]).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "/stats never counted the {want:?} requests sent: {:#}",
            stats(addr)
        )
    })
}

#[test]
fn stats_baselines_slos_and_alerts_follow_a_planted_regression() {
    require_root();
    let service = Downstream::start();
    let pid = service.pid().to_string();
    let dir = std::env::temp_dir().join(format!("loupe-numbers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = dir.join("baseline.json");
    let _ = std::fs::remove_file(&baseline);

    // The first run: the planted route at 5 ms, read on --stats-addr, saved as the baseline.
    let stats_addr = format!("127.0.0.1:{}", free_port());
    let first = Loupe::attach(&args(&[
        "report",
        "--pid",
        &pid,
        "--service-name",
        SERVICE,
        "--stats-addr",
        &stats_addr,
        "--save-baseline",
        baseline.to_str().unwrap(),
    ]));
    assert!(
        first.stderr().contains(&format!(
            "loupe: serving statistics at http://{stats_addr}/stats"
        )),
        "{}",
        first.stderr()
    );
    let sent: [AtomicU64; 2] = Default::default();
    load(&service.addr, 5, &AtomicBool::new(false), &sent, Some(30));
    let before = counted(&stats_addr, &sent);
    assert_eq!(count(&before, PLANTED), 120);
    assert_eq!(before["byType"]["http"]["count"], 240);
    assert_eq!(before["byType"]["http"]["last1m"]["count"], 240);
    assert_eq!(before["byType"]["db"]["count"], 0);
    let planted_p95 = route(&before, PLANTED).unwrap()["p95Duration"]
        .as_f64()
        .unwrap();
    let healthy = route(&before, HEALTHY).unwrap();
    assert!(
        (5.0..30.0).contains(&planted_p95),
        "p95 of 5 ms sleeps: {planted_p95}"
    );
    let healthy_p50 = healthy["p50Duration"].as_f64().unwrap();
    assert!((20.0..40.0).contains(&healthy_p50), "{healthy}");
    assert_eq!(healthy["service"], SERVICE);
    let first: Finished = first.stop();
    assert!(first.status.success(), "{}", first.stderr);
    first.assert_told(&format!(
        "loupe: saved the baseline of 2 routes to {}",
        baseline.display()
    ));
    assert!(
        first
            .stdout
            .contains("loupe report: routes (slowest p95 first)\n"),
        "{}",
        first.stdout
    );
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert_eq!(saved["schema"], "loupe.baseline/1");
    let saved_planted = saved["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == PLANTED)
        .expect("the planted route saved")
        .clone();
    assert_eq!(saved_planted["count"], 120);

    // The second run: the planted route at 60 ms, judged against the saved baseline.
    let jaeger = Jaeger::start();
    let webhook = Webhook::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let second = Loupe::attach(&args(&[
        "report",
        "--pid",
        &pid,
        "--service-name",
        SERVICE,
        "--otlp-endpoint",
        &jaeger.grpc_endpoint(),
        "--metrics-addr",
        &metrics,
        "--baseline",
        baseline.to_str().unwrap(),
        "--slo",
        "GET /sleep/planted=30ms@p95",
        "--slo",
        "GET /sleep/healthy=100ms@p95",
        "--slow-http",
        "40ms",
        "--alert-slow-percent",
        "5",
        "--alert-webhook",
        &webhook.url(),
    ]));
    let stop = AtomicBool::new(false);
    let sent: [AtomicU64; 2] = Default::default();
    let during = std::thread::scope(|scope| {
        scope.spawn(|| load(&service.addr, 60, &stop, &sent, None));
        // Every kind of alert planted goes out once...
        let fired = wait_until(Duration::from_secs(60), || {
            let keys = webhook.keys();
            (keys.len() >= 3).then_some(keys)
        });
        // ...and stays one over two more evaluations (5 s each) of the same conditions.
        let fired_at = Instant::now();
        let during = stats(&metrics);
        while fired_at.elapsed() < Duration::from_secs(12) && fired.is_some() {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
        assert!(
            fired.is_some(),
            "alerts: {:?}\n{}",
            webhook.alerts(),
            second.stderr()
        );
        during
    });
    let keys = webhook.keys();
    assert_eq!(
        keys,
        BTreeMap::from([
            (format!("regression:{SERVICE} {PLANTED}"), 1),
            (format!("slo_breach:{SERVICE} {PLANTED}"), 1),
            ("slow_share:http".to_owned(), 1),
        ]),
        "one alert per key and cooldown, none for {HEALTHY}: {:#?}",
        webhook.alerts()
    );
    let regression = webhook
        .alerts()
        .into_iter()
        .find(|alert| alert["kind"] == "regression")
        .unwrap();
    assert_eq!(regression["source"], "loupe");
    assert_eq!(regression["service"], SERVICE);
    assert_eq!(regression["subject"], PLANTED);
    assert!(
        regression["value"].as_f64().unwrap() >= 60.0,
        "{regression}"
    );
    assert!(
        regression["message"]
            .as_str()
            .unwrap()
            .starts_with("GET /sleep/planted regressed: p95 "),
        "{regression}"
    );

    // /stats during the load: the planted route regressed against the saved p95, its SLO
    // breached; the healthy route neither.
    let planted = route(&during, PLANTED).expect("the planted route");
    assert_eq!(planted["regression"], true, "{planted}");
    assert_eq!(planted["baselineSource"], "saved");
    assert_eq!(planted["baselineP95Duration"], saved_planted["p95Ms"]);
    assert!(planted["last1m"]["p95Duration"].as_f64().unwrap() >= 60.0);
    assert_eq!(planted["slo"]["breached"], true);
    assert!(planted["slo"]["burnRate"].as_f64().unwrap() > 1.0);
    let healthy = route(&during, HEALTHY).expect("the healthy route");
    assert_eq!(healthy["regression"], false, "{healthy}");
    assert_eq!(healthy["slo"]["breached"], false);
    assert_eq!(healthy["slo"]["compliance"], 1.0);
    assert!(during["byType"]["http"]["slowPercentage"].as_f64().unwrap() > 40.0);
    assert_eq!(during["alerts"]["sent"], 3);

    let after = counted(&metrics, &sent);
    let total = sent[0].load(Ordering::SeqCst) + sent[1].load(Ordering::SeqCst);
    assert_eq!(after["byType"]["http"]["count"].as_u64(), Some(total));
    assert!(
        after["alerts"]["suppressed"].as_u64().unwrap() >= 3,
        "the conditions held at two more evaluations: {:#}",
        after["alerts"]
    );
    let text = scrape_text(&metrics);
    assert!(
        text.contains(
            "loupe_slo_compliance{service_name=\"e2e-numbers\",http_request_method=\"GET\",http_route=\"/sleep/healthy\",objective=\"p95\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("loupe_slo_burn_rate{service_name=\"e2e-numbers\",http_request_method=\"GET\",http_route=\"/sleep/planted\",objective=\"p95\"} ")
    );
    assert!(text.contains("\nloupe_alerts_total 3\n"), "{text}");
    let second = second.stop();
    assert!(second.status.success(), "{}", second.stderr);
    for line in [
        "loupe report: regressions\nGET /sleep/planted regressed: p95 ",
        "loupe report: SLOs\n",
        "GET /sleep/healthy p95 within 100.0 ms: 100.0% compliant",
        "loupe report: against the baseline\n",
        "loupe report: alerts\n3 sent (",
    ] {
        assert!(second.stdout.contains(line), "{line}:\n{}", second.stdout);
    }
    let compared = second
        .stdout
        .lines()
        .find(|line| line.starts_with(PLANTED) && line.ends_with("% slower"))
        .unwrap_or_else(|| panic!("{PLANTED} slower than its baseline:\n{}", second.stdout));
    assert!(compared.contains(" slower"), "{compared}");
    assert_eq!(second.summary()["alert_webhook_failures"], 0);

    // The spans: the planted route's, once regressed, carry its baseline; the healthy route's
    // never.
    let spans = jaeger.wait_for_requests(SERVICE, total as usize, total as usize);
    let regressed: Vec<_> = spans
        .iter()
        .filter(|span| span.tag("performance.regression").and_then(Value::as_bool) == Some(true))
        .collect();
    assert!(!regressed.is_empty(), "no span says it regressed");
    for span in &regressed {
        assert_eq!(span.operation, PLANTED);
        assert_eq!(
            span.tag("performance.baseline_p95_ms")
                .and_then(Value::as_f64),
            saved_planted["p95Ms"].as_f64()
        );
    }
    assert!(
        spans
            .iter()
            .filter(|span| span.operation == HEALTHY)
            .all(|span| span.tag("performance.regression").is_none())
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The tail of a route (its requests above its five-minute p95) is attributed to what those
/// requests waited on, and each dependency's calls and share of its callers' time are counted:
/// the demo's checkout, 200 fast requests and then 5 whose backend call takes 150 ms.
#[test]
fn the_tail_of_a_route_is_the_dependency_its_slowest_requests_waited_on() {
    require_root();
    let demo = DemoApp::start();
    let stats_addr = format!("127.0.0.1:{}", free_port());
    let loupe = Loupe::attach(&args(&[
        "report",
        "--pid",
        &demo.frontend_pid().to_string(),
        "--service-name",
        SERVICE,
        "--stats-addr",
        &stats_addr,
    ]));
    let backend = demo.backend_addr.clone();
    let mut client = Client::connect(&demo.frontend_addr).expect("connect to the demo");
    // 200 fast: 5 slow ones later stay above the p95 (5 of 205 is under 5%).
    for user in 0..FAST {
        client.get_ok(&format!("/api/checkout?user={user}"));
    }
    let checkout = "GET /api/checkout";
    // The alert stage refreshes every 5 s: then the route's p95 is what the tail is judged by;
    // once one more refresh has seen every fast request, the slow ones alone are added.
    let threshold = wait_until(Duration::from_secs(20), || {
        route(&stats(&stats_addr), checkout)?["tailP95Duration"].as_f64()
    })
    .unwrap_or_else(|| panic!("no tail p95: {:#}", stats(&stats_addr)));
    assert!(threshold < 100.0, "the fast requests' p95: {threshold}");
    std::thread::sleep(alerts_every() + Duration::from_secs(1));
    let tail_of = |stats: &Value| {
        route(stats, checkout).unwrap()["tail"]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = tail_of(&stats(&stats_addr));
    for user in FAST..FAST + 5 {
        client.get_ok(&format!("/api/checkout?user={user}&delay=150"));
    }
    let now = wait_until(Duration::from_secs(20), || {
        let now = stats(&stats_addr);
        (count(&now, checkout) == FAST + 5).then_some(now)
    })
    .unwrap_or_else(|| panic!("{} checkouts: {:#}", FAST + 5, stats(&stats_addr)));
    let tail = &route(&now, checkout).unwrap()["tail"];
    let requests = tail["requests"].as_u64().unwrap();
    assert_eq!(requests - before, 5, "the 5 slow ones: {tail}");
    let waiting = format!("waiting on {backend}");
    assert_eq!(tail["parts"][0]["component"], waiting.as_str(), "{tail}");
    assert!(tail["parts"][0]["share"].as_f64().unwrap() >= 0.9, "{tail}");
    let summary = tail["summary"].as_str().unwrap();
    let first = summary
        .strip_prefix(&format!("p95+ requests of {checkout} ({requests}): "))
        .and_then(|rest| rest.split(", ").next())
        .unwrap_or_else(|| panic!("{summary}"));
    let (percent, part) = first.split_once("% ").unwrap();
    assert!(percent.parse::<u32>().unwrap() >= 90, "{summary}");
    assert_eq!(part, waiting, "{summary}");
    let dependency = now["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dependency"] == backend.as_str())
        .unwrap_or_else(|| panic!("the backend as a dependency: {:#}", now["dependencies"]));
    assert_eq!(dependency["type"], "external");
    assert_eq!(dependency["calls"], FAST + 5);
    assert_eq!(dependency["requests"], FAST + 5);
    assert!(
        dependency["shareOfRequestTime"].as_f64().unwrap() > 0.5,
        "{dependency}"
    );
    // 5 slow calls of 205: the p95 is a fast one's, the mean has the slow ones.
    let (p95, avg) = (
        dependency["p95Duration"].as_f64().unwrap(),
        dependency["avgDuration"].as_f64().unwrap(),
    );
    assert!(
        p95 < 100.0 && avg > 5.0 + 5.0 * 140.0 / 205.0,
        "{dependency}"
    );
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    for line in [
        format!("loupe report: tail latency\np95+ requests of {checkout} ({requests}): "),
        format!(
            "loupe report: dependencies\nexternal {backend}: {} calls, p95 ",
            FAST + 5
        ),
    ] {
        assert!(
            finished.stdout.contains(&line),
            "{line}:\n{}",
            finished.stdout
        );
    }
}
