//! libpq as a second source of PostgreSQL queries, beside the wire.
//!
//! The wire parser sees what a connection carries; the libpq uprobes see what the application
//! asked for, including over TLS, where the wire shows only ciphertext. A query both see is one
//! span: the libpq query a thread sent is claimed by the next query the wire starts on that
//! thread, shares its span ids, and is reported once, when libpq's results end (with the
//! wire's view of it where libpq saw less). The stitcher hands this source libpq's records and
//! the wire's starts and ends; what the source needs back (span ids for a call starting now, a
//! finished query's span) it asks through [`QueryHost`].

use rustc_hash::FxHashMap as HashMap;

use super::{LibpqEvent, LibpqQuery, LibpqTracker};
use crate::{
    events::{LibpqCallRecord, LibpqResultRecord},
    protocols::postgres::QueryDone,
    spans::{Actor, SpanIds, db::QueryFacts},
};

/// A connection as the stitcher knows it: (pid, connection id).
pub type ConnKey = (u32, u64);

/// What the source asks of the stitcher.
pub trait QueryHost {
    /// Span ids (with its parent) for a call thread `tid` of `pid` starts now.
    fn call_ids(&mut self, pid: u32, tid: u32) -> SpanIds;
    /// A query finished: its span, over connection `conn` when it is known.
    fn query_done(
        &mut self,
        facts: &QueryFacts<'_>,
        conn: Option<ConnKey>,
        ids: SpanIds,
        actor: Actor,
    );
    /// A query started and will never be reported (counted).
    fn query_abandoned(&mut self);
}

/// A query libpq saw start and not yet finish.
struct Open {
    ids: SpanIds,
    actor: Actor,
    start_ns: u64,
    /// The same query as the wire saw it, once it finished there, and its connection.
    wire: Option<(QueryDone, ConnKey)>,
}

/// The libpq source: the call tracker and what ties its queries to the wire's.
#[derive(Default)]
pub struct LibpqSource {
    tracker: LibpqTracker,
    events: Vec<LibpqEvent>,
    /// Queries started and not finished, by tracker id.
    open: HashMap<u64, Open>,
    /// Per (pid, tid): the query sent whose bytes the wire has not shown yet.
    unwired: HashMap<(u32, u32), u64>,
    /// Per (pid, tid): the PostgreSQL connection the thread last moved bytes on, for the server
    /// address of a query only libpq could read (TLS).
    conn_of_thread: HashMap<(u32, u32), ConnKey>,
    /// Threads remembered at most (each table above).
    max_threads: usize,
}

impl LibpqSource {
    pub fn new(max_threads: usize) -> Self {
        Self {
            max_threads,
            ..Self::default()
        }
    }

    /// A libpq function was entered.
    pub fn on_call(&mut self, call: LibpqCallRecord, host: &mut dyn QueryHost) {
        let now_ns = call.ts_ns;
        self.tracker.on_call(call, &mut self.events);
        self.act(now_ns, host);
    }

    /// A libpq function returned.
    pub fn on_result(&mut self, ret: LibpqResultRecord, host: &mut dyn QueryHost) {
        let now_ns = ret.ts_ns;
        self.tracker.on_result(ret, &mut self.events);
        self.act(now_ns, host);
    }

    /// Forgets the processes `is_live` says exited: their open queries never finish.
    pub fn forget_exited(&mut self, is_live: impl Fn(u32) -> bool, host: &mut dyn QueryHost) {
        for pid in self.tracker.pids() {
            if !is_live(pid) {
                self.tracker.forget_process(pid, &mut self.events);
            }
        }
        self.act(0, host);
    }

    /// Thread `tid` of `pid` moved PostgreSQL bytes on `key`.
    pub fn moved_bytes(&mut self, tid: u32, key: ConnKey) {
        if self.conn_of_thread.len() >= self.max_threads.max(1) {
            self.conn_of_thread.clear();
        }
        self.conn_of_thread.insert((key.0, tid), key);
    }

    /// The wire started a query on `key`, sent by thread `tid`: when it is the query libpq saw
    /// that thread send, it is libpq's (its id and span ids).
    pub fn claim(&mut self, key: ConnKey, tid: u32) -> Option<(u64, SpanIds)> {
        let id = self.unwired.remove(&(key.0, tid))?;
        self.open.get(&id).map(|open| (id, open.ids))
    }

    /// The wire finished query `id`, which it claimed: libpq reports it when its results end
    /// (if libpq already did, the wire's view came too late and is dropped).
    pub fn wire_done(&mut self, id: u64, done: QueryDone, key: ConnKey) {
        if let Some(open) = self.open.get_mut(&id) {
            open.wire = Some((done, key));
        }
    }

    /// The queries open now: who runs each and since when.
    pub fn open_queries(&self) -> impl Iterator<Item = (Actor, u64)> + '_ {
        self.open.values().map(|open| (open.actor, open.start_ns))
    }

    /// Acts on what the tracker reported. A query gets its span ids when it starts (`now_ns`).
    fn act(&mut self, now_ns: u64, host: &mut dyn QueryHost) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                LibpqEvent::Started { id, pid, tid } => {
                    let ids = host.call_ids(pid, tid);
                    let actor = Actor { pid, tid };
                    // Bounded by the tracker: a query it could not hold never starts.
                    let open = Open {
                        ids,
                        actor,
                        start_ns: now_ns,
                        wire: None,
                    };
                    self.open.insert(id, open);
                    self.unwired.insert((pid, tid), id);
                }
                LibpqEvent::Done(query) => self.done(query, host),
                LibpqEvent::Abandoned { id } => {
                    self.unwired.retain(|_, open| *open != id);
                    match self.open.remove(&id) {
                        // libpq's end went unseen, the wire saw the whole query: its view is
                        // the span (a uretprobe attached a moment after the call began).
                        Some(Open {
                            ids,
                            actor,
                            wire: Some((done, key)),
                            ..
                        }) => host.query_done(&QueryFacts::from_wire(&done), Some(key), ids, actor),
                        _ => host.query_abandoned(),
                    }
                }
            }
        }
        self.events = events;
    }

    fn done(&mut self, query: LibpqQuery, host: &mut dyn QueryHost) {
        let thread = (query.pid, query.tid);
        if self.unwired.get(&thread) == Some(&query.id) {
            self.unwired.remove(&thread);
        }
        let open = self.open.remove(&query.id);
        let ids = match &open {
            Some(open) => open.ids,
            None => host.call_ids(query.pid, query.tid),
        };
        let wire = open.and_then(|open| open.wire);
        let conn = wire
            .as_ref()
            .map(|(_, key)| *key)
            .or_else(|| self.conn_of_thread.get(&thread).copied());
        let facts = QueryFacts::merged(&query, wire.as_ref().map(|(done, _)| done));
        let actor = Actor {
            pid: query.pid,
            tid: query.tid,
        };
        host.query_done(&facts, conn, ids, actor);
    }
}
