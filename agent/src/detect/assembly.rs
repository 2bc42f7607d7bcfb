//! Holds each request's client spans until the request itself finishes, then writes the verdict
//! and releases the whole tree at once. A span waits exactly as long as its tree needs: server
//! spans and parentless calls pass straight through, and a child goes out with its parent.
//!
//! Bounded: a tree whose parent never comes (the request was never answered) is released
//! undiagnosed after [`HOLD_LIMIT_NS`], and past [`MAX_HELD_BYTES`] held (each span's size
//! estimated: its record, name, attributes and events) a new child goes out at once; both count
//! the calls that left without a verdict (`trees_undiagnosed`).
//!
//! Each tree's sampling decision ([`crate::sampling`]) is written here, when the tree is whole;
//! the calls that leave without their request follow the request's decision.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use rustc_hash::FxHashMap as HashMap;

use super::{board::ProblemBoard, round3, verdict};
use crate::{
    config::DiagnosisConfig,
    ledger::Ledger,
    sampling::{SamplingConfig, TailSampler},
    spans::{AttrValue, SpanKind, SpanRecord},
    stats::Counters,
};

/// Longest a child waits for its parent.
pub const HOLD_LIMIT_NS: u64 = 120_000_000_000;
/// Most bytes of child spans held at once (estimated by [`held_size`]): calls with long query
/// texts weigh what they hold, not one each.
pub const MAX_HELD_BYTES: usize = 64 << 20;
/// How long a finished request with calls is remembered for a call that finishes after it. (A
/// request whose every call finished after it is not remembered, to keep the common case of a
/// request without calls free: such a call waits for the hold limit and is counted.)
const RECENT_NS: u64 = 10_000_000_000;
const MAX_RECENT: usize = 65_536;

struct Held {
    children: Vec<SpanRecord>,
    first_ns: u64,
}

/// The diagnosis stage's state.
pub struct Diagnoser {
    config: DiagnosisConfig,
    held: HashMap<u64, Held>,
    held_spans: usize,
    /// Their estimated size.
    held_bytes: usize,
    /// Finished requests by span id: (start, end, remembered at).
    recent: HashMap<u64, (u64, u64)>,
    recent_order: VecDeque<(u64, u64)>,
    board: Arc<Mutex<ProblemBoard>>,
    counters: Arc<Counters>,
    sampler: TailSampler,
    /// The statistics every span counts in, sampled out or not.
    ledger: Option<Arc<Mutex<Ledger>>>,
}

impl Diagnoser {
    pub fn new(
        config: DiagnosisConfig,
        board: Arc<Mutex<ProblemBoard>>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            config,
            held: HashMap::default(),
            held_spans: 0,
            held_bytes: 0,
            recent: HashMap::default(),
            recent_order: VecDeque::new(),
            board,
            counters,
            sampler: TailSampler::default(),
            ledger: None,
        }
    }

    /// Counts every span in `ledger`'s statistics.
    pub fn with_ledger(mut self, ledger: Arc<Mutex<Ledger>>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Samples the trees as `config` says (the default keeps every tree).
    pub fn with_sampling(mut self, config: &SamplingConfig) -> Self {
        self.sampler = TailSampler::new(config);
        self
    }

    /// Takes a finished span; pushes to `out` whatever is ready to export. `now_ns` is the
    /// monotonic clock.
    pub fn push(&mut self, mut span: SpanRecord, now_ns: u64, out: &mut Vec<SpanRecord>) {
        if span.kind == SpanKind::Client
            && let Some(ledger) = &self.ledger
        {
            ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record_call(&span, now_ns);
        }
        match (span.kind, span.parent_span_id) {
            (SpanKind::Server, _) => self.finish_tree(span, now_ns, out),
            (SpanKind::Client, Some(parent)) => {
                if let Some(&(start, end)) = self.recent.get(&parent) {
                    // Finished after its request: it gets its share, the verdict is written.
                    let total = end.saturating_sub(start);
                    if total > 0 {
                        let own = span
                            .end_ns
                            .min(end)
                            .saturating_sub(span.start_ns.max(start));
                        span.set(
                            "performance.share_of_parent",
                            round3(own as f64 / total as f64),
                        );
                    }
                    self.sampler.call(&mut span, now_ns);
                    out.push(span);
                } else if self.held_bytes + held_size(&span) > MAX_HELD_BYTES {
                    Counters::add(&self.counters.trees_undiagnosed, 1);
                    self.sampler.call(&mut span, now_ns);
                    out.push(span);
                } else {
                    self.held_spans += 1;
                    self.held_bytes += held_size(&span);
                    self.held
                        .entry(parent)
                        .or_insert_with(|| Held {
                            children: Vec::new(),
                            first_ns: now_ns,
                        })
                        .children
                        .push(span);
                }
            }
            (SpanKind::Client, None) => {
                self.sampler.call(&mut span, now_ns);
                out.push(span);
            }
        }
    }

    fn finish_tree(&mut self, mut parent: SpanRecord, now_ns: u64, out: &mut Vec<SpanRecord>) {
        let mut children = match self.held.remove(&parent.span_id) {
            Some(held) => {
                self.forget(&held);
                held.children
            }
            None => Vec::new(),
        };
        let findings = verdict::diagnose(&mut parent, &mut children, &self.config);
        if let Some(ledger) = &self.ledger {
            ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record_request(&mut parent, &children, now_ns);
        }
        let (hits, misses) = cache_reads(&children);
        if hits + misses > 0 {
            parent.set("loupe.cache.hits", hits as i64);
            parent.set("loupe.cache.misses", misses as i64);
        }
        if (!findings.is_empty() || hits + misses > 0)
            && let Ok(mut board) = self.board.lock()
        {
            board.record_request(&parent.name, &findings, &parent, &children);
            if hits + misses > 0 {
                board.record_cache(&parent.name, hits, misses);
            }
        }
        if !children.is_empty() {
            self.remember(parent.span_id, (parent.start_ns, parent.end_ns), now_ns);
        }
        self.sampler.tree(&mut parent, &mut children, now_ns);
        out.push(parent);
        out.append(&mut children);
    }

    fn remember(&mut self, span_id: u64, window: (u64, u64), now_ns: u64) {
        if self.recent.len() >= MAX_RECENT
            && let Some((old, _)) = self.recent_order.pop_front()
        {
            self.recent.remove(&old);
        }
        self.recent.insert(span_id, window);
        self.recent_order.push_back((span_id, now_ns));
    }

    /// Releases trees whose parent is overdue and forgets old finished requests.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<SpanRecord>) {
        let overdue: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, held)| now_ns.saturating_sub(held.first_ns) > HOLD_LIMIT_NS)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.release(id, now_ns, out);
        }
        while let Some(&(id, at)) = self.recent_order.front() {
            if now_ns.saturating_sub(at) <= RECENT_NS {
                break;
            }
            self.recent_order.pop_front();
            self.recent.remove(&id);
        }
    }

    /// Releases everything still held (at shutdown).
    pub fn finish(&mut self, out: &mut Vec<SpanRecord>) {
        let ids: Vec<u64> = self.held.keys().copied().collect();
        let now_ns = self.sampler.now_ns();
        for id in ids {
            self.release(id, now_ns, out);
        }
    }

    fn release(&mut self, id: u64, now_ns: u64, out: &mut Vec<SpanRecord>) {
        if let Some(mut held) = self.held.remove(&id) {
            self.forget(&held);
            Counters::add(&self.counters.trees_undiagnosed, held.children.len() as u64);
            self.sampler.calls(&mut held.children, now_ns);
            out.append(&mut held.children);
        }
    }

    fn forget(&mut self, held: &Held) {
        self.held_spans -= held.children.len();
        self.held_bytes -= held.children.iter().map(held_size).sum::<usize>();
    }

    /// Child spans waiting for their request.
    pub fn held(&self) -> usize {
        self.held_spans
    }

    /// Their estimated size in bytes.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

/// What holding `span` costs, estimated: its record and what it owns on the heap.
pub fn held_size(span: &SpanRecord) -> usize {
    fn attributes(attributes: &[(&'static str, AttrValue)]) -> usize {
        attributes
            .iter()
            .map(|(_, value)| {
                size_of::<(&str, AttrValue)>()
                    + match value {
                        AttrValue::Str(text) => text.len(),
                        AttrValue::StrArray(items) => items
                            .iter()
                            .map(|item| size_of_val(item) + item.len())
                            .sum(),
                        AttrValue::Int(_) | AttrValue::Float(_) | AttrValue::Bool(_) => 0,
                    }
            })
            .sum()
    }
    size_of::<SpanRecord>()
        + span.name.len()
        + span.error.as_ref().map_or(0, String::len)
        + attributes(&span.attributes)
        + span
            .events
            .iter()
            .map(|event| size_of_val(event) + attributes(&event.attributes))
            .sum::<usize>()
}

/// How many of a request's cache reads hit, and how many missed.
fn cache_reads(children: &[SpanRecord]) -> (u64, u64) {
    let mut counts = (0, 0);
    for child in children {
        match child.attr("loupe.cache.hit") {
            Some(AttrValue::Bool(true)) => counts.0 += 1,
            Some(AttrValue::Bool(false)) => counts.1 += 1,
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::patterns::testing::*;

    fn diagnoser() -> Diagnoser {
        Diagnoser::new(
            DiagnosisConfig::default(),
            Arc::new(Mutex::new(ProblemBoard::default())),
            Arc::new(Counters::default()),
        )
    }

    #[test]
    fn children_wait_for_their_request_and_leave_with_it() {
        let mut d = diagnoser();
        let mut out = Vec::new();
        for i in 0..6 {
            d.push(
                query(&format!("SELECT u WHERE id = {i}"), "f", i * 10, i * 10 + 5),
                0,
                &mut out,
            );
        }
        assert!(out.is_empty(), "held until the request ends");
        assert_eq!(d.held(), 6);
        d.push(server(0, 100), 0, &mut out);
        assert_eq!(out.len(), 7);
        assert_eq!(out[0].kind, SpanKind::Server);
        assert!(out[0].attr("performance.patterns").is_some());
        assert_eq!(d.held(), 0);
        let board = d.board.lock().unwrap();
        assert_eq!(board.rows().len(), 1);
    }

    #[test]
    fn parentless_calls_and_lonely_requests_pass_straight_through() {
        let mut d = diagnoser();
        let mut out = Vec::new();
        let mut root = call("10.0.0.1", 80, "/x", 0, 5);
        root.parent_span_id = None;
        d.push(root, 0, &mut out);
        d.push(server(0, 5), 0, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_child_finishing_after_its_request_gets_its_share() {
        let mut d = diagnoser();
        let mut out = Vec::new();
        d.push(call("10.0.0.1", 80, "/a", 0, 10), 0, &mut out);
        d.push(server(0, 100), 0, &mut out);
        out.clear();
        d.push(call("10.0.0.1", 80, "/late", 50, 150), 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].attr("performance.share_of_parent"),
            Some(&crate::spans::AttrValue::Float(0.5))
        );
    }

    #[test]
    fn held_calls_are_bounded_by_their_size_and_the_overflow_counted() {
        let mut d = diagnoser();
        let mut out = Vec::new();
        // Calls with 1 MiB query texts: far fewer than a count bound would hold fit.
        let text = "x".repeat(1 << 20);
        let mut big = query(&text, "f", 0, 5);
        big.set("db.query.text", text.clone());
        let each = held_size(&big);
        assert!(each > 1 << 20, "the text is counted: {each}");
        let fit = MAX_HELD_BYTES / each;
        for _ in 0..fit + 10 {
            d.push(big.clone(), 0, &mut out);
        }
        assert_eq!(d.held(), fit);
        assert!(d.held_bytes() <= MAX_HELD_BYTES);
        assert_eq!(out.len(), 10, "the overflow goes out at once");
        assert_eq!(Counters::get(&d.counters.trees_undiagnosed), 10);
        out.clear();
        d.push(server(0, 100), 0, &mut out);
        assert_eq!(out.len(), fit + 1);
        assert_eq!((d.held(), d.held_bytes()), (0, 0));
    }

    /// A diagnoser sampling at `ratio`.
    fn sampling(ratio: f64) -> Diagnoser {
        diagnoser().with_sampling(&SamplingConfig {
            ratio,
            ..SamplingConfig::default()
        })
    }

    #[test]
    fn a_tree_is_sampled_whole_after_its_verdict_and_late_calls_follow_it() {
        use crate::sampling::REASON_KEY;
        // Ratio 0: only trees with a cause are kept.
        let mut d = sampling(0.0);
        let mut out = Vec::new();
        // A clean request with two calls, one finishing after it: all dropped.
        d.push(call("10.0.0.1", 80, "/a", 0, 10), 0, &mut out);
        d.push(server(0, 100), 0, &mut out);
        d.push(call("10.0.0.1", 80, "/late", 50, 150), 1, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| s.sampled_out), "{out:?}");
        out.clear();
        // An N+1 request: its pattern keeps it, with every call, at threshold 0.
        let mut d = sampling(0.0);
        for i in 0..6 {
            d.push(
                query(&format!("SELECT u WHERE id = {i}"), "f", i * 10, i * 10 + 5),
                0,
                &mut out,
            );
        }
        d.push(server(0, 100), 0, &mut out);
        assert_eq!(out.len(), 7);
        for span in &out {
            assert!(!span.sampled_out);
            assert_eq!(span.attr_str(REASON_KEY), Some("pattern"));
            assert_eq!(crate::sampling::tracestate(span).as_deref(), Some("th:0"));
        }
        // The problem board saw the request's findings.
        assert_eq!(d.board.lock().unwrap().rows().len(), 1);
    }

    #[test]
    fn released_orphans_are_sampled_together_on_their_trace_id() {
        let mut d = sampling(0.0);
        let mut out = Vec::new();
        let mut slow = call("10.0.0.1", 80, "/a", 0, 10);
        slow.set("performance.slow", true);
        d.push(call("10.0.0.1", 80, "/b", 0, 10), 0, &mut out);
        d.push(slow, 0, &mut out);
        d.tick(HOLD_LIMIT_NS + 1, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|s| !s.sampled_out), "one is slow: both kept");
        let mut alone = call("10.0.0.1", 80, "/cron", 0, 10);
        alone.parent_span_id = None;
        // (In the orphans' trace it would be kept: that trace has a slow span.)
        alone.trace_id = 2;
        d.push(alone, 0, &mut out);
        assert!(
            out[2].sampled_out,
            "a clean call outside any request, at ratio 0"
        );
    }

    #[test]
    fn orphans_are_released_after_the_hold_limit_and_counted() {
        let mut d = diagnoser();
        let mut out = Vec::new();
        d.push(call("10.0.0.1", 80, "/a", 0, 10), 0, &mut out);
        d.tick(HOLD_LIMIT_NS, &mut out);
        assert!(out.is_empty());
        d.tick(HOLD_LIMIT_NS + 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(Counters::get(&d.counters.trees_undiagnosed), 1);
        assert_eq!(d.held(), 0);
    }
}
