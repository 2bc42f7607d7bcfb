//! The sampling flags (`--sample-ratio`, `--sample`, `--max-traces-per-second`), their
//! environment fallbacks (LOUPE_*, and OTel's OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG),
//! validated into a [`SamplingConfig`].

use clap::Args;

/// What the tail sampler keeps, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Share of the trees without a cause kept (0..=1).
    pub ratio: f64,
    /// Per-route ratios, by the server span's name; the last given for a route wins.
    pub routes: Vec<RouteRatio>,
    /// At most this many trees kept per second by ratio, trees kept for a cause counted first.
    pub max_traces_per_second: Option<u64>,
}

impl Default for SamplingConfig {
    /// Everything kept.
    fn default() -> Self {
        Self {
            ratio: 1.0,
            routes: Vec::new(),
            max_traces_per_second: None,
        }
    }
}

/// `--sample 'GET /health=0.01'`: a route and its ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRatio {
    pub route: String,
    pub ratio: f64,
}

/// Tail sampling: after diagnosis, every request tree (a request and the calls it made) that is
/// slow, failed or has a pattern is kept; the others are kept by ratio, decided on the trace id.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Share of the other request trees kept, 0..=1 (e.g. 0.1), decided on the trace id so every
    /// loupe keeps the same traces. Falls back to OTEL_TRACES_SAMPLER_ARG when
    /// OTEL_TRACES_SAMPLER is traceidratio or parentbased_traceidratio (always_on: 1,
    /// always_off: 0), else 1.
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio, env = "LOUPE_SAMPLE_RATIO")]
    pub sample_ratio: Option<f64>,

    /// A route's own ratio, ROUTE=RATIO, ROUTE being the request span's name as loupe shows it,
    /// e.g. 'GET /health=0.01' or 'GET /api/users/{id}=0.5' (repeatable, or comma-separated).
    #[arg(
        long = "sample",
        value_name = "ROUTE=RATIO",
        value_parser = parse_route_ratio,
        env = "LOUPE_SAMPLE",
        value_delimiter = ','
    )]
    pub sample: Vec<RouteRatio>,

    /// Keep at most about this many request trees per second: under load each second's ratio is
    /// lowered from the last second's count. Slow, failed and pattern trees are always kept.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "LOUPE_MAX_TRACES_PER_SECOND")]
    pub max_traces_per_second: Option<u64>,
}

/// Sampling settings that cannot work, in one line.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error(
        "invalid OTEL_TRACES_SAMPLER_ARG `{0}` (OTEL_TRACES_SAMPLER={1}): expected a ratio between 0 and 1, e.g. 0.1"
    )]
    SamplerArg(String, String),
}

impl SamplingArgs {
    /// Validates the flags against the environment (`OTEL_TRACES_SAMPLER*`); `preset` is the
    /// ratio a `--preset` asks for, used when neither the flag nor the variables set one.
    pub fn into_config(
        self,
        env: &impl Fn(&str) -> Option<String>,
        preset: Option<f64>,
    ) -> Result<SamplingConfig, SamplingError> {
        let ratio = match self.sample_ratio {
            Some(ratio) => ratio,
            None => ratio_from_env(env)?.or(preset).unwrap_or(1.0),
        };
        Ok(SamplingConfig {
            ratio,
            routes: self.sample,
            max_traces_per_second: self.max_traces_per_second,
        })
    }
}

/// The ratio OTel's sampler variables ask for, if they name a ratio sampler (other samplers
/// mean nothing to loupe and are left to the SDKs they are meant for).
fn ratio_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Option<f64>, SamplingError> {
    let Some(sampler) = env("OTEL_TRACES_SAMPLER") else {
        return Ok(None);
    };
    match sampler.trim() {
        "always_on" | "parentbased_always_on" => Ok(Some(1.0)),
        "always_off" | "parentbased_always_off" => Ok(Some(0.0)),
        "traceidratio" | "parentbased_traceidratio" => {
            match env("OTEL_TRACES_SAMPLER_ARG").filter(|arg| !arg.trim().is_empty()) {
                // The spec's default for a ratio sampler without its argument.
                None => Ok(Some(1.0)),
                Some(arg) => parse_ratio(&arg)
                    .map(Some)
                    .map_err(|_| SamplingError::SamplerArg(arg, sampler.clone())),
            }
        }
        _ => Ok(None),
    }
}

/// A ratio in 0..=1: `0.1`, `1`, `0`.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "`{text}` is not a ratio between 0 and 1 (e.g. 0.1)"
        )),
    }
}

/// `GET /health=0.01`: the route is everything before the last `=`.
fn parse_route_ratio(text: &str) -> Result<RouteRatio, String> {
    let Some((route, ratio)) = text.rsplit_once('=') else {
        return Err(format!(
            "`{text}` is not ROUTE=RATIO, e.g. 'GET /health=0.01'"
        ));
    };
    let route = route.trim();
    if route.is_empty() {
        return Err(format!(
            "`{text}` names no route: expected ROUTE=RATIO, e.g. 'GET /health=0.01'"
        ));
    }
    Ok(RouteRatio {
        route: route.to_owned(),
        ratio: parse_ratio(ratio).map_err(|err| format!("in `{text}`: {err}"))?,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sampling: SamplingArgs,
    }

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<SamplingConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("loupe").chain(args.iter().copied()))
            .map_err(|err| err.to_string())?;
        let lookup = |key: &str| {
            env.iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        };
        cli.sampling
            .into_config(&lookup, None)
            .map_err(|err| err.to_string())
    }

    fn parse(args: &[&str]) -> Result<SamplingConfig, String> {
        parse_with(args, &[])
    }

    #[test]
    fn everything_is_kept_by_default() {
        assert_eq!(parse(&[]).unwrap(), SamplingConfig::default());
    }

    #[test]
    fn ratio_routes_and_limit_parse() {
        let config = parse(&[
            "--sample-ratio",
            "0.1",
            "--sample",
            "GET /health=0.01",
            "--sample",
            "GET /api/users/{id}=1,POST /orders=0",
            "--max-traces-per-second",
            "500",
        ])
        .unwrap();
        assert_eq!(config.ratio, 0.1);
        let routes: Vec<(&str, f64)> = config
            .routes
            .iter()
            .map(|r| (r.route.as_str(), r.ratio))
            .collect();
        assert_eq!(
            routes,
            [
                ("GET /health", 0.01),
                ("GET /api/users/{id}", 1.0),
                ("POST /orders", 0.0)
            ]
        );
        assert_eq!(config.max_traces_per_second, Some(500));
    }

    #[test]
    fn bad_values_are_refused_with_the_offending_text() {
        for (args, said) in [
            (&["--sample-ratio", "1.5"][..], "`1.5` is not a ratio"),
            (&["--sample-ratio=-0.1"][..], "`-0.1` is not a ratio"),
            (&["--sample-ratio", "NaN"][..], "`NaN` is not a ratio"),
            (
                &["--sample-ratio", "a tenth"][..],
                "`a tenth` is not a ratio",
            ),
            (&["--sample", "GET /health"][..], "is not ROUTE=RATIO"),
            (&["--sample", "=0.5"][..], "names no route"),
            (
                &["--sample", "GET /x=2"][..],
                "in `GET /x=2`: `2` is not a ratio",
            ),
            (
                &["--max-traces-per-second", "0"][..],
                "--max-traces-per-second",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(said), "{args:?}: {err}");
        }
    }

    #[test]
    fn otels_ratio_sampler_is_the_fallback() {
        let ratio = |env: &[(&str, &str)]| parse_with(&[], env).map(|c| c.ratio);
        for sampler in ["traceidratio", "parentbased_traceidratio"] {
            assert_eq!(
                ratio(&[
                    ("OTEL_TRACES_SAMPLER", sampler),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25")
                ]),
                Ok(0.25)
            );
        }
        assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "traceidratio")]), Ok(1.0));
        assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "always_off")]), Ok(0.0));
        assert_eq!(
            ratio(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")]),
            Ok(1.0)
        );
        // The argument of another sampler is not a ratio to loupe.
        assert_eq!(
            ratio(&[
                ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
                ("OTEL_TRACES_SAMPLER_ARG", "endpoint=http://x")
            ]),
            Ok(1.0)
        );
        let err = ratio(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "ten percent"),
        ])
        .unwrap_err();
        assert!(
            err.contains("invalid OTEL_TRACES_SAMPLER_ARG `ten percent`"),
            "{err}"
        );
        // The flag wins.
        assert_eq!(
            parse_with(
                &["--sample-ratio", "0.5"],
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25")
                ]
            )
            .map(|c| c.ratio),
            Ok(0.5)
        );
    }
}
