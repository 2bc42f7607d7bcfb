//! CPU samples waiting for the slow spans they belong to, per thread, oldest first. A span and
//! its slow children share a thread and overlap in time, so claiming copies and never removes:
//! samples leave by age or by the bound, and those no span claimed are counted.
//!
//! The always-on samples (`--profile-always`) wait apart, in a short ring per thread: most are
//! of fast requests and none is missed when it leaves. A slow span takes those before its first
//! hot sample (its part before its threshold).
//!
//! Off-CPU: each time a hot thread comes back on a CPU, its stretch off it is a [`Wait`], with
//! the stack it left with (recorded at the switch-out, at most one per sampling period). A
//! thread already asleep when it was heated has its kernel frames read from /proc by the upkeep
//! ([`Heated`]) and its user stack recorded as its wait's syscall returns; its wait counts from
//! the heating.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::events::{CpuSample, OffCpuRecord, SampleSource};

/// A stretch a hot thread spent off the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Wait {
    pub pid: u32,
    pub tid: u32,
    pub off_ns: u64,
    pub on_ns: u64,
    /// The task state it left in (sched_switch's `prev_state`).
    pub state: u32,
    /// Off since before it was heated: `off_ns` is when it was heated, the wait began earlier.
    pub before_heat: bool,
    /// The stack it waited in, if recorded.
    pub stack: Option<CpuSample>,
    /// Its kernel frames by name, innermost first, when /proc gave them (a wait from before the
    /// heating); else they are `stack`'s addresses.
    pub kernel_names: Vec<String>,
}

impl Wait {
    pub fn ns(&self) -> u64 {
        self.on_ns.saturating_sub(self.off_ns)
    }
}

/// What the upkeep saw of a thread as it heated it.
#[derive(Clone, Debug, PartialEq)]
pub struct Heated {
    pub pid: u32,
    pub tid: u32,
    /// When the thread became hot (CLOCK_MONOTONIC, the events' clock).
    pub heat_ns: u64,
    /// The thread was asleep then: where, as /proc showed it.
    pub asleep: Option<Asleep>,
}

/// Where a sleeping thread waits, read from /proc.
#[derive(Clone, Debug, PartialEq)]
pub struct Asleep {
    /// `/proc/PID/task/TID/stack`, innermost first, as `vmlinux!function`.
    pub kernel: Vec<String>,
    /// It waits in a syscall: the stack recorded as that syscall returns is the wait's.
    pub in_syscall: bool,
}

/// Waits held at once, and heat reports waiting for the thread's first switch-in.
const MAX_WAITS: usize = 50_000;
const MAX_PENDING: usize = 1024;

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
    /// Per thread: its waits off the CPU, oldest first.
    waits: HashMap<u32, VecDeque<Wait>>,
    waits_held: usize,
    /// The stack of a thread's last switch-out, until it comes back.
    off_stacks: HashMap<u32, CpuSample>,
    /// Heat reports not yet met by the thread's first switch-in, and switch-ins of threads off
    /// since before their heating whose heat report is not in yet (the two come by two roads).
    heated: HashMap<u32, Heated>,
    early: HashMap<u32, OffCpuRecord>,
    /// Stacks recorded as a thread returned from a wait begun before its heating, stamped with
    /// its switch-in, until that wait is known.
    returns: HashMap<u32, CpuSample>,
    /// Waits that left without a stack (a second wait within one sampling period, or one whose
    /// stack never came).
    pub waits_unstacked: u64,
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
        match sample.source {
            SampleSource::Hot => {}
            SampleSource::Background => {
                self.push_always(sample);
                return;
            }
            SampleSource::OffCpu { .. } => {
                self.stacks.admit(&mut sample);
                if let Some(sample) = self.give_return(sample)
                    && let Some(old) = self.off_stacks.insert(sample.tid, sample)
                {
                    self.stacks.release(&old);
                }
                return;
            }
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

    /// A hot thread came back on a CPU: its wait, with the stack it left with when there is one.
    pub fn push_off_cpu(&mut self, record: OffCpuRecord) {
        if record.off_ns == 0 {
            // Off since before it was heated: the wait counts from the heating.
            match self.heated.remove(&record.tid) {
                Some(heated) => self.add_heated_wait(heated, record),
                None if self.early.len() < MAX_PENDING || self.early.contains_key(&record.tid) => {
                    self.early.insert(record.tid, record);
                }
                None => {}
            }
            return;
        }
        // It ran since its heating: the heat report's view is stale.
        self.heated.remove(&record.tid);
        let stack = self.off_stacks.remove(&record.tid);
        let stack = match stack {
            Some(stack) if record.stacked && stack.ts_ns == record.off_ns => Some(stack),
            Some(stale) => {
                self.stacks.release(&stale);
                None
            }
            None => None,
        };
        self.add_wait(Wait {
            pid: record.pid,
            tid: record.tid,
            off_ns: record.off_ns,
            on_ns: record.on_ns,
            state: record.state,
            before_heat: false,
            stack,
            kernel_names: Vec::new(),
        });
    }

    /// A stack recorded as a thread returned from a wait begun before its heating: it goes to
    /// that wait (the thread's last, when it is known already) or waits for it. A switch-out's
    /// stack comes back (Some) for the caller to keep.
    fn give_return(&mut self, sample: CpuSample) -> Option<CpuSample> {
        let last = self
            .waits
            .get_mut(&sample.tid)
            .and_then(|queue| queue.back_mut());
        if let Some(wait) = last
            && wait.before_heat
            && wait.on_ns == sample.ts_ns
        {
            if wait.stack.is_none() && !wait.kernel_names.is_empty() {
                wait.stack = Some(sample);
            } else {
                self.stacks.release(&sample);
            }
            return None;
        }
        let pending = self.early.get(&sample.tid).map(|r| r.on_ns) == Some(sample.ts_ns)
            || self.heated.contains_key(&sample.tid);
        if pending && (self.returns.len() < MAX_PENDING || self.returns.contains_key(&sample.tid)) {
            if let Some(old) = self.returns.insert(sample.tid, sample) {
                self.stacks.release(&old);
            }
            return None;
        }
        Some(sample)
    }

    /// What the upkeep saw of a thread it heated.
    pub fn push_heated(&mut self, heated: Heated) {
        match self.early.remove(&heated.tid) {
            Some(record) => self.add_heated_wait(heated, record),
            None => {
                if self.heated.len() < MAX_PENDING || self.heated.contains_key(&heated.tid) {
                    self.heated.insert(heated.tid, heated);
                }
            }
        }
    }

    fn add_heated_wait(&mut self, heated: Heated, record: OffCpuRecord) {
        let returned = self
            .returns
            .remove(&record.tid)
            .filter(|s| s.ts_ns == record.on_ns);
        let (kernel_names, stack) = match heated.asleep {
            // Its user stack as it returned from the syscall it waited in.
            Some(asleep) if asleep.in_syscall => (asleep.kernel, returned),
            Some(asleep) => (asleep.kernel, None),
            None => (Vec::new(), None),
        };
        self.add_wait(Wait {
            pid: record.pid,
            tid: record.tid,
            off_ns: heated.heat_ns.min(record.on_ns),
            on_ns: record.on_ns,
            state: record.state,
            before_heat: true,
            stack,
            kernel_names,
        });
    }

    fn add_wait(&mut self, wait: Wait) {
        if self.waits_held >= MAX_WAITS
            && let Some(queue) = self.waits.values_mut().max_by_key(|q| q.len())
            && let Some(old) = queue.pop_front()
        {
            self.waits_held -= 1;
            if let Some(stack) = &old.stack {
                self.stacks.release(stack);
            }
        }
        self.waits.entry(wait.tid).or_default().push_back(wait);
        self.waits_held += 1;
    }

    /// Copies of the waits of thread `tid` (of `pid`) within `[start_ns, end_ns]`, cut to it.
    pub fn claim_waits(&self, pid: u32, tid: u32, start_ns: u64, end_ns: u64) -> Vec<Wait> {
        let Some(queue) = self.waits.get(&tid) else {
            return Vec::new();
        };
        let first = queue.partition_point(|w| w.on_ns <= start_ns);
        queue
            .range(first..)
            .take_while(|w| w.off_ns < end_ns)
            .filter(|w| w.pid == pid)
            .map(|w| Wait {
                off_ns: w.off_ns.max(start_ns),
                on_ns: w.on_ns.min(end_ns),
                ..w.clone()
            })
            .collect()
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
        let (mut dropped, mut unstacked) = (0, 0);
        self.waits.retain(|_, queue| {
            while queue.front().is_some_and(|w| w.on_ns < cutoff) {
                if let Some(wait) = queue.pop_front() {
                    dropped += 1;
                    match &wait.stack {
                        Some(stack) => stacks.release(stack),
                        None => unstacked += 1,
                    }
                }
            }
            !queue.is_empty()
        });
        self.waits_held -= dropped;
        self.waits_unstacked += unstacked;
        for pending in [&mut self.off_stacks, &mut self.returns] {
            pending.retain(|_, sample| {
                let keep = sample.ts_ns >= cutoff;
                if !keep {
                    stacks.release(sample);
                }
                keep
            });
        }
        self.heated.retain(|_, heated| heated.heat_ns >= cutoff);
        self.early.retain(|_, record| record.on_ns >= cutoff);
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
            source: SampleSource::Hot,
            python: Vec::new(),
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
            source: SampleSource::Background,
            python: Vec::new(),
            ..sample(7, ts)
        };
        for ts in [5, 10, 20, 30, 40, 50] {
            store.push(always(ts));
        }
        store.push(sample(7, 35));
        store.push(sample(7, 45));
        let claimed = store.claim(1, 7, 10, 50);
        let times: Vec<(u64, bool)> = claimed
            .iter()
            .map(|s| (s.ts_ns, s.source == SampleSource::Background))
            .collect();
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

    fn off(tid: u32, off_ns: u64, on_ns: u64, stacked: bool) -> OffCpuRecord {
        OffCpuRecord {
            pid: 1,
            tid,
            off_ns,
            on_ns,
            state: 1,
            stacked,
        }
    }

    #[test]
    fn a_wait_carries_its_switch_out_stack_and_a_span_claims_its_part() {
        let mut store = SampleStore::default();
        store.push(CpuSample {
            source: SampleSource::OffCpu { state: 1 },
            python: Vec::new(),
            ..sample(7, 100)
        });
        store.push_off_cpu(off(7, 100, 400, true));
        // A second wait whose stack was not taken (the period's stack was spent).
        store.push_off_cpu(off(7, 500, 600, false));
        let waits = store.claim_waits(1, 7, 200, 550);
        assert_eq!(waits.len(), 2);
        assert_eq!(
            (waits[0].off_ns, waits[0].on_ns),
            (200, 400),
            "cut to the span"
        );
        assert_eq!(waits[0].stack.as_ref().map(|s| s.ts_ns), Some(100));
        assert_eq!((waits[1].off_ns, waits[1].on_ns), (500, 550));
        assert!(waits[1].stack.is_none());
        assert!(store.claim_waits(1, 7, 600, 700).is_empty());
        assert!(
            store.claim_waits(2, 7, 0, 700).is_empty(),
            "another process"
        );
    }

    #[test]
    fn a_thread_asleep_when_heated_waits_from_its_heating_with_the_stack_it_returned_with() {
        let asleep = |tid| Heated {
            pid: 1,
            tid,
            heat_ns: 300,
            asleep: Some(Asleep {
                kernel: vec!["vmlinux!futex_wait".into()],
                in_syscall: true,
            }),
        };
        let returned = |tid| CpuSample {
            source: SampleSource::OffCpu { state: 1 },
            python: Vec::new(),
            ..sample(tid, 900)
        };
        // The heat report first, then the switch-in, then the return's stack ...
        let mut store = SampleStore::default();
        store.push_heated(asleep(7));
        store.push_off_cpu(off(7, 0, 900, false));
        store.push(returned(7));
        // ... or the switch-in and the stack before the report.
        store.push_off_cpu(off(8, 0, 900, false));
        store.push(returned(8));
        store.push_heated(asleep(8));
        for tid in [7, 8] {
            let waits = store.claim_waits(1, tid, 0, 1000);
            assert_eq!(waits.len(), 1, "thread {tid}");
            let wait = &waits[0];
            assert_eq!(
                (wait.off_ns, wait.on_ns, wait.before_heat),
                (300, 900, true)
            );
            assert_eq!(wait.kernel_names, vec!["vmlinux!futex_wait".to_owned()]);
            assert_eq!(
                wait.stack.as_ref().map(|s| s.ts_ns),
                Some(900),
                "thread {tid}"
            );
        }
        assert!(
            store.off_stacks.is_empty(),
            "a return's stack is no switch-out's"
        );
        // A thread that ran after its heating: the report is stale and dropped.
        store.push_heated(asleep(9));
        store.push_off_cpu(off(9, 500, 600, false));
        store.push_off_cpu(off(9, 0, 700, false));
        let waits = store.claim_waits(1, 9, 0, 1000);
        assert_eq!(waits.len(), 1);
        assert!(!waits[0].before_heat);
        store.prune(KEEP_NS + 1000);
        assert!(store.claim_waits(1, 7, 0, u64::MAX).is_empty());
        assert!(store.heated.is_empty() && store.early.is_empty());
    }
}
