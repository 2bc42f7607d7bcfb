//! The terminal view, loupe's default: one line per finished request, the outbound calls it made
//! indented under it as they finish, and every so often a per-route table with percentiles and
//! the loss counters.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;

use crate::{
    spans::{AttrValue, SpanKind, SpanRecord, clock::WallClock},
    stats::Counters,
};

struct RouteStats {
    count: u64,
    slow: u64,
    errors: u64,
    /// Durations in microseconds.
    micros: Histogram<u64>,
}

impl RouteStats {
    fn new() -> Self {
        Self {
            count: 0,
            slow: 0,
            errors: 0,
            // 1 us .. 1 h at 2 significant digits: a few KiB per route.
            micros: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("static bounds are valid"),
        }
    }
}

/// Prints spans and keeps per-route statistics.
pub struct TerminalView {
    out: Box<dyn Write + Send>,
    clock: WallClock,
    routes: BTreeMap<(SpanKind, String), RouteStats>,
    counters: Arc<Counters>,
}

impl TerminalView {
    pub fn new(out: Box<dyn Write + Send>, counters: Arc<Counters>) -> Self {
        Self {
            out,
            clock: WallClock::new(),
            routes: BTreeMap::new(),
            counters,
        }
    }

    pub fn on_span(&mut self, span: &SpanRecord) {
        let line = format_line(span, self.clock.to_system_time(span.end_ns));
        // A closed stdout (piped into `head`) must not stop loupe.
        let _ = writeln!(self.out, "{line}");
        Counters::add(&self.counters.spans_exported, 1);
        let stats = self
            .routes
            .entry((span.kind, span.name.clone()))
            .or_insert_with(RouteStats::new);
        stats.count += 1;
        stats.slow += u64::from(is_slow(span));
        stats.errors += u64::from(span.error.is_some());
        let _ = stats.micros.record((span.duration_ns() / 1_000).max(1));
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }

    pub fn print_table(&mut self, counters: &Counters) {
        if self.routes.is_empty() {
            return;
        }
        let mut text = String::new();
        text.push_str(&format!(
            "\n{:<6} {:<44} {:>7} {:>10} {:>10} {:>10} {:>6} {:>6}\n",
            "kind", "route", "count", "p50", "p95", "p99", "slow%", "err%"
        ));
        for ((kind, name), stats) in &self.routes {
            let pct = |n: u64| 100.0 * n as f64 / stats.count.max(1) as f64;
            let q = |quantile: f64| format_duration_us(stats.micros.value_at_quantile(quantile));
            text.push_str(&format!(
                "{:<6} {:<44} {:>7} {:>10} {:>10} {:>10} {:>5.1}% {:>5.1}%\n",
                match kind {
                    SpanKind::Server => "server",
                    SpanKind::Client => "client",
                },
                truncate(name, 44),
                stats.count,
                q(0.50),
                q(0.95),
                q(0.99),
                pct(stats.slow),
                pct(stats.errors),
            ));
        }
        text.push_str(&format!(
            "events read {}, lost {}, decode errors {}; spans dropped {}, unnested calls {}\n",
            Counters::get(&counters.events_read),
            Counters::get(&counters.events_lost_kernel),
            Counters::get(&counters.decode_errors),
            Counters::get(&counters.spans_dropped),
            Counters::get(&counters.unnested_calls),
        ));
        let _ = write!(self.out, "{text}");
        let _ = self.out.flush();
    }
}

fn is_slow(span: &SpanRecord) -> bool {
    matches!(span.attr("performance.slow"), Some(AttrValue::Bool(true)))
}

/// `14:03:12.345 GET /api/users/{id} 200 3.2 ms`, a client call indented with its peer, and
/// `SLOW (1.20x of 1000 ms)` after a slow one.
pub fn format_line(span: &SpanRecord, end: SystemTime) -> String {
    let status = match span.attr("http.response.status_code") {
        Some(AttrValue::Int(code)) => code.to_string(),
        _ => "-".to_owned(),
    };
    let duration = format_duration_us(span.duration_ns() / 1_000);
    let mut line = match span.kind {
        SpanKind::Server => format!("{} {} {status} {duration}", wall_time(end), span.name),
        SpanKind::Client => {
            let peer = match (span.attr("server.address"), span.attr("server.port")) {
                (Some(AttrValue::Str(host)), Some(AttrValue::Int(port))) => {
                    format!(" -> {host}:{port}")
                }
                (Some(AttrValue::Str(host)), _) => format!(" -> {host}"),
                _ => String::new(),
            };
            format!(
                "{}   call {}{peer} {status} {duration}",
                wall_time(end),
                span.name
            )
        }
    };
    if is_slow(span) {
        let ratio = match span.attr("performance.slowness_ratio") {
            Some(AttrValue::Float(ratio)) => *ratio,
            _ => 0.0,
        };
        let threshold = match span.attr("performance.threshold_ms") {
            Some(AttrValue::Int(ms)) => *ms,
            _ => 0,
        };
        line.push_str(&format!("  SLOW ({ratio:.2}x of {threshold} ms)"));
    }
    if span.error.is_some() {
        line.push_str("  ERROR");
    }
    line
}

fn wall_time(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        since.subsec_millis()
    )
}

fn format_duration_us(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros} us")
    } else if micros >= 1_000_000 {
        format!("{:.2} s", micros as f64 / 1e6)
    } else {
        format!("{:.1} ms", micros as f64 / 1e3)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spans::OpType;

    fn span(kind: SpanKind, name: &str, ms: u64) -> SpanRecord {
        SpanRecord {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            kind,
            op: OpType::HttpServer,
            name: name.into(),
            start_ns: 0,
            end_ns: ms * 1_000_000,
            attributes: vec![("http.response.status_code", AttrValue::Int(200))],
            error: None,
            pid: 1,
            tid: 1,
        }
    }

    #[test]
    fn server_line_names_method_route_status_and_duration() {
        let at = UNIX_EPOCH + Duration::from_millis(3_723_004);
        let line = format_line(&span(SpanKind::Server, "GET /api/users/{id}", 3), at);
        assert_eq!(line, "01:02:03.004 GET /api/users/{id} 200 3.0 ms");
    }

    #[test]
    fn slow_and_failed_spans_are_marked() {
        let mut s = span(SpanKind::Server, "GET /api/slow", 1200);
        s.set("performance.slow", true);
        s.set("performance.threshold_ms", 1000i64);
        s.set("performance.slowness_ratio", 1.2);
        s.error = Some("HTTP 500".into());
        let line = format_line(&s, UNIX_EPOCH);
        assert!(
            line.ends_with("GET /api/slow 200 1.20 s  SLOW (1.20x of 1000 ms)  ERROR"),
            "{line}"
        );
    }

    #[test]
    fn client_line_is_indented_with_its_peer() {
        let mut s = span(SpanKind::Client, "GET /score", 5);
        s.set("server.address", "127.0.0.1");
        s.set("server.port", 8081i64);
        let line = format_line(&s, UNIX_EPOCH);
        assert_eq!(
            line,
            "00:00:00.000   call GET /score -> 127.0.0.1:8081 200 5.0 ms"
        );
    }
}
