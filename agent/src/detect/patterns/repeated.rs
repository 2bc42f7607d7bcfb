//! `repeated_call`: the same outbound HTTP call (method, host, port, path and query) or the same
//! statement with the same literals, made more than once in one request: a cache opportunity.
//! Statements whose values were bound separately carry no exact key and are never compared.

use std::collections::BTreeMap;

use super::{Finding, Pattern, event, ms};
use crate::{
    detect::tree::{Tree, label},
    spans::{OpType, SpanKind},
};

pub fn detect(tree: &Tree<'_>, findings: &mut Vec<Finding>) {
    let mut work = vec![false; tree.children.len()];
    for (index, _) in tree.queries() {
        work[index] = true;
    }
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, child) in tree.children.iter().enumerate() {
        let counted = match child.op {
            OpType::DbClient => work[index],
            _ => child.kind == SpanKind::Client,
        };
        if let (true, Some(key)) = (counted, child.call_key) {
            groups.entry(key).or_default().push(index);
        }
    }
    for mut members in groups.into_values() {
        if members.len() < 2 {
            continue;
        }
        members.sort_by_key(|&i| tree.children[i].start_ns);
        let repeats_ns: u64 = members[1..]
            .iter()
            .map(|&i| {
                let (start, end) = tree.clipped(&tree.children[i]);
                end - start
            })
            .sum();
        let first = &tree.children[members[0]];
        let text = label(first);
        let count = members.len();
        findings.push(Finding {
            pattern: Pattern::RepeatedCall,
            cost_ns: repeats_ns,
            advice: format!(
                "the same call made {count} times in one request ({text}): reuse the first \
                 result or cache it"
            ),
            event: event(
                Pattern::RepeatedCall,
                first.start_ns,
                vec![
                    ("call", text.into()),
                    ("count", (count as i64).into()),
                    ("repeats_ms", ms(repeats_ns).into()),
                ],
            ),
            children: members,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::patterns::testing::*, spans::SpanRecord};

    fn run(children: &[SpanRecord]) -> Vec<Finding> {
        let parent = server(0, 1000);
        let mut found = Vec::new();
        detect(&Tree::new(&parent, children), &mut found);
        found
    }

    #[test]
    fn the_same_http_call_twice_is_repeated() {
        let children = [
            call("10.0.0.1", 80, "/rates?cur=EUR", 0, 10),
            call("10.0.0.1", 80, "/rates?cur=EUR", 20, 35),
            call("10.0.0.1", 80, "/rates?cur=USD", 40, 50),
        ];
        let found = run(&children);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].children.len(), 2);
        assert_eq!(found[0].cost_ns, 15 * MS);
        assert!(found[0].advice.contains("2 times"), "{}", found[0].advice);
    }

    #[test]
    fn the_same_statement_with_other_literals_is_not_repeated() {
        let children = [
            query("SELECT * FROM users WHERE id = 1", "f", 0, 10),
            query("SELECT * FROM users WHERE id = 2", "f", 10, 20),
        ];
        assert!(run(&children).is_empty());
    }

    #[test]
    fn the_same_statement_with_the_same_literals_is_repeated() {
        let children = [
            query("SELECT * FROM users WHERE id = 1", "f", 0, 10),
            query("SELECT * FROM users WHERE id = 1", "f", 10, 20),
            query("SELECT * FROM users WHERE id = 1", "f", 20, 30),
        ];
        let found = run(&children);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].cost_ns, 20 * MS);
    }

    #[test]
    fn statements_with_unknown_parameters_are_never_repeated() {
        let mut children = [
            query("SELECT * FROM users WHERE id = $1", "f", 0, 10),
            query("SELECT * FROM users WHERE id = $1", "f", 10, 20),
        ];
        for child in &mut children {
            child.call_key = None;
        }
        assert!(run(&children).is_empty());
    }

    #[test]
    fn commits_are_not_repeated_calls() {
        let mut children = [query("COMMIT", "c", 0, 1), query("COMMIT", "c", 10, 11)];
        for child in &mut children {
            child.set("db.operation.name", "COMMIT");
        }
        assert!(run(&children).is_empty());
    }
}
