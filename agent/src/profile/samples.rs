//! CPU samples waiting for the slow spans they belong to, per thread, oldest first. A span and
//! its slow children share a thread and overlap in time, so claiming copies and never removes:
//! samples leave by age or by the bound, and those no span claimed are counted.
//!
//! The always-on samples (`--profile-always`) wait apart, in a short ring per thread: most are
//! of fast requests and none is missed when it leaves. A slow span takes those before its first
//! hot sample (its part before its threshold).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::events::CpuSample;

/// Samples older than this leave (a span slow for longer keeps its last 30 s).
const KEEP_NS: u64 = 30_000_000_000;
/// Samples held at once: about 30 MB at most, without their stack copies.
const MAX_SAMPLES: usize = 50_000;
/// Bytes of stack copies held at once (4,096 copies of 16 KiB: four seconds of one thread at
/// 999 Hz). A sample past it keeps its frame-pointer walk only, counted.
const MAX_STACK_BYTES: usize = 64 << 20;
/// Always-on samples held per thread (27 s at 19 Hz) and in all.
const ALWAYS_PER_THREAD: usize = 512;
const MAX_ALWAYS: usize = 16_384;

#[derive(Default)]
pub struct SampleStore {
    /// Per thread: (sample, claimed by a span).
    by_thread: HashMap<u32, VecDeque<(CpuSample, bool)>>,
    held: usize,
    /// The stack copies of both kinds of samples.
    stacks: StackBudget,
    /// Samples that left unclaimed (taken after their span ended, or pushed out).
    pub unclaimed: u64,
    /// The always-on samples, per thread, oldest first.
    always: HashMap<u32, VecDeque<CpuSample>>,
    always_held: usize,
}

fn stack_len(sample: &CpuSample) -> usize {
    sample.unwind.as_ref().map_or(0, |u| u.stack.len())
}

/// The bytes of stack copies held, at most [`MAX_STACK_BYTES`].
#[derive(Default)]
struct StackBudget {
    held: usize,
    /// Samples whose copy was dropped because the budget was spent.
    dropped: u64,
}

impl StackBudget {
    /// Takes the sample's copy into the budget, or drops the copy (counted) when it does not fit.
    fn admit(&mut self, sample: &mut CpuSample) {
        if self.held + stack_len(sample) > MAX_STACK_BYTES {
            sample.unwind = None;
            self.dropped += 1;
        }
        self.held += stack_len(sample);
    }

    /// A sample that leaves gives its copy's bytes back.
    fn release(&mut self, sample: &CpuSample) {
        self.held -= stack_len(sample);
    }
}

impl SampleStore {
    pub fn push(&mut self, mut sample: CpuSample) {
        if sample.background {
            self.push_always(sample);
            return;
        }
        if self.held >= MAX_SAMPLES
            && let Some(queue) = self.by_thread.values_mut().max_by_key(|q| q.len())
            && let Some((old, claimed)) = queue.pop_front()
        {
            self.held -= 1;
            self.stacks.release(&old);
            self.unclaimed += u64::from(!claimed);
        }
        self.stacks.admit(&mut sample);
        self.by_thread
            .entry(sample.tid)
            .or_default()
            .push_back((sample, false));
        self.held += 1;
    }

    fn push_always(&mut self, mut sample: CpuSample) {
        if self.always_held >= MAX_ALWAYS
            && let Some(queue) = self.always.values_mut().max_by_key(|q| q.len())
            && let Some(old) = queue.pop_front()
        {
            self.always_held -= 1;
            self.stacks.release(&old);
        }
        let queue = self.always.entry(sample.tid).or_default();
        if queue.len() >= ALWAYS_PER_THREAD
            && let Some(old) = queue.pop_front()
        {
            self.always_held -= 1;
            self.stacks.release(&old);
        }
        self.stacks.admit(&mut sample);
        queue.push_back(sample);
        self.always_held += 1;
    }

    /// Copies of the samples of thread `tid` (of `pid`) taken within `[start_ns, end_ns]`: the
    /// hot thread's, then the always-on ones taken before the first of those.
    pub fn claim(&mut self, pid: u32, tid: u32, start_ns: u64, end_ns: u64) -> Vec<CpuSample> {
        let mut out = self.claim_hot(pid, tid, start_ns, end_ns);
        let before = out
            .first()
            .map_or(end_ns, |first| first.ts_ns.saturating_sub(1));
        if let Some(queue) = self.always.get(&tid) {
            let first = queue.partition_point(|s| s.ts_ns < start_ns);
            out.extend(
                queue
                    .range(first..)
                    .take_while(|s| s.ts_ns <= before)
                    .filter(|s| s.pid == pid)
                    .cloned(),
            );
        }
        out
    }

    fn claim_hot(&mut self, pid: u32, tid: u32, start_ns: u64, end_ns: u64) -> Vec<CpuSample> {
        let Some(queue) = self.by_thread.get_mut(&tid) else {
            return Vec::new();
        };
        let first = queue.partition_point(|(s, _)| s.ts_ns < start_ns);
        let mut out = Vec::new();
        for (sample, claimed) in queue.range_mut(first..) {
            if sample.ts_ns > end_ns {
                break;
            }
            if sample.pid == pid {
                *claimed = true;
                out.push(sample.clone());
            }
        }
        out
    }

    /// Drops samples older than the keep window.
    pub fn prune(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(KEEP_NS);
        let (mut dropped, mut unclaimed) = (0, 0);
        let stacks = &mut self.stacks;
        self.by_thread.retain(|_, queue| {
            while queue.front().is_some_and(|(s, _)| s.ts_ns < cutoff) {
                if let Some((sample, claimed)) = queue.pop_front() {
                    dropped += 1;
                    stacks.release(&sample);
                    unclaimed += u64::from(!claimed);
                }
            }
            !queue.is_empty()
        });
        self.held -= dropped;
        let mut dropped = 0;
        self.always.retain(|_, queue| {
            while queue.front().is_some_and(|s| s.ts_ns < cutoff) {
                if let Some(sample) = queue.pop_front() {
                    dropped += 1;
                    stacks.release(&sample);
                }
            }
            !queue.is_empty()
        });
        self.always_held -= dropped;
        self.unclaimed += unclaimed;
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Samples whose stack copy was dropped because [`MAX_STACK_BYTES`] were held.
    pub fn stacks_dropped(&self) -> u64 {
        self.stacks.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tid: u32, ts_ns: u64) -> CpuSample {
        CpuSample {
            pid: 1,
            tid,
            ts_ns,
            user: vec![0x1000],
            kernel: Vec::new(),
            unwind: None,
            background: false,
        }
    }

    #[test]
    fn a_span_claims_its_thread_and_window_and_a_child_can_too() {
        let mut store = SampleStore::default();
        for ts in [5, 10, 20, 30, 40] {
            store.push(sample(7, ts));
        }
        store.push(sample(8, 20));
        let times = |v: Vec<CpuSample>| v.iter().map(|s| s.ts_ns).collect::<Vec<_>>();
        assert_eq!(times(store.claim(1, 7, 10, 30)), vec![10, 20, 30]);
        assert_eq!(
            times(store.claim(1, 7, 15, 25)),
            vec![20],
            "the child's share"
        );
        assert!(store.claim(1, 9, 0, 100).is_empty());
        assert!(
            store.claim(2, 7, 0, 100).is_empty(),
            "another process's thread"
        );
        assert_eq!(store.held(), 6);
    }

    #[test]
    fn old_samples_leave_and_the_unclaimed_are_counted() {
        let mut store = SampleStore::default();
        store.push(sample(7, 1));
        store.push(sample(7, 2));
        store.claim(1, 7, 2, 2);
        store.push(sample(7, KEEP_NS + 10));
        store.prune(KEEP_NS + 5);
        assert_eq!(store.held(), 1);
        assert_eq!(store.unclaimed, 1, "the sample at 2 was claimed");
    }

    #[test]
    fn stack_copies_are_bounded_by_bytes_and_the_dropped_counted() {
        let mut store = SampleStore::default();
        let with_copy = |ts| CpuSample {
            unwind: Some(crate::events::UnwindInput {
                ip: 1,
                sp: 2,
                bp: 3,
                stack: vec![0; 16 * 1024],
            }),
            ..sample(7, ts)
        };
        let fit = MAX_STACK_BYTES / (16 * 1024);
        for ts in 0..fit as u64 + 3 {
            store.push(with_copy(ts));
        }
        assert_eq!(store.stacks_dropped(), 3);
        let kept = store.claim(1, 7, 0, u64::MAX);
        assert_eq!(
            kept.len(),
            fit + 3,
            "a sample past the bound stays, without its copy"
        );
        assert!(kept[..fit].iter().all(|s| s.unwind.is_some()));
        assert!(kept[fit..].iter().all(|s| s.unwind.is_none()));
        // Once old copies leave, new ones are kept again.
        store.prune(KEEP_NS + 10);
        store.push(with_copy(KEEP_NS + 20));
        assert_eq!(store.stacks_dropped(), 3);
        assert!(store.claim(1, 7, KEEP_NS, u64::MAX)[0].unwind.is_some());
    }

    #[test]
    fn a_span_takes_the_always_on_samples_before_its_first_hot_one() {
        let mut store = SampleStore::default();
        let always = |ts| CpuSample {
            background: true,
            ..sample(7, ts)
        };
        for ts in [5, 10, 20, 30, 40, 50] {
            store.push(always(ts));
        }
        store.push(sample(7, 35));
        store.push(sample(7, 45));
        let claimed = store.claim(1, 7, 10, 50);
        let times: Vec<(u64, bool)> = claimed.iter().map(|s| (s.ts_ns, s.background)).collect();
        assert_eq!(
            times,
            vec![(35, false), (45, false), (10, true), (20, true), (30, true)],
            "the always-on samples from the span's start to its first hot one"
        );
        assert_eq!(store.held(), 2, "the always-on ring is apart");
        store.prune(KEEP_NS + 100);
        assert_eq!(
            store.unclaimed, 0,
            "always-on samples that leave are not losses"
        );
        assert!(store.claim(1, 7, 0, u64::MAX).is_empty());
    }
}
