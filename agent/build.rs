//! Builds the eBPF object (`loupe-ebpf`) with aya-build on the pinned nightly; the agent embeds
//! it with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

/// The nightly the eBPF crate is built with (`cargo xtask setup` installs it).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent directory"))?
        .join("ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    // aya-build replays the inner cargo's stderr as `cargo:warning` lines, which cargo then
    // shows on every build of the agent, cached or not: keep the inner cargo quiet, so only
    // the eBPF crate's real diagnostics (rendered compiler messages) are replayed.
    // SAFETY: the build script is single-threaded here; nothing else reads the environment.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "loupe-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
