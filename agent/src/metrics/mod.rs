//! What loupe measures of itself and of the services it watches, served as Prometheus text at
//! `--metrics-addr`'s `/metrics` ([`server`]):
//!
//! - every counter and gauge of [`Counters`] (`loupe_<name>_total`, `loupe_<name>`: one list in
//!   stats.rs drives them), the OTLP export requests' durations and failures
//!   ([`ExportStats`]), and loupe's own CPU time, RSS and threads ([`own`], read when scraped);
//! - the observed services' RED metrics ([`red`]): request, call and query durations with the
//!   OpenTelemetry semantic conventions' names and buckets, recorded by the stitch stage for
//!   every finished span before anything can drop it.
//!
//! [`render`] is pure: the same inputs, the same text ([`exposition`]).

pub mod export_stats;
pub mod exposition;
pub mod histogram;
pub mod otlp;
pub mod own;
pub mod red;
pub mod server;

pub use export_stats::ExportStats;
pub use red::{RedRecorder, RedRegistry};
pub use server::{MetricsServer, Source};

use exposition::{Text, Type};
use own::OwnUsage;
use red::RedSnapshot;

use crate::{
    ledger::slo::SloStatus,
    stats::{Counters, Kind},
};

/// The whole exposition: loupe's build, its counters and gauges, its exports, its own usage
/// (when it could be read), then the RED metrics.
pub fn render(
    counters: &Counters,
    red: RedSnapshot,
    own: Option<OwnUsage>,
    slos: &[SloStatus],
) -> String {
    let mut text = Text::default();
    text.family(
        "loupe_build_info",
        Type::Gauge,
        "The running loupe's version (always 1).",
    );
    text.sample(
        "loupe_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    for counter in counters.all() {
        let (name, kind) = match counter.kind {
            Kind::Counter => (format!("loupe_{}_total", counter.name), Type::Counter),
            Kind::Gauge => (format!("loupe_{}", counter.name), Type::Gauge),
        };
        text.family(&name, kind, counter.help);
        text.sample(&name, &[], Counters::get(counter.value));
    }

    let (succeeded, failed) = counters.export.snapshot();
    text.family(
        "loupe_export_duration_seconds",
        Type::Histogram,
        "Duration of each OTLP export request, by outcome (ok, or failed: refused, an error or a timeout).",
    );
    text.histogram(
        "loupe_export_duration_seconds",
        &[("outcome", "ok")],
        &succeeded,
    );
    text.histogram(
        "loupe_export_duration_seconds",
        &[("outcome", "failed")],
        &failed,
    );
    text.family(
        "loupe_export_failures_total",
        Type::Counter,
        "OTLP export requests that failed (their spans are counted in loupe_spans_dropped_total).",
    );
    text.sample("loupe_export_failures_total", &[], failed.count());

    if let Some(own) = own {
        text.family(
            "process_cpu_seconds_total",
            Type::Counter,
            "User and system CPU time loupe spent, in seconds.",
        );
        text.sample_f64("process_cpu_seconds_total", &[], own.cpu_seconds);
        text.family(
            "process_resident_memory_bytes",
            Type::Gauge,
            "loupe's resident memory, in bytes.",
        );
        text.sample("process_resident_memory_bytes", &[], own.rss_bytes);
        text.family("process_threads", Type::Gauge, "loupe's threads.");
        text.sample("process_threads", &[], own.threads);
    }

    type Gauge = (&'static str, &'static str, fn(&SloStatus) -> Option<f64>);
    let gauges: [Gauge; 3] = [
        (
            "loupe_slo_compliance",
            "Share (0..1) of an SLO's route's requests within its threshold since start (--slo).",
            |slo| slo.compliance,
        ),
        (
            "loupe_slo_error_budget_remaining",
            "Share of an SLO's error budget left since start: 1 untouched, 0 spent, below 0 overspent.",
            |slo| slo.error_budget_remaining,
        ),
        (
            "loupe_slo_burn_rate",
            "How fast an SLO's error budget burned over the last five minutes (1: as fast as allowed).",
            |slo| slo.burn_rate,
        ),
    ];
    for (name, help, value) in gauges {
        text.family(name, Type::Gauge, help);
        for slo in slos {
            if let Some(value) = value(slo) {
                let (method, route) = slo.method_and_route();
                let mut labels = Vec::with_capacity(4);
                if let Some(service) = &slo.service {
                    labels.push(("service_name", service.as_str()));
                }
                if let Some(method) = method {
                    labels.push(("http_request_method", method));
                }
                labels.extend([("http_route", route), ("objective", slo.objective.as_str())]);
                text.sample_f64(name, &labels, value);
            }
        }
    }

    red.render(&mut text);
    text.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Counters;

    #[test]
    fn every_listed_counter_is_shown_once_with_its_help_and_type() {
        let counters = Counters::default();
        Counters::add(&counters.events_lost_kernel, 3);
        Counters::set(&counters.hot_threads, 2);
        counters.export.record(Duration::from_millis(2), true);
        counters.export.record(Duration::from_secs(11), false);
        let own = OwnUsage {
            cpu_seconds: 1.5,
            rss_bytes: 4096,
            threads: 9,
        };
        let slo = crate::ledger::slo::Slo::parse("GET /a=1s@p95")
            .unwrap()
            .status("shop", (95, 100), (9, 10), 5);
        let text = render(
            &counters,
            RedRegistry::default().snapshot(),
            Some(own),
            &[slo],
        );
        assert!(
            text.contains("\nloupe_slo_compliance{service_name=\"shop\",http_request_method=\"GET\",http_route=\"/a\",objective=\"p95\"} 0.95\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nloupe_slo_burn_rate{service_name=\"shop\",http_request_method=\"GET\",http_route=\"/a\",objective=\"p95\"} 2\n"
            ),
            "{text}"
        );
        for counter in counters.all() {
            let name = match counter.kind {
                Kind::Counter => format!("loupe_{}_total", counter.name),
                Kind::Gauge => format!("loupe_{}", counter.name),
            };
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            let help = format!("# HELP {name} {}\n", counter.help.trim());
            assert!(text.contains(&help), "{help}");
            assert!(
                !counter.help.trim().is_empty(),
                "{name} says what it counts"
            );
        }
        assert!(
            text.contains("\nloupe_events_lost_total 3\n"),
            "the summary's name"
        );
        assert!(text.contains("# TYPE loupe_hot_threads gauge\nloupe_hot_threads 2\n"));
        assert!(text.contains("\nloupe_metric_series_dropped_total 0\n"));
        assert!(text.contains("loupe_export_duration_seconds_count{outcome=\"ok\"} 1\n"));
        assert!(
            text.contains("loupe_export_duration_seconds_bucket{outcome=\"failed\",le=\"10\"} 0\n")
        );
        assert!(text.contains("\nloupe_export_failures_total 1\n"));
        assert!(text.contains("\nprocess_cpu_seconds_total 1.5\n"));
        assert!(text.contains("\nprocess_resident_memory_bytes 4096\n"));
        assert!(text.contains("# TYPE http_server_request_duration_seconds histogram\n"));
        assert!(text.starts_with("# HELP loupe_build_info "));
        let lines = text.lines().filter(|line| !line.starts_with('#'));
        for line in lines {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(!series.is_empty() && value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn the_readme_names_every_metric_and_label() {
        let readme = include_str!("../../../README.md");
        assert!(readme.contains("is `loupe_<name>_total`"));
        let listed: Vec<String> = Counters::default()
            .all()
            .iter()
            .map(|counter| counter.name.to_owned())
            .collect();
        let text = render(
            &Counters::default(),
            RedRegistry::default().snapshot(),
            OwnUsage::read(),
            &[],
        );
        for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap_or_default();
            let counter = name
                .strip_prefix("loupe_")
                .map(|rest| rest.strip_suffix("_total").unwrap_or(rest));
            if counter.is_some_and(|counter| listed.iter().any(|l| l == counter)) {
                continue;
            }
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README has no row for {name}"
            );
        }
        for family in red::Family::ALL {
            for label in family.label_names() {
                assert!(readme.contains(&format!("`{label}`")), "README: {label}");
            }
        }
    }

    #[test]
    fn unread_own_usage_leaves_its_metrics_out() {
        let text = render(
            &Counters::default(),
            RedRegistry::default().snapshot(),
            None,
            &[],
        );
        assert!(!text.contains("process_cpu_seconds_total"));
    }
}
