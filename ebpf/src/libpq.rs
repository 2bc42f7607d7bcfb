//! libpq uprobes: the statement a target passes to a query function, and what the `PGresult` it
//! gets back says. Attached per process by userspace (so no PID check is needed here), with the
//! function's `LibpqFunction` id as the attach cookie.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    programs::{ProbeContext, RetProbeContext},
};
use loupe_common::{
    EventHeader, EventKind, LIBPQ_HAS_RESULT, LIBPQ_NAME_LEN, LIBPQ_TEXT_CLASSES, LibpqCallEvent,
    LibpqFunction, LibpqResultEvent, LossSlot, exec_status, pg_result,
};

use crate::{
    config, emit,
    maps::{LIBPQ_CONN, count_loss},
};

fn header(kind: EventKind, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: -1,
        conn_id: 0,
    }
}

/// Entry to any probed function.
pub fn try_enter(ctx: &ProbeContext) -> Result<(), i64> {
    // SAFETY: the context pointer is the program's own.
    let function = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let pg_conn: u64 = ctx.arg(0).ok_or(-1i64)?;
    let (text_arg, name_arg) = match function {
        f if f == LibpqFunction::GetResult as u32 => {
            // Only the return carries news; it needs the connection this entry was given.
            if LIBPQ_CONN.insert(pid_tgid, pg_conn, 0).is_err() {
                count_loss(LossSlot::InFlightFull);
            }
            return Ok(());
        }
        f if f == LibpqFunction::Prepare as u32 || f == LibpqFunction::SendPrepare as u32 => {
            (Some(2), Some(1))
        }
        f if f == LibpqFunction::ExecPrepared as u32
            || f == LibpqFunction::SendQueryPrepared as u32 =>
        {
            (None, Some(1))
        }
        _ => (Some(1), None),
    };
    let call = Call {
        header: header(EventKind::LibpqCall, pid_tgid),
        ts_ns: emit::now_ns(),
        pg_conn,
        function,
        text: text_arg.and_then(|n| ctx.arg::<u64>(n)).unwrap_or(0),
        name: name_arg.and_then(|n| ctx.arg::<u64>(n)).unwrap_or(0),
        limit: config::query_bytes(),
    };
    match emit_call::<{ LIBPQ_TEXT_CLASSES[0] }>(&call, false)? {
        Filled::Whole => Ok(()),
        Filled::Full => emit_call::<{ LIBPQ_TEXT_CLASSES[1] }>(&call, true).map(|_| ()),
    }
}

struct Call {
    header: EventHeader,
    ts_ns: u64,
    pg_conn: u64,
    function: u32,
    /// User pointers (0 where the function has no such argument).
    text: u64,
    name: u64,
    limit: u32,
}

enum Filled {
    /// The text fit (or there was none).
    Whole,
    /// The text filled the class and more is allowed: nothing was written, try a larger class.
    Full,
}

/// Reserves a `LibpqCallEvent<N>` and fills it in place (it does not fit the BPF stack).
#[inline(always)]
fn emit_call<const N: usize>(call: &Call, last: bool) -> Result<Filled, i64> {
    let mut entry = emit::reserve::<LibpqCallEvent<N>>()?;
    let event = entry.as_mut_ptr();
    let mut limit = call.limit;
    if limit > N as u32 {
        limit = N as u32;
    }
    if limit == 0 {
        limit = 1;
    }
    // SAFETY: `event` points at a reserved, writable record of size_of::<LibpqCallEvent<N>>();
    // fields are written through raw pointers, and both string reads are bounded by their arrays.
    unsafe {
        (*event).header = call.header;
        (*event).ts_ns = call.ts_ns;
        (*event).pg_conn = call.pg_conn;
        (*event).function = call.function;
        (*event).name_len = 0;
        (*event).text_len = 0;
        (*event).text_truncated = 0;
        if call.name != 0 {
            let ret = generated::bpf_probe_read_user_str(
                (*event).name.as_mut_ptr().cast(),
                LIBPQ_NAME_LEN as u32,
                call.name as *const core::ffi::c_void,
            );
            if ret > 0 {
                (*event).name_len = ret as u32 - 1;
            }
        }
        if call.text != 0 {
            let ret = generated::bpf_probe_read_user_str(
                (*event).text.as_mut_ptr().cast(),
                limit,
                call.text as *const core::ffi::c_void,
            );
            if ret > 0 {
                let ret = ret as u32;
                if ret >= limit {
                    // No NUL within the limit: the text may go on.
                    if !last && call.limit > N as u32 {
                        entry.discard(0);
                        return Ok(Filled::Full);
                    }
                    (*event).text_truncated = 1;
                }
                (*event).text_len = ret - 1;
            }
        }
    }
    entry.submit(emit::submit_flags());
    Ok(Filled::Whole)
}

/// Return from a synchronous query function or PQgetResult: the returned `PGresult *`.
pub fn try_return(ctx: &RetProbeContext) -> Result<(), i64> {
    // SAFETY: the context pointer is the program's own.
    let function = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let result: u64 = ctx.ret();
    let mut pg_conn = 0;
    if function == LibpqFunction::GetResult as u32 {
        // SAFETY: copied out at once; deleted right after.
        if let Some(conn) = unsafe { LIBPQ_CONN.get(pid_tgid) } {
            pg_conn = *conn;
        }
        let _ = LIBPQ_CONN.remove(pid_tgid);
    }
    let mut entry = emit::reserve::<LibpqResultEvent>()?;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record; every read of the target's memory
    // goes through bpf_probe_read_user into a bounded field.
    unsafe {
        (*event).header = header(EventKind::LibpqResult, pid_tgid);
        (*event).ts_ns = emit::now_ns();
        (*event).pg_conn = pg_conn;
        (*event).function = function;
        (*event).flags = 0;
        (*event).status = 0;
        (*event).ntuples = 0;
        (*event).sqlstate = [0; 8];
        (*event).cmd_status[0] = 0;
        if result != 0 {
            (*event).flags = LIBPQ_HAS_RESULT;
            read_result(&mut *event, result);
        }
    }
    entry.submit(emit::submit_flags());
    Ok(())
}

/// Copies status, row count, command tag and (for errors) SQLSTATE out of a `PGresult`.
#[inline(always)]
fn read_result(event: &mut LibpqResultEvent, result: u64) {
    // SAFETY: bpf_probe_read_user faults safely on bad addresses.
    unsafe {
        event.ntuples =
            bpf_probe_read_user((result + pg_result::NTUPS as u64) as *const u32).unwrap_or(0);
        event.status =
            bpf_probe_read_user((result + pg_result::RESULT_STATUS as u64) as *const u32)
                .unwrap_or(u32::MAX);
        let ret = generated::bpf_probe_read_user_str(
            event.cmd_status.as_mut_ptr().cast(),
            event.cmd_status.len() as u32,
            (result + pg_result::CMD_STATUS as u64) as *const core::ffi::c_void,
        );
        if ret <= 0 {
            event.cmd_status[0] = 0;
        }
    }
    if event.status != exec_status::FATAL_ERROR {
        return;
    }
    // SAFETY: as above; the walk is bounded by MAX_FIELDS.
    unsafe {
        let mut field: u64 =
            bpf_probe_read_user((result + pg_result::ERR_FIELDS as u64) as *const u64).unwrap_or(0);
        for _ in 0..pg_result::MAX_FIELDS {
            if field == 0 {
                break;
            }
            let code: u8 = bpf_probe_read_user((field + pg_result::FIELD_CODE as u64) as *const u8)
                .unwrap_or(0);
            if code == b'C' {
                let _ = generated::bpf_probe_read_user(
                    event.sqlstate.as_mut_ptr().cast(),
                    5,
                    (field + pg_result::FIELD_CONTENTS as u64) as *const core::ffi::c_void,
                );
                break;
            }
            field = bpf_probe_read_user(field as *const u64).unwrap_or(0);
        }
    }
}
