//! Which metric a span counts in and under which label values, and those values as one key.

use std::fmt::Write as _;

use crate::spans::{OpType, SpanRecord};

/// Most labels a metric has.
pub const MAX_LABELS: usize = 9;

/// The three metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    HttpServer,
    HttpClient,
    DbClient,
}

impl Family {
    pub const ALL: [Self; 3] = [Self::HttpServer, Self::HttpClient, Self::DbClient];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Its Prometheus name (the OTel name, dots as underscores, with its unit).
    pub fn name(self) -> &'static str {
        match self {
            Self::HttpServer => "http_server_request_duration_seconds",
            Self::HttpClient => "http_client_request_duration_seconds",
            Self::DbClient => "db_client_operation_duration_seconds",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Self::HttpServer => {
                "Duration of HTTP server requests (OpenTelemetry http.server.request.duration)."
            }
            Self::HttpClient => {
                "Duration of HTTP client requests (OpenTelemetry http.client.request.duration)."
            }
            Self::DbClient => {
                "Duration of database client operations, PostgreSQL queries and Redis commands (OpenTelemetry db.client.operation.duration)."
            }
        }
    }

    /// Its OpenTelemetry name (its unit is seconds).
    pub fn otel_name(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server.request.duration",
            Self::HttpClient => "http.client.request.duration",
            Self::DbClient => "db.client.operation.duration",
        }
    }

    /// Its labels' OpenTelemetry attribute names, in [`Self::label_names`]' order.
    pub fn otel_attributes(self) -> &'static [&'static str] {
        match self {
            Self::HttpServer => &[
                "service.name",
                "http.request.method",
                "url.scheme",
                "http.route",
                "http.response.status_code",
                "error.type",
            ],
            Self::HttpClient => &[
                "service.name",
                "http.request.method",
                "server.address",
                "server.port",
                "http.response.status_code",
                "error.type",
            ],
            Self::DbClient => &[
                "service.name",
                "db.system.name",
                "db.namespace",
                "db.operation.name",
                "db.collection.name",
                "server.address",
                "server.port",
                "db.response.status_code",
                "error.type",
            ],
        }
    }

    /// Its labels, in the order [`labels`] gives their values.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Self::HttpServer => &[
                "service_name",
                "http_request_method",
                "url_scheme",
                "http_route",
                "http_response_status_code",
                "error_type",
            ],
            Self::HttpClient => &[
                "service_name",
                "http_request_method",
                "server_address",
                "server_port",
                "http_response_status_code",
                "error_type",
            ],
            Self::DbClient => &[
                "service_name",
                "db_system_name",
                "db_namespace",
                "db_operation_name",
                "db_collection_name",
                "server_address",
                "server_port",
                "db_response_status_code",
                "error_type",
            ],
        }
    }
}

/// One label's value; an absent one is not written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Absent,
    Str(&'a str),
    Int(i64),
}

/// The metric `span` counts in and its label values (the first `label_names().len()`).
pub fn labels<'a>(span: &'a SpanRecord, service: &'a str) -> (Family, [Value<'a>; MAX_LABELS]) {
    let text = |key| span.attr_str(key).map_or(Value::Absent, Value::Str);
    let int = |key| span.attr_int(key).map_or(Value::Absent, Value::Int);
    let status = span.attr_int("http.response.status_code");
    // error.type: the status code, where the status is an error for the span's side.
    let http_error = |from: i64| match status {
        Some(code) if code >= from => Value::Int(code),
        _ => Value::Absent,
    };
    let method = Value::Str(method(span.attr_str("http.request.method")));
    let service = Value::Str(service);
    let mut values = [Value::Absent; MAX_LABELS];
    let family = match span.op {
        OpType::HttpServer => {
            values[..6].copy_from_slice(&[
                service,
                method,
                text("url.scheme"),
                text("http.route"),
                int("http.response.status_code"),
                http_error(500),
            ]);
            Family::HttpServer
        }
        OpType::HttpClient => {
            values[..6].copy_from_slice(&[
                service,
                method,
                text("server.address"),
                int("server.port"),
                int("http.response.status_code"),
                http_error(400),
            ]);
            Family::HttpClient
        }
        OpType::DbClient | OpType::CacheClient => {
            let code = text("db.response.status_code");
            let error = match (&span.error, code) {
                (None, _) => Value::Absent,
                (Some(_), Value::Absent) => Value::Str("_OTHER"),
                (Some(_), code) => code,
            };
            values.copy_from_slice(&[
                service,
                text("db.system.name"),
                text("db.namespace"),
                text("db.operation.name"),
                text("db.collection.name"),
                text("server.address"),
                int("server.port"),
                code,
                error,
            ]);
            Family::DbClient
        }
    };
    (family, values)
}

/// The method as the semantic conventions bound it: a known one, else `_OTHER`.
fn method(method: Option<&str>) -> &'static str {
    method
        .and_then(crate::protocols::http1::known_method)
        .unwrap_or("_OTHER")
}

/// Writes `values` as one key, each `<length>:<text>` (an absent one is empty), so that two
/// label sets share a key only if they are the same. `number` is scratch space.
pub fn encode(values: &[Value<'_>], key: &mut String, number: &mut String) {
    key.clear();
    for value in values {
        let text = match value {
            Value::Absent => "",
            Value::Str(text) => text,
            Value::Int(n) => {
                number.clear();
                let _ = write!(number, "{n}");
                number.as_str()
            }
        };
        let _ = write!(key, "{}:{text}", text.len());
    }
}

/// The label values a key was made of.
pub fn decode(mut key: &str) -> Vec<String> {
    let mut values = Vec::new();
    while let Some((length, rest)) = key.split_once(':') {
        let Ok(length) = length.parse::<usize>() else {
            break;
        };
        let Some(value) = rest.get(..length) else {
            break;
        };
        values.push(value.to_owned());
        key = &rest[length..];
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{Actor, SpanIds, SpanKind, http::new_span};

    fn span(
        op: OpType,
        attributes: &[(&'static str, &'static str)],
        status: Option<i64>,
    ) -> SpanRecord {
        let ids = SpanIds {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            unnested: None,
        };
        let kind = match op {
            OpType::HttpServer => SpanKind::Server,
            _ => SpanKind::Client,
        };
        let mut span = new_span(kind, op, "n", (0, 1), ids, Actor { pid: 1, tid: 1 });
        for (key, value) in attributes {
            span.set(key, *value);
        }
        if let Some(status) = status {
            span.set("http.response.status_code", status);
        }
        span
    }

    fn named(family: Family, values: &[Value<'_>]) -> Vec<(&'static str, String)> {
        family
            .label_names()
            .iter()
            .zip(values)
            .filter_map(|(name, value)| match value {
                Value::Absent => None,
                Value::Str(text) => Some((*name, (*text).to_owned())),
                Value::Int(n) => Some((*name, n.to_string())),
            })
            .collect()
    }

    #[test]
    fn each_kind_of_span_has_its_metric_and_semantic_convention_labels() {
        let server = span(
            OpType::HttpServer,
            &[
                ("http.request.method", "PATCH"),
                ("url.scheme", "https"),
                ("http.route", "/a/{id}"),
                ("url.path", "/a/7"),
            ],
            Some(503),
        );
        let (family, values) = labels(&server, "shop");
        assert_eq!(family, Family::HttpServer);
        assert_eq!(
            named(family, &values),
            [
                ("service_name", "shop".to_owned()),
                ("http_request_method", "PATCH".to_owned()),
                ("url_scheme", "https".to_owned()),
                ("http_route", "/a/{id}".to_owned()),
                ("http_response_status_code", "503".to_owned()),
                ("error_type", "503".to_owned()),
            ]
        );
        let client = span(
            OpType::HttpClient,
            &[
                ("http.request.method", "get"),
                ("server.address", "db.local"),
            ],
            Some(302),
        );
        let (family, values) = labels(&client, "shop");
        assert_eq!(family, Family::HttpClient);
        assert_eq!(
            named(family, &values),
            [
                ("service_name", "shop".to_owned()),
                ("http_request_method", "_OTHER".to_owned()),
                ("server_address", "db.local".to_owned()),
                ("http_response_status_code", "302".to_owned()),
            ],
            "methods are case-sensitive; a redirect is no error"
        );
        let (family, _) = labels(&span(OpType::CacheClient, &[], None), "shop");
        assert_eq!(
            family,
            Family::DbClient,
            "Redis commands are database calls"
        );
        for family in Family::ALL {
            assert!(family.label_names().len() <= MAX_LABELS);
        }
    }

    #[test]
    fn a_key_is_its_label_values_and_no_two_sets_share_one() {
        let (mut key, mut number) = (String::new(), String::new());
        let values = [
            Value::Str("a:b"),
            Value::Absent,
            Value::Int(-42),
            Value::Str(""),
        ];
        encode(&values, &mut key, &mut number);
        assert_eq!(decode(&key), vec!["a:b", "", "-42", ""]);
        let mut other = String::new();
        encode(
            &[Value::Str("a"), Value::Str("b:")],
            &mut other,
            &mut number,
        );
        let mut third = String::new();
        encode(&[Value::Str("a:b"), Value::Absent], &mut third, &mut number);
        assert_ne!(other, third);
    }
}
