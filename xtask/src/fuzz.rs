//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/ (cargo-fuzz on the pinned nightly), one at
//! a time under `nice`, each from its committed corpus (fuzz/corpus/<target>, read only: what
//! a run finds goes to fuzz/target/corpus/<target>), failing on the first crash. `--seed`
//! rewrites the committed corpus from the HTTP fixtures and the protocols' test payloads.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{procs::workspace_root, setup::EBPF_TOOLCHAIN};

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "http1",
    "pg_framer",
    "pg_conversation",
    "redis",
    "ring_record",
    "stitcher",
];

/// How long one target may take on one input before libFuzzer calls it a hang (s).
const INPUT_TIMEOUT_S: u32 = 10;
/// Memory one target may hold (MiB) before libFuzzer calls it a leak or a blow-up.
const RSS_LIMIT_MB: u32 = 2048;

/// How much each target runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub time: Duration,
    /// Stop after this many executions, if sooner.
    pub runs: Option<u64>,
}

/// Runs `targets` (every one when empty) for `budget` each, one after the other.
pub fn run(targets: &[String], budget: Budget) -> anyhow::Result<()> {
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!(
                    "no fuzz target `{target}` (there are: {})",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    println!("fuzz: building the targets");
    crate::procs::run_checked(
        cargo_fuzz(&root)
            .args(["build", "--fuzz-dir"])
            .arg(&fuzz_dir),
    )?;
    for target in chosen {
        run_one(&root, &fuzz_dir, target, budget)?;
    }
    Ok(())
}

fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("nice");
    command
        .args(["cargo", &format!("+{EBPF_TOOLCHAIN}"), "fuzz"])
        .current_dir(root);
    command
}

fn run_one(root: &Path, fuzz_dir: &Path, target: &str, budget: Budget) -> anyhow::Result<()> {
    let seeds = fuzz_dir.join("corpus").join(target);
    let scratch = fuzz_dir.join("target/corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let logs = fuzz_dir.join("target/logs");
    for dir in [&seeds, &scratch, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut command = cargo_fuzz(root);
    command
        .args(["run", "--fuzz-dir"])
        .arg(fuzz_dir)
        .arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", budget.time.as_secs().max(1)))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(runs) = budget.runs {
        command.arg(format!("-runs={runs}"));
    }
    if target == "stitcher" {
        // The stitcher tells stderr about each process's runtime: closed, libFuzzer keeps its own.
        command.arg("-close_fd_mask=3");
    }
    println!(
        "fuzz: {target}: up to {} s (log: {})",
        budget.time.as_secs(),
        log_path.display()
    );
    let status = command
        .status()
        .with_context(|| format!("failed to start cargo fuzz for {target}"))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "fuzz target {target} failed ({status}): the crashing input is in {}; reproduce with \
             `cargo +{EBPF_TOOLCHAIN} fuzz run --fuzz-dir fuzz {target} <input>`",
            artifacts.display()
        );
    }
    println!("fuzz: {target}: {}", summary(&text));
    Ok(())
}

/// "N runs in S s (R/s), no crash" from libFuzzer's final stats.
fn summary(log: &str) -> String {
    let stat = |name: &str| {
        log.lines()
            .rev()
            .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    match (
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
    ) {
        (Some(runs), Some(rate)) => format!("{runs} runs ({rate}/s), no crash"),
        _ => "no crash".into(),
    }
}

/// Rewrites fuzz/corpus/<target>/seed-* from the fixtures and test payloads (the stitcher's
/// corpus, whose inputs are `arbitrary`'s encoding, is a minimised run's and is kept).
pub fn seed() -> anyhow::Result<()> {
    let root = workspace_root();
    let corpus = root.join("fuzz/corpus");
    let fixtures = root.join("tests/fixtures/http1");
    let fixture = |name: &str| -> anyhow::Result<Vec<u8>> {
        std::fs::read(fixtures.join(name)).with_context(|| format!("read fixture {name}"))
    };
    let http = seeds::http(
        &[
            fixture("curl_get.request")?,
            fixture("post.request")?,
            fixture("pipelined.requests")?,
        ],
        &[
            fixture("curl_get.response")?,
            fixture("post.response")?,
            fixture("pipelined.responses")?,
            fixture("chunked.response")?,
        ],
    );
    write(&corpus.join("http1"), &http)?;
    write(&corpus.join("pg_framer"), &seeds::pg_framer())?;
    write(&corpus.join("pg_conversation"), &seeds::pg_conversation())?;
    write(&corpus.join("redis"), &seeds::redis())?;
    write(&corpus.join("ring_record"), &seeds::ring_records())?;
    Ok(())
}

fn write(dir: &PathBuf, inputs: &[Vec<u8>]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("seed-"))
        {
            std::fs::remove_file(&path)?;
        }
    }
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), input)?;
    }
    println!("fuzz: {} seeds in {}", inputs.len(), dir.display());
    Ok(())
}

mod seeds;
