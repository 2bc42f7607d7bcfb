//! `performance.slow`: a span longer than its type's threshold carries the flag, the threshold
//! and how many times over it ran.

use crate::{
    config::Thresholds,
    spans::{OpType, SpanRecord},
};

/// The threshold that applies to `op`.
pub fn threshold_for(op: OpType, thresholds: &Thresholds) -> std::time::Duration {
    match op {
        OpType::HttpServer => thresholds.http,
        OpType::HttpClient => thresholds.external,
        OpType::DbClient => thresholds.db,
        OpType::CacheClient => thresholds.cache,
    }
}

/// Flags `span` when it ran longer than its threshold; returns whether it did.
pub fn mark_slow(span: &mut SpanRecord, thresholds: &Thresholds) -> bool {
    let threshold = threshold_for(span.op, thresholds);
    let threshold_ns = threshold.as_nanos() as u64;
    let duration_ns = span.duration_ns();
    if threshold_ns == 0 || duration_ns <= threshold_ns {
        return false;
    }
    let ratio = duration_ns as f64 / threshold_ns as f64;
    span.set("performance.slow", true);
    span.set("performance.threshold_ms", threshold.as_millis() as i64);
    span.set(
        "performance.slowness_ratio",
        (ratio * 100.0).round() / 100.0,
    );
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{detect::patterns::testing::server, spans::AttrValue};

    fn span(op: OpType, duration_ms: u64) -> SpanRecord {
        let mut span = server(0, duration_ms);
        span.op = op;
        span
    }

    const THRESHOLDS: Thresholds = Thresholds {
        http: Duration::from_secs(1),
        external: Duration::from_secs(2),
        db: Duration::from_millis(500),
        cache: Duration::from_millis(100),
    };

    #[test]
    fn server_span_over_its_threshold_is_flagged_with_ratio() {
        let mut s = span(OpType::HttpServer, 1500);
        assert!(mark_slow(&mut s, &THRESHOLDS));
        assert_eq!(s.attr("performance.slow"), Some(&AttrValue::Bool(true)));
        assert_eq!(
            s.attr("performance.threshold_ms"),
            Some(&AttrValue::Int(1000))
        );
        assert_eq!(
            s.attr("performance.slowness_ratio"),
            Some(&AttrValue::Float(1.5))
        );
    }

    #[test]
    fn each_type_uses_its_own_threshold() {
        let mut client = span(OpType::HttpClient, 1500);
        assert!(
            !mark_slow(&mut client, &THRESHOLDS),
            "1.5s is fine for an external call"
        );
        assert_eq!(client.attr("performance.slow"), None);
        let mut client = span(OpType::HttpClient, 2100);
        assert!(mark_slow(&mut client, &THRESHOLDS));
        assert_eq!(
            client.attr("performance.threshold_ms"),
            Some(&AttrValue::Int(2000))
        );
    }

    #[test]
    fn queries_use_the_database_threshold() {
        let mut query = span(OpType::DbClient, 600);
        assert!(mark_slow(&mut query, &THRESHOLDS));
        assert_eq!(
            query.attr("performance.threshold_ms"),
            Some(&AttrValue::Int(500))
        );
    }

    #[test]
    fn span_at_exactly_the_threshold_is_not_slow() {
        let mut s = span(OpType::HttpServer, 1000);
        assert!(!mark_slow(&mut s, &THRESHOLDS));
    }
}
