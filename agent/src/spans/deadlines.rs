//! When each open operation passes its threshold. The stitch stage sleeps until the earliest of
//! these and heats the thread then, so a span just over its threshold is sampled for all of its
//! slow part, not from the next stitch tick on.
//!
//! One queue per operation type: its operations share one threshold and start in event order,
//! so each queue is in deadline order and costs a push and a pop per operation. An operation
//! that ended before its deadline is skipped when its deadline comes (the stitcher checks it is
//! still open). Past [`CAP`] watched operations of a type, new ones are not watched: the tick
//! still finds them slow, at most one tick late.

use std::collections::VecDeque;

use super::{model::OpType, stitcher::ConnKey};
use crate::{config::Thresholds, detect::slow::threshold_for};

/// Operations watched at once, per type (about 2 MB at most).
pub const CAP: usize = 65_536;

const TYPES: [OpType; 4] = [
    OpType::HttpServer,
    OpType::HttpClient,
    OpType::DbClient,
    OpType::CacheClient,
];

/// An open operation, as the stitcher can find it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// A server request: (pid, the key of its thread or goroutine), connection id, sequence.
    Request {
        pid: u32,
        exec: u64,
        conn_id: u64,
        seq: u64,
    },
    /// A client call on `key` with sequence `seq`, started at `start_ns`.
    Call {
        key: ConnKey,
        seq: u64,
        start_ns: u64,
    },
}

#[derive(Debug, Default)]
pub struct Deadlines {
    /// Per type (the index of [`TYPES`]): its threshold in ns, 0 when nothing is watched.
    limits: [u64; 4],
    queues: [VecDeque<(u64, Watched)>; 4],
    /// Operations not watched because their queue was full.
    pub unwatched: u64,
}

fn index(op: OpType) -> usize {
    match op {
        OpType::HttpServer => 0,
        OpType::HttpClient => 1,
        OpType::DbClient => 2,
        OpType::CacheClient => 3,
    }
}

impl Deadlines {
    /// Watches operations against `thresholds` from now on (a threshold of zero: none).
    pub fn set_thresholds(&mut self, thresholds: &Thresholds) {
        for op in TYPES {
            self.limits[index(op)] = threshold_for(op, thresholds).as_nanos() as u64;
        }
    }

    /// An operation of type `op` started at `start_ns`.
    pub fn watch(&mut self, op: OpType, start_ns: u64, what: Watched) {
        let i = index(op);
        let limit = self.limits[i];
        if limit == 0 {
            return;
        }
        let queue = &mut self.queues[i];
        if queue.len() >= CAP {
            self.unwatched += 1;
            return;
        }
        queue.push_back((start_ns.saturating_add(limit), what));
    }

    /// The earliest deadline waiting (ns, the events' clock).
    pub fn next(&self) -> Option<u64> {
        self.queues
            .iter()
            .filter_map(|queue| queue.front().map(|(due, _)| *due))
            .min()
    }

    /// Takes every operation whose deadline is at or before `now_ns`.
    pub fn take_due(&mut self, now_ns: u64, mut each: impl FnMut(Watched)) {
        for queue in &mut self.queues {
            while let Some(&(due, what)) = queue.front() {
                if due > now_ns {
                    break;
                }
                queue.pop_front();
                each(what);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn thresholds(http_ms: u64, db_ms: u64) -> Thresholds {
        Thresholds {
            http: Duration::from_millis(http_ms),
            external: Duration::from_millis(500),
            db: Duration::from_millis(db_ms),
            cache: Duration::ZERO,
        }
    }

    fn request(seq: u64) -> Watched {
        Watched::Request {
            pid: 1,
            exec: 2,
            conn_id: 3,
            seq,
        }
    }

    #[test]
    fn deadlines_come_in_order_across_types() {
        let mut deadlines = Deadlines::default();
        deadlines.set_thresholds(&thresholds(200, 50));
        let ms = 1_000_000;
        deadlines.watch(OpType::HttpServer, 0, request(1));
        deadlines.watch(OpType::HttpServer, 10 * ms, request(2));
        let call = Watched::Call {
            key: (1, 9),
            seq: 0,
            start_ns: 20 * ms,
        };
        deadlines.watch(OpType::DbClient, 20 * ms, call);
        assert_eq!(
            deadlines.next(),
            Some(70 * ms),
            "the query's, 50 ms after it started"
        );

        let mut due = Vec::new();
        deadlines.take_due(70 * ms, |w| due.push(w));
        assert_eq!(due, vec![call]);
        assert_eq!(deadlines.next(), Some(200 * ms));
        deadlines.take_due(209 * ms, |w| due.push(w));
        assert_eq!(due, vec![call, request(1)]);
        deadlines.take_due(210 * ms, |w| due.push(w));
        assert_eq!(due, vec![call, request(1), request(2)]);
        assert_eq!(deadlines.next(), None);
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn a_zero_threshold_watches_nothing_and_a_full_queue_counts() {
        let mut deadlines = Deadlines::default();
        deadlines.watch(OpType::HttpServer, 0, request(0));
        assert_eq!(deadlines.next(), None, "no thresholds set: nothing watched");
        deadlines.set_thresholds(&thresholds(200, 50));
        deadlines.watch(OpType::CacheClient, 0, request(0));
        assert_eq!(deadlines.next(), None, "--slow-cache 0: off");
        for seq in 0..CAP as u64 + 5 {
            deadlines.watch(OpType::HttpServer, seq, request(seq));
        }
        assert_eq!(deadlines.len(), CAP);
        assert_eq!(deadlines.unwatched, 5);
    }
}
