//! The verdict written on a finished request: each child's share of it, the bottleneck (the child,
//! or group of identical children, that took the most time), the patterns found and one line
//! saying it in plain words.

use std::collections::HashMap;

use super::{
    intervals::union_ns,
    patterns::{self, Finding, Pattern},
    round3,
    tree::{Tree, label},
};
use crate::{
    config::DiagnosisConfig,
    spans::{AttrValue, SpanRecord},
};

/// The bottleneck of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Bottleneck {
    pub label: String,
    /// Identical children in the group.
    pub count: usize,
    /// Time the request waited on the group (overlaps counted once), in ns.
    pub waited_ns: u64,
    /// The children in the group.
    pub children: Vec<usize>,
}

/// Writes the verdict on `parent` and its `children`; returns the patterns found.
pub fn diagnose(
    parent: &mut SpanRecord,
    children: &mut [SpanRecord],
    config: &DiagnosisConfig,
) -> Vec<Finding> {
    let findings = patterns::detect(&Tree::new(parent, children), config);
    if children.is_empty() && findings.is_empty() && !parent.is_slow() {
        // A request without calls and without a problem: nothing to say.
        return findings;
    }
    let (bottleneck, shares) = {
        let tree = Tree::new(parent, children);
        let shares: Vec<f64> = tree
            .children
            .iter()
            .map(|child| {
                let (start, end) = tree.clipped(child);
                round3(tree.share(end - start))
            })
            .collect();
        (bottleneck(&tree), shares)
    };
    for (child, share) in children.iter_mut().zip(shares) {
        child.set("performance.share_of_parent", share);
    }
    let total = parent.duration_ns();
    let share_of = |ns: u64| {
        if total == 0 {
            0.0
        } else {
            (ns as f64 / total as f64).min(1.0)
        }
    };
    if let Some(bottleneck) = &bottleneck {
        let label = match bottleneck.count {
            1 => bottleneck.label.clone(),
            n => format!("{} (x{n})", bottleneck.label),
        };
        parent.set("performance.bottleneck", label);
        parent.set(
            "performance.bottleneck_share",
            round3(share_of(bottleneck.waited_ns)),
        );
    }
    let waited_on_children = union_ns(
        children.iter().map(|child| (child.start_ns, child.end_ns)),
        (parent.start_ns, parent.end_ns),
    );
    let own = Own::of(parent, 1.0 - share_of(waited_on_children));
    let line = diagnosis_line(
        bottleneck.as_ref().map(|b| (b, share_of(b.waited_ns))),
        own,
        &findings,
        parent.is_slow(),
    );
    if let Some(line) = line {
        parent.set("performance.diagnosis", line);
    }
    if !findings.is_empty() {
        let mut names: Vec<Pattern> = findings.iter().map(|f| f.pattern).collect();
        names.sort();
        names.dedup();
        parent.set(
            "performance.patterns",
            AttrValue::StrArray(names.iter().map(|p| p.as_str().into()).collect()),
        );
        // One flag per pattern as well: stores that match tags exactly (Jaeger's search) can
        // find every request with a given pattern, whatever else it has.
        for name in &names {
            parent.set(name.tag(), true);
        }
        parent
            .events
            .extend(findings.iter().map(|finding| finding.event.clone()));
    }
    findings
}

/// The group of identical children (same label) the request waited on longest.
pub fn bottleneck(tree: &Tree<'_>) -> Option<Bottleneck> {
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, child) in tree.children.iter().enumerate() {
        groups.entry(label(child)).or_default().push(index);
    }
    groups
        .into_iter()
        .map(|(label, children)| {
            let waited_ns = union_ns(
                children
                    .iter()
                    .map(|&i| (tree.children[i].start_ns, tree.children[i].end_ns)),
                tree.window(),
            );
            Bottleneck {
                label,
                count: children.len(),
                waited_ns,
                children,
            }
        })
        // Ties go to the label first in order, so the verdict does not depend on hashing.
        .max_by(|a, b| {
            a.waited_ns
                .cmp(&b.waited_ns)
                .then_with(|| b.label.cmp(&a.label))
        })
}

/// "slow dependency: 92% of the request waited on POST credit:8081/score": the patterns found
/// lead (those of the bottleneck first), then where the time went. Time the service spent on
/// its own while its process barely ran says so: "waiting, not on CPU". None for a request with
/// nothing to say: no children, not slow, no pattern.
fn diagnosis_line(
    bottleneck: Option<(&Bottleneck, f64)>,
    own: Own,
    findings: &[Finding],
    slow: bool,
) -> Option<String> {
    let pct = |share: f64| (share * 100.0).round() as i64;
    let what = |top: &Bottleneck| match top.count {
        1 => top.label.clone(),
        n => format!("{n} x {}", top.label),
    };
    let waiting = if own.waiting {
        ", waiting, not on CPU"
    } else {
        ""
    };
    // The bottleneck's patterns first, then the others, each once.
    let mut named: Vec<Pattern> = Vec::new();
    let body = match bottleneck {
        Some((top, share)) if share >= own.share => {
            for finding in findings {
                if finding.children.iter().any(|c| top.children.contains(c))
                    && !named.contains(&finding.pattern)
                {
                    named.push(finding.pattern);
                }
            }
            format!("{}% of the request waited on {}", pct(share), what(top))
        }
        Some((top, share)) => format!(
            "{}% of the request was the service's own work{waiting}; the largest call, {}, took {}%",
            pct(own.share),
            what(top),
            pct(share)
        ),
        None if slow || !findings.is_empty() => {
            format!("no outbound calls seen: the time was the service's own work{waiting}")
        }
        None => return None,
    };
    for finding in findings {
        if !named.contains(&finding.pattern) {
            named.push(finding.pattern);
        }
    }
    if named.is_empty() {
        return Some(body);
    }
    let words: Vec<&str> = named.iter().map(|p| p.words()).collect();
    Some(format!("{}: {body}", words.join(", ")))
}

/// The request's own time (not waiting on any call): its share, and whether its process used
/// under a tenth of it on a CPU (`performance.process.cpu_ms`, on slow requests).
#[derive(Clone, Copy, Debug)]
struct Own {
    share: f64,
    waiting: bool,
}

impl Own {
    fn of(parent: &SpanRecord, share: f64) -> Self {
        let own_ms = parent.duration_ns() as f64 * share / 1e6;
        let waiting = parent
            .attr_int("performance.process.cpu_ms")
            .is_some_and(|cpu_ms| own_ms >= 10.0 && (cpu_ms as f64) < own_ms / 10.0);
        Self { share, waiting }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::patterns::testing::*;

    fn share(span: &SpanRecord) -> f64 {
        match span.attr("performance.share_of_parent") {
            Some(AttrValue::Float(share)) => *share,
            other => panic!("no share: {other:?}"),
        }
    }

    #[test]
    fn each_child_gets_its_share_and_the_largest_is_the_bottleneck() {
        let mut parent = server(0, 1000);
        let mut children = vec![
            query("SELECT 1", "a", 0, 100),
            call("10.0.0.9", 8081, "/score", 100, 900),
        ];
        children[1].set("performance.slow", true);
        let findings = diagnose(&mut parent, &mut children, &DiagnosisConfig::default());
        assert_eq!(share(&children[0]), 0.1);
        assert_eq!(share(&children[1]), 0.8);
        assert_eq!(
            parent.attr_str("performance.bottleneck"),
            Some("GET 10.0.0.9:8081/score")
        );
        assert_eq!(
            parent.attr("performance.bottleneck_share"),
            Some(&AttrValue::Float(0.8))
        );
        assert_eq!(
            parent.attr_str("performance.diagnosis"),
            Some("slow dependency: 80% of the request waited on GET 10.0.0.9:8081/score")
        );
        assert_eq!(findings.len(), 1);
        assert_eq!(
            parent.attr("performance.patterns"),
            Some(&AttrValue::StrArray(vec!["slow_dependency".into()]))
        );
        assert_eq!(
            parent.attr("performance.pattern.slow_dependency"),
            Some(&AttrValue::Bool(true))
        );
        assert_eq!(parent.events.len(), 1);
        assert_eq!(parent.events[0].name, "slow_dependency");
    }

    #[test]
    fn identical_children_are_one_bottleneck_group() {
        let mut parent = server(0, 1000);
        let mut children: Vec<SpanRecord> = (0..10)
            .map(|i| {
                query(
                    &format!("SELECT u WHERE id = {i}"),
                    "f",
                    i * 60,
                    i * 60 + 50,
                )
            })
            .collect();
        for child in &mut children {
            child.set("db.query.text", "SELECT u WHERE id = $1");
        }
        diagnose(&mut parent, &mut children, &DiagnosisConfig::default());
        assert_eq!(
            parent.attr_str("performance.bottleneck"),
            Some("SELECT u WHERE id = $1 (x10)")
        );
        assert_eq!(
            parent.attr("performance.bottleneck_share"),
            Some(&AttrValue::Float(0.5))
        );
        assert_eq!(
            parent.attr_str("performance.diagnosis"),
            Some("N+1 queries: 50% of the request waited on 10 x SELECT u WHERE id = $1")
        );
    }

    #[test]
    fn own_work_is_named_when_it_outweighs_every_call() {
        let mut parent = server(0, 1000);
        let mut children = vec![query("SELECT 1", "a", 0, 100)];
        diagnose(&mut parent, &mut children, &DiagnosisConfig::default());
        assert_eq!(
            parent.attr_str("performance.diagnosis"),
            Some(
                "90% of the request was the service's own work; the largest call, SELECT 1, took 10%"
            )
        );
        assert_eq!(parent.attr("performance.patterns"), None);
    }

    #[test]
    fn own_work_names_a_group_of_calls_with_its_count() {
        let mut parent = server(0, 1000);
        let mut children: Vec<SpanRecord> = (0..3)
            .map(|i| call("10.0.0.1", 80, "/a", i * 20, i * 20 + 10))
            .collect();
        diagnose(&mut parent, &mut children, &DiagnosisConfig::default());
        assert_eq!(
            parent.attr_str("performance.diagnosis"),
            Some(
                "repeated call: 97% of the request was the service's own work; the largest call, 3 x GET 10.0.0.1:80/a, took 3%"
            )
        );
    }

    #[test]
    fn own_time_its_process_barely_ran_is_waiting_not_on_cpu() {
        let slow = |cpu_ms: Option<i64>| {
            let mut parent = server(0, 1200);
            parent.set("performance.slow", true);
            if let Some(cpu_ms) = cpu_ms {
                parent.set("performance.process.cpu_ms", cpu_ms);
            }
            diagnose(&mut parent, &mut [], &DiagnosisConfig::default());
            parent.attr_str("performance.diagnosis").unwrap().to_owned()
        };
        assert_eq!(
            slow(Some(0)),
            "no outbound calls seen: the time was the service's own work, waiting, not on CPU"
        );
        let busy = "no outbound calls seen: the time was the service's own work";
        assert_eq!(slow(Some(1150)), busy, "a request that burnt its time");
        assert_eq!(slow(None), busy, "nothing known of its CPU");
        let mut parent = server(0, 1000);
        parent.set("performance.process.cpu_ms", 3i64);
        let mut children = vec![call("10.0.0.1", 80, "/a", 0, 100)];
        diagnose(&mut parent, &mut children, &DiagnosisConfig::default());
        assert_eq!(
            parent.attr_str("performance.diagnosis"),
            Some(
                "90% of the request was the service's own work, waiting, not on CPU; the largest call, GET 10.0.0.1:80/a, took 10%"
            )
        );
    }

    #[test]
    fn a_clean_request_without_children_carries_no_verdict() {
        let mut parent = server(0, 10);
        diagnose(&mut parent, &mut [], &DiagnosisConfig::default());
        assert!(parent.attributes.is_empty(), "{:?}", parent.attributes);
    }

    #[test]
    fn overlapping_children_never_exceed_the_request() {
        let mut parent = server(0, 100);
        let mut children: Vec<SpanRecord> =
            (0..3).map(|_| call("10.0.0.1", 80, "/a", 0, 100)).collect();
        diagnose(&mut parent, &mut children, &DiagnosisConfig::default());
        assert_eq!(
            parent.attr("performance.bottleneck_share"),
            Some(&AttrValue::Float(1.0))
        );
    }
}
