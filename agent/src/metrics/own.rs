//! loupe's own resource use, read from `/proc/self` when scraped (a file read: the metrics
//! server's thread does it, never a runtime worker).

use crate::process::usage::{Usage, parse_stat};

/// One reading of loupe's own process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OwnUsage {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub threads: u64,
}

impl OwnUsage {
    /// From a `/proc/PID/stat` reading, `ticks_per_second` and `page_size` the system's.
    pub fn from_stat(usage: Usage, ticks_per_second: u64, page_size: u64) -> Self {
        Self {
            cpu_seconds: (usage.utime + usage.stime) as f64 / ticks_per_second.max(1) as f64,
            rss_bytes: usage.rss_pages * page_size,
            threads: usage.threads,
        }
    }

    /// Reads `/proc/self/stat`; None if it cannot be read.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(Self::from_stat(
            parse_stat(&stat)?,
            procfs::ticks_per_second(),
            procfs::page_size(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_pages_become_seconds_and_bytes() {
        let usage = Usage {
            utime: 250,
            stime: 75,
            threads: 7,
            rss_pages: 3000,
            start_time: 1,
        };
        let own = OwnUsage::from_stat(usage, 100, 4096);
        assert!((own.cpu_seconds - 3.25).abs() < 1e-9);
        assert_eq!(own.rss_bytes, 3000 * 4096);
        assert_eq!(own.threads, 7);
    }

    #[test]
    fn this_process_reads() {
        let own = OwnUsage::read().unwrap();
        assert!(own.rss_bytes > 0 && own.threads >= 1);
    }
}
