//! loupe's userspace cost per request, end to end in process: `cargo bench -p loupe --bench pipeline`.
//!
//! Ring-buffer records laid out byte for byte as the kernel writes them (`loupe_common`'s
//! structs, the payload in its size class, the bytes of a real exchange) are replayed through
//! the real pipeline: copied out as the reader copies them, decoded, stitched (HTTP/1 and
//! PostgreSQL parsing, the span), through the verdicts (slowness, the diagnosis stage), then
//! encoded as OTLP export requests of 512 spans, protobuf bytes included. Nothing is sent.
//!
//! Two shapes, each over keep-alive connections, several requests in flight:
//! - `nginx`: a plain GET and its reply (one server span): the pass-through every request pays.
//! - `service`: a GET whose handler runs three queries on a pooled PostgreSQL connection
//!   (Parse/Bind/Execute/Sync, then the reply with a row), four spans nested under the request.
//!
//! Printed per shape: the median of five rounds of time per request and per span, the share of
//! each stage, and heap allocations (and bytes) per span, counted by the allocator this binary
//! installs. The aim is 0.5 us per plain request.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use loupe::{
    config::{DiagnosisConfig, Thresholds},
    detect::{Diagnoser, ProblemBoard, mark_slow},
    events::{decode, reader::Gather},
    export::{otlp::encode::Encoder, resource::Resources},
    spans::{SpanRecord, Stitcher, stitcher::StitcherLimits},
    stats::Counters,
};
use loupe_common::{ConnEvent, DataEvent, Direction, EventHeader, EventKind, SocketRole};

/// Counts every allocation the process makes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes straight to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests per round.
const REQUESTS: u64 = 100_000;
const ROUNDS: usize = 5;
/// Keep-alive connections the requests take turns on.
const CONNECTIONS: u64 = 64;
/// Spans per export request, as the exporter batches them.
const EXPORT_BATCH: usize = 512;

const NGINX_REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const NGINX_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 17:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 2\r\nLast-Modified: Wed, 02 Dec 2026 16:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6650a1b0-2\"\r\nAccept-Ranges: bytes\r\n\r\nok";
const SERVICE_REQUEST: &[u8] = b"GET /api/orders/42 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
const SERVICE_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 17:00:00 GMT\r\nserver: uvicorn\r\ncontent-length: 27\r\ncontent-type: application/json\r\n\r\n{\"id\":42,\"total\":\"19.99\"}\r\n";

/// An extended-protocol query as psycopg sends it: Parse (unnamed), Bind, Describe, Execute, Sync.
fn pg_query(n: u64) -> Vec<u8> {
    let sql = format!("SELECT id, total FROM orders WHERE customer_id = $1 AND n = {n}\0");
    let mut out = Vec::new();
    let parse_len = 4 + 1 + sql.len() + 2;
    out.push(b'P');
    out.extend_from_slice(&(parse_len as u32).to_be_bytes());
    out.push(0);
    out.extend_from_slice(sql.as_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    // Bind: unnamed portal and statement, no formats, one text parameter "42", no result formats.
    let bind: &[u8] = b"\0\0\0\0\0\x01\0\0\0\x0242\0\0";
    out.push(b'B');
    out.extend_from_slice(&((4 + bind.len()) as u32).to_be_bytes());
    out.extend_from_slice(bind);
    out.extend_from_slice(b"D\0\0\0\x06P\0");
    out.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
    out.extend_from_slice(b"S\0\0\0\x04");
    out
}

/// The server's reply: ParseComplete, BindComplete, RowDescription, one DataRow, CommandComplete,
/// ReadyForQuery.
fn pg_reply() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"1\0\0\0\x042\0\0\0\x04");
    let mut fields = Vec::new();
    fields.extend_from_slice(&2u16.to_be_bytes());
    for name in ["id", "total"] {
        fields.extend_from_slice(name.as_bytes());
        fields.push(0);
        fields.extend_from_slice(&[0; 18]);
    }
    out.push(b'T');
    out.extend_from_slice(&((4 + fields.len()) as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    let mut row = Vec::new();
    row.extend_from_slice(&2u16.to_be_bytes());
    for value in ["42", "19.99"] {
        row.extend_from_slice(&(value.len() as u32).to_be_bytes());
        row.extend_from_slice(value.as_bytes());
    }
    out.push(b'D');
    out.extend_from_slice(&((4 + row.len()) as u32).to_be_bytes());
    out.extend_from_slice(&row);
    out.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
    out.extend_from_slice(b"Z\0\0\0\x05I");
    out
}

fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is one of loupe_common's repr(C) ABI structs, with no padding the kernel would
    // not also write; viewing it as the bytes the ring buffer holds is sound.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn header(kind: EventKind, pid: u32, tid: u32, conn: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        fd: 10 + conn as i32,
        conn_id: 1_000 + conn,
    }
}

fn sockaddr(port: u16) -> [u8; 32] {
    let mut addr = [0; 32];
    addr[..2].copy_from_slice(&2u16.to_ne_bytes());
    addr[2..4].copy_from_slice(&port.to_be_bytes());
    addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
    addr
}

/// A record as the kernel reserves it: the smallest payload class that holds the capture.
fn data(pid: u32, tid: u32, conn: u64, direction: Direction, at: u64, bytes: &[u8]) -> Vec<u8> {
    fn sized<const N: usize>(
        header: EventHeader,
        direction: Direction,
        at: u64,
        bytes: &[u8],
    ) -> Vec<u8> {
        let mut event = DataEvent::<N> {
            header,
            enter_ns: at,
            exit_ns: at + 2_000,
            total_len: bytes.len() as u32,
            captured_len: bytes.len() as u32,
            direction: direction as u32,
            tail_len: 0,
            goid: 0,
            parent_goid: 0,
            payload: [0; N],
        };
        event.payload[..bytes.len()].copy_from_slice(bytes);
        as_bytes(&event).to_vec()
    }
    let header = header(EventKind::Data, pid, tid, conn);
    match bytes.len() {
        0..=256 => sized::<256>(header, direction, at, bytes),
        _ => sized::<1152>(header, direction, at, bytes),
    }
}

fn conn(
    pid: u32,
    tid: u32,
    conn: u64,
    role: SocketRole,
    at: u64,
    peer: u16,
    local: u16,
) -> Vec<u8> {
    let event = ConnEvent {
        header: header(EventKind::Conn, pid, tid, conn),
        ts_ns: at,
        role: role as u32,
        addr_len: 16,
        addr: sockaddr(peer),
        local_len: 16,
        _pad: 0,
        local: sockaddr(local),
    };
    as_bytes(&event).to_vec()
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Nginx,
    Service,
}

/// The records of `REQUESTS` requests of `shape`, in the order the ring buffer holds them: the
/// connections' accepts (and the pool's connects) first, then requests interleaved across the
/// connections, each thread serving its own connection.
fn recording(shape: Shape) -> (Vec<Vec<u8>>, u64) {
    let pid = std::process::id();
    let mut records = Vec::new();
    let mut at = 1_000_000_000u64;
    for c in 0..CONNECTIONS {
        records.push(conn(
            pid,
            pid + 1 + c as u32,
            c,
            SocketRole::Server,
            at,
            40_000 + c as u16,
            8080,
        ));
        if shape == Shape::Service {
            records.push(conn(
                pid,
                pid + 1 + c as u32,
                500 + c,
                SocketRole::Client,
                at,
                5432,
                50_000 + c as u16,
            ));
        }
        at += 1_000;
    }
    let queries: Vec<Vec<u8>> = (0..3).map(pg_query).collect();
    let reply = pg_reply();
    let mut spans = 0;
    for r in 0..REQUESTS {
        let c = r % CONNECTIONS;
        let tid = pid + 1 + c as u32;
        match shape {
            Shape::Nginx => {
                records.push(data(pid, tid, c, Direction::Ingress, at, NGINX_REQUEST));
                records.push(data(
                    pid,
                    tid,
                    c,
                    Direction::Egress,
                    at + 20_000,
                    NGINX_REPLY,
                ));
                spans += 1;
            }
            Shape::Service => {
                records.push(data(pid, tid, c, Direction::Ingress, at, SERVICE_REQUEST));
                let mut t = at + 10_000;
                for query in &queries {
                    records.push(data(pid, tid, 500 + c, Direction::Egress, t, query));
                    records.push(data(
                        pid,
                        tid,
                        500 + c,
                        Direction::Ingress,
                        t + 50_000,
                        &reply,
                    ));
                    t += 60_000;
                }
                records.push(data(pid, tid, c, Direction::Egress, t, SERVICE_REPLY));
                spans += 4;
            }
        }
        at += 5_000;
    }
    (records, spans)
}

/// One round's measures.
#[derive(Clone, Copy, Default)]
struct Round {
    total: Duration,
    stitch: Duration,
    verdicts: Duration,
    encode: Duration,
    spans: u64,
    allocations: u64,
    allocated: u64,
    /// Allocations by stage: read+decode+stitch, verdicts, encode.
    by_stage: [u64; 3],
}

fn round(records: &[Vec<u8>]) -> Round {
    let counters = Arc::new(Counters::default());
    let board = Arc::new(Mutex::new(ProblemBoard::default()));
    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters.clone());
    let mut diagnoser = Diagnoser::new(DiagnosisConfig::default(), board, counters.clone());
    // loupe's defaults: no span of the replay is slow.
    let thresholds = Thresholds {
        http: Duration::from_secs(1),
        external: Duration::from_secs(2),
        db: Duration::from_millis(500),
        cache: Duration::from_millis(100),
    };
    // As the stitch stage does: every request and call is watched until its deadline.
    stitcher.watch_deadlines(&thresholds);
    let mut encoder = Encoder::new(Resources::new(Some("bench".to_owned())));
    let mut out: Vec<SpanRecord> = Vec::new();
    let mut ready: Vec<SpanRecord> = Vec::new();
    let mut pending: Vec<SpanRecord> = Vec::with_capacity(EXPORT_BATCH);
    let mut measured = Round::default();
    let (allocations, allocated) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    // The reader's batches: records copied out of the ring as it copies them, 4096 at most.
    let count = || ALLOCATIONS.load(Ordering::Relaxed);
    for chunk in records.chunks(4096) {
        let a0 = count();
        let t0 = Instant::now();
        let mut gather = Gather::default();
        for record in chunk {
            gather.push(record);
        }
        let batch = gather.finish();
        for record in &batch {
            if let Ok(event) = decode(record) {
                stitcher.handle(event, &mut out);
            }
        }
        // Each watched operation is looked up once when its deadline comes (all have ended).
        stitcher.deadlines_due(u64::MAX);
        let t1 = Instant::now();
        let a1 = count();
        let now = out.last().map_or(0, |span| span.end_ns);
        for mut span in out.drain(..) {
            mark_slow(&mut span, &thresholds);
            diagnoser.push(span, now, &mut ready);
        }
        let t2 = Instant::now();
        let a2 = count();
        for span in ready.drain(..) {
            measured.spans += 1;
            pending.push(span);
            if pending.len() == EXPORT_BATCH {
                black_box(encoder.encode(std::mem::take(&mut pending)));
                pending.reserve(EXPORT_BATCH);
            }
        }
        let t3 = Instant::now();
        let a3 = count();
        measured.by_stage[0] += a1 - a0;
        measured.by_stage[1] += a2 - a1;
        measured.by_stage[2] += a3 - a2;
        measured.stitch += t1 - t0;
        measured.verdicts += t2 - t1;
        measured.encode += t3 - t2;
    }
    measured.total = start.elapsed();
    measured.allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    measured.allocated = ALLOCATED.load(Ordering::Relaxed) - allocated;
    measured
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[values.len() / 2]
}

fn bench(name: &str, shape: Shape) {
    let (records, expected) = recording(shape);
    let rounds: Vec<Round> = (0..ROUNDS).map(|_| round(&records)).collect();
    let spans = rounds[0].spans;
    // Every request's spans came out (but the last batch's, which waits for its export request).
    assert!(
        spans + EXPORT_BATCH as u64 >= expected && spans <= expected,
        "{name}: {spans} spans from {expected}"
    );
    let per = |f: fn(&Round) -> Duration, n: u64| -> f64 {
        median(
            rounds
                .iter()
                .map(|r| f(r).as_nanos() as f64 / n as f64)
                .collect(),
        )
    };
    let request_ns = per(|r| r.total, REQUESTS);
    let span_ns = per(|r| r.total, spans);
    let stitch = per(|r| r.stitch, spans);
    let verdicts = per(|r| r.verdicts, spans);
    let encode = per(|r| r.encode, spans);
    let spread: Vec<f64> = rounds
        .iter()
        .map(|r| r.total.as_nanos() as f64 / REQUESTS as f64)
        .collect();
    let (low, high) = spread
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let allocations = median(
        rounds
            .iter()
            .map(|r| r.allocations as f64 / spans as f64)
            .collect(),
    );
    let stage = |i: usize| {
        median(
            rounds
                .iter()
                .map(|r| r.by_stage[i] as f64 / spans as f64)
                .collect(),
        )
    };
    let allocated = median(
        rounds
            .iter()
            .map(|r| r.allocated as f64 / spans as f64)
            .collect(),
    );
    println!(
        "pipeline {name:<8} {:>7.0} ns/request ({low:.0}-{high:.0} over {ROUNDS} rounds), {:>6.0} ns/span: read+decode+stitch {:.0}, verdicts {:.0}, encode {:.0}; {allocations:.1} allocations ({allocated:.0} bytes) per span: {:.1}, {:.1}, {:.1}",
        request_ns,
        span_ns,
        stitch,
        verdicts,
        encode,
        stage(0),
        stage(1),
        stage(2)
    );
}

fn main() {
    println!(
        "pipeline: {REQUESTS} requests a round over {CONNECTIONS} keep-alive connections, median of {ROUNDS} rounds"
    );
    // `cargo bench -p loupe --bench pipeline -- nginx` runs one shape (cargo adds `--bench`).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("nginx") {
        bench("nginx", Shape::Nginx);
    }
    if wanted("service") {
        bench("service", Shape::Service);
    }
}
