//! The stitcher on synthetic event streams: nesting, ambiguity, roles from bytes.

use std::sync::Arc;

use bytes::Bytes;
use loupe_common::{Direction, SocketRole};

use super::*;
use crate::{
    events::{ConnRecord, DataRecord, Event},
    spans::{AttrValue, SpanKind},
};

const PID: u32 = 100;

/// Tests give each fd its own connection, except where they dup.
fn conn_id(fd: i32) -> u64 {
    1000 + fd as u64
}

fn conn(fd: i32, tid: u32, role: SocketRole, peer: &str) -> Event {
    conn_at(fd, tid, role, peer, 1)
}

fn conn_at(fd: i32, tid: u32, role: SocketRole, peer: &str, at: u64) -> Event {
    Event::Conn(ConnRecord {
        pid: PID,
        tid,
        fd,
        conn_id: conn_id(fd),
        ts_ns: at,
        role,
        peer: Some(peer.parse().unwrap()),
        local: None,
    })
}

pub(super) fn data(
    fd: i32,
    tid: u32,
    direction: Direction,
    at: u64,
    bytes: &'static [u8],
) -> Event {
    Event::Data(DataRecord {
        pid: PID,
        tid,
        fd,
        conn_id: conn_id(fd),
        enter_ns: at,
        exit_ns: at + 100,
        total_len: bytes.len() as u32,
        direction,
        goid: 0,
        parent_goid: 0,
        tls: false,
        payload: Bytes::from_static(bytes),
        tail: Bytes::new(),
    })
}

fn run(events: Vec<Event>) -> (Vec<SpanRecord>, Arc<Counters>) {
    run_on(|_| Runtime::Threads, events)
}

/// `events` in a process of the runtime `probe` says.
fn run_on(probe: fn(u32) -> Runtime, events: Vec<Event>) -> (Vec<SpanRecord>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let mut stitcher =
        Stitcher::new(StitcherLimits::default(), counters.clone()).with_runtime_probe(probe);
    let mut out = Vec::new();
    for event in events {
        stitcher.handle(event, &mut out);
    }
    (out, counters)
}

const REQUEST: &[u8] = b"GET /api/checkout?user=42 HTTP/1.1\r\nHost: shop:8080\r\n\r\n";
const CALL: &[u8] =
    b"GET /score?user=42 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nConnection: close\r\n\r\n";
const CALL_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn outbound_call_nests_under_the_request_its_thread_serves() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
        data(6, 7, Direction::Egress, 2_000, CALL),
        data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
        data(5, 7, Direction::Egress, 4_000, RESPONSE),
    ]);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (client, server) = (&spans[0], &spans[1]);
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(client.parent_span_id, Some(server.span_id));
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(server.parent_span_id, None);
    // Server: first request byte read .. last response byte written.
    assert_eq!((server.start_ns, server.end_ns), (1_100, 4_100));
    // Client: request write entered .. response read returned.
    assert_eq!((client.start_ns, client.end_ns), (2_000, 3_100));
    assert_eq!(server.name, "GET /api/checkout");
    assert_eq!(
        server.attr("server.address"),
        Some(&AttrValue::Str("shop".into()))
    );
    assert_eq!(server.attr("server.port"), Some(&AttrValue::Int(8080)));
    assert_eq!(
        server.attr("client.address"),
        Some(&AttrValue::Str("127.0.0.1".into()))
    );
    assert_eq!(
        server.attr("url.query"),
        Some(&AttrValue::Str("user=?".into()))
    );
    assert_eq!(
        server.attr("http.response.body.size"),
        Some(&AttrValue::Int(5))
    );
    assert_eq!(client.name, "GET /score");
    assert_eq!(client.attr("server.port"), Some(&AttrValue::Int(8081)));
    assert_eq!(
        client.attr("network.peer.port"),
        Some(&AttrValue::Int(8081))
    );
    assert_eq!(
        client.attr("url.full"),
        Some(&AttrValue::Str("http://127.0.0.1:8081/score?user=?".into()))
    );
    assert_eq!(client.attr("loupe.parent"), None);
}

#[test]
fn call_from_a_thread_serving_two_requests_stays_unnested_and_is_marked() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        conn(9, 7, SocketRole::Server, "127.0.0.1:5001"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        data(9, 7, Direction::Ingress, 1_500, REQUEST),
        conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
        data(6, 7, Direction::Egress, 2_000, CALL),
        data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
    ]);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, SpanKind::Client);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[0].attr_str("loupe.parent"), Some("ambiguous"));
}

#[test]
fn call_on_another_thread_is_not_nested() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        conn(6, 8, SocketRole::Client, "127.0.0.1:8081"),
        data(6, 8, Direction::Egress, 2_000, CALL),
        data(6, 8, Direction::Ingress, 3_000, CALL_RESPONSE),
    ]);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, None);
    assert_eq!(spans[0].attr_str("loupe.parent"), Some("none"));
}

#[test]
fn once_the_response_starts_the_thread_serves_nothing() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        data(5, 7, Direction::Egress, 1_500, RESPONSE),
        conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
        data(6, 7, Direction::Egress, 2_000, CALL),
        data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
    ]);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[1].kind, SpanKind::Client);
    assert_eq!(spans[1].parent_span_id, None);
}

#[test]
fn socket_open_before_attach_gets_its_role_from_its_bytes() {
    let (spans, _) = run(vec![
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        data(5, 7, Direction::Egress, 2_000, RESPONSE),
    ]);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, SpanKind::Server);
    assert_eq!(
        spans[0].attr("http.response.status_code"),
        Some(&AttrValue::Int(200))
    );
}

#[test]
fn inbound_traceparent_continues_the_callers_trace() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(
            5,
            7,
            Direction::Ingress,
            1_000,
            b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        ),
        data(5, 7, Direction::Egress, 2_000, RESPONSE),
    ]);
    assert_eq!(spans[0].trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(spans[0].parent_span_id, Some(0x00f067aa0ba902b7));
}

#[test]
fn server_errors_are_error_spans_and_client_4xx_too() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
        data(6, 7, Direction::Egress, 2_000, CALL),
        data(
            6,
            7,
            Direction::Ingress,
            3_000,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ),
        data(
            5,
            7,
            Direction::Egress,
            4_000,
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        ),
    ]);
    assert_eq!(spans[0].error.as_deref(), Some("HTTP 404"));
    assert_eq!(spans[1].error.as_deref(), Some("HTTP 502"));
}

#[test]
fn non_http_bytes_make_no_spans() {
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(
            5,
            7,
            Direction::Ingress,
            1_000,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ),
        data(
            5,
            7,
            Direction::Egress,
            2_000,
            b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76",
        ),
    ]);
    assert!(spans.is_empty());
}

#[test]
fn closing_a_connection_finishes_an_unframed_response() {
    let counters = Arc::new(Counters::default());
    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters);
    let mut out = Vec::new();
    for event in [
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        data(
            5,
            7,
            Direction::Egress,
            2_000,
            b"HTTP/1.0 200 OK\r\n\r\nbody until close",
        ),
    ] {
        stitcher.handle(event, &mut out);
    }
    assert!(out.is_empty(), "no framing: not finished until close");
    stitcher.handle(
        Event::Close {
            pid: PID,
            tid: 7,
            fd: 5,
            conn_id: conn_id(5),
            ts_ns: 3_000,
        },
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_ns, 2_100);
    assert_eq!(stitcher.connections(), 0);
}

#[test]
fn reads_and_writes_on_duplicated_fds_are_one_connection() {
    let counters = Arc::new(Counters::default());
    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters);
    let mut out = Vec::new();
    let Event::Data(mut response) = data(5, 7, Direction::Egress, 2_000, RESPONSE) else {
        unreachable!()
    };
    // The response goes out on fd 8, a dup of fd 5 (Rust's try_clone does this).
    response.fd = 8;
    let close = |fd| Event::Close {
        pid: PID,
        tid: 7,
        fd,
        conn_id: conn_id(5),
        ts_ns: 3_000,
    };
    for event in [
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        Event::Dup {
            pid: PID,
            fd: 8,
            conn_id: conn_id(5),
        },
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        Event::Data(response),
        close(8),
    ] {
        stitcher.handle(event, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].start_ns, out[0].end_ns), (1_100, 2_100));
    assert_eq!(stitcher.connections(), 1, "fd 5 is still open");
    stitcher.handle(close(5), &mut out);
    assert_eq!(stitcher.connections(), 0);
}

fn pg_msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn owned_data(fd: i32, tid: u32, direction: Direction, at: u64, bytes: Vec<u8>) -> Event {
    Event::Data(DataRecord {
        pid: PID,
        tid,
        fd,
        conn_id: conn_id(fd),
        enter_ns: at,
        exit_ns: at + 100,
        total_len: bytes.len() as u32,
        direction,
        goid: 0,
        parent_goid: 0,
        tls: false,
        payload: Bytes::from(bytes),
        tail: Bytes::new(),
    })
}

#[test]
fn query_made_while_serving_a_request_is_its_child_with_literals_removed() {
    let mut startup = 196_608u32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0app\0database\0shop\0\0");
    let mut startup_message = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    startup_message.extend_from_slice(&startup);
    let auth = [pg_msg(b'R', &0u32.to_be_bytes()), pg_msg(b'Z', b"I")].concat();
    let query = pg_msg(
        b'Q',
        b"SELECT name FROM users WHERE email = 'ada@example.com'\0",
    );
    let reply = [
        pg_msg(b'T', b"\x00\x01name\0"),
        pg_msg(b'D', b"\x00\x01\x00\x00\x00\x03ada"),
        pg_msg(b'C', b"SELECT 1\0"),
        pg_msg(b'Z', b"I"),
    ]
    .concat();
    let (spans, _) = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        conn(6, 7, SocketRole::Client, "127.0.0.1:5432"),
        owned_data(6, 7, Direction::Egress, 1_200, startup_message),
        owned_data(6, 7, Direction::Ingress, 1_300, auth),
        owned_data(6, 7, Direction::Egress, 2_000, query),
        owned_data(6, 7, Direction::Ingress, 3_000, reply),
        data(5, 7, Direction::Egress, 4_000, RESPONSE),
    ]);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (db, server) = (&spans[0], &spans[1]);
    assert_eq!(db.name, "SELECT users");
    assert_eq!(db.kind, SpanKind::Client);
    assert_eq!(db.parent_span_id, Some(server.span_id));
    assert_eq!(db.trace_id, server.trace_id);
    assert_eq!((db.start_ns, db.end_ns), (2_000, 3_100));
    assert_eq!(
        db.attr("db.query.text"),
        Some(&AttrValue::Str(
            "SELECT name FROM users WHERE email = $1".into()
        ))
    );
    assert_eq!(
        db.attr("db.system.name"),
        Some(&AttrValue::Str("postgresql".into()))
    );
    assert_eq!(
        db.attr("db.namespace"),
        Some(&AttrValue::Str("shop".into()))
    );
    assert_eq!(
        db.attr("db.response.returned_rows"),
        Some(&AttrValue::Int(1))
    );
    assert_eq!(db.attr("server.port"), Some(&AttrValue::Int(5432)));
    for (_, value) in &db.attributes {
        assert!(!format!("{value:?}").contains("ada@example.com"));
    }
}

#[test]
fn a_libpq_query_whose_return_went_unseen_is_still_a_span_when_the_wire_saw_it() {
    use loupe_common::LibpqFunction;

    use crate::events::LibpqCallRecord;

    let exec = |ts: u64, text: &str| {
        Event::LibpqCall(LibpqCallRecord {
            pid: PID,
            tid: 7,
            ts_ns: ts,
            pg_conn: 0xAA,
            function: LibpqFunction::Exec,
            text: Some(text.to_owned()),
            text_truncated: false,
            name: None,
        })
    };
    let query = pg_msg(b'Q', b"SELECT 1\0");
    let reply = [
        pg_msg(b'T', b"\x00\x01n\0"),
        pg_msg(b'D', b"\x00\x01\x00\x00\x00\x011"),
        pg_msg(b'C', b"SELECT 1\0"),
        pg_msg(b'Z', b"I"),
    ]
    .concat();
    let (spans, counters) = run(vec![
        conn(6, 7, SocketRole::Client, "127.0.0.1:5432"),
        exec(1_900, "SELECT 1"),
        owned_data(6, 7, Direction::Egress, 2_000, query),
        owned_data(6, 7, Direction::Ingress, 3_000, reply),
        // The next PQexec on the thread: the first one's return was never seen.
        exec(5_000, "SELECT 2"),
    ]);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].attr_str("db.query.text"), Some("SELECT $1"));
    assert_eq!(spans[0].attr_str("loupe.db.source"), Some("wire"));
    assert_eq!((spans[0].start_ns, spans[0].end_ns), (2_000, 3_100));
    assert_eq!(Counters::get(&counters.queries_abandoned), 0);
}

const REQUEST_TWO: &[u8] = b"GET /api/other HTTP/1.1\r\nHost: shop:8080\r\n\r\n";

fn client_spans(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect()
}

/// The SERVER span of the request for `path`.
fn server_at<'a>(spans: &'a [SpanRecord], path: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| s.kind == SpanKind::Server && s.attr_str("url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}: {spans:#?}"))
}

#[test]
fn a_go_process_never_nests_by_thread() {
    // One request, one thread: in Go a goroutine of any request may be on this thread.
    let (spans, _) = run_on(
        |_| Runtime::SharedThreads,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            data(5, 7, Direction::Ingress, 1_000, REQUEST),
            conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
            data(6, 7, Direction::Egress, 2_000, CALL),
            data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
            data(5, 7, Direction::Egress, 4_000, RESPONSE),
            // After the request answered, nothing is in flight: the call is the process's own.
            conn(8, 7, SocketRole::Client, "127.0.0.1:8081"),
            data(8, 7, Direction::Egress, 5_000, CALL),
            data(8, 7, Direction::Ingress, 6_000, CALL_RESPONSE),
        ],
    );
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.parent_span_id.is_none()));
    assert_eq!(calls[0].attr_str("loupe.parent"), Some("ambiguous"));
    assert_eq!(calls[1].attr_str("loupe.parent"), Some("none"));
}

#[test]
fn an_event_loop_nests_the_write_that_follows_a_request_read() {
    // nginx: one worker thread, two clients in flight, an upstream keep-alive connection (open
    // before attach: its connect went unseen).
    let (spans, _) = run_on(
        |_| Runtime::RunToCompletion,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            conn(9, 7, SocketRole::Server, "127.0.0.1:5001"),
            data(5, 7, Direction::Ingress, 1_000, REQUEST),
            data(6, 7, Direction::Egress, 1_200, CALL),
            data(9, 7, Direction::Ingress, 1_500, REQUEST_TWO),
            // The upstream answers the first call: a read that is no request's.
            data(6, 7, Direction::Ingress, 2_000, CALL_RESPONSE),
            // A write now follows no request's read: ambiguous, never the second request's.
            data(6, 7, Direction::Egress, 2_500, CALL),
            data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
            data(5, 7, Direction::Egress, 3_500, RESPONSE),
            data(9, 7, Direction::Egress, 4_000, RESPONSE),
        ],
    );
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 2, "{spans:#?}");
    assert_eq!(
        calls[0].parent_span_id,
        Some(server_at(&spans, "/api/checkout").span_id)
    );
    assert_eq!(calls[1].parent_span_id, None);
    assert_eq!(calls[1].attr_str("loupe.parent"), Some("ambiguous"));
}

#[test]
fn an_event_loop_connection_belongs_to_the_request_it_was_opened_for() {
    // A new upstream connection: connect in the handler of the first request, the write once
    // the connect completes, after the second request was read.
    let (spans, _) = run_on(
        |_| Runtime::RunToCompletion,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            conn(9, 7, SocketRole::Server, "127.0.0.1:5001"),
            data(5, 7, Direction::Ingress, 1_000, REQUEST),
            conn_at(6, 7, SocketRole::Client, "127.0.0.1:8081", 1_200),
            data(9, 7, Direction::Ingress, 1_500, REQUEST_TWO),
            data(6, 7, Direction::Egress, 2_000, CALL),
            data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
            data(5, 7, Direction::Egress, 3_500, RESPONSE),
            data(9, 7, Direction::Egress, 4_000, RESPONSE),
        ],
    );
    let first = server_at(&spans, "/api/checkout");
    assert_eq!(client_spans(&spans)[0].parent_span_id, Some(first.span_id));
}

#[test]
fn a_postgres_session_open_before_attach_is_read_from_bind_execute_sync() {
    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    let bind = msg(b'B', b"\0__asyncpg_stmt_2__\0\0\0\0\x01\0\0\0\x017\0\0");
    let execute = msg(b'E', b"\0\0\0\0\0");
    let batch: &'static [u8] = [bind, execute, msg(b'S', b"")].concat().leak();
    let reply: &'static [u8] = [
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\x017"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ]
    .concat()
    .leak();
    let counters = Arc::new(Counters::default());
    let mut stitcher =
        Stitcher::new(StitcherLimits::default(), counters).with_runtime_probe(|_| Runtime::Threads);
    let addrs = SocketAddrs {
        local: "127.0.0.1:40000".parse().unwrap(),
        peer: "127.0.0.1:5432".parse().unwrap(),
    };
    stitcher.seed(PID, conn_id(4), SocketRole::Client, addrs, 600_000_000_000);
    let mut out = Vec::new();
    // The upkeep runs before the first event (at attach, long after boot): the connection
    // found open is not stale.
    stitcher.tick(600_250_000_000, &mut out);
    for event in [
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        data(4, 7, Direction::Egress, 2_000, batch),
        data(4, 7, Direction::Ingress, 3_000, reply),
        data(5, 7, Direction::Egress, 4_000, RESPONSE),
    ] {
        stitcher.handle(event, &mut out);
    }
    let query = out
        .iter()
        .find(|s| s.op == OpType::DbClient)
        .expect("a query span");
    let server = out.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(query.name, "EXECUTE __asyncpg_stmt_2__");
    assert_eq!(query.parent_span_id, Some(server.span_id));
    assert_eq!(
        query.attr_str("loupe.db.statement_name"),
        Some("__asyncpg_stmt_2__")
    );
    assert!(query.attr_str("loupe.db.fingerprint").is_some());
    assert_eq!(query.attr("loupe.db.query_truncated"), None);
    assert_eq!(query.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(query.attr_int("server.port"), Some(5432));
}

/// Another process's events, for tests of two observed ends of one connection.
fn conn_of(pid: u32, fd: i32, role: SocketRole, peer: &str, local: Option<&str>) -> Event {
    Event::Conn(ConnRecord {
        pid,
        tid: pid,
        fd,
        conn_id: conn_id(fd),
        ts_ns: 1,
        role,
        peer: Some(peer.parse().unwrap()),
        local: local.map(|l| l.parse().unwrap()),
    })
}

fn data_of(pid: u32, fd: i32, direction: Direction, at: u64, bytes: &'static [u8]) -> Event {
    let Event::Data(mut record) = data(fd, pid, direction, at, bytes) else {
        unreachable!()
    };
    record.pid = pid;
    Event::Data(record)
}

const CALLEE: u32 = 200;

/// The caller's connection to the callee (PID, fd 6), seen from its connect with its own
/// address, 127.0.0.1:40001: what the callee's end sees as its peer.
fn callers_connection() -> Event {
    conn_of(
        PID,
        6,
        SocketRole::Client,
        "127.0.0.1:8081",
        Some("127.0.0.1:40001"),
    )
}

/// In which order the two ends' events come through the ring buffer, where they race.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// The caller's write, then the callee's read and answer.
    WriteReadAnswer,
    /// The callee's read, then the caller's write, then the callee's answer.
    ReadWriteAnswer,
    /// The callee's read and its whole answer before the caller's write returns (its thread
    /// kept off the CPU after sending).
    ReadAnswerWrite,
}

const ORDERS: [Order; 3] = [
    Order::WriteReadAnswer,
    Order::ReadWriteAnswer,
    Order::ReadAnswerWrite,
];

/// A caller (PID, thread 7) serving REQUEST calls a callee (CALLEE) over a connection loupe saw
/// open on both ends, the two ends' events in `order`.
fn two_ends(order: Order, call_seen_by_callee: &'static [u8]) -> Vec<SpanRecord> {
    let caller_write = data(6, 7, Direction::Egress, 2_000, CALL);
    let callee_read = data_of(CALLEE, 9, Direction::Ingress, 2_050, call_seen_by_callee);
    let callee_answer = data_of(CALLEE, 9, Direction::Egress, 2_500, CALL_RESPONSE);
    let mut events = vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        callers_connection(),
        conn_of(CALLEE, 9, SocketRole::Server, "127.0.0.1:40001", None),
    ];
    events.extend(match order {
        Order::WriteReadAnswer => [caller_write, callee_read, callee_answer],
        Order::ReadWriteAnswer => [callee_read, caller_write, callee_answer],
        Order::ReadAnswerWrite => [callee_read, callee_answer, caller_write],
    });
    events.extend([
        data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
        data(5, 7, Direction::Egress, 4_000, RESPONSE),
    ]);
    run(events).0
}

#[test]
fn the_callee_of_an_observed_caller_joins_its_trace() {
    for order in ORDERS {
        let spans = two_ends(order, CALL);
        let find = |pid: u32, kind: SpanKind| {
            spans
                .iter()
                .find(|s| s.pid == pid && s.kind == kind)
                .unwrap_or_else(|| panic!("{spans:#?}"))
        };
        let (request, call, callee) = (
            find(PID, SpanKind::Server),
            find(PID, SpanKind::Client),
            find(CALLEE, SpanKind::Server),
        );
        assert_eq!(call.parent_span_id, Some(request.span_id));
        assert_eq!(callee.parent_span_id, Some(call.span_id), "{order:?}");
        assert_eq!(callee.trace_id, request.trace_id, "{order:?}");
    }
}

#[test]
fn a_callee_whose_request_line_differs_is_not_linked() {
    // The same connection and position, another request: something was lost on one end.
    const OTHER: &[u8] = b"GET /other HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n\r\n";
    for order in ORDERS {
        let spans = two_ends(order, OTHER);
        let callee = spans
            .iter()
            .find(|s| s.pid == CALLEE && s.kind == SpanKind::Server)
            .unwrap_or_else(|| panic!("{order:?} {spans:#?}"));
        assert_eq!(callee.parent_span_id, None);
    }
}

#[test]
fn a_callee_whose_callers_write_never_comes_goes_out_alone_after_the_wait_counted() {
    let counters = Arc::new(Counters::default());
    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters.clone());
    let mut out = Vec::new();
    for event in [
        callers_connection(),
        conn_of(CALLEE, 9, SocketRole::Server, "127.0.0.1:40001", None),
        data_of(CALLEE, 9, Direction::Ingress, 2_050, CALL),
        data_of(CALLEE, 9, Direction::Egress, 2_500, CALL_RESPONSE),
    ] {
        stitcher.handle(event, &mut out);
    }
    stitcher.tick(2_500 + 1_900_000_000, &mut out);
    assert!(
        out.is_empty(),
        "held while its caller may still come: {out:#?}"
    );
    stitcher.tick(2_500 + 2_100_000_000, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].parent_span_id, None);
    assert_eq!(Counters::get(&counters.callers_unseen), 1);
    // The write, if it comes after all, finds nothing to link: no second span.
    stitcher.handle(data(6, PID, Direction::Egress, 2_000, CALL), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn a_callee_accepted_without_an_address_buffer_still_joins_its_callers_trace() {
    // accept(fd, NULL, NULL): the connection's peer comes from the socket itself.
    fn probe(pid: u32, fd: i32) -> Option<crate::process::SocketAddrs> {
        (pid == CALLEE && fd == 9).then(|| crate::process::SocketAddrs {
            local: "127.0.0.1:8081".parse().unwrap(),
            peer: "127.0.0.1:40001".parse().unwrap(),
        })
    }
    let mut stitcher = Stitcher::new(StitcherLimits::default(), Arc::new(Counters::default()))
        .with_runtime_probe(|_| Runtime::Threads)
        .with_socket_probe(probe);
    let mut out = Vec::new();
    for event in [
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        callers_connection(),
        Event::Conn(ConnRecord {
            pid: CALLEE,
            tid: CALLEE,
            fd: 9,
            conn_id: conn_id(9),
            ts_ns: 1,
            role: SocketRole::Server,
            peer: None,
            local: None,
        }),
        data_of(CALLEE, 9, Direction::Ingress, 2_050, CALL),
        data(6, 7, Direction::Egress, 2_000, CALL),
        data_of(CALLEE, 9, Direction::Egress, 2_500, CALL_RESPONSE),
        data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
        data(5, 7, Direction::Egress, 4_000, RESPONSE),
    ] {
        stitcher.handle(event, &mut out);
    }
    let call = out.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    let callee = out
        .iter()
        .find(|s| s.pid == CALLEE && s.kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("{out:#?}"));
    assert_eq!(callee.parent_span_id, Some(call.span_id));
    assert_eq!(callee.trace_id, call.trace_id);
}

/// `event` as goroutine `goid` made it.
fn on_goroutine(goid: u64, event: Event) -> Event {
    let Event::Data(mut record) = event else {
        return event;
    };
    record.goid = goid;
    Event::Data(record)
}

#[test]
fn in_a_go_program_the_goroutine_is_the_key() {
    // Two requests read by goroutines 11 and 12 on thread 7; goroutine 11 runs on thread 8 when
    // it calls out, goroutine 12 on thread 7; goroutine 13 (a transport's writer) calls on 7.
    let (spans, _) = run_on(
        |_| Runtime::Goroutines,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            conn(9, 7, SocketRole::Server, "127.0.0.1:5001"),
            on_goroutine(11, data(5, 7, Direction::Ingress, 1_000, REQUEST)),
            on_goroutine(12, data(9, 7, Direction::Ingress, 1_100, REQUEST_TWO)),
            conn(6, 8, SocketRole::Client, "127.0.0.1:8081"),
            on_goroutine(11, data(6, 8, Direction::Egress, 2_000, CALL)),
            on_goroutine(11, data(6, 8, Direction::Ingress, 2_500, CALL_RESPONSE)),
            conn(4, 7, SocketRole::Client, "127.0.0.1:8081"),
            on_goroutine(13, data(4, 7, Direction::Egress, 2_600, CALL)),
            on_goroutine(13, data(4, 7, Direction::Ingress, 2_700, CALL_RESPONSE)),
            // A syscall whose goroutine went unread: nothing is certain.
            conn(3, 7, SocketRole::Client, "127.0.0.1:8081"),
            data(3, 7, Direction::Egress, 2_800, CALL),
            data(3, 7, Direction::Ingress, 2_900, CALL_RESPONSE),
            on_goroutine(11, data(5, 7, Direction::Egress, 3_000, RESPONSE)),
            on_goroutine(12, data(9, 7, Direction::Egress, 3_100, RESPONSE)),
        ],
    );
    let server = server_at(&spans, "/api/checkout");
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 3, "{spans:#?}");
    assert_eq!(
        calls[0].parent_span_id,
        Some(server.span_id),
        "goroutine 11's call"
    );
    assert_eq!(calls[0].tid, 8, "its thread is still the thread");
    assert_eq!(calls[1].parent_span_id, None);
    assert_eq!(
        calls[1].attr_str("loupe.parent"),
        Some("none"),
        "goroutine 13 serves nothing"
    );
    assert_eq!(calls[2].parent_span_id, None);
    assert_eq!(calls[2].attr_str("loupe.parent"), Some("ambiguous"));
}

#[test]
fn a_go_transport_write_is_keyed_by_the_goroutine_that_made_the_call() {
    let go_call = |goid: u64, function: GoFunction| Event::GoCall {
        pid: PID,
        goid,
        parent_goid: 1,
        function,
        object: 0xa0a0,
    };
    let (spans, _) = run_on(
        |_| Runtime::Goroutines,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            on_goroutine(11, data(5, 7, Direction::Ingress, 1_000, REQUEST)),
            // Goroutine 11 hands its request to a connection; goroutine 50 (the connection's
            // writer, on another thread) writes it.
            go_call(11, GoFunction::PersistConnRoundTrip),
            go_call(50, GoFunction::RequestWrite),
            conn(6, 8, SocketRole::Client, "127.0.0.1:8081"),
            on_goroutine(50, data(6, 8, Direction::Egress, 2_000, CALL)),
            on_goroutine(51, data(6, 9, Direction::Ingress, 2_500, CALL_RESPONSE)),
            // A request the writer writes that no Transport call handed over: its own.
            go_call(50, GoFunction::RequestWrite),
            on_goroutine(50, data(6, 8, Direction::Egress, 2_600, CALL)),
            on_goroutine(51, data(6, 9, Direction::Ingress, 2_700, CALL_RESPONSE)),
            on_goroutine(11, data(5, 7, Direction::Egress, 3_000, RESPONSE)),
        ],
    );
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 2, "{spans:#?}");
    assert_eq!(calls[0].parent_span_id, Some(server.span_id));
    assert_eq!(calls[1].parent_span_id, None);
}

/// `event` as goroutine `goid`, started by `parent`, made it.
fn on_child(goid: u64, parent: u64, event: Event) -> Event {
    let Event::Data(mut record) = on_goroutine(goid, event) else {
        unreachable!()
    };
    record.parent_goid = parent;
    Event::Data(record)
}

#[test]
fn a_goroutine_a_handler_starts_belongs_to_its_request_while_it_is_in_flight() {
    let spawn = |parent: u64, child: u64| Event::GoCall {
        pid: PID,
        goid: parent,
        parent_goid: 1,
        function: GoFunction::NewProc,
        object: child,
    };
    let (spans, _) = run_on(
        |_| Runtime::Goroutines,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            on_goroutine(11, data(5, 7, Direction::Ingress, 1_000, REQUEST)),
            // The handler (11) starts 20; 20 starts 30 (a second level: not bound); an id
            // announced for 21 goes to a goroutine another one (99) started: not bound.
            spawn(11, 20),
            spawn(11, 21),
            conn(6, 8, SocketRole::Client, "127.0.0.1:8081"),
            on_child(20, 11, data(6, 8, Direction::Egress, 2_000, CALL)),
            on_child(20, 11, data(6, 8, Direction::Ingress, 2_100, CALL_RESPONSE)),
            spawn(20, 30),
            conn(4, 8, SocketRole::Client, "127.0.0.1:8081"),
            on_child(30, 20, data(4, 8, Direction::Egress, 2_200, CALL)),
            on_child(30, 20, data(4, 8, Direction::Ingress, 2_300, CALL_RESPONSE)),
            conn(3, 8, SocketRole::Client, "127.0.0.1:8081"),
            on_child(21, 99, data(3, 8, Direction::Egress, 2_400, CALL)),
            on_child(21, 99, data(3, 8, Direction::Ingress, 2_500, CALL_RESPONSE)),
            on_goroutine(11, data(5, 7, Direction::Egress, 3_000, RESPONSE)),
            // After the request answered, its child's call belongs to nothing.
            conn(2, 8, SocketRole::Client, "127.0.0.1:8081"),
            on_child(20, 11, data(2, 8, Direction::Egress, 4_000, CALL)),
            on_child(20, 11, data(2, 8, Direction::Ingress, 4_100, CALL_RESPONSE)),
        ],
    );
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 4, "{spans:#?}");
    assert_eq!(
        calls[0].parent_span_id,
        Some(server.span_id),
        "the handler's child"
    );
    assert_eq!(calls[1].parent_span_id, None, "a grandchild is not bound");
    assert_eq!(
        calls[2].parent_span_id, None,
        "an id that went to another goroutine"
    );
    assert_eq!(calls[3].parent_span_id, None, "after its request answered");
}

#[test]
fn a_callee_that_called_out_before_its_caller_was_seen_keeps_its_own_trace() {
    // The callee read the request and made a call of its own before the caller's write was
    // handled: its child already carries its trace, so it is not moved into the caller's.
    let spans = run(vec![
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 1_000, REQUEST),
        callers_connection(),
        conn_of(CALLEE, 9, SocketRole::Server, "127.0.0.1:40001", None),
        data_of(CALLEE, 9, Direction::Ingress, 2_050, CALL),
        conn_of(CALLEE, 11, SocketRole::Client, "127.0.0.1:9999", None),
        data_of(CALLEE, 11, Direction::Egress, 2_300, CALL),
        data(6, 7, Direction::Egress, 2_000, CALL),
        data_of(CALLEE, 11, Direction::Ingress, 2_400, CALL_RESPONSE),
        data_of(CALLEE, 9, Direction::Egress, 2_500, CALL_RESPONSE),
        data(6, 7, Direction::Ingress, 3_000, CALL_RESPONSE),
        data(5, 7, Direction::Egress, 4_000, RESPONSE),
    ])
    .0;
    let callee = spans
        .iter()
        .find(|s| s.pid == CALLEE && s.kind == SpanKind::Server)
        .unwrap();
    let its_call = spans
        .iter()
        .find(|s| s.pid == CALLEE && s.kind == SpanKind::Client)
        .unwrap();
    assert_eq!(callee.parent_span_id, None);
    assert_eq!(its_call.parent_span_id, Some(callee.span_id));
    assert_eq!(
        its_call.trace_id, callee.trace_id,
        "one trace for the callee's tree"
    );
}

/// `event` as a Python thread made it while running in Context `unit`.
fn in_context(unit: u64, event: Event) -> Event {
    on_goroutine(unit, event)
}

#[test]
fn an_asyncio_call_waits_for_the_request_that_answers_from_its_context() {
    // Three requests on the loop thread 7: read in the connections' Contexts (0xa..), each run
    // by a task of its own (0xc1, 0xc2, 0xc3). Task 0xc2 calls out; the requests answer in
    // another order than they came.
    let (spans, counters) = run_on(
        |_| Runtime::Tasks,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            conn(9, 7, SocketRole::Server, "127.0.0.1:5001"),
            conn(10, 7, SocketRole::Server, "127.0.0.1:5002"),
            in_context(0xa1, data(5, 7, Direction::Ingress, 1_000, REQUEST)),
            in_context(0xa2, data(9, 7, Direction::Ingress, 1_100, REQUEST_TWO)),
            in_context(0xa3, data(10, 7, Direction::Ingress, 1_200, REQUEST)),
            conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
            in_context(0xc2, data(6, 7, Direction::Egress, 2_000, CALL)),
            in_context(0xb6, data(6, 7, Direction::Ingress, 2_500, CALL_RESPONSE)),
            in_context(0xc1, data(5, 7, Direction::Egress, 3_000, RESPONSE)),
            in_context(0xc2, data(9, 7, Direction::Egress, 3_100, RESPONSE)),
            in_context(0xc3, data(10, 7, Direction::Egress, 3_200, RESPONSE)),
        ],
    );
    let server = server_at(&spans, "/api/other");
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 1, "{spans:#?}");
    assert_eq!(calls[0].parent_span_id, Some(server.span_id), "{spans:#?}");
    assert_eq!(calls[0].trace_id, server.trace_id);
    assert_eq!(calls[0].attr_str("loupe.parent"), None);
    // The request it belongs to left after its call (held until the call was decided), and
    // nothing is counted un-nested.
    let at = |id: u64| spans.iter().position(|s| s.span_id == id).unwrap();
    assert!(at(calls[0].span_id) < at(server.span_id), "{spans:#?}");
    assert_eq!(spans.len(), 4);
    assert_eq!(Counters::get(&counters.unnested_calls), 0);
}

#[test]
fn an_asyncio_call_no_request_answers_for_is_ambiguous() {
    // A background task (0xbb) queries while two requests are in flight; both answer from
    // their own tasks. And a request closed unanswered leaves the second call undecidable.
    let (spans, _) = run_on(
        |_| Runtime::Tasks,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            conn(9, 7, SocketRole::Server, "127.0.0.1:5001"),
            in_context(0xa1, data(5, 7, Direction::Ingress, 1_000, REQUEST)),
            in_context(0xa2, data(9, 7, Direction::Ingress, 1_100, REQUEST_TWO)),
            conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
            in_context(0xbb, data(6, 7, Direction::Egress, 2_000, CALL)),
            in_context(0xb6, data(6, 7, Direction::Ingress, 2_500, CALL_RESPONSE)),
            in_context(0xc1, data(5, 7, Direction::Egress, 3_000, RESPONSE)),
            in_context(0xc2, data(9, 7, Direction::Egress, 3_100, RESPONSE)),
            in_context(0xa1, data(5, 7, Direction::Ingress, 4_000, REQUEST)),
            in_context(0xa2, data(9, 7, Direction::Ingress, 4_100, REQUEST_TWO)),
            conn(4, 7, SocketRole::Client, "127.0.0.1:8081"),
            in_context(0xc4, data(4, 7, Direction::Egress, 5_000, CALL)),
            in_context(0xb4, data(4, 7, Direction::Ingress, 5_500, CALL_RESPONSE)),
            Event::Close {
                pid: PID,
                tid: 7,
                fd: 5,
                conn_id: conn_id(5),
                ts_ns: 5_800,
            },
            in_context(0xc4, data(9, 7, Direction::Egress, 6_000, RESPONSE)),
        ],
    );
    let calls = client_spans(&spans);
    assert_eq!(calls.len(), 2, "{spans:#?}");
    for call in calls {
        assert_eq!(call.parent_span_id, None, "{spans:#?}");
        assert_eq!(call.attr_str("loupe.parent"), Some("ambiguous"));
    }
    let servers = spans.iter().filter(|s| s.kind == SpanKind::Server).count();
    assert_eq!(servers, 3, "every answered request leaves: {spans:#?}");
}

#[test]
fn an_asyncio_call_with_one_request_in_flight_nests_at_once() {
    // One candidate: the thread rule decides it when it starts (a callee can join its trace).
    let (spans, _) = run_on(
        |_| Runtime::Tasks,
        vec![
            conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
            in_context(0xa1, data(5, 7, Direction::Ingress, 1_000, REQUEST)),
            conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
            in_context(0xc1, data(6, 7, Direction::Egress, 2_000, CALL)),
            in_context(0xb6, data(6, 7, Direction::Ingress, 2_500, CALL_RESPONSE)),
            in_context(0xc1, data(5, 7, Direction::Egress, 3_000, RESPONSE)),
        ],
    );
    let server = server_at(&spans, "/api/checkout");
    assert_eq!(client_spans(&spans)[0].parent_span_id, Some(server.span_id));
}

#[test]
fn a_first_read_shorter_than_the_method_is_held_until_the_request_can_be_told() {
    let (head, rest) = REQUEST.split_at(2);
    let mut events = vec![conn(5, 7, SocketRole::Server, "127.0.0.1:5000")];
    events.push(data(5, 7, Direction::Ingress, 1_000, head));
    events.push(data(5, 7, Direction::Ingress, 2_000, rest));
    events.push(data(5, 7, Direction::Egress, 3_000, RESPONSE));
    // And a byte at a time, on a socket open before attach.
    for (i, byte) in REQUEST.chunks(1).enumerate() {
        events.push(data(6, 8, Direction::Ingress, 10_000 + i as u64 * 10, byte));
    }
    events.push(data(6, 8, Direction::Egress, 20_000, RESPONSE));
    let (spans, counters) = run(events);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans.iter().all(|s| s.kind == SpanKind::Server));
    assert_eq!(Counters::get(&counters.parse_errors), 0);
}

/// The stitcher fed `events`, and the processes it then asks libpq's uprobes for.
fn libpq_wants_after(events: Vec<Event>) -> Vec<u32> {
    let mut stitcher = Stitcher::new(StitcherLimits::default(), Arc::new(Counters::default()));
    let mut out = Vec::new();
    for event in events {
        stitcher.handle(event, &mut out);
    }
    let wants = stitcher.take_libpq_wants();
    assert!(stitcher.take_libpq_wants().is_empty(), "taken once");
    wants
}

#[test]
fn libpq_is_asked_for_only_where_the_wire_cannot_read_a_postgres_session() {
    // SSLRequest (length 8, code 80877103), answered yes: the session is encrypted.
    let ssl_request = b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec();
    let encrypted = libpq_wants_after(vec![
        conn(6, 7, SocketRole::Client, "127.0.0.1:5432"),
        owned_data(6, 7, Direction::Egress, 1_000, ssl_request.clone()),
        owned_data(6, 7, Direction::Ingress, 2_000, b"S".to_vec()),
        // A second encrypted session of the same process: asked once.
        conn(8, 7, SocketRole::Client, "127.0.0.1:5432"),
        owned_data(8, 7, Direction::Egress, 3_000, ssl_request.clone()),
        owned_data(8, 7, Direction::Ingress, 4_000, b"S".to_vec()),
    ]);
    assert_eq!(encrypted, vec![PID]);

    // Refused (N), then a plaintext session: the wire reads it all.
    let mut startup = b"\x00\x03\x00\x00user\0shop\0database\0shop\0\0".to_vec();
    let len = (startup.len() + 4) as u32;
    startup.splice(0..0, len.to_be_bytes());
    let plaintext = libpq_wants_after(vec![
        conn(6, 7, SocketRole::Client, "127.0.0.1:5432"),
        owned_data(6, 7, Direction::Egress, 1_000, ssl_request),
        owned_data(6, 7, Direction::Ingress, 2_000, b"N".to_vec()),
        owned_data(6, 7, Direction::Egress, 3_000, startup),
        owned_data(6, 7, Direction::Ingress, 4_000, pg_msg(b'Z', b"I")),
        owned_data(6, 7, Direction::Egress, 5_000, pg_msg(b'Q', b"SELECT 1\0")),
        owned_data(6, 7, Direction::Ingress, 6_000, pg_msg(b'Z', b"I")),
    ]);
    assert!(plaintext.is_empty(), "{plaintext:?}");

    // A socket open before attach whose bytes are nothing loupe reads (TLS records, say).
    let mut record = b"\x17\x03\x03\x00\x80".to_vec();
    record.extend([0xa5; 128]);
    let unreadable: Vec<Event> = (0..8)
        .map(|i| owned_data(9, 7, Direction::Egress, 1_000 * (i + 1), record.clone()))
        .collect();
    assert_eq!(libpq_wants_after(unreadable), vec![PID]);
}

#[test]
fn a_request_and_its_call_are_due_at_their_thresholds_and_not_once_they_ended() {
    let ms = 1_000_000;
    let counters = Arc::new(Counters::default());
    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters);
    stitcher.watch_deadlines(&crate::config::Thresholds {
        http: std::time::Duration::from_millis(200),
        external: std::time::Duration::from_millis(50),
        db: std::time::Duration::from_millis(100),
        cache: std::time::Duration::from_millis(10),
    });
    let mut out = Vec::new();
    for event in [
        conn(5, 7, SocketRole::Server, "127.0.0.1:5000"),
        data(5, 7, Direction::Ingress, 10 * ms, REQUEST),
        conn(6, 7, SocketRole::Client, "127.0.0.1:8081"),
        data(6, 7, Direction::Egress, 20 * ms, CALL),
    ] {
        stitcher.handle(event, &mut out);
    }
    // The request was read at 10 ms + 100 ns (the read's return), the call written at 20 ms.
    assert_eq!(
        stitcher.next_deadline(),
        Some(70 * ms),
        "the call's, 50 ms on"
    );
    assert!(!stitcher.deadlines_due(69 * ms), "nothing is due before");
    assert!(
        stitcher.deadlines_due(70 * ms),
        "the call still runs at its threshold"
    );
    assert_eq!(stitcher.next_deadline(), Some(210 * ms + 100));
    // Both end before the request's threshold: its deadline finds nothing running.
    stitcher.handle(
        data(6, 7, Direction::Ingress, 80 * ms, CALL_RESPONSE),
        &mut out,
    );
    stitcher.handle(data(5, 7, Direction::Egress, 90 * ms, RESPONSE), &mut out);
    assert_eq!(out.len(), 2);
    assert!(
        !stitcher.deadlines_due(300 * ms),
        "an operation that ended is not heated"
    );
    assert_eq!(stitcher.next_deadline(), None);

    // A second request on the same keep-alive connection that runs past its threshold.
    stitcher.handle(data(5, 7, Direction::Ingress, 400 * ms, REQUEST), &mut out);
    assert!(stitcher.deadlines_due(700 * ms));
    assert!(
        stitcher
            .slow_threads(
                700 * ms,
                &crate::config::Thresholds {
                    http: std::time::Duration::from_millis(200),
                    external: std::time::Duration::ZERO,
                    db: std::time::Duration::ZERO,
                    cache: std::time::Duration::ZERO,
                }
            )
            .contains(&(PID, 7))
    );
}

#[test]
fn a_zero_threshold_never_makes_a_thread_hot() {
    let counters = Arc::new(Counters::default());
    let mut stitcher = Stitcher::new(StitcherLimits::default(), counters);
    let off = crate::config::Thresholds {
        http: std::time::Duration::ZERO,
        external: std::time::Duration::ZERO,
        db: std::time::Duration::ZERO,
        cache: std::time::Duration::ZERO,
    };
    stitcher.watch_deadlines(&off);
    let mut out = Vec::new();
    stitcher.handle(conn(5, 7, SocketRole::Server, "127.0.0.1:5000"), &mut out);
    stitcher.handle(data(5, 7, Direction::Ingress, 1_000, REQUEST), &mut out);
    assert_eq!(stitcher.next_deadline(), None);
    assert!(stitcher.slow_threads(5_000_000_000, &off).is_empty());
}
