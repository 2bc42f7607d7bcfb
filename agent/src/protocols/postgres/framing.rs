//! Splits one direction's bytes into `(type, body)` messages, over chunks whose tails may be
//! unseen. Bodies are kept up to a bound; the rest is counted.

use super::MAX_KEPT_BODY;

/// One message, with as much of its body as was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The type byte; 0 for the untyped startup-phase messages.
    pub kind: u8,
    pub body: Vec<u8>,
    /// The body was not seen whole.
    pub truncated: bool,
}

enum State {
    /// Collecting the 5-byte header (4 for the untyped first message).
    Header(Vec<u8>),
    /// Inside a body of `left` more bytes.
    Body {
        kind: u8,
        left: usize,
        body: Vec<u8>,
        truncated: bool,
    },
    /// Framing lost: waiting for a chunk that starts like a message.
    Lost,
}

pub struct Framer {
    state: State,
    /// The next message has no type byte (the client's first, or the one after SSL/GSS refusal).
    untyped_next: bool,
    plausible: fn(u8) -> bool,
    /// Times the framing was lost (a header past the captured bytes, or malformed).
    pub lost: u64,
    /// Of those, the headers that were not the protocol's (a type or length no message has).
    pub malformed: u64,
}

impl Framer {
    pub fn new(untyped_first: bool, plausible: fn(u8) -> bool) -> Self {
        Self {
            state: State::Header(Vec::new()),
            untyped_next: untyped_first,
            plausible,
            lost: 0,
            malformed: 0,
        }
    }

    /// The next message will be untyped (a StartupMessage after a refused SSLRequest).
    pub fn expect_untyped(&mut self) {
        self.untyped_next = true;
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// Consumes one chunk (`captured` is its seen prefix, `total` every byte it moved).
    pub fn feed(&mut self, captured: &[u8], total: usize, out: &mut Vec<Message>) {
        let cap = captured.len();
        let total = total.max(cap);
        let mut pos = 0;
        if matches!(self.state, State::Lost) {
            match captured.first() {
                Some(&kind)
                    if (self.plausible)(kind) && cap >= 5 && plausible_len(&captured[1..5]) =>
                {
                    self.state = State::Header(Vec::new());
                }
                _ => return,
            }
        }
        while pos < total {
            let state = std::mem::replace(&mut self.state, State::Lost);
            self.state = match state {
                State::Lost => return,
                State::Header(mut header) => {
                    let need = if self.untyped_next { 4 } else { 5 };
                    if pos >= cap {
                        // A header in the unseen tail: the framing is gone.
                        self.lost += 1;
                        State::Lost
                    } else {
                        let take = (need - header.len()).min(cap - pos);
                        header.extend_from_slice(&captured[pos..pos + take]);
                        pos += take;
                        if header.len() < need {
                            State::Header(header)
                        } else {
                            let (kind, len_bytes) = if self.untyped_next {
                                (0, &header[0..4])
                            } else {
                                (header[0], &header[1..5])
                            };
                            let len = u32::from_be_bytes([
                                len_bytes[0],
                                len_bytes[1],
                                len_bytes[2],
                                len_bytes[3],
                            ]) as usize;
                            if len < 4 || (kind != 0 && !(self.plausible)(kind)) {
                                self.lost += 1;
                                self.malformed += 1;
                                State::Lost
                            } else if len == 4 {
                                // An empty body (Sync, Terminate, ParseComplete...): complete now,
                                // even at the very end of the chunk.
                                self.untyped_next = false;
                                out.push(Message {
                                    kind,
                                    body: Vec::new(),
                                    truncated: false,
                                });
                                State::Header(Vec::new())
                            } else {
                                self.untyped_next = false;
                                State::Body {
                                    kind,
                                    left: len - 4,
                                    body: Vec::new(),
                                    truncated: false,
                                }
                            }
                        }
                    }
                }
                State::Body {
                    kind,
                    mut left,
                    mut body,
                    mut truncated,
                } => {
                    let n = left.min(total - pos);
                    let seen_end = (pos + n).min(cap);
                    if pos < seen_end {
                        let room = MAX_KEPT_BODY.saturating_sub(body.len());
                        let keep = (seen_end - pos).min(room);
                        body.extend_from_slice(&captured[pos..pos + keep]);
                        truncated |= keep < seen_end - pos;
                    }
                    truncated |= pos + n > cap;
                    pos += n;
                    left -= n;
                    if left == 0 {
                        out.push(Message {
                            kind,
                            body,
                            truncated,
                        });
                        State::Header(Vec::new())
                    } else {
                        State::Body {
                            kind,
                            left,
                            body,
                            truncated,
                        }
                    }
                }
            };
            if matches!(self.state, State::Lost) {
                return;
            }
        }
    }
}

impl Framer {
    /// As [`Self::feed`] for the server's side; when the framing is lost at the chunk's end (a
    /// header in its unseen part: a reply of thousands of rows), it is found again in `tail`,
    /// the chunk's last bytes: messages that follow one another to its very end, the last a
    /// ReadyForQuery. They are read, and the next chunk starts with a message.
    pub fn feed_ending(
        &mut self,
        captured: &[u8],
        total: usize,
        tail: &[u8],
        out: &mut Vec<Message>,
    ) {
        self.feed(captured, total, out);
        if tail.is_empty() || !self.is_lost() {
            return;
        }
        if let Some(found) = trailing_messages(tail, self.plausible) {
            out.extend(found);
            self.state = State::Header(Vec::new());
        }
    }
}

/// The messages `tail` ends with, from the earliest byte where whole messages follow one
/// another exactly to its end and the last is a ReadyForQuery (`Z`, length 5, status I, T or
/// E); None when there is no such place.
pub fn trailing_messages(tail: &[u8], plausible: fn(u8) -> bool) -> Option<Vec<Message>> {
    let ready = tail.len().checked_sub(6)?;
    let ends_ready = tail[ready] == b'Z'
        && tail[ready + 1..ready + 5] == [0, 0, 0, 5]
        && matches!(tail[ready + 5], b'I' | b'T' | b'E');
    if !ends_ready {
        return None;
    }
    (0..=ready).find_map(|start| {
        let mut messages = Vec::new();
        let mut at = start;
        while at < tail.len() {
            let kind = *tail.get(at)?;
            let len = tail.get(at + 1..at + 5)?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if !plausible(kind) || len < 4 || at + 1 + len > tail.len() {
                return None;
            }
            messages.push(Message {
                kind,
                body: tail[at + 5..at + 1 + len].to_vec(),
                truncated: false,
            });
            at += 1 + len;
        }
        Some(messages)
    })
}

fn plausible_len(bytes: &[u8]) -> bool {
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (4..(1 << 30)).contains(&len)
}

/// Message types a client sends.
pub fn frontend_kind(kind: u8) -> bool {
    matches!(
        kind,
        b'Q' | b'P'
            | b'B'
            | b'E'
            | b'S'
            | b'D'
            | b'C'
            | b'H'
            | b'F'
            | b'X'
            | b'd'
            | b'c'
            | b'f'
            | b'p'
    )
}

/// Message types a server sends.
pub fn backend_kind(kind: u8) -> bool {
    matches!(
        kind,
        b'T' | b'D'
            | b'C'
            | b'E'
            | b'Z'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b's'
            | b'I'
            | b'N'
            | b'A'
            | b'R'
            | b'S'
            | b'K'
            | b't'
            | b'G'
            | b'H'
            | b'W'
            | b'c'
            | b'd'
            | b'V'
            | b'v'
    )
}
