//! One direction of a connection: finds message heads and where their bodies end, over chunks
//! whose tails may be unseen.

use super::{
    Chunk, Flow, Timing,
    framing::{ChunkDecoder, ChunkStep, Framing},
    head::{self, Head, Parsed},
};

/// What a reader found.
#[derive(Clone, Debug)]
pub enum ReaderEvent {
    /// A head was parsed; `framing` is how its body was decided to end.
    Head {
        head: Head,
        first: Timing,
        framing: Framing,
    },
    /// The message that last started is complete.
    Done {
        last: Timing,
        body_bytes: u64,
        framed: bool,
    },
    /// Unseen bytes (past the capture) where a message could start: they may hold any number
    /// of messages.
    Gap,
    /// The rest of a message that started in a gap was skipped: one message, unseen.
    Tail,
    /// The message of the last `Tail` goes on in this chunk.
    TailGoesOn,
    /// Bytes that did not parse as HTTP were skipped.
    ParseError,
}

enum Body {
    Length(u64),
    Chunked(ChunkDecoder),
    UntilSwitch,
    /// A head longer than the capture: what follows is the rest of the head, then a body of
    /// this length (when the captured part said) that ends when the other side speaks.
    HeadRest(Option<u64>),
}

/// Why a reader does not know where it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// Unseen bytes ended at an unknown place: the next seen bytes may be a message's rest.
    Gap,
    /// Skipping the rest of a message that started in unseen bytes.
    Tail,
    /// Skipping bytes that are not a message start.
    Skipping,
}

enum State {
    /// Between messages: the next seen byte starts one.
    Idle,
    /// Lost: skipping bytes until a message starts (at a chunk's start or a line's).
    Lost(Lost),
    Head {
        buf: Vec<u8>,
        first: Timing,
    },
    Body {
        body: Body,
        bytes: u64,
        last: Timing,
    },
    /// After 101 Switching Protocols: the bytes are another protocol's.
    Switched,
}

pub struct Reader {
    flow: Flow,
    state: State,
    max_head: usize,
    pub parse_errors: u64,
    pub resyncs: u64,
    pub heads: u64,
}

impl Reader {
    pub fn new(flow: Flow, max_head: usize) -> Self {
        Self {
            flow,
            state: State::Idle,
            max_head,
            parse_errors: 0,
            resyncs: 0,
            heads: 0,
        }
    }

    /// When the body being read last saw bytes.
    pub fn body_last(&self) -> Option<Timing> {
        match &self.state {
            State::Body { last, .. } => Some(*last),
            _ => None,
        }
    }

    /// The other side spoke: a body whose end is unknown ends here. A body of known length
    /// goes on (a request body after `100 Continue`, say).
    pub fn end_on_switch(&mut self, out: &mut Vec<ReaderEvent>) {
        if matches!(
            self.state,
            State::Body {
                body: Body::UntilSwitch | Body::HeadRest(_),
                ..
            }
        ) {
            self.finish_unframed(out);
        }
    }

    /// Ends whatever body is being read, its end unknown (the connection closed, or it went
    /// idle). A partial head is dropped.
    pub fn finish_unframed(&mut self, out: &mut Vec<ReaderEvent>) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Body {
                body: Body::HeadRest(length),
                last,
                ..
            } => out.push(ReaderEvent::Done {
                last,
                body_bytes: length.unwrap_or(0),
                framed: false,
            }),
            State::Body { bytes, last, .. } => out.push(ReaderEvent::Done {
                last,
                body_bytes: bytes,
                framed: false,
            }),
            State::Lost(lost) => self.state = State::Lost(lost),
            State::Switched => self.state = State::Switched,
            _ => {}
        }
    }

    /// Where in `bytes` a message starts at the beginning of a line (after the first byte).
    fn next_start(&self, bytes: &[u8]) -> Option<usize> {
        bytes
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .find(|&i| i < bytes.len() && self.could_start(&bytes[i..], true))
    }

    /// Whether `bytes` may start a message: in step, a start token's first bytes are enough
    /// (a head split over chunks); lost, only a whole token finds the step again.
    fn could_start(&self, bytes: &[u8], whole: bool) -> bool {
        let prefix_match = |token: &[u8]| {
            let n = token.len().min(bytes.len());
            (!whole || n == token.len()) && bytes[..n] == token[..n]
        };
        match self.flow {
            Flow::Request => super::METHODS.iter().any(|m| prefix_match(m)),
            Flow::Response => prefix_match(b"HTTP/1."),
        }
    }

    /// Consumes one chunk. `framing_for` decides how a parsed head's body ends.
    pub fn feed(
        &mut self,
        chunk: &Chunk<'_>,
        framing_for: &mut dyn FnMut(&Head) -> Framing,
        out: &mut Vec<ReaderEvent>,
    ) {
        let timing = Timing::of(chunk);
        let cap = chunk.captured.len();
        let total = chunk.total_len.max(cap);
        let captured = chunk.captured;
        let mut pos = 0;
        // A chunk that starts like a message ends an unframed response (a server's next one).
        if self.flow == Flow::Response
            && super::looks_like_response(captured)
            && matches!(
                self.state,
                State::Body {
                    body: Body::UntilSwitch | Body::HeadRest(_),
                    ..
                }
            )
        {
            self.finish_unframed(out);
        }
        while pos < total {
            let state = std::mem::replace(&mut self.state, State::Idle);
            self.state = match state {
                State::Switched => {
                    self.state = State::Switched;
                    return;
                }
                State::Idle | State::Lost(_) => {
                    let lost = match state {
                        State::Lost(lost) => Some(lost),
                        _ => None,
                    };
                    if pos >= cap {
                        // Unseen bytes at a message start: any number of messages.
                        out.push(ReaderEvent::Gap);
                        self.state = State::Lost(Lost::Gap);
                        return;
                    }
                    if self.could_start(&captured[pos..cap], lost.is_some()) {
                        if lost.is_some() {
                            self.resyncs += 1;
                        }
                        State::Head {
                            buf: Vec::new(),
                            first: timing,
                        }
                    } else {
                        match lost {
                            None => {
                                self.parse_errors += 1;
                                out.push(ReaderEvent::ParseError);
                            }
                            Some(Lost::Gap) if self.flow == Flow::Request => {
                                out.push(ReaderEvent::Tail)
                            }
                            Some(Lost::Tail) if pos == 0 => out.push(ReaderEvent::TailGoesOn),
                            Some(_) => {}
                        }
                        let skipping = match lost {
                            Some(Lost::Gap | Lost::Tail) if self.flow == Flow::Request => {
                                Lost::Tail
                            }
                            _ => Lost::Skipping,
                        };
                        // Find the step again at the next line that starts a message.
                        match self.next_start(&captured[pos..cap]) {
                            Some(skip) => {
                                pos += skip;
                                State::Lost(Lost::Skipping)
                            }
                            None if cap < total => {
                                pos = cap;
                                State::Lost(skipping)
                            }
                            None => {
                                self.state = State::Lost(skipping);
                                return;
                            }
                        }
                    }
                }
                State::Head { mut buf, first } => {
                    let take = cap
                        .saturating_sub(pos)
                        .min(self.max_head.saturating_sub(buf.len()));
                    let before = buf.len();
                    let flow = self.flow;
                    let parse = move |bytes: &[u8]| match flow {
                        Flow::Request => head::parse_request(bytes),
                        Flow::Response => head::parse_response(bytes),
                    };
                    // Most heads arrive whole in one chunk: parse them in place, and copy only
                    // when a head continues in the next chunk.
                    let parsed = if buf.is_empty() {
                        let parsed = parse(&captured[pos..pos + take]);
                        if matches!(parsed, Parsed::Partial) {
                            buf.extend_from_slice(&captured[pos..pos + take]);
                        }
                        parsed
                    } else {
                        buf.extend_from_slice(&captured[pos..pos + take]);
                        parse(&buf)
                    };
                    match parsed {
                        Parsed::Complete { head, len } => {
                            pos += len.saturating_sub(before);
                            self.heads += 1;
                            let framing = framing_for(&head);
                            out.push(ReaderEvent::Head {
                                head,
                                first,
                                framing,
                            });
                            Self::body_state(framing, timing, out)
                        }
                        Parsed::Partial => {
                            pos += take;
                            let cut_short = pos < total || buf.len() >= self.max_head;
                            if !cut_short {
                                self.state = State::Head { buf, first };
                                return;
                            }
                            let truncated = match self.flow {
                                Flow::Request => head::truncated_request(&buf).map(Head::Request),
                                Flow::Response => {
                                    head::truncated_response(&buf).map(Head::Response)
                                }
                            };
                            let Some(head) = truncated else {
                                // Not even a start line: an unseen message, not foreign bytes.
                                if pos < total {
                                    out.push(ReaderEvent::Gap);
                                    self.state = State::Lost(Lost::Gap);
                                } else {
                                    self.parse_errors += 1;
                                    out.push(ReaderEvent::ParseError);
                                    self.state = State::Lost(Lost::Skipping);
                                }
                                return;
                            };
                            self.heads += 1;
                            // Where the head ends is unknown, so where the body ends is too;
                            // `framing_for` still sees the head (a 1xx or HEAD matters to it).
                            let framing = framing_for(&head);
                            let body_len = match &head {
                                Head::Request(request) => request.content_length,
                                Head::Response(response) => response.content_length,
                            };
                            if framing == Framing::Interim || self.flow == Flow::Request {
                                // A request (or an interim response) ends with its head as far
                                // as loupe can tell; what follows may be further messages.
                                out.push(ReaderEvent::Head {
                                    head,
                                    first,
                                    framing,
                                });
                                out.push(ReaderEvent::Done {
                                    last: timing,
                                    body_bytes: body_len.unwrap_or(0),
                                    framed: false,
                                });
                                if pos < total {
                                    out.push(ReaderEvent::Gap);
                                    self.state = State::Lost(Lost::Gap);
                                } else {
                                    self.state = State::Idle;
                                }
                                return;
                            }
                            out.push(ReaderEvent::Head {
                                head,
                                first,
                                framing: Framing::UntilSwitch,
                            });
                            // The unseen rest is head, not body: the body's size is its
                            // framing's.
                            pos = total;
                            State::Body {
                                body: Body::HeadRest(body_len),
                                bytes: 0,
                                last: timing,
                            }
                        }
                        Parsed::Invalid => {
                            self.parse_errors += 1;
                            out.push(ReaderEvent::ParseError);
                            // Look for the next message from the byte after this one's start.
                            pos = (pos + usize::from(before == 0)).min(total);
                            State::Lost(Lost::Skipping)
                        }
                    }
                }
                State::Body {
                    body, mut bytes, ..
                } => {
                    let last = timing;
                    match body {
                        Body::Length(left) => {
                            let n = left.min((total - pos) as u64);
                            pos += n as usize;
                            bytes += n;
                            if n == left {
                                out.push(ReaderEvent::Done {
                                    last,
                                    body_bytes: bytes,
                                    framed: true,
                                });
                                State::Idle
                            } else {
                                State::Body {
                                    body: Body::Length(left - n),
                                    bytes,
                                    last,
                                }
                            }
                        }
                        Body::Chunked(mut decoder) => {
                            if pos < cap {
                                match decoder.feed(&captured[pos..cap]) {
                                    ChunkStep::Done(used) => {
                                        pos += used;
                                        out.push(ReaderEvent::Done {
                                            last,
                                            body_bytes: bytes + used as u64,
                                            framed: true,
                                        });
                                        self.state = State::Idle;
                                        continue;
                                    }
                                    ChunkStep::More => {
                                        bytes += (cap - pos) as u64;
                                        pos = cap;
                                    }
                                    ChunkStep::Invalid => {
                                        self.parse_errors += 1;
                                        self.state = State::Body {
                                            body: Body::UntilSwitch,
                                            bytes,
                                            last,
                                        };
                                        continue;
                                    }
                                }
                            }
                            let gap = (total - pos) as u64;
                            if decoder.skip_gap(gap) {
                                pos = total;
                                State::Body {
                                    body: Body::Chunked(decoder),
                                    bytes: bytes + gap,
                                    last,
                                }
                            } else {
                                State::Body {
                                    body: Body::UntilSwitch,
                                    bytes,
                                    last,
                                }
                            }
                        }
                        Body::UntilSwitch => {
                            bytes += (total - pos) as u64;
                            pos = total;
                            State::Body {
                                body: Body::UntilSwitch,
                                bytes,
                                last,
                            }
                        }
                        Body::HeadRest(length) => {
                            pos = total;
                            State::Body {
                                body: Body::HeadRest(length),
                                bytes,
                                last,
                            }
                        }
                    }
                }
            };
        }
    }

    fn body_state(framing: Framing, at: Timing, out: &mut Vec<ReaderEvent>) -> State {
        let body = match framing {
            Framing::None | Framing::Interim | Framing::Switched | Framing::Length(0) => {
                out.push(ReaderEvent::Done {
                    last: at,
                    body_bytes: 0,
                    framed: true,
                });
                return if framing == Framing::Switched {
                    State::Switched
                } else {
                    State::Idle
                };
            }
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkDecoder::default()),
            Framing::UntilSwitch => Body::UntilSwitch,
        };
        State::Body {
            body,
            bytes: 0,
            last: at,
        }
    }
}
