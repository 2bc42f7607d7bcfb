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
}

enum Body {
    Length(u64),
    Chunked(ChunkDecoder),
    UntilSwitch,
}

enum State {
    /// Between messages: the next seen byte starts one.
    Idle,
    /// Lost: skipping chunks until one starts like a message.
    Desync,
    Head {
        buf: Vec<u8>,
        first: Timing,
    },
    Body {
        body: Body,
        bytes: u64,
        last: Timing,
    },
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
                body: Body::UntilSwitch,
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
            State::Body { bytes, last, .. } => out.push(ReaderEvent::Done {
                last,
                body_bytes: bytes,
                framed: false,
            }),
            State::Desync => self.state = State::Desync,
            _ => {}
        }
    }

    fn could_start(&self, bytes: &[u8]) -> bool {
        let prefix_match = |token: &[u8]| {
            let n = token.len().min(bytes.len());
            bytes[..n] == token[..n]
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
        while pos < total {
            let state = std::mem::replace(&mut self.state, State::Idle);
            self.state = match state {
                State::Idle | State::Desync => {
                    let lost = matches!(state, State::Desync);
                    if pos >= cap || !self.could_start(&captured[pos..cap]) {
                        if !lost && pos < cap {
                            self.parse_errors += 1;
                        }
                        // Unseen or foreign bytes at a message start: skip the rest.
                        self.state = State::Desync;
                        return;
                    }
                    if lost {
                        self.resyncs += 1;
                    }
                    State::Head {
                        buf: Vec::new(),
                        first: timing,
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
                                self.parse_errors += 1;
                                self.state = State::Desync;
                                return;
                            };
                            self.heads += 1;
                            // Where the head ends is unknown, so where the body ends is too;
                            // `framing_for` still sees the head (a 1xx or HEAD matters to it).
                            let _ = framing_for(&head);
                            out.push(ReaderEvent::Head {
                                head,
                                first,
                                framing: Framing::UntilSwitch,
                            });
                            let bytes = (total - pos) as u64;
                            pos = total;
                            State::Body {
                                body: Body::UntilSwitch,
                                bytes,
                                last: timing,
                            }
                        }
                        Parsed::Invalid => {
                            self.parse_errors += 1;
                            self.state = State::Desync;
                            return;
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
                    }
                }
            };
        }
    }

    fn body_state(framing: Framing, at: Timing, out: &mut Vec<ReaderEvent>) -> State {
        let body = match framing {
            Framing::None | Framing::Interim | Framing::Length(0) => {
                out.push(ReaderEvent::Done {
                    last: at,
                    body_bytes: 0,
                    framed: true,
                });
                return State::Idle;
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
