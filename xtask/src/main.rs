//! `cargo xtask`: what cargo cannot do alone. `setup` installs the toolchain and test
//! dependencies (idempotent), `demo` shows loupe on a demo shop, `lint` runs rustfmt and
//! clippy, `test` runs every check CI runs, `fuzz` runs the libFuzzer targets, `bench` measures
//! loupe's overhead, `soak` watches its memory under a long steady load.

mod bench;
mod build;
mod demo;
mod fuzz;
mod http;
mod procs;
mod programs;
mod rounds;
mod setup;
mod soak;
mod test;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: Debian packages, the eBPF nightly, bpf-linker, cargo-fuzz, Jaeger.
    Setup,
    /// Build loupe and the demo app (release).
    Build,
    /// Set up, build, run the demo shop with loupe attached, show it in the terminal, and write
    /// its HTML report (target/demo-report.html).
    Demo {
        /// Also start a local Jaeger, send the spans there and print its query API's address.
        #[arg(long)]
        jaeger: bool,
        /// How long loupe watches, e.g. 30s or 2m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// With --jaeger and stdin not a terminal: how long Jaeger stays up after the run (on
        /// a terminal: until Enter).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        keep_jaeger: Duration,
    },
    /// rustfmt and clippy with warnings as errors, the eBPF crate on the BPF target too (what
    /// `test` runs first).
    Lint,
    /// Set up, then rustfmt, clippy, unit tests, the privileged end-to-end tests (root), and a
    /// smoke run of every fuzz target.
    Test {
        /// How long each fuzz target runs in the smoke, e.g. 60s (0s skips the smoke).
        #[arg(long, default_value = "60s", env = "LOUPE_FUZZ_TIME", value_parser = humantime::parse_duration)]
        fuzz_time: Duration,
        /// Passed to both `cargo test` runs, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the libFuzzer targets in fuzz/ one at a time (cargo-fuzz on the pinned nightly),
    /// failing on a crash; its input is left in fuzz/artifacts/<target>.
    Fuzz {
        /// Targets to run: http1, pg_framer, pg_conversation, redis, ring_record, stitcher
        /// (every one when none is named).
        targets: Vec<String>,
        /// The CI smoke `cargo xtask test` runs: every target for --time.
        #[arg(long, conflicts_with_all = ["targets", "runs"])]
        smoke: bool,
        /// How long each target runs, e.g. 60s or 10m.
        #[arg(long, default_value = "60s", env = "LOUPE_FUZZ_TIME", value_parser = humantime::parse_duration)]
        time: Duration,
        /// Stop each target after this many executions, if that comes before --time.
        #[arg(long)]
        runs: Option<u64>,
        /// Rewrite the seed corpus (fuzz/corpus/*/seed-*) from the fixtures and test payloads.
        #[arg(long, conflicts_with_all = ["targets", "smoke", "runs"])]
        seed: bool,
    },
    /// Measure loupe's overhead on nginx and on the demo app with wrk.
    Bench {
        /// wrk run length per measurement, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Only the runtime adapters' rows (the Go and asyncio services).
        #[arg(long)]
        adapters_only: bool,
        /// Only the HTTPS rows (nginx over TLS).
        #[arg(long)]
        https_only: bool,
        /// Only the in-process benches: the userspace pipeline's cost per request (replayed
        /// ring-buffer records) and the exporter's throughput (spans to a local Jaeger).
        #[arg(long, conflicts_with_all = ["adapters_only", "https_only"])]
        export_only: bool,
        /// Only nginx, the demo app and pgbench (each with nothing, the floor and loupe).
        #[arg(long, conflicts_with_all = ["adapters_only", "https_only", "export_only"])]
        core_only: bool,
        /// Only what each kernel program costs a run (the kernel's own accounting, read with
        /// bpftool): nginx at saturation under the floor probe and under loupe.
        #[arg(long, conflicts_with_all = ["adapters_only", "https_only", "export_only", "core_only"])]
        programs: bool,
        /// Only the off-CPU profiles' cost: a route waiting on its backend, every request hot,
        /// watched off the CPU and not.
        #[arg(long, conflicts_with_all = ["adapters_only", "https_only", "export_only", "core_only", "programs"])]
        off_cpu_only: bool,
    },
    /// The demo shop under a steady mixed load with loupe exporting to Jaeger: loupe's memory
    /// minute by minute and its growth after warm-up.
    Soak {
        /// How long, e.g. 30m.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Growth is measured from this point on.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Requests per second, all clients together.
        #[arg(long, default_value_t = 3000)]
        rate: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Build => build::release(),
        Command::Demo {
            jaeger,
            duration,
            keep_jaeger,
        } => demo::run(demo::Options {
            with_jaeger: jaeger,
            duration,
            keep_jaeger,
        }),
        Command::Lint => test::lint(),
        Command::Test { fuzz_time, args } => test::run(&args, fuzz_time),
        Command::Fuzz {
            targets,
            smoke: _,
            time,
            runs,
            seed,
        } => {
            if seed {
                fuzz::seed()
            } else {
                fuzz::run(&targets, fuzz::Budget { time, runs })
            }
        }
        Command::Bench {
            duration,
            adapters_only,
            https_only,
            export_only,
            core_only,
            programs,
            off_cpu_only,
        } => {
            if off_cpu_only {
                bench::off_cpu_only(duration)
            } else if programs {
                programs::run(duration)
            } else if export_only {
                bench::pipeline_runs().and_then(|()| bench::export_runs())
            } else if core_only {
                bench::core_only(duration)
            } else {
                bench::run(duration, adapters_only, https_only)
            }
        }
        Command::Soak {
            duration,
            warmup,
            rate,
        } => soak::run(duration, warmup, rate),
    }
}
