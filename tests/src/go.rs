//! The Go test service (tests/apps/go_shop): built with `go build` into the cache once per
//! version of its sources, then started as a shop (net/http server, pgxpool, a keep-alive HTTP
//! client) or as the downstream the shop calls. Both killed on drop.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Instant,
};

use crate::{cache_dir, procs::listening_addr, workspace_root};

/// The files the binary is built from: a change to any of them is a new binary.
const SOURCES: &[&str] = &["main.go", "go.mod", "go.sum"];

/// tests/apps/go_shop.
fn source_dir() -> PathBuf {
    workspace_root().join("tests/apps/go_shop")
}

/// FNV-1a, 64 bits: a stable content hash without a dependency (std's hasher may change
/// between Rust releases, which would only cost a rebuild, but this never does).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// A short hash of the sources' names and contents.
fn sources_hash(dir: &Path) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for name in SOURCES {
        let bytes = std::fs::read(dir.join(name))
            .unwrap_or_else(|err| panic!("read {}: {err}", dir.join(name).display()));
        fnv1a(&mut hash, name.as_bytes());
        fnv1a(&mut hash, &(bytes.len() as u64).to_le_bytes());
        fnv1a(&mut hash, &bytes);
    }
    format!("{:012x}", hash >> 16)
}

/// PATH with /usr/local/go/bin appended when no `go` is on it (where the official tarball
/// installs it).
fn go_path() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join("go").is_file()) {
        return path;
    }
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/local/go/bin"));
    std::env::join_paths(dirs).unwrap_or(path)
}

/// The go_shop binary: `$GO_SHOP_BIN`, else
/// `${LOUPE_CACHE:-~/.cache/loupe}/go-shop-<hash of the sources>/go_shop`, built there when
/// missing (into a temporary name, then renamed, so an interrupted build never looks finished
/// and concurrent test processes never run a half-written file). A rerun costs nothing.
pub fn go_shop_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GO_SHOP_BIN") {
        return PathBuf::from(path);
    }
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let source = source_dir();
    let dir = cache_dir().join(format!("go-shop-{}", sources_hash(&source)));
    let binary = dir.join("go_shop");
    if binary.is_file() {
        return binary;
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
    let partial = dir.join(format!("go_shop.partial-{}", std::process::id()));
    let started = Instant::now();
    // go.sum is committed: the build reads it and never rewrites go.mod (-mod=readonly);
    // -buildvcs=false: nothing to stamp, and no git call that can fail on a clone's ownership.
    let out = Command::new("go")
        .args(["build", "-mod=readonly", "-buildvcs=false", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&source)
        .env("PATH", go_path())
        .env_remove("GOFLAGS")
        .stdout(Stdio::null())
        .output()
        .unwrap_or_else(|err| {
            panic!("run `go build` (install Go 1.25 or newer, or run `cargo xtask setup`): {err}")
        });
    assert!(
        out.status.success(),
        "go build in {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &binary).unwrap_or_else(|err| {
        panic!(
            "rename {} to {}: {err}",
            partial.display(),
            binary.display()
        )
    });
    eprintln!(
        "built {} in {:.1} s",
        binary.display(),
        started.elapsed().as_secs_f64()
    );
    binary
}

/// A pgx connection URL to `database` on a local server (the tests' PostgreSQL has no TLS).
pub fn pgx_dsn(port: u16, database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{database}?sslmode=disable")
}

/// The shop built as [`go_shop_binary`], with its symbol table and debug info stripped
/// (`strip`, as release images do): what is left is Go's own `.gopclntab`.
pub fn stripped_go_shop_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let full = go_shop_binary();
            let stripped = full.with_file_name("go_shop.stripped");
            if !stripped.is_file() {
                let partial =
                    full.with_file_name(format!("go_shop.stripped-{}", std::process::id()));
                let status = Command::new("strip")
                    .arg("-o")
                    .arg(&partial)
                    .arg(&full)
                    .status()
                    .unwrap_or_else(|err| panic!("run strip (binutils): {err}"));
                assert!(status.success(), "strip {}", full.display());
                std::fs::rename(&partial, &stripped)
                    .unwrap_or_else(|err| panic!("rename to {}: {err}", stripped.display()));
            }
            stripped
        })
        .clone()
}

fn start(args: &[&str], env: &[(&str, &str)], who: &str) -> (Child, String) {
    start_binary(&go_shop_binary(), args, env, who)
}

fn start_binary(
    binary: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    who: &str,
) -> (Child, String) {
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {who}: {err}"));
    let addr = listening_addr(&mut child, who);
    (child, addr)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `go_shop shop`: the shop loupe observes.
pub struct GoShop {
    child: Child,
    pub addr: String,
}

impl GoShop {
    /// `dsn` as [`pgx_dsn`] makes it; `downstream` as `http://127.0.0.1:<port>`.
    pub fn start(dsn: &str, downstream: &str) -> Self {
        Self::start_with_env(dsn, downstream, &[])
    }

    /// The stripped build ([`stripped_go_shop_binary`]).
    pub fn start_stripped(dsn: &str, downstream: &str) -> Self {
        Self::start_binary(&stripped_go_shop_binary(), dsn, downstream, &[])
    }

    /// With extra environment, e.g. `[("GOMAXPROCS", "1")]`.
    pub fn start_with_env(dsn: &str, downstream: &str, env: &[(&str, &str)]) -> Self {
        Self::start_binary(&go_shop_binary(), dsn, downstream, env)
    }

    fn start_binary(
        binary: &std::path::Path,
        dsn: &str,
        downstream: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let (child, addr) = start_binary(
            binary,
            &[
                "shop",
                "--port",
                "0",
                "--dsn",
                dsn,
                "--downstream",
                downstream,
            ],
            env,
            "go_shop shop",
        );
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GoShop {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `go_shop downstream`: `GET /sleep/<anything>?ms=N`.
pub struct GoDownstream {
    child: Child,
    pub addr: String,
}

impl GoDownstream {
    pub fn start() -> Self {
        let (child, addr) = start(&["downstream", "--port", "0"], &[], "go_shop downstream");
        Self { child, addr }
    }

    /// `http://<addr>`, what the shop's `--downstream` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GoDownstream {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
