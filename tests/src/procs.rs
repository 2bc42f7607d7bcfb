//! The processes a test runs: the demo app, nginx, and loupe itself.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{TempDir, binary, free_port, wait_until};

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; a stale pid only makes it fail.
    unsafe { libc::kill(pid as i32, signal) };
}

fn stop_child(child: &mut Child, first: i32) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), first);
        let stopped = wait_until(Duration::from_secs(5), || child.try_wait().ok().flatten());
        if stopped.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The demo shop: a backend, and a frontend that calls it. Both killed on drop.
pub struct DemoApp {
    backend: Child,
    frontend: Child,
    pub backend_addr: String,
    pub frontend_addr: String,
}

/// The address a test app prints first on stdout: `listening on <addr>`.
pub(crate) fn listening_addr(child: &mut Child, who: &str) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .unwrap_or_else(|err| panic!("{who} did not say where it listens: {err}"));
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{who} said `{line}`"))
        .to_owned()
}

fn start_role(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(binary("DEMO_APP_BIN", "demo-app"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start demo-app (run `cargo xtask build`)");
    let addr = listening_addr(&mut child, "demo-app");
    (child, addr)
}

impl DemoApp {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra frontend flags, e.g. `["--database", "127.0.0.1:5432/shop"]`.
    pub fn start_with(frontend_flags: &[&str]) -> Self {
        let (backend, backend_addr) = start_role(&["backend", "--port", "0"]);
        let url = format!("http://{backend_addr}");
        let mut frontend_args = vec!["frontend", "--port", "0", "--backend", &url];
        frontend_args.extend_from_slice(frontend_flags);
        let (frontend, frontend_addr) = start_role(&frontend_args);
        Self {
            backend,
            frontend,
            backend_addr,
            frontend_addr,
        }
    }

    pub fn frontend_pid(&self) -> u32 {
        self.frontend.id()
    }

    pub fn backend_pid(&self) -> u32 {
        self.backend.id()
    }

    /// loupe on both processes, exporting to `endpoint`, then `extra` flags.
    pub fn both_args(&self, endpoint: &str, extra: &[&str]) -> Vec<String> {
        let mut all = args(&[
            "--pid",
            &self.frontend_pid().to_string(),
            "--pid",
            &self.backend_pid().to_string(),
            "--otlp-endpoint",
            endpoint,
        ]);
        all.extend(args(extra));
        all
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.frontend.kill();
        let _ = self.backend.kill();
        let _ = self.frontend.wait();
        let _ = self.backend.wait();
    }
}

/// The Python shop (tests/apps/pg_shop.py) under the venv `cargo xtask setup` makes.
pub struct PythonShop {
    child: Child,
    pub addr: String,
}

impl PythonShop {
    pub fn start(dsn: &str) -> Self {
        Self::start_with(dsn, &[])
    }

    /// With extra flags, e.g. `--lazy`.
    pub fn start_with(dsn: &str, flags: &[&str]) -> Self {
        let mut args = vec!["--port", "0", "--dsn", dsn];
        args.extend_from_slice(flags);
        let (child, addr) = start_python("pg_shop.py", &args);
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PythonShop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The asyncio shop (tests/apps/async_shop.py): FastAPI on uvicorn, an asyncpg pool of 4
/// connections opened before it says where it listens, and with a downstream an
/// httpx.AsyncClient to it.
pub struct AsyncShop {
    child: Child,
    pub addr: String,
}

impl AsyncShop {
    /// `dsn` as a URL: `postgresql://postgres@127.0.0.1:<port>/shop`. No downstream: the routes
    /// that call one answer 404.
    pub fn start(dsn: &str) -> Self {
        Self::start_with(&["--dsn", dsn])
    }

    /// With the routes that call `downstream` (`http://<addr>`, e.g. [`Downstream::url`]).
    pub fn start_with_downstream(dsn: &str, downstream: &str) -> Self {
        Self::start_with(&["--dsn", dsn, "--downstream", downstream])
    }

    /// As [`Self::start_with_downstream`], on event loop `event_loop` (`asyncio` or `uvloop`).
    pub fn start_on(event_loop: &str, dsn: &str, downstream: &str) -> Self {
        Self::start_with(&[
            "--dsn",
            dsn,
            "--downstream",
            downstream,
            "--loop",
            event_loop,
        ])
    }

    fn start_with(flags: &[&str]) -> Self {
        let mut args = vec!["--port", "0"];
        args.extend_from_slice(flags);
        let (child, addr) = start_python("async_shop.py", &args);
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AsyncShop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tests/apps/<script>` with the venv's Python; returns it and where it listens.
fn start_python(script: &str, args: &[&str]) -> (Child, String) {
    let python = crate::cache_dir().join("venv/bin/python");
    assert!(
        python.is_file(),
        "no venv at {}: run `cargo xtask setup`",
        python.display()
    );
    let path = crate::workspace_root().join("tests/apps").join(script);
    let mut child = Command::new(python)
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {script}: {err}"));
    let addr = listening_addr(&mut child, script);
    (child, addr)
}

/// The cache shop (tests/apps/cache_shop.py): a thread per connection, redis-py in front of a
/// slow downstream (`host:port`).
pub struct CacheShop {
    child: Child,
    pub addr: String,
}

impl CacheShop {
    pub fn start(redis: &str, downstream: &str) -> Self {
        let (child, addr) = start_python(
            "cache_shop.py",
            &["--port", "0", "--redis", redis, "--downstream", downstream],
        );
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for CacheShop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TLS shop (tests/apps/tls_shop.py): a thread per connection, each with a `requests`
/// Session to an HTTPS downstream (`https://host:port`) verified against `ca`.
pub struct TlsShop {
    child: Child,
    pub addr: String,
}

impl TlsShop {
    pub fn start(downstream: &str, ca: &std::path::Path) -> Self {
        let ca = ca.to_string_lossy().into_owned();
        let (child, addr) = start_python(
            "tls_shop.py",
            &["--port", "0", "--downstream", downstream, "--ca", &ca],
        );
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TlsShop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The diagnosis shop (tests/apps/diag_shop.py): one route per anti-pattern and control routes,
/// with its two downstream services (peers A and B) and a PostgreSQL `shop` database.
pub struct DiagShop {
    shop: Child,
    downstream: Vec<Child>,
    pub addr: String,
    pub peer_a: String,
    pub peer_b: String,
}

impl DiagShop {
    pub fn start(dsn: &str) -> Self {
        let (a, peer_a) = start_python("diag_shop.py", &["downstream", "--port", "0"]);
        let (b, peer_b) = start_python("diag_shop.py", &["downstream", "--port", "0"]);
        let url_a = format!("http://{peer_a}");
        let url_b = format!("http://{peer_b}");
        let (shop, addr) = start_python(
            "diag_shop.py",
            &[
                "shop", "--port", "0", "--dsn", dsn, "--peer-a", &url_a, "--peer-b", &url_b,
            ],
        );
        Self {
            shop,
            downstream: vec![a, b],
            addr,
            peer_a,
            peer_b,
        }
    }

    pub fn pid(&self) -> u32 {
        self.shop.id()
    }

    /// The downstream services' pids (peer A, peer B).
    pub fn downstream_pids(&self) -> Vec<u32> {
        self.downstream.iter().map(Child::id).collect()
    }
}

impl Drop for DiagShop {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.shop).chain(self.downstream.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One downstream of the diagnosis shop on its own (tests/apps/diag_shop.py downstream): a
/// thread per connection, `/sleep/<anything>?ms=N` waits N ms and answers.
pub struct Downstream {
    child: Child,
    pub addr: String,
}

impl Downstream {
    pub fn start() -> Self {
        let (child, addr) = start_python("diag_shop.py", &["downstream", "--port", "0"]);
        Self { child, addr }
    }

    /// `http://<addr>`, what a shop's `--downstream` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 server on raw sockets (tests/apps/raw_http.py): 1xx responses, a 1 MiB head and
/// 101 Switching Protocols, by path.
pub struct RawHttp {
    child: Child,
    pub addr: String,
}

impl RawHttp {
    pub fn start() -> Self {
        let (child, addr) = start_python("raw_http.py", &["--port", "0"]);
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RawHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPython interpreters the asyncio tests run on: Debian's (static, stripped), always, then
/// every pyenv 3.12 and 3.13 build the machine has. (major.minor, path)
pub fn pythons() -> Vec<(String, std::path::PathBuf)> {
    let debian = std::path::PathBuf::from("/usr/bin/python3.11");
    assert!(
        debian.is_file(),
        "no {}: run `cargo xtask setup`",
        debian.display()
    );
    let mut found = vec![("3.11".to_owned(), debian)];
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let versions = std::path::Path::new(&home).join(".pyenv/versions");
    let mut builds: Vec<_> = std::fs::read_dir(versions)
        .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    builds.sort();
    for minor in ["3.12", "3.13"] {
        for build in &builds {
            let name = build.file_name().unwrap_or_default().to_string_lossy();
            let python = build.join(format!("bin/python{minor}"));
            if name.starts_with(&format!("{minor}.")) && python.is_file() {
                found.push((minor.to_owned(), python));
            }
        }
    }
    found
}

/// A test app of tests/apps on interpreter `python`, once it listens.
pub struct PythonApp {
    child: Child,
    pub addr: String,
}

impl PythonApp {
    pub fn start(python: &std::path::Path, script: &str, args: &[&str]) -> Self {
        let path = crate::workspace_root().join("tests/apps").join(script);
        let mut child = Command::new(python)
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {script} on {}: {err}", python.display()));
        let addr = listening_addr(&mut child, script);
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PythonApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The standard-library asyncio service (tests/apps/stdlib_async.py) on interpreter `python`:
/// a task per client connection, a pool of keep-alive connections to `downstream` (host:port).
pub struct StdlibAsync;

impl StdlibAsync {
    pub fn start(python: &std::path::Path, downstream: &str) -> PythonApp {
        PythonApp::start(
            python,
            "stdlib_async.py",
            &["--port", "0", "--downstream", downstream],
        )
    }
}

/// nginx from Debian, unmodified, with a master and one worker, on a free loopback port.
pub struct Nginx {
    child: Child,
    _dir: TempDir,
    pub addr: String,
}

impl Nginx {
    pub fn start() -> Self {
        Self::start_with(
            "",
            "location / { return 200 \"ok\\n\"; }\n    location /missing { return 404; }\n    location /down { return 503; }",
        )
    }

    /// A reverse proxy to `upstream` (`host:port`) over a keep-alive pool, as production runs
    /// it: HTTP/1.1 to the upstream, idle connections kept.
    pub fn proxy(upstream: &str) -> Self {
        Self::start_with(
            &format!("upstream backend {{ server {upstream}; keepalive 16; }}"),
            "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
        )
    }

    /// nginx over TLS with a self-signed certificate for 127.0.0.1 (made here: `cert_path`):
    /// `/` answers `ok`, `/sleep/...` is proxied to `upstream` (`host:port`) over a keep-alive
    /// pool.
    pub fn tls_proxy(upstream: &str) -> Self {
        Self::start_tls(
            &format!("upstream backend {{ server {upstream}; keepalive 16; }}"),
            "location / { return 200 \"ok\\n\"; }\n    location /sleep/ { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
        )
    }

    /// The certificate a TLS nginx serves (a client's CA file).
    pub fn cert_path(&self) -> std::path::PathBuf {
        self._dir.0.join("cert.pem")
    }

    fn start_tls(http: &str, locations: &str) -> Self {
        let dir = TempDir::new("nginx");
        crate::collector::self_signed_cert(&dir.0);
        let tls = format!(
            "ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    {locations}",
            d = dir.0.display()
        );
        Self::start_in(dir, http, " ssl", &tls)
    }

    /// nginx with `http` lines before the server block and `locations` in it.
    fn start_with(http: &str, locations: &str) -> Self {
        Self::start_in(TempDir::new("nginx"), http, "", locations)
    }

    fn start_in(dir: TempDir, http: &str, listen: &str, locations: &str) -> Self {
        std::fs::create_dir_all(dir.0.join("logs")).expect("logs dir");
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  {http}\n\
             server {{\n    listen 127.0.0.1:{port}{listen};\n    {locations}\n  }}\n}}\n",
            d = dir.0.display()
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir.0)
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (cargo xtask setup installs it)");
        let addr = format!("127.0.0.1:{port}");
        let pid = child.id();
        let ready = wait_until(Duration::from_secs(10), || {
            let worker =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            (!worker.trim().is_empty() && std::net::TcpStream::connect(&addr).is_ok()).then_some(())
        });
        assert!(ready.is_some(), "nginx did not start on {addr}");
        Self {
            child,
            _dir: dir,
            addr,
        }
    }

    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGQUIT);
    }
}

/// What loupe printed and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The `loupe: summary ...` line as printed, for a test's report.
    pub fn summary_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("loupe: summary"))
            .unwrap_or("(no summary line)")
    }

    /// Asserts that loupe told the user `line` (on stderr).
    pub fn assert_told(&self, line: &str) {
        assert!(
            self.stderr.contains(line),
            "the user is told `{line}`:\n{}",
            self.stderr
        );
    }

    /// The `loupe: summary key=value ...` line as a map.
    pub fn summary(&self) -> HashMap<String, u64> {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("loupe: summary "))
            .unwrap_or_else(|| panic!("no summary line in:\n{}", self.stderr));
        line.trim_start_matches("loupe: summary ")
            .split_whitespace()
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

/// A running loupe with its output collected.
pub struct Loupe {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().expect("not poisoned").push_str(&(line + "\n"));
        }
    });
    text
}

impl Loupe {
    /// Starts loupe with `args`.
    pub fn spawn(args: &[String]) -> Self {
        let mut command = Command::new(binary("LOUPE_BIN", "loupe"));
        // The tests say where spans go; a developer's OTEL_* settings must not.
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_SERVICE_NAME",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "OTEL_METRICS_EXPORTER",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_METRIC_EXPORT_INTERVAL",
        ] {
            command.env_remove(var);
        }
        Self::spawn_with(command.args(args))
    }

    pub fn spawn_with(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loupe (run `cargo xtask build`)");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Starts loupe and waits for its `attached` line.
    pub fn attach(args: &[String]) -> Self {
        let mut loupe = Self::spawn(args);
        let attached = wait_until(Duration::from_secs(30), || {
            if loupe.stderr().contains("loupe: attached") {
                return Some(true);
            }
            loupe.child.try_wait().ok().flatten().map(|_| false)
        });
        assert_eq!(
            attached,
            Some(true),
            "loupe did not attach:\n{}",
            loupe.stderr()
        );
        loupe
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("not poisoned").clone()
    }

    /// Waits for loupe to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "loupe still runs after {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let the collectors reach EOF.
        let _ = wait_until(Duration::from_secs(5), || {
            let err = self.stderr();
            (err.contains("loupe: summary") || err.contains("loupe: error")).then_some(())
        });
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// SIGINT without waiting (see [`Self::stop`]).
    pub fn interrupt(&self) {
        signal(self.child.id(), libc::SIGINT);
    }

    /// SIGINT, as a user's Ctrl-C: loupe flushes, prints its summary and exits.
    pub fn stop(self) -> Finished {
        signal(self.child.id(), libc::SIGINT);
        self.wait(Duration::from_secs(30))
    }
}

impl Drop for Loupe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--pid` and friends as owned strings.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// loupe on `pid`, exporting to `endpoint` as `service`, then `extra` flags.
pub fn otlp_args(pid: u32, endpoint: &str, service: &str, extra: &[&str]) -> Vec<String> {
    let mut all = args(&[
        "--pid",
        &pid.to_string(),
        "--otlp-endpoint",
        endpoint,
        "--service-name",
        service,
    ]);
    all.extend(args(extra));
    all
}
