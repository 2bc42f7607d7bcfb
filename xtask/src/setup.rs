//! Installs what loupe's build, demo and tests need, each step only when missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::procs::{run_checked, succeeds};

/// The nightly the eBPF programs are built with (agent/build.rs names the same one).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
const BPF_LINKER_VERSION: &str = "0.13.0";
const JAEGER_VERSION: &str = "v1.76.0";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "nginx",
    "wrk",
    "curl",
    "bpftrace",
    "postgresql-15",
    "libpq5",
    "openssl",
];

/// The Python PostgreSQL clients the tests drive, pinned.
const PYTHON_PACKAGES: &[&str] = &[
    "psycopg2-binary==2.9.13",
    "psycopg==3.3.9",
    "pg8000==1.31.6",
];

/// What set-up leaves behind for later steps.
pub struct Installed {
    pub jaeger: PathBuf,
}

pub fn run() -> anyhow::Result<Installed> {
    apt_packages()?;
    nightly()?;
    bpf_linker()?;
    python_venv()?;
    let jaeger = jaeger()?;
    Ok(Installed { jaeger })
}

/// The cache outside the clone: `$LOUPE_CACHE`, else ~/.cache/loupe.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LOUPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/loupe")
        })
}

fn python_venv() -> anyhow::Result<()> {
    let venv = cache_dir().join("venv");
    let python = venv.join("bin/python");
    let wanted: Vec<String> = PYTHON_PACKAGES
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    let frozen = Command::new(&python)
        .args(["-m", "pip", "freeze"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
        .unwrap_or_default();
    if wanted
        .iter()
        .all(|package| frozen.lines().any(|line| line == package))
    {
        step(
            "Python venv (psycopg2-binary, psycopg, pg8000)",
            "already installed",
        );
        return Ok(());
    }
    step(
        "Python venv (psycopg2-binary, psycopg, pg8000)",
        &format!("installing into {}", venv.display()),
    );
    if !python.is_file() {
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(PYTHON_PACKAGES),
    )
}

fn step(what: &str, state: &str) {
    println!("setup: {what}: {state}");
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output();
            !matches!(out, Ok(out) if String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages", "already installed");
        return Ok(());
    }
    step(
        "Debian packages",
        &format!("installing {}", missing.join(" ")),
    );
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> anyhow::Result<()> {
    let has_toolchain =
        succeeds(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"]));
    let has_src = Command::new("rustup")
        .args([
            "component",
            "list",
            "--toolchain",
            EBPF_TOOLCHAIN,
            "--installed",
        ])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("rust-src"));
    if has_toolchain && has_src {
        step(
            &format!("{EBPF_TOOLCHAIN} with rust-src"),
            "already installed",
        );
        return Ok(());
    }
    step(&format!("{EBPF_TOOLCHAIN} with rust-src"), "installing");
    run_checked(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        step(
            &format!("bpf-linker {BPF_LINKER_VERSION}"),
            "already installed",
        );
        return Ok(());
    }
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        "installing (built against LLVM 22)",
    );
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// Where the Jaeger binary is cached, outside the clone.
pub fn jaeger_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LOUPE_JAEGER_BIN") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("LOUPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/loupe")
        });
    cache
        .join(format!("jaeger-{JAEGER_VERSION}"))
        .join("jaeger")
}

fn jaeger() -> anyhow::Result<PathBuf> {
    let path = jaeger_path();
    if path.is_file() {
        step(
            &format!("Jaeger {JAEGER_VERSION}"),
            &format!("already built at {}", path.display()),
        );
        return Ok(path);
    }
    step(
        &format!("Jaeger {JAEGER_VERSION}"),
        &format!("building into {} (takes 5-7 minutes, once)", path.display()),
    );
    let module = format!("github.com/jaegertracing/jaeger@{JAEGER_VERSION}");
    let scratch = std::env::temp_dir();
    let out = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .current_dir(&scratch)
        .output()
        .context("failed to run `go mod download` (is Go installed?)")?;
    if !out.status.success() {
        bail!(
            "go mod download {module} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let dir =
        json_string_field(&json, "Dir").context("no Dir in `go mod download -json` output")?;
    let parent = path.parent().context("jaeger path has no parent")?;
    std::fs::create_dir_all(parent)?;
    let partial = parent.join("jaeger.partial");
    run_checked(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&partial)
            .arg("./cmd/jaeger")
            .current_dir(&dir),
    )?;
    // A rename, so an interrupted build never leaves a binary that looks finished.
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The string value of `"key": "..."` in a flat JSON object (go's output needs no more).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\""))?;
    let rest = &json[start + key.len() + 2..];
    let open = rest.find('"')?;
    let rest = &rest[open + 1..];
    let close = rest.find('"')?;
    Some(rest[..close].replace("\\\\", "\\"))
}

/// Root is needed to load eBPF programs.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {what}` needs root (it loads eBPF programs and installs packages): run it with sudo"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn go_download_dir_is_found() {
        let json = "{\n\t\"Path\": \"github.com/x/y\",\n\t\"Dir\": \"/root/go/pkg/mod/github.com/x/y@v1\",\n\t\"Sum\": \"h1:\"\n}";
        assert_eq!(
            super::json_string_field(json, "Dir").as_deref(),
            Some("/root/go/pkg/mod/github.com/x/y@v1")
        );
    }
}
