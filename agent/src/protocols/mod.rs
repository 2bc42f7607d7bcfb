//! Protocol parsers: pure functions from captured socket bytes to messages, with no I/O, so they
//! can be golden-tested on captured payloads and fuzzed. Each parser takes the same [`Chunk`]s:
//! one per syscall, with the count of bytes moved and the captured prefix of them.
//!
//! The seam the stitcher sees: a protocol is a [`ProtocolSpec`] in [`PROTOCOLS`] that
//! recognises a connection from its first bytes and gives it a [`Parser`], which turns each
//! chunk into [`Report`]s: a request started, its answer started, it was abandoned, it finished.
//! The stitcher keeps connections, threads and parents and never looks inside a protocol; where
//! the plaintext came from (a socket syscall, later a TLS library) a parser never knows.

pub mod http1;
pub mod postgres;
pub mod redis;
pub mod sniff;

use loupe_common::SocketRole;

use crate::spans::{
    Actor, Endpoints, SpanIds,
    model::{OpType, SpanRecord},
};

/// What a protocol tells the stitcher about a connection, in the order it happened.
#[derive(Debug)]
pub enum Report {
    /// Request `seq` began: on a server connection a request was read, on a client connection
    /// a call was sent. It gets span ids (and a call its parent) now.
    Started {
        seq: u64,
        /// The caller's W3C trace context, where the request carried one.
        traceparent: Option<String>,
        /// The request's identity on both ends of the connection (0 where the protocol has none):
        /// pairs a caller's request with what its callee read.
        line: u64,
    },
    /// The answer to request `seq` began: a server's request is no longer in flight.
    Answering { seq: u64 },
    /// Request `seq` will never finish (a lost event, an evicted request, a bound reached):
    /// forget it, counted.
    Abandoned { seq: u64 },
    /// Request `seq` finished: what its span is made of.
    Finished(Finished),
    /// Something on the connection the protocol could not see or read, counted.
    Lost(Loss),
    /// The connection's session is encrypted from here on (the server accepted TLS or GSS):
    /// the socket's bytes tell nothing more, and another source of the protocol (libpq) may.
    Encrypted,
}

/// What a protocol could not see or read (every loss is counted: `stats::Counters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Bytes that did not parse as the protocol; it resyncs at its next message.
    ParseError,
    /// This many requests were there but could not be read (past the captured bytes).
    Unseen(u64),
}

/// A finished exchange, as its protocol saw it. HTTP (either side of a connection) and
/// PostgreSQL (which libpq may report too) are the stitcher's to turn into spans; any other
/// protocol's call makes its own span ([`CallDone`]).
#[derive(Debug)]
pub enum Finished {
    Http(Box<http1::Exchange>),
    Postgres(Box<postgres::QueryDone>),
    Call(Box<dyn CallDone>),
}

/// A finished call of a client protocol, which knows how to be a span.
pub trait CallDone: std::fmt::Debug + Send {
    /// Its request's number on the connection (as `Report::Started` said).
    fn seq(&self) -> u64;
    /// Its CLIENT span, with the ids it was given when it started, over `ends`.
    fn span(&self, ids: SpanIds, ends: Option<&Endpoints>, actor: Actor) -> SpanRecord;
}

/// Which protocol a parser speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Http,
    Postgres,
    Redis,
}

impl Kind {
    /// What its calls are (the threshold past which one is slow).
    pub fn calls(self) -> OpType {
        match self {
            Self::Http => OpType::HttpClient,
            Self::Postgres => OpType::DbClient,
            Self::Redis => OpType::CacheClient,
        }
    }
}

/// One connection's protocol state.
pub trait Parser: Send {
    fn kind(&self) -> Kind;
    /// Consumes one chunk, appending what it started or finished to `out`.
    fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<Report>);
    /// The connection closed: what was in progress ends or is abandoned.
    fn close(&mut self, out: &mut Vec<Report>);
    /// Ends what can only end by silence (an unframed response) when its last bytes are older
    /// than `idle_ns`.
    fn flush_idle(&mut self, _now_ns: u64, _idle_ns: u64, _out: &mut Vec<Report>) {}
}

/// A protocol's conversation behind the seam: its own events, turned into [`Report`]s by
/// `report`. Each protocol keeps its conversation's API (and its golden tests) and plugs in with
/// one `Adapted::new`.
pub struct Adapted<C, E> {
    kind: Kind,
    conversation: C,
    events: Vec<E>,
    push: fn(&mut C, Chunk<'_>, &mut Vec<E>),
    close: fn(&mut C, &mut Vec<E>),
    flush_idle: Option<FlushIdle<C, E>>,
    report: fn(E) -> Report,
}

/// A conversation's `flush_idle(now_ns, idle_ns, out)`.
type FlushIdle<C, E> = fn(&mut C, u64, u64, &mut Vec<E>);

impl<C, E> Adapted<C, E> {
    pub fn new(
        kind: Kind,
        conversation: C,
        push: fn(&mut C, Chunk<'_>, &mut Vec<E>),
        close: fn(&mut C, &mut Vec<E>),
        report: fn(E) -> Report,
    ) -> Self {
        Self {
            kind,
            conversation,
            events: Vec::new(),
            push,
            close,
            flush_idle: None,
            report,
        }
    }

    /// With what ends by silence (an unframed response).
    pub fn with_flush_idle(mut self, flush_idle: FlushIdle<C, E>) -> Self {
        self.flush_idle = Some(flush_idle);
        self
    }

    fn drain(&mut self, out: &mut Vec<Report>) {
        out.extend(self.events.drain(..).map(self.report));
    }
}

impl<C: Send, E: Send> Parser for Adapted<C, E> {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<Report>) {
        (self.push)(&mut self.conversation, chunk, &mut self.events);
        self.drain(out);
    }

    fn close(&mut self, out: &mut Vec<Report>) {
        (self.close)(&mut self.conversation, &mut self.events);
        self.drain(out);
    }

    fn flush_idle(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<Report>) {
        if let Some(flush_idle) = self.flush_idle {
            flush_idle(&mut self.conversation, now_ns, idle_ns, &mut self.events);
            self.drain(out);
        }
    }
}

/// What a connection's first chunk (of those loupe saw) says, with the pieces written or read
/// just before it in the same direction when they were too short to tell ([`sniff`]).
#[derive(Clone, Copy, Debug)]
pub struct First<'a> {
    pub captured: &'a [u8],
    pub total_len: usize,
    /// Written by the target (else read).
    pub egress: bool,
    /// The role known so far (from accept/connect; Unknown for a socket open before attach).
    pub role: SocketRole,
    /// The connection's accept or connect was seen: these are its first bytes.
    pub opened: bool,
}

/// A protocol recognised on a connection: the role that makes the target play, its parser.
pub struct Recognised {
    pub role: SocketRole,
    pub parser: Box<dyn Parser>,
}

/// What the stitcher can tell a protocol about the connection while recognising it.
pub trait Surroundings {
    /// The database a session found already open belongs to, when it can be learnt.
    fn resumed_database(&mut self) -> Option<String>;
}

/// A protocol loupe knows.
pub struct ProtocolSpec {
    pub name: &'static str,
    pub recognise: fn(&First<'_>, &mut dyn Surroundings) -> Option<Recognised>,
}

/// Every protocol, asked in this order.
pub const PROTOCOLS: &[ProtocolSpec] = &[http1::SPEC, postgres::SPEC, redis::SPEC];

/// The first protocol that recognises `first`.
pub fn recognise(first: &First<'_>, surroundings: &mut dyn Surroundings) -> Option<Recognised> {
    PROTOCOLS
        .iter()
        .find_map(|spec| (spec.recognise)(first, surroundings))
}

/// Whether unrecognised bytes could still be the answer half of a protocol loupe knows (keep
/// looking rather than give the connection up).
pub fn may_answer(bytes: &[u8]) -> bool {
    http1::looks_like_response(bytes)
}

/// Which half of an exchange a chunk carries: on a server socket reads are requests, on a
/// client socket writes are (for PostgreSQL: the frontend's messages are the requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Request,
    Response,
}

/// The bytes one syscall moved.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub flow: Flow,
    /// Syscall entry, ns since boot.
    pub enter_ns: u64,
    /// Syscall return, ns since boot.
    pub exit_ns: u64,
    /// The first bytes moved (`len() <= total_len`).
    pub captured: &'a [u8],
    /// Every byte moved.
    pub total_len: usize,
    /// The last bytes moved, when they were past `captured` (a long read), else empty.
    pub tail: &'a [u8],
}

/// A chunk of `bytes` captured whole, moved at `at` (ns) in 1 ns: what the parsers' tests feed.
#[cfg(test)]
pub(crate) fn chunk(flow: Flow, at: u64, bytes: &[u8]) -> Chunk<'_> {
    Chunk {
        flow,
        enter_ns: at,
        exit_ns: at + 1,
        captured: bytes,
        total_len: bytes.len(),
        tail: &[],
    }
}

/// When a syscall ran, ns since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub enter_ns: u64,
    pub exit_ns: u64,
}

impl Timing {
    pub fn of(chunk: &Chunk<'_>) -> Self {
        Self {
            enter_ns: chunk.enter_ns,
            exit_ns: chunk.exit_ns,
        }
    }
}
