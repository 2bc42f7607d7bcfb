//! Command line and configuration: parsed by clap, validated once into [`Config`] before anything
//! is attached.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

/// loupe: attach to running processes and turn their traffic into spans, with no SDK and no
/// restart. Without an OTLP endpoint it shows the spans in the terminal.
#[derive(Debug, Parser)]
#[command(name = "loupe", version, about)]
pub struct Cli {
    /// Process to observe (repeatable). Its threads and the children it forks are observed too.
    #[arg(
        long = "pid",
        value_name = "PID",
        required = true,
        env = "LOUPE_PID",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,

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
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("`{text}` is not a duration like 500ms or 2s: {err}"))?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(duration)
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// The terminal view.
    Terminal,
    /// An OTLP endpoint. `endpoint` None means the exporter reads the OTEL_* variables itself.
    Otlp {
        endpoint: Option<String>,
        protocol: OtlpProtocol,
    },
}

/// Per-type slowness thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub http: Duration,
    pub external: Duration,
    pub db: Duration,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub pids: Vec<u32>,
    pub export: ExportTarget,
    pub service_name: Option<String>,
    pub thresholds: Thresholds,
    pub duration: Option<Duration>,
    pub capture_bytes: u32,
    pub max_query_bytes: u32,
    pub summary_interval: Duration,
}

/// Configuration that cannot work, said in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --otlp-endpoint `{0}`: expected a URL such as http://localhost:4317")]
    Endpoint(String),
    #[error("invalid OTEL_EXPORTER_OTLP_PROTOCOL `{0}`: expected grpc or http/protobuf")]
    Protocol(String),
    #[error("--pid 0 is not a process")]
    PidZero,
}

impl Cli {
    /// Validates the command line against the environment (`OTEL_*`).
    pub fn into_config(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if self.pids.contains(&0) {
            return Err(ConfigError::PidZero);
        }
        let mut pids = self.pids;
        pids.sort_unstable();
        pids.dedup();

        let env_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|value| !value.is_empty());
        let export = match (self.otlp_endpoint, env_endpoint) {
            (None, None) => ExportTarget::Terminal,
            (endpoint, _) => {
                if let Some(url) = &endpoint
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err(ConfigError::Endpoint(url.clone()));
                }
                let protocol = match self.otlp_protocol {
                    Some(protocol) => protocol,
                    None => protocol_from_env(&env)?,
                };
                ExportTarget::Otlp { endpoint, protocol }
            }
        };
        let service_name = self
            .service_name
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .filter(|name| !name.is_empty());
        Ok(Config {
            pids,
            export,
            service_name,
            thresholds: Thresholds {
                http: self.slow_http,
                external: self.slow_external,
                db: self.slow_db,
            },
            duration: self.duration,
            capture_bytes: self.capture_bytes,
            max_query_bytes: self.max_query_bytes,
            summary_interval: self.summary_interval,
        })
    }
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
                endpoint: None,
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
    fn capture_size_is_bounded() {
        assert!(parse(&["--pid", "1", "--capture-bytes", "10"]).is_err());
        assert!(parse(&["--pid", "1", "--capture-bytes", "5000"]).is_err());
    }
}
