//! A process's resource use from procfs: CPU time, RSS, threads (`/proc/PID/stat`) and open file
//! descriptors (`/proc/PID/fd`). The parser is a pure function; the readers only read.

/// One reading of `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// User CPU time, in clock ticks.
    pub utime: u64,
    /// System CPU time, in clock ticks.
    pub stime: u64,
    pub threads: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
    /// When the process started: clock ticks since boot. With the pid, what tells it from a
    /// later process the kernel gives the same pid (`process::identity`).
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Usage> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Usage {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        start_time: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Reads `/proc/PID/stat`; None once the process is gone.
pub fn read_usage(pid: u32) -> Option<Usage> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Counts `/proc/PID/fd` entries.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 7 0 123456 987654321 3000 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Usage {
                utime: 250,
                stime: 75,
                threads: 7,
                rss_pages: 3000,
                start_time: 123456,
            })
        );
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("1 (init) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_reads() {
        let usage = read_usage(std::process::id()).unwrap();
        assert!(usage.threads >= 1);
        assert!(usage.rss_pages > 0);
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }
}
