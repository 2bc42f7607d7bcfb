//! One client connection's queries, paired with their completions.

use std::collections::{HashMap, VecDeque};

use super::{
    framing::{Framer, Message, backend_kind, frontend_kind},
    messages::{self, Opening},
};
use crate::protocols::{Chunk, Flow, Timing};

/// Prepared statements and portals remembered per connection, at most.
const MAX_NAMED: usize = 512;

/// A finished query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryDone {
    pub seq: u64,
    /// The statement as sent (literals included: normalize before exporting).
    pub text: String,
    /// The text was not captured whole.
    pub text_truncated: bool,
    /// The prepared statement it executed, when its text is unknown (prepared before attach).
    pub statement_name: Option<String>,
    /// The chunk that sent it.
    pub start: Timing,
    /// The chunk that completed it.
    pub end: Timing,
    /// Rows returned or affected: the CommandComplete tag's count, else the DataRows seen.
    pub rows: Option<u64>,
    /// SQLSTATE of the ErrorResponse that ended it.
    pub sqlstate: Option<String>,
    /// The database of the session, when its StartupMessage was seen.
    pub database: Option<String>,
    /// A hash of the parameter values bound to it (extended protocol, Bind seen whole): equal
    /// for the same statement run with the same values. Never exported.
    pub values: Option<u64>,
}

/// What a chunk started or finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgEvent {
    Started {
        seq: u64,
    },
    Done(QueryDone),
    /// The server skipped this execution (an earlier one in its Sync batch failed): it will
    /// never finish.
    Skipped {
        seq: u64,
    },
}

/// Counters of what did not parse or pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgStats {
    pub lost_framing: u64,
    /// Executions after an error in the same Sync batch: the server skipped them.
    pub skipped: u64,
    pub unanswered: u64,
}

struct Pending {
    seq: u64,
    text: String,
    text_truncated: bool,
    statement_name: Option<String>,
    values: Option<u64>,
    start: Timing,
    simple: bool,
    data_rows: u64,
    tag_rows: Option<u64>,
    sqlstate: Option<String>,
    /// An extended execution that finished; kept until its turn if an earlier one has not.
    finished: Option<Timing>,
}

/// What a Query or an Execute starts.
struct Started {
    text: String,
    text_truncated: bool,
    statement_name: Option<String>,
    values: Option<u64>,
    simple: bool,
}

/// Each ReadyForQuery answers one of these, in order.
enum Marker {
    Simple(u64),
    Sync,
}

pub struct PgConversation {
    frontend: Framer,
    backend: Framer,
    /// The client asked for TLS or GSS: the server's next byte is an unframed yes or no.
    encryption_asked: bool,
    /// TLS or GSS encryption was accepted: nothing more can be read.
    opaque: bool,
    database: Option<String>,
    /// Statement name -> (text, whether the Parse was cut short).
    statements: HashMap<String, (String, bool)>,
    /// Portal -> (statement, hash of its bound values).
    portals: HashMap<String, (String, Option<u64>)>,
    pending: VecDeque<Pending>,
    markers: VecDeque<Marker>,
    next_seq: u64,
    stats: PgStats,
    messages: Vec<Message>,
    /// The last chunk the server sent: where a query ends when its completion went unseen.
    last_backend: Option<Timing>,
}

impl Default for PgConversation {
    fn default() -> Self {
        Self::new()
    }
}

impl PgConversation {
    pub fn new() -> Self {
        Self {
            frontend: Framer::new(true, frontend_kind),
            backend: Framer::new(false, backend_kind),
            encryption_asked: false,
            opaque: false,
            database: None,
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
            markers: VecDeque::new(),
            next_seq: 0,
            stats: PgStats::default(),
            messages: Vec::new(),
            last_backend: None,
        }
    }

    /// A session loupe did not see open: its first bytes are typed messages already.
    /// `database` is what was learnt of it elsewhere.
    pub fn resumed(database: Option<String>) -> Self {
        let mut conversation = Self::new();
        conversation.frontend = Framer::new(false, frontend_kind);
        conversation.database = database;
        conversation
    }

    pub fn stats(&self) -> PgStats {
        let mut stats = self.stats;
        stats.lost_framing = self.frontend.lost + self.backend.lost;
        stats
    }

    /// True once the session switched to TLS or GSS encryption.
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    pub fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<PgEvent>) {
        if self.opaque {
            return;
        }
        let at = Timing::of(&chunk);
        let mut messages = std::mem::take(&mut self.messages);
        match chunk.flow {
            Flow::Request => {
                // The server's framing was lost in an unseen tail (a large result): the client
                // speaking again means what it waited for has arrived.
                if self.backend.is_lost() {
                    self.finish_unseen(out);
                }
                self.frontend
                    .feed(chunk.captured, chunk.total_len, &mut messages);
                for message in messages.drain(..) {
                    self.on_frontend(message, at, out);
                }
            }
            Flow::Response => {
                self.last_backend = Some(at);
                let (mut captured, mut total) = (chunk.captured, chunk.total_len);
                if self.encryption_asked {
                    self.encryption_asked = false;
                    match captured.first() {
                        Some(b'N') => self.frontend.expect_untyped(),
                        _ => {
                            self.opaque = true;
                            return;
                        }
                    }
                    captured = &captured[1..];
                    total = total.saturating_sub(1);
                }
                self.backend.feed(captured, total, &mut messages);
                for message in messages.drain(..) {
                    self.on_backend(message, at, out);
                }
            }
        }
        self.messages = messages;
    }

    /// Ends every query sent, at the server's last chunk, with what was seen of its result.
    fn finish_unseen(&mut self, out: &mut Vec<PgEvent>) {
        let Some(end) = self.last_backend else { return };
        for query in self.pending.iter_mut().filter(|p| p.finished.is_none()) {
            query.finished = Some(end);
            // Rows past the lost framing were not counted: say nothing rather than too few.
            if query.tag_rows.is_none() {
                query.data_rows = 0;
            }
        }
        self.markers.clear();
        self.emit_finished(out);
    }

    /// The connection closed: what the server answered unseen ends; queries without an answer
    /// are counted and dropped.
    pub fn close(&mut self, out: &mut Vec<PgEvent>) {
        if self.backend.is_lost() {
            self.finish_unseen(out);
        }
        self.stats.unanswered += self.pending.len() as u64;
        self.pending.clear();
        self.markers.clear();
    }

    fn start(&mut self, query: Started, at: Timing, out: &mut Vec<PgEvent>) {
        let Started {
            text,
            text_truncated,
            statement_name,
            values,
            simple,
        } = query;
        let seq = self.next_seq;
        self.next_seq += 1;
        if simple {
            self.markers.push_back(Marker::Simple(seq));
        }
        self.pending.push_back(Pending {
            seq,
            text,
            text_truncated,
            statement_name,
            values,
            start: at,
            simple,
            data_rows: 0,
            tag_rows: None,
            sqlstate: None,
            finished: None,
        });
        out.push(PgEvent::Started { seq });
    }

    fn on_frontend(&mut self, message: Message, at: Timing, out: &mut Vec<PgEvent>) {
        match message.kind {
            0 => match messages::opening(&message.body) {
                Opening::Startup { database } => self.database = database,
                Opening::Encryption => self.encryption_asked = true,
                Opening::Other => {}
            },
            b'Q' => {
                let (text, _) = messages::cstr(&message.body);
                let query = Started {
                    text,
                    text_truncated: message.truncated,
                    statement_name: None,
                    values: None,
                    simple: true,
                };
                self.start(query, at, out);
            }
            b'P' => {
                let (name, query) = messages::parse(&message.body);
                remember(&mut self.statements, name, (query, message.truncated));
            }
            b'B' => {
                let (portal, statement, values) = messages::bind(&message.body);
                let values = (!message.truncated).then(|| values_key(values));
                remember(&mut self.portals, portal, (statement, values));
            }
            b'E' => {
                let (portal, _) = messages::cstr(&message.body);
                let bound = self.portals.get(&portal);
                let text = bound.and_then(|(statement, _)| self.statements.get(statement));
                // A statement prepared before attach: its name stands for it.
                let statement_name = match text {
                    Some(_) => None,
                    None => bound
                        .map(|(statement, _)| statement.clone())
                        .filter(|name| !name.is_empty()),
                };
                let (text, text_truncated) = text.cloned().unwrap_or_default();
                let query = Started {
                    text,
                    text_truncated,
                    statement_name,
                    values: bound.and_then(|(_, values)| *values),
                    simple: false,
                };
                self.start(query, at, out);
            }
            b'S' => self.markers.push_back(Marker::Sync),
            _ => {}
        }
    }

    /// The oldest query still waiting for its result.
    fn current(&mut self) -> Option<&mut Pending> {
        self.pending.iter_mut().find(|p| p.finished.is_none())
    }

    fn on_backend(&mut self, message: Message, at: Timing, out: &mut Vec<PgEvent>) {
        match message.kind {
            b'D' => {
                if let Some(query) = self.current() {
                    query.data_rows += 1;
                }
            }
            b'C' | b'I' | b's' => {
                let (tag, _) = messages::cstr(&message.body);
                if let Some(query) = self.current() {
                    if let Some(rows) = messages::tag_rows(&tag) {
                        query.tag_rows = Some(query.tag_rows.unwrap_or(0) + rows);
                    }
                    if !query.simple {
                        query.finished = Some(at);
                    }
                }
            }
            b'E' => {
                let state = messages::sqlstate(&message.body);
                if let Some(query) = self.current() {
                    query.sqlstate = query.sqlstate.take().or(state);
                    if !query.simple {
                        query.finished = Some(at);
                    }
                }
            }
            b'Z' => match self.markers.pop_front() {
                Some(Marker::Simple(seq)) => {
                    if let Some(query) = self.pending.iter_mut().find(|p| p.seq == seq) {
                        query.finished = Some(at);
                    }
                }
                Some(Marker::Sync) => {
                    // Executions of this batch still unanswered were skipped after an error.
                    let mut skipped = 0;
                    self.pending.retain(|p| {
                        let skip = !p.simple && p.finished.is_none();
                        if skip {
                            out.push(PgEvent::Skipped { seq: p.seq });
                            skipped += 1;
                        }
                        !skip
                    });
                    self.stats.skipped += skipped;
                }
                None => {}
            },
            _ => {}
        }
        self.emit_finished(out);
    }

    /// Reports finished queries in the order they were sent.
    fn emit_finished(&mut self, out: &mut Vec<PgEvent>) {
        while self.pending.front().is_some_and(|p| p.finished.is_some()) {
            let Some(query) = self.pending.pop_front() else {
                break;
            };
            let end = query.finished.unwrap_or(query.start);
            out.push(PgEvent::Done(QueryDone {
                seq: query.seq,
                text: query.text,
                text_truncated: query.text_truncated,
                statement_name: query.statement_name,
                start: query.start,
                end,
                rows: query
                    .tag_rows
                    .or((query.data_rows > 0).then_some(query.data_rows)),
                sqlstate: query.sqlstate,
                database: self.database.clone(),
                values: query.values,
            }));
        }
    }
}

/// The identity of a Bind's values (formats included: the same bytes in text and binary are
/// different values).
fn values_key(values: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(values);
    hasher.finish()
}

fn remember<V>(map: &mut HashMap<String, V>, key: String, value: V) {
    if map.len() >= MAX_NAMED && !map.contains_key(&key) {
        // Clients that never close statements: forget them all rather than grow.
        map.clear();
    }
    map.insert(key, value);
}
