//! `loupe`: parse, validate, run, and say in one line what went wrong.

use std::process::ExitCode;

use clap::Parser as _;
use loupe::config::{Cli, Mode};

/// Problems listed after the summary line at exit.
const TOP_AT_EXIT: usize = 5;
/// Problems listed by `loupe report`.
const TOP_IN_REPORT: usize = 20;

/// `loupe report`'s output (its format is a contract: docs/contracts.md).
fn report(outcome: &loupe::Outcome) -> String {
    let problems = &outcome.problems;
    let mut text = match problems.render(TOP_IN_REPORT) {
        Some(table) => format!("loupe report: top problems\n{table}"),
        None => "loupe report: no problems found\n".to_owned(),
    };
    if let Some(frames) = problems.render_hot_frames(HOT_ROUTES, HOT_FRAMES) {
        text.push_str(&format!(
            "loupe report: hottest frames of slow spans\n{frames}"
        ));
    }
    if let Some(waits) = problems.render_waits(HOT_ROUTES, HOT_FRAMES) {
        text.push_str(&format!(
            "loupe report: longest waits of slow spans (off-CPU)\n{waits}"
        ));
    }
    if let Some(cache) = problems.render_cache(TOP_IN_REPORT) {
        text.push_str(&format!("loupe report: cache hit rates\n{cache}"));
    }
    text.push_str(&numbers(outcome, "loupe report", TOP_IN_REPORT, true));
    text
}

/// The statistics' blocks, each headed `<prefix>: <what>`: `loupe report`'s (`whole`) are
/// the routes, SLOs, regressions, tail latency, dependencies, the comparison with `--baseline`
/// and the alerts; the live view's at exit (the route table is the terminal view's) only the
/// SLOs, regressions, comparison and alerts.
fn numbers(outcome: &loupe::Outcome, prefix: &str, limit: usize, whole: bool) -> String {
    use loupe::ledger::{baseline, text};
    let stats = &outcome.stats;
    let comparison = outcome
        .baseline
        .as_ref()
        .map(|before| baseline::render(&baseline::compare(before, &outcome.saved.routes)));
    let blocks = [
        (
            "routes (slowest p95 first)",
            whole,
            text::routes(stats, limit),
        ),
        ("SLOs", true, text::slos(stats)),
        ("regressions", true, text::regressions(stats)),
        ("tail latency", whole, text::tails(stats, limit)),
        ("dependencies", whole, text::dependencies(stats, limit)),
        ("against the baseline", true, comparison),
        ("alerts", true, text::alerts(stats, limit)),
    ];
    let mut out = String::new();
    for (title, shown, block) in blocks {
        if let (true, Some(block)) = (shown, block) {
            out.push_str(&format!("{prefix}: {title}\n{block}"));
        }
    }
    out
}

/// What the HTML report shows of a run.
fn html_page(outcome: &loupe::Outcome) -> loupe::ledger::html::ReportPage {
    use loupe::ledger::{baseline, html};
    let mut services: Vec<&str> = outcome
        .stats
        .routes
        .iter()
        .map(|route| route.service.as_str())
        .collect();
    services.sort_unstable();
    services.dedup();
    let problems = outcome
        .problems
        .rows()
        .into_iter()
        .take(TOP_IN_REPORT)
        .map(|row| html::ProblemEntry {
            route: row.route,
            pattern: row.pattern.as_str().to_owned(),
            pattern_words: row.pattern.words().to_owned(),
            requests: row.requests,
            cost_ms: row.cost_ns as f64 / 1e6,
            advice: row.advice,
            worst: row.worst,
        })
        .collect();
    html::ReportPage {
        title: match services.is_empty() {
            true => "loupe report".to_owned(),
            false => format!("loupe report: {}", services.join(", ")),
        },
        stats: outcome.stats.clone(),
        problems,
        flamegraphs: outcome.problems.flames().to_vec(),
        comparison: outcome
            .baseline
            .as_ref()
            .map(|before| baseline::compare(before, &outcome.saved.routes)),
    }
}

/// Writes `--save-baseline` and `--html`; says in one line what could not be written.
fn write_files(outcome: &loupe::Outcome) -> Result<(), String> {
    if let Some(path) = &outcome.save_baseline {
        outcome.saved.save(path).map_err(|err| err.to_string())?;
        eprintln!(
            "loupe: saved the baseline of {} routes to {}",
            outcome.saved.routes.len(),
            path.display()
        );
    }
    if let Some(path) = &outcome.html {
        let page = html_page(outcome);
        std::fs::write(path, loupe::ledger::html::render(&page))
            .map_err(|err| format!("cannot write the HTML report {}: {err}", path.display()))?;
        eprintln!("loupe: wrote the HTML report to {}", path.display());
    }
    Ok(())
}

/// Routes, and frames per route, in the hottest-frames list.
const HOT_ROUTES: usize = 5;
const HOT_FRAMES: usize = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            if !err.use_stderr() {
                // --help and --version.
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            // clap's message is a paragraph (missing flags go on lines of their own): fold it.
            let text = err.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "loupe: error: {} (see loupe --help)",
                message.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    init_logging();
    let config = match cli.into_config(|key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("loupe: error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loupe")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loupe: error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(loupe::run(config)) {
        Ok(outcome) => {
            eprintln!("{}", outcome.counters.summary_line());
            let mut status = exit_status(&outcome);
            match outcome.mode {
                Mode::Report => print!("{}", report(&outcome)),
                // The terminal view's last table has the problems already.
                Mode::Watch if outcome.otlp_endpoint.is_none() => {
                    eprint!("{}", numbers(&outcome, "loupe", HOT_ROUTES, false));
                }
                Mode::Watch => {
                    if let Some(top) = outcome.problems.render(TOP_AT_EXIT) {
                        eprint!("loupe: top problems\n{top}");
                    }
                    if let Some(frames) = outcome.problems.render_hot_frames(HOT_ROUTES, HOT_FRAMES)
                    {
                        eprint!("loupe: hottest frames of slow spans\n{frames}");
                    }
                    if let Some(waits) = outcome.problems.render_waits(HOT_ROUTES, HOT_FRAMES) {
                        eprint!("loupe: longest waits of slow spans (off-CPU)\n{waits}");
                    }
                    if let Some(cache) = outcome.problems.render_cache(HOT_ROUTES) {
                        eprint!("loupe: cache hit rates\n{cache}");
                    }
                    eprint!("{}", numbers(&outcome, "loupe", HOT_ROUTES, false));
                }
            }
            if let Err(err) = write_files(&outcome) {
                eprintln!("loupe: error: {err}");
                status = ExitCode::FAILURE;
            }
            // Leave the runtime without waiting for a stage still busy past the deadline.
            runtime.shutdown_background();
            status
        }
        Err(err) => {
            let chain: Vec<String> = anyhow::Error::from(err)
                .chain()
                .map(|e| e.to_string())
                .collect();
            eprintln!("loupe: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

/// Failure when spans were made for a collector and not one of them reached it.
fn exit_status(outcome: &loupe::Outcome) -> ExitCode {
    use loupe::stats::Counters;
    let dropped = Counters::get(&outcome.counters.spans_dropped);
    let exported = Counters::get(&outcome.counters.spans_exported);
    match &outcome.otlp_endpoint {
        Some(endpoint) if exported == 0 && dropped > 0 => {
            eprintln!(
                "loupe: error: every span ({dropped}) was dropped: the OTLP collector at {endpoint} never took one"
            );
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LOUPE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
