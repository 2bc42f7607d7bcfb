//! Overhead, measured from one run: nginx (keep-alive, small response, wrk) with nothing
//! attached, with a floor probe (bpftrace on the same syscall tracepoints, empty PID-filtered
//! programs), and with loupe; the demo app's ~1 ms route with nothing and with loupe; pgbench
//! select-only with nothing, the syscall floor, that floor plus empty libpq uprobes and
//! uretprobes, loupe (the wire alone on plaintext) and loupe --libpq always; a Go
//! net/http + pgx service and FastAPI on uvicorn + asyncpg at saturation, with nothing, with
//! loupe without its runtime adapters (`--no-runtime-adapters`: no goroutine or asyncio-task
//! reads) and with loupe.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use loupe_common::{LIBPQ_PROBES, TLS_PROBES, names::TRACEPOINT_PROGRAMS};

use crate::{
    build,
    procs::{Guard, Loupe, cpu_seconds, run_checked, start_demo_app, workspace_root},
    rounds::{Phase, Rounds, Sample, Spread, micros},
    setup,
};

struct Run {
    requests_per_sec: f64,
    p99: String,
}

impl Run {
    /// wrk's p99 (`681.00us`, `3.26ms`, `1.02s`) in microseconds.
    fn p99_us(&self) -> Option<f64> {
        let text = self.p99.trim();
        let (number, scale) = if let Some(us) = text.strip_suffix("us") {
            (us, 1.0)
        } else if let Some(ms) = text.strip_suffix("ms") {
            (ms, 1e3)
        } else if let Some(s) = text.strip_suffix('s') {
            (s, 1e6)
        } else {
            (text, 1.0)
        };
        number.trim().parse::<f64>().ok().map(|n| n * scale)
    }
}

/// The target's p99 under loupe as ratios: against nothing and, where there is one, against the
/// floor probe's (what loupe adds to the target's tail beyond the hooks themselves).
fn p99_line(target: &str, none: &Run, floor: Option<&Run>, loupe: &Run) {
    let ratio = |a: &Run, b: &Run| match (a.p99_us(), b.p99_us()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "?".to_owned(),
    };
    match floor {
        Some(floor) => println!(
            "{target} p99: loupe {} ({} of nothing's {}, {} of the floor's {})",
            loupe.p99,
            ratio(loupe, none),
            none.p99,
            ratio(loupe, floor),
            floor.p99
        ),
        None => println!(
            "{target} p99: loupe {} ({} of nothing's {})",
            loupe.p99,
            ratio(loupe, none),
            none.p99
        ),
    }
}

/// Only nginx, the demo app and pgbench.
pub fn core_only(duration: Duration) -> anyhow::Result<()> {
    setup::require_root("bench")?;
    setup::run()?;
    build::release()?;
    core_runs(duration.as_secs().max(1))
}

/// Only the off-CPU profiles' cost.
pub fn off_cpu_only(duration: Duration) -> anyhow::Result<()> {
    setup::require_root("bench")?;
    setup::run()?;
    build::release()?;
    offcpu_runs(duration.as_secs().max(1))
}

pub fn run(duration: Duration, adapters_only: bool, https_only: bool) -> anyhow::Result<()> {
    setup::require_root("bench")?;
    setup::run()?;
    build::release()?;
    let seconds = duration.as_secs().max(1);
    if !adapters_only && !https_only {
        pipeline_runs()?;
        export_runs()?;
        core_runs(seconds)?;
    }
    if !adapters_only {
        https_runs(seconds)?;
    }
    if https_only {
        return Ok(());
    }
    let postgres = loupe_tests::postgres::Postgres::start();
    let adapters = adapter_runs(&postgres, seconds)?;
    drop(postgres);
    println!("\n| target | setup | req/s | p99 | vs nothing | loupe CPU s | loupe peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for run in &adapters {
        run.print();
    }
    println!();
    for run in &adapters {
        run.summary();
    }
    Ok(())
}

/// loupe's userspace cost per request and allocations per span, in process:
/// `cargo bench --bench pipeline` (recorded ring-buffer records through the real pipeline).
pub fn pipeline_runs() -> anyhow::Result<()> {
    run_checked(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["bench", "-p", "loupe", "--bench", "pipeline"]),
    )
}

/// The exporter alone: `cargo bench --bench export` against a Jaeger started here, over OTLP
/// gRPC and HTTP/protobuf.
pub fn export_runs() -> anyhow::Result<()> {
    setup::require_root("bench")?;
    let installed = setup::run()?;
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("LOUPE_JAEGER_BIN", &installed.jaeger) };
    let jaeger = loupe_tests::jaeger::Jaeger::start();
    println!(
        "bench: the exporter to Jaeger (gRPC {}, HTTP {})",
        jaeger.grpc_endpoint(),
        jaeger.http_endpoint()
    );
    run_checked(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["bench", "-p", "loupe", "--bench", "export"])
            .env("LOUPE_BENCH_OTLP_GRPC", jaeger.grpc_endpoint())
            .env("LOUPE_BENCH_OTLP_HTTP", jaeger.http_endpoint()),
    )?;
    Ok(())
}

/// nginx (one worker, `return 200 "ok\n"`, no access log) in `dir`, listening on a free loopback
/// port with `listen` after its address and `server` lines in its server block; started and
/// accepting.
fn bench_nginx(dir: &std::path::Path, listen: &str, server: &str) -> anyhow::Result<(Guard, u16)> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}{listen}; {server} location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    let nginx = Guard {
        child: Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .spawn()
            .context("failed to start nginx")?,
        name: "nginx".into(),
    };
    wait_for(&format!("127.0.0.1:{port}"))?;
    Ok((nginx, port))
}

/// The OpenSSL libssl nginx maps on Debian.
const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

/// nginx over HTTPS (`return 200`, keep-alive TLS connections): nothing, a floor probe (the
/// syscall tracepoints and empty uprobes and uretprobes on the four OpenSSL record functions),
/// and loupe.
fn https_runs(seconds: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("loupe-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs"))?;
    crate::procs::run_checked(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let tls = format!(
        "ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;",
        d = dir.display()
    );
    let (nginx, port) = bench_nginx(&dir, " ssl", &tls)?;
    let worker = worker_pid(nginx.pid())?;
    let master = nginx.pid();
    let url = format!("https://127.0.0.1:{port}/");
    wrk(&url, 32, 2)?; // warm-up
    let rounds = Rounds::measure(
        ROUNDS,
        vec![
            phase("nothing", || wrk_sample(&url, 32, seconds)),
            phase(
                "floor probe (bpftrace, same tracepoints + SSL_read/write(_ex) uprobes and uretprobes, empty)",
                || {
                    let _probe = floor_probe(worker, &tls_uprobes(SYSTEM_LIBSSL))?;
                    wrk_sample(&url, 32, seconds)
                },
            ),
            phase("loupe", || loupe_sample(master, &url, 32, seconds)),
        ],
    )?;
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n| target | setup | req/s | p99 | vs nothing | loupe CPU s | loupe peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    rows(
        &format!(
            "nginx over HTTPS `return 200` (wrk -t1 -c32 -d{seconds}s, keep-alive TLS, {ROUNDS} rounds)"
        ),
        "",
        &rounds,
    );
    let per_request = |phase: usize| 1e6 / rounds.rate(phase).median;
    println!(
        "\nHTTPS: floor costs {:.1}% and loupe {:.1}% (loupe - floor = {} points); per request (machine time, 2 cores, medians): nothing {:.1} us, floor +{:.1} us (an SSL_read and an SSL_write, entry and return: 4 uprobe hits, and the syscall hooks), loupe +{:.1} us",
        (1.0 - rounds.ratio(1).median) * 100.0,
        (1.0 - rounds.ratio(2).median) * 100.0,
        rounds.points_beyond(2, 1).points(),
        per_request(0),
        per_request(1) - per_request(0),
        per_request(2) - per_request(0)
    );
    p99_rounds("HTTPS", &rounds, Some(1), 2);
    if let Some(flag) = rounds.flag("HTTPS nginx") {
        println!("{flag}");
    }
    Ok(())
}

/// Rounds of the alternating phases in `core_runs`.
const ROUNDS: usize = 3;

fn sample(run: &Run) -> Sample {
    Sample {
        rate: run.requests_per_sec,
        p99_us: run.p99_us(),
        ..Sample::default()
    }
}

/// wrk on `url` as a phase's sample.
fn wrk_sample(url: &str, connections: u32, seconds: u64) -> anyhow::Result<Sample> {
    Ok(sample(&wrk(url, connections, seconds)?))
}

/// wrk on `url` with loupe attached to `pid`, as a phase's sample.
fn loupe_sample(pid: u32, url: &str, connections: u32, seconds: u64) -> anyhow::Result<Sample> {
    let (run, cpu, rss) = with_loupe(pid, || wrk(url, connections, seconds))?;
    Ok(Sample {
        cpu,
        rss_kib: rss,
        ..sample(&run)
    })
}

fn phase<'a>(name: &str, run: impl FnMut() -> anyhow::Result<Sample> + 'a) -> Phase<'a> {
    (name.to_owned(), Box::new(run))
}

/// One table row per phase: median rate and p99, the ratio to the baseline with its spread,
/// loupe's CPU and RSS where it ran.
fn rows(target: &str, unit: &str, rounds: &Rounds) {
    for (i, name) in rounds.names.iter().enumerate() {
        let cpu = rounds.cpu(i);
        let (cpu, rss) = if cpu > 0.0 {
            (format!("{cpu:.2}"), format!("{:.1}", rounds.rss_mib(i)))
        } else {
            (String::new(), String::new())
        };
        println!(
            "| {} | {name} | {:.0}{unit} | {} | {} | {cpu} | {rss} |",
            if i == 0 { target } else { "" },
            rounds.rate(i).median,
            micros(rounds.p99_us(i)),
            if i == 0 {
                "1.000".to_owned()
            } else {
                rounds.ratio(i).ratio()
            },
        );
    }
}

/// The target's p99 under loupe (phase `loupe`) as ratios of the rounds' against nothing and,
/// where there is one, the floor's.
fn p99_rounds(target: &str, rounds: &Rounds, floor: Option<usize>, loupe: usize) {
    let Some(none) = rounds.p99_ratio(loupe, 0) else {
        return;
    };
    let mut line = format!(
        "{target} p99: loupe {} ({}x of nothing's {}",
        micros(rounds.p99_us(loupe)),
        none.ratio(),
        micros(rounds.p99_us(0))
    );
    if let Some(floor) = floor.and_then(|f| Some((f, rounds.p99_ratio(loupe, f)?))) {
        line.push_str(&format!(
            ", {}x of the floor's {}",
            floor.1.ratio(),
            micros(rounds.p99_us(floor.0))
        ));
    }
    println!("{line})");
}

/// nginx, the demo app and pgbench: the phases (nothing, a floor probe, loupe) alternate in
/// [`ROUNDS`] rounds; every ratio is the median of the rounds' (each against its own round's
/// baseline), with its range.
fn core_runs(seconds: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("loupe-bench-{}", std::process::id()));
    let (nginx, port) = bench_nginx(&dir, "", "")?;
    let url = format!("http://127.0.0.1:{port}/");
    let worker = worker_pid(nginx.pid())?;
    let master = nginx.pid();
    println!("bench: nginx master {master} worker {worker} on {url}, {ROUNDS} rounds");
    wrk(&url, 32, 2)?; // warm-up
    let nginx_rounds = Rounds::measure(
        ROUNDS,
        vec![
            phase("nothing", || wrk_sample(&url, 32, seconds)),
            phase("floor probe (bpftrace, same tracepoints, empty)", || {
                let _probe = floor_probe(worker, &[])?;
                wrk_sample(&url, 32, seconds)
            }),
            phase("loupe", || loupe_sample(master, &url, 32, seconds)),
        ],
    )?;
    drop(nginx);

    let (frontend, addr) =
        start_demo_app(&["frontend", "--port", "0", "--backend", "http://127.0.0.1:9"])?;
    let work_url = format!("http://{addr}/api/work");
    wrk(&work_url, 4, 2)?;
    let demo = frontend.pid();
    let work_rounds = Rounds::measure(
        ROUNDS,
        vec![
            phase("nothing", || wrk_sample(&work_url, 4, seconds)),
            phase("loupe", || loupe_sample(demo, &work_url, 4, seconds)),
        ],
    )?;

    // CPU profiles: a fixed 100 ms of CPU work per request, one at a time. With the default thresholds nothing
    // is slow and nothing may be sampled; with --slow-http 10ms the serving thread is hot nearly
    // all the time and sampled at 999 Hz.
    let crunch_url = format!("http://{addr}/api/crunch?rounds=200");
    wrk(&crunch_url, 1, 2)?;
    let crunch_none = wrk(&crunch_url, 1, seconds)?;
    let (crunch_cold, _, _, cold_samples) =
        with_loupe_flags(frontend.pid(), &[], || wrk(&crunch_url, 1, seconds))?;
    let (crunch_hot, hot_cpu, _, hot_samples) =
        with_loupe_flags(frontend.pid(), &["--slow-http", "10ms"], || {
            wrk(&crunch_url, 1, seconds)
        })?;
    drop(frontend);
    let _ = std::fs::remove_dir_all(&dir);

    let postgres = loupe_tests::postgres::Postgres::start();
    let url = postgres.url("postgres");
    crate::procs::run_checked(
        Command::new(PGBENCH)
            .args(["-q", "-i", "-s", "1", &url])
            .stdout(Stdio::null()),
    )?;
    let url = url.as_str();
    let pg = |probe| move || pgbench(url, seconds, probe);
    let pg_rounds = Rounds::measure(
        ROUNDS,
        vec![
            phase("nothing", pg(Probe::Nothing)),
            phase(
                "floor probe (bpftrace, same tracepoints, empty)",
                pg(Probe::Floor),
            ),
            phase(
                "floor probe + libpq uprobes and uretprobes (empty)",
                pg(Probe::FloorWithLibpq),
            ),
            phase("loupe (wire only: no uprobe attached)", pg(Probe::Loupe)),
            phase("loupe --libpq always", pg(Probe::LoupeLibpqAlways)),
        ],
    )?;
    drop(postgres);

    println!(
        "\n{ROUNDS} rounds of each phase, alternating; req/s and p99 are the rounds' medians, \"vs nothing\" the median of the rounds' ratios (each against its own round) and their range"
    );
    println!("\n| target | setup | req/s | p99 | vs nothing | loupe CPU s | loupe peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    rows(
        &format!("nginx `return 200` (wrk -t1 -c32 -d{seconds}s)"),
        "",
        &nginx_rounds,
    );
    rows(
        &format!("demo /api/work ~1 ms (wrk -t1 -c4 -d{seconds}s)"),
        "",
        &work_rounds,
    );
    let crunch_ratio = |run: &Run| run.requests_per_sec / crunch_none.requests_per_sec;
    println!(
        "| demo /api/crunch?rounds=200, ~100 ms of CPU (wrk -t1 -c1 -d{seconds}s, one round) | nothing | {:.1} | {} | 1.000 | | |",
        crunch_none.requests_per_sec, crunch_none.p99
    );
    println!(
        "| | loupe, nothing slow ({cold_samples} CPU samples) | {:.1} | {} | {:.3} | | |",
        crunch_cold.requests_per_sec,
        crunch_cold.p99,
        crunch_ratio(&crunch_cold)
    );
    println!(
        "| | loupe, --slow-http 10ms: one thread hot at 999 Hz ({hot_samples} CPU samples) | {:.1} | {} | {:.3} | {hot_cpu:.2} | |",
        crunch_hot.requests_per_sec,
        crunch_hot.p99,
        crunch_ratio(&crunch_hot)
    );
    rows(
        &format!("pgbench -S -c4 -j2 -T{seconds} (select-only, simple protocol)"),
        " tps",
        &pg_rounds,
    );

    let cost = |rounds: &Rounds, phase: usize| {
        let ratio = rounds.ratio(phase);
        Spread {
            median: (1.0 - ratio.median) * 100.0,
            low: (1.0 - ratio.high) * 100.0,
            high: (1.0 - ratio.low) * 100.0,
        }
    };
    println!(
        "\npgbench: the syscall floor costs {}% and loupe {}% (loupe - floor = {} points); \
         with libpq's uprobes the floor costs {}% and loupe {}%",
        cost(&pg_rounds, 1).points(),
        cost(&pg_rounds, 3).points(),
        pg_rounds.points_beyond(3, 1).points(),
        cost(&pg_rounds, 2).points(),
        cost(&pg_rounds, 4).points(),
    );
    let per_query = |phase: usize| 1e6 / pg_rounds.rate(phase).median;
    println!(
        "pgbench per query (machine time, 2 cores, medians): nothing {:.1} us, floor +{:.1} us (the syscall hooks), +{:.1} us with 5 uprobe hits, loupe +{:.1} us, loupe --libpq always +{:.1} us",
        per_query(0),
        per_query(1) - per_query(0),
        per_query(2) - per_query(0),
        per_query(3) - per_query(0),
        per_query(4) - per_query(0)
    );
    println!(
        "\nnginx: floor costs {}% and loupe {}% (loupe - floor = {} points); loupe's CPU per request {:.2} us; the 1 ms route: loupe costs {}%",
        cost(&nginx_rounds, 1).points(),
        cost(&nginx_rounds, 2).points(),
        nginx_rounds.points_beyond(2, 1).points(),
        nginx_rounds.cpu_per_request_us(2, seconds),
        cost(&work_rounds, 1).points(),
    );
    println!(
        "CPU profiles: nothing slow took {cold_samples} samples and cost {:.1}%; one thread hot at 999 Hz ({:.0} samples/s) cost {:.1}% of the route's throughput",
        (1.0 - crunch_ratio(&crunch_cold)) * 100.0,
        hot_samples as f64 / seconds as f64,
        (1.0 - crunch_ratio(&crunch_hot)) * 100.0
    );
    offcpu_runs(seconds)?;
    p99_rounds("nginx", &nginx_rounds, Some(1), 2);
    p99_rounds("the 1 ms route", &work_rounds, None, 1);
    for (target, rounds) in [
        ("nginx", &nginx_rounds),
        ("the 1 ms route", &work_rounds),
        ("pgbench", &pg_rounds),
    ] {
        if let Some(flag) = rounds.flag(target) {
            println!("{flag}");
        }
    }
    Ok(())
}

const PGBENCH: &str = "/usr/lib/postgresql/15/bin/pgbench";

/// A service at saturation three ways: nothing, loupe without runtime adapters, loupe.
struct AdapterRun {
    target: String,
    none: Run,
    without: Run,
    with: Run,
    /// loupe's CPU seconds without and with the adapters.
    cpu: (f64, f64),
    /// The service's own CPU per request (us; the kernel's work for it included) each way:
    /// steadier on a noisy machine than throughput. Medians of the rounds, as are the runs.
    service_us: [f64; 3],
}

impl AdapterRun {
    /// Each way `ROUNDS` times, interleaved (nothing, without, with, nothing, ...), so that the
    /// machine's drift falls on all three alike; the medians are kept.
    fn measure(
        target: String,
        pid: u32,
        url: &str,
        connections: u32,
        seconds: u64,
    ) -> anyhow::Result<Self> {
        const ROUNDS: usize = 3;
        wrk(url, connections, 2)?; // warm-up: pools full, statements prepared
        let mut runs: [Vec<(Run, f64, f64)>; 3] = Default::default();
        for _ in 0..ROUNDS {
            for (way, flags) in [None, Some(&["--no-runtime-adapters"][..]), Some(&[][..])]
                .into_iter()
                .enumerate()
            {
                let mut before = cpu_seconds(pid);
                let (run, loupe_cpu) = match flags {
                    None => (wrk(url, connections, seconds)?, 0.0),
                    Some(flags) => {
                        let (run, cpu, _, _) = with_loupe_flags(pid, flags, || {
                            before = cpu_seconds(pid);
                            wrk(url, connections, seconds)
                        })?;
                        (run, cpu)
                    }
                };
                let requests = (run.requests_per_sec * seconds as f64).max(1.0);
                let service_us = (cpu_seconds(pid) - before) * 1e6 / requests;
                runs[way].push((run, loupe_cpu, service_us));
            }
        }
        let [none, without, with] = runs.map(|mut way| {
            way.sort_by(|a, b| a.0.requests_per_sec.total_cmp(&b.0.requests_per_sec));
            let service = median(way.iter().map(|r| r.2).collect());
            let loupe = median(way.iter().map(|r| r.1).collect());
            let run = way.swap_remove(way.len() / 2).0;
            (run, loupe, service)
        });
        Ok(Self {
            target,
            cpu: (without.1, with.1),
            service_us: [none.2, without.2, with.2],
            none: none.0,
            without: without.0,
            with: with.0,
        })
    }

    fn ratio(&self, run: &Run) -> f64 {
        run.requests_per_sec / self.none.requests_per_sec
    }

    fn print(&self) {
        println!(
            "| {} | nothing | {:.0} | {} | 1.000 | | |",
            self.target, self.none.requests_per_sec, self.none.p99
        );
        println!(
            "| | loupe --no-runtime-adapters | {:.0} | {} | {:.3} | {:.2} | |",
            self.without.requests_per_sec,
            self.without.p99,
            self.ratio(&self.without),
            self.cpu.0
        );
        println!(
            "| | loupe | {:.0} | {} | {:.3} | {:.2} | |",
            self.with.requests_per_sec,
            self.with.p99,
            self.ratio(&self.with),
            self.cpu.1
        );
    }

    fn summary(&self) {
        println!(
            "{}: loupe without adapters costs {:.1}%, with them {:.1}% (the adapter: {:.1} points)",
            self.target,
            (1.0 - self.ratio(&self.without)) * 100.0,
            (1.0 - self.ratio(&self.with)) * 100.0,
            (self.ratio(&self.without) - self.ratio(&self.with)) * 100.0
        );
        p99_line("  with adapters:", &self.none, None, &self.with);
        let [none, without, with] = self.service_us;
        println!(
            "  the service's CPU per request: nothing {none:.1} us, loupe without adapters {without:.1} us, with them {with:.1} us (the adapter: {:+.1} us a request)",
            with - without
        );
    }
}

fn median(values: Vec<f64>) -> f64 {
    Spread::of(&values).median
}

/// The Go shop (net/http, pgx) and the asyncio shop (FastAPI, uvicorn, asyncpg) at saturation on
/// a route that runs one query, against `postgres`.
fn adapter_runs(
    postgres: &loupe_tests::postgres::Postgres,
    seconds: u64,
) -> anyhow::Result<Vec<AdapterRun>> {
    postgres.create_orders_shop();
    let downstream = loupe_tests::go::GoDownstream::start();
    let go = loupe_tests::go::GoShop::start(
        &loupe_tests::go::pgx_dsn(postgres.port, "shop"),
        &downstream.url(),
    );
    let go_run = AdapterRun::measure(
        format!("Go net/http + pgx, /item: a query (wrk -t1 -c32 -d{seconds}s)"),
        go.pid(),
        &format!("http://{}/item/bench", go.addr),
        32,
        seconds,
    )?;
    drop(go);
    drop(downstream);
    let asyncio = loupe_tests::procs::AsyncShop::start(&format!(
        "postgresql://postgres@127.0.0.1:{}/shop",
        postgres.port
    ));
    let asyncio_run = AdapterRun::measure(
        format!("FastAPI on uvicorn + asyncpg, /item: a query (wrk -t1 -c16 -d{seconds}s)"),
        asyncio.pid(),
        &format!("http://{}/item/1", asyncio.addr),
        16,
        seconds,
    )?;
    Ok(vec![go_run, asyncio_run])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Nothing,
    /// Empty programs on loupe's syscall tracepoints.
    Floor,
    /// The same and empty uprobes on every libpq function loupe can probe.
    FloorWithLibpq,
    Loupe,
    LoupeLibpqAlways,
}

/// pgbench select-only against `url`, started through `bash -c 'read; exec pgbench ...'` so the
/// probe attaches to its pid before it sends a query.
fn pgbench(url: &str, seconds: u64, probe: Probe) -> anyhow::Result<Sample> {
    let command = format!("read go; exec {PGBENCH} -n -S -c 4 -j 2 -T {seconds} '{url}'");
    let mut child = Command::new("bash")
        .args(["-c", &command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start pgbench")?;
    let pid = child.id();
    let floor = match probe {
        Probe::Floor => Some(floor_probe(pid, &[])?),
        Probe::FloorWithLibpq => Some(floor_probe(pid, &libpq_uprobes(SYSTEM_LIBPQ))?),
        _ => None,
    };
    let libpq = match probe {
        Probe::Loupe => Some("auto"),
        Probe::LoupeLibpqAlways => Some("always"),
        _ => None,
    };
    let loupe = match libpq {
        Some(libpq) => Some(Loupe::start(
            &[
                "--pid".to_owned(),
                pid.to_string(),
                "--summary-interval".into(),
                "1h".into(),
                "--libpq".into(),
                libpq.into(),
            ],
            Stdio::null(),
        )?),
        None => None,
    };
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("no stdin")?;
        writeln!(stdin, "go")?;
    }
    let mut usage = (0.0, 0);
    if let Some(loupe) = &loupe {
        // Sample near the end of the run: loupe's CPU and peak RSS while pgbench still runs.
        std::thread::sleep(Duration::from_secs(seconds.saturating_sub(1)));
        usage = loupe.usage();
    }
    let output = child.wait_with_output()?;
    drop(floor);
    if let Some(mut loupe) = loupe {
        loupe.guard.interrupt(Duration::from_secs(30));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{text}"))?;
    Ok(Sample {
        rate: tps,
        p99_us: None,
        cpu: usage.0,
        rss_kib: usage.1,
    })
}

/// Runs `measure` with loupe attached to `pid`; returns its result, loupe's CPU seconds and
/// peak RSS (KiB).
fn with_loupe(
    pid: u32,
    measure: impl FnOnce() -> anyhow::Result<Run>,
) -> anyhow::Result<(Run, f64, u64)> {
    let (run, cpu, rss, _) = with_loupe_flags(pid, &[], measure)?;
    Ok((run, cpu, rss))
}

/// loupe attached to `pid` with `flags` while `measure` runs: the run, loupe's CPU seconds and
/// peak RSS (KiB), and the CPU samples it took (from its summary line).
fn with_loupe_flags(
    pid: u32,
    flags: &[&str],
    measure: impl FnOnce() -> anyhow::Result<Run>,
) -> anyhow::Result<(Run, f64, u64, u64)> {
    let mut args = vec![
        "--pid".to_owned(),
        pid.to_string(),
        "--summary-interval".into(),
        "1h".into(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let mut loupe = Loupe::start(&args, Stdio::null())?;
    let (cpu_before, _) = loupe.usage();
    let run = measure()?;
    let (cpu_after, rss) = loupe.usage();
    loupe.guard.interrupt(Duration::from_secs(30));
    let samples = loupe
        .stderr
        .lock()
        .map(|text| summary_value(&text, "cpu_samples"))
        .unwrap_or(0);
    Ok((run, cpu_after - cpu_before, rss, samples))
}

/// `key=<n>` from loupe's summary line.
fn summary_value(stderr: &str, key: &str) -> u64 {
    stderr
        .lines()
        .filter(|line| line.starts_with("loupe: summary "))
        .flat_map(|line| line.split_whitespace())
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

fn wrk(url: &str, connections: u32, seconds: u64) -> anyhow::Result<Run> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("failed to run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    Ok(Run {
        requests_per_sec,
        p99,
    })
}

/// The libpq pgbench and psql load.
const SYSTEM_LIBPQ: &str = "/usr/lib/x86_64-linux-gnu/libpq.so.5";

/// bpftrace on every syscall tracepoint loupe uses (and, with `libpq`, on every libpq function
/// it probes, entry and return alike), each an empty program behind the same PID check: what
/// the hooks alone cost.
/// The bpftrace probes on every libpq function loupe probes, in the libpq at `path`.
fn libpq_uprobes(path: &str) -> Vec<String> {
    let mut probes = Vec::new();
    for probe in LIBPQ_PROBES {
        probes.push(format!("uprobe:{path}:{}", probe.symbol));
        if probe.returns_result {
            probes.push(format!("uretprobe:{path}:{}", probe.symbol));
        }
    }
    probes
}

/// The same for the OpenSSL record functions (entry and return each).
fn tls_uprobes(path: &str) -> Vec<String> {
    TLS_PROBES
        .iter()
        .flat_map(|(symbol, _)| {
            [
                format!("uprobe:{path}:{symbol}"),
                format!("uretprobe:{path}:{symbol}"),
            ]
        })
        .collect()
}

/// An empty bpftrace program behind `pid == <pid>` on every syscall tracepoint loupe attaches,
/// and on `uprobes`.
fn floor_probe(pid: u32, uprobes: &[String]) -> anyhow::Result<Guard> {
    let mut probes: Vec<String> = TRACEPOINT_PROGRAMS
        .iter()
        .flat_map(|program| program.tracepoints.iter())
        .filter(|(category, _)| *category == "syscalls")
        .map(|(category, name)| format!("tracepoint:{category}:{name}"))
        .collect();
    probes.extend(uprobes.iter().cloned());
    let script = format!("{} /pid == {pid}/ {{ }}", probes.join(",\n"));
    let mut child = Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start bpftrace")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.contains("Attaching") => {}
        other => {
            let _ = child.kill();
            let err = child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            bail!(
                "bpftrace did not attach ({other:?}): {}",
                err.unwrap_or_default()
            );
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Guard {
        child,
        name: "bpftrace".into(),
    })
}

fn worker_pid(master: u32) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nginx master {master} started no worker")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr}")
}

/// nginx `return 200` on a free port, one worker (for `cargo xtask bench --programs`).
pub struct Nginx {
    _guard: Guard,
    _dir: loupe_tests::TempDir,
    pub url: String,
    pub master: u32,
    pub worker: u32,
}

impl Nginx {
    pub fn start() -> anyhow::Result<Self> {
        let dir = loupe_tests::TempDir::new("programs");
        let (guard, port) = bench_nginx(&dir.0, "", "")?;
        let master = guard.pid();
        Ok(Self {
            worker: worker_pid(master)?,
            _guard: guard,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}/"),
            master,
        })
    }
}

/// wrk's requests a second on `url` (32 connections) for `seconds`.
pub fn wrk_rate(url: &str, seconds: u64) -> anyhow::Result<f64> {
    Ok(wrk(url, 32, seconds)?.requests_per_sec)
}

/// `measure` while the floor probe is attached to `pid`.
pub fn under_floor<T>(pid: u32, measure: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let _probe = floor_probe(pid, &[])?;
    measure()
}

/// `measure` while loupe is attached to `pid`.
pub fn under_loupe<T>(pid: u32, measure: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let args = [
        "--pid".to_owned(),
        pid.to_string(),
        "--summary-interval".into(),
        "1h".into(),
    ];
    let mut loupe = Loupe::start(&args, Stdio::null())?;
    let result = measure();
    loupe.guard.interrupt(Duration::from_secs(30));
    result
}

/// Off-CPU profiles' cost: /api/checkout waits ~5 ms on the backend per request; at
/// --slow-http 1ms each request's thread is hot for most of it, once watched off the CPU too
/// (sched_switch and sys_exit hooked, /proc read at each heating) and once not (`--no-off-cpu`).
pub fn offcpu_runs(seconds: u64) -> anyhow::Result<()> {
    let (backend, backend_addr) = start_demo_app(&["backend", "--port", "0"])?;
    let (waiting, waiting_addr) = start_demo_app(&[
        "frontend",
        "--port",
        "0",
        "--backend",
        &format!("http://{backend_addr}"),
    ])?;
    let wait_url = format!("http://{waiting_addr}/api/checkout?user=1");
    wrk(&wait_url, 4, 2)?;
    let (wait_on, wait_on_cpu, _, _) =
        with_loupe_flags(waiting.pid(), &["--slow-http", "1ms"], || {
            wrk(&wait_url, 4, seconds)
        })?;
    let (wait_off, wait_off_cpu, _, _) = with_loupe_flags(
        waiting.pid(),
        &["--slow-http", "1ms", "--no-off-cpu"],
        || wrk(&wait_url, 4, seconds),
    )?;
    drop(waiting);
    drop(backend);
    let wait_ratio = wait_on.requests_per_sec / wait_off.requests_per_sec.max(1e-9);
    println!(
        "| demo /api/checkout, ~5 ms waiting on the backend (wrk -t1 -c4 -d{seconds}s, one round) | loupe --slow-http 1ms --no-off-cpu: every request hot, CPU samples only | {:.1} | {} | 1.000 | {wait_off_cpu:.2} | |",
        wait_off.requests_per_sec, wait_off.p99
    );
    println!(
        "| | loupe --slow-http 1ms: and watched off the CPU | {:.1} | {} | {wait_ratio:.3} | {wait_on_cpu:.2} | |",
        wait_on.requests_per_sec, wait_on.p99
    );
    println!(
        "Off-CPU: watching hot threads off the CPU cost {:.1}% of a waiting route's throughput (every request hot) and {:+.2} s of loupe's CPU",
        (1.0 - wait_ratio) * 100.0,
        wait_on_cpu - wait_off_cpu
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Run;

    #[test]
    fn wrk_latencies_read_in_microseconds() {
        let p99 = |text: &str| {
            Run {
                requests_per_sec: 0.0,
                p99: text.into(),
            }
            .p99_us()
        };
        assert_eq!(p99("681.00us"), Some(681.0));
        assert_eq!(p99("3.26ms"), Some(3260.0));
        assert_eq!(p99("1.02s"), Some(1_020_000.0));
        assert_eq!(p99(""), None);
    }
}
