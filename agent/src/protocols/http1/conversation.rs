//! One connection's requests and responses, paired in order.

use std::collections::VecDeque;

use super::{
    Chunk, Exchange, Flow, HttpEvent, Limits, Loss, Timing,
    framing::Framing,
    head::{Head, RequestHead, ResponseHead},
    reader::{Reader, ReaderEvent},
};

/// Counters of what did not parse or pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversationStats {
    pub parse_errors: u64,
    pub unanswered_requests: u64,
    pub unsolicited_responses: u64,
    pub resyncs: u64,
}

struct PendingRequest {
    seq: u64,
    /// The request chunk its head ended in.
    chunk: u64,
    head: RequestHead,
    first: Timing,
    last: Timing,
    body_bytes: u64,
}

/// What a response may answer, in request order.
enum Slot {
    Request(PendingRequest),
    /// A request whose head went unseen (its rest was skipped): one response is its.
    Tail {
        chunk: u64,
    },
    /// Unseen bytes of request chunk `chunk` that may hold any number of requests: each
    /// response is one of them, until a later chunk's request shows they were all answered.
    Gap {
        chunk: u64,
    },
}

impl Slot {
    fn chunk(&self) -> u64 {
        match self {
            Self::Request(request) => request.chunk,
            Self::Tail { chunk } | Self::Gap { chunk } => *chunk,
        }
    }
}

struct ResponseInProgress {
    head: ResponseHead,
    first: Timing,
}

/// Pairs the requests and responses of one connection.
pub struct Conversation {
    limits: Limits,
    requests: Reader,
    responses: Reader,
    pending: VecDeque<Slot>,
    /// The final response being read for `pending.front()`.
    current: Option<ResponseInProgress>,
    /// The response being read is a 1xx, or has no request to answer: its end is ignored.
    ignore_response_end: bool,
    /// A 101 Switching Protocols was answered: what follows is not HTTP.
    switched: bool,
    /// Request chunks fed so far.
    request_chunks: u64,
    /// The request chunk whose requests already ended the ones before.
    settled_chunk: u64,
    next_seq: u64,
    unanswered: u64,
    unsolicited: u64,
    seen_bytes: bool,
    scratch: Vec<ReaderEvent>,
}

impl Conversation {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            requests: Reader::new(Flow::Request, limits.max_head_bytes),
            responses: Reader::new(Flow::Response, limits.max_head_bytes),
            pending: VecDeque::new(),
            current: None,
            ignore_response_end: false,
            switched: false,
            request_chunks: 0,
            settled_chunk: 0,
            next_seq: 0,
            unanswered: 0,
            unsolicited: 0,
            seen_bytes: false,
            scratch: Vec::new(),
        }
    }

    /// Consumes one chunk, appending what it completed to `out`.
    pub fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<HttpEvent>) {
        if self.switched {
            return;
        }
        self.seen_bytes |= !chunk.captured.is_empty();
        let mut events = std::mem::take(&mut self.scratch);
        match chunk.flow {
            Flow::Request => {
                self.request_chunks += 1;
                // The client speaking again ends a response whose end was unknown.
                self.responses.end_on_switch(&mut events);
                self.on_response_events(&mut events, out);
                self.requests
                    .feed(&chunk, &mut request_framing, &mut events);
                self.on_request_events(&mut events, out);
            }
            Flow::Response => {
                self.requests.end_on_switch(&mut events);
                self.on_request_events(&mut events, out);
                let method_is_head = matches!(
                    self.pending.front(),
                    Some(Slot::Request(p)) if p.head.method.eq_ignore_ascii_case("HEAD")
                );
                self.responses.feed(
                    &chunk,
                    &mut |head| response_framing(head, method_is_head),
                    &mut events,
                );
                self.on_response_events(&mut events, out);
            }
        }
        self.scratch = events;
    }

    /// The connection closed: a response whose end was unknown ends here; requests still
    /// waiting for a response are counted and dropped.
    pub fn close(&mut self, out: &mut Vec<HttpEvent>) {
        let mut events = std::mem::take(&mut self.scratch);
        self.responses.finish_unframed(&mut events);
        self.on_response_events(&mut events, out);
        self.unanswered += self
            .pending
            .iter()
            .filter(|slot| matches!(slot, Slot::Request(_)))
            .count() as u64;
        self.pending.clear();
        self.current = None;
        self.scratch = events;
    }

    /// Ends a response still being read whose last bytes are older than `idle_ns`.
    pub fn flush_idle(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<HttpEvent>) {
        let Some(last) = self.responses.body_last() else {
            return;
        };
        if now_ns.saturating_sub(last.exit_ns) < idle_ns {
            return;
        }
        let mut events = std::mem::take(&mut self.scratch);
        self.responses.finish_unframed(&mut events);
        self.on_response_events(&mut events, out);
        self.scratch = events;
    }

    pub fn stats(&self) -> ConversationStats {
        ConversationStats {
            parse_errors: self.requests.parse_errors + self.responses.parse_errors,
            unanswered_requests: self.unanswered,
            unsolicited_responses: self.unsolicited,
            resyncs: self.requests.resyncs + self.responses.resyncs,
        }
    }

    /// None before any byte was seen; then whether anything parsed as HTTP.
    pub fn is_http(&self) -> Option<bool> {
        if !self.seen_bytes {
            return None;
        }
        Some(self.requests.heads + self.responses.heads > 0)
    }

    fn on_request_events(&mut self, events: &mut Vec<ReaderEvent>, out: &mut Vec<HttpEvent>) {
        for event in events.drain(..) {
            match event {
                ReaderEvent::Head {
                    head: Head::Request(head),
                    first,
                    ..
                } => {
                    self.settle(true, out);
                    if self.pending.len() >= self.limits.max_pending {
                        self.evict_oldest(out);
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    out.push(HttpEvent::RequestStarted {
                        seq,
                        first,
                        traceparent: head.traceparent.clone(),
                        line: super::line_key(&head.method, &head.target),
                    });
                    self.pending.push_back(Slot::Request(PendingRequest {
                        seq,
                        chunk: self.request_chunks,
                        head,
                        first,
                        last: first,
                        body_bytes: 0,
                    }));
                }
                ReaderEvent::Head { .. } => {}
                ReaderEvent::Done {
                    last, body_bytes, ..
                } => {
                    if let Some(Slot::Request(request)) = self.pending.back_mut() {
                        request.last = last;
                        request.body_bytes = body_bytes;
                    }
                }
                ReaderEvent::Gap => {
                    let chunk = self.request_chunks;
                    if !matches!(self.pending.back(), Some(Slot::Gap { chunk: c }) if *c == chunk) {
                        if self.pending.len() >= self.limits.max_pending {
                            self.evict_oldest(out);
                        }
                        self.pending.push_back(Slot::Gap { chunk });
                    }
                }
                ReaderEvent::Tail => {
                    // A request for certain, though unseen, read after the ones before it.
                    self.settle(false, out);
                    out.push(HttpEvent::Lost(Loss::Unseen(1)));
                    if self.pending.len() >= self.limits.max_pending {
                        self.evict_oldest(out);
                    }
                    self.pending.push_back(Slot::Tail {
                        chunk: self.request_chunks,
                    });
                }
                ReaderEvent::TailGoesOn => {
                    if let Some(Slot::Tail { chunk }) = self.pending.back_mut() {
                        *chunk = self.request_chunks;
                    }
                }
                ReaderEvent::ParseError => out.push(HttpEvent::Lost(Loss::ParseError)),
            }
        }
    }

    /// A request (seen, or the rest of an unseen one) starts in a later chunk than the ones
    /// waiting: an HTTP/1 server answers what
    /// it has read before it reads again, and a client that waits for each answer only sends
    /// again once it has one. So what still waits from earlier chunks (and is not being
    /// answered) was answered unseen: its response was lost, or it was in unseen bytes. Only
    /// a seen request gives up seen ones (`abandon`): the rest of an unseen one may be a seen
    /// one's, so it ends only the gaps before it.
    fn settle(&mut self, abandon: bool, out: &mut Vec<HttpEvent>) {
        let chunk = self.request_chunks;
        if self.settled_chunk == chunk {
            return;
        }
        if abandon {
            self.settled_chunk = chunk;
        }
        let answering = usize::from(self.current.is_some());
        let unanswered = &mut self.unanswered;
        let mut i = 0;
        // In place (retain keeps the order), so the queue keeps its room between requests.
        self.pending.retain(|slot| {
            let keep = i < answering
                || slot.chunk() >= chunk
                || (!abandon && matches!(slot, Slot::Request(_)));
            i += 1;
            if !keep && let Slot::Request(request) = slot {
                *unanswered += 1;
                out.push(HttpEvent::Abandoned { seq: request.seq });
            }
            keep
        });
    }

    /// Makes room for one more: the oldest waiting request is given up.
    fn evict_oldest(&mut self, out: &mut Vec<HttpEvent>) {
        if self.current.is_some() && self.pending.len() > 1 {
            // Keep the one being answered.
            if let Some(Slot::Request(request)) = self.pending.remove(1) {
                self.unanswered += 1;
                out.push(HttpEvent::Abandoned { seq: request.seq });
            }
            return;
        }
        self.current = None;
        if let Some(Slot::Request(request)) = self.pending.pop_front() {
            self.unanswered += 1;
            out.push(HttpEvent::Abandoned { seq: request.seq });
        }
    }

    fn on_response_events(&mut self, events: &mut Vec<ReaderEvent>, out: &mut Vec<HttpEvent>) {
        for event in events.drain(..) {
            match event {
                ReaderEvent::Head {
                    head: Head::Response(head),
                    first,
                    framing,
                } => {
                    if framing == Framing::Interim {
                        self.ignore_response_end = true;
                        continue;
                    }
                    // A final response: the one in progress (if its end was unknown) is over.
                    self.current = None;
                    let request = match self.pending.front_mut() {
                        Some(Slot::Request(request)) => request,
                        Some(Slot::Tail { .. }) => {
                            // Counted when its rest was skipped.
                            self.pending.pop_front();
                            self.ignore_response_end = true;
                            continue;
                        }
                        Some(Slot::Gap { .. }) => {
                            out.push(HttpEvent::Lost(Loss::Unseen(1)));
                            self.ignore_response_end = true;
                            continue;
                        }
                        None => {
                            // Its request was not seen (lost, or before attach).
                            self.unsolicited += 1;
                            out.push(HttpEvent::Lost(Loss::Unseen(1)));
                            self.ignore_response_end = true;
                            continue;
                        }
                    };
                    self.ignore_response_end = false;
                    out.push(HttpEvent::ResponseStarted {
                        seq: request.seq,
                        status: head.status,
                        first,
                    });
                    if framing == Framing::Switched {
                        self.switched = true;
                    }
                    self.current = Some(ResponseInProgress { head, first });
                }
                ReaderEvent::Head { .. } => {}
                ReaderEvent::Done {
                    last,
                    body_bytes,
                    framed,
                } => {
                    if std::mem::take(&mut self.ignore_response_end) {
                        continue;
                    }
                    let Some(response) = self.current.take() else {
                        continue;
                    };
                    let Some(Slot::Request(request)) = self.pending.pop_front() else {
                        continue;
                    };
                    out.push(HttpEvent::Exchange(Exchange {
                        seq: request.seq,
                        request: request.head,
                        response: response.head,
                        request_first: request.first,
                        request_last: request.last,
                        response_first: response.first,
                        response_last: last,
                        request_body_bytes: request.body_bytes,
                        response_body_bytes: body_bytes,
                        framed,
                    }));
                    if self.switched {
                        // What follows is another protocol's: requests waiting never finish.
                        for slot in self.pending.drain(..) {
                            if let Slot::Request(request) = slot {
                                out.push(HttpEvent::Abandoned { seq: request.seq });
                            }
                        }
                    }
                }
                ReaderEvent::Gap | ReaderEvent::Tail | ReaderEvent::TailGoesOn => {}
                ReaderEvent::ParseError => out.push(HttpEvent::Lost(Loss::ParseError)),
            }
        }
    }
}

/// How a response's body ends, given its head and whether it answers a HEAD request.
fn response_framing(head: &Head, answers_head: bool) -> Framing {
    let Head::Response(response) = head else {
        return Framing::None;
    };
    match response.status {
        101 => Framing::Switched,
        100..=199 => Framing::Interim,
        204 | 304 => Framing::None,
        _ if answers_head => Framing::None,
        _ if response.chunked => Framing::Chunked,
        _ => match response.content_length {
            Some(length) => Framing::Length(length),
            None => Framing::UntilSwitch,
        },
    }
}

/// How a request's body ends.
fn request_framing(head: &Head) -> Framing {
    let Head::Request(request) = head else {
        return Framing::None;
    };
    if request.chunked {
        Framing::Chunked
    } else {
        match request.content_length {
            Some(length) => Framing::Length(length),
            None => Framing::None,
        }
    }
}
