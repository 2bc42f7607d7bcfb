//! One client connection's commands, paired with their replies in order.

use std::collections::VecDeque;

use super::{
    MAX_PENDING,
    commands::{self, Effect, MAX_NAME, PubSub, Read},
    framing::{self, FrameError, Framer, Head, Sink},
};
use crate::protocols::{Chunk, Flow, Timing};

/// Losses of framing in a row (no command answered between them) after which the connection
/// is taken for something other than Redis and no longer read.
const MAX_LOSSES_IN_A_ROW: u32 = 8;
/// Bytes of an error reply kept, for its code.
const KEPT_ERROR: usize = 64;
/// Bytes of an aggregate's first element kept, for a pub/sub kind.
const KEPT_FIRST: usize = 16;

/// A command and its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandDone {
    pub seq: u64,
    /// The chunk that sent the command's first bytes.
    pub start: Timing,
    /// The chunk that completed its reply (the last reply chunk seen, when the reply's framing
    /// was lost).
    pub end: Timing,
    /// The command's name upper-cased (`GET`, `HGETALL`); the first word only of a command with
    /// a subcommand (`CLIENT`); `UNKNOWN` when it is not a plausible name.
    pub operation: String,
    /// The command with every argument redacted: `SET ? ?`, `CLIENT SETNAME ?`, `PING`. Past
    /// [`MAX_TEXT_ARGS`](super::MAX_TEXT_ARGS) placeholders, ` ...`.
    pub text: String,
    /// A hash of argument 1 for commands where it is a key (the first key of MGET, DEL...),
    /// when it was captured whole. Equal for the same key on the same connection or another.
    pub key_hash: Option<u64>,
    /// A hash of the whole command, name and arguments, when every byte of it was captured:
    /// equal for the same call repeated. Never exported.
    pub values_hash: Option<u64>,
    /// The code of an error reply (`ERR`, `WRONGTYPE`, `NOAUTH`), never its message.
    pub error: Option<String>,
    /// For read commands: whether what they asked for was missing (nil, an empty collection,
    /// every member nil, `:0` for EXISTS); unknown (None) when the reply was an error, `QUEUED`
    /// or not seen. None for other commands.
    pub miss: Option<bool>,
    /// The database the command ran on: 0 on a connection seen from its start until a SELECT
    /// (or RESET) changes it; None on one found open, until it selects.
    pub database: Option<i64>,
    /// Bytes of the reply, uncaptured ones and attributes before it included.
    pub reply_bytes: u64,
}

/// What a chunk started or finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisEvent {
    /// A command's first bytes were written: reported with the chunk that completes its first
    /// header line (`*3\r\n`, or an inline command's first letter), which is the chunk of its
    /// first byte unless that line was split over two writes. `CommandDone::start` is the
    /// chunk of the first byte either way.
    Started {
        seq: u64,
    },
    Done(CommandDone),
    /// A started command that will never be `Done`: its framing was lost before it was whole,
    /// it was dropped from a full queue, or the connection closed (or went opaque) before its
    /// reply.
    Abandoned {
        seq: u64,
    },
}

/// Counters of what did not parse or pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Times a direction's framing was lost.
    pub lost_framing: u64,
    /// Commands without a reply when the connection closed or went opaque.
    pub unanswered: u64,
    /// Push messages (and RESP2 subscriber-mode messages) skipped: they answer no command.
    pub pushes_skipped: u64,
    /// Commands dropped because [`MAX_PENDING`](super::MAX_PENDING) were waiting.
    pub overflowed: u64,
    /// Commands whose framing was lost before they were whole.
    pub cut: u64,
    /// Replies with no command to answer (their commands were not seen).
    pub unpaired: u64,
}

/// A command being read.
struct Building {
    seq: u64,
    start: Timing,
    /// Blobs begun (the name is 1).
    blobs: u64,
    name: Kept,
    first: Kept,
    key: Fnv,
    values: Fnv,
    /// Bytes of the current blob.
    blob_len: u64,
    /// Every byte so far was captured.
    whole: bool,
    /// Every byte of argument 1 was captured.
    key_whole: bool,
}

/// A command waiting for its reply.
struct Pending {
    seq: u64,
    start: Timing,
    operation: String,
    text: String,
    key_hash: Option<u64>,
    values_hash: Option<u64>,
    read: Option<Read>,
    effect: Effect,
    /// SELECT's database.
    select: Option<i64>,
    /// Arguments: for a (un)subscription, the channels, each confirmed apart.
    args: u64,
}

/// What was seen of a reply.
#[derive(Default)]
struct Reply {
    /// The top-level type byte; 0 until its header.
    kind: u8,
    nil: bool,
    /// An aggregate's entries (pairs for a map).
    len: u64,
    /// A simple string's or an error's start.
    text: Kept,
    /// An aggregate's first element's start.
    first: Kept,
    /// Elements begun directly in the aggregate, and how many were nil.
    children: u64,
    nil_children: u64,
    /// The last direct element that is an integer (a subscription count).
    last_int: Option<i64>,
    /// The depth of the blob being read.
    blob_at: Option<usize>,
    /// Seen to its end.
    complete: bool,
}

impl Reply {
    fn begin(&mut self, depth: usize, head: Head<'_>) {
        self.blob_at = None;
        match depth {
            0 => match head {
                Head::Line { kind, text } => {
                    self.kind = kind;
                    self.text.push(text, KEPT_ERROR);
                }
                Head::Nil { kind } => {
                    self.kind = kind;
                    self.nil = true;
                }
                Head::Blob { kind } => {
                    self.kind = kind;
                    self.blob_at = Some(0);
                }
                Head::Aggregate { kind, len } => {
                    self.kind = kind;
                    self.len = len;
                }
                Head::Inline => {}
            },
            1 => {
                self.children += 1;
                let first = self.children == 1;
                match head {
                    Head::Nil { .. } => self.nil_children += 1,
                    Head::Line { kind, text } => {
                        if first {
                            self.first.push(text, KEPT_FIRST);
                        }
                        if kind == b':' {
                            self.last_int =
                                std::str::from_utf8(text).ok().and_then(|t| t.parse().ok());
                        }
                    }
                    Head::Blob { .. } if first => self.blob_at = Some(1),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, bytes: &[u8]) {
        match self.blob_at {
            Some(0) if self.kind == b'!' => self.text.push(bytes, KEPT_ERROR),
            Some(1) => self.first.push(bytes, KEPT_FIRST),
            _ => {}
        }
    }

    fn simple(&self, text: &[u8]) -> bool {
        self.kind == b'+' && self.text.whole && self.text.bytes == text
    }

    fn error(&self) -> Option<String> {
        matches!(self.kind, b'-' | b'!').then(|| commands::error_code(&self.text.bytes))
    }

    /// The pub/sub kind of an aggregate.
    fn pubsub(&self) -> Option<PubSub> {
        if !matches!(self.kind, b'*' | b'>') || !self.first.whole {
            return None;
        }
        commands::pubsub_kind(&self.first.bytes)
    }

    /// Whether this reply to a `read` command says it missed.
    fn miss(&self, read: Read) -> Option<bool> {
        if self.kind == 0 || self.error().is_some() || self.simple(b"QUEUED") {
            return None;
        }
        if self.nil {
            return Some(true);
        }
        match self.kind {
            b'*' | b'%' | b'~' => {
                if self.len == 0 {
                    Some(true)
                } else if read == Read::Members {
                    if self.complete {
                        Some(self.nil_children == self.children)
                    } else {
                        // Members past a lost framing are unknown.
                        (self.children > self.nil_children).then_some(false)
                    }
                } else {
                    Some(false)
                }
            }
            b':' if read == Read::Count => Some(self.text.whole && self.text.bytes == b"0"),
            _ => Some(false),
        }
    }
}

/// The start of some bytes, up to a bound.
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    /// Every byte was kept (none over the bound, none uncaptured).
    whole: bool,
    started: bool,
}

impl Kept {
    fn push(&mut self, bytes: &[u8], max: usize) {
        if !self.started {
            self.started = true;
            self.whole = true;
        }
        let room = max.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.whole &= bytes.len() <= room;
    }

    fn cut(&mut self) {
        self.started = true;
        self.whole = false;
    }

    /// The bytes, when they are all there.
    fn whole(&self) -> Option<&[u8]> {
        (self.started && self.whole).then_some(self.bytes.as_slice())
    }
}

/// FNV-1a, fed byte by byte so that the hash does not depend on where chunks split, and
/// finished with a 64-bit mix.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

/// Everything but the two framers, so that a framer can feed a sink borrowing it.
struct State {
    building: Option<Building>,
    /// The chunk that held the first byte of the command being read.
    began_at: Timing,
    pending: VecDeque<Pending>,
    reply: Reply,
    /// Replies still to come for commands dropped from a full queue: skipped.
    owed: u64,
    /// Confirmations still to come for the channels of a (un)subscription already answered
    /// by its first: skipped.
    confirmations_owed: u64,
    database: Option<i64>,
    /// A SUBSCRIBE was sent: RESP2 arrays of pub/sub kinds are messages, not replies.
    subscribed: bool,
    /// The server spoke RESP3 (a RESP3-only type was seen): pub/sub messages are pushes.
    resp3: bool,
    /// The replies' framing was lost while a reply was read; what was seen of it and the bytes
    /// counted since: the reply ends, unseen, when the client speaks again.
    unseen: Option<(Reply, u64)>,
    /// A command started since the replies' framing was lost: the next reply chunk that starts
    /// like a reply answers it.
    armed: bool,
    last_reply_at: Option<Timing>,
    losses_in_a_row: u32,
    last_loss: Option<FrameError>,
    opaque: bool,
    next_seq: u64,
    stats: RedisStats,
}

pub struct RedisConversation {
    requests: Framer,
    replies: Framer,
    state: State,
}

impl Default for RedisConversation {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisConversation {
    /// A connection seen from its first byte.
    pub fn new() -> Self {
        Self {
            requests: Framer::new(true),
            replies: Framer::new(false),
            state: State {
                building: None,
                began_at: Timing::default(),
                pending: VecDeque::new(),
                reply: Reply::default(),
                owed: 0,
                confirmations_owed: 0,
                database: Some(0),
                subscribed: false,
                resp3: false,
                unseen: None,
                armed: false,
                last_reply_at: None,
                losses_in_a_row: 0,
                last_loss: None,
                opaque: false,
                next_seq: 0,
                stats: RedisStats::default(),
            },
        }
    }

    /// A connection loupe did not see open: its first chunk in either direction may start in
    /// the middle of a command or a reply. Commands are read from the first chunk that starts
    /// like one; reply bytes are ignored until a command was sent, and paired from the first
    /// reply chunk after it that starts like a reply.
    pub fn resumed() -> Self {
        let mut conversation = Self::new();
        conversation.requests = Framer::joining(true);
        conversation.replies = Framer::joining(false);
        // Whatever it selected before loupe saw it is not known.
        conversation.state.database = None;
        conversation
    }

    pub fn stats(&self) -> RedisStats {
        let mut stats = self.state.stats;
        stats.lost_framing = self.requests.lost + self.replies.lost;
        stats
    }

    /// True once the connection lost its framing too often to be Redis: nothing more is read.
    pub fn is_opaque(&self) -> bool {
        self.state.opaque
    }

    /// Why the framing was last lost.
    pub fn last_loss(&self) -> Option<FrameError> {
        self.state.last_loss
    }

    pub fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<RedisEvent>) {
        if self.state.opaque {
            return;
        }
        let at = Timing::of(&chunk);
        match chunk.flow {
            Flow::Request => {
                // The replies' framing was lost in an unseen tail (a large reply): the client
                // speaking again means what it waited for has arrived.
                if self.state.unseen.is_some() {
                    self.state.finish_unseen(out);
                }
                if self.requests.is_lost() {
                    if !framing::starts_command(chunk.captured) {
                        return;
                    }
                    self.requests.resync();
                }
                let mut sink = Requests {
                    state: &mut self.state,
                    at,
                    out,
                };
                self.requests
                    .feed(chunk.captured, chunk.total_len, &mut sink);
            }
            Flow::Response => {
                self.state.last_reply_at = Some(at);
                if self.replies.is_lost() {
                    if !(self.state.armed && framing::starts_reply(chunk.captured)) {
                        if let Some((_, bytes)) = &mut self.state.unseen {
                            *bytes += chunk.total_len as u64;
                        }
                        return;
                    }
                    self.replies.resync();
                    self.state.reply = Reply::default();
                }
                let mut sink = Replies {
                    state: &mut self.state,
                    at,
                    out,
                };
                self.replies
                    .feed(chunk.captured, chunk.total_len, &mut sink);
            }
        }
        if self.state.opaque {
            self.state.abandon_all(out);
        }
    }

    /// The connection closed: a reply whose framing was lost ends; commands without a reply
    /// are abandoned and counted.
    pub fn close(&mut self, out: &mut Vec<RedisEvent>) {
        if self.state.unseen.is_some() {
            self.state.finish_unseen(out);
        }
        self.state.abandon_all(out);
    }
}

impl State {
    fn note_loss(&mut self, error: FrameError) {
        self.last_loss = Some(error);
        self.losses_in_a_row += 1;
        if self.losses_in_a_row >= MAX_LOSSES_IN_A_ROW {
            self.opaque = true;
        }
    }

    fn start(&mut self, out: &mut Vec<RedisEvent>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.building = Some(Building {
            seq,
            start: self.began_at,
            blobs: 0,
            name: Kept::default(),
            first: Kept::default(),
            key: Fnv::new(),
            values: Fnv::new(),
            blob_len: 0,
            whole: true,
            key_whole: true,
        });
        self.armed = true;
        out.push(RedisEvent::Started { seq });
    }

    /// A command was read whole: it waits for its reply.
    fn queue(&mut self, command: Building, out: &mut Vec<RedisEvent>) {
        let args = command.blobs.saturating_sub(1);
        let first = (args > 0).then(|| command.first.whole()).flatten();
        let described = commands::describe(command.name.whole(), first, args);
        let select = match described.effect {
            Effect::Select => first
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse().ok()),
            _ => None,
        };
        if described.effect == Effect::Subscribe {
            self.subscribed = true;
        }
        if self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self.pending.pop_front()
        {
            out.push(RedisEvent::Abandoned { seq: oldest.seq });
            self.stats.overflowed += 1;
            self.owed += 1;
        }
        self.pending.push_back(Pending {
            seq: command.seq,
            start: command.start,
            key_hash: (described.key_first && command.key_whole).then(|| command.key.finish()),
            values_hash: command.whole.then(|| command.values.finish()),
            operation: described.operation,
            text: described.text,
            read: described.read,
            effect: described.effect,
            select,
            args,
        });
    }

    fn on_reply(&mut self, bytes: u64, at: Timing, out: &mut Vec<RedisEvent>) {
        let mut reply = std::mem::take(&mut self.reply);
        reply.complete = true;
        if b"_,#!=(%~>|".contains(&reply.kind) {
            self.resp3 = true;
        }
        let pubsub = reply.pubsub();
        let push = reply.kind == b'>'
            || (self.subscribed && !self.resp3 && reply.kind == b'*' && pubsub.is_some());
        if push {
            if let Some(PubSub::Confirmation { unsubscribe: true }) = pubsub
                && reply.last_int == Some(0)
            {
                self.subscribed = false;
            }
            // A (un)subscription's first confirmation answers it; the others, one per channel,
            // and messages answer nothing.
            let confirmation = matches!(pubsub, Some(PubSub::Confirmation { .. }));
            if confirmation && self.confirmations_owed > 0 {
                self.confirmations_owed -= 1;
                self.stats.pushes_skipped += 1;
                return;
            }
            let confirms = confirmation
                && self.owed == 0
                && self
                    .pending
                    .front()
                    .is_some_and(|c| matches!(c.effect, Effect::Subscribe | Effect::Unsubscribe));
            if !confirms {
                self.stats.pushes_skipped += 1;
                return;
            }
            if let Some(command) = self.pending.front() {
                self.confirmations_owed = command.args.saturating_sub(1);
            }
        } else if self.owed > 0 {
            self.owed -= 1;
            return;
        }
        let Some(command) = self.pending.pop_front() else {
            self.stats.unpaired += 1;
            return;
        };
        self.done(command, &reply, bytes, at, out);
    }

    fn done(
        &mut self,
        command: Pending,
        reply: &Reply,
        reply_bytes: u64,
        end: Timing,
        out: &mut Vec<RedisEvent>,
    ) {
        match command.effect {
            Effect::Select if reply.simple(b"OK") => {
                if let Some(database) = command.select {
                    self.database = Some(database);
                }
            }
            Effect::Reset if reply.simple(b"RESET") => {
                self.database = Some(0);
                self.subscribed = false;
            }
            _ => {}
        }
        self.losses_in_a_row = 0;
        out.push(RedisEvent::Done(CommandDone {
            seq: command.seq,
            start: command.start,
            end,
            operation: command.operation,
            text: command.text,
            key_hash: command.key_hash,
            values_hash: command.values_hash,
            error: reply.error(),
            miss: command.read.and_then(|read| reply.miss(read)),
            database: self.database,
            reply_bytes,
        }));
    }

    /// Ends every command sent, at the last reply chunk, with what was seen of the first's reply.
    fn finish_unseen(&mut self, out: &mut Vec<RedisEvent>) {
        let Some((reply, bytes)) = self.unseen.take() else {
            return;
        };
        let end = self.last_reply_at;
        let mut first = Some((reply, bytes));
        while let Some(command) = self.pending.pop_front() {
            let (reply, bytes) = first.take().unwrap_or_default();
            let end = end.unwrap_or(command.start);
            self.done(command, &reply, bytes, end, out);
        }
        self.owed = 0;
        self.confirmations_owed = 0;
    }

    /// Abandons every command started and not answered.
    fn abandon_all(&mut self, out: &mut Vec<RedisEvent>) {
        for command in self.pending.drain(..) {
            out.push(RedisEvent::Abandoned { seq: command.seq });
            self.stats.unanswered += 1;
        }
        if let Some(command) = self.building.take() {
            out.push(RedisEvent::Abandoned { seq: command.seq });
            self.stats.unanswered += 1;
        }
        self.unseen = None;
    }
}

/// Reads a client's commands into the conversation.
struct Requests<'a> {
    state: &'a mut State,
    at: Timing,
    out: &'a mut Vec<RedisEvent>,
}

impl Sink for Requests<'_> {
    fn first_byte(&mut self) {
        self.state.began_at = self.at;
    }

    fn begin(&mut self, depth: usize, head: Head<'_>) {
        match (depth, head) {
            // `*0` starts no command (Redis skips it).
            (0, Head::Aggregate { len, .. }) if len > 0 => self.state.start(self.out),
            (0, Head::Inline) => self.state.start(self.out),
            (1, Head::Blob { .. }) => {
                if let Some(command) = &mut self.state.building {
                    command.blobs += 1;
                    command.blob_len = 0;
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, bytes: &[u8]) {
        let Some(command) = &mut self.state.building else {
            return;
        };
        match command.blobs {
            1 => command.name.push(bytes, MAX_NAME),
            2 => {
                command.first.push(bytes, MAX_NAME);
                command.key.write(bytes);
            }
            _ => {}
        }
        command.values.write(bytes);
        command.blob_len += bytes.len() as u64;
    }

    fn gap(&mut self, len: u64) {
        let Some(command) = &mut self.state.building else {
            return;
        };
        command.whole = false;
        match command.blobs {
            1 => command.name.cut(),
            2 => {
                command.first.cut();
                command.key_whole = false;
            }
            _ => {}
        }
        command.blob_len += len;
    }

    fn end_blob(&mut self) {
        if let Some(command) = &mut self.state.building {
            // The length separates one argument from the next: `a bc` is not `ab c`.
            command.values.write(&command.blob_len.to_le_bytes());
            match command.blobs {
                // An empty name or first argument: started, and whole.
                1 => command.name.push(&[], MAX_NAME),
                2 => command.first.push(&[], MAX_NAME),
                _ => {}
            }
        }
    }

    fn complete(&mut self, _bytes: u64) {
        if let Some(command) = self.state.building.take() {
            self.state.queue(command, self.out);
        }
    }

    fn lost(&mut self, error: FrameError, _bytes: u64) {
        if let Some(command) = self.state.building.take() {
            self.out.push(RedisEvent::Abandoned { seq: command.seq });
            self.state.stats.cut += 1;
        }
        self.state.note_loss(error);
    }
}

/// Reads a server's replies into the conversation.
struct Replies<'a> {
    state: &'a mut State,
    at: Timing,
    out: &'a mut Vec<RedisEvent>,
}

impl Sink for Replies<'_> {
    fn begin(&mut self, depth: usize, head: Head<'_>) {
        self.state.reply.begin(depth, head);
    }

    fn data(&mut self, bytes: &[u8]) {
        self.state.reply.data(bytes);
    }

    fn gap(&mut self, _len: u64) {
        if self.state.reply.blob_at == Some(0) {
            self.state.reply.text.cut();
        } else if self.state.reply.blob_at == Some(1) {
            self.state.reply.first.cut();
        }
    }

    fn end_blob(&mut self) {
        match self.state.reply.blob_at.take() {
            Some(0) if self.state.reply.kind == b'!' => self.state.reply.text.push(&[], 0),
            Some(1) => self.state.reply.first.push(&[], 0),
            _ => {}
        }
    }

    fn complete(&mut self, bytes: u64) {
        self.state.on_reply(bytes, self.at, self.out);
    }

    fn lost(&mut self, error: FrameError, bytes: u64) {
        let reply = std::mem::take(&mut self.state.reply);
        // Only a reply that was being answered ends unseen; none waiting, nothing to end.
        if !self.state.pending.is_empty() {
            self.state.unseen = Some((reply, bytes));
        }
        self.state.armed = false;
        self.state.note_loss(error);
    }
}
