//! The tail sampler: one decision per request tree, written on every span of it.

use rustc_hash::FxHashMap as HashMap;

use super::{
    Decision, Reason, SamplingConfig, limit::RateLimit, memory::Memory, threshold::Threshold,
};
use crate::spans::SpanRecord;

/// Request trees whose decision is remembered for the calls that finish after them (at most; at
/// least half as many, the last ones).
pub const MAX_DECIDED: usize = 65_536;
/// Traces whose kept trees are remembered for the later trees of the same trace (at most; at
/// least half as many, the last ones).
pub const MAX_TRACES: usize = 65_536;

/// Decides which request trees are exported. Pure: the clock comes in with every call.
pub struct TailSampler {
    ratio: f64,
    routes: HashMap<String, f64>,
    limit: Option<RateLimit>,
    /// By request span id: what its tree got, for the calls that come after it.
    decided: Memory<u64, Decision>,
    /// By trace id: the strongest reason a tree of the trace was kept with, so that the later
    /// trees of a kept trace on this host (its callers, which finish after their callees, or
    /// a request whose call's tree is kept) are kept too.
    traces: Memory<u128, Decision>,
    /// The last clock seen (for the releases at shutdown).
    now_ns: u64,
}

impl Default for TailSampler {
    /// Keeps everything.
    fn default() -> Self {
        Self::new(&SamplingConfig::default())
    }
}

impl TailSampler {
    pub fn new(config: &SamplingConfig) -> Self {
        Self {
            ratio: config.ratio,
            routes: config
                .routes
                .iter()
                .map(|rule| (rule.route.clone(), rule.ratio))
                .collect(),
            limit: config.max_traces_per_second.map(RateLimit::new),
            decided: Memory::new(MAX_DECIDED),
            traces: Memory::new(MAX_TRACES),
            now_ns: 0,
        }
    }

    /// Decides the tree of a finished request (`root`, its server span) with the calls it
    /// made, and writes the decision on each of them. `now_ns` is the monotonic clock.
    pub fn tree(&mut self, root: &mut SpanRecord, children: &mut [SpanRecord], now_ns: u64) {
        let cause = cause(std::iter::once(&*root).chain(children.iter()));
        let decision = self.decide(root, cause, now_ns);
        self.decided.insert(root.span_id, decision);
        decision.write(root);
        for child in children {
            decision.write(child);
        }
    }

    /// Decides a call that leaves without its request's tree: it finished after its request
    /// (it follows the request's decision), its request never came or came too late, or it was
    /// made outside any request (a tree of its own).
    pub fn call(&mut self, span: &mut SpanRecord, now_ns: u64) {
        if span.parent_span_id.is_none() {
            let cause = cause(std::iter::once(&*span));
            self.decide(span, cause, now_ns).write(span);
        } else {
            self.calls(std::slice::from_mut(span), now_ns);
        }
    }

    /// Decides calls of one request that leave without it (released when it never came): the
    /// request's decision if it was made, else one decision for them all, on their trace id at
    /// the default ratio, not counted as a tree.
    pub fn calls(&mut self, spans: &mut [SpanRecord], now_ns: u64) {
        let Some(first) = spans.first() else {
            return;
        };
        let decision = match first
            .parent_span_id
            .and_then(|parent| self.decided.get(&parent).copied())
        {
            Some(decision) => decision,
            None => {
                let trace_id = first.trace_id;
                let cause = cause(spans.iter());
                let decision = self.decide_at(trace_id, cause, self.ratio, false, now_ns);
                self.remember_trace(trace_id, decision);
                decision
            }
        };
        for span in spans {
            decision.write(span);
        }
    }

    /// The tree's decision: its own cause, else its trace's, else its ratio (its route's or
    /// the default, lowered by the limit), else a kept tree of its trace's threshold.
    fn decide(&mut self, root: &SpanRecord, cause: Option<Reason>, now_ns: u64) -> Decision {
        let configured = self
            .routes
            .get(root.name.as_str())
            .copied()
            .unwrap_or(self.ratio);
        let decision = self.decide_at(root.trace_id, cause, configured, true, now_ns);
        self.remember_trace(root.trace_id, decision);
        decision
    }

    /// `tree`: whether it counts against the limit (a call alone is sampled at the limit's
    /// ratio without counting).
    fn decide_at(
        &mut self,
        trace_id: u128,
        cause: Option<Reason>,
        configured: f64,
        tree: bool,
        now_ns: u64,
    ) -> Decision {
        self.now_ns = self.now_ns.max(now_ns);
        let trace = self.traces.get(&trace_id).copied();
        let cause = cause.or(match trace {
            Some(Decision::Keep { reason, .. }) if reason != Reason::Ratio => Some(reason),
            _ => None,
        });
        if let Some(reason) = cause {
            if let Some(limit) = self.limit.as_mut().filter(|_| tree) {
                limit.caused(now_ns);
            }
            return Decision::Keep {
                reason,
                threshold: Threshold::ALWAYS,
            };
        }
        let factor = match self.limit.as_mut() {
            Some(limit) => {
                let factor = limit.factor(now_ns);
                if tree {
                    limit.sampled(now_ns, configured);
                }
                factor
            }
            None => 1.0,
        };
        let threshold = Threshold::of_ratio(configured * factor);
        if threshold.keeps(trace_id) {
            return Decision::Keep {
                reason: Reason::Ratio,
                threshold,
            };
        }
        match trace {
            // Another tree of the trace was kept at a lower threshold this id passes.
            Some(kept @ Decision::Keep { .. }) => kept,
            _ => Decision::Drop,
        }
    }

    /// Keeps the strongest kept decision of a trace: a cause over a ratio, a lower threshold
    /// over a higher one.
    fn remember_trace(&mut self, trace_id: u128, decision: Decision) {
        let Decision::Keep { reason, threshold } = decision else {
            return;
        };
        let stronger = match self.traces.get(&trace_id) {
            None | Some(Decision::Drop) => true,
            Some(Decision::Keep {
                reason: old_reason,
                threshold: old_threshold,
            }) => {
                *old_reason == Reason::Ratio
                    && (reason != Reason::Ratio || threshold < *old_threshold)
            }
        };
        if stronger {
            self.traces.insert(trace_id, decision);
        }
    }

    /// The clock of the last decision.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
}

/// Why a tree is kept whatever the ratio: a slow span, then an error, then a pattern.
fn cause<'a>(spans: impl Iterator<Item = &'a SpanRecord> + Clone) -> Option<Reason> {
    let any = |test: fn(&SpanRecord) -> bool| spans.clone().any(test);
    if any(SpanRecord::is_slow) {
        Some(Reason::Slow)
    } else if any(|span| span.error.is_some()) {
        Some(Reason::Error)
    } else if any(|span| span.attr("performance.patterns").is_some()) {
        Some(Reason::Pattern)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::patterns::testing::{call, server},
        sampling::{REASON_KEY, RouteRatio, threshold::SPACE},
        spans::AttrValue,
    };

    const SECOND: u64 = 1_000_000_000;

    /// A trace id whose randomness is `share` of the way up (0.95: kept at ratio 0.1).
    fn trace(share: f64, high: u64) -> u128 {
        (u128::from(high) << 64) | u128::from((share * SPACE as f64) as u64)
    }

    fn tree_of(trace_id: u128, span_id: u64, name: &str) -> (SpanRecord, Vec<SpanRecord>) {
        let mut root = server(0, 100);
        root.trace_id = trace_id;
        root.span_id = span_id;
        root.name = name.to_owned().into();
        let children = (0..2)
            .map(|n| {
                let mut child = call("10.0.0.1", 80, "/score", n * 10, n * 10 + 5);
                child.trace_id = trace_id;
                child.span_id = span_id * 10 + n;
                child.parent_span_id = Some(span_id);
                child
            })
            .collect();
        (root, children)
    }

    fn sampler(ratio: f64) -> TailSampler {
        TailSampler::new(&SamplingConfig {
            ratio,
            ..SamplingConfig::default()
        })
    }

    fn reason(span: &SpanRecord) -> Option<&str> {
        span.attr_str(REASON_KEY)
    }

    /// Runs one tree through `sampler`; returns its root and children as decided.
    fn decide(
        sampler: &mut TailSampler,
        trace_id: u128,
        span_id: u64,
        mark: impl Fn(&mut SpanRecord, &mut [SpanRecord]),
    ) -> (SpanRecord, Vec<SpanRecord>) {
        let (mut root, mut children) = tree_of(trace_id, span_id, "GET /orders");
        mark(&mut root, &mut children);
        sampler.tree(&mut root, &mut children, SECOND);
        (root, children)
    }

    fn whole(root: &SpanRecord, children: &[SpanRecord]) -> Option<(bool, Option<Threshold>)> {
        let first = (root.sampled_out, root.sampling_threshold);
        children
            .iter()
            .all(|c| (c.sampled_out, c.sampling_threshold) == first)
            .then_some(first)
    }

    #[test]
    fn the_ratio_decides_on_the_trace_id_and_the_whole_tree_follows() {
        let mut s = sampler(0.1);
        let (root, children) = decide(&mut s, trace(0.95, 1), 1, |_, _| {});
        assert_eq!(
            whole(&root, &children),
            Some((false, Some(Threshold::of_ratio(0.1))))
        );
        assert!(children.iter().all(|c| reason(c) == Some("ratio")));
        assert_eq!(reason(&root), Some("ratio"));

        let (root, children) = decide(&mut s, trace(0.85, 1), 2, |_, _| {});
        assert_eq!(whole(&root, &children), Some((true, None)));
        assert_eq!(reason(&root), None);
        assert!(children.iter().all(|c| reason(c).is_none()));
    }

    #[test]
    fn slow_failed_and_pattern_trees_are_always_kept_at_threshold_zero() {
        let mut s = sampler(0.0);
        type Mark = fn(&mut SpanRecord, &mut [SpanRecord]);
        let marks: [(&str, Mark); 4] = [
            ("slow", |_, children| {
                children[1].set("performance.slow", true)
            }),
            ("error", |root, _| root.error = Some("HTTP 500".into())),
            ("pattern", |root, _| {
                root.set(
                    "performance.patterns",
                    AttrValue::StrArray(vec!["n_plus_one".into()]),
                )
            }),
            // Slow wins over an error.
            ("slow", |root, children| {
                root.set("performance.slow", true);
                children[0].error = Some("HTTP 404".into());
            }),
        ];
        for (n, (expected, mark)) in marks.into_iter().enumerate() {
            let (root, children) = decide(&mut s, trace(0.01, n as u64), n as u64 + 1, mark);
            assert_eq!(
                whole(&root, &children),
                Some((false, Some(Threshold::ALWAYS))),
                "{expected}"
            );
            assert_eq!(reason(&root), Some(expected));
            assert!(children.iter().all(|c| reason(c) == Some(expected)));
        }
    }

    #[test]
    fn a_call_after_its_request_follows_the_requests_decision() {
        let mut s = sampler(0.1);
        let (root, _) = decide(&mut s, trace(0.5, 1), 7, |_, _| {});
        assert!(root.sampled_out);
        // A late call of the dropped request: dropped, even slow (the tree stays whole).
        let mut late = call("10.0.0.1", 80, "/late", 50, 150);
        late.trace_id = root.trace_id;
        late.parent_span_id = Some(7);
        late.set("performance.slow", true);
        s.call(&mut late, SECOND);
        assert!(late.sampled_out);

        let (kept, _) = decide(&mut s, trace(0.5, 2), 8, |root, _| {
            root.error = Some("HTTP 500".into())
        });
        let mut late = call("10.0.0.1", 80, "/late", 50, 150);
        late.trace_id = kept.trace_id;
        late.parent_span_id = Some(8);
        s.call(&mut late, SECOND);
        assert!(!late.sampled_out);
        assert_eq!(reason(&late), Some("error"));
        assert_eq!(late.sampling_threshold, Some(Threshold::ALWAYS));
    }

    #[test]
    fn calls_without_a_known_request_are_sampled_on_their_own_trace_id() {
        let mut s = sampler(0.1);
        for (share, span_id, kept) in [(0.95, 1, true), (0.5, 2, false)] {
            // Outside any request.
            let mut alone = call("10.0.0.1", 80, "/cron", 0, 5);
            alone.parent_span_id = None;
            alone.trace_id = trace(share, span_id);
            s.call(&mut alone, SECOND);
            assert_eq!(!alone.sampled_out, kept);
            // Its request never seen.
            let mut orphan = call("10.0.0.1", 80, "/a", 0, 5);
            orphan.parent_span_id = Some(1_000 + span_id);
            orphan.trace_id = trace(share, 100 + span_id);
            s.call(&mut orphan, SECOND);
            assert_eq!(!orphan.sampled_out, kept);
        }
        let mut slow = call("10.0.0.1", 80, "/a", 0, 5);
        slow.parent_span_id = None;
        slow.trace_id = trace(0.0, 9);
        slow.set("performance.slow", true);
        s.call(&mut slow, SECOND);
        assert_eq!(reason(&slow), Some("slow"));
    }

    #[test]
    fn a_trace_kept_for_a_cause_keeps_its_later_trees_on_this_host() {
        let mut s = sampler(0.0);
        let id = trace(0.3, 5);
        // The callee's tree finishes first, failed.
        let (callee, _) = decide(&mut s, id, 1, |root, _| {
            root.error = Some("HTTP 500".into())
        });
        assert_eq!(reason(&callee), Some("error"));
        // Its caller's tree, clean, after it.
        let (caller, children) = decide(&mut s, id, 2, |_, _| {});
        assert_eq!(
            whole(&caller, &children),
            Some((false, Some(Threshold::ALWAYS)))
        );
        assert_eq!(reason(&caller), Some("error"));
        // Another trace is not affected.
        let (other, _) = decide(&mut s, trace(0.3, 6), 3, |_, _| {});
        assert!(other.sampled_out);
    }

    #[test]
    fn routes_have_their_own_ratio_and_a_kept_trace_keeps_its_lower_ratio_trees() {
        let config = SamplingConfig {
            ratio: 0.5,
            routes: vec![RouteRatio {
                route: "GET /health".into(),
                ratio: 0.0,
            }],
            max_traces_per_second: None,
        };
        let mut s = TailSampler::new(&config);
        let (mut root, mut children) = tree_of(trace(0.99, 1), 1, "GET /health");
        s.tree(&mut root, &mut children, SECOND);
        assert!(root.sampled_out, "ratio 0: none kept");
        let (orders, _) = decide(&mut s, trace(0.6, 1), 2, |_, _| {});
        assert_eq!(
            reason(&orders),
            Some("ratio"),
            "the default ratio elsewhere"
        );

        // A tree of the trace kept at 0.5 first: the /health tree of the same trace follows it,
        // with the threshold that kept it.
        let id = trace(0.7, 2);
        let (orders, _) = decide(&mut s, id, 3, |_, _| {});
        assert_eq!(reason(&orders), Some("ratio"));
        let (mut root, mut children) = tree_of(id, 4, "GET /health");
        s.tree(&mut root, &mut children, SECOND);
        assert_eq!(
            whole(&root, &children),
            Some((false, Some(Threshold::of_ratio(0.5))))
        );
    }

    #[test]
    fn the_limit_lowers_the_ratio_but_never_drops_a_caused_tree() {
        let mut s = TailSampler::new(&SamplingConfig {
            ratio: 1.0,
            routes: Vec::new(),
            max_traces_per_second: Some(100),
        });
        let mut state = 1u64;
        let mut kept = [0u32; 3];
        for second in 1..=3u64 {
            for n in 0..1_000u64 {
                // A simple LCG spreads the ids over the whole space.
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let id = (u128::from(n) << 64) | u128::from(state >> 8);
                let (mut root, mut children) = tree_of(id, second * 10_000 + n, "GET /x");
                if n % 100 == 0 {
                    root.set("performance.slow", true);
                }
                s.tree(&mut root, &mut children, second * SECOND + n);
                if !root.sampled_out {
                    kept[second as usize - 1] += 1;
                }
                if n % 100 == 0 {
                    assert_eq!(reason(&root), Some("slow"));
                }
            }
        }
        // The first second had no history: everything. Then about 100 (10 slow + ~90).
        assert_eq!(kept[0], 1_000);
        for n in &kept[1..] {
            assert!((60..=140).contains(n), "{kept:?}");
        }
    }

    #[test]
    fn what_is_remembered_is_bounded() {
        let mut s = sampler(0.5);
        for n in 0..(MAX_DECIDED as u64 + 100) {
            let (mut root, mut children) = tree_of(u128::from(n) << 8, n + 1, "GET /x");
            s.tree(&mut root, &mut children, SECOND);
        }
        assert!(s.decided.len() <= MAX_DECIDED);
        assert!(s.decided.len() >= MAX_DECIDED / 2);
        assert!(s.traces.len() <= MAX_TRACES);
        assert_eq!(s.now_ns(), SECOND);
    }
}
