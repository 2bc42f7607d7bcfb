//! `sequential_calls`: outbound calls to at least two different peers that did not overlap,
//! where running the peers' calls concurrently would have saved at least
//! --sequential-min-saving of the request. Calls to one peer stay in their order (they may
//! depend on each other); the saving is the calls' union minus the busiest peer's share of it.

use std::collections::BTreeMap;

use super::{Finding, Pattern, event, ms};
use crate::{
    config::DiagnosisConfig,
    detect::{
        intervals::{overlap, union_ns},
        round3,
        tree::{Tree, label, peer},
    },
    spans::{AttrValue, SpanKind},
};

pub fn detect(tree: &Tree<'_>, config: &DiagnosisConfig, findings: &mut Vec<Finding>) {
    // Each call's peer, worked out once.
    let peers: Vec<Option<String>> = tree
        .children
        .iter()
        .map(|child| {
            (child.kind == SpanKind::Client)
                .then(|| peer(child))
                .flatten()
        })
        .collect();
    let mut by_peer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, peer) in peers.iter().enumerate() {
        if let Some(peer) = peer {
            by_peer.entry(peer).or_default().push(index);
        }
    }
    if by_peer.len() < 2 {
        return;
    }
    let span = |i: usize| tree.clipped(&tree.children[i]);
    let all = union_ns(by_peer.values().flatten().map(|&i| span(i)), tree.window());
    let busiest = by_peer
        .values()
        .map(|members| union_ns(members.iter().map(|&i| span(i)), tree.window()))
        .max()
        .unwrap_or(0);
    let saving = all.saturating_sub(busiest);
    let min_saving = (tree.duration_ns() as f64 * config.sequential_min_saving) as u64;
    if saving == 0 || saving < min_saving {
        return;
    }
    // Evidence: calls to different peers that did not overlap.
    let members: Vec<usize> = by_peer.values().flatten().copied().collect();
    if !disjoint_pair(&members, &peers, span) {
        return;
    }
    let mut ordered = members.clone();
    ordered.sort_by_key(|&i| tree.children[i].start_ns);
    let mut calls: Vec<String> = Vec::new();
    for &i in &ordered {
        let text = label(&tree.children[i]);
        if !calls.contains(&text) {
            calls.push(text);
        }
    }
    let share = round3(tree.share(saving));
    let first = ordered
        .first()
        .map_or(tree.parent.start_ns, |&i| tree.children[i].start_ns);
    findings.push(Finding {
        pattern: Pattern::SequentialCalls,
        cost_ns: saving,
        advice: format!(
            "{} services called one after another ({}): call them concurrently to save {:.0}% \
             of the request",
            by_peer.len(),
            calls.join(", "),
            share * 100.0
        ),
        event: event(
            Pattern::SequentialCalls,
            first,
            vec![
                (
                    "calls",
                    AttrValue::StrArray(calls.into_iter().map(Into::into).collect()),
                ),
                ("saving_ms", ms(saving).into()),
                ("saving_share", share.into()),
            ],
        ),
        children: ordered,
    });
}

/// Whether two calls to different peers ran one after the other, in O(n log n): in start
/// order, each call is compared with the earliest-ending earlier call of another peer (the two
/// earliest ends of distinct peers are all that is needed for that).
fn disjoint_pair(
    members: &[usize],
    peers: &[Option<String>],
    span: impl Fn(usize) -> (u64, u64),
) -> bool {
    let mut ordered = members.to_vec();
    ordered.sort_by_key(|&i| span(i).0);
    // (end, peer) of the earliest-ending call, and of the earliest-ending one of another peer.
    let mut best: Option<(u64, &Option<String>)> = None;
    let mut other: Option<(u64, &Option<String>)> = None;
    for &i in &ordered {
        let (start, end) = span(i);
        let peer = &peers[i];
        let candidate = match best {
            Some((_, p)) if p == peer => other,
            _ => best,
        };
        if candidate.is_some_and(|(earlier_end, _)| !overlap((0, earlier_end), (start, end))) {
            return true;
        }
        match best {
            Some((best_end, best_peer)) if end < best_end => {
                if best_peer != peer {
                    other = best;
                }
                best = Some((end, peer));
            }
            Some((_, best_peer)) => {
                if best_peer != peer && other.is_none_or(|(other_end, _)| end < other_end) {
                    other = Some((end, peer));
                }
            }
            None => best = Some((end, peer)),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::patterns::testing::*, spans::SpanRecord};

    fn run(parent_ms: u64, children: &[SpanRecord]) -> Vec<Finding> {
        let parent = server(0, parent_ms);
        let mut found = Vec::new();
        detect(
            &Tree::new(&parent, children),
            &DiagnosisConfig::default(),
            &mut found,
        );
        found
    }

    #[test]
    fn two_peers_one_after_another_are_sequential() {
        let children = [
            call("10.0.0.1", 80, "/a", 0, 150),
            call("10.0.0.2", 80, "/b", 150, 300),
        ];
        let found = run(320, &children);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pattern, Pattern::SequentialCalls);
        assert_eq!(found[0].cost_ns, 150 * MS);
        assert!(
            found[0]
                .advice
                .starts_with("2 services called one after another")
        );
    }

    #[test]
    fn two_calls_that_overlap_are_not_sequential() {
        let children = [
            call("10.0.0.1", 80, "/a", 0, 150),
            call("10.0.0.2", 80, "/b", 10, 160),
        ];
        assert!(run(170, &children).is_empty());
    }

    #[test]
    fn a_request_with_one_child_is_not_sequential() {
        let children = [call("10.0.0.1", 80, "/a", 0, 300)];
        assert!(run(310, &children).is_empty());
    }

    #[test]
    fn calls_to_one_peer_are_not_sequential() {
        let children = [
            call("10.0.0.1", 80, "/a", 0, 150),
            call("10.0.0.1", 80, "/b", 150, 300),
        ];
        assert!(run(310, &children).is_empty());
    }

    #[test]
    fn a_saving_below_the_minimum_is_not_reported() {
        // Parallel would save 20 ms of a 1 s request.
        let children = [
            call("10.0.0.1", 80, "/a", 0, 20),
            call("10.0.0.2", 80, "/b", 20, 40),
        ];
        assert!(run(1000, &children).is_empty());
    }

    #[test]
    fn the_disjoint_check_finds_a_pair_of_other_peers_only() {
        let peers = [
            Some("a".to_owned()),
            Some("a".to_owned()),
            Some("b".to_owned()),
        ];
        let spans = [(0, 10), (10, 20), (5, 15)];
        // a1 and a2 are one after another but the same peer; b overlaps both.
        assert!(!disjoint_pair(&[0, 1, 2], &peers, |i| spans[i]));
        let spans = [(0, 10), (12, 20), (11, 15)];
        // b starts after a1 ended.
        assert!(disjoint_pair(&[0, 1, 2], &peers, |i| spans[i]));
    }

    #[test]
    fn many_overlapping_calls_of_many_peers_are_not_sequential() {
        let n = 50_000;
        let peers: Vec<Option<String>> = (0..n).map(|i| Some(format!("p{}", i % 7))).collect();
        let members: Vec<usize> = (0..n).collect();
        assert!(!disjoint_pair(&members, &peers, |i| (i as u64, 1_000_000)));
    }

    #[test]
    fn a_query_and_a_call_count_as_two_peers() {
        let children = [
            query("SELECT 1", "f", 0, 200),
            call("10.0.0.2", 80, "/b", 200, 400),
        ];
        assert_eq!(run(410, &children).len(), 1);
    }
}
