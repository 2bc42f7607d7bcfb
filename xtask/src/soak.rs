//! A soak: the demo shop (frontend, backend, PostgreSQL) under a steady mixed load for a long
//! time, loupe attached to the frontend and exporting to a real Jaeger, loupe's resident memory
//! sampled throughout. What matters is growth after warm-up: a bound that leaks shows here.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build, demo::Shop, procs::Loupe, setup};

/// Client threads sharing the load.
const CLIENTS: u64 = 8;
/// One request in this many goes on a new connection that closes after it.
const NEW_CONNECTION_EVERY: u64 = 20;

pub fn run(duration: Duration, warmup: Duration, rate: u64) -> anyhow::Result<()> {
    setup::require_root("soak")?;
    setup::run()?;
    build::release()?;
    if warmup >= duration {
        bail!("--warmup ({warmup:?}) must be shorter than --duration ({duration:?})");
    }
    let shop = Shop::start()?;
    let (frontend, frontend_addr) = (&shop.frontend, shop.frontend_addr.clone());
    let jaeger = loupe_tests::jaeger::Jaeger::start();
    let args = vec![
        "--pid".to_owned(),
        frontend.pid().to_string(),
        "--service-name".into(),
        "soak-shop".into(),
        "--otlp-endpoint".into(),
        format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
        "--summary-interval".into(),
        "1h".into(),
    ];
    let mut loupe = Loupe::start(&args, Stdio::null())?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let addr = frontend_addr.clone();
            std::thread::spawn(move || drive(&addr, client, rate / CLIENTS, &stop, &sent, &failed))
        })
        .collect();

    println!("| minute | requests | loupe RSS MiB | loupe CPU s |");
    println!("|---|---|---|---|");
    let started = Instant::now();
    let mut at_warmup = None;
    let mut last = (0.0, 0);
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(60).min(duration - started.elapsed()));
        let rss = resident_kib(loupe.guard.pid());
        let (cpu, _) = loupe.usage();
        println!(
            "| {:.0} | {} | {:.1} | {cpu:.1} |",
            started.elapsed().as_secs_f64() / 60.0,
            sent.load(Ordering::Relaxed),
            rss as f64 / 1024.0
        );
        if at_warmup.is_none() && started.elapsed() >= warmup {
            at_warmup = Some(rss);
        }
        last = (cpu, rss);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    loupe.guard.interrupt(Duration::from_secs(30));
    let summary = loupe
        .stderr
        .lock()
        .map(|text| {
            text.lines()
                .find(|line| line.starts_with("loupe: summary "))
                .unwrap_or("no summary line")
                .to_owned()
        })
        .unwrap_or_default();
    let base = at_warmup.unwrap_or(last.1).max(1);
    let growth = 100.0 * (last.1 as f64 - base as f64) / base as f64;
    let requests = sent.load(Ordering::Relaxed);
    println!(
        "\nsoak: {requests} requests ({} failed) in {:.0} s ({:.0}/s); loupe RSS {:.1} MiB after {:?} warm-up, {:.1} MiB at the end: {growth:+.1}%; loupe CPU {:.1} s",
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        requests as f64 / started.elapsed().as_secs_f64(),
        base as f64 / 1024.0,
        warmup,
        last.1 as f64 / 1024.0,
        last.0,
    );
    println!("{summary}");
    drop(jaeger);
    drop(shop);
    Ok(())
}

/// The routes the clients cycle through: fast ones, a backend call, a query, an error; ids
/// unique per request where the route has one.
fn target(n: u64) -> String {
    match n % 6 {
        0 => format!("/api/users/{n}?trace={n:x}"),
        1 => "/api/orders/7".to_owned(),
        2 => format!("/api/checkout?user={}", n % 1000),
        3 => "/health".to_owned(),
        4 => "/api/fail".to_owned(),
        _ => format!("/api/users/{}", n % 5000),
    }
}

/// One client: `per_second` requests a second, paced, on a keep-alive connection, with every
/// [`NEW_CONNECTION_EVERY`]th on a connection of its own.
fn drive(
    addr: &str,
    client: u64,
    per_second: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
    failed: &AtomicU64,
) {
    let interval = Duration::from_secs_f64(1.0 / per_second.max(1) as f64);
    let mut next = Instant::now();
    let mut kept: Option<BufReader<TcpStream>> = None;
    let mut n = client;
    while !stop.load(Ordering::Relaxed) {
        n += CLIENTS;
        let close = n.is_multiple_of(NEW_CONNECTION_EVERY);
        let ok = if close {
            exchange(&mut None, addr, &target(n), true)
        } else {
            exchange(&mut kept, addr, &target(n), false)
        };
        sent.fetch_add(1, Ordering::Relaxed);
        if ok.is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
            kept = None;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now; // behind by more than a second: do not burst to catch up
        }
    }
}

/// One request and its Content-Length response, on `conn` (opened if none).
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: &str,
    path: &str,
    close: bool,
) -> anyhow::Result<()> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut().context("connected")?;
    let connection = if close { "close" } else { "keep-alive" };
    // One write: a request in pieces meets Nagle and delayed ACKs (40 ms a request).
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes())?;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed mid-response");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("content-length")?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if close {
        *conn = None;
    }
    Ok(())
}

/// VmRSS of `pid`, KiB.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
