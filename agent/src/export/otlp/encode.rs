//! Finished spans to the bytes of one OTLP `ExportTraceServiceRequest`: grouped by process (one
//! resource each), written as protobuf straight from [`SpanRecord`], with no message structs
//! built in between (a span costs one buffer's growth, not a dozen strings and vectors). Pure: no
//! I/O beyond the resource cache's one /proc read per new process.
//!
//! Each message's length is worked out before it is written (`*_len`), then its fields go out in
//! tag order as prost writes them, so the bytes are the ones `prost` would give for the same
//! request: the tests hold the two to that, byte for byte.

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use prost::Message as _;

use super::super::resource::Resources;
use crate::spans::{AttrValue, SpanEvent, SpanKind, SpanRecord, clock::WallClock};

/// The W3C trace flag "sampled": every span loupe exports was kept.
const FLAG_SAMPLED: u32 = 0x01;
/// OTLP's span flags: the parent's is-remote bit is known (bit 8), and set (bit 9).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// OTLP's `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;
/// OTLP's `Span.SpanKind` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Builds export requests.
pub struct Encoder {
    clock: WallClock,
    scope: InstrumentationScope,
    resources: Resources,
    /// Each span's encoded length, for the request being written.
    lengths: Vec<usize>,
    /// Room for a span's tracestate while it is measured and written.
    scratch: String,
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
            lengths: Vec::new(),
            scratch: String::new(),
        }
    }

    /// The protobuf bytes of one request for `spans`, one resource per process in it, in pid
    /// order.
    pub fn encode(&mut self, mut spans: Vec<SpanRecord>) -> Vec<u8> {
        spans.sort_by_key(|span| span.pid);
        let clock = self.clock;
        self.lengths.clear();
        let scratch = &mut self.scratch;
        self.lengths
            .extend(spans.iter().map(|span| span_len(clock, span, scratch)));
        let scope_len = self.scope.encoded_len();
        // Per process: its resource's bytes (read once, so both passes see the same) and the
        // length of its spans as fields.
        let mut groups = Vec::new();
        let mut at = 0;
        for group in spans.chunk_by(|a, b| a.pid == b.pid) {
            let spans_len: usize = self.lengths[at..at + group.len()]
                .iter()
                .map(|len| field_len(2, *len))
                .sum();
            at += group.len();
            groups.push((self.resources.get(group[0].pid).encode_to_vec(), spans_len));
        }
        let total: usize = groups
            .iter()
            .map(|(resource, spans_len)| {
                field_len(1, resource_spans_len(resource.len(), scope_len, *spans_len))
            })
            .sum();
        let mut out = Vec::with_capacity(total);
        let mut lengths = self.lengths.iter();
        for (group, (resource, spans_len)) in spans.chunk_by(|a, b| a.pid == b.pid).zip(&groups) {
            // ResourceSpans { resource, scope_spans: [ScopeSpans { scope, spans }] }
            put_len_field(
                &mut out,
                1,
                resource_spans_len(resource.len(), scope_len, *spans_len),
            );
            put_bytes(&mut out, 1, resource);
            put_len_field(&mut out, 2, field_len(1, scope_len) + spans_len);
            put_len_field(&mut out, 1, scope_len);
            // Into a Vec: encoding cannot fail.
            let _ = self.scope.encode(&mut out);
            for (span, len) in group.iter().zip(&mut lengths) {
                put_len_field(&mut out, 2, *len);
                put_span(&mut out, clock, span, &mut self.scratch);
            }
        }
        debug_assert_eq!(out.len(), total);
        out
    }
}

fn resource_spans_len(resource_len: usize, scope_len: usize, spans_len: usize) -> usize {
    field_len(1, resource_len) + field_len(2, field_len(1, scope_len) + spans_len)
}

/// The sampling threshold the tail sampler kept the span at (OTel's `ot=th:`), as its
/// tracestate `ot=th:...` in `scratch`; None when it has none.
fn trace_state<'a>(record: &SpanRecord, scratch: &'a mut String) -> Option<&'a str> {
    scratch.clear();
    scratch.push_str("ot=");
    let threshold = record.sampling_threshold?;
    threshold
        .write_tracestate(scratch)
        .then_some(scratch.as_str())
}

fn kind(record: &SpanRecord) -> u64 {
    match record.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    }
}

/// A span's encoded length (its fields, not its own tag and length).
fn span_len(clock: WallClock, record: &SpanRecord, scratch: &mut String) -> usize {
    let mut len = field_len(1, 16) + field_len(2, 8);
    len += trace_state(record, scratch).map_or(0, |state| str_len(3, state));
    if record.parent_span_id.is_some() {
        len += field_len(4, 8);
    }
    len += tag_len(16) + 4; // flags
    len += str_len(5, &record.name);
    len += tag_len(6) + varint_len(kind(record));
    len += fixed64_len(7, clock.to_unix_ns(record.start_ns));
    len += fixed64_len(8, clock.to_unix_ns(record.end_ns));
    len += attributes_len(9, &record.attributes);
    len += field_len(
        9,
        key_value_len("thread.id", &AttrValue::Int(i64::from(record.tid))),
    );
    len += record
        .events
        .iter()
        .map(|event| field_len(11, event_len(clock, event)))
        .sum::<usize>();
    len += field_len(15, status_len(record.error.as_deref()));
    len
}

fn put_span(out: &mut Vec<u8>, clock: WallClock, record: &SpanRecord, scratch: &mut String) {
    put_bytes(out, 1, &record.trace_id.to_be_bytes());
    put_bytes(out, 2, &record.span_id.to_be_bytes());
    if let Some(state) = trace_state(record, scratch) {
        put_str(out, 3, state);
    }
    if let Some(parent) = record.parent_span_id {
        put_bytes(out, 4, &parent.to_be_bytes());
    }
    put_str(out, 5, &record.name);
    put_tag(out, 6, VARINT);
    put_varint(out, kind(record));
    put_fixed64(out, 7, clock.to_unix_ns(record.start_ns));
    put_fixed64(out, 8, clock.to_unix_ns(record.end_ns));
    for (key, value) in &record.attributes {
        put_key_value(out, 9, key, value);
    }
    put_key_value(out, 9, "thread.id", &AttrValue::Int(i64::from(record.tid)));
    for event in &record.events {
        put_len_field(out, 11, event_len(clock, event));
        put_fixed64(out, 1, clock.to_unix_ns(event.time_ns));
        put_str(out, 2, event.name);
        for (key, value) in &event.attributes {
            put_key_value(out, 3, key, value);
        }
    }
    let error = record.error.as_deref();
    put_len_field(out, 15, status_len(error));
    if let Some(message) = error {
        put_str(out, 2, message);
        put_tag(out, 3, VARINT);
        put_varint(out, STATUS_CODE_ERROR);
    }
    // Field 16 comes after 15: prost writes fields in tag order.
    put_tag(out, 16, FIXED32);
    out.extend_from_slice(&(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE).to_le_bytes());
}

fn event_len(clock: WallClock, event: &SpanEvent) -> usize {
    fixed64_len(1, clock.to_unix_ns(event.time_ns))
        + str_len(2, event.name)
        + attributes_len(3, &event.attributes)
}

/// `Status { message, code }`: empty (OK is the default) unless the span failed.
fn status_len(error: Option<&str>) -> usize {
    error.map_or(0, |message| {
        str_len(2, message) + tag_len(3) + varint_len(STATUS_CODE_ERROR)
    })
}

fn attributes_len(field: u32, attributes: &[(&'static str, AttrValue)]) -> usize {
    attributes
        .iter()
        .map(|(key, value)| field_len(field, key_value_len(key, value)))
        .sum()
}

/// `KeyValue { key, value: Some(AnyValue) }`.
fn key_value_len(key: &str, value: &AttrValue) -> usize {
    str_len(1, key) + field_len(2, any_value_len(value))
}

fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &AttrValue) {
    let value_len = any_value_len(value);
    put_len_field(out, field, str_len(1, key) + field_len(2, value_len));
    put_str(out, 1, key);
    put_len_field(out, 2, value_len);
    put_any_value(out, value);
}

/// `AnyValue`: its one value is written whatever it holds (a oneof), empty string and 0 too.
fn any_value_len(value: &AttrValue) -> usize {
    match value {
        AttrValue::Str(text) => field_len(1, text.len()),
        AttrValue::Bool(_) => tag_len(2) + 1,
        AttrValue::Int(n) => tag_len(3) + varint_len(*n as u64),
        AttrValue::Float(_) => tag_len(4) + 8,
        AttrValue::StrArray(items) => field_len(5, array_len(items)),
    }
}

/// `ArrayValue { values: [AnyValue { string_value }] }`.
fn array_len(items: &[std::borrow::Cow<'static, str>]) -> usize {
    items
        .iter()
        .map(|item| field_len(1, field_len(1, item.len())))
        .sum()
}

fn put_any_value(out: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Str(text) => put_bytes(out, 1, text.as_bytes()),
        AttrValue::Bool(b) => {
            put_tag(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        AttrValue::Int(n) => {
            put_tag(out, 3, VARINT);
            put_varint(out, *n as u64);
        }
        AttrValue::Float(f) => {
            put_tag(out, 4, FIXED64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        AttrValue::StrArray(items) => {
            put_len_field(out, 5, array_len(items));
            for item in items {
                put_len_field(out, 1, field_len(1, item.len()));
                put_bytes(out, 1, item.as_bytes());
            }
        }
    }
}

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// A length-delimited field holding `len` bytes: tag, length, bytes.
fn field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

/// A string field: absent when empty (proto3's default).
fn str_len(field: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        field_len(field, text.len())
    }
}

/// A fixed64 field: absent when 0.
fn fixed64_len(field: u32, value: u64) -> usize {
    if value == 0 { 0 } else { tag_len(field) + 8 }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_len_field(out: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(out, field, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_field(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, field: u32, text: &str) {
    if !text.is_empty() {
        put_bytes(out, field, text.as_bytes());
    }
}

fn put_fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_tag(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, ArrayValue, KeyValue, any_value},
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
    };

    use super::*;
    use crate::spans::{OpType, model::Text};

    /// The request as prost's own message structs give it (what the encoder did before it wrote
    /// bytes itself): the reference the bytes are held to.
    fn reference(encoder: &mut Encoder, mut spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        spans.sort_by_key(|span| span.pid);
        let mut resource_spans: Vec<ResourceSpans> = Vec::new();
        let mut current: Option<u32> = None;
        for record in spans {
            if current != Some(record.pid) {
                current = Some(record.pid);
                resource_spans.push(ResourceSpans {
                    resource: Some(encoder.resources.get(record.pid).clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(encoder.scope.clone()),
                        spans: Vec::new(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
            let span = reference_span(encoder.clock, record);
            resource_spans
                .last_mut()
                .unwrap()
                .scope_spans
                .last_mut()
                .unwrap()
                .spans
                .push(span);
        }
        ExportTraceServiceRequest { resource_spans }
    }

    fn reference_span(clock: WallClock, record: SpanRecord) -> Span {
        let trace_state = crate::sampling::tracestate(&record)
            .map(|threshold| format!("ot={threshold}"))
            .unwrap_or_default();
        let mut attributes: Vec<KeyValue> = record
            .attributes
            .into_iter()
            .map(|(key, value)| key_value(key, value))
            .collect();
        attributes.push(key_value(
            "thread.id",
            AttrValue::Int(i64::from(record.tid)),
        ));
        Span {
            trace_id: record.trace_id.to_be_bytes().to_vec(),
            span_id: record.span_id.to_be_bytes().to_vec(),
            trace_state,
            parent_span_id: record
                .parent_span_id
                .map(|id| id.to_be_bytes().to_vec())
                .unwrap_or_default(),
            flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
            name: record.name.into_string(),
            kind: match record.kind {
                SpanKind::Server => span::SpanKind::Server,
                SpanKind::Client => span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: clock.to_unix_ns(record.start_ns),
            end_time_unix_nano: clock.to_unix_ns(record.end_ns),
            attributes,
            dropped_attributes_count: 0,
            events: record
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
                .collect(),
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
            value: Some(any_value_of(value)),
            ..Default::default()
        }
    }

    fn any_value_of(value: AttrValue) -> AnyValue {
        let value = match value {
            AttrValue::Str(text) => any_value::Value::StringValue(text.into_string()),
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

    /// Spans of every shape the fields can take: every attribute type (empty strings, 0,
    /// negative and huge numbers, empty and long arrays), events, errors, a sampling
    /// threshold, no parent and a parent, empty names, timestamps at 0, long values whose
    /// lengths take several varint bytes, across processes.
    fn variety() -> Vec<SpanRecord> {
        let mut spans = Vec::new();
        for i in 0..40u64 {
            let mut span = record(10 + (i % 3) as u32, i + 1, (i % 2 == 1).then_some(i));
            span.name = if i % 7 == 0 {
                Text::Static("")
            } else {
                Text::Owned("x".repeat((i * 13) as usize))
            };
            span.start_ns = if i % 5 == 0 { 0 } else { i * 1_000_003 };
            span.end_ns = span.start_ns + i * 17;
            span.error = (i % 4 == 0).then(|| "é".repeat(i as usize));
            span.sampling_threshold =
                (i % 6 == 0).then(|| crate::sampling::Threshold::of_ratio(1.0 / (i as f64 + 1.0)));
            span.tid = (i as u32).wrapping_mul(0x9e37_79b9);
            span.attributes.extend([
                ("empty", AttrValue::from("")),
                ("zero", AttrValue::Int(0)),
                ("negative", AttrValue::Int(-(i as i64) - 1)),
                ("huge", AttrValue::Int(i64::MAX - i as i64)),
                ("float", AttrValue::Float(i as f64 * 0.25 - 3.0)),
                ("yes", AttrValue::Bool(i % 2 == 0)),
                (
                    "long",
                    AttrValue::Str(Text::Owned("q".repeat(100 * i as usize))),
                ),
                (
                    "list",
                    AttrValue::StrArray(
                        (0..i % 4)
                            .map(|n| Cow::Owned("y".repeat(n as usize * 70)))
                            .collect(),
                    ),
                ),
            ]);
            if i % 3 == 0 {
                span.events.clear();
            }
            spans.push(span);
        }
        spans
    }

    #[test]
    fn the_bytes_are_prosts_byte_for_byte() {
        let mut encoder = Encoder::new(Resources::new(Some("svc".into())));
        for spans in [variety(), vec![record(7, 1, None)], Vec::new()] {
            let expected = reference(&mut encoder, spans.clone());
            let bytes = encoder.encode(spans);
            // The message first (a readable difference), then every byte.
            let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
            assert!(decoded == expected, "decodes to another request");
            let expected = expected.encode_to_vec();
            let first = bytes.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                first.is_none() && bytes.len() == expected.len(),
                "first difference at byte {first:?}, lengths {} and {}",
                bytes.len(),
                expected.len()
            );
        }
    }

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
            name: format!("GET /{span_id}").into(),
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
        let bytes = encoder.encode(vec![
            record(20, 1, None),
            record(10, 2, Some(1)),
            record(20, 3, Some(1)),
        ]);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
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
