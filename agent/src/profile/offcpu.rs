//! Off-CPU profiles: where a slow span's thread waited while it was hot, folded like the CPU
//! stacks but weighted by time (microseconds), each wait given its kind from its kernel frames
//! (a lock, a socket, the disk, a sleep, an event poll, a pipe, a CPU it was runnable for), and
//! the diagnosis line that leads with it when waiting is what made the request slow.

use std::{collections::HashMap, path::Path};

use loupe_common::STATE_PREEMPTED;

use super::{
    flame,
    samples::Wait,
    stacks::{Folded, Frame, top_lines, trusted},
};
use crate::spans::SpanRecord;

/// What a wait waited on, from its kernel frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitKind {
    Lock,
    Socket,
    Disk,
    Sleep,
    Poll,
    Pipe,
    /// Runnable, waiting for a CPU (preempted).
    Cpu,
    Other,
    /// No stack was recorded for it.
    Unknown,
}

impl WaitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Socket => "socket",
            Self::Disk => "disk",
            Self::Sleep => "sleep",
            Self::Poll => "poll",
            Self::Pipe => "pipe",
            Self::Cpu => "cpu",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }

    /// How the diagnosis says it: "waited on ...".
    fn phrase(self) -> &'static str {
        match self {
            Self::Lock => "a lock",
            Self::Socket => "a socket",
            Self::Disk => "the disk",
            Self::Sleep => "a sleep",
            Self::Poll => "an event poll",
            Self::Pipe => "a pipe",
            Self::Cpu => "a CPU (runnable, not running)",
            Self::Other => "the kernel",
            Self::Unknown => "something unrecorded",
        }
    }
}

/// The kind of a wait that left the CPU in task state `state` with these kernel frames (any
/// order; `vmlinux!function` or bare names).
pub fn kind(state: u32, kernel: &[String]) -> WaitKind {
    if state == 0 || state >= STATE_PREEMPTED {
        return WaitKind::Cpu;
    }
    let has = |needles: &[&str]| {
        kernel.iter().any(|frame| {
            let name = frame.rsplit('!').next().unwrap_or(frame);
            needles.iter().any(|needle| name.contains(needle))
        })
    };
    if kernel.is_empty() {
        WaitKind::Unknown
    } else if has(&["futex"]) {
        WaitKind::Lock
    } else if has(&[
        "ep_poll",
        "do_epoll_wait",
        "do_sys_poll",
        "do_select",
        "core_sys_select",
    ]) {
        WaitKind::Poll
    } else if has(&[
        "sk_wait_data",
        "tcp_recvmsg",
        "inet_",
        "unix_stream",
        "sock_",
        "tcp_sendmsg",
        "sk_stream_wait",
        "inet_csk_accept",
        "__inet_stream_connect",
    ]) {
        WaitKind::Socket
    } else if has(&[
        "io_schedule",
        "blk_",
        "folio_wait",
        "filemap_",
        "jbd2",
        "ext4_",
        "xfs_",
        "fsync",
        "wait_on_page",
    ]) {
        WaitKind::Disk
    } else if has(&["nanosleep", "do_nanosleep", "msleep"]) {
        WaitKind::Sleep
    } else if has(&["pipe_read", "pipe_write"]) {
        WaitKind::Pipe
    } else {
        WaitKind::Other
    }
}

/// The scheduler's and the tracing machinery's own frames at the inner end of a switch-out's
/// kernel stack: the same in every wait, so they are left out.
fn is_scheduler(frame: &str) -> bool {
    let name = frame.rsplit('!').next().unwrap_or(frame);
    name.starts_with("__traceiter")
        || name.starts_with("perf_trace")
        || name.starts_with("trace_")
        || name.starts_with("bpf_")
        || name.starts_with("__bpf")
        || name == "__schedule"
        || name == "schedule"
        || name.starts_with("preempt_schedule")
        || name.starts_with("__sched_text")
}

/// The folded waits of one span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaitStacks {
    /// Folded stacks weighted in microseconds (`samples`: the waits).
    pub folded: Folded,
    /// Time per kind, most first.
    pub kinds: Vec<(WaitKind, u64)>,
    pub total_ns: u64,
    /// Time of waits without a stack (a second wait within one sampling period).
    pub unstacked_ns: u64,
    /// A wait began before the thread was watched (it was asleep when it was heated): the
    /// time counts from the heating, so the request waited at least this long.
    pub before_heat: bool,
    /// Per kind, the innermost frame of the service's own code in its heaviest stack.
    pub frames: HashMap<WaitKind, String>,
    /// When the earliest wait began (the watch's start, at the latest).
    pub first_ns: u64,
}

impl WaitStacks {
    /// What the waits waited on and for how long: `lock in demo_app::reserve` (the kind and,
    /// where known, the service's own frame), most first.
    pub fn by_place(&self) -> Vec<(String, u64)> {
        self.kinds
            .iter()
            .map(|(kind, ns)| {
                let what = match self.frames.get(kind) {
                    Some(frame) => format!(
                        "{} in {}",
                        kind.as_str(),
                        frame.split_once('!').map_or(frame.as_str(), |(_, f)| f)
                    ),
                    None => kind.as_str().to_owned(),
                };
                (what, *ns)
            })
            .collect()
    }
}

/// Folds waits given as (wait, kernel frames innermost first, user frames innermost first or
/// None when no stack was recorded).
pub fn fold<'a>(
    waits: impl IntoIterator<Item = (&'a Wait, Vec<String>, Option<Vec<Frame>>)>,
) -> WaitStacks {
    let mut out = WaitStacks {
        first_ns: u64::MAX,
        ..WaitStacks::default()
    };
    let mut stacks: HashMap<String, u64> = HashMap::new();
    let mut leaves: HashMap<String, u64> = HashMap::new();
    let mut kinds: HashMap<WaitKind, u64> = HashMap::new();
    // Per kind: the heaviest stack's own frame and its weight.
    let mut heaviest: HashMap<(WaitKind, String), u64> = HashMap::new();
    for (wait, kernel, user) in waits {
        let ns = wait.ns();
        out.total_ns += ns;
        out.folded.samples += 1;
        out.before_heat |= wait.before_heat;
        out.first_ns = out.first_ns.min(wait.off_ns);
        let state = if wait.before_heat && !kernel.is_empty() {
            // Asleep when heated: /proc's frames tell what it waits on.
            1
        } else {
            wait.state
        };
        let kind = kind(state, &kernel);
        *kinds.entry(kind).or_default() += ns;
        let us = (ns / 1_000).max(1);
        let Some(user) = user else {
            out.unstacked_ns += ns;
            let line = format!("[{}: stack not recorded]", kind.as_str());
            *stacks.entry(line.clone()).or_default() += us;
            *leaves.entry(line).or_default() += us;
            continue;
        };
        let kernel: Vec<&str> = kernel
            .iter()
            .map(String::as_str)
            .skip_while(|frame| is_scheduler(frame))
            .collect();
        let mut parts: Vec<&str> = Vec::new();
        let (kept, cut) = trusted(&user);
        if cut {
            parts.push(super::stacks::TRUNCATED);
            out.folded.truncated += 1;
        }
        parts.extend(kept.iter().rev());
        parts.extend(kernel.iter().rev());
        if parts.is_empty() {
            parts.push("[unknown]");
        }
        *stacks.entry(parts.join(";")).or_default() += us;
        let leaf = kernel
            .first()
            .or(kept.first())
            .copied()
            .unwrap_or("[unknown]");
        *leaves.entry(leaf.to_owned()).or_default() += us;
        if let Some(own) = own_frame(&kept) {
            *heaviest.entry((kind, own.to_owned())).or_default() += ns;
        }
    }
    if out.first_ns == u64::MAX {
        out.first_ns = 0;
    }
    out.folded.stacks = ranked(stacks);
    out.folded.leaves = ranked(leaves);
    let mut kinds: Vec<(WaitKind, u64)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.kinds = kinds;
    let mut heaviest: Vec<((WaitKind, String), u64)> = heaviest.into_iter().collect();
    heaviest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for ((kind, frame), _) in heaviest {
        out.frames.entry(kind).or_insert(frame);
    }
    out
}

fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The innermost frame of the service's own code (user frames innermost first): past the C
/// library, the dynamic loader, the vDSO and the language runtimes' lock and I/O wrappers.
fn own_frame<'a>(user: &[&'a str]) -> Option<&'a str> {
    user.iter().copied().find(|frame| {
        let (module, function) = frame.split_once('!').unwrap_or(("", frame));
        let library = ["libc.so", "libpthread", "ld-linux", "[vdso]", "linux-vdso"]
            .iter()
            .any(|lib| module.starts_with(lib));
        let runtime = [
            "std::",
            "core::",
            "alloc::",
            "<std::",
            "<core::",
            "<alloc::",
            "parking_lot",
            "__",
        ]
        .iter()
        .any(|prefix| function.starts_with(prefix));
        !library && !runtime && *frame != "[unknown]"
    })
}

/// Folded stacks in the event: at most this many lines and bytes.
const TOP_STACKS: usize = 10;
const MAX_STACK_BYTES: usize = 4096;
/// A kind of wait leads the diagnosis when it took at least this share of the request.
const LEADS_AT: f64 = 0.2;

/// Puts the `off_cpu_profile` event on the span (and with `dir` its flamegraph), and leads the
/// diagnosis with the wait when waiting made the request slow. `first_sample`: the first CPU
/// sample's time, for the start of the watch.
pub fn attach(
    span: &mut SpanRecord,
    waits: &WaitStacks,
    first_sample: Option<u64>,
    dir: Option<&Path>,
) {
    let watched_from = first_sample
        .unwrap_or(u64::MAX)
        .min(waits.first_ns)
        .max(span.start_ns);
    let watched_ns = span.end_ns.saturating_sub(watched_from).max(1);
    let ms = |ns: u64| (ns / 1_000_000) as i64;
    let kinds = waits
        .kinds
        .iter()
        .map(|(kind, ns)| format!("{}={}ms", kind.as_str(), ns / 1_000_000))
        .collect::<Vec<_>>()
        .join(" ");
    let attributes = vec![
        ("off_cpu_ms", ms(waits.total_ns).into()),
        (
            "off_cpu_share",
            ((waits.total_ns as f64 / watched_ns as f64 * 1000.0).round() / 1000.0)
                .min(1.0)
                .into(),
        ),
        ("watched_ms", ms(watched_ns).into()),
        ("waits", (waits.folded.samples as i64).into()),
        ("kinds", kinds.into()),
        (
            "stacks",
            top_lines(&waits.folded, TOP_STACKS, MAX_STACK_BYTES).into(),
        ),
        ("unit", "us".into()),
        ("unstacked_ms", ms(waits.unstacked_ns).into()),
        ("began_before_watch", waits.before_heat.into()),
    ];
    let title = format!("{} (off-CPU)", span.name);
    flame::attach(
        span,
        flame::Profile {
            event: "off_cpu_profile",
            attributes,
            folded: &waits.folded,
            title,
            part: ".offcpu",
            path_key: "performance.off_cpu_profile.path",
        },
        dir,
    );
    span.set("performance.off_cpu_ms", ms(waits.total_ns));
    if let Some((kind, line)) = diagnosis(span.end_ns.saturating_sub(span.start_ns), waits) {
        let line = match span.attr_str("performance.diagnosis") {
            Some(rest) if !rest.is_empty() => format!("{line}; {rest}"),
            _ => line,
        };
        span.set("performance.wait_kind", kind.as_str());
        span.set("performance.diagnosis", line);
    }
}

/// "71% of the request waited on a lock in `orders::reserve` (off-CPU)", when the largest kind
/// of wait took at least [`LEADS_AT`] of the request ("at least" when a wait began before the
/// thread was watched).
fn diagnosis(duration_ns: u64, waits: &WaitStacks) -> Option<(WaitKind, String)> {
    // An event loop idle in its poll, a thread waiting for a CPU, or a wait without a stack is
    // not what the request waited on: the largest of the others leads, if any.
    let &(kind, ns) = waits
        .kinds
        .iter()
        .find(|(kind, _)| !matches!(kind, WaitKind::Poll | WaitKind::Cpu | WaitKind::Unknown))?;
    let share = ns as f64 / duration_ns.max(1) as f64;
    if share < LEADS_AT {
        return None;
    }
    let at_least = if waits.before_heat { "at least " } else { "" };
    let place = waits
        .frames
        .get(&kind)
        .map(|frame| {
            let function = frame.split_once('!').map_or(frame.as_str(), |(_, f)| f);
            format!(" in `{function}`")
        })
        .unwrap_or_default();
    Some((
        kind,
        format!(
            "{at_least}{:.0}% of the request waited on {}{place} (off-CPU)",
            (share * 100.0).min(100.0),
            kind.phrase()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn kinds_come_from_the_kernel_frames() {
        let k = |frames: &[&str]| kind(1, &names(frames));
        assert_eq!(
            k(&["vmlinux!__schedule", "vmlinux!futex_do_wait"]),
            WaitKind::Lock
        );
        assert_eq!(
            k(&["vmlinux!sk_wait_data", "vmlinux!tcp_recvmsg_locked"]),
            WaitKind::Socket
        );
        assert_eq!(k(&["vmlinux!do_epoll_wait"]), WaitKind::Poll);
        assert_eq!(
            k(&["vmlinux!io_schedule", "vmlinux!folio_wait_bit"]),
            WaitKind::Disk
        );
        assert_eq!(k(&["vmlinux!do_nanosleep"]), WaitKind::Sleep);
        assert_eq!(k(&["vmlinux!pipe_read"]), WaitKind::Pipe);
        assert_eq!(k(&["vmlinux!do_wait"]), WaitKind::Other);
        assert_eq!(k(&[]), WaitKind::Unknown);
        assert_eq!(kind(0, &names(&["vmlinux!futex_do_wait"])), WaitKind::Cpu);
        assert_eq!(kind(STATE_PREEMPTED, &[]), WaitKind::Cpu);
    }

    fn wait(off_ns: u64, on_ns: u64, before_heat: bool) -> Wait {
        Wait {
            pid: 1,
            tid: 1,
            off_ns,
            on_ns,
            state: 1,
            before_heat,
            stack: None,
            kernel_names: Vec::new(),
        }
    }

    #[test]
    fn waits_fold_by_time_and_name_the_own_frame() {
        let lock = wait(0, 800_000_000, true);
        let sleep = wait(800_000_000, 900_000_000, false);
        let unstacked = wait(900_000_000, 950_000_000, false);
        let user =
            |frames: &[&str]| Some(frames.iter().map(|f| Frame::Named((*f).into())).collect());
        let folded = fold([
            (
                &lock,
                names(&[
                    "vmlinux!__schedule",
                    "vmlinux!schedule",
                    "vmlinux!futex_do_wait",
                    "vmlinux!do_syscall_64",
                ]),
                user(&[
                    "libc.so.6!syscall",
                    "demo-app!std::sys::sync::mutex::futex::Mutex::lock_contended",
                    "demo-app!demo_app::reserve",
                    "demo-app!main",
                ]),
            ),
            (
                &sleep,
                names(&["vmlinux!do_nanosleep"]),
                user(&["libc.so.6!clock_nanosleep"]),
            ),
            (&unstacked, names(&["vmlinux!sk_wait_data"]), None),
        ]);
        assert_eq!(folded.total_ns, 950_000_000);
        assert_eq!(folded.unstacked_ns, 50_000_000);
        assert!(folded.before_heat);
        assert_eq!(
            folded.kinds,
            vec![
                (WaitKind::Lock, 800_000_000),
                (WaitKind::Sleep, 100_000_000),
                (WaitKind::Socket, 50_000_000)
            ]
        );
        assert_eq!(
            folded.folded.stacks[0],
            (
                "demo-app!main;demo-app!demo_app::reserve;\
                 demo-app!std::sys::sync::mutex::futex::Mutex::lock_contended;libc.so.6!syscall;\
                 vmlinux!do_syscall_64;vmlinux!futex_do_wait"
                    .to_owned(),
                800_000
            ),
            "the scheduler's frames are left out, weights are microseconds"
        );
        assert!(
            folded
                .folded
                .stacks
                .iter()
                .any(|(line, us)| line == "[socket: stack not recorded]" && *us == 50_000)
        );
        assert_eq!(folded.frames[&WaitKind::Lock], "demo-app!demo_app::reserve");
        assert_eq!(
            diagnosis(1_000_000_000, &folded),
            Some((
                WaitKind::Lock,
                "at least 80% of the request waited on a lock in `demo_app::reserve` (off-CPU)"
                    .to_owned()
            ))
        );
        // A request mostly on a CPU is not said to wait.
        assert_eq!(diagnosis(10_000_000_000, &folded), None);
        // An event loop idle in its poll is not what a request waited on.
        let idle = wait(0, 900_000_000, false);
        let polled = fold([(
            &idle,
            names(&["vmlinux!do_epoll_wait"]),
            user(&["libc.so.6!epoll_wait"]),
        )]);
        assert_eq!(diagnosis(1_000_000_000, &polled), None);
    }
}
