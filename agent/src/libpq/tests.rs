//! The tracker on call sequences recorded from real clients' use of libpq: psql and psycopg2
//! (PQexec, whose insides are PQsendQuery and PQgetResult), psycopg 3 and pgbench (PQsendQuery*
//! then PQgetResult until NULL), prepared statements, errors and lost returns.

use loupe_common::{LibpqFunction as F, exec_status};

use super::{LibpqEvent, LibpqQuery, LibpqTracker};
use crate::events::{LibpqCallRecord, LibpqResultRecord, PgResultInfo};

const PID: u32 = 100;
const CONN: u64 = 0xAA00;

fn call(tid: u32, ts: u64, function: F, text: Option<&str>, name: Option<&str>) -> LibpqCallRecord {
    LibpqCallRecord {
        pid: PID,
        tid,
        ts_ns: ts,
        pg_conn: CONN,
        function,
        text: text.map(str::to_owned),
        text_truncated: false,
        name: name.map(str::to_owned),
    }
}

fn ret(tid: u32, ts: u64, function: F, result: Option<PgResultInfo>) -> LibpqResultRecord {
    LibpqResultRecord {
        pid: PID,
        tid,
        ts_ns: ts,
        pg_conn: if function == F::GetResult { CONN } else { 0 },
        function,
        result,
    }
}

fn rows(n: u32) -> Option<PgResultInfo> {
    Some(PgResultInfo {
        status: exec_status::TUPLES_OK,
        ntuples: n,
        sqlstate: None,
        cmd_status: format!("SELECT {n}"),
    })
}

fn command(tag: &str) -> Option<PgResultInfo> {
    Some(PgResultInfo {
        status: exec_status::COMMAND_OK,
        ntuples: 0,
        sqlstate: None,
        cmd_status: tag.to_owned(),
    })
}

fn error(code: &str) -> Option<PgResultInfo> {
    Some(PgResultInfo {
        status: exec_status::FATAL_ERROR,
        ntuples: 0,
        sqlstate: Some(code.to_owned()),
        cmd_status: String::new(),
    })
}

enum Step {
    Call(LibpqCallRecord),
    Ret(LibpqResultRecord),
}

fn run(steps: Vec<Step>) -> (Vec<LibpqEvent>, LibpqTracker) {
    let mut tracker = LibpqTracker::new();
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Call(c) => tracker.on_call(c, &mut out),
            Step::Ret(r) => tracker.on_result(r, &mut out),
        }
    }
    (out, tracker)
}

fn done(events: &[LibpqEvent]) -> Vec<&LibpqQuery> {
    events
        .iter()
        .filter_map(|e| match e {
            LibpqEvent::Done(q) => Some(q),
            _ => None,
        })
        .collect()
}

#[test]
fn pqexec_is_one_query_though_it_sends_and_gets_results_inside() {
    use Step::*;
    let (events, _) = run(vec![
        Call(call(1, 10, F::Exec, Some("SELECT 1"), None)),
        Call(call(1, 11, F::SendQuery, Some("SELECT 1"), None)),
        Ret(ret(1, 20, F::GetResult, rows(1))),
        Ret(ret(1, 21, F::GetResult, None)),
        Ret(ret(1, 22, F::Exec, rows(1))),
    ]);
    assert_eq!(
        events[0],
        LibpqEvent::Started {
            id: 1,
            pid: PID,
            tid: 1
        }
    );
    let queries = done(&events);
    assert_eq!(queries.len(), 1, "{events:?}");
    let q = queries[0];
    assert_eq!(q.text.as_deref(), Some("SELECT 1"));
    assert_eq!((q.start_ns, q.end_ns, q.rows), (10, 22, Some(1)));
    assert!(!q.failed);
    assert_eq!(events.len(), 2);
}

#[test]
fn send_then_get_result_until_null_is_one_query_ending_at_its_last_result() {
    use Step::*;
    let (events, tracker) = run(vec![
        Call(call(1, 10, F::SendQueryParams, Some("SELECT $1"), None)),
        Ret(ret(1, 30, F::GetResult, rows(3))),
        Ret(ret(1, 31, F::GetResult, None)),
        Call(call(1, 40, F::SendQuery, Some("UPDATE t SET a = 1"), None)),
        Ret(ret(1, 50, F::GetResult, command("UPDATE 7"))),
        Ret(ret(1, 51, F::GetResult, None)),
    ]);
    let queries = done(&events);
    assert_eq!(queries.len(), 2);
    assert_eq!((queries[0].start_ns, queries[0].end_ns), (10, 30));
    assert_eq!(queries[0].rows, Some(3));
    assert_eq!(queries[1].rows, Some(7));
    assert_eq!(queries[1].tag.as_deref(), Some("UPDATE 7"));
    assert_eq!(tracker.stats().abandoned, 0);
}

#[test]
fn results_on_another_thread_still_finish_the_connection_s_query() {
    use Step::*;
    let (events, _) = run(vec![
        Call(call(1, 10, F::SendQuery, Some("SELECT 1"), None)),
        Ret(ret(2, 30, F::GetResult, rows(1))),
        Ret(ret(2, 31, F::GetResult, None)),
    ]);
    let queries = done(&events);
    assert_eq!(queries.len(), 1);
    assert_eq!(
        queries[0].tid, 1,
        "the query belongs to the thread that sent it"
    );
}

#[test]
fn an_error_result_fails_the_query_with_its_sqlstate() {
    use Step::*;
    let (events, _) = run(vec![
        Call(call(1, 10, F::Exec, Some("SELECT 1/0"), None)),
        Ret(ret(1, 20, F::Exec, error("22012"))),
        Call(call(1, 30, F::SendQuery, Some("SELEC 1"), None)),
        Ret(ret(1, 40, F::GetResult, error("42601"))),
        Ret(ret(1, 41, F::GetResult, None)),
    ]);
    let queries = done(&events);
    assert_eq!(queries.len(), 2);
    assert!(queries[0].failed && queries[1].failed);
    assert_eq!(queries[0].sqlstate.as_deref(), Some("22012"));
    assert_eq!(queries[1].sqlstate.as_deref(), Some("42601"));
}

#[test]
fn prepared_statements_run_under_the_text_they_were_prepared_with() {
    use Step::*;
    let (events, _) = run(vec![
        Call(call(
            1,
            1,
            F::Prepare,
            Some("SELECT * FROM t WHERE id = $1"),
            Some("q1"),
        )),
        Call(call(
            1,
            2,
            F::SendPrepare,
            Some("SELECT * FROM t WHERE id = $1"),
            Some("q1"),
        )),
        Ret(ret(1, 3, F::GetResult, command(""))),
        Ret(ret(1, 4, F::GetResult, None)),
        Ret(ret(1, 5, F::Prepare, command(""))),
        Call(call(1, 10, F::ExecPrepared, None, Some("q1"))),
        Ret(ret(1, 20, F::ExecPrepared, rows(1))),
        Call(call(1, 30, F::SendPrepare, Some("DELETE FROM t"), Some(""))),
        Ret(ret(1, 31, F::GetResult, command(""))),
        Ret(ret(1, 32, F::GetResult, None)),
        Call(call(1, 40, F::SendQueryPrepared, None, Some(""))),
        Ret(ret(1, 50, F::GetResult, command("DELETE 4"))),
        Ret(ret(1, 51, F::GetResult, None)),
        Call(call(1, 60, F::ExecPrepared, None, Some("unseen"))),
        Ret(ret(1, 70, F::ExecPrepared, rows(0))),
    ]);
    let queries = done(&events);
    let texts: Vec<_> = queries.iter().map(|q| q.text.as_deref()).collect();
    assert_eq!(
        texts,
        [
            Some("SELECT * FROM t WHERE id = $1"),
            Some("DELETE FROM t"),
            None
        ],
        "preparing is not a query; executing is"
    );
    assert_eq!(queries[1].rows, Some(4));
    assert_eq!(queries[2].statement_name.as_deref(), Some("unseen"));
}

#[test]
fn a_lost_return_abandons_the_call_instead_of_swallowing_the_thread() {
    use Step::*;
    let (events, tracker) = run(vec![
        Call(call(1, 10, F::Exec, Some("SELECT 1"), None)),
        // its return was lost
        Call(call(1, 30, F::Exec, Some("SELECT 2"), None)),
        Ret(ret(1, 40, F::Exec, rows(1))),
    ]);
    assert!(events.contains(&LibpqEvent::Abandoned { id: 1 }));
    let queries = done(&events);
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0].text.as_deref(), Some("SELECT 2"));
    assert_eq!(tracker.stats().abandoned, 1);
}

#[test]
fn a_send_after_an_unfinished_one_closes_it_by_what_it_got() {
    use Step::*;
    let (events, tracker) = run(vec![
        Call(call(1, 10, F::SendQuery, Some("SELECT 1"), None)),
        Ret(ret(1, 20, F::GetResult, rows(1))),
        // the application never asked for the final NULL
        Call(call(1, 30, F::SendQuery, Some("SELECT 2"), None)),
        // this one's send failed: no results at all
        Call(call(1, 40, F::SendQuery, Some("SELECT 3"), None)),
        Ret(ret(1, 50, F::GetResult, rows(1))),
        Ret(ret(1, 51, F::GetResult, None)),
    ]);
    let texts: Vec<_> = done(&events)
        .iter()
        .map(|q| q.text.clone().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["SELECT 1", "SELECT 3"]);
    assert_eq!(tracker.stats().abandoned, 1);
}

#[test]
fn events_before_attach_and_stray_results_are_ignored() {
    use Step::*;
    let (events, _) = run(vec![
        Ret(ret(1, 5, F::Exec, rows(1))),
        Ret(ret(1, 6, F::GetResult, None)),
        Ret(ret(1, 7, F::GetResult, rows(1))),
    ]);
    assert!(events.is_empty());
}

#[test]
fn an_exited_process_abandons_its_open_queries() {
    use Step::*;
    let (_, mut tracker) = run(vec![
        Call(call(1, 10, F::Exec, Some("SELECT pg_sleep(10)"), None)),
        Call(call(2, 10, F::SendQuery, Some("SELECT 1"), None)),
    ]);
    assert_eq!(tracker.pids(), [PID]);
    let mut out = Vec::new();
    tracker.forget_process(PID, &mut out);
    assert!(tracker.pids().is_empty());
    assert_eq!(out.len(), 2);
    assert_eq!(tracker.stats().abandoned, 2);
}

/// A query reported: span id, text, rows, connection.
type Reported = (
    u64,
    Option<String>,
    Option<u64>,
    Option<super::source::ConnKey>,
);

/// The stitcher as the source sees it, recorded: what was reported, with which ids.
#[derive(Default)]
struct Host {
    next_span: u64,
    /// (span id, text, rows, connection) per query reported.
    reported: Vec<Reported>,
    abandoned: u64,
}

impl super::QueryHost for Host {
    fn call_ids(&mut self, _pid: u32, _tid: u32) -> crate::spans::SpanIds {
        self.next_span += 1;
        crate::spans::SpanIds {
            trace_id: 1,
            span_id: self.next_span,
            parent_span_id: None,
            unnested: None,
        }
    }

    fn query_done(
        &mut self,
        facts: &crate::spans::db::QueryFacts<'_>,
        conn: Option<super::source::ConnKey>,
        ids: crate::spans::SpanIds,
        _actor: crate::spans::Actor,
    ) {
        let text = facts.text.map(str::to_owned);
        self.reported.push((ids.span_id, text, facts.rows, conn));
    }

    fn query_abandoned(&mut self) {
        self.abandoned += 1;
    }
}

fn wire_query(text: &str, rows: u64) -> crate::protocols::postgres::QueryDone {
    crate::protocols::postgres::QueryDone {
        seq: 0,
        text: text.to_owned(),
        text_truncated: false,
        statement_name: None,
        start: Default::default(),
        end: Default::default(),
        rows: Some(rows),
        sqlstate: None,
        database: None,
        values: None,
    }
}

#[test]
fn a_query_both_sources_saw_is_one_span_with_libpqs_ids_over_the_wires_connection() {
    let mut source = super::LibpqSource::new(16);
    let mut host = Host::default();
    let key = (PID, 7);
    source.on_call(call(1, 10, F::Exec, Some("SELECT 1"), None), &mut host);
    source.moved_bytes(1, key);
    // The wire's next query on that thread is libpq's: it shares its ids.
    let (id, ids) = source.claim(key, 1).expect("libpq's query is claimed");
    assert_eq!(ids.span_id, 1);
    assert!(source.claim(key, 1).is_none(), "claimed once");
    source.wire_done(id, wire_query("SELECT 1", 1), key);
    assert_eq!(source.open_queries().count(), 1);
    source.on_result(ret(1, 22, F::Exec, rows(1)), &mut host);
    assert_eq!(
        host.reported,
        vec![(1, Some("SELECT 1".to_owned()), Some(1), Some(key))]
    );
    assert_eq!(source.open_queries().count(), 0);
}

#[test]
fn a_query_only_libpq_read_takes_the_connection_its_thread_last_used() {
    let mut source = super::LibpqSource::new(16);
    let mut host = Host::default();
    source.moved_bytes(1, (PID, 9));
    source.on_call(call(1, 10, F::Exec, Some("SELECT 2"), None), &mut host);
    source.on_result(ret(1, 22, F::Exec, rows(2)), &mut host);
    assert_eq!(
        host.reported,
        vec![(1, Some("SELECT 2".to_owned()), Some(2), Some((PID, 9)))]
    );
}

#[test]
fn a_query_whose_libpq_end_went_unseen_is_the_wires_or_counted() {
    let mut source = super::LibpqSource::new(16);
    let mut host = Host::default();
    let key = (PID, 7);
    // Thread 1's query the wire saw whole; thread 2's nobody finished.
    source.on_call(call(1, 10, F::Exec, Some("SELECT 3"), None), &mut host);
    source.on_call(call(2, 11, F::Exec, Some("SELECT 4"), None), &mut host);
    let (id, _) = source.claim(key, 1).expect("claimed");
    source.wire_done(id, wire_query("SELECT 3", 3), key);
    source.forget_exited(|_| false, &mut host);
    assert_eq!(
        host.reported,
        vec![(1, Some("SELECT 3".to_owned()), Some(3), Some(key))]
    );
    assert_eq!(host.abandoned, 1);
    assert_eq!(source.open_queries().count(), 0);
}
