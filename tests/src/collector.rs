//! Collectors that misbehave (tests/apps/otlp_gate.py in front of a real Jaeger), a load that
//! keeps a target busy with a unique path per request, and a self-signed certificate for TLS
//! collectors.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{client::Client, free_port, wait_until};

/// A running otlp_gate.py, killed on drop.
pub struct Gate {
    child: Child,
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Gate {
    /// Accepts connections and never answers.
    pub fn blackhole() -> Self {
        Self::start(&["blackhole"], &[])
    }

    /// Relays to `upstream` (a loopback port), holding each answer back `seconds`.
    pub fn delay(upstream: u16, seconds: f64) -> Self {
        Self::start(&["delay"], &[upstream.to_string(), seconds.to_string()])
    }

    /// An OTLP/HTTP front to `upstream` that lets in only requests with `header` (`k=v`).
    pub fn auth(upstream: u16, header: &str) -> Self {
        Self::start(&["auth"], &[upstream.to_string(), header.to_owned()])
    }

    fn start(mode: &[&str], rest: &[String]) -> Self {
        let python = crate::cache_dir().join("venv/bin/python");
        assert!(python.is_file(), "no venv: run `cargo xtask setup`");
        let port = free_port();
        let mut child = Command::new(python)
            .arg(crate::workspace_root().join("tests/apps/otlp_gate.py"))
            .args(mode)
            .arg(port.to_string())
            .args(rest)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start otlp_gate.py");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("not poisoned").push(line);
            }
        });
        let gate = Self { child, port, lines };
        let ready = wait_until(Duration::from_secs(20), || {
            gate.lines().iter().any(|l| l == "ready").then_some(())
        });
        assert!(ready.is_some(), "otlp_gate.py {mode:?} never got ready");
        gate
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it printed (after `ready`: one line per request in auth mode).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("not poisoned").clone()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 (its own CA) in `dir`: (cert.pem, key.pem).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (cargo xtask setup installs it)");
    assert!(status.success(), "openssl req");
    (cert, key)
}

/// A CA and a server certificate for 127.0.0.1 it signed (as a real collector has: TLS
/// libraries such as rustls refuse a CA certificate as the server's own) in `dir`:
/// (ca.pem, server.pem, server-key.pem).
pub fn ca_signed_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, _) = self_signed_cert(dir);
    let ca_key = dir.join("key.pem");
    let (cert, key, csr) = (
        dir.join("server.pem"),
        dir.join("server-key.pem"),
        dir.join("server.csr"),
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the extensions");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let status = Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req".as_ref(),
        "-newkey".as_ref(),
        "rsa:2048".as_ref(),
        "-nodes".as_ref(),
        "-subj".as_ref(),
        "/CN=127.0.0.1".as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        csr.as_os_str(),
    ]);
    openssl(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        ca.as_os_str(),
        "-CAkey".as_ref(),
        ca_key.as_os_str(),
        "-CAcreateserial".as_ref(),
        "-days".as_ref(),
        "2".as_ref(),
        "-extfile".as_ref(),
        ext.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}

/// Keep-alive clients sending `GET {prefix}{n}` with n unique across them, each at most
/// `per_second` requests a second, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    slowest_us: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: &str, prefix: &str, clients: usize, per_second: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, sent, slowest_us) = (stop.clone(), sent.clone(), slowest_us.clone());
                let (addr, prefix) = (addr.to_owned(), prefix.to_owned());
                std::thread::spawn(move || {
                    let mut client = Client::connect(&addr).expect("connect");
                    let gap = Duration::from_micros(1_000_000 / per_second.max(1));
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        let path = format!("{prefix}{n}");
                        // A server ends a keep-alive connection after so many requests (nginx:
                        // 1,000): the request it did not read goes again on a new one.
                        let status = match client.get(&path) {
                            Ok(response) => response.status,
                            Err(_) => {
                                client = Client::connect(&addr).expect("reconnect");
                                client.get_ok(&path).status
                            }
                        };
                        assert_eq!(status, 200, "GET {path}");
                        let took = started.elapsed();
                        slowest_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                        if let Some(rest) = gap.checked_sub(took) {
                            std::thread::sleep(rest);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            slowest_us,
            threads,
        }
    }

    /// Requests sent so far (each answered before the next on its connection).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns (requests answered, the slowest one).
    pub fn stop(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a load client failed");
        }
        (
            self.sent.load(Ordering::Relaxed),
            Duration::from_micros(self.slowest_us.load(Ordering::Relaxed)),
        )
    }
}
