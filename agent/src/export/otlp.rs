//! OTLP export: spans to `SpanData`, grouped by process (one resource each), sent through
//! opentelemetry-otlp's exporter. A failed export is counted as dropped spans and warned about
//! at most every few seconds; it never blocks anything upstream.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{
    InstrumentationScope, KeyValue, Value,
    trace::{SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use super::{ExportError, resource::Resources};
use crate::{
    config::OtlpProtocol,
    spans::{AttrValue, SpanKind, SpanRecord, clock::WallClock},
    stats::Counters,
};

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one export warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct OtlpSink {
    exporter: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    resources: Resources,
    clock: WallClock,
    scope: InstrumentationScope,
    counters: Arc<Counters>,
    last_warning: Option<Instant>,
}

impl OtlpSink {
    /// Builds the exporter. `endpoint` None leaves it to the OTEL_EXPORTER_OTLP_* variables.
    pub fn new(
        endpoint: Option<&str>,
        protocol: OtlpProtocol,
        service_name: Option<String>,
        counters: Arc<Counters>,
    ) -> Result<Self, ExportError> {
        let shown = endpoint
            .unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint")
            .to_owned();
        let built = match protocol {
            OtlpProtocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                builder.build()
            }
            OtlpProtocol::Http => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(traces_url(endpoint));
                }
                builder.build()
            }
        };
        let exporter = built.map_err(|source| ExportError::Build {
            endpoint: shown.clone(),
            source,
        })?;
        Ok(Self {
            exporter,
            endpoint: shown,
            resources: Resources::new(service_name),
            clock: WallClock::new(),
            scope: InstrumentationScope::builder("loupe")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            counters,
            last_warning: None,
        })
    }

    /// Sends `spans`, one request per process.
    pub async fn export(&mut self, mut spans: Vec<SpanRecord>) {
        spans.sort_by_key(|span| span.pid);
        for group in spans.chunk_by(|a, b| a.pid == b.pid) {
            let pid = group[0].pid;
            let resource = self.resources.get(pid).clone();
            self.exporter.set_resource(&resource);
            let data: Vec<SpanData> = group.iter().map(|span| self.to_span_data(span)).collect();
            let count = data.len() as u64;
            match tokio::time::timeout(EXPORT_TIMEOUT * 2, self.exporter.export(data)).await {
                Ok(Ok(())) => Counters::add(&self.counters.spans_exported, count),
                Ok(Err(err)) => self.failed(count, &err.to_string()),
                Err(_) => self.failed(count, "timed out"),
            }
        }
    }

    fn failed(&mut self, count: u64, reason: &str) {
        Counters::add(&self.counters.spans_dropped, count);
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                "failed to export {count} spans to {}: {reason}; dropped spans so far: {}",
                self.endpoint,
                Counters::get(&self.counters.spans_dropped)
            );
        }
    }

    pub fn shutdown(&mut self) {
        if let Err(err) = self.exporter.shutdown() {
            tracing::debug!("OTLP exporter shutdown: {err}");
        }
    }

    fn to_events(&self, span: &SpanRecord) -> SpanEvents {
        let mut events = SpanEvents::default();
        events.events = span
            .events
            .iter()
            .map(|event| {
                opentelemetry::trace::Event::new(
                    event.name,
                    self.clock.to_system_time(event.time_ns),
                    event
                        .attributes
                        .iter()
                        .map(|(key, value)| KeyValue::new(*key, to_value(value)))
                        .collect(),
                    0,
                )
            })
            .collect();
        events
    }

    fn to_span_data(&self, span: &SpanRecord) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.trace_id),
                SpanId::from(span.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: span.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: false,
            span_kind: match span.kind {
                SpanKind::Server => OtelKind::Server,
                SpanKind::Client => OtelKind::Client,
            },
            name: Cow::Owned(span.name.clone()),
            start_time: self.clock.to_system_time(span.start_ns),
            end_time: self.clock.to_system_time(span.end_ns),
            attributes: span
                .attributes
                .iter()
                .map(|(key, value)| KeyValue::new(*key, to_value(value)))
                .chain([KeyValue::new("thread.id", i64::from(span.tid))])
                .collect(),
            dropped_attributes_count: 0,
            events: self.to_events(span),
            links: SpanLinks::default(),
            status: match &span.error {
                Some(description) => Status::error(description.clone()),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn to_value(value: &AttrValue) -> Value {
    match value {
        AttrValue::Str(Cow::Borrowed(s)) => Value::from(*s),
        AttrValue::Str(Cow::Owned(s)) => Value::from(s.clone()),
        AttrValue::Int(i) => Value::I64(*i),
        AttrValue::Float(f) => Value::F64(*f),
        AttrValue::Bool(b) => Value::Bool(*b),
        AttrValue::StrArray(items) => Value::Array(opentelemetry::Array::String(
            items.iter().map(|item| item.clone().into()).collect(),
        )),
    }
}

/// The OTLP/HTTP traces URL for a base endpoint (`http://h:4318` -> `http://h:4318/v1/traces`);
/// an endpoint that already names a path is used as given.
pub fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn http_endpoint_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(
            traces_url("http://h:4318/v1/traces"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(traces_url("https://h/custom"), "https://h/custom");
    }
}
