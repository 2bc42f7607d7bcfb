//! The stitcher: the one owner of per-connection and per-thread state.
//!
//! It feeds each tracked connection's bytes to its protocol parser, gives every request span ids
//! the moment its head is parsed, and asks `spans::parent` which request an outbound call
//! belongs to, telling it what it knows: the requests in flight on the call's thread and in its
//! process, how the process schedules requests onto threads, and (for event loops that run
//! each event to completion) which request's bytes the thread read last. Where no request is
//! certain, the call stays a root span, marked and counted: never nested wrongly.
//!
//! On a Python thread whose Context loupe reads, a call made while several requests are in
//! flight is decided late ([`parent::LateCall`]): its span, and the spans of the requests that
//! may have made it, wait in the stitcher until each of those requests started its response,
//! so that a request leaves with its calls (the diagnosis stage sees them together).

use std::{net::SocketAddr, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use loupe_common::{Direction, GoFunction, SocketRole};

use super::{
    db::{QueryFacts, query_span},
    deadlines::{Deadlines, Watched},
    http::{Actor, Endpoints, SpanIds, client_span, server_span, split_host},
    ids::{new_span_id, new_trace_id, parse_traceparent},
    model::{OpType, SpanRecord},
    names::Names,
    parent::{self, CallContext, InFlight, LateCall, Parent, Runtime},
};
use crate::{
    detect::slow::threshold_for,
    events::{ConnRecord, DataRecord, Event},
    libpq::{LibpqSource, QueryHost},
    process::{SocketAddrs, is_live_process, local_postgres_database, runtime_of, socket_addrs},
    protocols::{
        self as protocols, Chunk, Finished, First, Flow, Kind, Parser, Report, Surroundings,
        Timing, http1, postgres, sniff::FirstBytes,
    },
    sql::{Statement, StatementCache},
    stats::Counters,
};

/// Bounds of the stitcher's state.
#[derive(Clone, Copy, Debug)]
pub struct StitcherLimits {
    /// Connections tracked at once.
    pub max_connections: usize,
    /// An unframed response (no Content-Length, not chunked) whose last bytes are older than
    /// this is finished.
    pub idle_response_ns: u64,
    /// A connection with no traffic for this long is forgotten.
    pub idle_connection_ns: u64,
    /// Chunks that neither look like HTTP nor follow it before a connection is given up on.
    pub sniff_budget: u32,
}

impl Default for StitcherLimits {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            idle_response_ns: 1_000_000_000,
            idle_connection_ns: 300_000_000_000,
            sniff_budget: 8,
        }
    }
}

/// (pid, connection id): every duplicate of a socket's fd maps to one connection.
pub(crate) type ConnKey = (u32, u64);

enum Protocol {
    /// Not seen enough bytes to tell: `sniffed` chunks that could not start a message, and the
    /// first bytes held while they still could.
    Unknown { sniffed: u32, first: FirstBytes },
    /// A protocol recognised it: its parser.
    Known(Box<dyn Parser>),
    /// Not a protocol loupe parses (yet): bytes are skipped.
    Other,
}

struct Conn {
    role: SocketRole,
    /// Open fds referring to this connection (dup'd fds included); closed at zero.
    fds: u32,
    /// The fd last seen carrying data, for /proc look-ups.
    fd: i32,
    ends: Endpoints,
    /// Whether /proc was asked for the addresses (asked at most once).
    looked_up: bool,
    protocol: Protocol,
    last_ns: u64,
    /// Ids of requests whose head was parsed, by sequence number, until their exchange ends.
    pending: HashMap<u64, Pending>,
    /// Where an event loop opened this client connection: the thread and the parent decided
    /// then, for the first request it sends (the write comes in a later event, once the connect
    /// completes, after other requests may have been read).
    opened_for: Option<(u32, Parent)>,
    /// Its accept or connect was seen: requests on it are numbered from its first, so the n-th
    /// request one end sent is the n-th the other end read.
    from_start: bool,
}

/// Who moved some bytes: the thread, and the key requests and calls are matched on (the
/// thread, or in a Go program whose goroutines loupe reads, the goroutine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Doer {
    tid: u32,
    exec: u64,
    /// The Context a Python thread ran in ([`Runtime::Tasks`]), else 0.
    unit: u64,
}

/// Marks an [`Doer::exec`] that is a goroutine id, not a thread id.
const GOROUTINE: u64 = 1 << 63;

/// How long a request answered before its caller's write was handled waits for it (the two
/// ends' events race through the ring buffer; the write's return can come late when the
/// caller's thread is kept off the CPU), before it goes out as a trace of its own.
const CALLER_WAIT_NS: u64 = 2_000_000_000;

/// How many emptied per-thread request lists are kept for reuse (one per thread that serves
/// at a time is enough).
const SPARE_SERVING: usize = 256;

impl Protocol {
    fn unknown() -> Self {
        Self::Unknown {
            sniffed: 0,
            first: FirstBytes::default(),
        }
    }
}

impl Doer {
    fn thread(tid: u32) -> Self {
        Self {
            tid,
            exec: u64::from(tid),
            unit: 0,
        }
    }
}

#[derive(Clone, Copy)]
struct Pending {
    ids: SpanIds,
    /// An HTTP request's method and target, hashed (`http1::line_key`); 0 for queries.
    line: u64,
    tid: u32,
    /// The key its thread or goroutine is known by (`Doer::exec`).
    exec: u64,
    /// When its request started (event time), for spotting it running slow.
    start_ns: u64,
    /// The libpq query this wire query is (PostgreSQL only): its span is libpq's.
    libpq: Option<u64>,
}

/// A request and the key (`Doer::exec`) of the thread or goroutine serving it.
type ServedRequest = (u64, InFlight);

/// A server request whose caller loupe observes, read before the caller's write was handled.
#[derive(Clone, Copy)]
struct AwaitingCaller {
    server: ConnKey,
    seq: u64,
    line: u64,
    span_id: u64,
}

/// A call decided late ([`Runtime::Tasks`]): what it waits for, and where its ids or its span
/// are meanwhile.
struct Late {
    call: LateCall,
    /// Its connection and sequence number there, while its exchange runs.
    key: ConnKey,
    seq: u64,
    since_ns: u64,
    /// Its trace id until it is decided (kept if it stays a root).
    trace_id: u128,
    /// Its span, once its exchange ended before the decision.
    span: Option<SpanRecord>,
}

/// Owns connection and thread state; turns events into finished spans.
pub struct Stitcher {
    conns: HashMap<ConnKey, Conn>,
    /// Server requests in progress per (pid, tid): head read, response not started.
    serving: HashMap<(u32, u64), Vec<InFlight>>,
    /// Emptied lists of `serving`, kept for the next request so that one costs no allocation.
    spare_serving: Vec<Vec<InFlight>>,
    /// How each process schedules requests onto threads, learnt on its first event.
    runtimes: HashMap<u32, Runtime>,
    /// Reads the runtime of a process (/proc; tests put in their own).
    runtime_probe: fn(u32) -> Runtime,
    /// Reads both addresses of a target's socket (/proc; tests put in their own).
    socket_probe: fn(u32, i32) -> Option<SocketAddrs>,
    /// Per (pid, tid) of an event-loop process: the server request (connection id, sequence)
    /// whose bytes the thread read last, while it has read nothing else since and made no call.
    last_read: HashMap<(u32, u32), (u64, u64)>,
    /// Client connections seen from their connect, by their own address: what the server end
    /// of the connection (when loupe observes it too) sees as its peer.
    by_local: HashMap<SocketAddr, ConnKey>,
    /// Server requests read before the caller's write was handled (the two ends' events race
    /// through the ring buffer): (caller connection, sequence) -> the request, to be linked
    /// when the write comes, if it made no call before.
    awaiting_caller: HashMap<(ConnKey, u64), AwaitingCaller>,
    /// The same requests by their span id: a call one of them makes ends its wait.
    awaiting_by_span: HashMap<u64, (ConnKey, u64)>,
    /// Server spans of those requests answered before their caller's write was handled (the
    /// caller's thread can be kept off the CPU between sending and its write's return), by
    /// span id, with when they finished: each goes out under its call when the write comes,
    /// or alone after [`CALLER_WAIT_NS`].
    held_for_caller: HashMap<u64, (SpanRecord, u64)>,
    /// Go: the goroutine that handed each request to a Transport connection, by (pid,
    /// `*Request`).
    go_callers: HashMap<(u32, u64), u64>,
    /// Go: the goroutine a Transport connection's writer is writing for now, by (pid, writer).
    go_writing_for: HashMap<(u32, u64), u64>,
    /// Go: goroutines announced by `runtime.newproc`, by (pid, the goid they get): who started
    /// them and the request it served then (its key and the request), if one.
    go_spawned: HashMap<(u32, u64), (u64, Option<ServedRequest>)>,
    /// Go: goroutines a request's goroutine started while serving it, by (pid, goid): the
    /// request (its goroutine's key and the request). One level: a goroutine they start is not.
    go_bound: HashMap<(u32, u64), ServedRequest>,
    limits: StitcherLimits,
    /// Routes, span names and hosts, shared by the spans that carry them.
    names: Names,
    counters: Arc<Counters>,
    /// What the last parser call reported, to act on.
    reports: Vec<Report>,
    /// Normalized statements, memoized: the parser is the costly part of a query span.
    statements: StatementCache,
    lookups: LookupBudget,
    /// The second source of PostgreSQL queries (the libpq uprobes), tied to the wire's.
    libpq: LibpqSource,
    /// The time of the event being handled (ns since boot): when what it starts started.
    clock_ns: u64,
    /// Calls decided late, by their span id.
    late: HashMap<u64, Late>,
    /// Per request (span id): the late calls it may have made, still undecided.
    late_by_request: HashMap<u64, Vec<u64>>,
    /// Server spans finished while a late call they may have made was undecided, by span id.
    held_servers: HashMap<u64, SpanRecord>,
    /// Processes it holds state for (`stitcher_processes`).
    pids: rustc_hash::FxHashSet<u32>,
    /// Processes whose PostgreSQL sessions the wire cannot read (encrypted, or open before
    /// attach and unreadable): libpq's uprobes would see them. Asked once per process.
    libpq_asked: rustc_hash::FxHashSet<u32>,
    /// Of those, the ones not yet taken by [`Stitcher::take_libpq_wants`].
    libpq_wants: Vec<u32>,
    /// When each open request and call passes its threshold (none until thresholds are set).
    deadlines: Deadlines,
}

/// The stitcher as the libpq source sees it: ids for calls, spans for queries.
struct QueryOut<'a> {
    stitcher: &'a mut Stitcher,
    out: &'a mut Vec<SpanRecord>,
}

impl QueryHost for QueryOut<'_> {
    fn call_ids(&mut self, pid: u32, tid: u32) -> SpanIds {
        self.stitcher.client_ids(pid, u64::from(tid))
    }

    fn query_done(
        &mut self,
        facts: &QueryFacts<'_>,
        conn: Option<ConnKey>,
        ids: SpanIds,
        actor: Actor,
    ) {
        let statement = self.stitcher.statement_of(facts, conn);
        let ends = conn
            .and_then(|key| self.stitcher.conns.get(&key))
            .map(|conn| &conn.ends);
        self.out
            .push(query_span(facts, &statement, ends, ids, actor));
    }

    fn query_abandoned(&mut self) {
        Counters::add(&self.stitcher.counters.queries_abandoned, 1);
    }
}

/// At most `PER_SECOND` /proc address look-ups per second of event time.
struct LookupBudget {
    second: u64,
    used: u32,
}

impl LookupBudget {
    const PER_SECOND: u32 = 10;

    fn take(&mut self, now_ns: u64) -> bool {
        let second = now_ns / 1_000_000_000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        self.used += 1;
        self.used <= Self::PER_SECOND
    }
}

impl Stitcher {
    pub fn new(limits: StitcherLimits, counters: Arc<Counters>) -> Self {
        Self {
            conns: HashMap::default(),
            serving: HashMap::default(),
            runtimes: HashMap::default(),
            runtime_probe: runtime_of,
            socket_probe: socket_addrs,
            last_read: HashMap::default(),
            by_local: HashMap::default(),
            awaiting_caller: HashMap::default(),
            awaiting_by_span: HashMap::default(),
            held_for_caller: HashMap::default(),
            go_callers: HashMap::default(),
            go_writing_for: HashMap::default(),
            go_spawned: HashMap::default(),
            go_bound: HashMap::default(),
            limits,
            names: Names::default(),
            spare_serving: Vec::new(),
            counters,
            reports: Vec::new(),
            statements: StatementCache::new(4096),
            lookups: LookupBudget { second: 0, used: 0 },
            libpq: LibpqSource::new(limits.max_connections),
            clock_ns: 0,
            late: HashMap::default(),
            late_by_request: HashMap::default(),
            deadlines: Deadlines::default(),
            held_servers: HashMap::default(),
            pids: Default::default(),
            libpq_asked: Default::default(),
            libpq_wants: Vec::new(),
        }
    }

    /// The processes that asked for libpq's uprobes since the last call.
    pub fn take_libpq_wants(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.libpq_wants)
    }

    /// `pid` has a PostgreSQL session the wire cannot read.
    fn wants_libpq(&mut self, pid: u32) {
        if self.libpq_asked.insert(pid) {
            self.libpq_wants.push(pid);
        }
    }

    /// Reads sockets' addresses with `probe` instead of /proc.
    pub fn with_socket_probe(mut self, probe: fn(u32, i32) -> Option<SocketAddrs>) -> Self {
        self.socket_probe = probe;
        self
    }

    /// Reads processes' runtimes with `probe` instead of /proc.
    pub fn with_runtime_probe(mut self, probe: fn(u32) -> Runtime) -> Self {
        self.runtime_probe = probe;
        self
    }

    /// The runtime of `pid`, read once.
    fn runtime(&mut self, pid: u32) -> Runtime {
        if let Some(runtime) = self.runtimes.get(&pid) {
            return *runtime;
        }
        let runtime = (self.runtime_probe)(pid);
        if let Some(note) = runtime.note() {
            eprintln!("loupe: pid {pid} {note}");
        }
        if self.runtimes.len() >= self.limits.max_connections {
            self.runtimes.clear();
        }
        self.runtimes.insert(pid, runtime);
        self.pids.insert(pid);
        runtime
    }

    /// Registers a connection that was already open at attach (`now_ns`: ns since boot, when it
    /// was found; its idle time counts from then).
    pub fn seed(
        &mut self,
        pid: u32,
        conn_id: u64,
        role: SocketRole,
        addrs: SocketAddrs,
        now_ns: u64,
    ) {
        if let Some(conn) = self.conns.get_mut(&(pid, conn_id)) {
            conn.fds += 1;
            return;
        }
        // Not 0: the first upkeep would take a connection idle since boot for a stale one and
        // forget it, addresses and all.
        let conn = Self::new_conn(role, Some(addrs.peer), Some(addrs.local), now_ns);
        self.insert_conn((pid, conn_id), conn);
    }

    /// Handles one event, pushing finished spans to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<SpanRecord>) {
        match event {
            Event::Data(data) => self.on_data(data, out),
            Event::Conn(conn) => self.on_conn(conn, out),
            Event::Close { pid, conn_id, .. } => {
                let key = (pid, conn_id);
                let last_fd = self.conns.get_mut(&key).is_some_and(|conn| {
                    conn.fds = conn.fds.saturating_sub(1);
                    conn.fds == 0
                });
                if last_fd {
                    self.close(key, out);
                }
            }
            Event::Dup { pid, conn_id, .. } => {
                if let Some(conn) = self.conns.get_mut(&(pid, conn_id)) {
                    conn.fds += 1;
                }
            }
            // A new process: whatever was known of an earlier one on its pid is not its.
            Event::Fork { child, .. } => self.forget_process(child, out),
            Event::Exec(exec) => self.forget_process(exec.pid, out),
            Event::ConnLocal {
                pid,
                conn_id,
                local,
            } => self.learn_local((pid, conn_id), local),
            Event::GoCall {
                pid,
                goid,
                parent_goid,
                function,
                object,
            } => {
                // A goroutine that does its I/O through others (a Transport call) is first seen
                // here.
                self.bind_child(pid, goid, parent_goid);
                self.go_call(pid, goid, function, object);
            }
            Event::CpuSample(_) | Event::OffCpu(_) => {}
            Event::LibpqCall(call) => {
                self.clock_ns = call.ts_ns;
                self.pids.insert(call.pid);
                self.with_libpq(out, |libpq, host| libpq.on_call(call, host));
            }
            Event::LibpqResult(ret) => {
                self.with_libpq(out, |libpq, host| libpq.on_result(ret, host));
            }
        }
    }

    /// Runs `act` on the libpq source, which asks this stitcher for ids and spans.
    fn with_libpq(
        &mut self,
        out: &mut Vec<SpanRecord>,
        act: impl FnOnce(&mut LibpqSource, &mut dyn QueryHost),
    ) {
        let mut libpq = std::mem::take(&mut self.libpq);
        act(
            &mut libpq,
            &mut QueryOut {
                stitcher: self,
                out,
            },
        );
        self.libpq = libpq;
    }

    /// The span of a query only the wire reported whole, on connection `key`.
    fn wire_query_span(
        &mut self,
        query: &postgres::QueryDone,
        key: ConnKey,
        ids: SpanIds,
        actor: Actor,
    ) -> SpanRecord {
        let facts = QueryFacts::from_wire(query);
        let statement = self.statement_of(&facts, Some(key));
        let ends = self.conns.get(&key).map(|conn| &conn.ends);
        query_span(&facts, &statement, ends, ids, actor)
    }

    /// The statement a query ran: its text normalized, else the name it was prepared under,
    /// which means one statement on connection `key` (or, for a name that embeds a digest of
    /// its text, everywhere).
    fn statement_of(&mut self, facts: &QueryFacts<'_>, key: Option<ConnKey>) -> Statement {
        match (facts.text, facts.statement_name) {
            (None, Some(name)) => {
                let scope = (!postgres::embeds_digest(name))
                    .then(|| key.map_or_else(String::new, |(pid, id)| format!("{pid}:{id}")));
                Statement::prepared(name, scope.as_deref())
            }
            (text, _) => self.statements.analyze_text(text),
        }
    }

    /// Periodic upkeep: finishes idle unframed responses, forgets idle connections and the
    /// libpq queries of processes that exited.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<SpanRecord>) {
        let mut stale = Vec::new();
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if now_ns.saturating_sub(conn.last_ns) > self.limits.idle_connection_ns {
                stale.push(key);
                continue;
            }
            if let Protocol::Known(parser) = &mut conn.protocol {
                parser.flush_idle(now_ns, self.limits.idle_response_ns, &mut self.reports);
                self.dispatch(key, None, out);
            }
        }
        for key in stale {
            self.close(key, out);
        }
        // A process that exited mid-query never finishes its libpq queries.
        self.with_libpq(out, |libpq, host| {
            libpq.forget_exited(is_live_process, host)
        });
        let overdue: Vec<u64> = self
            .late
            .iter()
            .filter(|(_, late)| now_ns.saturating_sub(late.since_ns) > parent::LATE_LIMIT_NS)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.settle(id, out);
        }
        let unseen: Vec<u64> = self
            .held_for_caller
            .iter()
            .filter(|(_, (_, since))| now_ns.saturating_sub(*since) > CALLER_WAIT_NS)
            .map(|(id, _)| *id)
            .collect();
        for id in unseen {
            self.caller_unseen(id, out);
        }
    }

    /// Finishes everything (at shutdown): each connection is closed as if by the target.
    pub fn finish(&mut self, out: &mut Vec<SpanRecord>) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, out);
        }
        let undecided: Vec<u64> = self.late.keys().copied().collect();
        for id in undecided {
            self.settle(id, out);
        }
        out.extend(self.held_servers.drain().map(|(_, span)| span));
        let waiting: Vec<u64> = self.held_for_caller.keys().copied().collect();
        for id in waiting {
            self.caller_unseen(id, out);
        }
    }

    /// Watches each request and call that starts from now on against `thresholds`, so that
    /// [`Stitcher::next_deadline`] says when the next one goes slow.
    pub fn watch_deadlines(&mut self, thresholds: &crate::config::Thresholds) {
        self.deadlines.set_thresholds(thresholds);
    }

    /// When the next watched operation passes its threshold, if one is watched (the events'
    /// clock, ns since boot).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }

    /// Takes the operations whose threshold passed by `now_ns`: whether one of them still
    /// runs (its thread is to be heated now). Those that ended are just forgotten.
    pub fn deadlines_due(&mut self, now_ns: u64) -> bool {
        let mut running = false;
        let (serving, conns) = (&self.serving, &self.conns);
        self.deadlines.take_due(now_ns, |what| {
            running |= match what {
                Watched::Request {
                    pid,
                    exec,
                    conn_id,
                    seq,
                } => serving.get(&(pid, exec)).is_some_and(|requests| {
                    requests
                        .iter()
                        .any(|r| r.conn_id == conn_id && r.seq == seq)
                }),
                Watched::Call { key, seq, start_ns } => conns
                    .get(&key)
                    .and_then(|conn| conn.pending.get(&seq))
                    .is_some_and(|pending| pending.start_ns == start_ns),
            };
        });
        Counters::set(&self.counters.deadlines_unwatched, self.deadlines.unwatched);
        running
    }

    /// The threads running something past its threshold at `now_ns`: a server request, an
    /// outbound HTTP call or a query (their CPU is worth sampling until it ends).
    pub fn slow_threads(
        &self,
        now_ns: u64,
        thresholds: &crate::config::Thresholds,
    ) -> std::collections::BTreeSet<(u32, u32)> {
        // Past ten minutes an operation is more likely lost (a request whose end was never seen)
        // than running: it is not worth a perf event.
        const MAX_AGE_NS: u64 = 600_000_000_000;
        // A threshold of zero turns slowness off (`detect::mark_slow`): nothing is hot for it.
        let over = |start_ns: u64, limit: std::time::Duration| {
            let age = now_ns.saturating_sub(start_ns);
            !limit.is_zero() && age > limit.as_nanos() as u64 && age < MAX_AGE_NS
        };
        let limit_of = |op: OpType| threshold_for(op, thresholds);
        let mut slow = std::collections::BTreeSet::new();
        for (&(pid, _), requests) in &self.serving {
            for request in requests {
                if over(request.start_ns, limit_of(OpType::HttpServer)) {
                    slow.insert((pid, request.tid));
                }
            }
        }
        for (&(pid, _), conn) in &self.conns {
            if conn.role != SocketRole::Client || conn.pending.is_empty() {
                continue;
            }
            let limit = match &conn.protocol {
                Protocol::Known(parser) => limit_of(parser.kind().calls()),
                _ => continue,
            };
            for pending in conn.pending.values() {
                if over(pending.start_ns, limit) {
                    slow.insert((pid, pending.tid));
                }
            }
        }
        for (actor, start_ns) in self.libpq.open_queries() {
            if over(start_ns, limit_of(OpType::DbClient)) {
                slow.insert((actor.pid, actor.tid));
            }
        }
        slow
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn new_conn(
        role: SocketRole,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        now: u64,
    ) -> Conn {
        Conn {
            role,
            fds: 1,
            fd: -1,
            ends: Endpoints::new(peer, local),
            looked_up: peer.is_some() && local.is_some(),
            protocol: Protocol::unknown(),
            last_ns: now,
            pending: HashMap::default(),
            opened_for: None,
            from_start: false,
        }
    }

    fn insert_conn(&mut self, key: ConnKey, conn: Conn) -> bool {
        if self.conns.len() >= self.limits.max_connections && !self.conns.contains_key(&key) {
            Counters::add(&self.counters.connections_dropped, 1);
            return false;
        }
        self.pids.insert(key.0);
        self.conns.insert(key, conn);
        true
    }

    /// A client connection's own address, learnt after its connect: the server end, if loupe
    /// observes it, finds its caller by it.
    fn learn_local(&mut self, key: ConnKey, local: SocketAddr) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.ends.local.is_none() {
            conn.ends.local = Some(local);
        }
        if conn.from_start {
            if self.by_local.len() >= self.limits.max_connections {
                self.by_local.clear();
            }
            self.by_local.insert(local, key);
        }
    }

    fn on_conn(&mut self, record: ConnRecord, out: &mut Vec<SpanRecord>) {
        let key = (record.pid, record.conn_id);
        // Ids are unique; a repeat means the first was never closed: it is over.
        self.close(key, out);
        let mut conn = Self::new_conn(record.role, record.peer, record.local, record.ts_ns);
        conn.fd = record.fd;
        conn.from_start = true;
        if record.role == SocketRole::Server
            && record.peer.is_none()
            && self.lookups.take(record.ts_ns)
        {
            // An accept without an address buffer (libuv passes none): without its peer, a
            // caller loupe observes would not find its request. One look-up per such accept,
            // which finds the socket only while it is open (a long-lived connection).
            conn.looked_up = true;
            if let Some(addrs) = (self.socket_probe)(record.pid, record.fd) {
                conn.ends.learn(addrs.peer, addrs.local);
            }
        }
        if record.role == SocketRole::Client && self.runtime(record.pid) == Runtime::RunToCompletion
        {
            self.clock_ns = record.ts_ns;
            let parent = self.parent_of_call(record.pid, u64::from(record.tid));
            conn.opened_for = Some((record.tid, parent));
        }
        self.insert_conn(key, conn);
        if let Some(local) = record.local {
            self.learn_local(key, local);
        }
    }

    fn close(&mut self, key: ConnKey, out: &mut Vec<SpanRecord>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Protocol::Known(parser) = &mut conn.protocol {
            parser.close(&mut self.reports);
            self.dispatch(key, None, out);
        }
        if let Some(conn) = self.conns.remove(&key) {
            if let Some(local) = conn.ends.local
                && self.by_local.get(&local) == Some(&key)
            {
                self.by_local.remove(&local);
            }
            Counters::add(
                &self.counters.unanswered_requests,
                conn.pending.len() as u64,
            );
            for pending in conn.pending.values() {
                self.stop_serving(key.0, pending.exec, key.1, None);
            }
            if conn.role == SocketRole::Server {
                for pending in conn.pending.values() {
                    self.answered(pending.ids.span_id, None, out);
                }
            }
        }
    }

    fn on_data(&mut self, data: DataRecord, out: &mut Vec<SpanRecord>) {
        let key = (data.pid, data.conn_id);
        if !self.conns.contains_key(&key) {
            // A socket whose accept/connect loupe did not see: its role comes from its bytes.
            let conn = Self::new_conn(SocketRole::Unknown, None, None, data.exit_ns);
            if !self.insert_conn(key, conn) {
                return;
            }
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            match (data.tls, conn.ends.tls) {
                // The first plaintext from OpenSSL: the connection is TLS. What its socket
                // carried until now (the handshake) was ciphertext, whatever it was taken for.
                (true, false) => {
                    conn.ends.tls = true;
                    conn.protocol = Protocol::unknown();
                }
                // Ciphertext outside an OpenSSL call (a handshake, an alert): nothing to read.
                (false, true) => return,
                _ => {}
            }
        }
        // A read's entry includes the wait for the bytes (an idle keep-alive): what it starts
        // starts when they arrived. A write starts when it is made.
        self.clock_ns = match data.direction {
            Direction::Ingress => data.exit_ns,
            Direction::Egress => data.enter_ns,
        };
        let budget = self.limits.sniff_budget;
        let runtime = self.runtime(data.pid);
        let doer = self.doer_of(&data, runtime);
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last_ns = data.exit_ns;
        conn.fd = data.fd;
        let egress = data.direction == Direction::Egress;
        if let Protocol::Unknown { first, .. } = &mut conn.protocol {
            // The pieces written or read before this chunk, when they were too short to tell.
            let held = first.prefix(egress, &data.payload);
            let mut sniffing = First {
                captured: held.as_deref().unwrap_or(&data.payload),
                total_len: first.held_len() + data.total_len as usize,
                egress,
                role: conn.role,
                opened: conn.from_start,
            };
            let mut around = Around {
                stitcher: self,
                key,
                now_ns: data.exit_ns,
            };
            let mut recognised = protocols::recognise(&sniffing, &mut around);
            let mut alone = false;
            if recognised.is_none() && held.is_some() {
                // What was held was no message's start: perhaps this chunk is one.
                sniffing.captured = &data.payload;
                sniffing.total_len = data.total_len as usize;
                recognised = protocols::recognise(&sniffing, &mut around);
                alone = true;
            }
            let Some(conn) = self.conns.get_mut(&key) else {
                return;
            };
            let Protocol::Unknown { sniffed, first } = &mut conn.protocol else {
                return;
            };
            match recognised {
                Some(mut recognised) => {
                    conn.role = recognised.role;
                    if alone {
                        first.clear();
                    }
                    // The held pieces are the message's start: the parser reads them first.
                    let flow = flow_of(conn.role, data.direction);
                    first.replay(flow, |chunk| {
                        recognised.parser.push(chunk, &mut self.reports)
                    });
                    conn.protocol = Protocol::Known(recognised.parser);
                }
                None => {
                    let timing = Timing {
                        enter_ns: data.enter_ns,
                        exit_ns: data.exit_ns,
                    };
                    if !first.hold(timing, &data.payload, data.total_len as usize) {
                        *sniffed += 1;
                        if *sniffed >= budget && !protocols::may_answer(&data.payload) {
                            conn.protocol = Protocol::Other;
                            if !conn.from_start && !conn.ends.tls {
                                // Open before attach and unreadable: perhaps a session of a
                                // database driver that encrypted it before loupe came.
                                self.wants_libpq(data.pid);
                            }
                        }
                    }
                    return;
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let chunk = Chunk {
            flow: flow_of(conn.role, data.direction),
            enter_ns: data.enter_ns,
            exit_ns: data.exit_ns,
            captured: &data.payload,
            total_len: data.total_len as usize,
            tail: &data.tail,
        };
        if let Protocol::Known(parser) = &mut conn.protocol {
            let kind = parser.kind();
            parser.push(chunk, &mut self.reports);
            if kind == Kind::Postgres {
                // For libpq's view of a query over TLS: the connection its thread last used.
                self.libpq.moved_bytes(data.tid, key);
            }
            self.dispatch(key, Some(doer), out);
        }
        if data.direction == Direction::Ingress {
            self.note_read(key, data.tid, runtime);
        }
    }

    /// The database of a PostgreSQL session found already open, when it can be learnt: from the
    /// title of its server process, where the server runs on this host. Both addresses come
    /// from the socket (seeded at attach, else one /proc look-up); the look-ups share the budget.
    fn resumed_database(&mut self, key: ConnKey, now_ns: u64) -> Option<String> {
        let conn = self.conns.get_mut(&key)?;
        if conn.ends.local.is_none() && !conn.looked_up && self.lookups.take(now_ns) {
            conn.looked_up = true;
            if let Some(addrs) = (self.socket_probe)(key.0, conn.fd) {
                conn.ends.learn(addrs.peer, addrs.local);
            }
        }
        let local = conn.ends.local?;
        if !self.lookups.take(now_ns) {
            return None;
        }
        local_postgres_database(local)
    }

    /// An event-loop thread read bytes on `key`: if they are a request's (a server connection
    /// with a request in flight), that request is the one its next call belongs to; any other
    /// read (an upstream's answer) leaves no request certain.
    fn note_read(&mut self, key: ConnKey, tid: u32, runtime: Runtime) {
        if runtime != Runtime::RunToCompletion {
            return;
        }
        let reading = self
            .conns
            .get(&key)
            .filter(|conn| conn.role == SocketRole::Server)
            .and_then(|conn| conn.pending.keys().max().copied());
        match reading {
            Some(seq) => {
                if self.last_read.len() >= self.limits.max_connections {
                    self.last_read.clear();
                }
                self.last_read.insert((key.0, tid), (key.1, seq));
            }
            None => {
                self.last_read.remove(&(key.0, tid));
            }
        }
    }

    /// Acts on what the last parser call left in `reports`. `doer` moved the bytes (None for
    /// close and idle flushes).
    fn dispatch(&mut self, key: ConnKey, doer: Option<Doer>, out: &mut Vec<SpanRecord>) {
        let mut reports = std::mem::take(&mut self.reports);
        for report in reports.drain(..) {
            match report {
                Report::Started {
                    seq,
                    traceparent,
                    line,
                } => {
                    let doer = doer.unwrap_or(Doer::thread(0));
                    if !self.started_by_libpq(key, seq, doer) {
                        self.request_started(key, seq, doer, traceparent.as_deref(), line, out);
                    }
                }
                Report::Answering { seq } => {
                    let Some(conn) = self.conns.get(&key) else {
                        continue;
                    };
                    if conn.role == SocketRole::Server
                        && let Some(pending) = conn.pending.get(&seq).copied()
                    {
                        self.stop_serving(key.0, pending.exec, key.1, Some(seq));
                        let unit = doer.map_or(0, |doer| doer.unit);
                        self.answered(pending.ids.span_id, Some(unit), out);
                    }
                }
                Report::Abandoned { seq } => self.abandoned(key, seq, out),
                Report::Lost(loss) => match loss {
                    protocols::Loss::ParseError => {
                        Counters::add(&self.counters.parse_errors, 1);
                    }
                    protocols::Loss::Unseen(n) => {
                        Counters::add(&self.counters.requests_unseen, n);
                    }
                },
                Report::Encrypted => self.wants_libpq(key.0),
                Report::Finished(Finished::Http(exchange)) => {
                    self.exchange_done(key, &exchange, out);
                }
                Report::Finished(Finished::Postgres(query)) => self.query_done(key, *query, out),
                Report::Finished(Finished::Call(call)) => self.call_done(key, call.as_ref(), out),
            }
        }
        self.reports = reports;
    }

    /// Request `seq` on `key` will never finish: it is forgotten everywhere (its thread is no
    /// longer serving it, nor slow because of it) and counted, unless its libpq twin reports it.
    fn abandoned(&mut self, key: ConnKey, seq: u64, out: &mut Vec<SpanRecord>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(pending) = conn.pending.remove(&seq) else {
            return;
        };
        let server = conn.role == SocketRole::Server;
        if pending.libpq.is_none() {
            Counters::add(&self.counters.requests_abandoned, 1);
        }
        if server {
            self.stop_serving(key.0, pending.exec, key.1, Some(seq));
            self.answered(pending.ids.span_id, None, out);
        }
    }

    /// A PostgreSQL query the libpq probes saw sent on this thread (and the wire had not shown
    /// yet) started on `key` as `seq`: it is libpq's, with libpq's span ids. False otherwise.
    fn started_by_libpq(&mut self, key: ConnKey, seq: u64, doer: Doer) -> bool {
        let is_postgres = self.conns.get(&key).is_some_and(|conn| {
            matches!(&conn.protocol, Protocol::Known(parser) if parser.kind() == Kind::Postgres)
        });
        if !is_postgres {
            return false;
        }
        let Some((id, ids)) = self.libpq.claim(key, doer.tid) else {
            return false;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            let pending = Pending {
                ids,
                line: 0,
                tid: doer.tid,
                exec: doer.exec,
                start_ns: self.clock_ns,
                libpq: Some(id),
            };
            conn.pending.insert(seq, pending);
        }
        true
    }

    /// A call of a client protocol finished on `key`: its span.
    fn call_done(
        &mut self,
        key: ConnKey,
        call: &dyn protocols::CallDone,
        out: &mut Vec<SpanRecord>,
    ) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(pending) = conn.pending.remove(&call.seq()) else {
            return;
        };
        let actor = Actor {
            pid: key.0,
            tid: pending.tid,
        };
        let span = call.span(pending.ids, Some(&conn.ends), actor);
        self.finished(span, out);
    }

    /// A query the wire saw finish on `key`: its span, unless libpq reports it.
    fn query_done(&mut self, key: ConnKey, query: postgres::QueryDone, out: &mut Vec<SpanRecord>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(pending) = conn.pending.remove(&query.seq) else {
            return;
        };
        if let Some(id) = pending.libpq {
            self.libpq.wire_done(id, query, key);
            return;
        }
        let actor = Actor {
            pid: key.0,
            tid: pending.tid,
        };
        let span = self.wire_query_span(&query, key, pending.ids, actor);
        self.finished(span, out);
    }

    fn request_started(
        &mut self,
        key: ConnKey,
        seq: u64,
        doer: Doer,
        traceparent: Option<&str>,
        line: u64,
        out: &mut Vec<SpanRecord>,
    ) {
        let Some(role) = self.conns.get(&key).map(|conn| conn.role) else {
            return;
        };
        let ids = match role {
            SocketRole::Client => {
                // The first request on a connection an event loop opened belongs to whoever it
                // was opened for.
                let opened_for = self
                    .conns
                    .get_mut(&key)
                    .and_then(|conn| conn.opened_for.take())
                    .filter(|(opener, _)| *opener == doer.tid);
                match opened_for {
                    Some((_, parent)) => ids_under(parent),
                    None => match self.late_call(key, seq, doer) {
                        Some(ids) => ids,
                        None => self.client_ids(key.0, doer.exec),
                    },
                }
            }
            _ => {
                // A caller's traceparent wins; else the caller's span, when loupe observes both
                // ends of the connection.
                let remote = traceparent
                    .and_then(parse_traceparent)
                    .or_else(|| self.caller_of(key, seq, line));
                let ids = SpanIds {
                    trace_id: remote.map_or_else(new_trace_id, |(trace, _)| trace),
                    span_id: new_span_id(),
                    parent_span_id: remote.map(|(_, parent)| parent),
                    unnested: None,
                };
                if remote.is_none() {
                    self.await_caller(key, seq, line, ids.span_id);
                }
                self.serving
                    .entry((key.0, doer.exec))
                    .or_insert_with(|| self.spare_serving.pop().unwrap_or_default())
                    .push(InFlight {
                        tid: doer.tid,
                        conn_id: key.1,
                        seq,
                        trace_id: ids.trace_id,
                        span_id: ids.span_id,
                        start_ns: self.clock_ns,
                    });
                self.deadlines.watch(
                    OpType::HttpServer,
                    self.clock_ns,
                    Watched::Request {
                        pid: key.0,
                        exec: doer.exec,
                        conn_id: key.1,
                        seq,
                    },
                );
                ids
            }
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            let pending = Pending {
                ids,
                line,
                tid: doer.tid,
                exec: doer.exec,
                start_ns: self.clock_ns,
                libpq: None,
            };
            conn.pending.insert(seq, pending);
            if role == SocketRole::Client
                && let Protocol::Known(parser) = &conn.protocol
            {
                self.deadlines.watch(
                    parser.kind().calls(),
                    self.clock_ns,
                    Watched::Call {
                        key,
                        seq,
                        start_ns: self.clock_ns,
                    },
                );
            }
        }
        if role == SocketRole::Client {
            self.caller_arrived(key, seq, line, ids, out);
        }
    }

    /// The client connection of an observed process that is the other end of server
    /// connection `key`, when both were seen from their start (so their requests are numbered
    /// alike).
    fn caller_conn(&self, key: ConnKey) -> Option<ConnKey> {
        let server = self.conns.get(&key)?;
        if !server.from_start {
            return None;
        }
        let caller = *self.by_local.get(&server.ends.peer?)?;
        (caller != key && self.conns.get(&caller)?.from_start).then_some(caller)
    }

    /// The caller's (trace, span) for request `seq` of server connection `key`: the request of
    /// the same number on the other end, with the same request line, still unanswered there.
    fn caller_of(&self, key: ConnKey, seq: u64, line: u64) -> Option<(u128, u64)> {
        let caller = self.caller_conn(key)?;
        let sent = self.conns.get(&caller)?.pending.get(&seq)?;
        // A call decided late has no trace yet: its callee stays a trace of its own.
        (sent.line == line && !self.late.contains_key(&sent.ids.span_id))
            .then_some((sent.ids.trace_id, sent.ids.span_id))
    }

    /// Request `seq` of server connection `key` was read before its caller's write was
    /// handled: it waits to be linked (until it makes a call).
    fn await_caller(&mut self, key: ConnKey, seq: u64, line: u64, span_id: u64) {
        let Some(caller) = self.caller_conn(key) else {
            return;
        };
        if self
            .conns
            .get(&caller)
            .is_some_and(|conn| conn.pending.contains_key(&seq))
        {
            // The caller's request of that number came already, and is another: no wait.
            return;
        }
        if self.awaiting_caller.len() >= self.limits.max_connections {
            // Past the bound the oldest waits are given up (a held span goes out alone at the
            // next tick).
            self.awaiting_caller.clear();
            self.awaiting_by_span.clear();
        }
        let awaiting = AwaitingCaller {
            server: key,
            seq,
            line,
            span_id,
        };
        self.awaiting_caller.insert((caller, seq), awaiting);
        self.awaiting_by_span.insert(span_id, (caller, seq));
    }

    /// A client request started on `key`: if the other end already read it (and has made no
    /// call since), that request joins this one's trace as its child.
    fn caller_arrived(
        &mut self,
        key: ConnKey,
        seq: u64,
        line: u64,
        ids: SpanIds,
        out: &mut Vec<SpanRecord>,
    ) {
        let Some(awaiting) = self.awaiting_caller.remove(&(key, seq)) else {
            return;
        };
        self.awaiting_by_span.remove(&awaiting.span_id);
        let held = self.held_for_caller.remove(&awaiting.span_id);
        if awaiting.line != line || self.late.contains_key(&ids.span_id) {
            // Not its call (something was lost on one end), or a call without a trace yet.
            out.extend(held.map(|(span, _)| span));
            return;
        }
        if let Some((mut span, _)) = held {
            // Answered already: it goes out now, under its call.
            span.trace_id = ids.trace_id;
            span.parent_span_id = Some(ids.span_id);
            out.push(span);
            return;
        }
        let Some(request) = self
            .conns
            .get_mut(&awaiting.server)
            .and_then(|conn| conn.pending.get_mut(&awaiting.seq))
            .filter(|request| request.ids.span_id == awaiting.span_id)
        else {
            return;
        };
        request.ids.trace_id = ids.trace_id;
        request.ids.parent_span_id = Some(ids.span_id);
        let thread = (awaiting.server.0, request.exec);
        if let Some(serving) = self.serving.get_mut(&thread) {
            for entry in serving.iter_mut().filter(|e| e.span_id == awaiting.span_id) {
                entry.trace_id = ids.trace_id;
            }
        }
    }

    /// Ids for an outbound call the thread or goroutine `exec` of `pid` makes now (at
    /// `clock_ns`).
    fn client_ids(&mut self, pid: u32, exec: u64) -> SpanIds {
        ids_under(self.parent_of_call(pid, exec))
    }

    /// Who moved a record's bytes: in a Go program whose goroutines loupe reads, the goroutine;
    /// for a Transport connection's writer, the goroutine whose request it is writing (net/http
    /// hands each request to the connection's own writing goroutine).
    fn doer_of(&mut self, data: &DataRecord, runtime: Runtime) -> Doer {
        if runtime == Runtime::Tasks {
            return Doer {
                unit: data.goid,
                ..Doer::thread(data.tid)
            };
        }
        if data.goid == 0 || runtime != Runtime::Goroutines {
            return Doer::thread(data.tid);
        }
        self.bind_child(data.pid, data.goid, data.parent_goid);
        let caller = self.go_writing_for.get(&(data.pid, data.goid)).copied();
        Doer {
            tid: data.tid,
            exec: GOROUTINE | caller.unwrap_or(data.goid),
            unit: 0,
        }
    }

    /// The first sight of goroutine `goid` whose parent is `parent`: if `runtime.newproc`
    /// announced it from that parent while the parent served a request (directly, not as a
    /// child itself), it belongs to that request.
    fn bind_child(&mut self, pid: u32, goid: u64, parent: u64) {
        let Some((spawner, request)) = self.go_spawned.remove(&(pid, goid)) else {
            return;
        };
        if spawner != parent || parent == 0 {
            // The announced id went to another goroutine (the spawner moved to another P
            // between newproc's entry and the id's assignment): nothing is known.
            return;
        }
        if let Some(request) = request {
            if self.go_bound.len() >= self.limits.max_connections {
                self.go_bound.clear();
            }
            self.go_bound.insert((pid, goid), request);
        }
    }

    /// The request goroutine `goid` serves now: the only one in flight on it.
    fn served_by(&self, pid: u32, goid: u64) -> Option<ServedRequest> {
        let exec = GOROUTINE | goid;
        let now = self.clock_ns;
        let mut in_flight = self
            .serving
            .get(&(pid, exec))?
            .iter()
            .filter(|request| parent::is_candidate(request, now));
        match (in_flight.next(), in_flight.next()) {
            (Some(only), None) => Some((exec, *only)),
            _ => None,
        }
    }

    /// The request a goroutine was started for, while it is still in flight.
    fn bound_request(&self, pid: u32, exec: u64) -> Option<InFlight> {
        let (owner, request) = self.go_bound.get(&(pid, exec & !GOROUTINE))?;
        self.serving
            .get(&(pid, *owner))?
            .iter()
            .find(|r| r.span_id == request.span_id)
            .copied()
    }

    /// A Go probe fired: a goroutine handed `request` to a connection, a connection's writer
    /// started writing it, or a goroutine started another (`request` is then its goid).
    fn go_call(&mut self, pid: u32, goid: u64, function: GoFunction, request: u64) {
        let limit = self.limits.max_connections;
        match function {
            GoFunction::NewProc => {
                if request == 0 {
                    return;
                }
                if self.go_spawned.len() >= limit {
                    self.go_spawned.clear();
                }
                let served = self.served_by(pid, goid);
                self.go_spawned.insert((pid, request), (goid, served));
            }
            GoFunction::PersistConnRoundTrip => {
                if self.go_callers.len() >= limit {
                    self.go_callers.clear();
                }
                self.go_callers.insert((pid, request), goid);
            }
            GoFunction::RequestWrite => match self.go_callers.remove(&(pid, request)) {
                Some(caller) => {
                    if self.go_writing_for.len() >= limit {
                        self.go_writing_for.clear();
                    }
                    self.go_writing_for.insert((pid, goid), caller);
                }
                // Not a request a Transport call handed over: the writer is itself.
                None => {
                    self.go_writing_for.remove(&(pid, goid));
                }
            },
        }
    }

    /// Gathers what the parent rule needs about a call `tid` of `pid` makes now, and asks it.
    /// An event loop's last read is used up by the call it decides.
    fn parent_of_call(&mut self, pid: u32, exec: u64) -> Parent {
        // A goroutine is a key as a thread is elsewhere; a call whose goroutine went unread
        // says nothing.
        let runtime = match self.runtime(pid) {
            Runtime::Goroutines if exec & GOROUTINE != 0 => Runtime::Threads,
            Runtime::Goroutines => Runtime::SharedThreads,
            runtime => runtime,
        };
        let now = self.clock_ns;
        let in_process = match runtime {
            Runtime::SharedThreads => self
                .serving
                .iter()
                .filter(|((p, _), _)| *p == pid)
                .flat_map(|(_, requests)| requests)
                .filter(|request| parent::is_candidate(request, now))
                .count(),
            _ => 0,
        };
        let last_read = match runtime {
            Runtime::RunToCompletion => self.last_read.remove(&(pid, exec as u32)),
            _ => None,
        };
        let bound: Option<[InFlight; 1]>;
        let mut on_thread = self
            .serving
            .get(&(pid, exec))
            .map(Vec::as_slice)
            .unwrap_or_default();
        if on_thread.is_empty() && exec & GOROUTINE != 0 {
            // A goroutine its request's goroutine started: that request, while in flight.
            bound = self.bound_request(pid, exec).map(|request| [request]);
            if let Some(request) = &bound {
                on_thread = request;
            }
        }
        let parent = parent::decide(&CallContext {
            runtime,
            call_ns: now,
            on_thread,
            in_process,
            last_read,
        });
        if let Parent::Request(request) = parent
            && let Some(key) = self.awaiting_by_span.remove(&request.span_id)
        {
            // Its first call fixed its trace: it can no longer join its caller's.
            self.awaiting_caller.remove(&key);
        }
        parent
    }

    /// Forgets that `tid` serves request `seq` (or every request) of connection `conn_id`.
    fn stop_serving(&mut self, pid: u32, exec: u64, conn_id: u64, seq: Option<u64>) {
        if let Some(list) = self.serving.get_mut(&(pid, exec)) {
            list.retain(|s| !(s.conn_id == conn_id && seq.is_none_or(|seq| s.seq == seq)));
            if list.is_empty()
                && let Some(list) = self.serving.remove(&(pid, exec))
                && self.spare_serving.len() < SPARE_SERVING
            {
                self.spare_serving.push(list);
            }
        }
    }

    fn exchange_done(
        &mut self,
        key: ConnKey,
        exchange: &http1::Exchange,
        out: &mut Vec<SpanRecord>,
    ) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(pending) = conn.pending.remove(&exchange.seq) else {
            return;
        };
        // /proc/net/tcp walks the kernel's whole connection table (milliseconds on a big host),
        // so it is read only when the request itself does not say where it went, and rarely.
        let host_names_port = exchange
            .request
            .host
            .as_deref()
            .is_some_and(|host| split_host(host).1.is_some());
        let needs_lookup = match conn.role {
            SocketRole::Client => conn.ends.peer.is_none(),
            _ => conn.ends.peer.is_none() || !host_names_port,
        };
        if needs_lookup && !conn.looked_up && self.lookups.take(exchange.response_last.exit_ns) {
            conn.looked_up = true;
            if let Some(addrs) = (self.socket_probe)(key.0, conn.fd) {
                conn.ends.learn(addrs.peer, addrs.local);
            }
        }
        let actor = Actor {
            pid: key.0,
            tid: pending.tid,
        };
        let role = conn.role;
        let span = match role {
            SocketRole::Client => {
                client_span(exchange, &conn.ends, pending.ids, actor, &mut self.names)
            }
            _ => server_span(exchange, &conn.ends, pending.ids, actor, &mut self.names),
        };
        if role == SocketRole::Server {
            self.stop_serving(key.0, pending.exec, key.1, Some(exchange.seq));
        }
        self.finished(span, out);
    }

    /// A span is finished: out it goes, unless it is a late call still undecided, or a request
    /// one of those may belong to (then it waits for them).
    fn finished(&mut self, span: SpanRecord, out: &mut Vec<SpanRecord>) {
        if let Some(late) = self.late.get_mut(&span.span_id) {
            late.span = Some(span);
        } else if self.late_by_request.contains_key(&span.span_id) {
            self.held_servers.insert(span.span_id, span);
        } else {
            self.release(span, out);
        }
    }

    /// A span nothing of its own process holds back goes out, unless it is a request still
    /// waiting for its caller's write: then it waits too (bounded by [`CALLER_WAIT_NS`]).
    fn release(&mut self, span: SpanRecord, out: &mut Vec<SpanRecord>) {
        if self.awaiting_by_span.contains_key(&span.span_id)
            && self.held_for_caller.len() < self.limits.max_connections
        {
            self.held_for_caller
                .insert(span.span_id, (span, self.clock_ns));
        } else {
            out.push(span);
        }
    }

    /// Request `span_id`, answered, waited for its caller's write for too long (or loupe is
    /// stopping): it goes out as a trace of its own, counted.
    fn caller_unseen(&mut self, span_id: u64, out: &mut Vec<SpanRecord>) {
        let Some((span, _)) = self.held_for_caller.remove(&span_id) else {
            return;
        };
        if let Some(key) = self.awaiting_by_span.remove(&span_id) {
            self.awaiting_caller.remove(&key);
        }
        Counters::add(&self.counters.callers_unseen, 1);
        out.push(span);
    }

    /// Ids for a call `doer` starts now as request `seq` of `key`, if it is decided late: a
    /// Python thread whose Context was read, with several requests in flight on it.
    fn late_call(&mut self, key: ConnKey, seq: u64, doer: Doer) -> Option<SpanIds> {
        if doer.unit == 0 || self.runtime(key.0) != Runtime::Tasks {
            return None;
        }
        let now = self.clock_ns;
        let candidates: Vec<InFlight> = self
            .serving
            .get(&(key.0, doer.exec))?
            .iter()
            .filter(|request| parent::is_candidate(request, now))
            .copied()
            .collect();
        if candidates.len() < 2 || self.late.len() >= self.limits.max_connections {
            // One candidate is the thread rule's; past the bound it decides (ambiguous) at once.
            return None;
        }
        let ids = SpanIds {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: None,
            unnested: None,
        };
        for request in &candidates {
            self.late_by_request
                .entry(request.span_id)
                .or_default()
                .push(ids.span_id);
        }
        let late = Late {
            call: LateCall::new(doer.unit, candidates),
            key,
            seq,
            since_ns: now,
            trace_id: ids.trace_id,
            span: None,
        };
        self.late.insert(ids.span_id, late);
        Some(ids)
    }

    /// Request `span_id` started its response from Context `unit` (0: not read), or left
    /// without one (None): the late calls it may have made learn it; those that wait for
    /// nothing more are decided.
    fn answered(&mut self, span_id: u64, unit: Option<u64>, out: &mut Vec<SpanRecord>) {
        let Some(calls) = self.late_by_request.get(&span_id).cloned() else {
            return;
        };
        for call in calls {
            let done = self
                .late
                .get_mut(&call)
                .is_some_and(|late| late.call.answered(span_id, unit));
            if done {
                self.settle(call, out);
            }
        }
    }

    /// Decides late call `call_span` with what is known now; its span goes out (or its ids are
    /// set for when its exchange ends), then any request span that waited only for it.
    fn settle(&mut self, call_span: u64, out: &mut Vec<SpanRecord>) {
        let Some(late) = self.late.remove(&call_span) else {
            return;
        };
        let ids = match late.call.decide() {
            Parent::Request(request) => {
                if let Some(key) = self.awaiting_by_span.remove(&request.span_id) {
                    self.awaiting_caller.remove(&key);
                }
                SpanIds {
                    trace_id: self.trace_of(late.key.0, &request),
                    span_id: call_span,
                    parent_span_id: Some(request.span_id),
                    unnested: None,
                }
            }
            Parent::Unnested(why) => SpanIds {
                trace_id: late.trace_id,
                span_id: call_span,
                parent_span_id: None,
                unnested: Some(why),
            },
        };
        match late.span {
            Some(mut span) => {
                span.trace_id = ids.trace_id;
                span.parent_span_id = ids.parent_span_id;
                ids.mark(&mut span);
                out.push(span);
            }
            None => {
                if let Some(pending) = self
                    .conns
                    .get_mut(&late.key)
                    .and_then(|conn| conn.pending.get_mut(&late.seq))
                    .filter(|pending| pending.ids.span_id == call_span)
                {
                    pending.ids = ids;
                }
            }
        }
        for request in late.call.candidates() {
            let Some(calls) = self.late_by_request.get_mut(&request) else {
                continue;
            };
            calls.retain(|id| *id != call_span);
            if calls.is_empty() {
                self.late_by_request.remove(&request);
                if let Some(span) = self.held_servers.remove(&request) {
                    self.release(span, out);
                }
            }
        }
    }

    /// The trace request `request` of `pid` is in now (its caller may have been linked since
    /// it was read).
    fn trace_of(&self, pid: u32, request: &InFlight) -> u128 {
        if let Some(span) = self.held_servers.get(&request.span_id) {
            return span.trace_id;
        }
        self.conns
            .get(&(pid, request.conn_id))
            .and_then(|conn| conn.pending.get(&request.seq))
            .filter(|pending| pending.ids.span_id == request.span_id)
            .map_or(request.trace_id, |pending| pending.ids.trace_id)
    }
}

/// Which half of an exchange bytes moving `direction` carry for a target playing `role`.
fn flow_of(role: SocketRole, direction: Direction) -> Flow {
    match (role, direction) {
        (SocketRole::Client, Direction::Egress) | (SocketRole::Server, Direction::Ingress) => {
            Flow::Request
        }
        _ => Flow::Response,
    }
}

/// What a protocol may ask the stitcher while it recognises connection `key`.
struct Around<'a> {
    stitcher: &'a mut Stitcher,
    key: ConnKey,
    now_ns: u64,
}

impl Surroundings for Around<'_> {
    fn resumed_database(&mut self) -> Option<String> {
        self.stitcher.resumed_database(self.key, self.now_ns)
    }
}

/// Span ids for a call the parent rule decided on.
fn ids_under(parent: Parent) -> SpanIds {
    match parent {
        Parent::Request(request) => SpanIds {
            trace_id: request.trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(request.span_id),
            unnested: None,
        },
        Parent::Unnested(why) => SpanIds {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: None,
            unnested: Some(why),
        },
    }
}

#[path = "stitcher_processes.rs"]
mod processes;
#[cfg(test)]
#[path = "stitcher_tests.rs"]
mod tests;
