//! Time covered by a set of intervals: what a request spent waiting on some of its children,
//! counting overlapping calls once.

/// Total length of the union of `[start, end)` intervals, each clipped to `window`.
pub fn union_ns(intervals: impl IntoIterator<Item = (u64, u64)>, window: (u64, u64)) -> u64 {
    let mut clipped: Vec<(u64, u64)> = intervals
        .into_iter()
        .map(|(start, end)| (start.max(window.0), end.min(window.1)))
        .filter(|(start, end)| end > start)
        .collect();
    clipped.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in clipped {
        match &mut current {
            Some((_, cur_end)) if start <= *cur_end => *cur_end = (*cur_end).max(end),
            _ => {
                if let Some((s, e)) = current {
                    total += e - s;
                }
                current = Some((start, end));
            }
        }
    }
    if let Some((s, e)) = current {
        total += e - s;
    }
    total
}

/// How many of the intervals ran strictly one after another: the longest chain in which each
/// starts no earlier than the previous one ended (earliest-end-first is optimal for this).
pub fn sequential_chain(intervals: impl IntoIterator<Item = (u64, u64)>) -> usize {
    let mut sorted: Vec<(u64, u64)> = intervals.into_iter().collect();
    sorted.sort_unstable_by_key(|&(start, end)| (end, start));
    let mut chain = 0;
    let mut last_end = 0;
    for (start, end) in sorted {
        if chain == 0 || start >= last_end {
            chain += 1;
            last_end = end;
        }
    }
    chain
}

/// Whether two intervals share any time.
pub fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_counts_overlap_once_and_clips_to_the_window() {
        assert_eq!(union_ns([(0, 10), (5, 15), (20, 30)], (0, 100)), 25);
        assert_eq!(union_ns([(0, 10), (10, 20)], (0, 100)), 20);
        assert_eq!(union_ns([(0, 50)], (10, 30)), 20);
        assert_eq!(union_ns([(40, 50)], (10, 30)), 0);
        assert_eq!(union_ns([], (0, 10)), 0);
        assert_eq!(union_ns([(0, 100), (10, 20), (30, 40)], (0, 100)), 100);
    }

    #[test]
    fn chain_counts_calls_made_one_after_another() {
        assert_eq!(sequential_chain([(0, 1), (1, 2), (2, 3)]), 3);
        assert_eq!(
            sequential_chain([(0, 10), (1, 11), (2, 12)]),
            1,
            "concurrent"
        );
        // Two waves of three concurrent calls: two in a row.
        assert_eq!(
            sequential_chain([(0, 10), (0, 10), (0, 10), (10, 20), (10, 20), (10, 20)]),
            2
        );
        assert_eq!(sequential_chain([]), 0);
    }

    #[test]
    fn touching_intervals_do_not_overlap() {
        assert!(overlap((0, 10), (5, 15)));
        assert!(!overlap((0, 10), (10, 20)));
    }
}
