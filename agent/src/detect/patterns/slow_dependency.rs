//! `slow_dependency`: a child flagged slow (over its own type's threshold) that took at least
//! half of the request.

use super::{Finding, Pattern, event, ms};
use crate::detect::{
    round3,
    tree::{Tree, label},
};

/// The share of the request a slow child must take.
const MIN_SHARE: f64 = 0.5;

pub fn detect(tree: &Tree<'_>, findings: &mut Vec<Finding>) {
    for (index, child) in tree.children.iter().enumerate() {
        if !child.is_slow() {
            continue;
        }
        let (start, end) = tree.clipped(child);
        let share = tree.share(end - start);
        if share < MIN_SHARE {
            continue;
        }
        let text = label(child);
        findings.push(Finding {
            pattern: Pattern::SlowDependency,
            cost_ns: end - start,
            children: vec![index],
            advice: format!(
                "{text} is slow and took {:.0}% of the request: look at that dependency, cache \
                 its answer or bound it with a timeout",
                share * 100.0
            ),
            event: event(
                Pattern::SlowDependency,
                child.start_ns,
                vec![
                    ("call", text.into()),
                    ("duration_ms", ms(end - start).into()),
                    ("share_of_parent", round3(share).into()),
                ],
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::patterns::testing::*;

    #[test]
    fn a_slow_child_taking_most_of_the_request_is_a_slow_dependency() {
        let parent = server(0, 1000);
        let mut slow = call("10.0.0.1", 8081, "/score", 50, 950);
        slow.set("performance.slow", true);
        let mut found = Vec::new();
        detect(&Tree::new(&parent, &[slow.clone()]), &mut found);
        assert_eq!(found.len(), 1);
        assert!(found[0].advice.contains("took 90% of the request"));

        // Slow but a small part of an even slower request: not the dependency's fault.
        let parent = server(0, 10_000);
        let mut found = Vec::new();
        detect(&Tree::new(&parent, &[slow]), &mut found);
        assert!(found.is_empty());
    }

    #[test]
    fn a_long_child_under_its_threshold_is_not_a_slow_dependency() {
        let parent = server(0, 1000);
        let fine = call("10.0.0.1", 8081, "/score", 0, 900);
        let mut found = Vec::new();
        detect(&Tree::new(&parent, &[fine]), &mut found);
        assert!(found.is_empty());
    }
}
