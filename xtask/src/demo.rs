//! The demo: the demo shop (a frontend that calls a backend) with traffic, and loupe attached to
//! the frontend, in the terminal (and, with --jaeger, in a local Jaeger).

use std::{
    io::IsTerminal as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    build, http,
    procs::{Guard, Loupe, start_demo_app},
    setup,
};

const ROUTES: &[&str] = &[
    "/api/orders/7",
    "/api/users/42",
    "/api/users/7",
    "/api/checkout?user=42",
    "/api/users/1001",
    "/api/stream",
    "/api/work",
    "/api/missing",
    "/api/checkout?user=7",
    "/api/orders/8",
    "/api/fail",
    "/api/slow",
    "/health",
    "/api/checkout/slow",
    "/api/report",
    "/api/crunch?ms=1200",
];

/// Set by SIGINT/SIGTERM while the demo keeps Jaeger up after the run.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// What the demo shows, and for how long Jaeger stays up after it when stdin is no terminal.
pub struct Options {
    pub with_jaeger: bool,
    pub duration: Duration,
    pub keep_jaeger: Duration,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let Options {
        with_jaeger,
        duration,
        keep_jaeger,
    } = options;
    setup::require_root("demo")?;
    let installed = setup::run()?;
    build::release()?;

    println!("demo: starting a throwaway PostgreSQL for /api/orders");
    let shop = Shop::start()?;
    let (frontend, frontend_addr, backend_addr) =
        (&shop.frontend, &shop.frontend_addr, &shop.backend_addr);
    println!(
        "demo: frontend on {frontend_addr} (pid {}), backend on {backend_addr}",
        frontend.pid()
    );

    let _jaeger = if with_jaeger {
        Some(start_jaeger(&installed.jaeger)?)
    } else {
        None
    };

    let report = crate::procs::workspace_root()
        .join("target")
        .join("demo-report.html");
    let stats_addr = format!("127.0.0.1:{}", loupe_tests::free_port());
    let mut args = vec![
        "--pid".to_owned(),
        frontend.pid().to_string(),
        "--service-name".into(),
        "demo-shop".into(),
        "--duration".into(),
        humantime::format_duration(duration).to_string(),
        "--summary-interval".into(),
        "10s".into(),
        "--stats-addr".into(),
        stats_addr.clone(),
        "--html".into(),
        report.display().to_string(),
        "--slo".into(),
        "GET /api/users/{id}=100ms@p95".into(),
        "--alert-slow-percent".into(),
        "10".into(),
    ];
    if with_jaeger {
        args.extend(["--otlp-endpoint".into(), "http://127.0.0.1:4317".into()]);
    }
    let mut loupe = Loupe::start(&args, Stdio::inherit())?;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let addr = frontend_addr.clone();
        std::thread::spawn(move || {
            for route in ROUTES.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = http::get(&addr, route);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    // With the spans going to Jaeger the terminal shows no span: say what loupe counts.
    let progress = with_jaeger.then(|| {
        let stop = stop.clone();
        let addr = stats_addr.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut next = Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if started.elapsed() < next {
                    continue;
                }
                next += Duration::from_secs(10);
                if let Some(line) = progress_line(&addr) {
                    println!("demo: after {}s: {line}", started.elapsed().as_secs());
                }
            }
        })
    });
    let status = loupe.guard.child.wait()?;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    if !status.success() {
        bail!("loupe exited with {status}");
    }
    println!(
        "\ndemo: the report: file://{} (one self-contained page: open it in a browser)",
        report.display()
    );
    if with_jaeger {
        // Built from its Go module, this Jaeger has no UI (its assets are in no registry): the
        // query API is what there is, or a Jaeger UI of the user's own pointed at it.
        println!(
            "demo: Jaeger's query API: http://127.0.0.1:16686/api/traces?service=demo-shop (this Jaeger build has no web UI)"
        );
        if std::io::stdin().is_terminal() {
            println!("demo: Jaeger keeps running until you press Enter.");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        } else if !keep_jaeger.is_zero() {
            println!(
                "demo: Jaeger keeps running for {} (until SIGINT or SIGTERM; --keep-jaeger 0s stops it at once).",
                humantime::format_duration(keep_jaeger)
            );
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
            let until = Instant::now() + keep_jaeger;
            while Instant::now() < until && !STOP.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Ok(())
}

/// `64 requests (p95 1.21 s, 25% slow), 180 queries (p95 3.1 ms), 40 outbound calls (p95 ...);
/// 1 alert`, from loupe's /stats.
fn progress_line(addr: &str) -> Option<String> {
    let (status, body) = loupe_tests::prometheus::request(addr, "GET", "/stats").ok()?;
    if status != 200 {
        return None;
    }
    let stats: serde_json::Value = serde_json::from_str(&body).ok()?;
    let ms = |value: &serde_json::Value| {
        let ms = value.as_f64().unwrap_or(0.0);
        if ms >= 1000.0 {
            format!("{:.2} s", ms / 1000.0)
        } else {
            format!("{ms:.1} ms")
        }
    };
    let mut parts = Vec::new();
    for (kind, words) in [
        ("http", "requests"),
        ("db", "queries"),
        ("external", "outbound calls"),
    ] {
        let of = &stats["byType"][kind];
        let count = of["count"].as_u64().unwrap_or(0);
        if count > 0 {
            parts.push(format!(
                "{count} {words} (p95 {}, {:.0}% slow)",
                ms(&of["p95Duration"]),
                of["slowPercentage"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    let alerts = stats["alerts"]["sent"].as_u64().unwrap_or(0);
    Some(format!("{}; {alerts} alert(s)", parts.join(", ")))
}

/// The demo shop: a throwaway PostgreSQL with the `orders` table, the backend, and the frontend
/// that calls both.
pub struct Shop {
    _postgres: loupe_tests::postgres::Postgres,
    _backend: Guard,
    pub backend_addr: String,
    pub frontend: Guard,
    pub frontend_addr: String,
}

impl Shop {
    pub fn start() -> anyhow::Result<Self> {
        let postgres = loupe_tests::postgres::Postgres::start();
        postgres.run_sql("postgres", "CREATE DATABASE shop");
        postgres.run_sql(
            "shop",
            "CREATE TABLE orders (id int, user_id int, total numeric); \
             INSERT INTO orders SELECT g, 7 + g % 2, g * 10 FROM generate_series(1, 9) g",
        );
        let database = format!("127.0.0.1:{}/shop", postgres.port);
        let (backend, backend_addr) = start_demo_app(&["backend", "--port", "0"])?;
        let backend_url = format!("http://{backend_addr}");
        let (frontend, frontend_addr) = start_demo_app(&[
            "frontend",
            "--port",
            "0",
            "--backend",
            &backend_url,
            "--database",
            &database,
        ])?;
        Ok(Self {
            _postgres: postgres,
            _backend: backend,
            backend_addr,
            frontend,
            frontend_addr,
        })
    }
}

/// Jaeger all-in-one with its in-memory defaults: OTLP on 4317/4318, the query API on 16686.
fn start_jaeger(binary: &std::path::Path) -> anyhow::Result<Guard> {
    let child = Command::new(binary)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("failed to start {}", binary.display()))?;
    let guard = Guard {
        child,
        name: "jaeger".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http::get("127.0.0.1:16686", "/api/services").is_ok() {
            println!(
                "demo: Jaeger is up: query API on http://127.0.0.1:16686/api/traces, OTLP gRPC on 127.0.0.1:4317"
            );
            return Ok(guard);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("Jaeger did not answer on 127.0.0.1:16686 within 30s (is something else on 4317/16686?)")
}
