//! Where a thread that is asleep right now waits, read from /proc: a thread heated while it
//! blocks (a request stuck on a lock since before its threshold) left the CPU before the
//! `off_cpu` program watched it, so its switch-out stack was never recorded. The kernel still
//! shows its kernel frames (`/proc/PID/task/TID/stack`: what it waits on) and whether it waits
//! in a syscall (`/proc/PID/task/TID/syscall`); its user stack is recorded as that syscall
//! returns (`off_cpu_return`), where it is the same as in the wait. (The stack pointer /proc
//! shows comes without the frame pointer the unwinder needs through some code, so the copy is
//! not taken from here.) Blocking reads: the upkeep's thread makes them.

use super::samples::Asleep;

/// How a thread is blocked, as `/proc/PID/task/TID/syscall` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The syscall it waits in (None: blocked outside one, as in a page fault).
    pub syscall: Option<u64>,
}

/// Parses `/proc/PID/task/TID/syscall`: `running` (None), `-1 SP PC`, or `NR A1..A6 SP PC`
/// (the stack and instruction pointers must be hex, or the line is not understood: None).
pub fn parse_syscall(text: &str) -> Option<Blocked> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let hex = |field: &str| u64::from_str_radix(field.strip_prefix("0x")?, 16).ok();
    let (syscall, sp, pc) = match fields.as_slice() {
        ["-1", sp, pc] => (None, sp, pc),
        [nr, _, _, _, _, _, _, sp, pc] => (Some(nr.parse().ok()?), sp, pc),
        _ => return None,
    };
    hex(sp)?;
    hex(pc)?;
    Some(Blocked { syscall })
}

/// Parses `/proc/PID/task/TID/stack` (`[<0>] futex_wait_queue+0x60/0x90` lines) into
/// `vmlinux!function` frames, innermost first.
pub fn parse_kernel_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let symbol = line.split_once("] ").map_or(line, |(_, rest)| rest).trim();
            let name = symbol.split('+').next()?.trim();
            (!name.is_empty()).then(|| format!("vmlinux!{name}"))
        })
        .collect()
}

/// What thread `tid` of `pid` waits on, if it is asleep.
pub fn read(pid: u32, tid: u32) -> Option<Asleep> {
    let dir = format!("/proc/{pid}/task/{tid}");
    let syscall = std::fs::read_to_string(format!("{dir}/syscall")).ok()?;
    let blocked = parse_syscall(&syscall)?;
    let kernel = std::fs::read_to_string(format!("{dir}/stack"))
        .map(|text| parse_kernel_stack(&text))
        .unwrap_or_default();
    Some(Asleep {
        kernel,
        in_syscall: blocked.syscall.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_parse() {
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(
            parse_syscall(
                "202 0x55f8c8eb2a10 0x189 0x0 0x0 0x0 0xffffffff 0x7fec1e82faa0 0x7fec1eea3f16\n"
            ),
            Some(Blocked { syscall: Some(202) })
        );
        assert_eq!(
            parse_syscall("-1 0x7ffd0 0x401000\n"),
            Some(Blocked { syscall: None })
        );
        assert_eq!(parse_syscall("202 0x1 zz"), None);
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn kernel_stacks_parse_innermost_first() {
        let text = "[<0>] futex_do_wait+0x46/0x90\n[<0>] __futex_wait+0x8a/0x100\n\
                    [<0>] do_syscall_64+0x71/0x290\n";
        assert_eq!(
            parse_kernel_stack(text),
            vec![
                "vmlinux!futex_do_wait",
                "vmlinux!__futex_wait",
                "vmlinux!do_syscall_64"
            ]
        );
        assert!(parse_kernel_stack("").is_empty());
    }

    /// A thread of this process blocked on a lock another holds: /proc shows the futex wait.
    #[test]
    fn a_thread_blocked_on_a_lock_is_read_asleep() {
        let lock = std::sync::Arc::new(std::sync::Mutex::new(()));
        let held = lock.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                drop(lock.lock().unwrap());
            })
        };
        let tid = rx.recv().unwrap();
        let pid = std::process::id();
        // Wait (bounded) until it blocks in the kernel.
        let mut asleep = None;
        for _ in 0..200 {
            asleep = read(pid, tid);
            if asleep
                .as_ref()
                .is_some_and(|a| a.kernel.iter().any(|f| f.contains("futex")))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(held);
        waiter.join().unwrap();
        let asleep = asleep.expect("the waiter blocked");
        assert!(
            asleep.kernel.iter().any(|frame| frame.contains("futex")),
            "{:?}",
            asleep.kernel
        );
        assert!(asleep.in_syscall);
    }
}
