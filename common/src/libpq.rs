//! Records of libpq calls, written by the uprobes on a target's libpq.
//!
//! The entry probe of each query function writes a [`LibpqCallEvent`] with the statement text (or
//! the prepared statement's name) read from the caller's memory; the return probe of the
//! synchronous functions and of `PQgetResult` writes a [`LibpqResultEvent`] with what the
//! `PGresult` says. Which function fired is the probe's attach cookie, a [`LibpqFunction`] id.

use crate::EventHeader;

/// The libpq functions loupe probes. Ids are explicit and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LibpqFunction {
    Exec = 1,
    ExecParams = 2,
    Prepare = 3,
    ExecPrepared = 4,
    SendQuery = 5,
    SendQueryParams = 6,
    SendPrepare = 7,
    SendQueryPrepared = 8,
    GetResult = 9,
}

impl TryFrom<u32> for LibpqFunction {
    type Error = u32;
    fn try_from(raw: u32) -> Result<Self, u32> {
        Ok(match raw {
            1 => Self::Exec,
            2 => Self::ExecParams,
            3 => Self::Prepare,
            4 => Self::ExecPrepared,
            5 => Self::SendQuery,
            6 => Self::SendQueryParams,
            7 => Self::SendPrepare,
            8 => Self::SendQueryPrepared,
            9 => Self::GetResult,
            other => return Err(other),
        })
    }
}

/// How the probes on one function behave.
#[derive(Clone, Copy, Debug)]
pub struct LibpqProbe {
    pub symbol: &'static str,
    pub function: LibpqFunction,
    /// Argument holding the statement text, if any (0 is the PGconn).
    pub text_arg: Option<u8>,
    /// Argument holding a prepared statement's name, if any.
    pub name_arg: Option<u8>,
    /// Whether a return probe is attached: the synchronous functions (they return the PGresult)
    /// and PQgetResult.
    pub returns_result: bool,
}

impl LibpqFunction {
    /// Functions that run a query to completion before returning (they call the send and
    /// getResult functions inside).
    pub const fn is_synchronous(self) -> bool {
        matches!(
            self,
            Self::Exec | Self::ExecParams | Self::Prepare | Self::ExecPrepared
        )
    }

    /// Functions that only prepare a statement: they run nothing.
    pub const fn is_prepare(self) -> bool {
        matches!(self, Self::Prepare | Self::SendPrepare)
    }
}

const fn probe(
    symbol: &'static str,
    function: LibpqFunction,
    text_arg: Option<u8>,
    name_arg: Option<u8>,
    returns_result: bool,
) -> LibpqProbe {
    LibpqProbe {
        symbol,
        function,
        text_arg,
        name_arg,
        returns_result,
    }
}

/// Every probed function. PQexec(conn, query); PQexecParams(conn, command, ...);
/// PQprepare(conn, stmtName, query, ...); PQexecPrepared(conn, stmtName, ...); and the same for
/// the PQsend* forms; PQgetResult(conn).
pub const LIBPQ_PROBES: &[LibpqProbe] = &[
    probe("PQexec", LibpqFunction::Exec, Some(1), None, true),
    probe(
        "PQexecParams",
        LibpqFunction::ExecParams,
        Some(1),
        None,
        true,
    ),
    probe("PQprepare", LibpqFunction::Prepare, Some(2), Some(1), true),
    probe(
        "PQexecPrepared",
        LibpqFunction::ExecPrepared,
        None,
        Some(1),
        true,
    ),
    probe(
        "PQsendQuery",
        LibpqFunction::SendQuery,
        Some(1),
        None,
        false,
    ),
    probe(
        "PQsendQueryParams",
        LibpqFunction::SendQueryParams,
        Some(1),
        None,
        false,
    ),
    probe(
        "PQsendPrepare",
        LibpqFunction::SendPrepare,
        Some(2),
        Some(1),
        false,
    ),
    probe(
        "PQsendQueryPrepared",
        LibpqFunction::SendQueryPrepared,
        None,
        Some(1),
        false,
    ),
    probe("PQgetResult", LibpqFunction::GetResult, None, None, true),
];

/// The probe description of `function`.
pub fn libpq_probe(function: LibpqFunction) -> Option<&'static LibpqProbe> {
    LIBPQ_PROBES.iter().find(|probe| probe.function == function)
}

/// Statement text size classes, smallest first: most statements fit the first.
pub const LIBPQ_TEXT_CLASSES: [usize; 2] = [256, 4096];
/// Most statement text bytes read from one call.
pub const LIBPQ_MAX_TEXT: usize = 4096;
/// Most prepared statement name bytes read.
pub const LIBPQ_NAME_LEN: usize = 64;

/// A target thread entered a probed libpq function (`header.fd` is -1, `header.conn_id` 0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LibpqCallEvent<const N: usize> {
    pub header: EventHeader,
    /// Function entry: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// The `PGconn *` argument: identifies the connection within the process.
    pub pg_conn: u64,
    /// A [`LibpqFunction`] id.
    pub function: u32,
    /// Bytes of `text` read, without the terminating NUL; `text_truncated` says if there were more.
    pub text_len: u32,
    pub text_truncated: u32,
    /// Bytes of `name` read, without the NUL.
    pub name_len: u32,
    pub name: [u8; LIBPQ_NAME_LEN],
    pub text: [u8; N],
}
/// Bytes of a [`LibpqCallEvent`] before its text.
pub const LIBPQ_CALL_HEADER_LEN: usize = 120;
const _: () = assert!(size_of::<LibpqCallEvent<0>>() == LIBPQ_CALL_HEADER_LEN);

/// `ExecStatusType` values loupe reads (libpq-fe.h).
pub mod exec_status {
    pub const EMPTY_QUERY: u32 = 0;
    pub const COMMAND_OK: u32 = 1;
    pub const TUPLES_OK: u32 = 2;
    pub const BAD_RESPONSE: u32 = 5;
    pub const FATAL_ERROR: u32 = 7;
    pub const SINGLE_TUPLE: u32 = 9;
    pub const PIPELINE_ABORTED: u32 = 11;
    pub const TUPLES_CHUNK: u32 = 12;
}

/// Layout of libpq's `struct pg_result` (libpq-int.h) on 64-bit targets, unchanged since
/// PostgreSQL 9: the fields the return probe reads.
pub mod pg_result {
    pub const NTUPS: usize = 0;
    pub const RESULT_STATUS: usize = 40;
    pub const CMD_STATUS: usize = 44;
    pub const ERR_FIELDS: usize = 168;
    /// `PGMessageField { next, code, contents[] }`.
    pub const FIELD_CODE: usize = 8;
    pub const FIELD_CONTENTS: usize = 9;
    /// Error fields walked looking for the SQLSTATE ('C').
    pub const MAX_FIELDS: usize = 12;
}

/// Bytes of `cmdStatus` copied (libpq's CMDSTATUS_LEN is 64).
pub const LIBPQ_CMD_STATUS_LEN: usize = 64;

/// `flags` bit: the function returned a non-NULL `PGresult`.
pub const LIBPQ_HAS_RESULT: u32 = 1;

/// A probed function returned (`header.fd` is -1, `header.conn_id` 0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LibpqResultEvent {
    pub header: EventHeader,
    /// Function return: ns since boot, bpf_ktime_get_ns.
    pub ts_ns: u64,
    /// The `PGconn *` the function was called with (0 where the entry went unseen).
    pub pg_conn: u64,
    /// A [`LibpqFunction`] id.
    pub function: u32,
    /// [`LIBPQ_HAS_RESULT`] and nothing else yet.
    pub flags: u32,
    /// `PGresult.resultStatus` (an `ExecStatusType`).
    pub status: u32,
    /// `PGresult.ntups`.
    pub ntuples: u32,
    /// The SQLSTATE of an error result, NUL-padded.
    pub sqlstate: [u8; 8],
    /// `PGresult.cmdStatus`, the command tag, NUL-terminated within.
    pub cmd_status: [u8; LIBPQ_CMD_STATUS_LEN],
}
const _: () = assert!(size_of::<LibpqResultEvent>() == 128);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers and byte arrays with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::LibpqResultEvent {}
}
