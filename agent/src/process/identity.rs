//! Which process a pid is. The kernel hands a pid out again once its process is gone, so a pid
//! alone can name two processes over a run; with the time the process started
//! (`/proc/PID/stat` field 22) it names one. Wherever loupe keeps state per target (the kernel's
//! target map, library probes, resource readings), the identity says whether that state is
//! still the process's.

use super::usage::read_usage;

/// One process: its pid and when it started (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// What became of a process loupe knew, seen in what `/proc` shows on its pid now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still running.
    Running,
    /// Nothing runs on its pid.
    Gone,
    /// It exited and another process got its pid.
    Replaced(ProcessId),
}

impl ProcessId {
    /// The process running on `pid` now; None when there is none.
    pub fn of(pid: u32) -> Option<Self> {
        read_usage(pid).map(|usage| Self {
            pid,
            start_time: usage.start_time,
        })
    }

    /// What became of this process, given what runs on its pid now (`now`: that process's
    /// start time, None for nothing).
    pub fn fate(self, now: Option<u64>) -> Fate {
        match now {
            None => Fate::Gone,
            Some(start_time) if start_time == self.start_time => Fate::Running,
            Some(start_time) => Fate::Replaced(Self {
                pid: self.pid,
                start_time,
            }),
        }
    }

    /// What became of this process, read from /proc.
    pub fn check(self) -> Fate {
        self.fate(Self::of(self.pid).map(|now| now.start_time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_reused_by_a_later_process_is_another_process() {
        let old = ProcessId {
            pid: 4242,
            start_time: 1_000,
        };
        assert_eq!(old.fate(Some(1_000)), Fate::Running);
        assert_eq!(old.fate(None), Fate::Gone);
        let new = ProcessId {
            pid: 4242,
            start_time: 9_000,
        };
        assert_eq!(old.fate(Some(9_000)), Fate::Replaced(new));
        assert_ne!(old, new, "same pid, another process");
    }

    #[test]
    fn this_process_is_running_and_keeps_its_identity() {
        let me = ProcessId::of(std::process::id()).expect("this process is in /proc");
        assert_eq!(me.check(), Fate::Running);
        assert_eq!(ProcessId::of(std::process::id()), Some(me));
        let earlier = ProcessId {
            start_time: me.start_time.wrapping_sub(1),
            ..me
        };
        assert_eq!(earlier.check(), Fate::Replaced(me));
        assert_eq!(ProcessId::of(u32::MAX - 1), None);
    }
}
