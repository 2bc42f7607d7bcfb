//! The pattern detectors: pure functions from a finished server span and its children to
//! [`Finding`]s. Each lives in its own file with its unit tests.

mod cache_miss;
mod n_plus_one;
mod oversized;
mod repeated;
mod sequential;
mod slow_dependency;

use super::tree::Tree;
use crate::{
    config::DiagnosisConfig,
    spans::{AttrValue, SpanEvent},
};

/// A named anti-pattern (the values of `performance.patterns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    NPlusOne,
    SequentialCalls,
    RepeatedCall,
    OversizedResponse,
    SlowDependency,
    CacheMissSlowFill,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NPlusOne => "n_plus_one",
            Self::SequentialCalls => "sequential_calls",
            Self::RepeatedCall => "repeated_call",
            Self::OversizedResponse => "oversized_response",
            Self::SlowDependency => "slow_dependency",
            Self::CacheMissSlowFill => "cache_miss_slow_fill",
        }
    }

    /// Its flag attribute, `performance.pattern.<name>` = true.
    pub fn tag(self) -> &'static str {
        match self {
            Self::NPlusOne => "performance.pattern.n_plus_one",
            Self::SequentialCalls => "performance.pattern.sequential_calls",
            Self::RepeatedCall => "performance.pattern.repeated_call",
            Self::OversizedResponse => "performance.pattern.oversized_response",
            Self::SlowDependency => "performance.pattern.slow_dependency",
            Self::CacheMissSlowFill => "performance.pattern.cache_miss_slow_fill",
        }
    }

    /// The pattern in plain words, for the diagnosis line.
    pub fn words(self) -> &'static str {
        match self {
            Self::NPlusOne => "N+1 queries",
            Self::SequentialCalls => "sequential calls",
            Self::RepeatedCall => "repeated call",
            Self::OversizedResponse => "oversized response",
            Self::SlowDependency => "slow dependency",
            Self::CacheMissSlowFill => "cache miss with a slow fill",
        }
    }
}

/// One pattern found in one request, with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub pattern: Pattern,
    /// Time the pattern cost the request, in ns (what the report ranks by).
    pub cost_ns: u64,
    /// The child spans involved (indexes into the tree's children); empty for the request's own
    /// response.
    pub children: Vec<usize>,
    /// One line of advice in plain words, with this request's numbers.
    pub advice: String,
    /// The span event that carries the evidence.
    pub event: SpanEvent,
}

/// Runs every detector on `tree`.
pub fn detect(tree: &Tree<'_>, config: &DiagnosisConfig) -> Vec<Finding> {
    let mut findings = Vec::new();
    if tree.children.is_empty() {
        // Only the request's own response can be wrong: the common case stays cheap.
        oversized::detect(tree, config, &mut findings);
        return findings;
    }
    n_plus_one::detect(tree, config, &mut findings);
    sequential::detect(tree, config, &mut findings);
    repeated::detect(tree, &mut findings);
    oversized::detect(tree, config, &mut findings);
    slow_dependency::detect(tree, &mut findings);
    cache_miss::detect(tree, &mut findings);
    findings
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

fn event(pattern: Pattern, time_ns: u64, attributes: Vec<(&'static str, AttrValue)>) -> SpanEvent {
    SpanEvent {
        name: pattern.as_str(),
        time_ns,
        attributes,
    }
}

/// `1.5 MiB`, `800 KiB`, `512 B`.
fn bytes_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Synthetic span trees for the detectors' tests.

    use crate::spans::{OpType, SpanKind, SpanRecord};

    pub const MS: u64 = 1_000_000;

    pub fn server(start_ms: u64, end_ms: u64) -> SpanRecord {
        SpanRecord {
            trace_id: 1,
            span_id: 100,
            parent_span_id: None,
            kind: SpanKind::Server,
            op: OpType::HttpServer,
            name: "GET /orders".into(),
            start_ns: start_ms * MS,
            end_ns: end_ms * MS,
            attributes: Vec::new(),
            error: None,
            pid: 1,
            tid: 1,
            events: Vec::new(),
            call_key: None,
            cache_key: None,
            sampling_threshold: None,
            sampled_out: false,
        }
    }

    fn child(op: OpType, name: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut span = server(start_ms, end_ms);
        span.kind = SpanKind::Client;
        span.op = op;
        span.name = name.to_owned().into();
        span.span_id = start_ms * 1000 + end_ms;
        span.parent_span_id = Some(100);
        span
    }

    /// A query of `fingerprint` with exact text `text` to 127.0.0.1:5432.
    pub fn query(text: &str, fingerprint: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut span = child(OpType::DbClient, "SELECT users", start_ms, end_ms);
        span.set("db.query.text", text.to_owned());
        span.set("loupe.db.fingerprint", fingerprint.to_owned());
        span.set("db.operation.name", "SELECT");
        span.set("server.address", "127.0.0.1");
        span.set("server.port", 5432i64);
        span.call_key = Some(crate::spans::model::call_key(&[text]));
        span
    }

    /// An HTTP call to `host:port` `path`.
    pub fn call(host: &str, port: i64, path: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut span = child(OpType::HttpClient, &format!("GET {path}"), start_ms, end_ms);
        span.set("http.request.method", "GET");
        span.set("url.template", path.to_owned());
        span.set("server.address", host.to_owned());
        span.set("server.port", port);
        span.set("http.response.body.size", 10i64);
        span.call_key = Some(crate::spans::model::call_key(&[
            "GET",
            host,
            &port.to_string(),
            path,
        ]));
        span
    }
}
