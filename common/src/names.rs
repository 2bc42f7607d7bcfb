//! Names of programs, maps and globals in the eBPF object, shared so neither side spells them.

/// Ring buffer of event records (kernel writes, userspace reads).
pub const MAP_EVENTS: &str = "EVENTS";
/// Thread groups to trace (userspace writes at attach, kernel adds forked children).
pub const MAP_TARGET_PIDS: &str = "TARGET_PIDS";
/// Open sockets of target processes (kernel on accept/connect/close/close_range/exec, userspace
/// for sockets already open at attach and for its re-syncs against /proc).
pub const MAP_SOCKETS: &str = "SOCKETS";
/// Per-CPU loss counters, indexed by `LossSlot`.
pub const MAP_LOSS: &str = "LOSS";
/// Go programs' runtime layouts, by pid.
pub const MAP_GO_LAYOUTS: &str = "GO_LAYOUTS";
/// Python threads: where each keeps its current contextvars Context, by pid_tgid.
pub const MAP_PY_CONTEXTS: &str = "PY_CONTEXTS";
/// Python threads: where each one's frame chain starts ([`crate::PyThread`]), by pid_tgid.
pub const MAP_PY_THREADS: &str = "PY_THREADS";
/// Process names (`--name`) the kernel makes targets of at exec, as [`crate::comm_key`]s.
pub const MAP_WATCH_COMMS: &str = "WATCH_COMMS";
/// What the data exits must look for, one word of [`crate::RUNTIME_PYTHON`] and
/// [`crate::RUNTIME_TLS`] bits (userspace writes it as targets and probes change).
pub const MAP_RUNTIME: &str = "RUNTIME";

/// perf_event program: one CPU sample (user and kernel stacks) of the thread its event is
/// opened on. Userspace opens a CPU-clock event only on threads running something slow.
pub const PROGRAM_CPU_SAMPLE: &str = "cpu_sample";
/// perf_event program: one CPU sample of whatever a CPU runs, kept only when it is a target's
/// thread (`--profile-always`: one low-rate CPU-clock event per CPU). Its samples carry
/// [`crate::SAMPLE_BACKGROUND`].
pub const PROGRAM_CPU_SAMPLE_ALWAYS: &str = "cpu_sample_always";

/// tracepoint program at sched:sched_switch, attached only while some thread is hot: where a hot
/// thread waits off the CPU (its stack at switch-out, [`crate::SAMPLE_OFF_CPU`]) and for how long
/// ([`crate::OffCpuEvent`]).
pub const PROGRAM_OFF_CPU: &str = "off_cpu";
/// tracepoint program at raw_syscalls:sys_exit, attached with [`PROGRAM_OFF_CPU`]: the stack of
/// a hot thread returning from a wait it began before it was heated.
pub const PROGRAM_OFF_CPU_RETURN: &str = "off_cpu_return";
/// Hot threads by thread id ([`crate::HotThread`]): userspace inserts and removes, `off_cpu`
/// keeps their switch-outs.
pub const MAP_HOT_THREADS: &str = "HOT_THREADS";
/// Globals: where `sched_switch`'s fields are, and the least time between two switch-out stacks
/// of one thread.
pub const GLOBAL_SWITCH_PREV_PID_OFFSET: &str = "SWITCH_PREV_PID_OFFSET";
pub const GLOBAL_SWITCH_PREV_STATE_OFFSET: &str = "SWITCH_PREV_STATE_OFFSET";
pub const GLOBAL_SWITCH_NEXT_PID_OFFSET: &str = "SWITCH_NEXT_PID_OFFSET";
pub const GLOBAL_OFF_CPU_GAP_NS: &str = "OFF_CPU_GAP_NS";

/// Global: payload bytes to capture per syscall (clamped to `MAX_CAPTURE`).
pub const GLOBAL_CAPTURE_BYTES: &str = "CAPTURE_BYTES";
/// Global: unread ring buffer bytes above which a submit wakes the reader.
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";
/// Global: what the exec program does for a process that is not a target (`crate::watch`
/// flags; 0: nothing).
pub const GLOBAL_WATCH_EXECS: &str = "WATCH_EXECS";

/// A program and the tracepoints (category, name) it attaches to.
pub struct TracepointProgram {
    pub program: &'static str,
    pub tracepoints: &'static [(&'static str, &'static str)],
}

/// Every tracepoint program and where it attaches. The kernel defines programs by these names;
/// userspace loads and attaches exactly this list.
pub const TRACEPOINT_PROGRAMS: &[TracepointProgram] = &[
    TracepointProgram {
        program: "enter_read_buf",
        tracepoints: &[
            ("syscalls", "sys_enter_read"),
            ("syscalls", "sys_enter_recvfrom"),
        ],
    },
    TracepointProgram {
        program: "enter_write_buf",
        tracepoints: &[
            ("syscalls", "sys_enter_write"),
            ("syscalls", "sys_enter_sendto"),
        ],
    },
    TracepointProgram {
        program: "enter_read_iov",
        tracepoints: &[("syscalls", "sys_enter_readv")],
    },
    TracepointProgram {
        program: "enter_write_iov",
        tracepoints: &[("syscalls", "sys_enter_writev")],
    },
    TracepointProgram {
        program: "enter_read_msg",
        tracepoints: &[("syscalls", "sys_enter_recvmsg")],
    },
    TracepointProgram {
        program: "enter_write_msg",
        tracepoints: &[("syscalls", "sys_enter_sendmsg")],
    },
    TracepointProgram {
        program: "enter_sendfile",
        tracepoints: &[("syscalls", "sys_enter_sendfile64")],
    },
    TracepointProgram {
        program: "exit_data",
        tracepoints: &[
            ("syscalls", "sys_exit_read"),
            ("syscalls", "sys_exit_recvfrom"),
            ("syscalls", "sys_exit_write"),
            ("syscalls", "sys_exit_sendto"),
            ("syscalls", "sys_exit_readv"),
            ("syscalls", "sys_exit_writev"),
            ("syscalls", "sys_exit_recvmsg"),
            ("syscalls", "sys_exit_sendmsg"),
            ("syscalls", "sys_exit_sendfile64"),
        ],
    },
    TracepointProgram {
        program: "enter_accept",
        tracepoints: &[
            ("syscalls", "sys_enter_accept"),
            ("syscalls", "sys_enter_accept4"),
        ],
    },
    TracepointProgram {
        program: "exit_accept",
        tracepoints: &[
            ("syscalls", "sys_exit_accept"),
            ("syscalls", "sys_exit_accept4"),
        ],
    },
    TracepointProgram {
        program: "enter_connect",
        tracepoints: &[("syscalls", "sys_enter_connect")],
    },
    TracepointProgram {
        program: "exit_connect",
        tracepoints: &[("syscalls", "sys_exit_connect")],
    },
    TracepointProgram {
        program: "enter_close",
        tracepoints: &[("syscalls", "sys_enter_close")],
    },
    TracepointProgram {
        program: "enter_close_range",
        tracepoints: &[("syscalls", "sys_enter_close_range")],
    },
    TracepointProgram {
        program: "exit_close_range",
        tracepoints: &[("syscalls", "sys_exit_close_range")],
    },
    TracepointProgram {
        program: "enter_dup",
        tracepoints: &[("syscalls", "sys_enter_dup")],
    },
    TracepointProgram {
        program: "enter_dup2",
        tracepoints: &[
            ("syscalls", "sys_enter_dup2"),
            ("syscalls", "sys_enter_dup3"),
        ],
    },
    TracepointProgram {
        program: "enter_fcntl",
        tracepoints: &[("syscalls", "sys_enter_fcntl")],
    },
    TracepointProgram {
        program: "exit_dup",
        tracepoints: &[
            ("syscalls", "sys_exit_dup"),
            ("syscalls", "sys_exit_dup2"),
            ("syscalls", "sys_exit_dup3"),
            ("syscalls", "sys_exit_fcntl"),
        ],
    },
    TracepointProgram {
        program: "sock_state",
        tracepoints: &[("sock", "inet_sock_set_state")],
    },
    TracepointProgram {
        program: "process_fork",
        tracepoints: &[("task", "task_newtask")],
    },
    TracepointProgram {
        program: "process_exec",
        tracepoints: &[("sched", "sched_process_exec")],
    },
];

/// Uprobe program on entry to every probed libpq function (the attach cookie says which).
pub const PROGRAM_LIBPQ_ENTER: &str = "libpq_enter";
/// Uretprobe program on the libpq functions that return a `PGresult`.
pub const PROGRAM_LIBPQ_RETURN: &str = "libpq_return";
/// Uprobe program on the probed Go functions (the attach cookie says which).
pub const PROGRAM_GO_ENTER: &str = "go_enter";
/// Uprobe program: entry to an OpenSSL record function (the cookie says which).
pub const PROGRAM_TLS_ENTER: &str = "tls_enter";
/// Uretprobe program: return from an OpenSSL record function.
pub const PROGRAM_TLS_RETURN: &str = "tls_return";
/// Global: statement text bytes to read per libpq call (clamped to `LIBPQ_MAX_TEXT`).
pub const GLOBAL_QUERY_BYTES: &str = "QUERY_BYTES";
/// Global: where `pid` sits in this kernel's `task_newtask` record.
pub const GLOBAL_NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
/// Global: where `clone_flags` sits in this kernel's `task_newtask` record.
pub const GLOBAL_NEWTASK_FLAGS_OFFSET: &str = "NEWTASK_FLAGS_OFFSET";
