//! The stitcher on random event sequences: connects and accepts, data in both directions
//! (arbitrary bytes or pieces of real HTTP, PostgreSQL and Redis traffic, cut anywhere, with
//! unseen tails), closes, dups, forks, Go and libpq probe events, across a few processes,
//! threads and connections, with upkeep ticks between them and a finish at the end. It never
//! panics and stays within its bounds: no more connections than its limit, none after finish.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loupe::{
    events::{ConnRecord, DataRecord, Event, LibpqCallRecord, LibpqResultRecord, PgResultInfo},
    spans::{Stitcher, parent::Runtime, stitcher::StitcherLimits},
    stats::Counters,
};
use loupe_common::{Direction, GoFunction, LibpqFunction, SocketRole};

/// Processes past the kernel's largest pid (2^22), so that the stitcher's /proc look-ups find
/// nothing on the machine running the fuzzer.
const PID_BASE: u32 = 1 << 23;
const MAX_CONNECTIONS: usize = 6;

/// Pieces of real traffic the fuzzer can send whole or cut.
const PIECES: &[&[u8]] = &[
    b"GET /api/checkout?user=42 HTTP/1.1\r\nHost: shop:8080\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
    // PostgreSQL: a StartupMessage, the server's greeting, a simple query and its reply, an
    // extended-protocol execution and its reply, an error.
    b"\x00\x00\x00\x22\x00\x03\x00\x00user\x00app\x00database\x00shop\x00\x00",
    b"R\x00\x00\x00\x08\x00\x00\x00\x00S\x00\x00\x00\x16server_version\x0015\x00Z\x00\x00\x00\x05I",
    b"Q\x00\x00\x00\x29SELECT name FROM users WHERE id = 42\x00",
    b"T\x00\x00\x00\x0b\x00\x01name\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01xC\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I",
    b"P\x00\x00\x00\x1e\x00SELECT * FROM t WHERE a=$1\x00\x00\x00B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00E\x00\x00\x00\x09\x00\x00\x00\x00\x00S\x00\x00\x00\x04",
    b"1\x00\x00\x00\x042\x00\x00\x00\x04C\x00\x00\x00\x0dSELECT 0\x00Z\x00\x00\x00\x05I",
    b"E\x00\x00\x00\x11SERROR\x00C42P01\x00\x00Z\x00\x00\x00\x05I",
    // Redis: commands and replies.
    b"*2\r\n$3\r\nGET\r\n$4\r\nuser\r\n",
    b"*3\r\n$3\r\nSET\r\n$4\r\nuser\r\n$5\r\nalice\r\n",
    b"$-1\r\n",
    b"+OK\r\n",
    b"PING\r\n",
    b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n",
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
];

#[derive(Arbitrary, Debug)]
struct Who {
    pid: u8,
    tid: u8,
    conn: u8,
}

impl Who {
    fn pid(&self) -> u32 {
        PID_BASE + u32::from(self.pid % 3)
    }
    fn tid(&self) -> u32 {
        self.pid() + u32::from(self.tid % 4)
    }
    fn conn_id(&self) -> u64 {
        1000 + u64::from(self.conn % 8)
    }
    fn fd(&self) -> i32 {
        3 + i32::from(self.conn % 8)
    }
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    Piece { index: u8, start: u8, end: u8 },
    Pieces(Vec<u8>),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Raw(bytes) => bytes.clone(),
            Self::Piece { index, start, end } => {
                let piece = PIECES[usize::from(*index) % PIECES.len()];
                let start = usize::from(*start).min(piece.len());
                let end = usize::from(*end).clamp(start, piece.len());
                piece[start..end].to_vec()
            }
            Self::Pieces(indexes) => indexes
                .iter()
                .flat_map(|i| PIECES[usize::from(*i) % PIECES.len()].iter().copied())
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        who: Who,
        role: u8,
        peer: u8,
        local: Option<u8>,
    },
    Data {
        who: Who,
        egress: bool,
        payload: Payload,
        cut: u8,
        gap: u16,
        tls: bool,
        goid: u8,
        parent_goid: u8,
    },
    Close {
        who: Who,
    },
    Dup {
        who: Who,
    },
    Fork {
        who: Who,
        child: u8,
    },
    ConnLocal {
        who: Who,
        local: u8,
    },
    GoCall {
        who: Who,
        goid: u8,
        parent_goid: u8,
        function: u8,
        object: u8,
    },
    LibpqCall {
        who: Who,
        pg_conn: u8,
        function: u8,
        text: Option<String>,
        truncated: bool,
        name: Option<u8>,
    },
    LibpqResult {
        who: Who,
        pg_conn: u8,
        function: u8,
        result: Option<(u8, u8, bool, u8)>,
    },
    /// Time passes (ms), then the upkeep runs.
    Tick {
        ms: u16,
    },
    /// Time passes (µs).
    Wait {
        us: u16,
    },
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n % 3)),
        5000 + u16::from(n % 4),
    )
}

fn libpq_function(n: u8) -> LibpqFunction {
    LibpqFunction::try_from(1 + u32::from(n % 9)).unwrap_or(LibpqFunction::Exec)
}

/// How each process runs its requests: every runtime, by pid.
fn runtime(pid: u32) -> Runtime {
    match pid % 5 {
        0 => Runtime::Threads,
        1 => Runtime::RunToCompletion,
        2 => Runtime::SharedThreads,
        3 => Runtime::Goroutines,
        _ => Runtime::Tasks,
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let counters = Arc::new(Counters::default());
    let limits = StitcherLimits {
        max_connections: MAX_CONNECTIONS,
        ..StitcherLimits::default()
    };
    let mut stitcher = Stitcher::new(limits, counters).with_runtime_probe(runtime);
    let mut out = Vec::new();
    let mut now = 1_000_000_000u64;
    for op in ops {
        now += 1_000;
        let event = match op {
            Op::Open {
                who,
                role,
                peer,
                local,
            } => Event::Conn(ConnRecord {
                pid: who.pid(),
                tid: who.tid(),
                fd: who.fd(),
                conn_id: who.conn_id(),
                ts_ns: now,
                role: SocketRole::try_from(u32::from(role % 3)).unwrap_or(SocketRole::Unknown),
                peer: Some(addr(peer)),
                local: local.map(addr),
            }),
            Op::Data {
                who,
                egress,
                payload,
                cut,
                gap,
                tls,
                goid,
                parent_goid,
            } => {
                let bytes = payload.bytes();
                let captured = bytes.len() - usize::from(cut).min(bytes.len());
                Event::Data(DataRecord {
                    pid: who.pid(),
                    tid: who.tid(),
                    fd: who.fd(),
                    conn_id: who.conn_id(),
                    enter_ns: now,
                    exit_ns: now + 100,
                    total_len: (bytes.len() + usize::from(gap)) as u32,
                    direction: if egress {
                        Direction::Egress
                    } else {
                        Direction::Ingress
                    },
                    goid: u64::from(goid % 4),
                    parent_goid: u64::from(parent_goid % 4),
                    tls,
                    payload: Bytes::from(bytes.clone()).slice(..captured),
                    // The last bytes of what was cut, as the kernel keeps them after a capture.
                    tail: if egress || captured == bytes.len() || gap > 0 {
                        Bytes::new()
                    } else {
                        let from = bytes.len().saturating_sub(128).max(captured);
                        Bytes::from(bytes).slice(from..)
                    },
                })
            }
            Op::Close { who } => Event::Close {
                pid: who.pid(),
                tid: who.tid(),
                fd: who.fd(),
                conn_id: who.conn_id(),
                ts_ns: now,
            },
            Op::Dup { who } => Event::Dup {
                pid: who.pid(),
                fd: who.fd() + 20,
                conn_id: who.conn_id(),
            },
            Op::Fork { who, child } => Event::Fork {
                parent: who.pid(),
                child: PID_BASE + u32::from(child % 4),
            },
            Op::ConnLocal { who, local } => Event::ConnLocal {
                pid: who.pid(),
                conn_id: who.conn_id(),
                local: addr(local),
            },
            Op::GoCall {
                who,
                goid,
                parent_goid,
                function,
                object,
            } => Event::GoCall {
                pid: who.pid(),
                goid: u64::from(goid % 4),
                parent_goid: u64::from(parent_goid % 4),
                function: GoFunction::try_from(1 + u32::from(function % 3))
                    .unwrap_or(GoFunction::NewProc),
                object: u64::from(object % 4),
            },
            Op::LibpqCall {
                who,
                pg_conn,
                function,
                text,
                truncated,
                name,
            } => Event::LibpqCall(LibpqCallRecord {
                pid: who.pid(),
                tid: who.tid(),
                ts_ns: now,
                pg_conn: u64::from(pg_conn % 3),
                function: libpq_function(function),
                text,
                text_truncated: truncated,
                name: name.map(|n| format!("s{}", n % 3)),
            }),
            Op::LibpqResult {
                who,
                pg_conn,
                function,
                result,
            } => Event::LibpqResult(LibpqResultRecord {
                pid: who.pid(),
                tid: who.tid(),
                ts_ns: now,
                pg_conn: u64::from(pg_conn % 3),
                function: libpq_function(function),
                result: result.map(|(status, ntuples, error, tag)| PgResultInfo {
                    status: u32::from(status % 12),
                    ntuples: u32::from(ntuples),
                    sqlstate: error.then(|| "42P01".to_string()),
                    cmd_status: ["SELECT 1", "INSERT 0 1", "", "UPDATE 3"][usize::from(tag % 4)]
                        .to_string(),
                }),
            }),
            Op::Tick { ms } => {
                now += u64::from(ms) * 1_000_000;
                stitcher.tick(now, &mut out);
                assert!(stitcher.connections() <= MAX_CONNECTIONS);
                continue;
            }
            Op::Wait { us } => {
                now += u64::from(us) * 1_000;
                continue;
            }
        };
        stitcher.handle(event, &mut out);
        assert!(
            stitcher.connections() <= MAX_CONNECTIONS,
            "{} connections",
            stitcher.connections()
        );
        out.clear();
    }
    stitcher.tick(now + 1_000_000_000_000, &mut out);
    stitcher.finish(&mut out);
    assert_eq!(stitcher.connections(), 0, "connections left after finish");
});
