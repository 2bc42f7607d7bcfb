//! Everything CI runs: formatting, lints, unit tests, then the privileged tests (kernel programs
//! against real sockets, and end to end against Jaeger, nginx and the demo app).

use std::process::Command;

use crate::{
    build,
    procs::{release_bin, run_checked, workspace_root},
    setup,
};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    setup::require_root("test")?;
    let installed = setup::run()?;
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
    )
}
