//! The resource snapshot on a slow span: what its process used while the span ran. Every watched
//! process is read ten times a second (one `/proc/PID/stat` read each); a slow span is annotated
//! from the last reading before it started and a fresh one at its end:
//! `performance.process.cpu_ms` (user + system, split in `cpu_user_ms` and `cpu_system_ms`),
//! `rss_bytes` (the most seen while it ran), `threads` and `open_fds` (at its end).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::{
    process::usage::{Usage, open_fds, read_usage},
    spans::SpanRecord,
};

/// How often the stitch stage calls [`ResourceSampler::sample`].
pub const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Readings kept per process: two minutes at ten a second.
const KEEP_NS: u64 = 120_000_000_000;
/// Processes watched at once.
const MAX_PIDS: usize = 256;
/// An open-fd count is reused this long (a process with 100k fds takes ms to list).
const FD_CACHE_NS: u64 = 1_000_000_000;
/// A reading at a span's end is reused this long: when every request is slow (an overload),
/// thousands of spans a second end within a few ms of each other.
const END_READING_NS: u64 = 10_000_000;

/// Per-process readings over the last two minutes.
pub struct ResourceSampler {
    history: HashMap<u32, VecDeque<(u64, Usage)>>,
    fds: HashMap<u32, (u64, u64)>,
    /// The last end-of-span reading per process, with its time.
    latest: HashMap<u32, (u64, Usage)>,
    ticks_per_second: u64,
    page_size: u64,
}

impl ResourceSampler {
    pub fn new(pids: &[u32]) -> Self {
        let mut sampler = Self {
            history: HashMap::default(),
            fds: HashMap::default(),
            latest: HashMap::default(),
            ticks_per_second: procfs::ticks_per_second().max(1),
            page_size: procfs::page_size(),
        };
        for &pid in pids {
            sampler.watch(pid);
        }
        sampler
    }

    /// Starts reading `pid` (a target at attach, or a child a target forked).
    pub fn watch(&mut self, pid: u32) {
        if self.history.len() < MAX_PIDS && !self.history.contains_key(&pid) {
            self.history.insert(pid, VecDeque::new());
        }
    }

    /// Stops reading `pid` and forgets its readings (its process exited, or a new process
    /// took its pid).
    pub fn forget(&mut self, pid: u32) {
        self.history.remove(&pid);
        self.fds.remove(&pid);
        self.latest.remove(&pid);
    }

    /// Reads every watched process; forgets those gone.
    pub fn sample(&mut self, now_ns: u64) {
        self.history.retain(|&pid, readings| match read_usage(pid) {
            Some(usage) => {
                // Another process on the pid (its start time differs): the readings were the
                // old one's.
                if readings
                    .back()
                    .is_some_and(|(_, last)| last.start_time != usage.start_time)
                {
                    readings.clear();
                }
                readings.push_back((now_ns, usage));
                while readings
                    .front()
                    .is_some_and(|(at, _)| now_ns.saturating_sub(*at) > KEEP_NS)
                {
                    readings.pop_front();
                }
                true
            }
            None => false,
        });
        self.fds.retain(|pid, _| self.history.contains_key(pid));
        self.latest.retain(|pid, _| self.history.contains_key(pid));
    }

    /// Writes the snapshot on `span` (a slow one, just finished at about `now_ns`).
    pub fn annotate(&mut self, span: &mut SpanRecord, now_ns: u64) {
        let end = match self.latest.get(&span.pid) {
            Some(&(at, usage)) if now_ns.saturating_sub(at) < END_READING_NS => usage,
            _ => {
                let Some(usage) = read_usage(span.pid) else {
                    return;
                };
                if self.history.contains_key(&span.pid) {
                    self.latest.insert(span.pid, (now_ns, usage));
                }
                usage
            }
        };
        let readings = self.history.get(&span.pid);
        // Only readings of the process the span ended in: the one on its pid now.
        let same = |usage: &Usage| usage.start_time == end.start_time;
        let before = readings.and_then(|readings| {
            readings
                .iter()
                .rev()
                .find(|(at, usage)| *at <= span.start_ns && same(usage))
                .map(|(_, usage)| *usage)
        });
        if let Some(start) = before {
            let ms = |ticks: u64| (ticks * 1000 / self.ticks_per_second) as i64;
            let user = ms(end.utime.saturating_sub(start.utime));
            let system = ms(end.stime.saturating_sub(start.stime));
            span.set("performance.process.cpu_ms", user + system);
            span.set("performance.process.cpu_user_ms", user);
            span.set("performance.process.cpu_system_ms", system);
        }
        let peak_pages = readings
            .into_iter()
            .flatten()
            .filter(|(at, usage)| *at >= span.start_ns && *at <= span.end_ns && same(usage))
            .map(|(_, usage)| usage.rss_pages)
            .chain([end.rss_pages])
            .max()
            .unwrap_or(end.rss_pages);
        span.set(
            "performance.process.rss_bytes",
            (peak_pages * self.page_size) as i64,
        );
        span.set("performance.process.threads", end.threads as i64);
        let fds = match self.fds.get(&span.pid) {
            Some(&(at, count)) if now_ns.saturating_sub(at) < FD_CACHE_NS => Some(count),
            _ => open_fds(span.pid).inspect(|&count| {
                self.fds.insert(span.pid, (now_ns, count));
            }),
        };
        if let Some(fds) = fds {
            span.set("performance.process.open_fds", fds as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::patterns::testing::server, spans::AttrValue};

    /// CPU time of `clock` (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID), in ns.
    fn cpu_ns(clock: libc::clockid_t) -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write to.
        assert_eq!(unsafe { libc::clock_gettime(clock, &mut now) }, 0);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    #[test]
    fn a_slow_span_of_a_live_process_gets_its_snapshot() {
        let pid = std::process::id();
        let mut sampler = ResourceSampler::new(&[pid]);
        sampler.sample(1_000);
        let process_before = cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
        // Burn 200 ms of this thread's CPU between the readings.
        let thread_start = cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        let mut x = 0u64;
        while cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID) - thread_start < 200_000_000 {
            for _ in 0..1000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        std::hint::black_box(x);
        // The whole process's CPU time (tests run in parallel threads): what /proc/PID/stat adds.
        let burnt_ms = (cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - process_before) as i64 / 1_000_000;
        let mut span = server(0, 0);
        span.start_ns = 2_000;
        span.end_ns = 3_000;
        span.pid = pid;
        sampler.annotate(&mut span, 3_000);
        let int = |key| match span.attr(key) {
            Some(AttrValue::Int(n)) => *n,
            other => panic!("{key}: {other:?}"),
        };
        assert!(int("performance.process.rss_bytes") > 0);
        assert!(int("performance.process.threads") >= 1);
        assert!(int("performance.process.open_fds") >= 3);
        // User and system time are each whole clock ticks: the sum is within two ticks.
        let tick_ms = 1000 / procfs::ticks_per_second().max(1) as i64;
        let cpu_ms = int("performance.process.cpu_ms");
        assert!(burnt_ms >= 200, "{burnt_ms} ms burnt");
        assert!(
            (cpu_ms - burnt_ms).abs() <= 2 * tick_ms + 5,
            "{cpu_ms} ms read, {burnt_ms} ms burnt"
        );
        assert_eq!(
            cpu_ms,
            int("performance.process.cpu_user_ms") + int("performance.process.cpu_system_ms")
        );
    }

    #[test]
    fn a_span_without_an_earlier_reading_has_no_cpu_time() {
        let pid = std::process::id();
        let mut sampler = ResourceSampler::new(&[pid]);
        let mut span = server(0, 0);
        span.pid = pid;
        sampler.annotate(&mut span, 0);
        assert_eq!(span.attr("performance.process.cpu_ms"), None);
        assert!(span.attr("performance.process.rss_bytes").is_some());
    }

    #[test]
    fn readings_of_an_earlier_process_on_the_pid_are_not_its() {
        let pid = std::process::id();
        let mut sampler = ResourceSampler::new(&[pid]);
        let now = read_usage(pid).unwrap();
        // What an earlier process on this pid used: far more CPU and memory.
        let earlier = Usage {
            utime: 0,
            stime: 0,
            rss_pages: now.rss_pages * 100,
            start_time: now.start_time - 1,
            ..now
        };
        sampler
            .history
            .get_mut(&pid)
            .unwrap()
            .push_back((1_000, earlier));
        let mut span = server(0, 0);
        span.pid = pid;
        span.start_ns = 2_000;
        span.end_ns = 3_000;
        sampler.annotate(&mut span, 3_000);
        assert_eq!(
            span.attr("performance.process.cpu_ms"),
            None,
            "no reading of this process before the span: no CPU time"
        );
        let rss = span.attr_int("performance.process.rss_bytes").unwrap();
        assert!(rss < (earlier.rss_pages * procfs::page_size()) as i64);

        sampler.sample(4_000);
        let readings = &sampler.history[&pid];
        assert_eq!(readings.len(), 1, "the earlier process's readings went");
        assert_eq!(readings[0].1.start_time, now.start_time);
        sampler.forget(pid);
        assert!(sampler.history.is_empty());
    }

    #[test]
    fn a_gone_process_is_forgotten_and_left_alone() {
        let mut sampler = ResourceSampler::new(&[u32::MAX - 1]);
        sampler.sample(1);
        assert!(sampler.history.is_empty());
        let mut span = server(0, 1);
        span.pid = u32::MAX - 1;
        sampler.annotate(&mut span, 1);
        assert!(span.attributes.is_empty());
    }
}
