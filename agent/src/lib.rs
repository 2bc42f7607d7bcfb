//! loupe: an eBPF agent that turns a running process's socket traffic into spans.
//!
//! The data flow, one owner per stage:
//!
//! ```text
//! ebpf probes --RingBuf--> events::reader --bounded channel--> events::decode
//!   --> spans::stitcher (protocols::http1 per connection) --> detect::slow (+ resources)
//!   --> detect::assembly (a request's calls wait for it; verdict, patterns, problem board)
//!   --bounded channel, drops counted--> export::{otlp, terminal}
//!   (a slow span with CPU samples detours through profile::symbolizer, its own thread)
//! cpu_sample perf events (hot threads only) --RingBuf--> (same path) --> profile::SampleStore
//! libpq uprobes --RingBuf--> (same path) --> spans::stitcher (libpq::LibpqSource, merged
//!   with the wire protocol's view of the same query)
//! probes::upkeep: loss counters, targets that exited or (--exe, --name) joined, newly loaded
//!   libraries, perf events on hot threads
//! ```
//!
//! The async runtime's two workers run only what never blocks: the ring buffer reader and the
//! kernel log. The stages that read procfs, parse ELF files, attach uprobes or write to the
//! terminal (stitch, upkeep, export) each run on a thread of their own ([`stage`]); set-up runs
//! on the blocking pool.
//!
//! `run` wires the stages together, waits for a signal or `--duration`, then stops them in flow
//! order so that everything read is flushed before loupe detaches.

pub mod config;
pub mod detect;
pub mod events;
pub mod export;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod ledger;
pub mod libpq;
mod membership;
pub mod metrics;
pub mod preflight;
pub mod probes;
pub mod process;
pub mod profile;
pub mod protocols;
pub mod sampling;
pub mod spans;
pub mod sql;
pub mod stage;
pub mod stats;
mod stitch_stage;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    config::{Config, ExportTarget, Mode},
    detect::{Diagnoser, ProblemBoard, ResourceSampler},
    events::Batch,
    export::{ExportError, Sink},
    preflight::PreflightError,
    probes::{ProbeConfig, ProbeError, Targets, ThreadSampler, Upkeep},
    profile::{HotThreads, ProfileCommand, SampleStore},
    spans::{SpanRecord, Stitcher, clock::monotonic_now_ns, stitcher::StitcherLimits},
    stage::Stage,
    stats::Counters,
    stitch_stage::{FdChannels, Verdicts, stitch},
};

/// Why loupe could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Metrics(#[from] metrics::server::BindError),
    #[error("failed to set up the event loop")]
    Io(#[from] std::io::Error),
}

/// How often the reader drains the ring buffer when the kernel has not woken it.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Backlog at which the kernel wakes the reader anyway: a thirty-second of the 8 MiB ring, so a
/// burst is drained in slices.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BATCH_QUEUE: usize = 256;
/// Heat/cool orders waiting for the upkeep.
const COMMAND_QUEUE: usize = 1024;
/// How long past the shutdown deadline loupe waits for its stages to say they ended.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// Execs waiting for the upkeep to match them (past it they are counted, and /proc rescanned).
const EXEC_QUEUE: usize = 1024;

/// What a run leaves behind.
pub struct Outcome {
    pub counters: Arc<Counters>,
    pub problems: ProblemBoard,
    pub mode: Mode,
    /// The OTLP endpoint spans went to, if any.
    pub otlp_endpoint: Option<String>,
    /// The statistics as the run ended.
    pub stats: ledger::StatsDoc,
    /// This run's routes, as `--save-baseline` writes them.
    pub saved: ledger::baseline::BaselineFile,
    /// `--baseline FILE`'s, to compare against.
    pub baseline: Option<ledger::baseline::BaselineFile>,
    pub save_baseline: Option<std::path::PathBuf>,
    pub html: Option<std::path::PathBuf>,
}

/// Runs loupe until a signal, `--duration`, or the exit of every target (with `--exe` or
/// `--name`, loupe waits for the next one instead).
pub async fn run(config: Config) -> Result<Outcome, RunError> {
    let pids = config.pids.clone();
    off_runtime(move || preflight::check(&pids)).await?;
    let counters = Arc::new(Counters::default());
    let board = Arc::new(Mutex::new(ProblemBoard::default()));
    let red = Arc::new(Mutex::new(metrics::RedRegistry::default()));
    let ledger = Arc::new(Mutex::new(ledger::Ledger::new(
        config.ledger.clone(),
        process::services::ServiceNames::new(config.service_name.clone()),
        monotonic_now_ns(),
    )));
    let source = metrics::Source {
        counters: counters.clone(),
        red: red.clone(),
        ledger: Some(ledger.clone()),
    };
    // Listen before attaching, so a taken port fails before anything is touched.
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(metrics::MetricsServer::bind(addr, source.clone()).await?),
        None => None,
    };
    let stats_server = match config.stats_addr {
        Some(addr) if Some(addr) != config.metrics_addr => {
            Some(metrics::MetricsServer::bind(addr, source.clone()).await?)
        }
        _ => None,
    };
    let metric_push = match &config.otlp_metrics {
        Some(settings) => {
            let source = source.clone();
            let push = metrics::otlp::MetricPush::new(settings, &config.export_settings, source);
            Some(push.map_err(ExportError::from)?)
        }
        None => None,
    };

    // Build the sink before attaching, so a bad endpoint fails before anything is touched.
    let sink = match &config.export {
        ExportTarget::Terminal => Sink::Terminal(Box::new(export::terminal::TerminalView::new(
            Box::new(std::io::BufWriter::new(std::io::stdout())),
            counters.clone(),
            board.clone(),
        ))),
        ExportTarget::Nowhere => Sink::Discard,
        ExportTarget::Otlp { endpoint, protocol } => {
            let sink = export::otlp::OtlpSink::new(
                endpoint,
                *protocol,
                config.service_name.clone(),
                config.export_settings.clone(),
                counters.clone(),
            )?;
            if let Some(reason) =
                export::otlp::unreachable(endpoint, std::time::Duration::from_secs(1)).await
            {
                eprintln!(
                    "loupe: warning: the OTLP collector at {endpoint} cannot be reached ({reason}); spans are queued and retried, and counted as dropped if it never answers"
                );
            }
            Sink::Otlp(Box::new(sink))
        }
    };
    let otlp_endpoint = match &config.export {
        ExportTarget::Otlp { endpoint, .. } => Some(endpoint.clone()),
        _ => None,
    };

    process::runtime::set_adapters(config.runtime_adapters);
    let matcher = config.matcher.clone();
    for name in matcher.names().iter().filter(|name| name.was_cut()) {
        eprintln!(
            "loupe: --name {} is cut to the 15 bytes a process name holds: {}",
            name.given(),
            String::from_utf8_lossy(name.bytes())
        );
    }
    let probe_config = ProbeConfig {
        capture_bytes: config.capture_bytes,
        query_bytes: config.max_query_bytes,
        wakeup_bytes: WAKEUP_BYTES,
        watch: probes::ExecWatch::of(&matcher),
        max_sockets: loupe_common::SOCKETS_MAX,
        off_cpu_gap_ns: 1_000_000_000 / config.profile.hz.max(1),
    };
    let pids = config.pids.clone();
    let scan = matcher.clone();
    let (targets, matched, probes) = off_runtime(move || {
        let matched = scan.scan();
        let mut roots = pids;
        roots.extend(matched.iter().map(|(pid, _)| *pid));
        roots.sort_unstable();
        roots.dedup();
        let targets = process::expand_targets(&roots);
        probes::load_and_attach(&probe_config, &targets).map(|probes| (targets, matched, probes))
    })
    .await?;
    for (pid, by) in &matched {
        let comm = process::ProcessInfo::read(*pid).map_or_else(|| "?".to_owned(), |p| p.name);
        eprintln!("loupe: observing pid {pid} ({comm}), which matches {by}");
    }
    let probes::Probes {
        mut ebpf,
        events,
        targets: target_map,
        sockets,
        resync,
        loss,
        python,
        attached,
        existing,
    } = probes;
    let (news_tx, news_rx) = std::sync::mpsc::channel();
    let (closes_tx, closes_rx) = mpsc::unbounded_channel();
    let resync = resync.spawn(news_rx, closes_tx)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let logger = spawn_kernel_logger(&mut ebpf, stop_rx.clone());
    let pids: Vec<u32> = targets.iter().map(|target| target.pid).collect();

    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters.clone());
    for (pid, socket) in existing {
        stitcher.seed(
            pid,
            socket.conn_id(),
            socket.role,
            socket.addrs,
            monotonic_now_ns(),
        );
    }

    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    let (span_tx, span_rx) = mpsc::channel::<SpanRecord>(config.export_settings.max_queue);
    let (command_tx, command_rx) = mpsc::channel::<ProfileCommand>(COMMAND_QUEUE);
    let hz = config.profile.hz;
    let always_hz = config.profile.always_hz;
    let off_cpu = config.profile.off_cpu;
    let watching = !matcher.is_empty();
    let registered = pids.clone();
    let (heated_tx, heated_rx) = mpsc::unbounded_channel();
    let (ebpf, sampler, target_set) = off_runtime(move || {
        let mut ebpf = ebpf;
        let sampler = ThreadSampler::new(&mut ebpf, hz, always_hz, off_cpu.then_some(heated_tx));
        let targets = Targets::new(target_map, sockets, matcher, &registered);
        (ebpf, sampler, targets)
    })
    .await;
    let (execs_tx, execs_rx) = mpsc::channel(EXEC_QUEUE);
    let (joins_tx, joins_rx) = mpsc::unbounded_channel();
    let (libpq_tx, libpq_rx) = mpsc::unbounded_channel();
    let sampler = match sampler {
        Ok(sampler) => Some(sampler),
        Err(reason) => {
            eprintln!("loupe: warning: CPU profiles are off: {reason}");
            None
        }
    };
    let (jobs, symbolizer) = profile::spawn_symbolizer(
        config.profile.clone(),
        span_tx.clone(),
        board.clone(),
        counters.clone(),
    )?;
    let reader = tokio::spawn(events::reader::run(
        events,
        batch_tx,
        counters.clone(),
        DRAIN_INTERVAL,
        stop_rx.clone(),
    ));
    let verdicts = Verdicts {
        counters: counters.clone(),
        thresholds: config.thresholds,
        diagnoser: Diagnoser::new(config.diagnosis, board.clone(), counters.clone())
            .with_sampling(&config.sampling)
            .with_ledger(ledger.clone()),
        resources: ResourceSampler::new(&pids),
        samples: SampleStore::default(),
        hot: HotThreads::default(),
        commands: command_tx,
        jobs,
        claimed: Default::default(),
        tally_sampled_out: config.export == ExportTarget::Terminal,
        red: (metrics_server.is_some() || metric_push.is_some())
            .then(|| metrics::RedRecorder::new(red, counters.clone(), config.service_name.clone())),
    };
    let stitch = Stage::spawn(
        "loupe-stitch",
        stitch(
            batch_rx,
            FdChannels {
                news: news_tx,
                closes: closes_rx,
                heated: heated_rx,
            },
            membership::TargetLines::new(execs_tx, joins_rx, libpq_tx),
            stitcher,
            span_tx,
            verdicts,
            counters.clone(),
        ),
    )?;
    let (deadline_tx, deadline_rx) = watch::channel(None);
    let exporter = Stage::spawn_isolated(
        "loupe-export",
        export::run(
            sink,
            span_rx,
            counters.clone(),
            config.summary_interval,
            deadline_rx,
        ),
    )?;
    let upkeep = Upkeep {
        ebpf,
        libraries: probes::LibraryProbes::new(config.libpq),
        sampler,
        commands: command_rx,
        targets: target_set,
        loss,
        evictions: probes::EvictionAudit::new(loupe_common::SOCKETS_MAX),
        python,
        execs: execs_rx,
        libpq: libpq_rx,
        news: joins_tx,
    };
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel();
    let metrics = match metrics_server {
        Some(server) => {
            if let Some(addr) = server.local_addr() {
                eprintln!(
                    "loupe: serving metrics at http://{addr}/metrics and statistics at http://{addr}/stats"
                );
            }
            Some(Stage::spawn(
                "loupe-metrics",
                server.serve(metrics_stopped),
            )?)
        }
        None => None,
    };
    let (stats_stop, stats_stopped) = tokio::sync::oneshot::channel();
    let stats = match stats_server {
        Some(server) => {
            if let Some(addr) = server.local_addr() {
                eprintln!("loupe: serving statistics at http://{addr}/stats");
            }
            Some(Stage::spawn("loupe-stats", server.serve(stats_stopped))?)
        }
        None => None,
    };
    let (alerts_stop, alerts_stopped) = tokio::sync::oneshot::channel();
    let alerts = Stage::spawn_isolated(
        "loupe-alerts",
        ledger::alerts::run(
            ledger.clone(),
            config.alerts.clone(),
            counters.clone(),
            alerts_stopped,
        ),
    )?;
    let (push_stop, push_stopped) = tokio::sync::oneshot::channel();
    let push = metric_push
        .map(|push| Stage::spawn("loupe-otlp-metrics", push.run(push_stopped)))
        .transpose()?;
    let (attached_tx, attached_rx) = tokio::sync::oneshot::channel();
    let mut upkeep = Stage::spawn(
        "loupe-upkeep",
        upkeep.run(counters.clone(), stop_rx.clone(), attached_tx),
    )?;
    // The libraries mapped at attach are probed before loupe says it is attached.
    let uprobes = attached_rx.await.unwrap_or(0);

    eprintln!(
        "loupe: attached to {} process(es) with {} probes",
        targets.len(),
        attached + uprobes
    );
    if watching && targets.is_empty() {
        eprintln!(
            "loupe: waiting for a process matching {}",
            config.matcher.describe()
        );
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = async {
        match config.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sigint.recv() => tracing::debug!("SIGINT"),
        _ = sigterm.recv() => tracing::debug!("SIGTERM"),
        _ = deadline => tracing::debug!("--duration reached"),
        ended = upkeep.finished() => {
            if ended == Some(true) {
                tracing::info!("every target process exited");
            }
        }
    }

    // Stop in flow order: the reader drains once more and closes the batch channel, the stitcher
    // finishes its connections and closes the span channel, the exporter flushes. All of it
    // within the shutdown timeout: then the exporter counts what is left as dropped, and loupe
    // stops waiting for any stage still busy (its thread ends with the process).
    let shutdown = config.export_settings.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + shutdown;
    let _ = deadline_tx.send(Some(deadline));
    let _ = stop_tx.send(true);
    let stop_in_order = async {
        let _ = reader.await;
        let _ = stitch.join().await;
        // The stitch stage dropped its news sender: the re-sync thread ends.
        let _ = tokio::task::spawn_blocking(move || resync.join()).await;
        // The stitch stage dropped its job queue: the symbolizer finishes what it has, then
        // lets go of its span sender, and the exporter's channel closes.
        let _ = tokio::task::spawn_blocking(move || symbolizer.join()).await;
    };
    if tokio::time::timeout_at(deadline, stop_in_order)
        .await
        .is_err()
    {
        tracing::warn!(
            "the pipeline did not drain within the shutdown timeout ({}); exiting",
            humantime::format_duration(shutdown)
        );
    }
    // The exporter ends at the deadline at the latest; a moment more for its last count.
    let _ = tokio::time::timeout_at(deadline + EXIT_GRACE, exporter.join()).await;
    let _ = tokio::time::timeout_at(deadline + EXIT_GRACE, upkeep.join()).await;
    // The last OTLP metrics carry the final counts; scrapes are answered until then too.
    let _ = push_stop.send(deadline + EXIT_GRACE);
    if let Some(push) = push {
        let _ = tokio::time::timeout_at(deadline + 2 * EXIT_GRACE, push.join()).await;
    }
    let _ = metrics_stop.send(());
    if let Some(metrics) = metrics {
        let _ = tokio::time::timeout_at(deadline + EXIT_GRACE, metrics.join()).await;
    }
    let _ = stats_stop.send(());
    if let Some(stats) = stats {
        let _ = tokio::time::timeout_at(deadline + EXIT_GRACE, stats.join()).await;
    }
    let _ = alerts_stop.send(());
    let _ = tokio::time::timeout_at(deadline + EXIT_GRACE, alerts.join()).await;
    let (stats, saved) = {
        let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        let now = monotonic_now_ns();
        // The routes' last verdicts (what fires now was sent, or held back, while running).
        let _ = ledger.refresh(now);
        (ledger.snapshot(now), ledger.baseline_file())
    };
    if let Some(logger) = logger {
        let _ = tokio::time::timeout_at(deadline + EXIT_GRACE, logger).await;
    }
    let problems = std::mem::take(&mut *board.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Outcome {
        counters,
        problems,
        mode: config.mode,
        otlp_endpoint,
        stats,
        saved,
        baseline: config.ledger.baseline,
        save_baseline: config.save_baseline,
        html: config.html,
    })
}

/// Runs `work`, which blocks, on the runtime's blocking pool; a panic in it goes on here.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(output) => output,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Forwards the kernel programs' aya-log records to `tracing` (debug level only in the kernel).
fn spawn_kernel_logger(
    ebpf: &mut aya::Ebpf,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            tracing::debug!("kernel log forwarding off: {err}");
            return None;
        }
    };
    let mut logger = match events::reader::register_readable(logger) {
        Ok(fd) => fd,
        Err(err) => {
            tracing::debug!("kernel log forwarding off: {err}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                guard = logger.readable_mut() => match guard {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(_) => return,
                },
                _ = stop.changed() => return,
            }
        }
    }))
}
