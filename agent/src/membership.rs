//! Targets joining and leaving, as the stitch stage sees them. The stitch stage hands the execs
//! of processes that were not targets to the upkeep, which matches them (`--exe`, `--name`) and
//! says which processes joined and which targets left (`probes::TargetNews`). Events come in the
//! kernel's order: a fork or an exec is a new process on its pid, and what was known of an
//! earlier one there goes with that event; a target that exited keeps its state for a grace,
//! for its last events still on their way.

use tokio::sync::mpsc;

use crate::{
    detect::ResourceSampler,
    events::{Event, ExecRecord},
    probes::TargetNews,
    spans::{SpanRecord, Stitcher, clock::monotonic_now_ns},
    stats::Counters,
};

/// How long the state of a target that exited is kept for its last events.
const LEFT_GRACE_NS: u64 = 1_000_000_000;

/// The stitch stage's line to the upkeep, and the targets waiting out their grace.
pub struct TargetLines {
    execs: mpsc::Sender<ExecRecord>,
    pub news: mpsc::UnboundedReceiver<TargetNews>,
    /// Processes whose PostgreSQL sessions the wire cannot read, for the upkeep to probe
    /// their libpq (one message per process).
    libpq: mpsc::UnboundedSender<u32>,
    /// Targets that exited: pid, and when the upkeep said so (ns since boot).
    leaving: Vec<(u32, u64)>,
}

impl TargetLines {
    pub fn new(
        execs: mpsc::Sender<ExecRecord>,
        news: mpsc::UnboundedReceiver<TargetNews>,
        libpq: mpsc::UnboundedSender<u32>,
    ) -> Self {
        Self {
            execs,
            news,
            libpq,
            leaving: Vec::new(),
        }
    }

    /// Before the stitcher handles `event`: a fork or an exec is a new process on its pid (the
    /// stitcher lets go of an earlier one's state itself); an exec goes to the upkeep to be
    /// matched.
    pub fn on_event(
        &mut self,
        event: &Event,
        resources: &mut ResourceSampler,
        counters: &Counters,
    ) {
        match event {
            // A target's child: its resource use is read from now on.
            Event::Fork { child, .. } => {
                self.cancel(*child);
                resources.forget(*child);
                resources.watch(*child);
            }
            // A target already if the kernel matched its name; else the upkeep matches its
            // executable.
            Event::Exec(exec) => {
                self.cancel(exec.pid);
                resources.forget(exec.pid);
                if exec.adopted {
                    resources.watch(exec.pid);
                }
                if let Err(mpsc::error::TrySendError::Full(_)) = self.execs.try_send(exec.clone()) {
                    Counters::add(&counters.execs_unchecked, 1);
                }
            }
            _ => {}
        }
    }

    /// Passes on the processes the stitcher found wanting libpq's uprobes.
    pub fn ask_for_libpq(&self, stitcher: &mut Stitcher) {
        for pid in stitcher.take_libpq_wants() {
            // The upkeep outlives the stitch stage: a send fails only at shutdown.
            let _ = self.libpq.send(pid);
        }
    }

    /// Acts on what the upkeep says: a process that joined is read for resources and its open
    /// sockets seeded; a target that left is forgotten after its grace, or at once when another
    /// process has its pid already.
    pub fn on_news(
        &mut self,
        news: TargetNews,
        stitcher: &mut Stitcher,
        resources: &mut ResourceSampler,
        out: &mut Vec<SpanRecord>,
    ) {
        let now = monotonic_now_ns();
        match news {
            TargetNews::Joined { pids, sockets } => {
                for pid in pids {
                    resources.watch(pid);
                }
                for (pid, socket) in sockets {
                    stitcher.seed(pid, socket.conn_id(), socket.role, socket.addrs, now);
                }
            }
            TargetNews::Left { pid, at_once: true } => {
                self.cancel(pid);
                stitcher.forget_process(pid, out);
                resources.forget(pid);
            }
            TargetNews::Left {
                pid,
                at_once: false,
            } => self.leaving.push((pid, now)),
        }
    }

    /// Forgets the targets whose grace is over at `now_ns`.
    pub fn forget_left(
        &mut self,
        now_ns: u64,
        stitcher: &mut Stitcher,
        resources: &mut ResourceSampler,
        out: &mut Vec<SpanRecord>,
    ) {
        for pid in self.due(now_ns) {
            stitcher.forget_process(pid, out);
            resources.forget(pid);
        }
    }

    /// A new process on `pid`: nothing of the old one is left to forget later.
    fn cancel(&mut self, pid: u32) {
        self.leaving.retain(|(leaving, _)| *leaving != pid);
    }

    /// The pids whose grace is over at `now_ns`.
    fn due(&mut self, now_ns: u64) -> Vec<u32> {
        let mut due = Vec::new();
        self.leaving.retain(|&(pid, since)| {
            let over = now_ns.saturating_sub(since) >= LEFT_GRACE_NS;
            if over {
                due.push(pid);
            }
            !over
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> (TargetLines, mpsc::Receiver<ExecRecord>) {
        let (execs, exec_rx) = mpsc::channel(1);
        let (_news_tx, news) = mpsc::unbounded_channel();
        let (libpq, _) = mpsc::unbounded_channel();
        (TargetLines::new(execs, news, libpq), exec_rx)
    }

    #[test]
    fn a_target_that_left_is_forgotten_after_its_grace_unless_its_pid_is_reused() {
        let (mut lines, _execs) = lines();
        lines.leaving.push((10, 1_000));
        lines.leaving.push((11, 1_000));
        assert!(
            lines.due(1_000 + LEFT_GRACE_NS - 1).is_empty(),
            "still in grace"
        );
        // A new process on 11 (its exec or fork came in order): nothing left to forget.
        lines.cancel(11);
        assert_eq!(lines.due(1_000 + LEFT_GRACE_NS), vec![10]);
        assert!(lines.leaving.is_empty());
    }

    #[test]
    fn execs_past_the_queue_are_counted() {
        let (mut lines, mut execs) = lines();
        let counters = Counters::default();
        let mut resources = ResourceSampler::new(&[]);
        let exec = |pid| {
            Event::Exec(ExecRecord {
                pid,
                ts_ns: 1,
                comm: "x".into(),
                adopted: false,
            })
        };
        lines.on_event(&exec(u32::MAX - 1), &mut resources, &counters);
        lines.on_event(&exec(u32::MAX - 2), &mut resources, &counters);
        assert_eq!(Counters::get(&counters.execs_unchecked), 1);
        assert_eq!(execs.try_recv().unwrap().pid, u32::MAX - 1);
    }
}
