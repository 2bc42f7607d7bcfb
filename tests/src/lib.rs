//! The end-to-end harness: real Jaeger, nginx, the demo app and loupe itself, each started on
//! loopback by the test that needs it and stopped when it is dropped. Everything waits on a
//! condition with a timeout; nothing waits on a fixed sleep alone.

pub mod calls;
pub mod client;
pub mod collector;
pub mod collector_tier;
pub mod go;
pub mod jaeger;
pub mod node;
pub mod postgres;
pub mod procs;
pub mod prometheus;
pub mod queries;
pub mod redis;
pub mod traceparent;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A binary from `$var`, else from target/release.
pub fn binary(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release").join(name))
}

/// The cache `cargo xtask setup` fills, outside the clone: `$LOUPE_CACHE`, else ~/.cache/loupe.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LOUPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/loupe")
        })
}

/// Fails the test unless it runs as root: these tests load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs: run them with `cargo xtask test` as root"
    );
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("loupe-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
