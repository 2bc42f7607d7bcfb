//! Jaeger v2 all-in-one with in-memory storage on free loopback ports, and a client for its
//! query API (`/api/traces`), which is what a user's Jaeger UI reads.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;

use crate::{TempDir, free_port, wait_until};

/// A running Jaeger, killed on drop.
pub struct Jaeger {
    child: Child,
    dir: TempDir,
    pub otlp_grpc: u16,
    pub otlp_http: u16,
    pub query: u16,
    query_grpc: u16,
    /// (certificate, key) PEM files its OTLP receivers serve TLS with.
    tls: Option<(PathBuf, PathBuf)>,
    /// Where the OTLP metrics it receives are served as Prometheus text, if it takes them.
    pub metrics: Option<u16>,
}

/// The Jaeger binary: `$LOUPE_JAEGER_BIN`, else the cache `cargo xtask setup` builds into.
pub fn jaeger_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LOUPE_JAEGER_BIN") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("LOUPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/loupe")
        });
    cache.join("jaeger-v1.76.0/jaeger")
}

impl Jaeger {
    /// Starts Jaeger on free loopback ports. A port found free can be taken before Jaeger binds
    /// it (by another test process's connections): then Jaeger exits at once, and it is
    /// started again on other ports, up to three times.
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// Starts Jaeger with OTLP over TLS (gRPC and HTTP) from the PEM `cert` and `key`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::start_with(Some((cert.to_path_buf(), key.to_path_buf())), false)
    }

    /// Starts Jaeger taking OTLP metrics too: a metrics pipeline from its OTLP receiver to the
    /// collector's Prometheus exporter (resource attributes as labels), served on
    /// [`Self::metrics`].
    pub fn start_with_metrics() -> Self {
        Self::start_with(None, true)
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>, metrics: bool) -> Self {
        let binary = jaeger_binary();
        assert!(
            binary.is_file(),
            "no Jaeger at {}: run `cargo xtask setup` (or `cargo xtask test`)",
            binary.display()
        );
        let mut last = String::new();
        for _ in 0..3 {
            let ports = (free_port(), free_port(), free_port(), free_port());
            let metrics = metrics.then(free_port);
            match Self::try_start(&binary, ports, tls.clone(), metrics) {
                Ok(jaeger) => return jaeger,
                Err(log) => last = log,
            }
        }
        panic!("jaeger exited at start three times; the last time:\n{last}");
    }

    /// One start; Err(its log) when it exits before its query API answers.
    fn try_start(
        binary: &std::path::Path,
        (otlp_grpc, otlp_http, query, query_grpc): (u16, u16, u16, u16),
        tls: Option<(PathBuf, PathBuf)>,
        metrics: Option<u16>,
    ) -> Result<Self, String> {
        let dir = TempDir::new("jaeger");
        let tls_block = match &tls {
            Some((cert, key)) => format!(
                "\n        tls:\n          cert_file: {}\n          key_file: {}",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let (metrics_pipeline, metrics_exporter) = match metrics {
            Some(port) => (
                "\n    metrics:\n      receivers: [otlp]\n      exporters: [prometheus]".to_owned(),
                format!(
                    "\n  prometheus:\n    endpoint: 127.0.0.1:{port}\n    resource_to_telemetry_conversion:\n      enabled: true"
                ),
            ),
            None => (String::new(), String::new()),
        };
        // Only what the tests use listens: OTLP in, the query API out (and, if asked, the
        // metrics received). No health, zpages or sampling listeners, so several Jaegers never
        // collide.
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]{metrics_pipeline}
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}{tls_block}
      http:
        endpoint: 127.0.0.1:{otlp_http}{tls_block}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore{metrics_exporter}
"#
        );
        let config_path = dir.0.join("jaeger.yaml");
        std::fs::write(&config_path, config).expect("write jaeger config");
        let log = std::fs::File::create(dir.0.join("jaeger.log")).expect("jaeger log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        let mut jaeger = Self {
            child,
            dir,
            otlp_grpc,
            otlp_http,
            query,
            query_grpc,
            tls,
            metrics,
        };
        let up = wait_until(Duration::from_secs(60), || {
            if let Ok(Some(status)) = jaeger.child.try_wait() {
                return Some(Err(format!(
                    "jaeger exited with {status}:\n{}",
                    jaeger.log()
                )));
            }
            http_get(jaeger.query, "/api/services").ok().map(|_| Ok(()))
        });
        match up {
            Some(Ok(())) => Ok(jaeger),
            Some(Err(exited)) => Err(exited),
            None => panic!("jaeger query API never answered:\n{}", jaeger.log()),
        }
    }

    /// Kills Jaeger (SIGKILL, as a crash): its OTLP ports refuse connections until
    /// [`Self::restart`]. What it held is gone (in-memory storage).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts Jaeger again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        let ports = (self.otlp_grpc, self.otlp_http, self.query, self.query_grpc);
        let mut last = String::new();
        for _ in 0..20 {
            match Self::try_start(&jaeger_binary(), ports, self.tls.clone(), self.metrics) {
                Ok(mut started) => {
                    // `started` is the old, reaped one now: dropping it signals nothing.
                    std::mem::swap(self, &mut started);
                    return;
                }
                // The old process's ports may linger a moment.
                Err(log) => last = log,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("jaeger did not restart on its ports:\n{last}");
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_grpc)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_http)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("jaeger.log")).unwrap_or_default()
    }

    /// The spans of at most `traces` traces Jaeger holds for `service` in the last hour.
    pub fn spans_of_traces(&self, service: &str, traces: usize) -> Vec<Span> {
        self.traces(&format!(
            "/api/traces?service={service}&limit={traces}&lookback=1h"
        ))
    }

    /// Every span Jaeger holds for `service` in the last hour.
    pub fn spans(&self, service: &str) -> Vec<Span> {
        self.traces(&format!(
            "/api/traces?service={service}&limit=2000&lookback=1h"
        ))
    }

    /// The spans of the traces Jaeger's search finds for `service` with tag `key`=`value` (what
    /// a user types in the UI's Tags box).
    pub fn search(&self, service: &str, key: &str, value: &str) -> Vec<Span> {
        let tags = format!("{{\"{key}\":\"{value}\"}}");
        let encoded: String = tags
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.traces(&format!(
            "/api/traces?service={service}&limit=2000&lookback=1h&tags={encoded}"
        ))
    }

    fn traces(&self, path: &str) -> Vec<Span> {
        let Ok(body) = http_get(self.query, path) else {
            return Vec::new();
        };
        let Ok(response) = serde_json::from_str::<TracesResponse>(&body) else {
            return Vec::new();
        };
        let mut spans = Vec::new();
        for trace in response.data.unwrap_or_default() {
            for raw in trace.spans {
                let process = trace.processes.get(&raw.process_id);
                spans.push(Span::from_raw(raw, process));
            }
        }
        spans.sort_by_key(|s| s.start_us);
        spans
    }

    /// Waits until `service` has at least `count` spans matching `filter`; returns all of its
    /// spans at that point (or, after the timeout, what there is).
    pub fn wait_for_spans(
        &self,
        service: &str,
        count: usize,
        filter: impl Fn(&Span) -> bool,
    ) -> Vec<Span> {
        wait_until(Duration::from_secs(20), || {
            let spans = self.spans(service);
            (spans.iter().filter(|s| filter(s)).count() >= count).then_some(spans)
        })
        .unwrap_or_else(|| self.spans(service))
    }

    /// Every span of `service`, once at least `servers` SERVER spans and `total` spans in all
    /// are in Jaeger (or after the waits time out: what there is).
    pub fn wait_for_requests(&self, service: &str, servers: usize, total: usize) -> Vec<Span> {
        self.wait_for_spans(service, servers, |s| s.kind() == "server");
        self.wait_for_spans(service, total, |_| true)
    }

    pub fn services(&self) -> Vec<String> {
        http_get(self.query, "/api/services")
            .ok()
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span as the query API returns it.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub operation: String,
    /// The span this one is a CHILD_OF, if any.
    pub parent: Option<String>,
    pub start_us: u64,
    pub duration_us: u64,
    pub tags: HashMap<String, Value>,
    pub service: String,
    pub process_tags: HashMap<String, Value>,
    /// Span events (Jaeger's logs): the `event` field is the name, the rest its attributes.
    pub logs: Vec<HashMap<String, Value>>,
}

/// `spans` grouped by their trace id.
pub fn by_trace(spans: &[Span]) -> HashMap<&str, Vec<&Span>> {
    let mut traces: HashMap<&str, Vec<&Span>> = HashMap::new();
    for span in spans {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    traces
}

impl Span {
    fn from_raw(raw: RawSpan, process: Option<&RawProcess>) -> Self {
        Self {
            trace_id: raw.trace_id,
            span_id: raw.span_id,
            operation: raw.operation_name,
            parent: raw
                .references
                .into_iter()
                .find(|r| r.ref_type == "CHILD_OF")
                .map(|r| r.span_id),
            start_us: raw.start_time,
            duration_us: raw.duration,
            tags: raw.tags.into_iter().map(|t| (t.key, t.value)).collect(),
            service: process.map(|p| p.service_name.clone()).unwrap_or_default(),
            logs: raw
                .logs
                .into_iter()
                .map(|log| log.fields.into_iter().map(|t| (t.key, t.value)).collect())
                .collect(),
            process_tags: process
                .map(|p| {
                    p.tags
                        .iter()
                        .map(|t| (t.key.clone(), t.value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn tag(&self, key: &str) -> Option<&Value> {
        self.tags.get(key)
    }

    pub fn str_tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).and_then(Value::as_str)
    }

    pub fn int_tag(&self, key: &str) -> Option<i64> {
        self.tags.get(key).and_then(Value::as_i64)
    }

    pub fn kind(&self) -> &str {
        self.str_tag("span.kind").unwrap_or("")
    }

    pub fn is_slow(&self) -> bool {
        self.tags.get("performance.slow").and_then(Value::as_bool) == Some(true)
    }

    /// The span's `performance.patterns`, however the store rendered the array (Jaeger keeps
    /// OTLP arrays as their JSON text).
    pub fn patterns(&self) -> Vec<String> {
        match self.tags.get("performance.patterns") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(text)) => {
                serde_json::from_str::<Vec<String>>(text).unwrap_or_else(|_| vec![text.clone()])
            }
            _ => Vec::new(),
        }
    }

    /// The events named `name`.
    pub fn events(&self, name: &str) -> Vec<&HashMap<String, Value>> {
        self.logs
            .iter()
            .filter(|log| log.get("event").and_then(Value::as_str) == Some(name))
            .collect()
    }

    /// A float tag (Jaeger may render a whole float as an integer).
    pub fn float_tag(&self, key: &str) -> Option<f64> {
        self.tags.get(key).and_then(Value::as_f64)
    }

    pub fn is_error(&self) -> bool {
        self.str_tag("otel.status_code") == Some("ERROR")
    }
}

#[derive(Deserialize)]
struct TracesResponse {
    data: Option<Vec<RawTrace>>,
}

#[derive(Deserialize)]
struct RawTrace {
    spans: Vec<RawSpan>,
    processes: HashMap<String, RawProcess>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
    operation_name: String,
    #[serde(default)]
    references: Vec<RawReference>,
    start_time: u64,
    duration: u64,
    #[serde(default)]
    tags: Vec<RawTag>,
    #[serde(rename = "processID")]
    process_id: String,
    #[serde(default)]
    logs: Vec<RawLog>,
}

#[derive(Deserialize)]
struct RawLog {
    #[serde(default)]
    fields: Vec<RawTag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReference {
    ref_type: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
struct RawTag {
    key: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProcess {
    service_name: String,
    #[serde(default)]
    tags: Vec<RawTag>,
}

/// GET over HTTP/1.0 on loopback (the response ends at close, so no framing is needed).
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no head"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_owned(),
        ));
    }
    Ok(body.to_owned())
}
