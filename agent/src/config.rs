//! Command line and configuration: parsed by clap, validated once into [`Config`] before anything
//! is attached.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    export::settings::{
        Compression, ExportFlags, ExportSettings, Preset, SettingsError, parse_header,
    },
    process::{
        CommName, ExePath, Matcher,
        matching::{MAX_NAMES, MatchError},
    },
};

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

/// When libpq's uprobes are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LibpqMode {
    /// Only to a process with a PostgreSQL session the wire cannot read: the server accepted
    /// TLS or GSS encryption, or a session open before attach does not parse.
    #[default]
    Auto,
    /// To every target that maps libpq.
    Always,
}

/// loupe: attach to running processes and turn their traffic into spans, with no SDK and no
/// restart. Without an OTLP endpoint it shows the spans in the terminal.
#[derive(Debug, Parser)]
#[command(
    name = "loupe",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub args: RunArgs,
}

/// What else loupe can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Observe without the live view (spans still go to an OTLP endpoint if one is set), then
    /// print the top problems found: route, pattern, how often, time lost, advice.
    Report(RunArgs),
}

/// Options of a run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Process to observe (repeatable). Its threads and the children it forks are observed too.
    /// At least one --pid, --exe or --name is needed.
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "LOUPE_PID",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,

    /// Observe every process that runs this executable, e.g. /usr/sbin/nginx (repeatable): those
    /// running at start and those started later, until SIGINT or --duration. Symlinks are
    /// resolved; a process matches when /proc/PID/exe is that file.
    #[arg(long = "exe", value_name = "PATH", env = "LOUPE_EXE", value_parser = parse_exe)]
    pub exes: Vec<ExePath>,

    /// Observe every process of this name, its comm as `ps -o comm` shows it, e.g. nginx
    /// (repeatable or comma-separated): those running at start and those started later, until
    /// SIGINT or --duration. A name past 15 bytes is cut to 15, as the kernel cuts a comm.
    #[arg(
        long = "name",
        value_name = "COMM",
        env = "LOUPE_NAME",
        value_delimiter = ',',
        value_parser = parse_name
    )]
    pub names: Vec<CommName>,

    /// Where to send spans over OTLP, e.g. http://localhost:4317 (gRPC) or
    /// http://localhost:4318 (HTTP). Falls back to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and
    /// OTEL_EXPORTER_OTLP_ENDPOINT; with none, spans are shown in the terminal.
    #[arg(long, value_name = "URL", env = "LOUPE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport. Defaults to OTEL_EXPORTER_OTLP_PROTOCOL (grpc, http/protobuf), else grpc.
    #[arg(long, value_enum, value_name = "PROTOCOL", env = "LOUPE_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// service.name of the spans. Defaults to OTEL_SERVICE_NAME, else the process name.
    #[arg(long, value_name = "NAME", env = "LOUPE_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// An inbound HTTP request slower than this is flagged slow, e.g. 1s or 750ms.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, env = "LOUPE_SLOW_HTTP")]
    pub slow_http: Duration,

    /// An outbound HTTP call slower than this is flagged slow, e.g. 2s.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, env = "LOUPE_SLOW_EXTERNAL")]
    pub slow_external: Duration,

    /// A database query slower than this is flagged slow, e.g. 500ms.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration, env = "LOUPE_SLOW_DB")]
    pub slow_db: Duration,

    /// A cache call slower than this is flagged slow, e.g. 100ms.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration, env = "LOUPE_SLOW_CACHE")]
    pub slow_cache: Duration,

    /// N+1: this many queries of one statement, one after another, in one request.
    #[arg(long, value_name = "COUNT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..), env = "LOUPE_N_PLUS_ONE_MIN")]
    pub n_plus_one_min: u32,

    /// Sequential calls: flagged when running them in parallel would save at least this share
    /// of the request, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100), env = "LOUPE_SEQUENTIAL_MIN_SAVING")]
    pub sequential_min_saving: u32,

    /// Oversized response: an HTTP response body larger than this, e.g. 1MiB or 500KB.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size, env = "LOUPE_LARGE_RESPONSE")]
    pub large_response: u64,

    /// Oversized response: a query result with more rows than this.
    #[arg(long, value_name = "ROWS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..), env = "LOUPE_LARGE_RESULT_ROWS")]
    pub large_result_rows: u64,

    /// CPU samples per second of a thread while it runs something past its threshold
    /// (1..=10000; default 999, 99 with --preset constrained). Nothing is sampled while nothing
    /// is slow.
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u64).range(1..=10_000), env = "LOUPE_PROFILE_HZ")]
    pub profile_hz: Option<u64>,

    /// Also sample the targets' threads all the time, at this low rate (1..=1000; e.g. 19; off
    /// by default), so that a slow span also gets the stacks of its part before its threshold.
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u64).range(1..=1000), env = "LOUPE_PROFILE_ALWAYS")]
    pub profile_always: Option<u64>,

    /// Do not watch hot threads leave the CPU (no off_cpu_profile; sched:sched_switch is then
    /// never hooked).
    #[arg(long, env = "LOUPE_NO_OFF_CPU")]
    pub no_off_cpu: bool,

    /// Also write each slow span's CPU profile here: a flamegraph SVG and the folded stacks,
    /// named <trace id>-<span id> (and its off-CPU profile, <trace id>-<span id>.offcpu).
    #[arg(long, value_name = "DIR", env = "LOUPE_PROFILE_DIR")]
    pub profile_dir: Option<std::path::PathBuf>,

    /// Stop after this long, e.g. 30s or 5m. Default: run until SIGINT or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "LOUPE_DURATION")]
    pub duration: Option<Duration>,

    /// Payload bytes captured per socket read or write (64..=4096). HTTP heads longer than this
    /// are parsed as far as they were captured.
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=4096), env = "LOUPE_CAPTURE_BYTES")]
    pub capture_bytes: u32,

    /// Statement text bytes read from a libpq call (64..=4096); longer statements are marked
    /// truncated (loupe.db.query_truncated).
    #[arg(long, value_name = "BYTES", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(64..=4096), env = "LOUPE_MAX_QUERY_BYTES")]
    pub max_query_bytes: u32,

    /// Terminal view: how often to print the per-route table, e.g. 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "LOUPE_SUMMARY_INTERVAL")]
    pub summary_interval: Duration,

    /// Export and sampling settings tuned together: high-traffic, low-latency or constrained
    /// (the README lists what each sets). Flags and OTEL_* variables given win over it.
    #[arg(long, value_enum, value_name = "PRESET", env = "LOUPE_PRESET")]
    pub preset: Option<Preset>,

    /// Spans waiting for export at most; past it they are dropped and counted. Default 16384;
    /// OTEL_BSP_MAX_QUEUE_SIZE.
    #[arg(long, value_name = "SPANS", value_parser = clap::value_parser!(u64).range(1..=10_000_000), env = "LOUPE_QUEUE_SIZE")]
    pub queue_size: Option<u64>,

    /// Spans in one OTLP request at most. Default 2048; OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
    #[arg(long, value_name = "SPANS", value_parser = clap::value_parser!(u64).range(1..=1_000_000), env = "LOUPE_BATCH_SIZE")]
    pub batch_size: Option<u64>,

    /// Longest a span waits in a partial batch, e.g. 500ms. OTEL_BSP_SCHEDULE_DELAY (ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "LOUPE_SCHEDULE_DELAY")]
    pub schedule_delay: Option<Duration>,

    /// Longest one OTLP request may take, e.g. 10s. OTEL_EXPORTER_OTLP_TIMEOUT (ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "LOUPE_EXPORT_TIMEOUT")]
    pub export_timeout: Option<Duration>,

    /// OTLP requests in flight at once (1..=64). Default 2.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64), env = "LOUPE_EXPORT_CONCURRENCY")]
    pub export_concurrency: Option<u64>,

    /// Compress OTLP requests: gzip or none. OTEL_EXPORTER_OTLP_COMPRESSION.
    #[arg(
        long,
        value_enum,
        value_name = "ALGORITHM",
        env = "LOUPE_OTLP_COMPRESSION"
    )]
    pub otlp_compression: Option<Compression>,

    /// A header sent with every OTLP request, e.g. 'authorization=Bearer abc' (repeatable).
    /// Added to OTEL_EXPORTER_OTLP_HEADERS (k=v,k2=v2); a flag's wins on the same name.
    #[arg(long = "otlp-header", value_name = "KEY=VALUE", value_parser = parse_header_arg)]
    pub otlp_headers: Vec<(String, String)>,

    /// PEM CA certificate the collector's TLS certificate must chain to (https endpoints).
    /// OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "FILE", env = "LOUPE_OTLP_CA")]
    pub otlp_ca: Option<std::path::PathBuf>,

    /// At exit (SIGINT, SIGTERM, --duration), flush spans for at most this long, then count
    /// what is left as dropped and print the summary, e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "LOUPE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Duration,

    /// Key calls by thread only: do not read Go goroutines or Python asyncio tasks (what that
    /// costs is in BENCHMARKS.md). Their calls then stay un-nested under concurrency.
    #[arg(long, env = "LOUPE_NO_RUNTIME_ADAPTERS")]
    pub no_runtime_adapters: bool,

    /// When libpq's uprobes are attached: auto (only to a process whose PostgreSQL sessions
    /// the wire cannot read: encrypted, or open before attach and unreadable) or always (to
    /// every process that maps libpq). The spans are the same; the cost is not.
    #[arg(
        long,
        value_enum,
        value_name = "WHEN",
        default_value = "auto",
        env = "LOUPE_LIBPQ"
    )]
    pub libpq: LibpqMode,

    #[command(flatten)]
    pub sampling: crate::sampling::SamplingArgs,

    /// Serve Prometheus metrics (loupe's counters and the services' request, call and query
    /// durations) at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 or [::]:9464.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr, env = "LOUPE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Also send those metrics over OTLP, to the OTLP endpoint (or
    /// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT); OTEL_METRICS_EXPORTER=otlp does the same.
    #[arg(long, env = "LOUPE_OTLP_METRICS")]
    pub otlp_metrics: bool,

    /// How often OTLP metrics are sent, e.g. 15s (default: OTEL_METRIC_EXPORT_INTERVAL in ms,
    /// else 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub otlp_metrics_interval: Option<Duration>,

    /// Serve the statistics as JSON at http://HOST:PORT/stats (and the metrics at its /metrics;
    /// both are at --metrics-addr too), e.g. 127.0.0.1:9465. docs/stats.md has the schema.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr, env = "LOUPE_STATS_ADDR")]
    pub stats_addr: Option<SocketAddr>,

    /// A latency SLO of a route, as spans name it: 'POST /api/loans=500ms@p95' is 95% of its
    /// requests within 500 ms (repeatable). Compliance, error budget and burn rate are in
    /// /stats and /metrics; a breach is an alert.
    #[arg(long = "slo", value_name = "ROUTE=DURATION@PERCENTILE", value_parser = parse_slo, env = "LOUPE_SLO", value_delimiter = ';')]
    pub slos: Vec<crate::ledger::slo::Slo>,

    /// SLOs from a file, one per line as --slo takes them (# comments).
    #[arg(long, value_name = "FILE", env = "LOUPE_SLO_FILE")]
    pub slo_file: Option<std::path::PathBuf>,

    /// Compare this run against a baseline saved by --save-baseline: the report shows each
    /// route before and after, and a route's regression is judged against its saved p95.
    #[arg(long, value_name = "FILE", env = "LOUPE_BASELINE")]
    pub baseline: Option<std::path::PathBuf>,

    /// At exit, save each route's p50/p95/p99 here, to compare a later run against
    /// (--baseline FILE).
    #[arg(long, value_name = "FILE", env = "LOUPE_SAVE_BASELINE")]
    pub save_baseline: Option<std::path::PathBuf>,

    /// At exit, write the report as one self-contained HTML page here: routes with their
    /// latency histograms, SLOs, regressions, the top problems with the waterfall of their
    /// worst request, and flamegraphs.
    #[arg(long, value_name = "FILE", env = "LOUPE_HTML")]
    pub html: Option<std::path::PathBuf>,

    /// A route regressed when its last minute's p95 is over its baseline's (saved, or the
    /// thirty minutes before) times this, e.g. 1.5.
    #[arg(long, value_name = "FACTOR", default_value = "1.5", value_parser = parse_factor, env = "LOUPE_REGRESSION_FACTOR")]
    pub regression_factor: f64,

    /// Alert when more than this percent of an operation type's spans (http, external, db,
    /// cache) were slow over the last minute, e.g. 5.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, env = "LOUPE_ALERT_SLOW_PERCENT")]
    pub alert_slow_percent: Option<f64>,

    /// Alert when more than this percent of a route's requests failed over the last minute.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, env = "LOUPE_ALERT_ERROR_PERCENT")]
    pub alert_error_percent: Option<f64>,

    /// Fewest requests a window needs before a verdict on it (regression, SLO, slow share,
    /// error rate).
    #[arg(long, value_name = "COUNT", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..), env = "LOUPE_ALERT_MIN_SAMPLES")]
    pub alert_min_samples: u64,

    /// The same alert (kind and route or type) goes out at most once per this long.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, env = "LOUPE_ALERT_COOLDOWN")]
    pub alert_cooldown: Duration,

    /// Also POST each alert as JSON to this URL (http or https).
    #[arg(long, value_name = "URL", value_parser = parse_webhook, env = "LOUPE_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
}

fn parse_slo(text: &str) -> Result<crate::ledger::slo::Slo, String> {
    crate::ledger::slo::Slo::parse(text).map_err(|err| err.to_string())
}

fn parse_factor(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(factor) if factor > 1.0 && factor.is_finite() => Ok(factor),
        _ => Err(format!("`{text}` is not a factor above 1 like 1.5")),
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').parse::<f64>() {
        Ok(percent) if percent > 0.0 && percent < 100.0 => Ok(percent),
        _ => Err(format!(
            "`{text}` is not a percentage between 0 and 100 like 5"
        )),
    }
}

fn parse_webhook(text: &str) -> Result<String, String> {
    let url = text.trim();
    if (url.starts_with("http://") || url.starts_with("https://"))
        && crate::export::otlp::transport::host_port(url).is_some()
    {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a URL like http://127.0.0.1:9000/alerts"
        ))
    }
}

/// Where and how often loupe's metrics go out over OTLP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpMetrics {
    /// gRPC's base URL, or OTLP/HTTP's full metrics URL.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub interval: Duration,
}

/// OTEL_METRIC_EXPORT_INTERVAL's default.
const METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// The OTLP/HTTP metrics URL beside a traces URL: `.../v1/traces` becomes `.../v1/metrics`,
/// another path the host's `/v1/metrics`.
fn metrics_url(traces: &str) -> String {
    if let Some(base) = traces.strip_suffix("/v1/traces") {
        return format!("{base}/v1/metrics");
    }
    let (scheme, rest) = traces.split_once("://").unwrap_or(("http", traces));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/v1/metrics")
}

/// `HOST:PORT` to listen on: an IP address (IPv6 in brackets) or a name that resolves, and a
/// port.
fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let bad =
        || format!("`{text}` is not an address to listen on like 127.0.0.1:9464 or [::]:9464");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A name (localhost:9464): resolved once, here, before anything starts.
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if host.is_empty() || !host.chars().all(name) || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(bad)
}

fn parse_header_arg(text: &str) -> Result<(String, String), String> {
    parse_header(text).map_err(|err| err.to_string())
}

fn parse_exe(text: &str) -> Result<ExePath, String> {
    ExePath::new(std::path::Path::new(text)).map_err(|err| match err {
        MatchError::Exe { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_name(text: &str) -> Result<CommName, String> {
    CommName::new(text).map_err(|err| err.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    // What was expected, in the flag's terms: never the parser's own wording (byte offsets).
    let duration = humantime::parse_duration(text).map_err(|err| {
        let why = match err {
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("`{unit}` is not a unit (ns, us, ms, s, m, h, d)")
            }
            humantime::DurationError::NumberOverflow => "it is too long".to_owned(),
            humantime::DurationError::Empty => "it is empty".to_owned(),
            _ => "give a number and a unit".to_owned(),
        };
        format!("`{text}` is not a duration like 500ms, 2s or 1m: {why}")
    })?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(duration)
}

/// `1MiB`, `512KiB`, `2MB`, `300kb` or a plain byte count.
fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size like 1MiB, 500KB or 4096")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is not a size like 1MiB, 500KB or 4096"))
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// The terminal view.
    Terminal,
    /// Nowhere (`loupe report` without an endpoint): spans feed the report only.
    Nowhere,
    /// An OTLP endpoint (for HTTP, the full traces URL).
    Otlp {
        endpoint: String,
        protocol: OtlpProtocol,
    },
}

/// Per-type slowness thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub http: Duration,
    pub external: Duration,
    pub db: Duration,
    pub cache: Duration,
}

/// What the pattern detectors look for.
#[derive(Clone, Copy, Debug)]
pub struct DiagnosisConfig {
    pub n_plus_one_min: usize,
    /// 0..1: the share of the request parallel calls would have to save.
    pub sequential_min_saving: f64,
    pub large_response_bytes: u64,
    pub large_result_rows: u64,
}

impl Default for DiagnosisConfig {
    fn default() -> Self {
        Self {
            n_plus_one_min: 5,
            sequential_min_saving: 0.30,
            large_response_bytes: 1 << 20,
            large_result_rows: 10_000,
        }
    }
}

/// What a run shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spans live (terminal or OTLP), the top problems at exit.
    Watch,
    /// `loupe report`: no live view, the problem report at exit.
    Report,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub pids: Vec<u32>,
    /// The processes `--exe` and `--name` name, running now or started later.
    pub matcher: Matcher,
    pub export: ExportTarget,
    pub service_name: Option<String>,
    pub thresholds: Thresholds,
    pub diagnosis: DiagnosisConfig,
    pub profile: crate::profile::ProfileSettings,
    pub mode: Mode,
    pub duration: Option<Duration>,
    pub capture_bytes: u32,
    pub max_query_bytes: u32,
    pub summary_interval: Duration,
    pub runtime_adapters: bool,
    pub libpq: LibpqMode,
    pub export_settings: ExportSettings,
    pub sampling: crate::sampling::SamplingConfig,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the same metrics are pushed over OTLP, if anywhere.
    pub otlp_metrics: Option<OtlpMetrics>,
    /// Where `/stats` is served besides `metrics_addr`, if anywhere.
    pub stats_addr: Option<SocketAddr>,
    /// The statistics' verdicts: SLOs, baseline, regression, alert limits.
    pub ledger: crate::ledger::LedgerConfig,
    pub alerts: crate::ledger::alerts::AlertSettings,
    pub save_baseline: Option<std::path::PathBuf>,
    pub html: Option<std::path::PathBuf>,
}

/// Configuration that cannot work, said in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --otlp-endpoint `{0}`: expected a URL such as http://localhost:4317")]
    Endpoint(String),
    #[error("invalid OTEL_EXPORTER_OTLP_PROTOCOL `{0}`: expected grpc or http/protobuf")]
    Protocol(String),
    #[error(
        "--otlp-metrics needs an OTLP endpoint: --otlp-endpoint URL or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    )]
    MetricsEndpoint,
    #[error("invalid OTLP metrics endpoint `{0}`: expected a URL such as http://localhost:4317")]
    MetricsUrl(String),
    #[error("invalid {name}: expected {expected}")]
    MetricsInterval {
        name: &'static str,
        expected: &'static str,
    },
    #[error("--pid 0 is not a process")]
    PidZero,
    #[error(transparent)]
    Export(#[from] SettingsError),
    #[error(transparent)]
    Sampling(#[from] crate::sampling::SamplingError),
    #[error("nothing to observe: give --pid PID, --exe PATH or --name COMM")]
    NothingToObserve,
    #[error("at most {max} --name values (the kernel looks each exec's name up in a table of that size)", max = MAX_NAMES)]
    TooManyNames,
    #[error(transparent)]
    Baseline(#[from] crate::ledger::baseline::BaselineError),
    #[error("cannot read the SLO file {path}: {source}")]
    SloFile {
        path: String,
        source: std::io::Error,
    },
    #[error("in the SLO file {path}: {source}")]
    Slo {
        path: String,
        source: crate::ledger::slo::SloError,
    },
    #[error("two SLOs for {0}: give each route one")]
    SloTwice(String),
}

impl Cli {
    /// Validates the command line against the environment (`OTEL_*`).
    pub fn into_config(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        match self.command {
            Some(Command::Report(args)) => args.into_config(Mode::Report, env),
            None => self.args.into_config(Mode::Watch, env),
        }
    }
}

impl RunArgs {
    fn into_config(
        self,
        mode: Mode,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if self.pids.contains(&0) {
            return Err(ConfigError::PidZero);
        }
        let mut pids = self.pids;
        pids.sort_unstable();
        pids.dedup();
        let mut names: Vec<CommName> = Vec::new();
        for name in self.names {
            if !names.iter().any(|known| known.bytes() == name.bytes()) {
                names.push(name);
            }
        }
        if names.len() > MAX_NAMES {
            return Err(ConfigError::TooManyNames);
        }
        let matcher = Matcher::new(names, self.exes);
        if pids.is_empty() && matcher.is_empty() {
            return Err(ConfigError::NothingToObserve);
        }

        let non_empty = |key: &str| crate::export::settings::non_empty(&env, key);
        // (URL, whether it is the generic endpoint: OTLP/HTTP adds /v1/traces to its path).
        let endpoint = match self.otlp_endpoint {
            Some(url) => Some((url, false)),
            None => non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .map(|url| (url, false))
                .or_else(|| non_empty("OTEL_EXPORTER_OTLP_ENDPOINT").map(|url| (url, true))),
        };
        let export = match endpoint {
            None if mode == Mode::Report => ExportTarget::Nowhere,
            None => ExportTarget::Terminal,
            Some((url, generic)) => {
                let url = url.trim().to_owned();
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || crate::export::otlp::transport::host_port(&url).is_none()
                {
                    return Err(ConfigError::Endpoint(url));
                }
                let protocol = match self.otlp_protocol {
                    Some(protocol) => protocol,
                    None => protocol_from_env(&env)?,
                };
                let endpoint = match protocol {
                    OtlpProtocol::Grpc => url,
                    OtlpProtocol::Http if generic => {
                        format!("{}/v1/traces", url.trim_end_matches('/'))
                    }
                    OtlpProtocol::Http => crate::export::otlp::transport::traces_url(&url),
                };
                ExportTarget::Otlp { endpoint, protocol }
            }
        };
        let preset = self.preset.map(Preset::values).unwrap_or_default();
        let export_settings = ExportFlags {
            preset: self.preset,
            max_queue: self.queue_size.map(|n| n as usize),
            max_batch: self.batch_size.map(|n| n as usize),
            schedule_delay: self.schedule_delay,
            timeout: self.export_timeout,
            concurrency: self.export_concurrency.map(|n| n as usize),
            compression: self.otlp_compression,
            headers: self.otlp_headers,
            certificate: self.otlp_ca,
            shutdown_timeout: Some(self.shutdown_timeout),
        }
        .resolve(&env)?;
        let service_name = self
            .service_name
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .filter(|name| !name.is_empty());
        let sampling = self.sampling.into_config(&env, preset.sample_ratio)?;
        let otlp_metrics =
            otlp_metrics(self.otlp_metrics, self.otlp_metrics_interval, &export, &env)?;
        let mut slos = self.slos;
        if let Some(path) = &self.slo_file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SloFile {
                path: shown.clone(),
                source,
            })?;
            let from_file =
                crate::ledger::slo::Slo::parse_file(&text).map_err(|source| ConfigError::Slo {
                    path: shown,
                    source,
                })?;
            slos.extend(from_file);
        }
        for (index, slo) in slos.iter().enumerate() {
            if slos[..index].iter().any(|other| other.route == slo.route) {
                return Err(ConfigError::SloTwice(slo.route.clone()));
            }
        }
        let baseline = self
            .baseline
            .as_deref()
            .map(crate::ledger::baseline::BaselineFile::load)
            .transpose()?;
        let thresholds = Thresholds {
            http: self.slow_http,
            external: self.slow_external,
            db: self.slow_db,
            cache: self.slow_cache,
        };
        Ok(Config {
            pids,
            matcher,
            export,
            service_name,
            thresholds,
            diagnosis: DiagnosisConfig {
                n_plus_one_min: self.n_plus_one_min as usize,
                sequential_min_saving: f64::from(self.sequential_min_saving) / 100.0,
                large_response_bytes: self.large_response,
                large_result_rows: self.large_result_rows,
            },
            profile: crate::profile::ProfileSettings {
                hz: self.profile_hz.or(preset.profile_hz).unwrap_or(999),
                always_hz: self.profile_always,
                off_cpu: !self.no_off_cpu,
                dir: self.profile_dir,
            },
            mode,
            duration: self.duration,
            capture_bytes: self.capture_bytes,
            max_query_bytes: self.max_query_bytes,
            summary_interval: self.summary_interval,
            runtime_adapters: !self.no_runtime_adapters,
            libpq: self.libpq,
            export_settings,
            sampling,
            metrics_addr: self.metrics_addr,
            otlp_metrics,
            stats_addr: self.stats_addr,
            ledger: crate::ledger::LedgerConfig {
                thresholds,
                slos,
                regression_factor: self.regression_factor,
                min_samples: self.alert_min_samples,
                baseline,
                alert_slow_percent: self.alert_slow_percent,
                alert_error_percent: self.alert_error_percent,
            },
            alerts: crate::ledger::alerts::AlertSettings {
                cooldown: self.alert_cooldown,
                webhook: self.alert_webhook,
            },
            save_baseline: self.save_baseline,
            html: self.html,
        })
    }
}

/// Whether, where and how often metrics go out over OTLP: `--otlp-metrics` or
/// OTEL_METRICS_EXPORTER=otlp, to OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or beside the traces.
fn otlp_metrics(
    asked: bool,
    interval: Option<Duration>,
    export: &ExportTarget,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpMetrics>, ConfigError> {
    let non_empty = |key: &str| crate::export::settings::non_empty(env, key);
    let asked =
        asked || non_empty("OTEL_METRICS_EXPORTER").is_some_and(|value| value.trim() == "otlp");
    if !asked {
        return Ok(None);
    }
    let (endpoint, protocol) = match (non_empty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"), export) {
        (Some(url), ExportTarget::Otlp { protocol, .. }) => (url.trim().to_owned(), *protocol),
        (Some(url), _) => (url.trim().to_owned(), protocol_from_env(env)?),
        (None, ExportTarget::Otlp { endpoint, protocol }) => match protocol {
            OtlpProtocol::Grpc => (endpoint.clone(), *protocol),
            OtlpProtocol::Http => (metrics_url(endpoint), *protocol),
        },
        (None, _) => return Err(ConfigError::MetricsEndpoint),
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || crate::export::otlp::transport::host_port(&endpoint).is_none()
    {
        return Err(ConfigError::MetricsUrl(endpoint));
    }
    let interval = match interval {
        Some(interval) if interval.is_zero() => {
            return Err(ConfigError::MetricsInterval {
                name: "--otlp-metrics-interval",
                expected: "a duration above zero, such as 15s",
            });
        }
        Some(interval) => interval,
        None => match non_empty("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::MetricsInterval {
                        name: "OTEL_METRIC_EXPORT_INTERVAL",
                        expected: "milliseconds above zero, such as 15000",
                    });
                }
            },
            None => METRICS_INTERVAL,
        },
    };
    Ok(Some(OtlpMetrics {
        endpoint,
        protocol,
        interval,
    }))
}

fn protocol_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<OtlpProtocol, ConfigError> {
    let value =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match value.as_deref() {
        None | Some("") | Some("grpc") => Ok(OtlpProtocol::Grpc),
        Some("http/protobuf") | Some("http") => Ok(OtlpProtocol::Http),
        Some(other) => Err(ConfigError::Protocol(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("loupe").chain(args.iter().copied()))
            .map_err(|err| err.to_string())?;
        cli.into_config(|_| None).map_err(|err| err.to_string())
    }

    #[test]
    fn no_endpoint_means_terminal_view() {
        let config = parse(&["--pid", "42"]).unwrap();
        assert_eq!(config.export, ExportTarget::Terminal);
        assert_eq!(config.pids, vec![42]);
        assert_eq!(config.thresholds.http, Duration::from_secs(1));
        assert_eq!(config.thresholds.external, Duration::from_secs(2));
        assert_eq!(config.thresholds.db, Duration::from_millis(500));
    }

    #[test]
    fn durations_parse_with_units() {
        let config = parse(&["--pid", "1", "--slow-http", "750ms", "--duration", "2m"]).unwrap();
        assert_eq!(config.thresholds.http, Duration::from_millis(750));
        assert_eq!(config.duration, Some(Duration::from_secs(120)));
    }

    #[test]
    fn bad_duration_is_rejected_with_the_offending_text() {
        let err = parse(&["--pid", "1", "--slow-http", "fast"]).unwrap_err();
        assert!(err.contains("`fast` is not a duration"), "{err}");
        for (text, why) in [
            ("abc", "give a number and a unit"),
            ("5 parsecs", "`parsecs` is not a unit"),
            ("", "it is empty"),
        ] {
            let err = parse(&["--pid", "1", "--slow-http", text]).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains(" at "), "no parser offsets: {err}");
        }
    }

    #[test]
    fn endpoint_must_be_a_url() {
        let err = parse(&["--pid", "1", "--otlp-endpoint", "localhost:4317"]).unwrap_err();
        assert!(err.contains("invalid --otlp-endpoint"), "{err}");
    }

    #[test]
    fn otel_environment_selects_otlp_and_protocol() {
        let cli = Cli::try_parse_from(["loupe", "--pid", "7"]).unwrap();
        let config = cli
            .into_config(|key| match key {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".into()),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
                "OTEL_SERVICE_NAME" => Some("shop".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.export,
            ExportTarget::Otlp {
                endpoint: "http://collector:4318/v1/traces".into(),
                protocol: OtlpProtocol::Http
            }
        );
        assert_eq!(config.service_name.as_deref(), Some("shop"));
    }

    #[test]
    fn repeated_and_comma_separated_pids_are_deduplicated() {
        let config = parse(&["--pid", "5,3", "--pid", "5"]).unwrap();
        assert_eq!(config.pids, vec![3, 5]);
    }

    #[test]
    fn diagnosis_flags_have_the_documented_defaults() {
        let config = parse(&["--pid", "1"]).unwrap();
        assert_eq!(config.diagnosis.n_plus_one_min, 5);
        assert!((config.diagnosis.sequential_min_saving - 0.30).abs() < 1e-9);
        assert_eq!(config.diagnosis.large_response_bytes, 1 << 20);
        assert_eq!(config.thresholds.cache, Duration::from_millis(100));
        assert_eq!(config.mode, Mode::Watch);
        let config = parse(&["--pid", "1", "--large-response", "512KiB"]).unwrap();
        assert_eq!(config.diagnosis.large_response_bytes, 512 * 1024);
        assert!(parse(&["--pid", "1", "--large-response", "lots"]).is_err());
        assert!(parse(&["--pid", "1", "--n-plus-one-min", "1"]).is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("300kb"), Ok(300_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1 furlong").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn report_takes_the_same_options_and_exports_nowhere_by_default() {
        let config = parse(&["report", "--pid", "9", "--duration", "5s"]).unwrap();
        assert_eq!(config.mode, Mode::Report);
        assert_eq!(config.export, ExportTarget::Nowhere);
        assert_eq!(config.pids, vec![9]);
        let config = parse(&[
            "report",
            "--pid",
            "9",
            "--otlp-endpoint",
            "http://localhost:4317",
        ])
        .unwrap();
        assert!(matches!(config.export, ExportTarget::Otlp { .. }));
        let err = parse(&["report"]).unwrap_err();
        assert!(err.contains("nothing to observe"), "{err}");
    }

    #[test]
    fn exe_and_name_observe_with_or_instead_of_pids() {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let config = parse(&["--name", "nginx,redis-server", "--exe", exe]).unwrap();
        assert!(config.pids.is_empty());
        let names: Vec<&str> = config.matcher.names().iter().map(|n| n.given()).collect();
        assert_eq!(names, ["nginx", "redis-server"]);
        assert!(config.matcher.matches_executables());

        let config = parse(&["--pid", "7", "--name", "nginx", "--name", "nginx"]).unwrap();
        assert_eq!(config.pids, vec![7]);
        assert_eq!(config.matcher.names().len(), 1, "a name given twice is one");
        assert!(!config.matcher.matches_executables());
        assert!(parse(&["--pid", "7"]).unwrap().matcher.is_empty());
    }

    #[test]
    fn nothing_to_observe_is_one_clear_error() {
        for args in [&[][..], &["--duration", "5s"][..]] {
            let err = parse(args).unwrap_err();
            assert_eq!(
                err, "nothing to observe: give --pid PID, --exe PATH or --name COMM",
                "{args:?}"
            );
        }
    }

    #[test]
    fn an_executable_must_exist_and_a_name_must_not_be_empty() {
        let err = parse(&["--exe", "/no/such/binary"]).unwrap_err();
        assert!(
            err.contains("--exe") && err.contains("No such file"),
            "{err}"
        );
        let err = parse(&["--name", ""]).unwrap_err();
        assert!(err.contains("--name"), "{err}");
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("svc{i}")).collect();
        let err = parse(&["--name", &many.join(",")]).unwrap_err();
        assert!(err.starts_with("at most 64 --name values"), "{err}");
    }

    #[test]
    fn export_flags_and_presets_resolve() {
        let config = parse(&[
            "--pid",
            "1",
            "--otlp-endpoint",
            "http://localhost:4317",
            "--preset",
            "constrained",
            "--batch-size",
            "100",
            "--otlp-header",
            "authorization=Bearer t",
            "--shutdown-timeout",
            "2s",
        ])
        .unwrap();
        let settings = &config.export_settings;
        assert_eq!(settings.max_batch, 100);
        assert_eq!(settings.concurrency, 1, "from the preset");
        assert_eq!(settings.compression, Compression::Gzip);
        assert_eq!(settings.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(
            settings.headers,
            vec![("authorization".to_owned(), "Bearer t".to_owned())]
        );
        assert_eq!(config.profile.hz, 99, "the preset's profile rate");
        assert_eq!(config.sampling.ratio, 0.1, "the preset's sampling");
        assert_eq!(parse(&["--pid", "1"]).unwrap().sampling.ratio, 1.0);
        assert_eq!(parse(&["--pid", "1"]).unwrap().profile.hz, 999);
        let err = parse(&["--pid", "1", "--otlp-header", "nonsense"]).unwrap_err();
        assert!(err.contains("invalid OTLP header"), "{err}");
        let err = parse(&["--pid", "1", "--queue-size", "10", "--batch-size", "20"]).unwrap_err();
        assert!(err.contains("cannot be larger than the queue"), "{err}");
    }

    #[test]
    fn the_generic_endpoint_gets_the_traces_path_for_http() {
        let cli = Cli::try_parse_from(["loupe", "--pid", "7"]).unwrap();
        let config = cli
            .into_config(|key| match key {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318/otlp".into()),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.export,
            ExportTarget::Otlp {
                endpoint: "http://collector:4318/otlp/v1/traces".into(),
                protocol: OtlpProtocol::Http
            }
        );
        let err = Cli::try_parse_from(["loupe", "--pid", "7"])
            .unwrap()
            .into_config(|key| {
                (key == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "collector:4317".to_owned())
            })
            .unwrap_err();
        assert!(err.to_string().contains("invalid --otlp-endpoint"), "{err}");
    }

    #[test]
    fn otlp_metrics_go_beside_the_traces_or_where_the_environment_says() {
        assert_eq!(parse(&["--pid", "1"]).unwrap().otlp_metrics, None);
        let grpc = parse(&[
            "--pid",
            "1",
            "--otlp-endpoint",
            "http://localhost:4317",
            "--otlp-metrics",
            "--otlp-metrics-interval",
            "2s",
        ])
        .unwrap();
        assert_eq!(
            grpc.otlp_metrics,
            Some(OtlpMetrics {
                endpoint: "http://localhost:4317".into(),
                protocol: OtlpProtocol::Grpc,
                interval: Duration::from_secs(2),
            })
        );
        let env = |key: &str| match key {
            "OTEL_METRICS_EXPORTER" => Some("otlp".to_owned()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318/otlp".to_owned()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
            "OTEL_METRIC_EXPORT_INTERVAL" => Some("15000".to_owned()),
            _ => None,
        };
        let http = Cli::try_parse_from(["loupe", "--pid", "7"])
            .unwrap()
            .into_config(env)
            .unwrap();
        assert_eq!(
            http.otlp_metrics,
            Some(OtlpMetrics {
                endpoint: "http://collector:4318/otlp/v1/metrics".into(),
                protocol: OtlpProtocol::Http,
                interval: Duration::from_secs(15),
            })
        );
        assert_eq!(
            metrics_url("http://c:4318/custom/path"),
            "http://c:4318/v1/metrics"
        );
        let own = Cli::try_parse_from(["loupe", "--pid", "7", "--otlp-metrics"])
            .unwrap()
            .into_config(|key| {
                (key == "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                    .then(|| "http://metrics:4317".to_owned())
            })
            .unwrap();
        assert_eq!(
            own.otlp_metrics.map(|metrics| metrics.endpoint),
            Some("http://metrics:4317".to_owned()),
            "to its own endpoint, with spans in the terminal"
        );
        let err = parse(&["--pid", "1", "--otlp-metrics"]).unwrap_err();
        assert!(
            err.starts_with("--otlp-metrics needs an OTLP endpoint"),
            "{err}"
        );
        let err = Cli::try_parse_from(["loupe", "--pid", "7", "--otlp-metrics"])
            .unwrap()
            .into_config(|key| match key {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4317".to_owned()),
                "OTEL_METRIC_EXPORT_INTERVAL" => Some("soon".to_owned()),
                _ => None,
            })
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid OTEL_METRIC_EXPORT_INTERVAL"),
            "{err}"
        );
    }

    #[test]
    fn sampling_flags_and_otels_sampler_reach_the_config() {
        let config = parse(&[
            "--pid",
            "1",
            "--sample-ratio",
            "0.1",
            "--sample",
            "GET /a=0",
        ])
        .unwrap();
        assert_eq!(config.sampling.ratio, 0.1);
        assert_eq!(config.sampling.routes.len(), 1);
        let cli = Cli::try_parse_from(["loupe", "--pid", "7"]).unwrap();
        let err = cli
            .into_config(|key| match key {
                "OTEL_TRACES_SAMPLER" => Some("traceidratio".into()),
                "OTEL_TRACES_SAMPLER_ARG" => Some("2".into()),
                _ => None,
            })
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid OTEL_TRACES_SAMPLER_ARG `2`"),
            "{err}"
        );
    }

    #[test]
    fn the_metrics_address_is_an_address_to_listen_on() {
        assert_eq!(parse(&["--pid", "1"]).unwrap().metrics_addr, None);
        let config = parse(&["--pid", "1", "--metrics-addr", "127.0.0.1:9464"]).unwrap();
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        let config = parse(&["--pid", "1", "--metrics-addr", "[::]:9464"]).unwrap();
        assert_eq!(config.metrics_addr, Some("[::]:9464".parse().unwrap()));
        let config = parse(&["--pid", "1", "--metrics-addr", "localhost:9464"]).unwrap();
        assert!(
            config
                .metrics_addr
                .is_some_and(|addr| addr.ip().is_loopback() && addr.port() == 9464)
        );
        for bad in [
            "9464",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":9464",
            "http://127.0.0.1:9464",
        ] {
            let err = parse(&["--pid", "1", "--metrics-addr", bad]).unwrap_err();
            assert!(
                err.contains("is not an address to listen on"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn capture_size_is_bounded() {
        assert!(parse(&["--pid", "1", "--capture-bytes", "10"]).is_err());
        assert!(parse(&["--pid", "1", "--capture-bytes", "5000"]).is_err());
    }
}
