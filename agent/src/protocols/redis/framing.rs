//! Splits one direction's bytes into RESP values, over chunks whose tails may be unseen.
//!
//! The framer walks the value tree (headers, blob bodies, aggregate counts) and tells a [`Sink`]
//! what it meets; it keeps no body. A blob's body is skipped by count, seen or not; a header
//! must be seen, so one in an unseen tail loses the framing until the conversation finds a chunk
//! that starts like a value again ([`starts_command`], [`starts_reply`]) and calls
//! [`Framer::resync`]. Attributes (`|`) are walked but not reported: they are not values.

use super::{MAX_BLOB, MAX_DEPTH};

/// Bytes of a header line kept (its type byte included): all of any length or number, the
/// start of a simple string or an error.
pub const KEPT_LINE: usize = 64;
/// Longest header line holding a length or a number (20 digits and a sign fit).
const MAX_NUMBER_LINE: usize = 32;
/// Longest simple string, error, double or big number line.
const MAX_TEXT_LINE: usize = 64 * 1024;
/// Longest inline command (Redis' own limit, PROTO_INLINE_MAX_SIZE).
const MAX_INLINE: u64 = 64 * 1024;
/// Elements in one aggregate, at most.
const MAX_ELEMENTS: u64 = u32::MAX as u64;

/// Why a direction's framing was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a header fell in the uncaptured part of a chunk")]
    HeaderInGap,
    #[error("byte {0:#04x} cannot start a value here")]
    UnexpectedType(u8),
    #[error("malformed header line")]
    BadHeader,
    #[error("header line or inline command too long")]
    LineTooLong,
    #[error("a blob's body is not followed by CRLF")]
    BadTerminator,
    #[error("aggregates nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("control bytes in an inline command")]
    BadInline,
}

/// The start of a value, as a [`Sink`] is told of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// A one-line value (`+ - : , ( #`) and the start of its text.
    Line { kind: u8, text: &'a [u8] },
    /// `_`, `$-1` or `*-1`.
    Nil { kind: u8 },
    /// A blob (`$ ! =`), whose body follows as [`Sink::data`] and [`Sink::gap`]. The words of an
    /// inline command are blobs of kind `$` too.
    Blob { kind: u8 },
    /// An aggregate (`* % ~ >`) of `len` entries (a map's are pairs); `len` > 0 means elements
    /// follow, one level deeper.
    Aggregate { kind: u8, len: u64 },
    /// An inline command (`PING\r\n`): its words follow as blobs one level deeper.
    Inline,
}

/// What the framer tells of the values it walks. `depth` is 0 for a top-level value (a command,
/// a reply), 1 for its elements, and so on.
pub trait Sink {
    /// The first byte of a top-level value (or of an attribute before one) was read: it began
    /// in this chunk, whichever chunk completes its header.
    fn first_byte(&mut self) {}
    fn begin(&mut self, depth: usize, head: Head<'_>);
    /// Captured bytes of the current blob's body.
    fn data(&mut self, bytes: &[u8]);
    /// Bytes of the current blob's body that were moved but not captured.
    fn gap(&mut self, len: u64);
    fn end_blob(&mut self);
    /// A top-level value ended; `bytes` it took, attributes before it included.
    fn complete(&mut self, bytes: u64);
    /// The framing was lost; `bytes` of the chunk were taken by the value it was in, counting
    /// the rest of the chunk.
    fn lost(&mut self, error: FrameError, bytes: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before a header.
    Start,
    /// Inside a header line; `line` holds its start.
    Line,
    /// Inside a blob's body.
    Blob { left: u64 },
    /// The CRLF after a blob's body.
    Crlf { left: u8 },
    /// Inside an inline command, in a word or between words.
    Inline { in_word: bool },
    /// Framing lost: waiting for [`Framer::resync`].
    Lost,
}

/// An open aggregate.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// Elements still to come (at least 1).
    left: u64,
    attribute: bool,
}

pub struct Framer {
    /// Reads what a client sends (arrays of blobs, inline commands), not replies.
    client: bool,
    state: State,
    /// The header line being read: its type byte and up to [`KEPT_LINE`] bytes in all.
    line: Vec<u8>,
    /// Bytes of that line so far, kept or not.
    line_len: usize,
    stack: Vec<Frame>,
    /// The index in `stack` of the outermost attribute: nothing under it is reported.
    attribute_at: Option<usize>,
    /// Bytes of the current top-level value so far.
    bytes: u64,
    pub lost: u64,
}

impl Framer {
    /// A framer at the start of a stream: `client` for what a client sends.
    pub fn new(client: bool) -> Self {
        Self {
            client,
            state: State::Start,
            line: Vec::with_capacity(KEPT_LINE),
            line_len: 0,
            stack: Vec::new(),
            attribute_at: None,
            bytes: 0,
            lost: 0,
        }
    }

    /// A framer joining a stream at an unknown point: lost (uncounted) until resynced.
    pub fn joining(client: bool) -> Self {
        let mut framer = Self::new(client);
        framer.state = State::Lost;
        framer
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// The next chunk starts a value (the caller checked it does).
    pub fn resync(&mut self) {
        if self.state == State::Lost {
            self.state = State::Start;
            self.bytes = 0;
        }
    }

    fn reporting(&self) -> bool {
        self.attribute_at.is_none()
    }

    /// Consumes one chunk (`captured` is its seen prefix, `total` every byte it moved).
    pub fn feed<S: Sink>(&mut self, captured: &[u8], total: usize, sink: &mut S) {
        let cap = captured.len();
        let total = total.max(cap);
        let mut pos = 0usize;
        while pos < total {
            match self.state {
                State::Lost => return,
                State::Start => {
                    let Some(&byte) = captured.get(pos) else {
                        return self.lose(FrameError::HeaderInGap, total - pos, sink);
                    };
                    if self.client && self.stack.is_empty() && byte != b'*' {
                        match byte {
                            // Empty lines between inline commands are ignored, as Redis does.
                            b'\r' | b'\n' => pos += 1,
                            b if b.is_ascii_alphabetic() => {
                                sink.first_byte();
                                sink.begin(0, Head::Inline);
                                self.state = State::Inline { in_word: false };
                            }
                            b => {
                                return self.lose(FrameError::UnexpectedType(b), total - pos, sink);
                            }
                        }
                        continue;
                    }
                    if !kind_allowed(byte, self.client, self.stack.len()) {
                        return self.lose(FrameError::UnexpectedType(byte), total - pos, sink);
                    }
                    if self.stack.is_empty() {
                        sink.first_byte();
                    }
                    self.line.clear();
                    self.line.push(byte);
                    self.line_len = 1;
                    pos += 1;
                    self.bytes += 1;
                    self.state = State::Line;
                }
                State::Line => {
                    let rest = captured.get(pos..).unwrap_or_default();
                    if rest.is_empty() {
                        return self.lose(FrameError::HeaderInGap, total - pos, sink);
                    }
                    let newline = rest.iter().position(|&b| b == b'\n');
                    let end = newline.unwrap_or(rest.len());
                    let room = KEPT_LINE.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&rest[..end.min(room)]);
                    self.line_len += end;
                    let consumed = newline.map_or(end, |i| i + 1);
                    pos += consumed;
                    self.bytes += consumed as u64;
                    let limit = if is_text_kind(self.line[0]) {
                        MAX_TEXT_LINE
                    } else {
                        MAX_NUMBER_LINE
                    };
                    if self.line_len > limit {
                        return self.lose(FrameError::LineTooLong, total - pos, sink);
                    }
                    if newline.is_some()
                        && let Err(error) = self.on_header(sink)
                    {
                        return self.lose(error, total - pos, sink);
                    }
                }
                State::Blob { left } => {
                    let n = left.min((total - pos) as u64) as usize;
                    let seen_end = (pos + n).min(cap).max(pos);
                    if self.reporting() {
                        if seen_end > pos {
                            sink.data(&captured[pos..seen_end]);
                        }
                        if pos + n > seen_end {
                            sink.gap((pos + n - seen_end) as u64);
                        }
                    }
                    pos += n;
                    self.bytes += n as u64;
                    let left = left - n as u64;
                    if left == 0 {
                        if self.reporting() {
                            sink.end_blob();
                        }
                        self.state = State::Crlf { left: 2 };
                    } else {
                        self.state = State::Blob { left };
                    }
                }
                State::Crlf { left } => {
                    // Checked where seen, counted where not.
                    if let Some(&byte) = captured.get(pos) {
                        let want = if left == 2 { b'\r' } else { b'\n' };
                        if byte != want {
                            return self.lose(FrameError::BadTerminator, total - pos, sink);
                        }
                    }
                    pos += 1;
                    self.bytes += 1;
                    if left <= 1 {
                        self.value_done(sink);
                    } else {
                        self.state = State::Crlf { left: left - 1 };
                    }
                }
                State::Inline { in_word } => {
                    let rest = captured.get(pos..).unwrap_or_default();
                    let Some(&byte) = rest.first() else {
                        return self.lose(FrameError::HeaderInGap, total - pos, sink);
                    };
                    if in_word {
                        let run = rest
                            .iter()
                            .position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                            .unwrap_or(rest.len());
                        let word = &rest[..run];
                        if word.iter().any(|&b| b < 0x20 || b == 0x7f) {
                            return self.lose(FrameError::BadInline, total - pos, sink);
                        }
                        sink.data(word);
                        pos += run;
                        self.bytes += run as u64;
                        if run < rest.len() {
                            sink.end_blob();
                            self.state = State::Inline { in_word: false };
                        }
                    } else {
                        match byte {
                            b'\n' => {
                                pos += 1;
                                self.bytes += 1;
                                self.value_done(sink);
                            }
                            b' ' | b'\t' | b'\r' => {
                                pos += 1;
                                self.bytes += 1;
                            }
                            b if b < 0x20 || b == 0x7f => {
                                return self.lose(FrameError::BadInline, total - pos, sink);
                            }
                            _ => {
                                sink.begin(1, Head::Blob { kind: b'$' });
                                self.state = State::Inline { in_word: true };
                            }
                        }
                    }
                    if self.bytes > MAX_INLINE {
                        return self.lose(FrameError::LineTooLong, total - pos, sink);
                    }
                }
            }
        }
    }

    /// A header line was read whole: reports it and moves to what follows it.
    fn on_header<S: Sink>(&mut self, sink: &mut S) -> Result<(), FrameError> {
        let kind = self.line[0];
        let mut text_end = self.line.len();
        if self.line_len == self.line.len() {
            // Kept whole: it must end with CR (the LF was consumed).
            match self.line.last() {
                Some(b'\r') if text_end > 1 => text_end -= 1,
                _ => return Err(FrameError::BadHeader),
            }
        }
        let depth = self.stack.len();
        let parsed = parse_header(kind, &self.line[1..text_end], self.client, depth)?;
        let reporting = self.reporting();
        match parsed {
            Parsed::Line => {
                if reporting {
                    let text = &self.line[1..text_end];
                    sink.begin(depth, Head::Line { kind, text });
                }
                self.value_done(sink);
            }
            Parsed::Nil => {
                if reporting {
                    sink.begin(depth, Head::Nil { kind });
                }
                self.value_done(sink);
            }
            Parsed::Blob(len) => {
                if reporting {
                    sink.begin(depth, Head::Blob { kind });
                }
                if len == 0 {
                    if reporting {
                        sink.end_blob();
                    }
                    self.state = State::Crlf { left: 2 };
                } else {
                    self.state = State::Blob { left: len };
                }
            }
            Parsed::Aggregate(len) => {
                let attribute = kind == b'|';
                if reporting && !attribute {
                    sink.begin(depth, Head::Aggregate { kind, len });
                }
                let entries = if matches!(kind, b'%' | b'|') {
                    len * 2
                } else {
                    len
                };
                if entries == 0 {
                    if attribute {
                        self.state = State::Start;
                    } else {
                        self.value_done(sink);
                    }
                } else {
                    if depth >= MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                    if attribute && self.attribute_at.is_none() {
                        self.attribute_at = Some(depth);
                    }
                    self.stack.push(Frame {
                        left: entries,
                        attribute,
                    });
                    self.state = State::Start;
                }
            }
        }
        Ok(())
    }

    /// A value ended: counts it in the aggregates it closes, and reports a top-level one.
    fn value_done<S: Sink>(&mut self, sink: &mut S) {
        self.state = State::Start;
        while let Some(frame) = self.stack.last_mut() {
            frame.left = frame.left.saturating_sub(1);
            if frame.left > 0 {
                return;
            }
            let attribute = frame.attribute;
            self.stack.pop();
            if self.attribute_at == Some(self.stack.len()) {
                self.attribute_at = None;
            }
            if attribute {
                // An attribute is not a value: what follows it is.
                return;
            }
        }
        sink.complete(std::mem::take(&mut self.bytes));
    }

    fn lose<S: Sink>(&mut self, error: FrameError, rest: usize, sink: &mut S) {
        self.lost += 1;
        let bytes = std::mem::take(&mut self.bytes) + rest as u64;
        self.state = State::Lost;
        self.stack.clear();
        self.attribute_at = None;
        self.line.clear();
        self.line_len = 0;
        sink.lost(error, bytes);
    }
}

/// A header, checked.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Line,
    Nil,
    Blob(u64),
    Aggregate(u64),
}

/// Whether a value of type `kind` may start here: a client sends arrays of blobs.
fn kind_allowed(kind: u8, client: bool, depth: usize) -> bool {
    match (client, depth) {
        (true, 0) => kind == b'*',
        (true, _) => kind == b'$',
        (false, _) => b"+-:$*_,#!=(%~>|".contains(&kind),
    }
}

/// Types whose line is text of any length, not a length or a short number.
fn is_text_kind(kind: u8) -> bool {
    matches!(kind, b'+' | b'-' | b',' | b'(')
}

/// Checks a header (`body` is its line without the type byte and CRLF) as sent by a client
/// (`client`: arrays of blobs only) or a server, at `depth`.
fn parse_header(kind: u8, body: &[u8], client: bool, depth: usize) -> Result<Parsed, FrameError> {
    if client {
        return match (kind, depth) {
            (b'*', 0) => match length(body) {
                Some(Length::Nil) => Ok(Parsed::Nil),
                Some(Length::Of(n)) if n <= MAX_ELEMENTS => Ok(Parsed::Aggregate(n)),
                _ => Err(FrameError::BadHeader),
            },
            (b'$', 1) => match length(body) {
                Some(Length::Of(n)) if n <= MAX_BLOB => Ok(Parsed::Blob(n)),
                _ => Err(FrameError::BadHeader),
            },
            _ => Err(FrameError::UnexpectedType(kind)),
        };
    }
    let ok = match kind {
        b'+' | b'-' => true,
        b':' => integer(body),
        b'(' => integer(body),
        b',' => {
            !body.is_empty()
                && body
                    .iter()
                    .all(|&b| b.is_ascii_digit() || b"+-.eEinfa".contains(&b))
        }
        b'#' => body == b"t" || body == b"f",
        b'_' => {
            return if body.is_empty() {
                Ok(Parsed::Nil)
            } else {
                Err(FrameError::BadHeader)
            };
        }
        b'$' | b'!' | b'=' => {
            return match length(body) {
                Some(Length::Nil) if kind == b'$' => Ok(Parsed::Nil),
                Some(Length::Of(n)) if n <= MAX_BLOB => Ok(Parsed::Blob(n)),
                _ => Err(FrameError::BadHeader),
            };
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            return match length(body) {
                Some(Length::Nil) if kind == b'*' => Ok(Parsed::Nil),
                Some(Length::Of(n)) if n <= MAX_ELEMENTS => Ok(Parsed::Aggregate(n)),
                _ => Err(FrameError::BadHeader),
            };
        }
        other => return Err(FrameError::UnexpectedType(other)),
    };
    if ok {
        Ok(Parsed::Line)
    } else {
        Err(FrameError::BadHeader)
    }
}

enum Length {
    Nil,
    Of(u64),
}

/// A length: `-1` or up to 10 digits.
fn length(body: &[u8]) -> Option<Length> {
    if body == b"-1" {
        return Some(Length::Nil);
    }
    if body.is_empty() || body.len() > 10 || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(Length::Of(
        body.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    ))
}

/// An optionally signed run of digits.
fn integer(body: &[u8]) -> bool {
    let digits = match body.first() {
        Some(b'-' | b'+') => &body[1..],
        _ => body,
    };
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// Whether a chunk's first bytes start a reply: a server type byte and a valid header line,
/// seen whole.
pub fn starts_reply(captured: &[u8]) -> bool {
    let Some(newline) = captured.iter().take(KEPT_LINE).position(|&b| b == b'\n') else {
        return false;
    };
    let Some((&kind, body)) = captured[..newline]
        .strip_suffix(b"\r")
        .and_then(<[u8]>::split_first)
    else {
        return false;
    };
    if matches!(kind, b'+' | b'-') && !body.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return false;
    }
    parse_header(kind, body, false, 0).is_ok()
}

/// What [`command_at`] found at the start of some bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A command of this many bytes.
    Whole(usize),
    /// A command cut by the end of the bytes, after its name was seen whole.
    Cut,
    /// Not a command (or cut before its name).
    Bad,
}

/// Elements of a command, at most, for sniffing.
const SNIFF_MAX_ARGS: u64 = 1 << 20;

/// Whether `bytes` start with a command: an array of blobs whose first (the name) is a plausible
/// command name, or (when `inline` is allowed) an inline command Redis clients open with.
pub fn command_at(bytes: &[u8], inline: bool) -> Scan {
    if bytes.first() != Some(&b'*') {
        return match inline_opening(bytes) {
            Some(len) if inline => Scan::Whole(len),
            _ => Scan::Bad,
        };
    }
    let end = match sniff_line(bytes, 0, b'*') {
        SniffLine::Of(args, next) if (1..=SNIFF_MAX_ARGS).contains(&args) => {
            (0..args).try_fold(next, |pos, index| sniff_blob(bytes, pos, index == 0))
        }
        _ => Err(Scan::Bad),
    };
    end.map_or_else(|scan| scan, Scan::Whole)
}

/// One blob of a command at `pos`: where it ends, or how the scan stops. The name (`name`)
/// must be seen whole and plausible; a later blob may be cut by the end of the bytes.
fn sniff_blob(bytes: &[u8], pos: usize, name: bool) -> Result<usize, Scan> {
    let cut = if name { Scan::Bad } else { Scan::Cut };
    let (len, body) = match sniff_line(bytes, pos, b'$') {
        SniffLine::Of(len, body) => (len, body),
        SniffLine::Cut => return Err(cut),
        SniffLine::Bad => return Err(Scan::Bad),
    };
    if len > MAX_BLOB {
        return Err(Scan::Bad);
    }
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| body.checked_add(len))
        .ok_or(Scan::Bad)?;
    if name
        && !bytes
            .get(body..end)
            .is_some_and(super::commands::plausible_name)
    {
        return Err(Scan::Bad);
    }
    let seen = bytes.get(end..).unwrap_or_default();
    match seen {
        [b'\r', b'\n', ..] => Ok(end + 2),
        [] | [b'\r'] => Err(Scan::Cut),
        _ => Err(Scan::Bad),
    }
}

/// What [`sniff_line`] found.
enum SniffLine {
    /// The number, and where the line ends.
    Of(u64, usize),
    /// The bytes end inside a plausible line.
    Cut,
    Bad,
}

/// A header line `kind digits CRLF` at `pos`.
fn sniff_line(bytes: &[u8], pos: usize, kind: u8) -> SniffLine {
    let rest = bytes.get(pos..).unwrap_or_default();
    match rest.first() {
        None => return SniffLine::Cut,
        Some(&first) if first != kind => return SniffLine::Bad,
        Some(_) => {}
    }
    let line = &rest[..rest.len().min(MAX_NUMBER_LINE)];
    let Some(newline) = line.iter().position(|&b| b == b'\n') else {
        let digits = line[1..].strip_suffix(b"\r").unwrap_or(&line[1..]);
        return if line.len() == rest.len() && digits.iter().all(u8::is_ascii_digit) {
            SniffLine::Cut
        } else {
            SniffLine::Bad
        };
    };
    let Some(body) = line[1..newline].strip_suffix(b"\r") else {
        return SniffLine::Bad;
    };
    match length(body) {
        Some(Length::Of(n)) => SniffLine::Of(n, pos + newline + 1),
        _ => SniffLine::Bad,
    }
}

/// An inline command a client may open a connection with (`PING`, `HELLO 3`, `AUTH pw`,
/// `SELECT 2`), seen whole with its CRLF: its length.
pub fn inline_opening(bytes: &[u8]) -> Option<usize> {
    let newline = bytes.iter().take(256).position(|&b| b == b'\n')?;
    let line = bytes.get(..newline.checked_sub(1)?)?;
    if bytes.get(newline - 1) != Some(&b'\r')
        || !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return None;
    }
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let name = words.first()?.to_ascii_uppercase();
    let numeric = |i: usize| {
        words
            .get(i)
            .is_some_and(|w| w.iter().all(u8::is_ascii_digit))
    };
    let ok = match name.as_slice() {
        b"PING" => words.len() <= 2,
        b"HELLO" => words.len() == 1 || numeric(1),
        b"AUTH" => (2..=3).contains(&words.len()),
        b"SELECT" => words.len() == 2 && numeric(1),
        _ => false,
    };
    ok.then_some(newline + 1)
}

/// Whether a chunk's first bytes start a command, for resynchronising a client's stream.
pub fn starts_command(captured: &[u8]) -> bool {
    matches!(command_at(captured, true), Scan::Whole(_) | Scan::Cut)
}
