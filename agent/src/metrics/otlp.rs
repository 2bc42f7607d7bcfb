//! The metrics `/metrics` shows, pushed over OTLP (`--otlp-metrics`): the same counters,
//! gauges and histograms, cumulative since loupe started, every `--otlp-metrics-interval` and
//! once more at exit.
//!
//! - loupe's own (its counters as `loupe.<name>`, its export durations, its CPU, memory and
//!   threads) under the resource `service.name=loupe`;
//! - the services' RED metrics under one resource per observed service (`service.name` is the
//!   name the spans are exported under), with their OpenTelemetry names and attributes, and the
//!   gauges of the SLOs on that service's routes (an SLO whose route is not seen yet: under
//!   loupe's resource).
//!
//! [`request`] is pure; [`MetricPush`] owns the transport and the schedule.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram as OtlpHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message as _;
use tokio::{sync::oneshot, time::Instant};

use super::{Source, histogram::Histogram, own::OwnUsage, red::RedSnapshot};
use crate::{
    config::OtlpMetrics,
    export::{
        otlp::transport::{Signal, Transport, TransportError},
        resource::host_name,
        settings::ExportSettings,
    },
    ledger::slo::SloStatus,
    stats::{Counters, Kind},
};

/// The times of one push, ns since the Unix epoch: cumulative since `start`, read at `now`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: u64,
    pub now: u64,
}

/// One OTLP request with every metric as of `window.now`.
pub fn request(
    counters: &Counters,
    red: &RedSnapshot,
    own: Option<OwnUsage>,
    slos: &[SloStatus],
    host: &str,
    window: Window,
) -> ExportMetricsServiceRequest {
    // An SLO's gauges go with its service's RED metrics; before its route is seen, with loupe's.
    let mut unseen = Vec::new();
    let mut slos_by_service: BTreeMap<&str, Vec<&SloStatus>> = BTreeMap::new();
    for slo in slos {
        match slo.service.as_deref() {
            Some(service) => slos_by_service.entry(service).or_default().push(slo),
            None => unseen.push(slo),
        }
    }
    let mut own_metrics = own_metrics(counters, own, window);
    own_metrics.extend(slo_metrics(&unseen, window));
    let mut resource_metrics = vec![ResourceMetrics {
        resource: Some(resource("loupe", host, Some(std::process::id()))),
        scope_metrics: vec![scope(own_metrics)],
        schema_url: String::new(),
    }];
    // Per observed service, in name order; within it, per metric, the series in label order.
    let mut services: BTreeMap<&str, BTreeMap<usize, Metric>> = BTreeMap::new();
    let mut series: Vec<_> = red.series().collect();
    series.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (family, values, histogram) in series {
        let service = values.first().map_or("", String::as_str);
        let metric = services
            .entry(service)
            .or_default()
            .entry(family.index())
            .or_insert_with(|| Metric {
                name: family.otel_name().to_owned(),
                description: family.help().to_owned(),
                unit: "s".to_owned(),
                data: Some(Data::Histogram(OtlpHistogram {
                    data_points: Vec::new(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                metadata: Vec::new(),
            });
        let attributes = family
            .otel_attributes()
            .iter()
            .zip(values)
            .skip(1)
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| attribute(name, value))
            .collect();
        if let Some(Data::Histogram(data)) = &mut metric.data {
            data.data_points
                .push(histogram_point(histogram, attributes, window));
        }
    }
    let mut services: BTreeMap<&str, Vec<Metric>> = services
        .into_iter()
        .map(|(service, metrics)| (service, metrics.into_values().collect()))
        .collect();
    for (service, slos) in slos_by_service {
        services
            .entry(service)
            .or_default()
            .extend(slo_metrics(&slos, window));
    }
    for (service, metrics) in services {
        resource_metrics.push(ResourceMetrics {
            resource: Some(resource(service, host, None)),
            scope_metrics: vec![scope(metrics)],
            schema_url: String::new(),
        });
    }
    ExportMetricsServiceRequest { resource_metrics }
}

fn own_metrics(counters: &Counters, own: Option<OwnUsage>, window: Window) -> Vec<Metric> {
    let mut metrics: Vec<Metric> = counters
        .all()
        .into_iter()
        .map(|counter| {
            let point = int_point(Counters::get(counter.value), window);
            let data = match counter.kind {
                Kind::Counter => cumulative_sum(vec![point]),
                Kind::Gauge => Data::Gauge(Gauge {
                    data_points: vec![point],
                }),
            };
            metric(&format!("loupe.{}", counter.name), counter.help, "", data)
        })
        .collect();
    let (succeeded, failed) = counters.export.snapshot();
    metrics.push(metric(
        "loupe.export.duration",
        "Duration of each OTLP export request, by outcome (ok, or failed).",
        "s",
        Data::Histogram(OtlpHistogram {
            data_points: vec![
                histogram_point(&succeeded, vec![attribute("outcome", "ok")], window),
                histogram_point(&failed, vec![attribute("outcome", "failed")], window),
            ],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
    ));
    if let Some(own) = own {
        let mut cpu = int_point(0, window);
        cpu.value = Some(number_data_point::Value::AsDouble(own.cpu_seconds));
        metrics.push(metric(
            "process.cpu.time",
            "User and system CPU time loupe spent.",
            "s",
            cumulative_sum(vec![cpu]),
        ));
        for (name, help, unit, value) in [
            (
                "process.memory.usage",
                "loupe's resident memory.",
                "By",
                own.rss_bytes,
            ),
            (
                "process.thread.count",
                "loupe's threads.",
                "{thread}",
                own.threads,
            ),
        ] {
            metrics.push(metric(
                name,
                help,
                unit,
                Data::Gauge(Gauge {
                    data_points: vec![int_point(value, window)],
                }),
            ));
        }
    }
    metrics
}

/// The SLO gauges (`loupe.slo.compliance`, `loupe.slo.error_budget_remaining`,
/// `loupe.slo.burn_rate`), a point per SLO with its `http.route` and `objective`; none without
/// SLOs.
fn slo_metrics(slos: &[&SloStatus], window: Window) -> Vec<Metric> {
    if slos.is_empty() {
        return Vec::new();
    }
    type Value = fn(&SloStatus) -> Option<f64>;
    let gauges: [(&str, &str, Value); 3] = [
        (
            "loupe.slo.compliance",
            "Share (0..1) of an SLO's route's requests within its threshold since start.",
            |slo| slo.compliance,
        ),
        (
            "loupe.slo.error_budget_remaining",
            "Share of an SLO's error budget left since start (1 untouched, 0 spent).",
            |slo| slo.error_budget_remaining,
        ),
        (
            "loupe.slo.burn_rate",
            "How fast an SLO's error budget burned over the last five minutes (1: as allowed).",
            |slo| slo.burn_rate,
        ),
    ];
    gauges
        .into_iter()
        .map(|(name, help, value)| {
            let data_points = slos
                .iter()
                .filter_map(|slo| {
                    let mut point = int_point(0, window);
                    point.value = Some(number_data_point::Value::AsDouble(value(slo)?));
                    let (method, route) = slo.method_and_route();
                    point.attributes = method
                        .map(|method| attribute("http.request.method", method))
                        .into_iter()
                        .chain([
                            attribute("http.route", route),
                            attribute("objective", &slo.objective),
                        ])
                        .collect();
                    Some(point)
                })
                .collect();
            metric(name, help, "", Data::Gauge(Gauge { data_points }))
        })
        .collect()
}

fn metric(name: &str, help: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.to_owned(),
        description: help.trim().to_owned(),
        unit: unit.to_owned(),
        data: Some(data),
        metadata: Vec::new(),
    }
}

fn cumulative_sum(data_points: Vec<NumberDataPoint>) -> Data {
    Data::Sum(Sum {
        data_points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    })
}

fn int_point(value: u64, window: Window) -> NumberDataPoint {
    NumberDataPoint {
        attributes: Vec::new(),
        start_time_unix_nano: window.start,
        time_unix_nano: window.now,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
    }
}

fn histogram_point(
    histogram: &Histogram,
    attributes: Vec<KeyValue>,
    window: Window,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: window.start,
        time_unix_nano: window.now,
        count: histogram.count(),
        sum: Some(histogram.sum()),
        bucket_counts: histogram.counts().to_vec(),
        explicit_bounds: histogram.bounds().to_vec(),
        exemplars: Vec::new(),
        flags: 0,
        min: None,
        max: None,
    }
}

fn scope(metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: "loupe".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        }),
        metrics,
        schema_url: String::new(),
    }
}

fn resource(service: &str, host: &str, pid: Option<u32>) -> Resource {
    let mut attributes = vec![
        attribute("service.name", service),
        attribute("host.name", host),
    ];
    if let Some(pid) = pid {
        attributes.push(KeyValue {
            key: "process.pid".to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::from(pid))),
            }),
            ..Default::default()
        });
    }
    Resource {
        attributes,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

/// A string attribute; a port or an HTTP status code is an integer, as the conventions type
/// them (a database's status code is a string: SQLSTATE `42P01`).
fn attribute(key: &str, value: &str) -> KeyValue {
    let integer = key.ends_with(".port") || key == "http.response.status_code";
    let value = match value.parse::<i64>() {
        Ok(number) if integer => any_value::Value::IntValue(number),
        _ => any_value::Value::StringValue(value.to_owned()),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// How often a failed push is said on stderr at most.
const WARN_EVERY: Duration = Duration::from_secs(300);

/// Pushes the metrics of `source` on a schedule, then once more when told to stop.
pub struct MetricPush {
    transport: Transport,
    source: Source,
    endpoint: String,
    interval: Duration,
    host: String,
    start_ns: u64,
    warned: Option<std::time::Instant>,
}

impl MetricPush {
    pub fn new(
        settings: &OtlpMetrics,
        export: &ExportSettings,
        source: Source,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            transport: Transport::new(
                &settings.endpoint,
                settings.protocol,
                export,
                Signal::Metrics,
            )?,
            source,
            endpoint: settings.endpoint.clone(),
            interval: settings.interval,
            host: host_name(),
            start_ns: unix_now_ns(),
            warned: None,
        })
    }

    /// Pushes every interval until `stop` brings the deadline of the last push, which goes
    /// then (bounded by that deadline and the export timeout).
    pub async fn run(mut self, mut stop: oneshot::Receiver<Instant>) {
        self.transport.connect();
        let mut tick = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.push().await,
                deadline = &mut stop => {
                    if let Ok(deadline) = deadline {
                        let _ = tokio::time::timeout_at(deadline, self.push()).await;
                    }
                    return;
                }
            }
        }
    }

    async fn push(&mut self) {
        let source = self.source.clone();
        let host = self.host.clone();
        let window = Window {
            start: self.start_ns,
            now: unix_now_ns(),
        };
        // /proc/self is read for loupe's own usage: off the runtime.
        let Ok(body) = tokio::task::spawn_blocking(move || {
            let red = source
                .red
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot();
            let slos = source.slos();
            let request = request(
                &source.counters,
                &red,
                OwnUsage::read(),
                &slos,
                &host,
                window,
            );
            Bytes::from(request.encode_to_vec())
        })
        .await
        else {
            return;
        };
        let counters: &Arc<Counters> = &self.source.counters;
        match self.transport.send(body).await {
            Ok(_) => Counters::add(&counters.metric_exports, 1),
            Err(err) => {
                Counters::add(&counters.metric_exports_failed, 1);
                if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    self.warned = Some(std::time::Instant::now());
                    eprintln!(
                        "loupe: warning: OTLP metrics to {} failed: {} (tried again every {}; a collector that takes only traces, like Jaeger, refuses them)",
                        self.endpoint,
                        err.message,
                        humantime::format_duration(self.interval)
                    );
                }
            }
        }
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::red::RedRegistry;

    fn names(metrics: &ResourceMetrics) -> Vec<&str> {
        metrics.scope_metrics[0]
            .metrics
            .iter()
            .map(|metric| metric.name.as_str())
            .collect()
    }

    fn service(metrics: &ResourceMetrics) -> String {
        let resource = metrics.resource.as_ref().unwrap();
        match &resource.attributes[0].value.as_ref().unwrap().value {
            Some(any_value::Value::StringValue(name)) => name.clone(),
            other => panic!("service.name is {other:?}"),
        }
    }

    #[test]
    fn loupes_own_metrics_and_each_services_red_metrics_under_their_resources() {
        let counters = Counters::default();
        Counters::add(&counters.spans_exported, 7);
        let red = RedRegistry::default();
        let snapshot = red.snapshot();
        let window = Window { start: 1, now: 2 };
        assert!(
            !names(&request(&counters, &snapshot, None, &[], "box", window).resource_metrics[0])
                .contains(&"loupe.slo.compliance"),
            "no SLO, no SLO gauge"
        );
        let seen = crate::ledger::slo::Slo::parse("GET /a=1s@p95")
            .unwrap()
            .status("shop", (95, 100), (9, 10), 5);
        let unseen = crate::ledger::slo::Slo::parse("GET /b=1s@p99")
            .unwrap()
            .status("", (0, 0), (0, 0), 5);
        let request = request(&counters, &snapshot, None, &[seen, unseen], "box", window);
        assert_eq!(
            request.resource_metrics.len(),
            2,
            "loupe, and the SLO's service"
        );
        let compliance = |metrics: &ResourceMetrics| {
            let compliance = metrics.scope_metrics[0]
                .metrics
                .iter()
                .find(|metric| metric.name == "loupe.slo.compliance")
                .expect("the SLO gauge")
                .clone();
            let Some(Data::Gauge(gauge)) = compliance.data else {
                panic!("{compliance:?}");
            };
            gauge
        };
        let own = &request.resource_metrics[0];
        assert_eq!(service(own), "loupe");
        // The unseen route's SLO has no compliance yet: no point, but its gauge is loupe's.
        assert!(compliance(own).data_points.is_empty());
        let shop = &request.resource_metrics[1];
        assert_eq!(service(shop), "shop", "an SLO goes with its service");
        let gauge = compliance(shop);
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.95))
        );
        assert_eq!(gauge.data_points[0].attributes.len(), 3);
        assert!(names(own).contains(&"loupe.spans_exported"));
        assert!(names(own).contains(&"loupe.export.duration"));
        let exported = own.scope_metrics[0]
            .metrics
            .iter()
            .find(|metric| metric.name == "loupe.spans_exported")
            .unwrap();
        let Some(Data::Sum(sum)) = &exported.data else {
            panic!("a counter is a sum: {exported:?}");
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(7))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 1);
    }

    #[test]
    fn integers_where_the_conventions_type_them() {
        assert_eq!(
            attribute("http.response.status_code", "404")
                .value
                .unwrap()
                .value,
            Some(any_value::Value::IntValue(404))
        );
        assert_eq!(
            attribute("server.port", "5432").value.unwrap().value,
            Some(any_value::Value::IntValue(5432))
        );
        assert_eq!(
            attribute("db.response.status_code", "23505")
                .value
                .unwrap()
                .value,
            Some(any_value::Value::StringValue("23505".into())),
        );
        assert_eq!(
            attribute("http.route", "/a/1").value.unwrap().value,
            Some(any_value::Value::StringValue("/a/1".into()))
        );
    }
}
