//! `loupe`: parse, validate, run, and say in one line what went wrong.

use std::process::ExitCode;

use clap::Parser as _;
use loupe::{
    config::{Cli, Mode},
    detect::ProblemBoard,
};

/// Problems listed after the summary line at exit.
const TOP_AT_EXIT: usize = 5;
/// Problems listed by `loupe report`.
const TOP_IN_REPORT: usize = 20;

/// `loupe report`'s output (its format is a contract: docs/contracts.md).
fn report(problems: &ProblemBoard) -> String {
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
    text
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
            let status = exit_status(&outcome);
            match outcome.mode {
                Mode::Report => print!("{}", report(&outcome.problems)),
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
                }
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
