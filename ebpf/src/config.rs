//! Globals userspace sets at load time (`EbpfLoader::set_global`); names in `loupe_common::names`.

/// Payload bytes to capture per syscall; clamped to `MAX_CAPTURE` where used.
#[unsafe(no_mangle)]
static CAPTURE_BYTES: u32 = 1024;

/// Unread ring buffer bytes above which a submit wakes the reader; below it, userspace drains
/// on its own interval and the kernel spares the ~1.4 us wakeup.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 256 * 1024;

/// Statement text bytes read per libpq call; clamped to `LIBPQ_MAX_TEXT` where used.
#[unsafe(no_mangle)]
static QUERY_BYTES: u32 = 2048;

/// Offsets of `pid` and `clone_flags` in the `task_newtask` record: userspace reads them from
/// the tracepoint's format file (the defaults are Linux 6.x's).
#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFFSET: u32 = 32;

/// Offsets of `prev_pid`, `prev_state` and `next_pid` in the `sched_switch` record: userspace
/// reads them from the tracepoint's format file (the defaults are Linux 6.x's).
#[unsafe(no_mangle)]
static SWITCH_PREV_PID_OFFSET: u32 = 24;
#[unsafe(no_mangle)]
static SWITCH_PREV_STATE_OFFSET: u32 = 32;
#[unsafe(no_mangle)]
static SWITCH_NEXT_PID_OFFSET: u32 = 56;

/// The least time between two recorded switch-out stacks of one hot thread (userspace sets it
/// to one sampling period): a thread that blocks often is not a flood.
#[unsafe(no_mangle)]
static OFF_CPU_GAP_NS: u64 = 1_001_001;

/// What the exec program does for a process that is not a target: `loupe_common::WATCH_*`
/// flags, 0 (the default) for nothing.
#[unsafe(no_mangle)]
static WATCH_EXECS: u32 = 0;

// A volatile read keeps the compiler from folding the default in: the loader patches .rodata.
pub fn capture_bytes() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&CAPTURE_BYTES) }
}

pub fn wakeup_bytes() -> u64 {
    // SAFETY: a plain read of an 8-byte static.
    unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }
}

pub fn newtask_pid_offset() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&NEWTASK_PID_OFFSET) }
}

pub fn newtask_flags_offset() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&NEWTASK_FLAGS_OFFSET) }
}

pub fn query_bytes() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&QUERY_BYTES) }
}

pub fn watch_execs() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&WATCH_EXECS) }
}

pub fn switch_prev_pid_offset() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&SWITCH_PREV_PID_OFFSET) }
}

pub fn switch_prev_state_offset() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&SWITCH_PREV_STATE_OFFSET) }
}

pub fn switch_next_pid_offset() -> u32 {
    // SAFETY: a plain read of a 4-byte static.
    unsafe { core::ptr::read_volatile(&SWITCH_NEXT_PID_OFFSET) }
}

pub fn off_cpu_gap_ns() -> u64 {
    // SAFETY: a plain read of an 8-byte static.
    unsafe { core::ptr::read_volatile(&OFF_CPU_GAP_NS) }
}
