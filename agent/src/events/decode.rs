//! One ring buffer record to one [`Event`]. Lengths are checked before every read and reads are
//! unaligned copies; a bad record is an error to count, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use loupe_common::{
    CloseEvent, ConnEvent, ConnLocalEvent, CpuSampleHead, DATA_EVENT_HEADER_LEN, DataEvent,
    Direction, DupEvent, EventHeader, EventKind, ExecEvent, ForkEvent, GoCallEvent, GoFunction,
    LIBPQ_CALL_HEADER_LEN, LIBPQ_HAS_RESULT, LibpqCallEvent, LibpqFunction, LibpqResultEvent,
    OffCpuEvent, ParkedEvent, ResyncEvent, SocketRole, TAIL_CAPTURE, libpq_probe,
};

/// Bytes moved by one syscall on a tracked socket.
#[derive(Clone, Debug)]
pub struct DataRecord {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// The connection, shared by every duplicate of its fd.
    pub conn_id: u64,
    /// ns since boot (CLOCK_MONOTONIC).
    pub enter_ns: u64,
    /// ns since boot (CLOCK_MONOTONIC).
    pub exit_ns: u64,
    pub total_len: u32,
    pub direction: Direction,
    /// The goroutine that made the syscall (Go programs of a known version), else 0.
    pub goid: u64,
    /// The goroutine that started that one, else 0.
    pub parent_goid: u64,
    /// Plaintext an OpenSSL call moved (the connection's socket bytes are its ciphertext).
    pub tls: bool,
    /// The captured prefix of what moved (`len() <= total_len`).
    pub payload: Bytes,
    /// The last bytes of a read longer than the capture (empty otherwise): where its reply
    /// ended, past the bytes not captured.
    pub tail: Bytes,
}

/// A socket accepted or connected.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub role: SocketRole,
    /// The peer, when the kernel could read it and it is an IP address.
    pub peer: Option<SocketAddr>,
    /// The socket's own address: known for a connect.
    pub local: Option<SocketAddr>,
}

/// A target thread entered a probed libpq function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibpqCallRecord {
    pub pid: u32,
    pub tid: u32,
    /// ns since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The `PGconn *`: a connection's identity within its process.
    pub pg_conn: u64,
    pub function: LibpqFunction,
    /// The statement text, for the functions that take one (literals included).
    pub text: Option<String>,
    pub text_truncated: bool,
    /// The prepared statement's name, for the functions that take one ("" is the unnamed one).
    pub name: Option<String>,
}

/// What a returned `PGresult` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgResultInfo {
    /// An `ExecStatusType`.
    pub status: u32,
    pub ntuples: u32,
    pub sqlstate: Option<String>,
    /// The command tag, e.g. "SELECT 3", "INSERT 0 1".
    pub cmd_status: String,
}

/// A probed libpq function returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibpqResultRecord {
    pub pid: u32,
    pub tid: u32,
    /// ns since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The `PGconn *` (0 where unknown).
    pub pg_conn: u64,
    pub function: LibpqFunction,
    /// None where the function returned NULL.
    pub result: Option<PgResultInfo>,
}

/// A decoded record.
#[derive(Clone, Debug)]
pub enum Event {
    Data(DataRecord),
    Conn(ConnRecord),
    Close {
        pid: u32,
        tid: u32,
        fd: i32,
        conn_id: u64,
        ts_ns: u64,
    },
    /// `fd` now also refers to connection `conn_id`.
    Dup {
        pid: u32,
        fd: i32,
        conn_id: u64,
    },
    Fork {
        parent: u32,
        child: u32,
    },
    /// A probed Go function was entered by goroutine `goid` with receiver `object`.
    GoCall {
        pid: u32,
        goid: u64,
        parent_goid: u64,
        function: GoFunction,
        object: u64,
    },
    /// Connection `conn_id`'s own address, learnt after its connect returned.
    ConnLocal {
        pid: u32,
        conn_id: u64,
        local: SocketAddr,
    },
    LibpqCall(LibpqCallRecord),
    LibpqResult(LibpqResultRecord),
    CpuSample(CpuSample),
    /// A hot thread came back on a CPU.
    OffCpu(OffCpuRecord),
    /// A process that was not a target exec'd (loupe watches for names or executables): a new
    /// program on `pid`, never the process loupe may have known on it before.
    Exec(ExecRecord),
}

/// The exec of a process that was not a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub pid: u32,
    /// ns since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The new program's comm.
    pub comm: String,
    /// The kernel made it a target at once (its name is watched).
    pub adopted: bool,
}

/// Where a hot thread was when the CPU clock sampled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSample {
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    /// User instruction pointers, innermost first (empty when the walk failed).
    pub user: Vec<u64>,
    /// Kernel instruction pointers, innermost first (empty when sampled in user mode).
    pub kernel: Vec<u64>,
    /// The user registers and a copy of the user stack from the stack pointer up, to unwind
    /// where `user` (a frame-pointer walk) stops short. None when the kernel could read neither.
    pub unwind: Option<UnwindInput>,
    /// Why the stack was taken.
    pub source: SampleSource,
    /// The thread's Python frames when it was sampled, innermost first (empty: not a thread of
    /// a CPython loupe reads).
    pub python: Vec<PyRawFrame>,
}

/// One Python frame as the kernel read it: its code object, instruction pointer and marker
/// byte (`process::python::Marker` tells what the marker means for the interpreter's version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyRawFrame {
    pub code: u64,
    pub instr: u64,
    pub marker: u8,
}

/// What took a [`CpuSample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleSource {
    /// The CPU clock of a hot thread.
    Hot,
    /// The always-on low-rate event (`--profile-always`), not because the thread was hot.
    Background,
    /// A hot thread leaving the CPU (sched_switch), in task state `state` (sched_switch's
    /// `prev_state`): the stack it waits in. Its `ts_ns` is the switch-out.
    OffCpu { state: u32 },
}

/// A hot thread came back on a CPU: it was off from `off_ns` (0: since before it was heated)
/// to `on_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpuRecord {
    pub pid: u32,
    pub tid: u32,
    pub off_ns: u64,
    pub on_ns: u64,
    /// The task state it left in (sched_switch's `prev_state`).
    pub state: u32,
    /// Its switch-out's stack was recorded (an [`SampleSource::OffCpu`] sample at `off_ns`).
    pub stacked: bool,
}

/// What unwinding one sample's user stack starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwindInput {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The stack's bytes from `sp` up.
    pub stack: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown direction {0}")]
    Direction(u32),
    #[error("unknown socket role {0}")]
    Role(u32),
    #[error("unknown libpq function {0}")]
    LibpqFunction(u32),
    #[error("a connection's own address is not an IP address")]
    Address,
    #[error("unknown Go function {0}")]
    GoFunction(u32),
    #[error("kind {0} is news about fds, for the re-sync (decode_fd_news), not an event")]
    FdNews(u32),
    #[error("captured length {captured} exceeds the record ({room} bytes) or the total ({total})")]
    Captured {
        captured: usize,
        room: usize,
        total: u32,
    },
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length was checked above; read_unaligned has no alignment requirement, and T is
    // one of the ABI's plain-integer structs for which every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// What the kernel said about a target's fds that only userspace can settle
/// (`probes::FdResync`): not an [`Event`], the stitcher never sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdNews {
    /// The socket at `fd` left the kernel's socket map when its process exec'd: tracked again
    /// if still open, else closed (it was close-on-exec).
    Parked {
        pid: u32,
        fd: i32,
        conn_id: u64,
        /// Its `SocketInfo::role`.
        role: u32,
    },
    /// The process's tracked sockets with fds in `first..=last` may be closed.
    Resync { pid: u32, first: u32, last: u32 },
}

/// The fd news in `record`, or None when it is an event record (for [`decode`]).
pub fn decode_fd_news(record: &Bytes) -> Option<Result<FdNews, DecodeError>> {
    let header: EventHeader = match read(record) {
        Ok(header) => header,
        Err(err) => return Some(Err(err)),
    };
    match EventKind::try_from(header.kind) {
        Ok(EventKind::Parked) => Some(read::<ParkedEvent>(record).map(|event| FdNews::Parked {
            pid: header.pid,
            fd: header.fd,
            conn_id: header.conn_id,
            role: event.role,
        })),
        Ok(EventKind::Resync) => Some(read::<ResyncEvent>(record).map(|event| FdNews::Resync {
            pid: header.pid,
            first: event.first,
            last: event.last,
        })),
        _ => None,
    }
}

/// Decodes one record.
pub fn decode(record: &Bytes) -> Result<Event, DecodeError> {
    let header: EventHeader = read(record)?;
    let kind = EventKind::try_from(header.kind).map_err(DecodeError::Kind)?;
    match kind {
        EventKind::Data => decode_data(record, header, false),
        EventKind::TlsData => decode_data(record, header, true),
        EventKind::Conn => {
            let event: ConnEvent = read(record)?;
            let role = SocketRole::try_from(event.role).map_err(DecodeError::Role)?;
            let peer = (event.addr_len > 0)
                .then(|| parse_sockaddr(&event.addr))
                .flatten();
            let local = (event.local_len > 0)
                .then(|| parse_sockaddr(&event.local))
                .flatten();
            Ok(Event::Conn(ConnRecord {
                pid: header.pid,
                tid: header.tid,
                fd: header.fd,
                conn_id: header.conn_id,
                ts_ns: event.ts_ns,
                role,
                peer,
                local,
            }))
        }
        EventKind::GoCall => {
            let event: GoCallEvent = read(record)?;
            let function = GoFunction::try_from(event.function).map_err(DecodeError::GoFunction)?;
            Ok(Event::GoCall {
                pid: header.pid,
                goid: event.goid,
                parent_goid: event.parent_goid,
                function,
                object: event.object,
            })
        }
        EventKind::ConnLocal => {
            let event: ConnLocalEvent = read(record)?;
            let local = parse_sockaddr(&event.local).ok_or(DecodeError::Address)?;
            Ok(Event::ConnLocal {
                pid: header.pid,
                conn_id: header.conn_id,
                local,
            })
        }
        EventKind::Close => {
            let event: CloseEvent = read(record)?;
            Ok(Event::Close {
                pid: header.pid,
                tid: header.tid,
                fd: header.fd,
                conn_id: header.conn_id,
                ts_ns: event.ts_ns,
            })
        }
        EventKind::Dup => {
            let _: DupEvent = read(record)?;
            Ok(Event::Dup {
                pid: header.pid,
                fd: header.fd,
                conn_id: header.conn_id,
            })
        }
        EventKind::Fork => {
            let event: ForkEvent = read(record)?;
            Ok(Event::Fork {
                parent: header.pid,
                child: event.child_pid,
            })
        }
        EventKind::Exec => {
            let event: ExecEvent = read(record)?;
            Ok(Event::Exec(ExecRecord {
                pid: header.pid,
                ts_ns: event.ts_ns,
                comm: c_string(&event.comm),
                adopted: event.adopted != 0,
            }))
        }
        EventKind::Parked | EventKind::Resync => Err(DecodeError::FdNews(header.kind)),
        EventKind::LibpqCall => decode_libpq_call(record, header),
        EventKind::LibpqResult => {
            let event: LibpqResultEvent = read(record)?;
            let function =
                LibpqFunction::try_from(event.function).map_err(DecodeError::LibpqFunction)?;
            let result = (event.flags & LIBPQ_HAS_RESULT != 0).then(|| PgResultInfo {
                status: event.status,
                ntuples: event.ntuples,
                sqlstate: Some(c_string(&event.sqlstate)).filter(|code| code.len() == 5),
                cmd_status: c_string(&event.cmd_status),
            });
            Ok(Event::LibpqResult(LibpqResultRecord {
                pid: header.pid,
                tid: header.tid,
                ts_ns: event.ts_ns,
                pg_conn: event.pg_conn,
                function,
                result,
            }))
        }
        EventKind::CpuSample => {
            // The fixed part, then the stack copy straight from the record: one copy of it.
            let event: CpuSampleHead = read(record)?;
            let frames = |ips: &[u64], bytes: u32| -> Vec<u64> {
                let n = (bytes as usize / 8).min(ips.len());
                ips[..n].iter().copied().filter(|&ip| ip != 0).collect()
            };
            Ok(Event::CpuSample(CpuSample {
                pid: header.pid,
                tid: header.tid,
                ts_ns: event.ts_ns,
                user: frames(&event.user, event.user_bytes),
                kernel: frames(&event.kernel, event.kernel_bytes),
                unwind: unwind_input(&event, &record[size_of::<CpuSampleHead>()..]),
                source: match header.conn_id {
                    loupe_common::SAMPLE_BACKGROUND => SampleSource::Background,
                    loupe_common::SAMPLE_OFF_CPU => SampleSource::OffCpu { state: event.state },
                    _ => SampleSource::Hot,
                },
                python: (0..(event.py_frames as usize).min(loupe_common::MAX_PY_FRAMES))
                    .map(|i| PyRawFrame {
                        code: event.py_code[i],
                        instr: event.py_instr[i],
                        marker: event.py_marker[i],
                    })
                    .collect(),
            }))
        }
        EventKind::OffCpu => {
            let event: OffCpuEvent = read(record)?;
            Ok(Event::OffCpu(OffCpuRecord {
                pid: header.pid,
                tid: header.tid,
                off_ns: event.off_ns,
                on_ns: event.on_ns,
                state: event.state,
                stacked: event.stacked != 0,
            }))
        }
    }
}

fn unwind_input(event: &CpuSampleHead, stack: &[u8]) -> Option<UnwindInput> {
    let copied = (event.stack_bytes as usize).min(stack.len());
    (event.ip != 0 && event.sp != 0 && copied > 0).then(|| UnwindInput {
        ip: event.ip,
        sp: event.sp,
        bp: event.bp,
        stack: stack[..copied].to_vec(),
    })
}

fn decode_libpq_call(record: &Bytes, header: EventHeader) -> Result<Event, DecodeError> {
    let event: LibpqCallEvent<0> = read(record)?;
    let function = LibpqFunction::try_from(event.function).map_err(DecodeError::LibpqFunction)?;
    let probe = libpq_probe(function).ok_or(DecodeError::LibpqFunction(event.function))?;
    let room = record.len() - LIBPQ_CALL_HEADER_LEN;
    let text_len = event.text_len as usize;
    if text_len > room || event.name_len as usize > event.name.len() {
        return Err(DecodeError::Captured {
            captured: text_len,
            room,
            total: event.text_len,
        });
    }
    let text = probe.text_arg.map(|_| {
        let bytes = &record[LIBPQ_CALL_HEADER_LEN..LIBPQ_CALL_HEADER_LEN + text_len];
        String::from_utf8_lossy(bytes).into_owned()
    });
    let name = probe
        .name_arg
        .map(|_| String::from_utf8_lossy(&event.name[..event.name_len as usize]).into_owned());
    Ok(Event::LibpqCall(LibpqCallRecord {
        pid: header.pid,
        tid: header.tid,
        ts_ns: event.ts_ns,
        pg_conn: event.pg_conn,
        function,
        text,
        text_truncated: event.text_truncated != 0,
        name,
    }))
}

/// The bytes before the first NUL, as text.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn decode_data(record: &Bytes, header: EventHeader, tls: bool) -> Result<Event, DecodeError> {
    let event: DataEvent<0> = read(record)?;
    let direction = Direction::try_from(event.direction).map_err(DecodeError::Direction)?;
    let captured = event.captured_len as usize;
    let tail = event.tail_len as usize;
    let room = record.len() - DATA_EVENT_HEADER_LEN;
    // The tail is in the payload's last TAIL_CAPTURE bytes, after the first ones.
    let tail_at = DATA_EVENT_HEADER_LEN + room.saturating_sub(TAIL_CAPTURE);
    if captured > room
        || captured + tail > event.total_len as usize
        || (tail > 0
            && (room < TAIL_CAPTURE || tail > TAIL_CAPTURE || captured > room - TAIL_CAPTURE))
    {
        return Err(DecodeError::Captured {
            captured,
            room,
            total: event.total_len,
        });
    }
    Ok(Event::Data(DataRecord {
        pid: header.pid,
        tid: header.tid,
        fd: header.fd,
        conn_id: header.conn_id,
        enter_ns: event.enter_ns,
        exit_ns: event.exit_ns,
        total_len: event.total_len,
        direction,
        goid: event.goid,
        parent_goid: event.parent_goid,
        tls,
        payload: record.slice(DATA_EVENT_HEADER_LEN..DATA_EVENT_HEADER_LEN + captured),
        tail: record.slice(tail_at..tail_at + tail),
    }))
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// An IPv4 or IPv6 `struct sockaddr` as raw bytes (family in host order, port and address in
/// network order). IPv4-mapped IPv6 addresses come back as IPv4.
pub fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    match family {
        AF_INET => {
            let octets: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port))
        }
        AF_INET6 => {
            let octets: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let ip = Ipv6Addr::from(octets);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid: 10,
            tid: 11,
            fd: 7,
            conn_id: 99,
        }
    }

    fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) ABI struct; viewing it as bytes for a test is sound.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn data_record(payload: &[u8], total: u32, captured: u32) -> Bytes {
        let mut event = DataEvent::<256> {
            header: header(EventKind::Data),
            enter_ns: 100,
            exit_ns: 200,
            total_len: total,
            captured_len: captured,
            direction: Direction::Egress as u32,
            tail_len: 0,
            goid: 42,
            parent_goid: 41,
            payload: [0; 256],
        };
        event.payload[..payload.len()].copy_from_slice(payload);
        Bytes::from(as_bytes(&event))
    }

    #[test]
    fn data_record_yields_captured_prefix_only() {
        let record = data_record(b"GET / HTTP/1.1\r\n", 4000, 16);
        let Event::Data(data) = decode(&record).unwrap() else {
            panic!("not data")
        };
        assert_eq!(&data.payload[..], b"GET / HTTP/1.1\r\n");
        assert_eq!((data.pid, data.tid, data.fd, data.conn_id), (10, 11, 7, 99));
        assert_eq!(
            (data.enter_ns, data.exit_ns, data.total_len),
            (100, 200, 4000)
        );
        assert_eq!(data.direction, Direction::Egress);
    }

    #[test]
    fn a_long_read_brings_its_last_bytes_from_the_payloads_end() {
        let mut event = DataEvent::<256> {
            header: header(EventKind::Data),
            enter_ns: 100,
            exit_ns: 200,
            total_len: 9000,
            captured_len: 100,
            direction: Direction::Ingress as u32,
            tail_len: 6,
            goid: 0,
            parent_goid: 0,
            payload: [b'.'; 256],
        };
        event.payload[256 - TAIL_CAPTURE..256 - TAIL_CAPTURE + 6].copy_from_slice(b"Z\0\0\0\x05I");
        let Event::Data(data) = decode(&Bytes::from(as_bytes(&event))).unwrap() else {
            panic!("not data")
        };
        assert_eq!(
            (data.payload.len(), &data.tail[..]),
            (100, &b"Z\0\0\0\x05I"[..])
        );
        // A tail where the first bytes reach into its room, or longer than a tail is: bad.
        event.captured_len = 200;
        assert!(decode(&Bytes::from(as_bytes(&event))).is_err());
        event.captured_len = 100;
        event.tail_len = TAIL_CAPTURE as u32 + 1;
        assert!(decode(&Bytes::from(as_bytes(&event))).is_err());
    }

    #[test]
    fn a_tail_in_a_record_too_short_to_hold_one_is_an_error_not_a_panic() {
        // Found by the ring_record fuzz target: 3 bytes of payload room and a 72-byte tail.
        let record = Bytes::from_static(&[
            0x1, 0x0, 0x0, 0x0, 0x63, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0xe8, 0x3, 0x0, 0x0, 0x0,
            0x0, 0x0, 0x0, 0xd0, 0x7, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x25, 0x0, 0x0, 0x0, 0x1b, 0x0,
            0x0, 0x0, 0x1, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x5, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
            0x0, 0x4b, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x47, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e,
            0x31, 0x3a, 0x20, 0x61, 0xd, 0xa, 0xd, 0xa,
        ]);
        assert!(decode(&record).is_err());
        // The same in a record of the smallest class (256 bytes of room: no tail fits there
        // beside a capture of its own, but a tail alone does).
        let mut event = DataEvent::<256> {
            header: header(EventKind::Data),
            enter_ns: 1,
            exit_ns: 2,
            total_len: 5000,
            captured_len: 0,
            direction: Direction::Ingress as u32,
            tail_len: 100,
            goid: 0,
            parent_goid: 0,
            payload: [0; 256],
        };
        assert!(decode(&Bytes::from(as_bytes(&event))).is_ok());
        event.tail_len = TAIL_CAPTURE as u32;
        assert!(decode(&Bytes::from(as_bytes(&event))).is_ok());
    }

    fn libpq_call(function: LibpqFunction, text: &[u8], name: &[u8]) -> Bytes {
        let mut event = LibpqCallEvent::<256> {
            header: header(EventKind::LibpqCall),
            ts_ns: 5,
            pg_conn: 0xBEEF,
            function: function as u32,
            text_len: text.len() as u32,
            text_truncated: 1,
            name_len: name.len() as u32,
            name: [0; 64],
            text: [0; 256],
        };
        event.text[..text.len()].copy_from_slice(text);
        event.name[..name.len()].copy_from_slice(name);
        Bytes::from(as_bytes(&event))
    }

    #[test]
    fn libpq_calls_carry_the_text_or_the_name_their_function_takes() {
        let record = libpq_call(LibpqFunction::Exec, b"SELECT 1", b"");
        let Event::LibpqCall(call) = decode(&record).unwrap() else {
            panic!("not a libpq call")
        };
        assert_eq!(call.text.as_deref(), Some("SELECT 1"));
        assert_eq!(call.name, None, "PQexec takes no statement name");
        assert!(call.text_truncated);
        assert_eq!((call.pid, call.tid, call.pg_conn), (10, 11, 0xBEEF));

        let record = libpq_call(LibpqFunction::ExecPrepared, b"", b"stmt_1");
        let Event::LibpqCall(call) = decode(&record).unwrap() else {
            panic!("not a libpq call")
        };
        assert_eq!((call.text, call.name.as_deref()), (None, Some("stmt_1")));

        let mut bad = libpq_call(LibpqFunction::Exec, b"x", b"").to_vec();
        bad[40..44].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(
            decode(&Bytes::from(bad)).unwrap_err(),
            DecodeError::LibpqFunction(77)
        );
        let long = libpq_call(LibpqFunction::Exec, b"x", b"");
        let mut long = long.to_vec();
        long[44..48].copy_from_slice(&300u32.to_ne_bytes());
        assert!(
            decode(&Bytes::from(long)).is_err(),
            "text beyond the record"
        );
    }

    #[test]
    fn libpq_results_say_status_rows_tag_and_sqlstate() {
        let mut event = LibpqResultEvent {
            header: header(EventKind::LibpqResult),
            ts_ns: 9,
            pg_conn: 0xBEEF,
            function: LibpqFunction::GetResult as u32,
            flags: LIBPQ_HAS_RESULT,
            status: 7,
            ntuples: 0,
            sqlstate: *b"42P01\0\0\0",
            cmd_status: [0; 64],
        };
        let Event::LibpqResult(ret) = decode(&Bytes::from(as_bytes(&event))).unwrap() else {
            panic!("not a libpq result")
        };
        let result = ret.result.expect("a result");
        assert_eq!(result.sqlstate.as_deref(), Some("42P01"));
        assert_eq!(result.status, 7);

        event.flags = 0;
        let Event::LibpqResult(ret) = decode(&Bytes::from(as_bytes(&event))).unwrap() else {
            panic!("not a libpq result")
        };
        assert_eq!(ret.result, None, "NULL: the end of a query's results");

        event.flags = LIBPQ_HAS_RESULT;
        event.status = 2;
        event.sqlstate = [0; 8];
        event.cmd_status[..8].copy_from_slice(b"SELECT 3");
        let Event::LibpqResult(ret) = decode(&Bytes::from(as_bytes(&event))).unwrap() else {
            panic!("not a libpq result")
        };
        let result = ret.result.expect("a result");
        assert_eq!(
            (result.cmd_status.as_str(), result.sqlstate),
            ("SELECT 3", None)
        );
    }

    #[test]
    fn captured_beyond_the_record_is_an_error() {
        let record = data_record(b"x", 1000, 300);
        assert!(matches!(decode(&record), Err(DecodeError::Captured { .. })));
        let record = data_record(b"xyz", 2, 3);
        assert!(matches!(decode(&record), Err(DecodeError::Captured { .. })));
    }

    #[test]
    fn truncated_and_unknown_records_are_errors_not_panics() {
        let record = data_record(b"abc", 3, 3);
        for len in 0..DATA_EVENT_HEADER_LEN {
            assert!(decode(&record.slice(..len)).is_err(), "len {len}");
        }
        let mut bogus = as_bytes(&header(EventKind::Data));
        bogus[0] = 99;
        assert_eq!(
            decode(&Bytes::from(bogus)).unwrap_err(),
            DecodeError::Kind(99)
        );
    }

    #[test]
    fn an_exec_record_carries_the_new_programs_name() {
        let event = ExecEvent {
            header: header(EventKind::Exec),
            ts_ns: 77,
            comm: loupe_common::comm_key(b"demo-app"),
            adopted: 1,
            _pad: 0,
        };
        let record = Bytes::from(as_bytes(&event));
        let Event::Exec(exec) = decode(&record).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(
            exec,
            ExecRecord {
                pid: 10,
                ts_ns: 77,
                comm: "demo-app".into(),
                adopted: true,
            }
        );
        assert!(decode_fd_news(&record).is_none(), "an event, not fd news");
        assert!(decode(&record.slice(..40)).is_err());
    }

    #[test]
    fn conn_record_parses_ipv4_and_mapped_ipv6_peers() {
        let mut event = ConnEvent {
            header: header(EventKind::Conn),
            ts_ns: 5,
            role: SocketRole::Server as u32,
            addr_len: 32,
            addr: [0; 32],
            local_len: 32,
            _pad: 0,
            local: [0; 32],
        };
        event.local[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        event.local[2..4].copy_from_slice(&40000u16.to_be_bytes());
        event.local[4..8].copy_from_slice(&[127, 0, 0, 1]);
        event.addr[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        event.addr[2..4].copy_from_slice(&8080u16.to_be_bytes());
        event.addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let Event::Conn(conn) = decode(&Bytes::from(as_bytes(&event))).unwrap() else {
            panic!("not conn")
        };
        assert_eq!(conn.peer, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(conn.local, Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!(conn.role, SocketRole::Server);

        let mut v6 = [0u8; 32];
        v6[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(parse_sockaddr(&v6), Some("10.1.2.3:443".parse().unwrap()));
        v6[0..2].copy_from_slice(&1u16.to_ne_bytes());
        assert_eq!(parse_sockaddr(&v6), None, "AF_UNIX has no IP peer");
    }
}
