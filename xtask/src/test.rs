//! Everything CI runs: formatting, lints, unit tests, then the privileged tests (kernel programs
//! against real sockets, and end to end against Jaeger, nginx and the demo app), then a smoke
//! run of every fuzz target.

use std::{path::Path, process::Command, time::Duration};

use crate::{
    build, fuzz,
    procs::{release_bin, run_checked, workspace_root},
    setup,
};

/// rustfmt, clippy on the host crates, clippy on the eBPF crate for the BPF target, rustfmt and
/// clippy on the fuzz targets: all with warnings as errors.
pub fn lint() -> anyhow::Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut command = Command::new("cargo");
        command.current_dir(&root);
        command
    };
    println!("test: rustfmt");
    run_checked(cargo().args(["fmt", "--all", "--check"]))?;
    println!("test: clippy");
    run_checked(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "loupe-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("test: clippy on the eBPF crate (BPF target)");
    run_checked(&mut ebpf_clippy(&root))?;
    // The fuzz targets are their own workspace, so neither check above sees them, and the
    // fuzz smoke (the only build of them) is skipped with --fuzz-time 0s: check them here, so a
    // change to what they call cannot break them unseen.
    println!("test: clippy on the fuzz targets");
    let fuzz = root.join("fuzz/Cargo.toml");
    run_checked(
        cargo()
            .args(["fmt", "--check", "--manifest-path"])
            .arg(&fuzz),
    )?;
    run_checked(
        cargo()
            .args(["clippy", "--release", "--all-targets", "--manifest-path"])
            .arg(&fuzz)
            .args(["--", "-D", "warnings"]),
    )?;
    Ok(())
}

pub fn run(extra: &[String], fuzz_time: Duration) -> anyhow::Result<()> {
    setup::require_root("test")?;
    let installed = setup::run()?;
    let root = workspace_root();
    let cargo = || {
        let mut command = Command::new("cargo");
        command.current_dir(&root);
        command
    };
    lint()?;
    build::release()?;
    println!("test: unit tests and privileged kernel tests");
    run_checked(
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "loupe-ebpf",
                "--exclude",
                "loupe-tests",
                "--",
                "--include-ignored",
            ])
            .args(extra),
    )?;
    println!("test: end-to-end tests (Jaeger, nginx, demo app)");
    run_checked(
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "loupe-tests",
                "--",
                "--test-threads=1",
            ])
            .args(extra)
            .env("LOUPE_JAEGER_BIN", &installed.jaeger)
            .env("LOUPE_BIN", release_bin("loupe"))
            .env("DEMO_APP_BIN", release_bin("demo-app")),
    )?;
    if fuzz_time.is_zero() {
        println!("test: fuzz smoke skipped (--fuzz-time 0s)");
        return Ok(());
    }
    println!("test: fuzz smoke ({} s per target)", fuzz_time.as_secs());
    fuzz::run(
        &[],
        fuzz::Budget {
            time: fuzz_time,
            runs: None,
        },
    )
}

/// Clippy on `loupe-ebpf` as agent/build.rs (aya-build) builds it: the pinned nightly, target
/// bpfel-unknown-none with core built from source, the same `bpf_target_arch` cfg. A check, not
/// a build (nothing is linked), in its own target directory so the two never invalidate each
/// other: after the first run it re-checks only the eBPF crate, in about a second.
fn ebpf_clippy(root: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .current_dir(root)
        .args([
            "run",
            setup::EBPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--package",
            "loupe-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        );
    // rustup run puts the nightly first on PATH; a RUSTC inherited from an outer cargo would not.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS"] {
        command.env_remove(key);
    }
    command
}
