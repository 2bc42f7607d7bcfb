//! Child processes: run a step and fail on its exit code, or keep a server running until drop.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Runs `command` with inherited output; an error unless it exits 0.
pub fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("failed to start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Whether `command` runs and exits 0 (its output discarded).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The workspace root (xtask's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn release_bin(name: &str) -> PathBuf {
    workspace_root().join("target/release").join(name)
}

/// A child killed (SIGINT, then SIGKILL) when dropped.
pub struct Guard {
    pub child: Child,
    pub name: String,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then waits up to `timeout` before SIGKILL.
    pub fn interrupt(&mut self, timeout: Duration) {
        signal(self.pid(), libc::SIGINT);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "xtask: {} did not stop on SIGINT within {timeout:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt(Duration::from_secs(5));
        }
    }
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; a stale pid only makes it fail.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Starts a demo-app role and waits for its `listening on ADDR` line.
pub fn start_demo_app(args: &[&str]) -> anyhow::Result<(Guard, String)> {
    let mut child = Command::new(release_bin("demo-app"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to start demo-app (run `cargo xtask build`)")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("demo-app said `{}`", line.trim()))?
        .to_owned();
    Ok((
        Guard {
            child,
            name: format!("demo-app {}", args[0]),
        },
        addr,
    ))
}

/// loupe with its stderr tee'd to ours and watched for the `attached` line.
pub struct Loupe {
    pub guard: Guard,
    pub stderr: Arc<Mutex<String>>,
}

impl Loupe {
    /// Starts loupe with `args`: `$LOUPE_BENCH_BIN` when set (to measure another build of it,
    /// an A/B), else the release build.
    pub fn start(args: &[String], stdout: Stdio) -> anyhow::Result<Self> {
        let binary = std::env::var_os("LOUPE_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| release_bin("loupe"));
        let mut child = Command::new(binary)
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start loupe (run `cargo xtask build`)")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().expect("not poisoned").push_str(&(line + "\n"));
            }
        });
        let mut loupe = Self {
            guard: Guard {
                child,
                name: "loupe".into(),
            },
            stderr: text,
        };
        loupe.wait_attached(Duration::from_secs(30))?;
        Ok(loupe)
    }

    fn wait_attached(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .stderr
                .lock()
                .expect("not poisoned")
                .contains("loupe: attached")
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                bail!("loupe exited with {status} before attaching");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("loupe did not attach within {timeout:?}")
    }

    /// CPU seconds (user + system) and peak RSS in KiB, read from /proc while it runs.
    pub fn usage(&self) -> (f64, u64) {
        let pid = self.guard.pid();
        let cpu = cpu_seconds(pid);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (cpu, hwm)
    }
}

/// CPU seconds (user and system, the kernel's work on its behalf included: its syscalls, the
/// eBPF programs they run, uprobe hits) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / ticks)
        .unwrap_or(0.0)
}
