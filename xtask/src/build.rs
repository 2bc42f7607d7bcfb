//! Release builds of loupe (its build.rs builds the eBPF object) and the test binaries.

use std::process::Command;

use crate::procs::{run_checked, workspace_root};

pub fn release() -> anyhow::Result<()> {
    println!("build: loupe and demo-app (release)");
    run_checked(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "loupe",
                "-p",
                "loupe-tests",
                "--bins",
            ])
            .current_dir(workspace_root()),
    )
}
