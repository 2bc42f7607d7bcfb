//! The terminal view, loupe's default: one line per finished request (with its patterns and
//! diagnosis), the outbound calls it made indented under it (they leave the diagnosis stage
//! with their request), and every so often a per-route table with percentiles and
//! the loss counters. The table keeps [`MAX_ROUTES`] routes of each kind, the least recently
//! seen forgotten first (counted: `routes_evicted`).

use std::{
    io::Write,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use lru::LruCache;
use rustc_hash::FxBuildHasher;

use crate::{
    detect::ProblemBoard,
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

/// Routes of each kind (server, client) with statistics, at most: a few KiB each.
pub const MAX_ROUTES: usize = 1_000;

type Routes = LruCache<String, RouteStats, FxBuildHasher>;

fn routes() -> Routes {
    LruCache::with_hasher(
        NonZeroUsize::new(MAX_ROUTES).unwrap_or(NonZeroUsize::MIN),
        FxBuildHasher,
    )
}

/// Prints spans and keeps per-route statistics.
pub struct TerminalView {
    out: Box<dyn Write + Send>,
    clock: WallClock,
    /// Per route, server spans then client spans.
    routes: [Routes; 2],
    counters: Arc<Counters>,
    /// The problems found per route (written by the diagnosis stage).
    board: Arc<Mutex<ProblemBoard>>,
    /// Reused for every line.
    line: String,
    /// Spans came since the last table: a table with nothing new is not printed again.
    fresh: bool,
    /// The losses line the last table ended with: a table whose losses changed is printed
    /// even without a new span (loss is a signal).
    last_losses: String,
}

/// Problems listed under the periodic table.
const TOP_PROBLEMS: usize = 5;

impl TerminalView {
    pub fn new(
        out: Box<dyn Write + Send>,
        counters: Arc<Counters>,
        board: Arc<Mutex<ProblemBoard>>,
    ) -> Self {
        Self {
            out,
            clock: WallClock::new(),
            routes: [routes(), routes()],
            counters,
            board,
            line: String::with_capacity(256),
            fresh: false,
            last_losses: String::new(),
        }
    }

    /// Prints the span's line and counts it in its route's row; a sampled-out span is only
    /// counted.
    pub fn on_span(&mut self, span: &SpanRecord) {
        self.fresh = true;
        if !span.sampled_out {
            self.line.clear();
            let end = self.clock.to_system_time(span.end_ns);
            format_line_into(&mut self.line, span, end);
            self.line.push('\n');
            // A closed stdout (piped into `head`) must not stop loupe.
            let _ = self.out.write_all(self.line.as_bytes());
            Counters::add(&self.counters.spans_exported, 1);
        }
        let routes = &mut self.routes[kind_index(span.kind)];
        // Looked up by &str: the key is allocated only for a new route.
        if !routes.contains(span.name.as_str())
            && routes
                .push(span.name.to_string(), RouteStats::new())
                .is_some()
        {
            Counters::add(&self.counters.routes_evicted, 1);
        }
        let Some(stats) = routes.get_mut(span.name.as_str()) else {
            return;
        };
        stats.count += 1;
        stats.slow += u64::from(span.is_slow());
        stats.errors += u64::from(span.error.is_some());
        let _ = stats.micros.record((span.duration_ns() / 1_000).max(1));
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }

    /// Prints the table, unless no span came since the last one (the same table again).
    pub fn print_table(&mut self, counters: &Counters) {
        let losses = counters.losses_line();
        if self.routes.iter().all(LruCache::is_empty) || (!self.fresh && losses == self.last_losses)
        {
            return;
        }
        self.fresh = false;
        // What the board says, taken under its lock; the routes are formatted after.
        let (patterns, sections) = {
            let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
            let sections = [
                ("top problems:\n", board.render(TOP_PROBLEMS)),
                (
                    "hottest frames of slow spans:\n",
                    board.render_hot_frames(TOP_PROBLEMS, 3),
                ),
                ("cache hit rates:\n", board.render_cache(TOP_PROBLEMS)),
            ];
            (board.patterns_by_route(), sections)
        };
        let mut text = String::new();
        text.push_str(&format!(
            "\n{:<6} {:<44} {:>7} {:>10} {:>10} {:>10} {:>6} {:>6}  patterns\n",
            "kind", "route", "count", "p50", "p95", "p99", "slow%", "err%"
        ));
        for kind in [SpanKind::Server, SpanKind::Client] {
            let mut rows: Vec<(&String, &RouteStats)> =
                self.routes[kind_index(kind)].iter().collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (name, stats) in rows {
                let pct = |n: u64| 100.0 * n as f64 / stats.count.max(1) as f64;
                let q =
                    |quantile: f64| format_duration_us(stats.micros.value_at_quantile(quantile));
                let patterns: Vec<&str> = match kind {
                    SpanKind::Server => patterns
                        .get(name)
                        .into_iter()
                        .flatten()
                        .map(|p| p.as_str())
                        .collect(),
                    SpanKind::Client => Vec::new(),
                };
                text.push_str(&format!(
                    "{:<6} {:<44} {:>7} {:>10} {:>10} {:>10} {:>5.1}% {:>5.1}%  {}\n",
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
                    patterns.join(","),
                ));
            }
        }
        for (title, section) in sections {
            if let Some(section) = section {
                text.push_str(title);
                text.push_str(&section);
            }
        }
        text.push_str(&format!(
            "events read {}; spans exported {} (sampled out {}), unnested calls {} (ambiguous {}); cpu samples {}, hot threads {}; losses: {}\n",
            Counters::get(&counters.events_read),
            Counters::get(&counters.spans_exported),
            Counters::get(&counters.spans_sampled_out),
            Counters::get(&counters.unnested_calls),
            Counters::get(&counters.ambiguous_calls),
            Counters::get(&counters.cpu_samples),
            Counters::get(&counters.hot_threads),
            losses,
        ));
        let _ = write!(self.out, "{text}");
        let _ = self.out.flush();
        self.last_losses = losses;
    }
}

fn kind_index(kind: SpanKind) -> usize {
    match kind {
        SpanKind::Server => 0,
        SpanKind::Client => 1,
    }
}

/// `14:03:12.345 GET /api/users/{id} 200 3.2 ms`, a client call indented with its peer, and
/// `SLOW (1.20x of 1000 ms)` after a slow one.
pub fn format_line(span: &SpanRecord, end: SystemTime) -> String {
    let mut line = String::new();
    format_line_into(&mut line, span, end);
    line
}

/// [`format_line`] into a reused buffer: no allocation per line.
pub fn format_line_into(line: &mut String, span: &SpanRecord, end: SystemTime) {
    use std::fmt::Write as _;
    let since = end.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    let _ = write!(
        line,
        "{:02}:{:02}:{:02}.{:03} ",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        since.subsec_millis()
    );
    if span.kind == SpanKind::Client {
        line.push_str("  call ");
    }
    line.push_str(&span.name);
    if span.kind == SpanKind::Client {
        match (span.attr("server.address"), span.attr("server.port")) {
            (Some(AttrValue::Str(host)), Some(AttrValue::Int(port))) => {
                let _ = write!(line, " -> {host}:{port}");
            }
            (Some(AttrValue::Str(host)), _) => {
                let _ = write!(line, " -> {host}");
            }
            _ => {}
        }
    }
    match (
        span.attr("http.response.status_code"),
        span.attr("db.response.status_code"),
        span.attr("db.response.returned_rows")
            .or(span.attr("loupe.db.affected_rows")),
    ) {
        (Some(AttrValue::Int(code)), _, _) => {
            let _ = write!(line, " {code} ");
        }
        (_, Some(AttrValue::Str(sqlstate)), _) => {
            let _ = write!(line, " SQLSTATE {sqlstate} ");
        }
        (_, _, Some(AttrValue::Int(rows))) => {
            let _ = write!(line, " {rows} rows ");
        }
        _ => line.push_str(" - "),
    }
    write_duration_us(line, span.duration_ns() / 1_000);
    if span.is_slow() {
        let ratio = match span.attr("performance.slowness_ratio") {
            Some(AttrValue::Float(ratio)) => *ratio,
            _ => 0.0,
        };
        let threshold = match span.attr("performance.threshold_ms") {
            Some(AttrValue::Int(ms)) => *ms,
            _ => 0,
        };
        let _ = write!(line, "  SLOW ({ratio:.2}x of {threshold} ms)");
    }
    if span.error.is_some() {
        line.push_str("  ERROR");
    }
    if let Some(AttrValue::StrArray(patterns)) = span.attr("performance.patterns") {
        line.push_str("  [");
        for (i, pattern) in patterns.iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            line.push_str(pattern);
        }
        line.push(']');
        if let Some(diagnosis) = span.attr_str("performance.diagnosis") {
            let _ = write!(line, " {diagnosis}");
        }
    }
}

fn format_duration_us(micros: u64) -> String {
    let mut text = String::new();
    write_duration_us(&mut text, micros);
    text
}

fn write_duration_us(out: &mut String, micros: u64) {
    use std::fmt::Write as _;
    let _ = if micros < 1_000 {
        write!(out, "{micros} us")
    } else if micros >= 1_000_000 {
        write!(out, "{:.2} s", micros as f64 / 1e6)
    } else {
        write!(out, "{:.1} ms", micros as f64 / 1e3)
    };
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
            name: name.to_owned().into(),
            start_ns: 0,
            end_ns: ms * 1_000_000,
            attributes: vec![("http.response.status_code", AttrValue::Int(200))],
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
    fn query_line_shows_rows_or_sqlstate() {
        let mut s = span(SpanKind::Client, "SELECT orders", 2);
        s.attributes.clear();
        s.set("db.response.returned_rows", 3i64);
        assert_eq!(
            format_line(&s, UNIX_EPOCH),
            "00:00:00.000   call SELECT orders 3 rows 2.0 ms"
        );
        s.set("db.response.status_code", "42P01");
        assert!(format_line(&s, UNIX_EPOCH).contains("SELECT orders SQLSTATE 42P01 2.0 ms"));
    }

    #[test]
    fn a_request_with_patterns_names_them_and_its_diagnosis() {
        let mut s = span(SpanKind::Server, "GET /orders", 90);
        s.set(
            "performance.patterns",
            AttrValue::StrArray(vec!["n_plus_one".into(), "repeated_call".into()]),
        );
        s.set(
            "performance.diagnosis",
            "80% of the request waited on 10 x SELECT",
        );
        let line = format_line(&s, UNIX_EPOCH);
        assert!(
            line.ends_with(
                "GET /orders 200 90.0 ms  [n_plus_one, repeated_call] 80% of the request waited on 10 x SELECT"
            ),
            "{line}"
        );
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_route_table_is_bounded_and_forgets_the_least_recent_route_counted() {
        let out = Shared::default();
        let counters = Arc::new(Counters::default());
        let board = Arc::new(Mutex::new(ProblemBoard::default()));
        let mut view = TerminalView::new(Box::new(out.clone()), counters.clone(), board);
        let hot = span(SpanKind::Server, "GET /hot", 1);
        for n in 0..MAX_ROUTES + 10 {
            view.on_span(&span(SpanKind::Server, &format!("GET /once/{n}"), 1));
            view.on_span(&hot);
        }
        assert_eq!(view.routes[0].len(), MAX_ROUTES);
        assert_eq!(Counters::get(&counters.routes_evicted), 11);
        assert!(
            view.routes[0].contains("GET /hot"),
            "the route in use stays"
        );
        out.0.lock().unwrap().clear();
        view.print_table(&counters);
        let table = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(table.contains("GET /hot"), "{table}");
        assert!(table.contains("routes_evicted 11"), "{table}");
        assert!(!table.contains("GET /once/0 "), "{table}");
    }

    #[test]
    fn the_table_shows_each_routes_patterns_from_the_board() {
        use crate::{
            detect::patterns::{Finding, Pattern},
            spans::SpanEvent,
        };
        let finding = Finding {
            pattern: Pattern::NPlusOne,
            cost_ns: 10_000_000,
            children: Vec::new(),
            advice: "fetch the rows in one query".into(),
            event: SpanEvent {
                name: "n_plus_one",
                time_ns: 0,
                attributes: Vec::new(),
            },
        };
        let out = Shared::default();
        let counters = Arc::new(Counters::default());
        let board = Arc::new(Mutex::new(ProblemBoard::default()));
        let mut view = TerminalView::new(Box::new(out.clone()), counters.clone(), board.clone());
        view.on_span(&span(SpanKind::Server, "GET /orders", 90));
        view.on_span(&span(SpanKind::Server, "GET /health", 1));
        board.lock().unwrap().record("GET /orders", &finding);
        view.print_table(&counters);
        let table = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = |route: &str| {
            table
                .lines()
                .find(|line| line.starts_with("server") && line.contains(route))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("GET /orders").ends_with("n_plus_one"), "{table}");
        assert!(line("GET /health").trim_end().ends_with('%'), "{table}");
        assert!(table.contains("top problems:\n"), "{table}");
    }

    #[test]
    fn a_sampled_out_span_counts_in_the_table_but_prints_no_line() {
        let out = Shared::default();
        let counters = Arc::new(Counters::default());
        let board = Arc::new(Mutex::new(ProblemBoard::default()));
        let mut view = TerminalView::new(Box::new(out.clone()), counters.clone(), board);
        let mut dropped = span(SpanKind::Server, "GET /health", 1);
        dropped.sampled_out = true;
        for _ in 0..3 {
            view.on_span(&dropped);
        }
        view.on_span(&span(SpanKind::Server, "GET /health", 1));
        let lines = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert_eq!(Counters::get(&counters.spans_exported), 1);
        Counters::add(&counters.spans_sampled_out, 3);
        out.0.lock().unwrap().clear();
        view.print_table(&counters);
        let table = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let row = table
            .lines()
            .find(|line| line.starts_with("server") && line.contains("GET /health"))
            .unwrap_or_default();
        assert_eq!(
            row.split_whitespace().nth(3),
            Some("4"),
            "all four requests in the count: {table}"
        );
        assert!(
            table.contains("spans exported 1 (sampled out 3)"),
            "{table}"
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
