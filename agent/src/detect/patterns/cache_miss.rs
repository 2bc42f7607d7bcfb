//! `cache_miss_slow_fill`: a cache read that missed, then, in the same request, a slow call or
//! query, then a cache write of the same key: cache-aside's slow miss path. What the miss cost
//! the request is the time from the miss to the write that filled the cache.

use super::{Finding, Pattern, event, ms};
use crate::{
    detect::tree::{Tree, label},
    spans::{AttrValue, OpType, SpanRecord},
};

fn missed(span: &SpanRecord) -> bool {
    matches!(span.attr("loupe.cache.hit"), Some(AttrValue::Bool(false)))
}

/// A cache command that neither hit nor missed: a write.
fn writes(span: &SpanRecord) -> bool {
    span.op == OpType::CacheClient && span.attr("loupe.cache.hit").is_none()
}

pub fn detect(tree: &Tree<'_>, findings: &mut Vec<Finding>) {
    let children = tree.children;
    for (miss_at, miss) in children.iter().enumerate() {
        let Some(key) = miss.cache_key.filter(|_| missed(miss)) else {
            continue;
        };
        // The slow work after the miss, then the write of the same key after that work.
        let fill = children.iter().enumerate().find(|(_, fill)| {
            matches!(fill.op, OpType::HttpClient | OpType::DbClient)
                && fill.is_slow()
                && fill.start_ns >= miss.end_ns
        });
        let Some((fill_at, fill)) = fill else {
            continue;
        };
        let write = children.iter().enumerate().find(|(_, write)| {
            writes(write) && write.cache_key == Some(key) && write.start_ns >= fill.end_ns
        });
        let Some((write_at, write)) = write else {
            continue;
        };
        let (start, _) = tree.clipped(miss);
        let (_, end) = tree.clipped(write);
        let cost = end.saturating_sub(start);
        let (miss_text, fill_text) = (label(miss), label(fill));
        findings.push(Finding {
            pattern: Pattern::CacheMissSlowFill,
            cost_ns: cost,
            children: vec![miss_at, fill_at, write_at],
            advice: format!(
                "a cache miss ({miss_text}) cost {:.0} ms: it was filled by {fill_text}, which is \
                 slow; warm the cache ahead of requests, or serve the stale value while one \
                 request refreshes it",
                ms(cost)
            ),
            event: event(
                Pattern::CacheMissSlowFill,
                miss.start_ns,
                vec![
                    ("miss", miss_text.into()),
                    ("fill", fill_text.into()),
                    ("cost_ms", ms(cost).into()),
                ],
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::patterns::testing::*;

    fn cache(text: &str, key: u64, hit: Option<bool>, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut span = call("127.0.0.1", 6379, "/", start_ms, end_ms);
        span.op = OpType::CacheClient;
        span.attributes.clear();
        span.set("db.system.name", "redis");
        span.set("db.query.text", text.to_owned());
        if let Some(hit) = hit {
            span.set("loupe.cache.hit", hit);
        }
        span.cache_key = Some(key);
        span
    }

    fn slow(mut span: SpanRecord) -> SpanRecord {
        span.set("performance.slow", true);
        span
    }

    #[test]
    fn a_miss_filled_by_slow_work_then_written_back_is_named_with_its_cost() {
        let parent = server(0, 400);
        let children = [
            cache("GET ?", 7, Some(false), 0, 2),
            slow(call("10.0.0.1", 8081, "/price", 3, 350)),
            cache("SET ? ? ? ?", 7, None, 351, 353),
        ];
        let mut found = Vec::new();
        detect(&Tree::new(&parent, &children), &mut found);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pattern, Pattern::CacheMissSlowFill);
        assert_eq!(found[0].cost_ns, 353 * MS);
        assert_eq!(found[0].children, vec![0, 1, 2]);
        assert!(
            found[0].advice.contains("cost 353 ms"),
            "{}",
            found[0].advice
        );
    }

    #[test]
    fn a_hit_a_fast_fill_or_another_key_is_no_slow_fill() {
        let parent = server(0, 400);
        let mut found = Vec::new();
        let hit = [
            cache("GET ?", 7, Some(true), 0, 2),
            slow(call("10.0.0.1", 8081, "/price", 3, 350)),
            cache("SET ? ? ? ?", 7, None, 351, 353),
        ];
        detect(&Tree::new(&parent, &hit), &mut found);
        let fast = [
            cache("GET ?", 7, Some(false), 0, 2),
            call("10.0.0.1", 8081, "/price", 3, 350),
            cache("SET ? ? ? ?", 7, None, 351, 353),
        ];
        detect(&Tree::new(&parent, &fast), &mut found);
        let other_key = [
            cache("GET ?", 7, Some(false), 0, 2),
            slow(call("10.0.0.1", 8081, "/price", 3, 350)),
            cache("SET ? ? ? ?", 8, None, 351, 353),
        ];
        detect(&Tree::new(&parent, &other_key), &mut found);
        let no_write = [
            cache("GET ?", 7, Some(false), 0, 2),
            slow(call("10.0.0.1", 8081, "/price", 3, 350)),
        ];
        detect(&Tree::new(&parent, &no_write), &mut found);
        assert!(found.is_empty(), "{found:?}");
    }
}
