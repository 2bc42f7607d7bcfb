//! The state machine behind [`LibpqTracker`].

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use loupe_common::{LibpqFunction, exec_status};

use crate::{
    events::{LibpqCallRecord, LibpqResultRecord, PgResultInfo},
    protocols::postgres::tag_rows,
};

/// Open calls, queued queries and remembered statements, each at most.
const MAX_ENTRIES: usize = 16_384;
/// Queries queued on one connection at most (pipeline mode sends several).
const MAX_QUEUED: usize = 64;

/// A query as libpq saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibpqQuery {
    /// Tracker-assigned, unique: pairs `Started` with `Done`.
    pub id: u64,
    pub pid: u32,
    pub tid: u32,
    /// The `PGconn *`.
    pub pg_conn: u64,
    /// The statement (literals included: normalize before exporting); None for a prepared
    /// statement whose preparation loupe did not see.
    pub text: Option<String>,
    pub text_truncated: bool,
    /// The prepared statement executed, for PQexecPrepared and PQsendQueryPrepared.
    pub statement_name: Option<String>,
    /// Function entry, ns since boot.
    pub start_ns: u64,
    /// Return of the call that delivered the last result, ns since boot.
    pub end_ns: u64,
    /// Rows returned (SELECT) or affected (the command tag's count).
    pub rows: Option<u64>,
    /// The last command tag.
    pub tag: Option<String>,
    /// An error result came back (with its SQLSTATE when the result had one).
    pub failed: bool,
    pub sqlstate: Option<String>,
}

/// What a call or return started or finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LibpqEvent {
    /// A query was sent by `tid` at `ts_ns`: it gets span ids and a parent now.
    Started {
        id: u64,
        pid: u32,
        tid: u32,
    },
    Done(LibpqQuery),
    /// A started query that will never finish (its return went unseen).
    Abandoned {
        id: u64,
    },
}

/// Counters of what did not pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibpqStats {
    pub abandoned: u64,
    /// Events dropped because a table was full.
    pub overflow: u64,
}

/// A synchronous call open on a thread.
struct SyncCall {
    function: LibpqFunction,
    /// None for PQprepare, which runs nothing.
    query: Option<LibpqQuery>,
}

/// A query sent with a PQsend* function, waiting for PQgetResult.
struct Queued {
    /// None for PQsendPrepare: its result is consumed, no query is reported.
    query: Option<LibpqQuery>,
    got_result: bool,
}

#[derive(Default)]
pub struct LibpqTracker {
    threads: HashMap<(u32, u32), SyncCall>,
    conns: HashMap<(u32, u64), VecDeque<Queued>>,
    /// (pid, PGconn, statement name) -> (text, truncated).
    statements: HashMap<(u32, u64, String), (String, bool)>,
    next_id: u64,
    stats: LibpqStats,
}

impl LibpqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> LibpqStats {
        self.stats
    }

    /// Processes with a call open or a query queued.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .threads
            .keys()
            .map(|&(pid, _)| pid)
            .chain(self.conns.keys().map(|&(pid, _)| pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Forgets everything about a process that exited.
    pub fn forget_process(&mut self, pid: u32, out: &mut Vec<LibpqEvent>) {
        let mut abandoned = Vec::new();
        self.threads.retain(|&(p, _), call| {
            if p == pid
                && let Some(query) = &call.query
            {
                abandoned.push(query.id);
            }
            p != pid
        });
        self.conns.retain(|&(p, _), queue| {
            if p == pid {
                abandoned.extend(queue.iter().filter_map(|q| q.query.as_ref().map(|q| q.id)));
            }
            p != pid
        });
        self.statements.retain(|(p, _, _), _| *p != pid);
        self.abandon(abandoned, out);
    }

    fn abandon(&mut self, ids: Vec<u64>, out: &mut Vec<LibpqEvent>) {
        self.stats.abandoned += ids.len() as u64;
        out.extend(ids.into_iter().map(|id| LibpqEvent::Abandoned { id }));
    }

    pub fn on_call(&mut self, call: LibpqCallRecord, out: &mut Vec<LibpqEvent>) {
        let thread = (call.pid, call.tid);
        if let Some(open) = self.threads.get(&thread) {
            if !call.function.is_synchronous() {
                // The insides of the open synchronous call.
                return;
            }
            // libpq never nests synchronous calls: the open one's return went unseen.
            let lost = open.query.as_ref().map(|q| q.id);
            self.threads.remove(&thread);
            self.abandon(lost.into_iter().collect(), out);
        }
        let conn = (call.pid, call.pg_conn);
        if call.function.is_prepare()
            && let (Some(name), Some(text)) = (&call.name, &call.text)
        {
            if self.statements.len() >= MAX_ENTRIES {
                self.statements.clear();
                self.stats.overflow += 1;
            }
            self.statements.insert(
                (call.pid, call.pg_conn, name.clone()),
                (text.clone(), call.text_truncated),
            );
        }
        let query = (!call.function.is_prepare()).then(|| self.new_query(&call));
        if let Some(query) = &query {
            out.push(LibpqEvent::Started {
                id: query.id,
                pid: query.pid,
                tid: query.tid,
            });
        }
        if call.function.is_synchronous() {
            if self.threads.len() >= MAX_ENTRIES {
                self.stats.overflow += 1;
                self.abandon(query.map(|q| q.id).into_iter().collect(), out);
                return;
            }
            self.threads.insert(
                thread,
                SyncCall {
                    function: call.function,
                    query,
                },
            );
            return;
        }
        if !self.conns.contains_key(&conn) && self.conns.len() >= MAX_ENTRIES {
            self.stats.overflow += 1;
            self.abandon(query.map(|q| q.id).into_iter().collect(), out);
            return;
        }
        let queue = self.conns.entry(conn).or_default();
        // Outside pipeline mode libpq refuses a send while results are pending, so a queue
        // that is not empty holds queries whose end went unseen: finish what got results.
        let mut lost = Vec::new();
        if queue.len() >= MAX_QUEUED || !queue.iter().all(|q| q.got_result) {
            for stale in queue.drain(..) {
                match stale.query {
                    Some(query) if stale.got_result => out.push(LibpqEvent::Done(query)),
                    Some(query) => lost.push(query.id),
                    None => {}
                }
            }
        }
        queue.push_back(Queued {
            query,
            got_result: false,
        });
        self.abandon(lost, out);
    }

    pub fn on_result(&mut self, ret: LibpqResultRecord, out: &mut Vec<LibpqEvent>) {
        let thread = (ret.pid, ret.tid);
        if let Some(open) = self.threads.get(&thread) {
            if ret.function != open.function {
                return;
            }
            if let Some(SyncCall {
                query: Some(mut query),
                ..
            }) = self.threads.remove(&thread)
            {
                match &ret.result {
                    Some(result) => absorb(&mut query, result, ret.ts_ns),
                    None => {
                        // NULL from a synchronous call: libpq could not even send it.
                        query.failed = true;
                        query.end_ns = ret.ts_ns;
                    }
                }
                out.push(LibpqEvent::Done(query));
            }
            return;
        }
        if ret.function != LibpqFunction::GetResult {
            return; // a synchronous call entered before loupe attached
        }
        let key = (ret.pid, ret.pg_conn);
        let Some(queue) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(front) = queue.front_mut() else {
            return;
        };
        match &ret.result {
            Some(result) => {
                front.got_result = true;
                if let Some(query) = &mut front.query {
                    absorb(query, result, ret.ts_ns);
                }
            }
            None => {
                if let Some(done) = queue.pop_front()
                    && let Some(mut query) = done.query
                {
                    if !done.got_result {
                        query.end_ns = ret.ts_ns;
                    }
                    out.push(LibpqEvent::Done(query));
                }
                if queue.is_empty() {
                    self.conns.remove(&key);
                }
            }
        }
    }

    fn new_query(&mut self, call: &LibpqCallRecord) -> LibpqQuery {
        self.next_id += 1;
        let (text, text_truncated) = match (&call.text, &call.name) {
            (Some(text), _) => (Some(text.clone()), call.text_truncated),
            (None, Some(name)) => self
                .statements
                .get(&(call.pid, call.pg_conn, name.clone()))
                .map_or((None, false), |(text, truncated)| {
                    (Some(text.clone()), *truncated)
                }),
            (None, None) => (None, false),
        };
        LibpqQuery {
            id: self.next_id,
            pid: call.pid,
            tid: call.tid,
            pg_conn: call.pg_conn,
            text,
            text_truncated,
            statement_name: call.name.clone().filter(|_| call.text.is_none()),
            start_ns: call.ts_ns,
            end_ns: call.ts_ns,
            ..LibpqQuery::default()
        }
    }
}

/// Folds one result into its query: the last result gives the tag and the end, an error in any
/// of them fails the query, and single-row mode's results add up.
fn absorb(query: &mut LibpqQuery, result: &PgResultInfo, ts_ns: u64) {
    query.end_ns = ts_ns;
    match result.status {
        exec_status::TUPLES_OK => query.rows = Some(u64::from(result.ntuples)),
        exec_status::SINGLE_TUPLE | exec_status::TUPLES_CHUNK => {
            query.rows = Some(query.rows.unwrap_or(0) + u64::from(result.ntuples));
        }
        exec_status::COMMAND_OK => {
            if let Some(rows) = tag_rows(&result.cmd_status) {
                query.rows = Some(rows);
            }
        }
        exec_status::FATAL_ERROR | exec_status::BAD_RESPONSE | exec_status::PIPELINE_ABORTED => {
            query.failed = true;
            if result.sqlstate.is_some() {
                query.sqlstate.clone_from(&result.sqlstate);
            }
        }
        _ => {}
    }
    if !result.cmd_status.is_empty() {
        query.tag = Some(result.cmd_status.clone());
    }
}
