//! Watching for processes by name or executable (`--name`, `--exe`): what the exec program does
//! for a process that is not a target yet.
//!
//! A name is matched in the kernel: at exec, the new program's `comm` is looked up in
//! `WATCH_COMMS`, and a match becomes a target before it runs its first instruction. An
//! executable can only be told in userspace (`/proc/PID/exe`): the kernel reports every exec and
//! userspace makes the matches targets.

/// Bytes of a task's `comm` (the kernel's `TASK_COMM_LEN`): 15 and a NUL.
pub const COMM_LEN: usize = 16;

/// `WATCH_EXECS` flag: look the comm of every exec up in `WATCH_COMMS`; a match becomes a
/// target and is reported ([`crate::ExecEvent`] with `adopted` 1).
pub const WATCH_BY_COMM: u32 = 1;
/// `WATCH_EXECS` flag: report every exec of a process that is not a target, for userspace to
/// match its executable.
pub const WATCH_EVERY_EXEC: u32 = 2;

/// Names the kernel looks up at most (entries of `WATCH_COMMS`).
pub const MAX_WATCH_COMMS: u32 = 64;

/// The key of `WATCH_COMMS` for a process name: its first 15 bytes (the kernel keeps no more of
/// a comm), NUL-padded, as `bpf_get_current_comm` returns a comm.
pub const fn comm_key(name: &[u8]) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let mut i = 0;
    while i < name.len() && i < COMM_LEN - 1 && name[i] != 0 {
        key[i] = name[i];
        i += 1;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comm_key_keeps_fifteen_bytes_and_pads_with_nul() {
        assert_eq!(&comm_key(b"nginx")[..6], b"nginx\0");
        assert_eq!(comm_key(b"nginx")[5..], [0; 11]);
        let long = comm_key(b"a-very-long-service-name");
        assert_eq!(&long[..15], b"a-very-long-ser");
        assert_eq!(long[15], 0, "the kernel's comm always ends in a NUL");
        assert_eq!(comm_key(b"a-very-long-ser"), long);
        assert_eq!(comm_key(b""), [0; COMM_LEN]);
    }
}
