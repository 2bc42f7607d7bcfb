//! `n_plus_one`: at least --n-plus-one-min queries of one statement (same fingerprint), run one
//! after another. Queries of one statement issued concurrently are a batch, not N+1.

use std::collections::BTreeMap;

use super::{Finding, Pattern, event, ms};
use crate::{
    config::DiagnosisConfig,
    detect::{
        intervals::{sequential_chain, union_ns},
        tree::{Tree, label, statement},
    },
};

pub fn detect(tree: &Tree<'_>, config: &DiagnosisConfig, findings: &mut Vec<Finding>) {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, query) in tree.queries() {
        if let Some(statement) = statement(query) {
            groups.entry(statement).or_default().push(index);
        }
    }
    for members in groups.into_values() {
        if members.len() < config.n_plus_one_min {
            continue;
        }
        let spans = || members.iter().map(|&i| &tree.children[i]);
        let in_a_row = sequential_chain(spans().map(|s| (s.start_ns, s.end_ns)));
        if in_a_row < config.n_plus_one_min {
            continue;
        }
        let total = union_ns(spans().map(|s| (s.start_ns, s.end_ns)), tree.window());
        let first = spans().min_by_key(|s| s.start_ns).unwrap_or(tree.parent);
        let text = label(first);
        let count = members.len();
        findings.push(Finding {
            pattern: Pattern::NPlusOne,
            cost_ns: total,
            advice: format!(
                "{count} queries of one statement per request ({text}): fetch the rows in one \
                 query (an IN list or a JOIN)"
            ),
            event: event(
                Pattern::NPlusOne,
                first.start_ns,
                vec![
                    ("db.query.text", text.into()),
                    ("count", (count as i64).into()),
                    ("total_ms", ms(total).into()),
                    (
                        "share_of_parent",
                        super::super::round3(tree.share(total)).into(),
                    ),
                ],
            ),
            children: members,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::patterns::testing::*;

    fn config() -> DiagnosisConfig {
        DiagnosisConfig::default()
    }

    fn run(children: &[crate::spans::SpanRecord]) -> Vec<Finding> {
        let parent = server(0, 1000);
        let mut found = Vec::new();
        detect(&Tree::new(&parent, children), &config(), &mut found);
        found
    }

    fn user_query(id: u64, start: u64, end: u64) -> crate::spans::SpanRecord {
        query(
            &format!("SELECT * FROM users WHERE id = {id}"),
            "f1",
            start,
            end,
        )
    }

    #[test]
    fn ten_queries_in_a_row_are_n_plus_one() {
        let children: Vec<_> = (0..10).map(|i| user_query(i, i * 10, i * 10 + 8)).collect();
        let found = run(&children);
        assert_eq!(found.len(), 1);
        let finding = &found[0];
        assert_eq!(finding.pattern, Pattern::NPlusOne);
        assert_eq!(finding.children.len(), 10);
        assert_eq!(finding.cost_ns, 80 * MS);
        assert!(finding.advice.starts_with("10 queries of one statement"));
        assert!(
            finding
                .event
                .attributes
                .contains(&("count", crate::spans::AttrValue::Int(10)))
        );
    }

    #[test]
    fn concurrent_identical_queries_are_not_n_plus_one() {
        let children: Vec<_> = (0..10).map(|i| user_query(i, 5, 50)).collect();
        assert!(run(&children).is_empty());
    }

    #[test]
    fn fewer_than_the_minimum_is_not_n_plus_one() {
        let children: Vec<_> = (0..4).map(|i| user_query(i, i * 10, i * 10 + 8)).collect();
        assert!(run(&children).is_empty());
    }

    #[test]
    fn different_statements_are_not_grouped() {
        let children: Vec<_> = (0..6)
            .map(|i| {
                query(
                    &format!("SELECT * FROM t{i}"),
                    &format!("f{i}"),
                    i * 10,
                    i * 10 + 8,
                )
            })
            .collect();
        assert!(run(&children).is_empty());
    }

    #[test]
    fn transaction_bookkeeping_is_not_n_plus_one() {
        let children: Vec<_> = (0..6)
            .map(|i| {
                let mut span = query("BEGIN", "b", i * 10, i * 10 + 1);
                span.set("db.operation.name", "BEGIN");
                span
            })
            .collect();
        assert!(run(&children).is_empty());
    }
}
