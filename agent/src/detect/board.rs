//! The problems found so far, per route and pattern: what the terminal view, `loupe report` and
//! the exit summary rank by the time each cost.

use std::collections::HashMap;

use super::patterns::{Finding, Pattern};
use crate::{
    profile::stacks::Folded,
    spans::{OpType, SpanRecord},
};

/// One route's one pattern.
#[derive(Clone, Debug)]
pub struct ProblemRow {
    pub route: String,
    pub pattern: Pattern,
    /// Requests it was found in.
    pub requests: u64,
    /// Time it cost over all of them, in ns.
    pub cost_ns: u64,
    /// The advice from the costliest occurrence.
    pub advice: String,
    /// The request it cost the most in, on one time axis (for the HTML report).
    pub worst: Option<Waterfall>,
    worst_ns: u64,
}

/// Problems by (route, pattern). Bounded: past [`ProblemBoard::MAX_ROWS`] rows, new pairs are
/// counted in `overflow` rather than kept.
#[derive(Debug, Default)]
pub struct ProblemBoard {
    rows: HashMap<(String, Pattern), ProblemRow>,
    pub overflow: u64,
    /// CPU samples of slow spans per route, by innermost frame.
    frames: HashMap<String, HashMap<String, u64>>,
    /// Profiles of routes not kept (past the route limit).
    pub frames_overflow: u64,
    /// Cache reads per route: (hits, misses).
    cache: HashMap<String, (u64, u64)>,
    /// Time slow spans waited off the CPU per route, in ns, by what they waited on
    /// (`lock in orders::reserve`).
    waits: HashMap<String, HashMap<String, u64>>,
    /// The CPU profiles of the slowest profiled spans, slowest first.
    flames: Vec<FlameEntry>,
}

/// A request and its calls on one time axis.
#[derive(Clone, Debug)]
pub struct Waterfall {
    /// `GET /api/orders/7`
    pub request: String,
    pub trace_id: String,
    pub duration_ms: f64,
    /// In start order.
    pub rows: Vec<WaterfallRow>,
}

#[derive(Clone, Debug)]
pub struct WaterfallRow {
    /// What the call did (`SELECT ... FROM orders WHERE id = ?`, `GET 127.0.0.1:8081/score`).
    pub label: String,
    /// `external`, `db` or `cache`.
    pub kind: &'static str,
    /// From the request's start.
    pub start_ms: f64,
    pub duration_ms: f64,
    pub error: bool,
}

/// The CPU profile of one slow span.
#[derive(Clone, Debug)]
pub struct FlameEntry {
    pub span: String,
    pub trace_id: String,
    pub duration_ms: f64,
    /// Folded stacks (`a;b;c`) and their sample counts, most first.
    pub folded: Vec<(String, u64)>,
}

/// Profiles kept for the HTML report: the slowest spans'.
const MAX_FLAMES: usize = 5;
/// Calls drawn in a waterfall at most.
const MAX_WATERFALL_ROWS: usize = 200;

/// `request` and its `calls` on one time axis.
pub fn waterfall(request: &SpanRecord, calls: &[SpanRecord]) -> Waterfall {
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut rows: Vec<WaterfallRow> = calls
        .iter()
        .take(MAX_WATERFALL_ROWS)
        .map(|call| WaterfallRow {
            label: super::tree::label(call),
            kind: match call.op {
                OpType::HttpClient => "external",
                OpType::DbClient => "db",
                OpType::CacheClient => "cache",
                OpType::HttpServer => "http",
            },
            start_ms: ms(call.start_ns.saturating_sub(request.start_ns)),
            duration_ms: ms(call.duration_ns()),
            error: call.error.is_some(),
        })
        .collect();
    rows.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    Waterfall {
        request: request.name.to_string(),
        trace_id: format!("{:032x}", request.trace_id),
        duration_ms: ms(request.duration_ns()),
        rows,
    }
}

/// Routes and frames kept in the hot-frame table at most.
const MAX_PROFILED_ROUTES: usize = 1_000;
const MAX_FRAMES_PER_ROUTE: usize = 1_000;

/// The routes with the largest totals, each with the shares of its largest parts:
/// `route (<what the total is>): 62% part, 30% part` lines; None when no route has any.
fn render_shares(
    by_route: &HashMap<String, HashMap<String, u64>>,
    routes: usize,
    parts: usize,
    total_is: impl Fn(u64) -> String,
) -> Option<String> {
    let mut ranked: Vec<(&String, u64)> = by_route
        .iter()
        .map(|(route, counts)| (route, counts.values().sum()))
        .filter(|(_, total)| *total > 0)
        .collect();
    if ranked.is_empty() {
        return None;
    }
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut text = String::new();
    for (route, total) in ranked.into_iter().take(routes) {
        let mut counts: Vec<(&String, &u64)> = by_route[route].iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let top: Vec<String> = counts
            .into_iter()
            .take(parts)
            .map(|(part, n)| format!("{:.0}% {part}", 100.0 * *n as f64 / total as f64))
            .collect();
        text.push_str(&format!(
            "{route} ({}): {}\n",
            total_is(total),
            top.join(", ")
        ));
    }
    Some(text)
}

impl ProblemBoard {
    pub const MAX_ROWS: usize = 10_000;

    /// Adds one finding of one request on `route`. A request with two findings of one pattern
    /// (two N+1 statements) counts once, with both costs.
    pub fn record(&mut self, route: &str, finding: &Finding) {
        self.record_at(route, finding, true, None);
    }

    fn record_at(
        &mut self,
        route: &str,
        finding: &Finding,
        new_request: bool,
        tree: Option<(&SpanRecord, &[SpanRecord])>,
    ) {
        let key = (route.to_owned(), finding.pattern);
        if !self.rows.contains_key(&key) && self.rows.len() >= Self::MAX_ROWS {
            self.overflow += 1;
            return;
        }
        let row = self.rows.entry(key).or_insert_with(|| ProblemRow {
            route: route.to_owned(),
            pattern: finding.pattern,
            requests: 0,
            cost_ns: 0,
            advice: String::new(),
            worst: None,
            worst_ns: 0,
        });
        row.requests += u64::from(new_request);
        row.cost_ns += finding.cost_ns;
        if finding.cost_ns >= row.worst_ns {
            row.worst_ns = finding.cost_ns;
            row.advice.clone_from(&finding.advice);
            if let Some((request, calls)) = tree {
                row.worst = Some(waterfall(request, calls));
            }
        }
    }

    /// Records every finding of one request (`request`, with its `calls`).
    pub fn record_request(
        &mut self,
        route: &str,
        findings: &[Finding],
        request: &SpanRecord,
        calls: &[SpanRecord],
    ) {
        let mut seen: Vec<Pattern> = Vec::new();
        for finding in findings {
            let first = !seen.contains(&finding.pattern);
            seen.push(finding.pattern);
            self.record_at(route, finding, first, Some((request, calls)));
        }
    }

    /// Keeps `span`'s CPU profile if it is among the [`MAX_FLAMES`] slowest profiled spans.
    pub fn keep_flame(&mut self, span: &SpanRecord, folded: &Folded) {
        let duration_ms = span.duration_ns() as f64 / 1e6;
        if folded.stacks.is_empty()
            || (self.flames.len() >= MAX_FLAMES
                && self
                    .flames
                    .last()
                    .is_some_and(|least| least.duration_ms >= duration_ms))
        {
            return;
        }
        self.flames.push(FlameEntry {
            span: span.name.to_string(),
            trace_id: format!("{:032x}", span.trace_id),
            duration_ms,
            folded: folded.stacks.clone(),
        });
        self.flames
            .sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        self.flames.truncate(MAX_FLAMES);
    }

    /// The slowest profiled spans' profiles, slowest first.
    pub fn flames(&self) -> &[FlameEntry] {
        &self.flames
    }

    /// Adds one request's cache reads on `route`: how many hit, how many missed.
    pub fn record_cache(&mut self, route: &str, hits: u64, misses: u64) {
        if !self.cache.contains_key(route) && self.cache.len() >= MAX_PROFILED_ROUTES {
            return;
        }
        let counts = self.cache.entry(route.to_owned()).or_default();
        counts.0 += hits;
        counts.1 += misses;
    }

    /// The routes with the most cache reads and how often those hit: `route: 75% hits of 48
    /// cache reads (12 misses)` lines, or None when no request read a cache.
    pub fn render_cache(&self, routes: usize) -> Option<String> {
        let mut ranked: Vec<(&String, u64, u64)> = self
            .cache
            .iter()
            .map(|(route, (hits, misses))| (route, *hits, *misses))
            .filter(|(_, hits, misses)| hits + misses > 0)
            .collect();
        if ranked.is_empty() {
            return None;
        }
        ranked.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then_with(|| a.0.cmp(b.0)));
        let mut text = String::new();
        for (route, hits, misses) in ranked.into_iter().take(routes) {
            let reads = hits + misses;
            text.push_str(&format!(
                "{route}: {:.0}% hits of {reads} cache reads ({misses} misses)\n",
                100.0 * hits as f64 / reads as f64
            ));
        }
        Some(text)
    }

    /// Adds the innermost frames of one slow span's CPU profile.
    pub fn record_profile(&mut self, route: &str, folded: &Folded) {
        if !self.frames.contains_key(route) && self.frames.len() >= MAX_PROFILED_ROUTES {
            self.frames_overflow += 1;
            return;
        }
        let frames = self.frames.entry(route.to_owned()).or_default();
        for (leaf, count) in &folded.leaves {
            if frames.len() < MAX_FRAMES_PER_ROUTE || frames.contains_key(leaf) {
                *frames.entry(leaf.clone()).or_default() += count;
            }
        }
    }

    /// Adds what one slow span waited on off the CPU: (what, ns) pairs.
    pub fn record_waits(&mut self, route: &str, waits: &[(String, u64)]) {
        if !self.waits.contains_key(route) && self.waits.len() >= MAX_PROFILED_ROUTES {
            self.frames_overflow += 1;
            return;
        }
        let kept = self.waits.entry(route.to_owned()).or_default();
        for (what, ns) in waits {
            if kept.len() < MAX_FRAMES_PER_ROUTE || kept.contains_key(what) {
                *kept.entry(what.clone()).or_default() += ns;
            }
        }
    }

    /// The longest waits of the routes that waited most: `route (812 ms off-CPU): 95% lock in
    /// f, 5% sleep` lines, or None when no slow span waited.
    pub fn render_waits(&self, routes: usize, frames: usize) -> Option<String> {
        render_shares(&self.waits, routes, frames, |total| {
            format!("{} ms off-CPU", total / 1_000_000)
        })
    }

    /// The hottest frames of the most sampled routes: `route: 62% frame, 30% frame` lines, or
    /// None when no slow span was profiled.
    pub fn render_hot_frames(&self, routes: usize, frames: usize) -> Option<String> {
        render_shares(&self.frames, routes, frames, |total| {
            format!("{total} samples")
        })
    }

    /// Rows, costliest first.
    pub fn rows(&self) -> Vec<ProblemRow> {
        let mut rows: Vec<ProblemRow> = self.rows.values().cloned().collect();
        rows.sort_by(|a, b| {
            b.cost_ns
                .cmp(&a.cost_ns)
                .then_with(|| a.route.cmp(&b.route))
                .then_with(|| a.pattern.cmp(&b.pattern))
        });
        rows
    }

    /// The patterns seen on `route`.
    /// Every route's patterns (sorted), in one pass: what a table of all routes shows.
    pub fn patterns_by_route(&self) -> HashMap<String, Vec<Pattern>> {
        let mut by_route: HashMap<String, Vec<Pattern>> = HashMap::new();
        for row in self.rows.values() {
            by_route
                .entry(row.route.clone())
                .or_default()
                .push(row.pattern);
        }
        for patterns in by_route.values_mut() {
            patterns.sort();
        }
        by_route
    }

    pub fn patterns_of(&self, route: &str) -> Vec<Pattern> {
        let mut patterns: Vec<Pattern> = self
            .rows
            .values()
            .filter(|row| row.route == route)
            .map(|row| row.pattern)
            .collect();
        patterns.sort();
        patterns
    }

    /// The top `limit` problems as a table (its format is a contract: docs/contracts.md), or
    /// None when there are none.
    pub fn render(&self, limit: usize) -> Option<String> {
        let rows = self.rows();
        if rows.is_empty() {
            return None;
        }
        let mut text = format!(
            "{:<32} {:<18} {:>8} {:>11}  advice\n",
            "route", "pattern", "requests", "time lost"
        );
        for row in rows.iter().take(limit) {
            text.push_str(&format!(
                "{:<32} {:<18} {:>8} {:>11}  {}\n",
                row.route,
                row.pattern.as_str(),
                row.requests,
                duration_text(row.cost_ns),
                row.advice
            ));
        }
        if rows.len() > limit {
            text.push_str(&format!("... and {} more\n", rows.len() - limit));
        }
        Some(text)
    }
}

fn duration_text(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::SpanEvent;

    fn finding(pattern: Pattern, cost_ms: u64, advice: &str) -> Finding {
        Finding {
            pattern,
            cost_ns: cost_ms * 1_000_000,
            children: Vec::new(),
            advice: advice.into(),
            event: SpanEvent {
                name: pattern.as_str(),
                time_ns: 0,
                attributes: Vec::new(),
            },
        }
    }

    #[test]
    fn rows_rank_by_time_lost_and_count_requests() {
        let mut board = ProblemBoard::default();
        board.record("GET /a", &finding(Pattern::NPlusOne, 10, "small"));
        board.record("GET /a", &finding(Pattern::NPlusOne, 30, "big"));
        board.record("GET /b", &finding(Pattern::SequentialCalls, 25, "seq"));
        let rows = board.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].route, "GET /a");
        assert_eq!(rows[0].requests, 2);
        assert_eq!(rows[0].cost_ns, 40_000_000);
        assert_eq!(rows[0].advice, "big", "advice of the costliest occurrence");
        assert_eq!(board.patterns_of("GET /b"), vec![Pattern::SequentialCalls]);
        let table = board.render(1).unwrap();
        assert!(table.contains("GET /a"), "{table}");
        assert!(table.contains("n_plus_one"), "{table}");
        assert!(table.contains("40.0 ms"), "{table}");
        assert!(table.ends_with("... and 1 more\n"), "{table}");
    }

    #[test]
    fn two_findings_of_one_pattern_in_one_request_count_one_request() {
        let mut board = ProblemBoard::default();
        let request = crate::detect::patterns::testing::server(0, 20);
        let calls = [crate::detect::patterns::testing::call(
            "10.0.0.1", 80, "/x", 12, 15,
        )];
        board.record_request(
            "GET /a",
            &[
                finding(Pattern::RepeatedCall, 5, "x"),
                finding(Pattern::RepeatedCall, 5, "y"),
            ],
            &request,
            &calls,
        );
        assert_eq!(board.rows()[0].requests, 1);
        let worst = board.rows()[0]
            .worst
            .clone()
            .expect("the worst request's waterfall");
        assert_eq!(worst.request, "GET /orders");
        assert_eq!(worst.duration_ms, 20.0);
        assert_eq!(worst.rows.len(), 1);
        assert_eq!(
            (
                worst.rows[0].kind,
                worst.rows[0].start_ms,
                worst.rows[0].duration_ms
            ),
            ("external", 12.0, 3.0)
        );
        assert_eq!(worst.rows[0].label, "GET 10.0.0.1:80/x");
        assert_eq!(board.rows()[0].cost_ns, 10_000_000);
    }

    #[test]
    fn an_empty_board_renders_nothing() {
        assert_eq!(ProblemBoard::default().render(5), None);
        assert_eq!(ProblemBoard::default().render_hot_frames(5, 3), None);
    }

    #[test]
    fn hot_frames_rank_routes_by_samples() {
        use crate::profile::stacks::{Frame, fold};
        let burn = [Frame::Named("app!burn".into())];
        let hash = [Frame::Named("libcrypto.so.3!sha256".into())];
        let mut board = ProblemBoard::default();
        board.record_profile(
            "GET /hash",
            &fold([
                (&[][..], &burn[..]),
                (&[][..], &hash[..]),
                (&[][..], &hash[..]),
            ]),
        );
        board.record_profile("GET /slow", &fold([(&[][..], &burn[..])]));
        let text = board.render_hot_frames(5, 2).unwrap();
        assert_eq!(
            text,
            "GET /hash (3 samples): 67% libcrypto.so.3!sha256, 33% app!burn\nGET /slow (1 samples): 100% app!burn\n"
        );
    }

    #[test]
    fn the_longest_waits_rank_the_routes_that_waited_most() {
        let mut board = ProblemBoard::default();
        assert_eq!(board.render_waits(5, 3), None);
        board.record_waits(
            "GET /reserve",
            &[
                ("lock in reserve".into(), 900_000_000),
                ("sleep".into(), 100_000_000),
            ],
        );
        board.record_waits("GET /slow", &[("sleep".into(), 300_000_000)]);
        board.record_waits("GET /reserve", &[("lock in reserve".into(), 1_000_000_000)]);
        assert_eq!(
            board.render_waits(5, 2).as_deref(),
            Some(
                "GET /reserve (2000 ms off-CPU): 95% lock in reserve, 5% sleep\nGET /slow (300 ms off-CPU): 100% sleep\n"
            )
        );
    }

    #[test]
    fn cache_hit_rates_rank_the_routes_that_read_most() {
        let mut board = ProblemBoard::default();
        assert_eq!(board.render_cache(5), None);
        board.record_cache("GET /a", 1, 1);
        board.record_cache("GET /b", 3, 0);
        board.record_cache("GET /a", 1, 1);
        board.record_cache("GET /none", 0, 0);
        assert_eq!(
            board.render_cache(5).as_deref(),
            Some(
                "GET /a: 50% hits of 4 cache reads (2 misses)\nGET /b: 100% hits of 3 cache reads (0 misses)\n"
            )
        );
        assert_eq!(
            board.render_cache(1).as_deref(),
            Some("GET /a: 50% hits of 4 cache reads (2 misses)\n")
        );
    }
}
