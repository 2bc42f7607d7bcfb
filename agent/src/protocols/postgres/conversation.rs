//! One client connection's queries, paired with their completions (see `pairing`).

use std::{collections::VecDeque, num::NonZeroUsize};

use lru::LruCache;
use rustc_hash::FxBuildHasher;

use super::{
    framing::{Framer, Message, backend_kind, frontend_kind},
    messages::{self, Opening},
    pairing::{self, Answer, Batch, MAX_MARKERS, MAX_WAITING, Marker, Pending, Point, Settled},
};
use crate::protocols::{Chunk, Flow, Loss, Timing};

/// Prepared statements and portals remembered per connection, at most: past it the one least
/// recently used is forgotten (its executions then run under its name, their text unknown).
const MAX_NAMED: NonZeroUsize = NonZeroUsize::new(512).unwrap();

/// Names remembered on a connection, least recently used forgotten first.
type Named<V> = LruCache<String, V, FxBuildHasher>;

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
    /// This query will never finish: its answer was lost (the server answered a later one), or
    /// too many were waiting.
    Abandoned {
        seq: u64,
    },
    /// Something on the connection that could not be read.
    Lost(Loss),
    /// The server accepted TLS or GSS encryption: nothing more on the socket can be read.
    Encrypted,
}

/// Counters of what did not parse or pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Times a direction's framing was lost (a header past the captured bytes, or malformed).
    pub lost_framing: u64,
    /// Of those, headers that were not PostgreSQL's.
    pub malformed: u64,
    /// Executions after an error in the same Sync batch: the server skipped them.
    pub skipped: u64,
    pub unanswered: u64,
    /// Queries whose answer was lost: a later sync point's answer came first.
    pub answers_lost: u64,
    /// Answers to a query loupe did not see sent.
    pub requests_unseen: u64,
    /// Queries dropped because too many were waiting for their answer.
    pub overflowed: u64,
}

/// What a Query or an Execute starts.
struct Started {
    text: String,
    text_truncated: bool,
    statement_name: Option<String>,
    values: Option<u64>,
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
    statements: Named<(String, bool)>,
    /// Portal -> (statement, hash of its bound values).
    portals: Named<(String, Option<u64>)>,
    /// Sync points sent and not yet answered, oldest first, with the queries they close.
    markers: VecDeque<Marker>,
    /// Extended-protocol messages sent since the last Sync, and the executions among them.
    open: Batch,
    open_queries: Vec<Pending>,
    open_dropped: usize,
    /// Queries sent and not yet answered, in `markers` and `open_queries`.
    waiting: usize,
    /// What the server said since its last ReadyForQuery.
    answer: Answer,
    /// ReadyForQuery messages still to come in the chunk being read.
    ready_ahead: usize,
    /// The client was seen sending a sync point before reading the answer to the last one:
    /// answers are paired with the oldest sync point they fit, not the newest.
    pipelined: bool,
    /// The last ReadyForQuery answered a sync point past older ones (whose answers were taken
    /// as lost).
    resynced: bool,
    /// Sync points sent on this connection.
    points_sent: u64,
    /// Malformed headers already reported.
    malformed_reported: u64,
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
            statements: LruCache::with_hasher(MAX_NAMED, FxBuildHasher),
            portals: LruCache::with_hasher(MAX_NAMED, FxBuildHasher),
            markers: VecDeque::new(),
            open: Batch::default(),
            open_queries: Vec::new(),
            open_dropped: 0,
            waiting: 0,
            answer: Answer::default(),
            ready_ahead: 0,
            pipelined: false,
            resynced: false,
            points_sent: 0,
            malformed_reported: 0,
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
        stats.malformed = self.frontend.malformed + self.backend.malformed;
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
                let points = self.points_sent;
                for message in messages.drain(..) {
                    self.on_frontend(message, at, out);
                }
                if self.points_sent >= points + 2 {
                    // Two sync points in one write: this client does not wait for answers.
                    self.pipelined = true;
                }
                if self.frontend.is_lost()
                    && (self.open != Batch::default() || self.open_dropped > 0)
                {
                    // The batch's Sync is past what could be read: its answer ends it.
                    self.seal(at, out);
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
                            out.push(PgEvent::Encrypted);
                            return;
                        }
                    }
                    captured = &captured[1..];
                    total = total.saturating_sub(1);
                }
                self.backend
                    .feed_ending(captured, total, chunk.tail, &mut messages);
                self.ready_ahead = messages.iter().filter(|m| m.kind == b'Z').count();
                for message in messages.drain(..) {
                    self.on_backend(message, at, out);
                }
            }
        }
        self.messages = messages;
        self.report_malformed(out);
    }

    /// Each header that was not PostgreSQL's is a parse error (a header past the captured
    /// bytes is not: those bytes were never read).
    fn report_malformed(&mut self, out: &mut Vec<PgEvent>) {
        let malformed = self.frontend.malformed + self.backend.malformed;
        for _ in self.malformed_reported..malformed {
            out.push(PgEvent::Lost(Loss::ParseError));
        }
        self.malformed_reported = malformed;
    }

    /// Ends every query sent, at the server's last chunk, with what was seen of its result.
    fn finish_unseen(&mut self, out: &mut Vec<PgEvent>) {
        let Some(last) = self.last_backend else {
            return;
        };
        let answer = std::mem::take(&mut self.answer);
        let mut markers = std::mem::take(&mut self.markers);
        if self.open != Batch::default() || !self.open_queries.is_empty() {
            self.seal(last, out);
            markers.extend(self.markers.drain(..));
        }
        // The oldest sync point's answer was being read: what was seen of it is its.
        let mut answer = Some(answer);
        for marker in markers {
            let answer = answer.take().unwrap_or_default();
            for settled in pairing::settle(marker, answer, last, true) {
                self.settled(settled, out);
            }
        }
        self.waiting = 0;
        self.resynced = false;
    }

    /// The connection closed: what the server answered unseen ends; queries without an answer
    /// are counted and dropped.
    pub fn close(&mut self, out: &mut Vec<PgEvent>) {
        if self.backend.is_lost() {
            self.finish_unseen(out);
        }
        self.stats.unanswered += self.waiting as u64;
        self.markers.clear();
        self.open = Batch::default();
        self.open_queries.clear();
        self.open_dropped = 0;
        self.waiting = 0;
        self.answer = Answer::default();
    }

    /// A query sent: it gets its number now and waits for its answer.
    fn start(&mut self, query: Started, at: Timing, out: &mut Vec<PgEvent>) -> Pending {
        let Started {
            text,
            text_truncated,
            statement_name,
            values,
        } = query;
        if self.waiting >= MAX_WAITING {
            self.drop_oldest(out);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting += 1;
        out.push(PgEvent::Started { seq });
        Pending {
            seq,
            text,
            text_truncated,
            statement_name,
            values,
            start: at,
        }
    }

    /// Too many queries wait for their answer: the oldest is given up.
    fn drop_oldest(&mut self, out: &mut Vec<PgEvent>) {
        let oldest = match self.markers.iter_mut().find(|m| !m.queries.is_empty()) {
            Some(marker) => {
                marker.dropped += 1;
                marker.queries.remove(0)
            }
            None if !self.open_queries.is_empty() => {
                self.open_dropped += 1;
                self.open_queries.remove(0)
            }
            None => return,
        };
        self.waiting -= 1;
        self.stats.overflowed += 1;
        out.push(PgEvent::Abandoned { seq: oldest.seq });
    }

    /// A sync point sent: the oldest is given up when too many wait.
    fn send_point(&mut self, marker: Marker, out: &mut Vec<PgEvent>) {
        self.bound_markers(out);
        self.points_sent += 1;
        self.markers.push_back(marker);
    }

    /// Makes room for one more sync point.
    fn bound_markers(&mut self, out: &mut Vec<PgEvent>) {
        if self.markers.len() >= MAX_MARKERS
            && let Some(oldest) = self.markers.pop_front()
        {
            self.stats.overflowed += oldest.queries.len() as u64;
            self.abandon(oldest, out);
        }
    }

    /// Closes the batch of extended-protocol messages sent since the last Sync, whose Sync went
    /// unseen (the client's framing was lost).
    fn seal(&mut self, at: Timing, out: &mut Vec<PgEvent>) {
        let marker = Marker {
            point: Point::Unknown,
            sent: at,
            queries: std::mem::take(&mut self.open_queries),
            dropped: std::mem::take(&mut self.open_dropped),
        };
        self.open = Batch::default();
        self.bound_markers(out);
        self.markers.push_back(marker);
    }

    /// Gives up a sync point's queries: they will never finish.
    fn abandon(&mut self, marker: Marker, out: &mut Vec<PgEvent>) {
        self.waiting -= marker.queries.len();
        for query in marker.queries {
            out.push(PgEvent::Abandoned { seq: query.seq });
        }
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
                };
                let query = self.start(query, at, out);
                let marker = Marker {
                    point: Point::Simple,
                    sent: at,
                    queries: vec![query],
                    dropped: 0,
                };
                self.send_point(marker, out);
            }
            b'P' => {
                let (name, query) = messages::parse(&message.body);
                self.statements.put(name, (query, message.truncated));
                self.open.parses += 1;
            }
            b'B' => {
                let (portal, statement, values) = messages::bind(&message.body);
                let values = (!message.truncated).then(|| values_key(values));
                self.portals.put(portal, (statement, values));
                self.open.binds += 1;
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
                };
                let query = self.start(query, at, out);
                self.open_queries.push(query);
                self.open.executions += 1;
            }
            b'S' => {
                let marker = Marker {
                    point: Point::Sync(self.open),
                    sent: at,
                    queries: std::mem::take(&mut self.open_queries),
                    dropped: std::mem::take(&mut self.open_dropped),
                };
                self.open = Batch::default();
                self.send_point(marker, out);
            }
            _ => {}
        }
    }

    fn on_backend(&mut self, message: Message, at: Timing, out: &mut Vec<PgEvent>) {
        match message.kind {
            b'D' => self.answer.row(),
            b'1' => self.answer.parse_complete(),
            b'2' => self.answer.bind_complete(),
            b'C' => {
                let (tag, _) = messages::cstr(&message.body);
                self.answer.complete(at, messages::tag_rows(&tag), false);
            }
            b'I' => self.answer.complete(at, None, false),
            b's' => self.answer.complete(at, None, true),
            b'E' => self.answer.error(at, messages::sqlstate(&message.body)),
            b'Z' => {
                self.ready_ahead = self.ready_ahead.saturating_sub(1);
                self.ready(at, out);
            }
            _ => {}
        }
    }

    /// A ReadyForQuery: the sync point it answers ends, with what the server said before it;
    /// older ones whose answers went unseen are given up.
    fn ready(&mut self, at: Timing, out: &mut Vec<PgEvent>) {
        let answer = std::mem::take(&mut self.answer);
        let markers = self.markers.make_contiguous();
        let Some(index) = pairing::pick(markers, &answer, at, self.ready_ahead, !self.pipelined)
        else {
            if !answer.is_empty() {
                // The answer to something loupe did not see sent (a lost chunk, a query sent
                // before attach).
                self.stats.requests_unseen += 1;
                out.push(PgEvent::Lost(Loss::Unseen(1)));
                if self.resynced {
                    // The sync points given up were answered after all: this client sends
                    // before it reads.
                    self.pipelined = true;
                }
            }
            self.resynced = false;
            return;
        };
        for _ in 0..index {
            if let Some(lost) = self.markers.pop_front() {
                self.stats.answers_lost += lost.queries.len() as u64;
                self.abandon(lost, out);
            }
        }
        self.resynced = index > 0;
        let Some(marker) = self.markers.pop_front() else {
            return;
        };
        self.waiting -= marker.queries.len();
        for settled in pairing::settle(marker, answer, at, false) {
            self.settled(settled, out);
        }
    }

    fn settled(&mut self, settled: Settled, out: &mut Vec<PgEvent>) {
        match settled {
            Settled::Done {
                query,
                end,
                rows,
                sqlstate,
            } => {
                let done = self.done(query, end, rows, sqlstate);
                out.push(PgEvent::Done(done));
            }
            Settled::Skipped(query) => {
                // Executions of this batch still unanswered were skipped after an error.
                self.stats.skipped += 1;
                out.push(PgEvent::Skipped { seq: query.seq });
            }
        }
    }

    fn done(
        &self,
        query: Pending,
        end: Timing,
        rows: Option<u64>,
        sqlstate: Option<String>,
    ) -> QueryDone {
        QueryDone {
            seq: query.seq,
            text: query.text,
            text_truncated: query.text_truncated,
            statement_name: query.statement_name,
            start: query.start,
            end,
            rows,
            sqlstate,
            database: self.database.clone(),
            values: query.values,
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
