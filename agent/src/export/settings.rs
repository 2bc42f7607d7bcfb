//! How the OTLP export path is tuned: queue, batches, timeouts, compression, headers, TLS and
//! the shutdown budget. Each knob comes from its flag, else the standard OTel variable, else the
//! preset, else loupe's default; resolved once, here, by pure functions.

use std::{path::PathBuf, time::Duration};

use clap::ValueEnum;

/// Body compression of OTLP requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
}

/// Knob values tuned together for a kind of host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// A busy host (10k+ requests/s): a deep queue, large batches sent four at a time, gzip, a
    /// tenth of the ordinary traces kept (slow, failed and flagged ones always).
    HighTraffic,
    /// Spans in the collector fast: small batches flushed every 100 ms.
    LowLatency,
    /// A small host: a short queue, one request at a time, gzip, rare flushes, a tenth of the
    /// ordinary traces kept, CPU profiles at 99 Hz.
    Constrained,
}

/// What a preset sets (None: left to the default).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PresetValues {
    pub max_queue: Option<usize>,
    pub max_batch: Option<usize>,
    pub schedule_delay: Option<Duration>,
    pub concurrency: Option<usize>,
    pub compression: Option<Compression>,
    pub sample_ratio: Option<f64>,
    pub profile_hz: Option<u64>,
}

impl Preset {
    pub fn values(self) -> PresetValues {
        match self {
            Preset::HighTraffic => PresetValues {
                max_queue: Some(65_536),
                max_batch: Some(4_096),
                schedule_delay: Some(Duration::from_secs(1)),
                concurrency: Some(4),
                compression: Some(Compression::Gzip),
                sample_ratio: Some(0.1),
                profile_hz: None,
            },
            Preset::LowLatency => PresetValues {
                max_queue: Some(16_384),
                max_batch: Some(256),
                schedule_delay: Some(Duration::from_millis(100)),
                concurrency: Some(4),
                compression: Some(Compression::None),
                sample_ratio: None,
                profile_hz: None,
            },
            Preset::Constrained => PresetValues {
                max_queue: Some(2_048),
                max_batch: Some(512),
                schedule_delay: Some(Duration::from_secs(2)),
                concurrency: Some(1),
                compression: Some(Compression::Gzip),
                sample_ratio: Some(0.1),
                profile_hz: Some(99),
            },
        }
    }
}

/// The export path's settings, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSettings {
    /// Spans waiting for export at most (the channel from the pipeline); past it, counted drops.
    pub max_queue: usize,
    /// Spans in one OTLP request at most.
    pub max_batch: usize,
    /// Longest a span waits in a partial batch.
    pub schedule_delay: Duration,
    /// Longest one export request may take.
    pub timeout: Duration,
    /// Export requests in flight at once.
    pub concurrency: usize,
    pub compression: Compression,
    /// Sent with every request (e.g. an API key), from --otlp-header and
    /// OTEL_EXPORTER_OTLP_HEADERS.
    pub headers: Vec<(String, String)>,
    /// A PEM CA certificate the collector's certificate must chain to (https endpoints).
    pub certificate: Option<PathBuf>,
    /// Longest loupe flushes at exit before it counts what is left as dropped.
    pub shutdown_timeout: Duration,
}

pub const DEFAULT_QUEUE: usize = 16_384;
pub const DEFAULT_BATCH: usize = 2_048;
pub const DEFAULT_DELAY: Duration = Duration::from_millis(500);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONCURRENCY: usize = 2;
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            max_queue: DEFAULT_QUEUE,
            max_batch: DEFAULT_BATCH,
            schedule_delay: DEFAULT_DELAY,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            compression: Compression::None,
            headers: Vec::new(),
            certificate: None,
            shutdown_timeout: DEFAULT_SHUTDOWN,
        }
    }
}

/// What the command line said (None: not given).
#[derive(Clone, Debug, Default)]
pub struct ExportFlags {
    pub preset: Option<Preset>,
    pub max_queue: Option<usize>,
    pub max_batch: Option<usize>,
    pub schedule_delay: Option<Duration>,
    pub timeout: Option<Duration>,
    pub concurrency: Option<usize>,
    pub compression: Option<Compression>,
    pub headers: Vec<(String, String)>,
    pub certificate: Option<PathBuf>,
    pub shutdown_timeout: Option<Duration>,
}

/// A setting that cannot work, said in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("invalid {name} `{value}`: expected {expected}")]
    Env {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("the export batch ({batch}) cannot be larger than the queue ({queue})")]
    BatchOverQueue { batch: usize, queue: usize },
    #[error("invalid OTLP header `{0}`: expected key=value")]
    Header(String),
}

impl ExportFlags {
    /// Flag, else OTel variable, else preset, else default.
    pub fn resolve(
        self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<ExportSettings, SettingsError> {
        let preset = self.preset.map(Preset::values).unwrap_or_default();
        let defaults = ExportSettings::default();
        let env_count = |name: &'static str| -> Result<Option<usize>, SettingsError> {
            non_empty(env, name)
                .map(|value| {
                    value.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or(
                        SettingsError::Env {
                            name,
                            value,
                            expected: "a whole number above zero",
                        },
                    )
                })
                .transpose()
        };
        let env_millis = |names: &[&'static str]| -> Result<Option<Duration>, SettingsError> {
            let Some((name, value)) = names
                .iter()
                .find_map(|name| non_empty(env, name).map(|value| (*name, value)))
            else {
                return Ok(None);
            };
            value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(|ms| Some(Duration::from_millis(ms)))
                .ok_or(SettingsError::Env {
                    name,
                    value,
                    expected: "milliseconds above zero",
                })
        };
        let max_queue = match self.max_queue {
            Some(n) => n,
            None => env_count("OTEL_BSP_MAX_QUEUE_SIZE")?
                .or(preset.max_queue)
                .unwrap_or(defaults.max_queue),
        };
        let max_batch = match self.max_batch {
            Some(n) => n,
            None => env_count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
                .or(preset.max_batch)
                .unwrap_or(defaults.max_batch),
        };
        if max_batch > max_queue {
            return Err(SettingsError::BatchOverQueue {
                batch: max_batch,
                queue: max_queue,
            });
        }
        let schedule_delay = match self.schedule_delay {
            Some(delay) => delay,
            None => env_millis(&["OTEL_BSP_SCHEDULE_DELAY"])?
                .or(preset.schedule_delay)
                .unwrap_or(defaults.schedule_delay),
        };
        let timeout = match self.timeout {
            Some(timeout) => timeout,
            None => env_millis(&[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "OTEL_BSP_EXPORT_TIMEOUT",
            ])?
            .unwrap_or(defaults.timeout),
        };
        let concurrency = match self.concurrency {
            Some(n) => n,
            None => env_count("OTEL_BSP_MAX_CONCURRENT_EXPORTS")?
                .or(preset.concurrency)
                .unwrap_or(defaults.concurrency),
        };
        let compression = match self.compression {
            Some(compression) => compression,
            None => match first_env(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                    "OTEL_EXPORTER_OTLP_COMPRESSION",
                ],
            ) {
                Some((_, value)) if value.eq_ignore_ascii_case("gzip") => Compression::Gzip,
                Some((_, value)) if value.eq_ignore_ascii_case("none") => Compression::None,
                Some((name, value)) => {
                    return Err(SettingsError::Env {
                        name,
                        value,
                        expected: "gzip or none",
                    });
                }
                None => preset.compression.unwrap_or(defaults.compression),
            },
        };
        let mut headers = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(value) = non_empty(env, name) {
                headers.extend(parse_headers(&value).map_err(|_| SettingsError::Env {
                    name,
                    value: redact_header_values(&value),
                    expected: "key=value pairs separated by commas",
                })?);
            }
        }
        // A flag's header replaces a variable's of the same name.
        for (key, value) in self.headers {
            headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&key));
            headers.push((key, value));
        }
        let certificate = self.certificate.or_else(|| {
            first_env(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ],
            )
            .map(|(_, path)| PathBuf::from(path))
        });
        Ok(ExportSettings {
            max_queue,
            max_batch,
            schedule_delay,
            timeout,
            concurrency,
            compression,
            headers,
            certificate,
            shutdown_timeout: self.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        })
    }
}

/// The variable `name`, unless unset or blank.
pub fn non_empty(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|value| !value.trim().is_empty())
}

fn first_env(
    env: &impl Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names
        .iter()
        .find_map(|name| non_empty(env, name).map(|value| (*name, value.trim().to_owned())))
}

/// `key=value` for `--otlp-header`.
pub fn parse_header(text: &str) -> Result<(String, String), SettingsError> {
    let (key, value) = text
        .split_once('=')
        .filter(|(key, _)| is_header_name(key.trim()))
        .ok_or_else(|| SettingsError::Header(redact_header_values(text)))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

/// The W3C-baggage-like list of OTEL_EXPORTER_OTLP_HEADERS: `k1=v1,k2=v2`, values
/// percent-encoded.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, SettingsError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = parse_header(pair)?;
            Ok((key, percent_decode(&value)))
        })
        .collect()
}

fn is_header_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What an error may show of a header list: the names, never the values (they are secrets).
fn redact_header_values(text: &str) -> String {
    text.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{}=…", key.trim()),
            None => pair.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| {
            pairs
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn defaults_without_flags_or_variables() {
        let settings = ExportFlags::default().resolve(&env_of(&[])).unwrap();
        assert_eq!(settings, ExportSettings::default());
    }

    #[test]
    fn otel_variables_are_read_in_their_units() {
        let settings = ExportFlags::default()
            .resolve(&env_of(&[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100000"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=s%3Dcret, x-tenant = shop",
                ),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ]))
            .unwrap();
        assert_eq!(settings.max_queue, 100_000);
        assert_eq!(settings.max_batch, 1_000);
        assert_eq!(settings.schedule_delay, Duration::from_millis(250));
        assert_eq!(settings.timeout, Duration::from_secs(3));
        assert_eq!(settings.compression, Compression::Gzip);
        assert_eq!(
            settings.headers,
            vec![
                ("api-key".to_owned(), "s=cret".to_owned()),
                ("x-tenant".to_owned(), "shop".to_owned())
            ]
        );
        assert_eq!(settings.certificate, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn a_flag_beats_the_variable_which_beats_the_preset() {
        let flags = ExportFlags {
            preset: Some(Preset::Constrained),
            max_batch: Some(100),
            headers: vec![("api-key".into(), "from-flag".into())],
            ..Default::default()
        };
        let settings = flags
            .resolve(&env_of(&[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "API-KEY=from-env"),
            ]))
            .unwrap();
        assert_eq!(settings.max_batch, 100, "flag");
        assert_eq!(settings.max_queue, 4096, "variable over preset");
        assert_eq!(settings.concurrency, 1, "preset over default");
        assert_eq!(settings.compression, Compression::Gzip, "preset");
        assert_eq!(
            settings.headers,
            vec![("api-key".to_owned(), "from-flag".to_owned())]
        );
    }

    #[test]
    fn bad_values_are_one_line_without_secrets() {
        let err = ExportFlags::default()
            .resolve(&env_of(&[("OTEL_BSP_SCHEDULE_DELAY", "5s")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid OTEL_BSP_SCHEDULE_DELAY `5s`: expected milliseconds above zero"
        );
        let err = ExportFlags::default()
            .resolve(&env_of(&[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "token=secret,oops",
            )]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("token=…"), "{err}");
        let err = ExportFlags::default()
            .resolve(&env_of(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]))
            .unwrap_err();
        assert!(err.to_string().contains("gzip or none"), "{err}");
        let err = ExportFlags {
            max_batch: Some(10_000),
            max_queue: Some(100),
            ..Default::default()
        }
        .resolve(&env_of(&[]))
        .unwrap_err();
        assert!(matches!(err, SettingsError::BatchOverQueue { .. }));
    }

    #[test]
    fn header_flags_parse_and_reject() {
        assert_eq!(
            parse_header("authorization=Bearer abc=="),
            Ok(("authorization".into(), "Bearer abc==".into()))
        );
        assert!(parse_header("no-equals").is_err());
        assert!(parse_header("bad key=v").is_err());
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn every_preset_keeps_its_batch_within_its_queue() {
        for preset in [Preset::HighTraffic, Preset::LowLatency, Preset::Constrained] {
            let settings = ExportFlags {
                preset: Some(preset),
                ..Default::default()
            }
            .resolve(&env_of(&[]))
            .unwrap();
            assert!(settings.max_batch <= settings.max_queue, "{preset:?}");
        }
    }
}
