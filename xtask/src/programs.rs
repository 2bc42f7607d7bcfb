//! What each kernel program costs a run, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled`, read with bpftool): nginx at saturation, first under the floor
//! probe (bpftrace, empty programs on the same tracepoints), then under loupe. Exact where the
//! throughput rows are noisy: it measures each step of the hot path, not the machine.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context as _;

use crate::{bench, build, setup};

/// One loaded BPF program's counts.
#[derive(Debug, Clone)]
struct Program {
    id: u64,
    name: String,
    runs: u64,
    ns: u64,
}

/// Every loaded program, as bpftool lists it.
fn programs() -> anyhow::Result<Vec<Program>> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("failed to run bpftool (cargo xtask setup installs it)")?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(list
        .as_array()
        .map(|all| {
            all.iter()
                .map(|p| Program {
                    id: p["id"].as_u64().unwrap_or(0),
                    name: p["name"].as_str().unwrap_or("?").to_owned(),
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// `kernel.bpf_stats_enabled` on while it lives (the kernel counts runs only then).
struct Stats(String);

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl Stats {
    fn on() -> anyhow::Result<Self> {
        let was = std::fs::read_to_string(STATS)?.trim().to_owned();
        std::fs::write(STATS, "1")?;
        Ok(Self(was))
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.0);
    }
}

/// The programs loaded since `before` that ran, busiest first.
fn new_since(before: &BTreeSet<u64>) -> anyhow::Result<Vec<Program>> {
    let mut added: Vec<Program> = programs()?
        .into_iter()
        .filter(|p| !before.contains(&p.id) && p.runs > 0)
        .collect();
    added.sort_by_key(|p| std::cmp::Reverse(p.ns));
    Ok(added)
}

fn print(setup: &str, requests: f64, programs: &[Program]) {
    let total: u64 = programs.iter().map(|p| p.ns).sum();
    println!(
        "\n{setup}: {:.0} ns of kernel programs a request ({requests:.0} requests)\n",
        total as f64 / requests
    );
    println!("| program | runs | ns a run | ns a request |");
    println!("|---|---|---|---|");
    for p in programs {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            p.name,
            p.runs,
            p.ns as f64 / p.runs as f64,
            p.ns as f64 / requests
        );
    }
}

pub fn run(duration: Duration) -> anyhow::Result<()> {
    setup::require_root("bench")?;
    setup::run()?;
    build::release()?;
    let seconds = duration.as_secs().max(1);
    let nginx = bench::Nginx::start()?;
    bench::wrk_rate(&nginx.url, 2)?;
    let _stats = Stats::on()?;
    let before: BTreeSet<u64> = programs()?.into_iter().map(|p| p.id).collect();
    let (floor_rate, floor) = bench::under_floor(nginx.worker, || {
        let rate = bench::wrk_rate(&nginx.url, seconds)?;
        Ok((rate, new_since(&before)?))
    })?;
    let (loupe_rate, loupe) = bench::under_loupe(nginx.master, || {
        let rate = bench::wrk_rate(&nginx.url, seconds)?;
        Ok((rate, new_since(&before)?))
    })?;
    println!(
        "nginx `return 200`, wrk -t1 -c32 -d{seconds}s: {floor_rate:.0} req/s under the floor, {loupe_rate:.0} under loupe"
    );
    print(
        "floor probe (bpftrace, same tracepoints, empty)",
        floor_rate * seconds as f64,
        &floor,
    );
    print("loupe", loupe_rate * seconds as f64, &loupe);
    Ok(())
}
