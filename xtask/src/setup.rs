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
/// cargo-fuzz, for `cargo xtask fuzz` (its targets build on the eBPF nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const JAEGER_VERSION: &str = "v1.76.0";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "nginx",
    "wrk",
    "curl",
    "bpftrace",
    // bpftool: `cargo xtask bench --programs` reads the kernel's run counts with it.
    "bpftool",
    "postgresql-15",
    "libpq5",
    "openssl",
    "redis-server",
    // Debian's own interpreter (static, stripped): the asyncio tests run on it too.
    "python3.11",
    // libc's separate debug file (/usr/lib/debug/.build-id): CPU profiles name libc's own
    // functions through its .gnu_debuglink.
    "libc6-dbg",
    // The HTML report's end-to-end test renders the page in headless Chromium (no console
    // errors, values read back from the DOM, a screenshot); DejaVu gives it a font to draw with.
    "chromium",
    "fonts-dejavu-core",
];

/// What the tests' Python apps import, pinned: the PostgreSQL drivers they drive (psycopg2-binary,
/// psycopg, pg8000, asyncpg), the asyncio web stack (FastAPI on uvicorn, on asyncio's loop or
/// uvloop), HTTP clients (httpx, requests), the Redis client, and the Prometheus client library
/// whose parser reads loupe's /metrics (named as `pip freeze` spells it).
const PYTHON_PACKAGES: &[&str] = &[
    "psycopg2-binary==2.9.13",
    "psycopg==3.3.9",
    "pg8000==1.31.6",
    "asyncpg==0.32.0",
    "fastapi==0.163.2",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "httpx==0.28.1",
    "requests==2.34.2",
    "redis==8.1.0",
    "prometheus_client==0.26.0",
];
/// The step's label: the packages by name.
const PYTHON_STEP: &str = "Python venv (psycopg2-binary, psycopg, pg8000, asyncpg, fastapi, uvicorn, uvloop, httpx, requests, redis, prometheus_client)";

/// The Node.js shop's one dependency, node-postgres; tests/apps/node_shop/package.json and its
/// package-lock.json pin the same version.
const NODE_PG_VERSION: &str = "8.23.1";

/// What set-up leaves behind for later steps.
pub struct Installed {
    pub jaeger: PathBuf,
}

pub fn run() -> anyhow::Result<Installed> {
    apt_packages()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    python_venv()?;
    node_shop()?;
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
        step(PYTHON_STEP, "already installed");
        return Ok(());
    }
    step(PYTHON_STEP, &format!("installing into {}", venv.display()));
    if !python.is_file() {
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(PYTHON_PACKAGES),
    )
}

/// The Node.js shop's node_modules, outside the clone: tests/apps/node_shop's package.json and
/// package-lock.json copied to `${cache}/node_shop/`, and `npm ci` there when node-postgres is
/// missing, of another version, or the lock file changed. Node.js and npm come from Debian when
/// the machine has none.
fn node_shop() -> anyhow::Result<()> {
    if !succeeds(Command::new("npm").arg("--version")) {
        step("Node.js and npm", "installing nodejs npm");
        run_checked(Command::new("apt-get").args(["update", "-q"]))?;
        run_checked(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "nodejs",
                    "npm",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let label = format!("Node.js shop (pg {NODE_PG_VERSION})");
    let source = crate::procs::workspace_root().join("tests/apps/node_shop");
    let dir = cache_dir().join("node_shop");
    let files = ["package.json", "package-lock.json"];
    let installed = std::fs::read_to_string(dir.join("node_modules/pg/package.json"))
        .ok()
        .and_then(|json| json_string_field(&json, "version"))
        .is_some_and(|version| version == NODE_PG_VERSION);
    let unchanged = files.iter().all(|file| {
        matches!(
            (std::fs::read(source.join(file)), std::fs::read(dir.join(file))),
            (Ok(wanted), Ok(cached)) if wanted == cached
        )
    });
    if installed && unchanged {
        step(&label, "already installed");
        return Ok(());
    }
    step(&label, &format!("installing into {}", dir.display()));
    std::fs::create_dir_all(&dir)?;
    for file in files {
        std::fs::copy(source.join(file), dir.join(file))
            .with_context(|| format!("copy {} into {}", file, dir.display()))?;
    }
    run_checked(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
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
    let installed = Command::new("rustup")
        .args([
            "component",
            "list",
            "--toolchain",
            EBPF_TOOLCHAIN,
            "--installed",
        ])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    // rust-src to build core for the BPF target, clippy to lint the eBPF crate on it.
    if has_toolchain && installed.contains("rust-src") && installed.contains("clippy") {
        step(
            &format!("{EBPF_TOOLCHAIN} with rust-src and clippy"),
            "already installed",
        );
        return Ok(());
    }
    step(
        &format!("{EBPF_TOOLCHAIN} with rust-src and clippy"),
        "installing",
    );
    run_checked(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
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

fn cargo_fuzz() -> anyhow::Result<()> {
    let label = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let current = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if current
        .split_whitespace()
        .any(|word| word == CARGO_FUZZ_VERSION)
    {
        step(&label, "already installed");
        return Ok(());
    }
    step(&label, "installing");
    run_checked(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
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
    fn node_shop_pins_the_pg_version_setup_checks() {
        let dir = crate::procs::workspace_root().join("tests/apps/node_shop");
        let manifest = std::fs::read_to_string(dir.join("package.json")).unwrap();
        assert!(
            manifest.contains(&format!("\"pg\": \"{}\"", super::NODE_PG_VERSION)),
            "package.json pins pg {}",
            super::NODE_PG_VERSION
        );
        let lock = std::fs::read_to_string(dir.join("package-lock.json")).unwrap();
        let pg = lock
            .split("\"node_modules/pg\": {")
            .nth(1)
            .and_then(|entry| super::json_string_field(entry, "version"));
        assert_eq!(pg.as_deref(), Some(super::NODE_PG_VERSION));
    }

    #[test]
    fn go_download_dir_is_found() {
        let json = "{\n\t\"Path\": \"github.com/x/y\",\n\t\"Dir\": \"/root/go/pkg/mod/github.com/x/y@v1\",\n\t\"Sum\": \"h1:\"\n}";
        assert_eq!(
            super::json_string_field(json, "Dir").as_deref(),
            Some("/root/go/pkg/mod/github.com/x/y@v1")
        );
    }
}
