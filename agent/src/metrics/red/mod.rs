//! The observed services' RED metrics (rate, errors, duration): one histogram per label set of
//! every finished span's duration, with the OpenTelemetry semantic conventions' names, labels
//! and buckets:
//!
//! - `http.server.request.duration` (`http_server_request_duration_seconds`): inbound requests,
//!   by service, method, route and status;
//! - `http.client.request.duration` (`http_client_request_duration_seconds`): outbound calls,
//!   by service, method, server address and port, and status;
//! - `db.client.operation.duration` (`db_client_operation_duration_seconds`): PostgreSQL
//!   queries and Redis commands, by service, system, namespace, operation, collection, server
//!   and status.
//!
//! The stitch stage records each span as it finishes, before anything can drop it, so the
//! counts are every request's. Label values are bounded where the span's are not (an unknown
//! HTTP method is `_OTHER`, routes are templated already), and each metric keeps at most
//! [`MAX_SERIES`] label sets: an observation that would start one more is counted
//! (`metric_series_dropped`), not recorded.

mod labels;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use rustc_hash::FxBuildHasher;

pub use labels::{Family, MAX_LABELS, Value, labels};

use super::{
    exposition::{Text, Type},
    histogram::{DURATION_BUCKETS, Histogram},
};
use crate::{process::services::ServiceNames, spans::SpanRecord, stats::Counters};
use labels::{decode, encode};

/// Label sets kept per metric.
pub const MAX_SERIES: usize = 2000;

#[derive(Clone, Debug)]
struct Series {
    values: Arc<[String]>,
    histogram: Histogram,
}

/// Every metric's label sets and histograms: the stitch stage writes, a scrape takes a
/// [`RedSnapshot`].
#[derive(Debug)]
pub struct RedRegistry {
    families: [HashMap<Box<str>, Series, FxBuildHasher>; 3],
    max_series: usize,
}

impl Default for RedRegistry {
    fn default() -> Self {
        Self::with_max_series(MAX_SERIES)
    }
}

impl RedRegistry {
    pub fn with_max_series(max_series: usize) -> Self {
        Self {
            families: Default::default(),
            max_series,
        }
    }

    /// Adds one observation to the label set `key` (from [`encode`]) of `family`; false when
    /// that would be a label set past the bound (not recorded).
    fn observe(&mut self, family: Family, key: &str, seconds: f64) -> bool {
        let series = &mut self.families[family.index()];
        if let Some(found) = series.get_mut(key) {
            found.histogram.observe(seconds);
            return true;
        }
        if series.len() >= self.max_series {
            return false;
        }
        let mut histogram = Histogram::new(DURATION_BUCKETS);
        histogram.observe(seconds);
        series.insert(
            key.into(),
            Series {
                values: decode(key).into(),
                histogram,
            },
        );
        true
    }

    /// A copy of every series (their label values shared, not copied).
    pub fn snapshot(&self) -> RedSnapshot {
        let mut series: Vec<(Family, Series)> = Vec::new();
        for family in Family::ALL {
            series.extend(
                self.families[family.index()]
                    .values()
                    .map(|one| (family, one.clone())),
            );
        }
        RedSnapshot { series }
    }
}

/// The RED metrics as they were when a scrape took them.
pub struct RedSnapshot {
    series: Vec<(Family, Series)>,
}

impl RedSnapshot {
    /// Each series: its metric, its label values (in [`Family::label_names`]' order, empty
    /// when not known) and its histogram.
    pub fn series(&self) -> impl Iterator<Item = (Family, &[String], &Histogram)> {
        self.series
            .iter()
            .map(|(family, series)| (*family, &series.values[..], &series.histogram))
    }

    /// Writes each metric (its help and type even when it has no series yet), series sorted
    /// by their label values.
    pub fn render(mut self, text: &mut Text) {
        self.series
            .sort_by(|(f1, s1), (f2, s2)| (f1, &s1.values).cmp(&(f2, &s2.values)));
        for family in Family::ALL {
            text.family(family.name(), Type::Histogram, family.help());
            for (_, series) in self.series.iter().filter(|(f, _)| *f == family) {
                let labels: Vec<(&str, &str)> = family
                    .label_names()
                    .iter()
                    .zip(series.values.iter())
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(name, value)| (*name, value.as_str()))
                    .collect();
                text.histogram(family.name(), &labels, &series.histogram);
            }
        }
    }
}

/// What the stitch stage records spans with.
pub struct RedRecorder {
    registry: Arc<Mutex<RedRegistry>>,
    counters: Arc<Counters>,
    services: ServiceNames,
    key: String,
    number: String,
}

impl RedRecorder {
    pub fn new(
        registry: Arc<Mutex<RedRegistry>>,
        counters: Arc<Counters>,
        service_name: Option<String>,
    ) -> Self {
        Self::naming(registry, counters, ServiceNames::new(service_name))
    }

    fn naming(
        registry: Arc<Mutex<RedRegistry>>,
        counters: Arc<Counters>,
        services: ServiceNames,
    ) -> Self {
        Self {
            registry,
            counters,
            services,
            key: String::new(),
            number: String::new(),
        }
    }

    /// Counts a finished span in its metric.
    pub fn record(&mut self, span: &SpanRecord) {
        let service = self.services.of(span.pid);
        let (family, values) = labels(span, &service);
        encode(
            &values[..family.label_names().len()],
            &mut self.key,
            &mut self.number,
        );
        let seconds = span.duration_ns() as f64 / 1e9;
        let recorded = self
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(family, &self.key, seconds);
        if !recorded {
            Counters::add(&self.counters.metric_series_dropped, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{Actor, OpType, SpanIds, SpanKind, http::new_span};

    fn span(
        kind: SpanKind,
        op: OpType,
        ms: u64,
        attributes: &[(&'static str, &str)],
    ) -> SpanRecord {
        let ids = SpanIds {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            unnested: None,
        };
        let mut span = new_span(
            kind,
            op,
            "name",
            (1_000_000, 1_000_000 + ms * 1_000_000),
            ids,
            Actor { pid: 7, tid: 7 },
        );
        for (key, value) in attributes {
            match value.parse::<i64>() {
                Ok(n) => span.set(key, n),
                Err(_) => span.set(key, value.to_string()),
            }
        }
        span
    }

    fn server(method: &str, route: &str, status: &str, ms: u64) -> SpanRecord {
        span(
            SpanKind::Server,
            OpType::HttpServer,
            ms,
            &[
                ("http.request.method", method),
                ("url.scheme", "http"),
                ("http.route", route),
                ("http.response.status_code", status),
            ],
        )
    }

    fn recorder(max_series: usize) -> (RedRecorder, Arc<Mutex<RedRegistry>>, Arc<Counters>) {
        let registry = Arc::new(Mutex::new(RedRegistry::with_max_series(max_series)));
        let counters = Arc::new(Counters::default());
        let recorder = RedRecorder::naming(
            registry.clone(),
            counters.clone(),
            ServiceNames::with_lookup(None, |pid| Some(format!("proc{pid}"))),
        );
        (recorder, registry, counters)
    }

    fn rendered(registry: &Mutex<RedRegistry>) -> String {
        let mut text = Text::default();
        registry.lock().unwrap().snapshot().render(&mut text);
        text.finish()
    }

    #[test]
    fn requests_count_per_route_and_status_with_error_type_on_server_errors() {
        let (mut recorder, registry, _) = recorder(MAX_SERIES);
        recorder.record(&server("GET", "/users/{id}", "200", 3));
        recorder.record(&server("GET", "/users/{id}", "200", 30));
        recorder.record(&server("GET", "/fail", "500", 1));
        recorder.record(&server("BREW", "/pot", "418", 1));
        let text = rendered(&registry);
        let users = "service_name=\"proc7\",http_request_method=\"GET\",url_scheme=\"http\",http_route=\"/users/{id}\",http_response_status_code=\"200\"";
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_count{{{users}}} 2\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_bucket{{{users},le=\"0.005\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_bucket{{{users},le=\"0.05\"}} 2\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_sum{{{users}}} 0.033\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "http_route=\"/fail\",http_response_status_code=\"500\",error_type=\"500\"}"
            ),
            "{text}"
        );
        assert!(text.contains("http_request_method=\"_OTHER\",url_scheme=\"http\",http_route=\"/pot\",http_response_status_code=\"418\"}"), "{text}");
        assert!(
            !text.contains("status_code=\"418\",error_type"),
            "a 4xx is no server error"
        );
        for family in Family::ALL {
            assert!(text.contains(&format!("# TYPE {} histogram\n", family.name())));
        }
    }

    #[test]
    fn calls_and_queries_have_their_own_labels() {
        let (mut recorder, registry, _) = recorder(MAX_SERIES);
        recorder.record(&span(
            SpanKind::Client,
            OpType::HttpClient,
            5,
            &[
                ("http.request.method", "GET"),
                ("http.route", "/score"),
                ("server.address", "127.0.0.1"),
                ("server.port", "8081"),
                ("http.response.status_code", "404"),
            ],
        ));
        let mut query = span(
            SpanKind::Client,
            OpType::DbClient,
            2,
            &[
                ("db.system.name", "postgresql"),
                ("db.namespace", "shop"),
                ("db.operation.name", "SELECT"),
                ("db.collection.name", "orders"),
                ("db.response.status_code", "42P01"),
            ],
        );
        query.error = Some("SQLSTATE 42P01".into());
        recorder.record(&query);
        let mut redis = span(
            SpanKind::Client,
            OpType::CacheClient,
            1,
            &[("db.system.name", "redis"), ("db.operation.name", "GET")],
        );
        recorder.record(&redis);
        redis.error = Some("query failed".into());
        recorder.record(&redis);
        let text = rendered(&registry);
        assert!(text.contains("http_client_request_duration_seconds_count{service_name=\"proc7\",http_request_method=\"GET\",server_address=\"127.0.0.1\",server_port=\"8081\",http_response_status_code=\"404\",error_type=\"404\"} 1\n"), "{text}");
        assert!(text.contains("db_client_operation_duration_seconds_count{service_name=\"proc7\",db_system_name=\"postgresql\",db_namespace=\"shop\",db_operation_name=\"SELECT\",db_collection_name=\"orders\",db_response_status_code=\"42P01\",error_type=\"42P01\"} 1\n"), "{text}");
        assert!(text.contains("db_client_operation_duration_seconds_count{service_name=\"proc7\",db_system_name=\"redis\",db_operation_name=\"GET\"} 1\n"), "{text}");
        assert!(text.contains("db_client_operation_duration_seconds_count{service_name=\"proc7\",db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"_OTHER\"} 1\n"), "{text}");
    }

    #[test]
    fn label_sets_past_the_bound_are_counted_not_recorded() {
        let (mut recorder, registry, counters) = recorder(3);
        for i in 0..5 {
            recorder.record(&server("GET", &format!("/r{i}"), "200", 1));
        }
        recorder.record(&server("GET", "/r0", "200", 1));
        assert_eq!(Counters::get(&counters.metric_series_dropped), 2);
        let text = rendered(&registry);
        assert_eq!(text.matches("_count{").count(), 3, "{text}");
        assert!(
            text.contains("http_route=\"/r0\",http_response_status_code=\"200\"} 2\n"),
            "{text}"
        );
    }
}
