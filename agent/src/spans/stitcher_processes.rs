//! A process's state in the stitcher, and letting go of it: when a target exits, and when a new
//! process appears on a pid loupe knew an older process on (the kernel reuses pids), so the
//! connections, requests in flight, goroutines and runtime of the old one are never taken for
//! the new one's.

use super::{ConnKey, Stitcher};
use crate::spans::SpanRecord;

impl Stitcher {
    /// Closes the connections of `pid` as its exit did (what they finished becomes spans, what
    /// they left unanswered is counted) and forgets everything else about it. Costs one lookup
    /// for a pid it holds nothing for.
    pub fn forget_process(&mut self, pid: u32, out: &mut Vec<SpanRecord>) {
        if !self.pids.remove(&pid) {
            return;
        }
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|(owner, _)| *owner == pid)
            .copied()
            .collect();
        for key in keys {
            self.close(key, out);
        }
        self.runtimes.remove(&pid);
        self.libpq_asked.remove(&pid);
        self.serving.retain(|(owner, _), _| *owner != pid);
        self.last_read.retain(|(owner, _), _| *owner != pid);
        self.go_callers.retain(|(owner, _), _| *owner != pid);
        self.go_writing_for.retain(|(owner, _), _| *owner != pid);
        self.go_spawned.retain(|(owner, _), _| *owner != pid);
        self.go_bound.retain(|(owner, _), _| *owner != pid);
        self.with_libpq(out, |libpq, host| {
            libpq.forget_exited(|owner| owner != pid, host)
        });
    }

    /// Whether it holds state for `pid`.
    pub fn knows_process(&self, pid: u32) -> bool {
        self.pids.contains(&pid)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use loupe_common::{Direction, SocketRole};

    use crate::{
        events::{ConnRecord, Event, ExecRecord},
        spans::{
            SpanKind,
            parent::Runtime,
            stitcher::{Stitcher, StitcherLimits},
        },
        stats::Counters,
    };

    const PID: u32 = 100;
    const TID: u32 = 7;
    const REQUEST: &[u8] = b"GET /api/orders HTTP/1.1\r\nHost: shop\r\n\r\n";
    const CALL: &[u8] = b"GET /score HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n\r\n";
    const CALL_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn conn(fd: i32, role: SocketRole) -> Event {
        Event::Conn(ConnRecord {
            pid: PID,
            tid: TID,
            fd,
            conn_id: 1000 + fd as u64,
            ts_ns: 1,
            role,
            peer: Some("127.0.0.1:8081".parse().unwrap()),
            local: None,
        })
    }

    fn data(fd: i32, direction: Direction, at: u64, bytes: &'static [u8]) -> Event {
        crate::spans::stitcher::tests::data(fd, TID, direction, at, bytes)
    }

    /// The old process on PID serves a request on thread TID and never answers it; then
    /// `arrival` (a new process on PID), then the new process's thread TID makes a call.
    fn the_call_after(arrival: Event) -> (Vec<crate::spans::SpanRecord>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let mut stitcher = Stitcher::new(StitcherLimits::default(), counters.clone())
            .with_runtime_probe(|_| Runtime::Threads);
        let mut out = Vec::new();
        for event in [
            conn(5, SocketRole::Server),
            data(5, Direction::Ingress, 1_000, REQUEST),
        ] {
            stitcher.handle(event, &mut out);
        }
        assert!(stitcher.knows_process(PID));
        stitcher.handle(arrival, &mut out);
        for event in [
            conn(6, SocketRole::Client),
            data(6, Direction::Egress, 2_000, CALL),
            data(6, Direction::Ingress, 3_000, CALL_RESPONSE),
        ] {
            stitcher.handle(event, &mut out);
        }
        (out, counters)
    }

    #[test]
    fn a_new_program_on_a_reused_pid_inherits_nothing_of_the_old_process() {
        let exec = Event::Exec(ExecRecord {
            pid: PID,
            ts_ns: 1_500,
            comm: "demo-app".into(),
            adopted: true,
        });
        let (spans, counters) = the_call_after(exec);
        let calls: Vec<_> = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client)
            .collect();
        assert_eq!(calls.len(), 1, "{spans:#?}");
        assert_eq!(
            calls[0].parent_span_id, None,
            "the old process's request on the same thread id is not the new one's"
        );
        assert_eq!(
            Counters::get(&counters.unanswered_requests),
            1,
            "the old process's connection ended with it, its request unanswered"
        );
    }

    #[test]
    fn a_forked_child_on_a_reused_pid_inherits_nothing_either() {
        let fork = Event::Fork {
            parent: 1,
            child: PID,
        };
        let (spans, _) = the_call_after(fork);
        let call = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
        assert_eq!(call.parent_span_id, None);
    }

    #[test]
    fn forgetting_leaves_other_processes_alone() {
        let counters = Arc::new(Counters::default());
        let mut stitcher = Stitcher::new(StitcherLimits::default(), counters.clone())
            .with_runtime_probe(|_| Runtime::Threads);
        let mut out = Vec::new();
        stitcher.handle(conn(5, SocketRole::Server), &mut out);
        stitcher.forget_process(PID + 1, &mut out);
        assert_eq!(stitcher.connections(), 1);
        stitcher.forget_process(PID, &mut out);
        assert_eq!(stitcher.connections(), 0);
        assert!(!stitcher.knows_process(PID));
    }
}
