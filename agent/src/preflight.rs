//! Checks made before anything is attached, each failing with one line that says what to do.

use std::{ffi::CString, path::Path};

/// Where loupe expects tracefs (and mounts it when it is missing).
pub const TRACEFS: &str = "/sys/kernel/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "loupe needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs; run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "this kernel exposes no BTF at {BTF}; loupe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it with `mount -t tracefs nodev {TRACEFS}`"
    )]
    Tracefs(std::io::Error),
    #[error("no process with pid {0}")]
    NoSuchPid(u32),
}

/// Runs every check, in the order a user would fix them.
pub fn check(pids: &[u32]) -> Result<(), PreflightError> {
    check_privileges()?;
    if !Path::new(BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    for &pid in pids {
        if !crate::process::is_live_process(pid) {
            return Err(PreflightError::NoSuchPid(pid));
        }
    }
    ensure_tracefs()
}

fn check_privileges() -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_BPF) && has(CAP_PERFMON) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

/// Mounts tracefs at [`TRACEFS`] unless it is there already: tracepoints attach through it.
fn ensure_tracefs() -> Result<(), PreflightError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let source = CString::new("nodev").expect("no NUL");
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: the three pointers are valid NUL-terminated strings that outlive the call; data is
    // null, which tracefs accepts.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(PreflightError::Tracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}
