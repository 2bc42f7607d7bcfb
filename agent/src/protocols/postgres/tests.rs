//! The PostgreSQL conversation on byte streams built message by message, as clients send them.

use super::*;
use crate::protocols::{Chunk, Flow, Loss, chunk};

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn startup(database: &str) -> Vec<u8> {
    let mut body = PROTOCOL_V3.to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0app\0database\0{database}\0\0").as_bytes());
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn cstr(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    out.push(0);
    out
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row() -> Vec<u8> {
    msg(b'D', b"\x00\x01\x00\x00\x00\x01x")
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn done(events: &[PgEvent]) -> Vec<&QueryDone> {
    events
        .iter()
        .filter_map(|e| match e {
            PgEvent::Done(q) => Some(q),
            _ => None,
        })
        .collect()
}

/// A session opened and authenticated.
fn session(events: &mut Vec<PgEvent>) -> PgConversation {
    let mut c = PgConversation::new();
    c.push(chunk(Flow::Request, 1, &startup("shop")), events);
    let auth = concat(&[
        msg(b'R', &0u32.to_be_bytes()),
        msg(b'S', b"server_version\x0015\x00"),
        ready(),
    ]);
    c.push(chunk(Flow::Response, 2, &auth), events);
    c
}

#[test]
fn simple_query_ends_at_ready_for_query_with_rows_and_database() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    c.push(
        chunk(
            Flow::Request,
            10,
            &msg(b'Q', &cstr("SELECT name FROM users WHERE id = 42")),
        ),
        &mut events,
    );
    let reply = concat(&[
        msg(b'T', b"\x00\x01name\0"),
        row(),
        row(),
        row(),
        msg(b'C', &cstr("SELECT 3")),
        ready(),
    ]);
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    assert_eq!(events.first(), Some(&PgEvent::Started { seq: 0 }));
    let all = done(&events);
    assert_eq!(all.len(), 1);
    let q = all[0];
    assert_eq!(q.text, "SELECT name FROM users WHERE id = 42");
    assert_eq!(q.rows, Some(3));
    assert_eq!(q.database.as_deref(), Some("shop"));
    assert_eq!((q.start.enter_ns, q.end.exit_ns), (10, 21));
    assert_eq!(q.sqlstate, None);
}

#[test]
fn extended_protocol_execution_ends_at_its_command_complete() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let request = concat(&[
        msg(
            b'P',
            &concat(&[
                cstr(""),
                cstr("SELECT * FROM orders WHERE user_id = $1"),
                vec![0, 0],
            ]),
        ),
        msg(
            b'B',
            &concat(&[
                cstr(""),
                cstr(""),
                vec![0, 0, 0, 1, 0, 0, 0, 2],
                b"42".to_vec(),
                vec![0, 0],
            ]),
        ),
        msg(b'D', &concat(&[vec![b'P'], cstr("")])),
        msg(b'E', &concat(&[cstr(""), vec![0, 0, 0, 0]])),
        msg(b'S', b""),
    ]);
    c.push(chunk(Flow::Request, 10, &request), &mut events);
    c.push(
        chunk(
            Flow::Response,
            20,
            &concat(&[msg(b'1', b""), msg(b'2', b""), row(), row()]),
        ),
        &mut events,
    );
    assert!(done(&events).is_empty());
    c.push(
        chunk(
            Flow::Response,
            30,
            &concat(&[msg(b'C', &cstr("SELECT 2")), ready()]),
        ),
        &mut events,
    );
    let q = done(&events)[0];
    assert_eq!(q.text, "SELECT * FROM orders WHERE user_id = $1");
    assert_eq!(q.rows, Some(2));
    assert_eq!(q.end.enter_ns, 30);
}

#[test]
fn error_response_gives_the_sqlstate() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    c.push(
        chunk(Flow::Request, 10, &msg(b'Q', &cstr("SELECT * FROM nope"))),
        &mut events,
    );
    let error = msg(
        b'E',
        b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0",
    );
    c.push(
        chunk(Flow::Response, 20, &concat(&[error, ready()])),
        &mut events,
    );
    let q = done(&events)[0];
    assert_eq!(q.sqlstate.as_deref(), Some("42P01"));
    assert_eq!(q.rows, None);
}

#[test]
fn executions_after_an_error_in_a_batch_are_skipped_not_reported() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let execute = |sql: &str| {
        concat(&[
            msg(b'P', &concat(&[cstr(""), cstr(sql), vec![0, 0]])),
            msg(b'B', &concat(&[cstr(""), cstr(""), vec![0, 0, 0, 0, 0, 0]])),
            msg(b'E', &concat(&[cstr(""), vec![0, 0, 0, 0]])),
        ])
    };
    let batch = concat(&[
        execute("INSERT INTO a VALUES (1)"),
        execute("INSERT INTO b VALUES (2)"),
        execute("INSERT INTO c VALUES (3)"),
        msg(b'S', b""),
    ]);
    c.push(chunk(Flow::Request, 10, &batch), &mut events);
    let reply = concat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', &cstr("INSERT 0 1")),
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'E', b"SERROR\0C23505\0Mduplicate key\0\0"),
        ready(),
    ]);
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].text, "INSERT INTO a VALUES (1)");
    assert_eq!(all[0].rows, Some(1));
    assert_eq!(all[1].sqlstate.as_deref(), Some("23505"));
    assert_eq!(c.stats().skipped, 1, "{events:?}");
    let skipped: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            PgEvent::Skipped { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped.len(),
        1,
        "the skipped execution is reported: {events:?}"
    );
}

#[test]
fn refused_ssl_is_followed_by_a_readable_session_and_accepted_ssl_by_nothing() {
    let mut events = Vec::new();
    let mut c = PgConversation::new();
    let mut ssl = 8u32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    assert!(opens_session(&ssl));
    c.push(chunk(Flow::Request, 1, &ssl), &mut events);
    c.push(chunk(Flow::Response, 2, b"N"), &mut events);
    c.push(chunk(Flow::Request, 3, &startup("inventory")), &mut events);
    c.push(
        chunk(
            Flow::Response,
            4,
            &concat(&[msg(b'R', &0u32.to_be_bytes()), ready()]),
        ),
        &mut events,
    );
    c.push(
        chunk(Flow::Request, 5, &msg(b'Q', &cstr("SELECT 1"))),
        &mut events,
    );
    c.push(
        chunk(
            Flow::Response,
            6,
            &concat(&[row(), msg(b'C', &cstr("SELECT 1")), ready()]),
        ),
        &mut events,
    );
    let q = done(&events)[0];
    assert_eq!(q.database.as_deref(), Some("inventory"));
    assert!(!c.is_opaque());

    let mut c = PgConversation::new();
    c.push(chunk(Flow::Request, 1, &ssl), &mut events);
    c.push(chunk(Flow::Response, 2, b"S"), &mut events);
    assert!(c.is_opaque());
}

#[test]
fn a_result_larger_than_the_capture_ends_when_the_client_speaks_again() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    c.push(
        chunk(Flow::Request, 10, &msg(b'Q', &cstr("SELECT * FROM big"))),
        &mut events,
    );
    let mut reply = concat(&[msg(b'T', b"\x00\x01x\0")]);
    for _ in 0..1000 {
        reply.extend(row());
    }
    reply.extend(concat(&[msg(b'C', &cstr("SELECT 1000")), ready()]));
    // Only the first 64 bytes of the result were captured, and none of its end.
    c.push(
        Chunk {
            tail: &[],
            ..read_as_captured(20, &reply, 64)
        },
        &mut events,
    );
    assert!(done(&events).is_empty());
    c.push(
        chunk(Flow::Request, 30, &msg(b'Q', &cstr("SELECT 2"))),
        &mut events,
    );
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].end.exit_ns, 21);
    assert_eq!(
        all[0].rows, None,
        "rows past the lost framing are unknown, not undercounted"
    );
    c.push(
        chunk(
            Flow::Response,
            40,
            &concat(&[row(), msg(b'C', &cstr("SELECT 1")), ready()]),
        ),
        &mut events,
    );
    assert_eq!(
        done(&events).len(),
        2,
        "the framing resyncs on the next reply"
    );
}

/// `bytes` as the kernel reports a read of them: the first `capture` bytes, and the last 128
/// when it moved more.
fn read_as_captured(at: u64, bytes: &[u8], capture: usize) -> Chunk<'_> {
    let head = capture.min(bytes.len());
    let tail_from = bytes.len().saturating_sub(128).max(head);
    Chunk {
        flow: Flow::Response,
        enter_ns: at,
        exit_ns: at + 1,
        captured: &bytes[..head],
        total_len: bytes.len(),
        tail: &bytes[tail_from..],
    }
}

#[test]
fn a_result_larger_than_the_capture_ends_where_its_tail_says_with_its_rows() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    c.push(
        chunk(Flow::Request, 10, &msg(b'Q', &cstr("SELECT g FROM big"))),
        &mut events,
    );
    let mut reply = concat(&[msg(b'T', b"\x00\x01g\0")]);
    for _ in 0..2000 {
        reply.extend(row());
    }
    reply.extend(concat(&[msg(b'C', &cstr("SELECT 2000")), ready()]));
    // Read in 8 KiB pieces (the last one shorter), each captured as the kernel does.
    for (i, piece) in reply.chunks(8192).enumerate() {
        c.push(
            read_as_captured(20 + 10 * i as u64, piece, 1024),
            &mut events,
        );
    }
    let pieces = reply.len().div_ceil(8192) as u64;
    let all = done(&events);
    assert_eq!(all.len(), 1, "ended by its own ReadyForQuery");
    assert_eq!(all[0].rows, Some(2000), "from its CommandComplete");
    assert_eq!(
        all[0].end.exit_ns,
        20 + 10 * (pieces - 1) + 1,
        "when the last piece came"
    );

    // The next query reads as usual, and so does an error at the end of a long reply.
    c.push(
        chunk(Flow::Request, 100, &msg(b'Q', &cstr("SELECT g FROM big"))),
        &mut events,
    );
    let mut failing = concat(&[msg(b'T', b"\x00\x01g\0")]);
    for _ in 0..500 {
        failing.extend(row());
    }
    failing.extend(concat(&[
        msg(b'E', b"SERROR\0C57014\0Mcanceled\0\0"),
        ready(),
    ]));
    c.push(read_as_captured(110, &failing, 256), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].sqlstate.as_deref(), Some("57014"));
}

#[test]
fn trailing_messages_are_found_only_where_they_chain_to_a_ready_for_query() {
    use super::framing::{backend_kind, trailing_messages};
    let end = concat(&[row(), msg(b'C', &cstr("SELECT 9")), ready()]);
    let found = trailing_messages(&end[3..], backend_kind).expect("C then Z");
    let kinds: Vec<u8> = found.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, vec![b'C', b'Z']);
    assert_eq!(
        trailing_messages(&end[..end.len() - 1], backend_kind),
        None,
        "cut short"
    );
    assert_eq!(
        trailing_messages(b"no reply ends like this", backend_kind),
        None
    );
}

#[test]
fn session_opened_before_attach_is_read_from_its_first_query() {
    let mut events = Vec::new();
    let query = msg(b'Q', &cstr("UPDATE stock SET n = n - 1"));
    assert!(looks_like_session(&query, query.len(), true));
    let mut c = PgConversation::resumed(None);
    c.push(chunk(Flow::Request, 1, &query), &mut events);
    c.push(
        chunk(
            Flow::Response,
            2,
            &concat(&[msg(b'C', &cstr("UPDATE 4")), ready()]),
        ),
        &mut events,
    );
    assert_eq!(done(&events)[0].rows, Some(4));
    assert_eq!(done(&events)[0].database, None);
}

#[test]
fn http_and_tls_do_not_look_like_postgres() {
    for bytes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"HTTP/1.1 200 OK\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",
        b"*1\r\n$4\r\nPING\r\n",
        b"SET key value\r\n",
        b"Q",
        b"",
    ] {
        assert!(!opens_session(bytes), "{bytes:?}");
        assert!(!looks_like_session(bytes, bytes.len(), true), "{bytes:?}");
        assert!(!looks_like_session(bytes, bytes.len(), false), "{bytes:?}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = [
        startup("db"),
        msg(b'Q', &cstr("SELECT 1")),
        row(),
        ready(),
        msg(b'C', &cstr("SELECT 1")),
        msg(b'E', b"C42P01\0\0"),
    ];
    for _ in 0..2_000 {
        let mut c = if next() % 2 == 0 {
            PgConversation::new()
        } else {
            PgConversation::resumed(None)
        };
        let mut events = Vec::new();
        for i in 0..(next() % 20) {
            let mut bytes: Vec<u8> = if next() % 3 == 0 {
                (0..next() % 40).map(|_| next() as u8).collect()
            } else {
                pieces[(next() % pieces.len() as u64) as usize].clone()
            };
            if !bytes.is_empty() && next() % 5 == 0 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let captured = (next() % (bytes.len() as u64 + 1)) as usize;
            let flow = if next() % 2 == 0 {
                Flow::Request
            } else {
                Flow::Response
            };
            c.push(
                Chunk {
                    flow,
                    enter_ns: i,
                    exit_ns: i,
                    captured: &bytes[..captured],
                    total_len: bytes.len() + (next() % 3) as usize * 100,
                    tail: &[],
                },
                &mut events,
            );
        }
        c.close(&mut events);
    }
}

#[test]
fn bound_values_identify_an_execution_without_being_kept() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    // Bind of one text parameter: formats (0), 1 value of 2 bytes, result formats (0).
    let bind = |value: &[u8; 2]| {
        let mut values = vec![0, 0, 0, 1, 0, 0, 0, 2];
        values.extend_from_slice(value);
        values.extend_from_slice(&[0, 0]);
        msg(b'B', &concat(&[cstr(""), cstr("s1"), values]))
    };
    let parse = msg(
        b'P',
        &concat(&[
            cstr("s1"),
            cstr("SELECT * FROM users WHERE id = $1"),
            vec![0, 0],
        ]),
    );
    let execute = msg(b'E', &concat(&[cstr(""), vec![0, 0, 0, 0]]));
    let batch = concat(&[
        parse,
        bind(b"42"),
        execute.clone(),
        bind(b"42"),
        execute.clone(),
        bind(b"43"),
        execute,
        msg(b'S', b""),
    ]);
    c.push(chunk(Flow::Request, 10, &batch), &mut events);
    let one = concat(&[msg(b'2', b""), row(), msg(b'C', &cstr("SELECT 1"))]);
    let reply = concat(&[msg(b'1', b""), one.clone(), one.clone(), one, ready()]);
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|q| q.values.is_some()));
    assert_eq!(all[0].values, all[1].values, "the same value twice");
    assert_ne!(all[1].values, all[2].values, "another value");
    assert!(
        all.iter()
            .all(|q| q.text == "SELECT * FROM users WHERE id = $1")
    );
}

#[test]
fn a_simple_query_has_no_bound_values() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    c.push(
        chunk(Flow::Request, 10, &msg(b'Q', &cstr("SELECT 1"))),
        &mut events,
    );
    let reply = concat(&[row(), msg(b'C', &cstr("SELECT 1")), ready()]);
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    assert_eq!(done(&events)[0].values, None);
}

/// Bind of `statement` with one text value, as a warm pool sends it.
fn bind_named(statement: &str, value: &[u8]) -> Vec<u8> {
    let mut values = vec![0, 0, 0, 1];
    values.extend_from_slice(&(value.len() as u32).to_be_bytes());
    values.extend_from_slice(value);
    values.extend_from_slice(&[0, 0]);
    msg(b'B', &concat(&[cstr(""), cstr(statement), values]))
}

fn execute_unnamed() -> Vec<u8> {
    msg(b'E', &concat(&[cstr(""), vec![0, 0, 0, 0]]))
}

#[test]
fn a_warm_session_is_recognised_from_whatever_it_sends_next() {
    // asyncpg and pgx with statements prepared before attach: Bind, Execute, Sync only.
    let batch = concat(&[
        bind_named("__asyncpg_stmt_1__", b"7"),
        execute_unnamed(),
        msg(b'S', b""),
    ]);
    assert!(looks_like_session(&batch, batch.len(), true));
    // node-postgres: Parse/Bind/Describe/Execute/Sync in one write.
    let node = concat(&[
        msg(
            b'P',
            &concat(&[cstr(""), cstr("SELECT $1::int"), vec![0, 0]]),
        ),
        bind_named("", b"1"),
        msg(b'D', &concat(&[vec![b'P'], cstr("")])),
        execute_unnamed(),
        msg(b'S', b""),
    ]);
    assert!(looks_like_session(&node, node.len(), true));
    // A write cut by the capture: judged on the messages seen.
    assert!(looks_like_session(&node[..12], node.len(), true));
    // The server's reply to a query sent before attach.
    let reply = concat(&[msg(b'2', b""), row(), msg(b'C', &cstr("SELECT 1")), ready()]);
    assert!(looks_like_session(&reply, reply.len(), false));
    assert!(
        !looks_like_session(&reply, reply.len(), true),
        "a reply is not what a client sends"
    );
    // A client's write whose messages do not tile it is something else.
    let mut ragged = batch.clone();
    ragged.push(b'x');
    assert!(!looks_like_session(&ragged, ragged.len(), true));
    // A start-up message is an opening, not a resumed session.
    assert!(opens_session(&startup("shop")));
}

#[test]
fn a_statement_prepared_before_attach_runs_under_its_name() {
    let mut events = Vec::new();
    let mut c = PgConversation::resumed(Some("shop".into()));
    let batch = concat(&[
        bind_named("stmtcache_9f86d081884c7d659a2f", b"7"),
        execute_unnamed(),
        msg(b'S', b""),
    ]);
    c.push(chunk(Flow::Request, 10, &batch), &mut events);
    let reply = concat(&[msg(b'2', b""), row(), msg(b'C', &cstr("SELECT 1")), ready()]);
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].statement_name.as_deref(),
        Some("stmtcache_9f86d081884c7d659a2f")
    );
    assert!(all[0].text.is_empty());
    assert!(!all[0].text_truncated, "unseen is not cut");
    assert!(all[0].values.is_some());
    assert_eq!(all[0].database.as_deref(), Some("shop"));

    // Re-prepared on the same session: its text is learnt.
    let reparse = concat(&[
        msg(
            b'P',
            &concat(&[
                cstr("stmtcache_9f86d081884c7d659a2f"),
                cstr("SELECT id FROM orders WHERE user_id = $1"),
                vec![0, 0],
            ]),
        ),
        bind_named("stmtcache_9f86d081884c7d659a2f", b"8"),
        execute_unnamed(),
        msg(b'S', b""),
    ]);
    c.push(chunk(Flow::Request, 30, &reparse), &mut events);
    let reply = concat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        row(),
        msg(b'C', &cstr("SELECT 1")),
        ready(),
    ]);
    c.push(chunk(Flow::Response, 40, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].text, "SELECT id FROM orders WHERE user_id = $1");
    assert_eq!(all[1].statement_name, None);
}

#[test]
fn a_parse_cut_by_the_capture_marks_its_executions_truncated() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let long = format!("SELECT {} FROM t", "x, ".repeat(200));
    let parse = msg(b'P', &concat(&[cstr("s9"), cstr(&long), vec![0, 0]]));
    // Only the first 64 bytes of the Parse's write were captured; Bind/Execute/Sync follow.
    let cut = Chunk {
        flow: Flow::Request,
        enter_ns: 10,
        exit_ns: 11,
        captured: &parse[..64],
        total_len: parse.len(),
        tail: &[],
    };
    c.push(cut, &mut events);
    let rest = concat(&[bind_named("s9", b"1"), execute_unnamed(), msg(b'S', b"")]);
    c.push(chunk(Flow::Request, 12, &rest), &mut events);
    let reply = concat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', &cstr("SELECT 0")),
        ready(),
    ]);
    c.push(chunk(Flow::Response, 20, &reply), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 1, "{events:?}");
    assert!(all[0].text_truncated);
}

fn abandoned(events: &[PgEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            PgEvent::Abandoned { seq } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// A simple query's answer: `n` rows, then ReadyForQuery.
fn simple_answer(n: usize) -> Vec<u8> {
    let mut out = msg(b'T', b"\x00\x01x\0");
    for _ in 0..n {
        out.extend(row());
    }
    out.extend(msg(b'C', &cstr(&format!("SELECT {n}"))));
    out.extend(ready());
    out
}

/// Query `i` of a loop (sent at `100 * i`, answered with `i + 1` rows at `100 * i + 50`), as
/// `(request, answer)` chunks' bytes.
fn simple_exchange(i: u64) -> (Vec<u8>, Vec<u8>) {
    (
        msg(b'Q', &cstr(&format!("SELECT * FROM t LIMIT {}", i + 1))),
        simple_answer(i as usize + 1),
    )
}

/// Each finished query ended at its own answer, with its own rows.
fn assert_paired(all: &[&QueryDone]) {
    for q in all {
        assert_eq!(q.end.enter_ns, q.start.enter_ns + 50, "{q:?}");
        assert_eq!(q.rows, Some((q.start.enter_ns - 1000) / 100 + 1), "{q:?}");
    }
}

#[test]
fn a_lost_answer_to_a_simple_query_costs_that_query_only() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    for i in 0..6 {
        let (request, answer) = simple_exchange(i);
        let at = 1000 + 100 * i;
        c.push(chunk(Flow::Request, at, &request), &mut events);
        // The event with query 2's answer never reached loupe.
        if i != 2 {
            c.push(chunk(Flow::Response, at + 50, &answer), &mut events);
        }
    }
    let all = done(&events);
    let seqs: Vec<u64> = all.iter().map(|q| q.seq).collect();
    assert_eq!(seqs, [0, 1, 3, 4, 5], "{events:?}");
    assert_paired(&all);
    assert_eq!(abandoned(&events), [2], "the lost one is given up, counted");
    assert_eq!(c.stats().answers_lost, 1);
}

#[test]
fn a_lost_answer_to_an_extended_batch_costs_that_batch_only() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let parse = msg(
        b'P',
        &concat(&[cstr("s1"), cstr("SELECT * FROM t LIMIT $1"), vec![0, 0]]),
    );
    for i in 0..6u64 {
        let at = 1000 + 100 * i;
        // Prepared once, then bound and executed in a loop, a Sync each.
        let mut request = if i == 0 { parse.clone() } else { Vec::new() };
        request.extend(concat(&[
            bind_named("s1", format!("{}", i + 1).as_bytes()),
            execute_unnamed(),
            msg(b'S', b""),
        ]));
        c.push(chunk(Flow::Request, at, &request), &mut events);
        let mut answer = if i == 0 { msg(b'1', b"") } else { Vec::new() };
        answer.extend(msg(b'2', b""));
        for _ in 0..=i {
            answer.extend(row());
        }
        answer.extend(concat(&[
            msg(b'C', &cstr(&format!("SELECT {}", i + 1))),
            ready(),
        ]));
        if i != 1 {
            c.push(chunk(Flow::Response, at + 50, &answer), &mut events);
        }
    }
    let all = done(&events);
    let seqs: Vec<u64> = all.iter().map(|q| q.seq).collect();
    assert_eq!(seqs, [0, 2, 3, 4, 5], "{events:?}");
    assert_paired(&all);
    assert_eq!(abandoned(&events), [1]);
}

#[test]
fn a_lost_query_costs_its_answer_only() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    for i in 0..5 {
        let (request, answer) = simple_exchange(i);
        let at = 1000 + 100 * i;
        // The event with query 1 never reached loupe: its answer answers nothing seen.
        if i != 1 {
            c.push(chunk(Flow::Request, at, &request), &mut events);
        }
        c.push(chunk(Flow::Response, at + 50, &answer), &mut events);
    }
    let all = done(&events);
    assert_eq!(all.len(), 4, "{events:?}");
    assert_paired(&all);
    assert!(
        events.contains(&PgEvent::Lost(Loss::Unseen(1))),
        "{events:?}"
    );
    assert!(abandoned(&events).is_empty());
}

#[test]
fn a_lost_answer_between_simple_and_extended_queries_costs_one_query() {
    // BEGIN as a simple query, then an extended one, then COMMIT; the INSERT's answer is lost.
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let extended = |sql: &str| {
        concat(&[
            msg(b'P', &concat(&[cstr(""), cstr(sql), vec![0, 0]])),
            bind_named("", b"1"),
            execute_unnamed(),
            msg(b'S', b""),
        ])
    };
    let ext_answer = |tag: &str| {
        concat(&[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'C', &cstr(tag)),
            ready(),
        ])
    };
    let simple_tag = |tag: &str| concat(&[msg(b'C', &cstr(tag)), ready()]);
    let mut at = 1000;
    for round in 0..3 {
        let steps = [
            (msg(b'Q', &cstr("BEGIN")), simple_tag("BEGIN")),
            (
                extended("INSERT INTO t VALUES ($1)"),
                ext_answer("INSERT 0 1"),
            ),
            (extended("UPDATE t SET n = $1"), ext_answer("UPDATE 7")),
            (msg(b'Q', &cstr("COMMIT")), simple_tag("COMMIT")),
        ];
        for (step, (request, answer)) in steps.into_iter().enumerate() {
            c.push(chunk(Flow::Request, at, &request), &mut events);
            if !(round == 0 && step == 1) {
                c.push(chunk(Flow::Response, at + 50, &answer), &mut events);
            }
            at += 100;
        }
    }
    let all = done(&events);
    assert_eq!(all.len(), 11, "one of twelve: {events:?}");
    for q in &all {
        assert_eq!(q.end.enter_ns, q.start.enter_ns + 50, "{q:?}");
        let rows = match q.text.as_str() {
            "INSERT INTO t VALUES ($1)" => Some(1),
            "UPDATE t SET n = $1" => Some(7),
            _ => None,
        };
        assert_eq!(q.rows, rows, "{q:?}");
    }
    assert_eq!(abandoned(&events), [1]);
}

#[test]
fn a_pipelining_client_is_answered_in_order() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let batch = |n: &str| {
        concat(&[
            bind_named("s1", n.as_bytes()),
            execute_unnamed(),
            msg(b'S', b""),
        ])
    };
    let answer = |rows: usize| {
        let mut out = msg(b'2', b"");
        for _ in 0..rows {
            out.extend(row());
        }
        out.extend(concat(&[
            msg(b'C', &cstr(&format!("SELECT {rows}"))),
            ready(),
        ]));
        out
    };
    // Three batches in one write, their answers read one by one.
    let request = concat(&[batch("1"), batch("2"), batch("3")]);
    c.push(chunk(Flow::Request, 10, &request), &mut events);
    for (i, rows) in [1, 2, 3].into_iter().enumerate() {
        c.push(
            chunk(Flow::Response, 20 + 10 * i as u64, &answer(rows)),
            &mut events,
        );
    }
    // Then two batches written apart, answered in one read.
    c.push(chunk(Flow::Request, 100, &batch("4")), &mut events);
    c.push(chunk(Flow::Request, 110, &batch("5")), &mut events);
    c.push(
        chunk(Flow::Response, 120, &concat(&[answer(4), answer(5)])),
        &mut events,
    );
    let all = done(&events);
    let rows: Vec<Option<u64>> = all.iter().map(|q| q.rows).collect();
    assert_eq!(
        rows,
        [Some(1), Some(2), Some(3), Some(4), Some(5)],
        "{events:?}"
    );
    assert!(abandoned(&events).is_empty());
}

#[test]
fn queries_and_sync_points_waiting_are_bounded_and_the_dropped_reported() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    // A client whose answers are never seen: executions without a Sync...
    let executions = pairing::MAX_WAITING + 10;
    let batch = concat(&[bind_named("s1", b"1"), execute_unnamed()]);
    for i in 0..executions {
        c.push(chunk(Flow::Request, 10 + i as u64, &batch), &mut events);
    }
    assert_eq!(abandoned(&events), (0..10).collect::<Vec<u64>>());
    assert_eq!(c.stats().overflowed, 10);
    // ...and simple queries, each a sync point.
    let mut events = Vec::new();
    let mut c = session(&mut events);
    for i in 0..pairing::MAX_MARKERS + 5 {
        c.push(
            chunk(Flow::Request, 10 + i as u64, &msg(b'Q', &cstr("SELECT 1"))),
            &mut events,
        );
    }
    assert_eq!(abandoned(&events), [0, 1, 2, 3, 4]);
    assert_eq!(c.stats().overflowed, 5);
    // The connection still pairs: the newest query's answer ends it.
    events.clear();
    c.push(chunk(Flow::Response, 9000, &simple_answer(1)), &mut events);
    assert_eq!(done(&events).len(), 1, "{events:?}");
}

#[test]
fn a_header_that_is_not_postgres_is_a_parse_error() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    c.push(
        chunk(Flow::Request, 10, &msg(b'Q', &cstr("SELECT 1"))),
        &mut events,
    );
    // A type byte no server sends.
    c.push(
        chunk(Flow::Response, 20, b"\x7f\x00\x00\x00\x04"),
        &mut events,
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == PgEvent::Lost(Loss::ParseError))
            .count(),
        1,
        "{events:?}"
    );
    // Bytes past the capture are not a parse error.
    let reply = simple_answer(200);
    c.push(
        Chunk {
            flow: Flow::Response,
            enter_ns: 30,
            exit_ns: 31,
            captured: &reply[..40],
            total_len: reply.len(),
            tail: &[],
        },
        &mut events,
    );
    assert_eq!(c.stats().malformed, 1);
    assert_eq!(c.stats().lost_framing, 2);
}

#[test]
fn a_statement_in_use_keeps_its_text_past_the_cap_on_prepared_statements() {
    // A client that prepares a new statement for every query and never closes one (an ORM
    // building its SQL), and runs one statement between them all along.
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let prepare = |name: &str, sql: &str| msg(b'P', &concat(&[cstr(name), cstr(sql), vec![0, 0]]));
    let run = |name: &str| concat(&[bind_named(name, b"1"), execute_unnamed(), msg(b'S', b"")]);
    let answer = |parsed: bool| {
        let parse = if parsed { msg(b'1', b"") } else { Vec::new() };
        concat(&[parse, msg(b'2', b""), msg(b'C', &cstr("SELECT 0")), ready()])
    };
    let hot = "SELECT * FROM users WHERE id = $1";
    let mut at = 10;
    let mut exchange =
        |c: &mut PgConversation, events: &mut Vec<PgEvent>, request: &[u8], parsed| {
            c.push(chunk(Flow::Request, at, request), events);
            c.push(chunk(Flow::Response, at + 5, &answer(parsed)), events);
            at += 10;
        };
    exchange(
        &mut c,
        &mut events,
        &concat(&[prepare("hot", hot), run("hot")]),
        true,
    );
    for n in 0..600 {
        let name = format!("s{n}");
        let sql = format!("SELECT * FROM t{n} WHERE a = $1");
        exchange(
            &mut c,
            &mut events,
            &concat(&[prepare(&name, &sql), run(&name)]),
            true,
        );
        exchange(&mut c, &mut events, &run("hot"), false);
    }
    let all = done(&events);
    assert_eq!(all.len(), 1201);
    assert!(
        all.iter()
            .all(|q| !q.text.is_empty() && q.statement_name.is_none()),
        "every execution has its statement's text: {:?}",
        all.iter().find(|q| q.text.is_empty())
    );
    assert!(all.iter().filter(|q| q.text == hot).count() == 601);
}

#[test]
fn a_batch_whose_sync_was_past_the_capture_ends_at_its_answer() {
    let mut events = Vec::new();
    let mut c = session(&mut events);
    let execute = |sql: &str| {
        concat(&[
            msg(b'P', &concat(&[cstr(""), cstr(sql), vec![0, 0]])),
            bind_named("", b"1"),
            execute_unnamed(),
        ])
    };
    let first = concat(&[
        execute("INSERT INTO a VALUES ($1)"),
        execute("INSERT INTO b VALUES ($1)"),
    ]);
    let batch = concat(&[
        first.clone(),
        execute("INSERT INTO c VALUES ($1)"),
        msg(b'S', b""),
    ]);
    // The capture ends inside the third Parse's header: its Execute and the Sync are unseen.
    let cut = Chunk {
        flow: Flow::Request,
        enter_ns: 10,
        exit_ns: 11,
        captured: &batch[..first.len() + 3],
        total_len: batch.len(),
        tail: &[],
    };
    c.push(cut, &mut events);
    let one = concat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', &cstr("INSERT 0 1")),
    ]);
    let answer = concat(&[one.clone(), one.clone(), one, ready()]);
    c.push(chunk(Flow::Response, 20, &answer), &mut events);
    let all = done(&events);
    assert_eq!(all.len(), 2, "{events:?}");
    assert!(all.iter().all(|q| q.rows == Some(1)));
    // And the connection goes on.
    c.push(
        chunk(Flow::Request, 30, &msg(b'Q', &cstr("SELECT 1"))),
        &mut events,
    );
    c.push(chunk(Flow::Response, 40, &simple_answer(1)), &mut events);
    assert_eq!(done(&events).len(), 3, "{events:?}");
}
