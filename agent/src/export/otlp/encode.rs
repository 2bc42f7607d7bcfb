//! Finished spans to one OTLP `ExportTraceServiceRequest`: grouped by process (one resource
//! each), encoded straight from [`SpanRecord`] with no intermediate SDK types. Pure: no I/O
//! beyond the resource cache's one /proc read per new process.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value},
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};

use super::super::resource::Resources;
use crate::spans::{AttrValue, SpanKind, SpanRecord, clock::WallClock};

/// The W3C trace flag "sampled": every span loupe exports was kept.
const FLAG_SAMPLED: u32 = 0x01;
/// OTLP's span flags: the parent's is-remote bit is known (bit 8), and set (bit 9).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;

/// Builds export requests.
pub struct Encoder {
    clock: WallClock,
    scope: InstrumentationScope,
    resources: Resources,
}

impl Encoder {
    pub fn new(resources: Resources) -> Self {
        Self {
            clock: WallClock::new(),
            scope: InstrumentationScope {
                name: "loupe".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
            resources,
        }
    }

    /// One request for `spans`, one resource per process in it.
    pub fn request(&mut self, mut spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        spans.sort_by_key(|span| span.pid);
        let mut resource_spans: Vec<ResourceSpans> = Vec::new();
        let mut current: Option<u32> = None;
        for record in spans {
            if current != Some(record.pid) {
                current = Some(record.pid);
                resource_spans.push(ResourceSpans {
                    resource: Some(self.resources.get(record.pid).clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(self.scope.clone()),
                        spans: Vec::new(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
            let span = encode_span(self.clock, record);
            if let Some(scope) = resource_spans
                .last_mut()
                .and_then(|resource| resource.scope_spans.last_mut())
            {
                scope.spans.push(span);
            }
        }
        ExportTraceServiceRequest { resource_spans }
    }
}

fn encode_span(clock: WallClock, record: SpanRecord) -> Span {
    // The sampling threshold the tail sampler kept it at (OTel's `ot=th:`).
    let trace_state = crate::sampling::tracestate(&record)
        .map(|threshold| format!("ot={threshold}"))
        .unwrap_or_default();
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(record.attributes.len() + 1);
    attributes.extend(
        record
            .attributes
            .into_iter()
            .map(|(key, value)| key_value(key, value)),
    );
    attributes.push(key_value(
        "thread.id",
        AttrValue::Int(i64::from(record.tid)),
    ));
    let events = record
        .events
        .into_iter()
        .map(|event| span::Event {
            time_unix_nano: clock.to_unix_ns(event.time_ns),
            name: event.name.to_owned(),
            attributes: event
                .attributes
                .into_iter()
                .map(|(key, value)| key_value(key, value))
                .collect(),
            dropped_attributes_count: 0,
        })
        .collect();
    Span {
        trace_id: record.trace_id.to_be_bytes().to_vec(),
        span_id: record.span_id.to_be_bytes().to_vec(),
        trace_state,
        parent_span_id: record
            .parent_span_id
            .map(|id| id.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
        name: record.name,
        kind: match record.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: clock.to_unix_ns(record.start_ns),
        end_time_unix_nano: clock.to_unix_ns(record.end_ns),
        attributes,
        dropped_attributes_count: 0,
        events,
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(match record.error {
            Some(message) => Status {
                message,
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
    }
}

fn key_value(key: &str, value: AttrValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(any_value(value)),
        ..Default::default()
    }
}

fn any_value(value: AttrValue) -> AnyValue {
    let value = match value {
        AttrValue::Str(text) => any_value::Value::StringValue(text.into_owned()),
        AttrValue::Int(n) => any_value::Value::IntValue(n),
        AttrValue::Float(f) => any_value::Value::DoubleValue(f),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
        AttrValue::StrArray(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items
                .into_iter()
                .map(|item| AnyValue {
                    value: Some(any_value::Value::StringValue(item.into_owned())),
                })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use prost::Message as _;

    use super::*;
    use crate::spans::{OpType, SpanEvent};

    fn record(pid: u32, span_id: u64, parent: Option<u64>) -> SpanRecord {
        SpanRecord {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id,
            parent_span_id: parent,
            kind: if parent.is_some() {
                SpanKind::Client
            } else {
                SpanKind::Server
            },
            op: OpType::HttpServer,
            name: format!("GET /{span_id}"),
            start_ns: 1_000,
            end_ns: 2_000,
            attributes: vec![
                ("http.request.method", AttrValue::from("GET")),
                ("http.response.status_code", AttrValue::Int(200)),
                (
                    "performance.patterns",
                    AttrValue::StrArray(vec![Cow::Borrowed("n_plus_one")]),
                ),
            ],
            error: (span_id == 2).then(|| "HTTP 500".to_owned()),
            pid,
            tid: pid + 1,
            events: vec![SpanEvent {
                name: "performance.pattern",
                time_ns: 1_500,
                attributes: vec![("pattern", AttrValue::from("n_plus_one"))],
            }],
            call_key: Some(7),
            cache_key: None,
            sampling_threshold: None,
            sampled_out: false,
        }
    }

    #[test]
    fn spans_group_by_process_and_round_trip_through_protobuf() {
        let mut encoder = Encoder::new(Resources::new(Some("svc".into())));
        let request = encoder.request(vec![
            record(20, 1, None),
            record(10, 2, Some(1)),
            record(20, 3, Some(1)),
        ]);
        let decoded =
            ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, request);
        assert_eq!(decoded.resource_spans.len(), 2, "one resource per pid");
        let pids: Vec<i64> = decoded
            .resource_spans
            .iter()
            .map(|resource| {
                resource
                    .resource
                    .as_ref()
                    .unwrap()
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "process.pid")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::IntValue(n) => Some(*n),
                        _ => None,
                    })
                    .unwrap()
            })
            .collect();
        assert_eq!(pids, vec![10, 20]);
        let spans = &decoded.resource_spans[1].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let server = &spans[0];
        assert_eq!(
            server.trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
        );
        assert_eq!(server.span_id, 1u64.to_be_bytes());
        assert!(server.parent_span_id.is_empty());
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(server.name, "GET /1");
        assert!(server.end_time_unix_nano - server.start_time_unix_nano == 1_000);
        assert!(server.start_time_unix_nano > 1_600_000_000_000_000_000);
        let keys: Vec<&str> = server.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "performance.patterns",
                "thread.id"
            ]
        );
        assert_eq!(server.events[0].name, "performance.pattern");
        let child = &spans[1];
        assert_eq!(child.parent_span_id, 1u64.to_be_bytes());
        assert_eq!(child.kind, span::SpanKind::Client as i32);
        let failed = &decoded.resource_spans[0].scope_spans[0].spans[0];
        let status = failed.status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "HTTP 500");
    }
}
