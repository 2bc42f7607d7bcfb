//! Which request an outbound call belongs to: the one place the rule lives. Pure: the stitcher
//! gathers what it knows about the call's thread and process, this decides.
//!
//! A wrong parent is the worst thing loupe can do (a diagnosis of the wrong request, an N+1 on a
//! route that has none), so the rule only nests a call where one request is certain:
//!
//! - a candidate is a request still in flight (its head read, its response not started) that
//!   began before the call and is younger than [`MAX_REQUEST_AGE_NS`];
//! - on a thread-per-request server the key is the thread: the call is the child of the only
//!   candidate on it; several candidates (an event loop) leave it [`Unnested::Ambiguous`];
//! - where the process's threads are shared by a runtime loupe cannot see into (Go moves
//!   goroutines between threads), the thread says nothing: a call made while any request of the
//!   process is in flight is ambiguous;
//! - an event loop that runs each event to completion (nginx) nests a call under the request
//!   whose bytes the thread read last, when it read nothing else since; otherwise as threads;
//! - a Python thread whose contextvars Context loupe reads (asyncio runs each request in its own
//!   task, each task in its own Context) keys calls by Context, late: a call made while several
//!   requests were in flight on its thread waits for each of them to answer ([`LateCall`]) and
//!   belongs to the only one whose response was written from the call's Context. A candidate
//!   that never answers, or answers from a Context loupe could not read, leaves it ambiguous.
//!
//! Every call left without a parent says why (`loupe.parent` on its span) and is counted.

/// Requests in flight longer than this are not candidates: their end most likely went unseen
/// (a lost event), and a stale request must not adopt every later call of its thread. Matches
/// how long a request's calls wait for it in the diagnosis stage.
pub const MAX_REQUEST_AGE_NS: u64 = 120_000_000_000;

/// How a process schedules its requests onto threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// A request runs on one thread from its read to its response (thread-per-request servers,
    /// prefork workers, and a single-threaded loop while it serves one request).
    Threads,
    /// An event loop that runs each event to completion (nginx): what it writes right after
    /// reading a request is that request's.
    RunToCompletion,
    /// Threads shared by a runtime scheduler (Go's goroutines) loupe cannot see into: a
    /// thread is no key.
    SharedThreads,
    /// A Go program whose goroutine ids loupe reads at each syscall: the goroutine is the key
    /// (net/http serves a connection's requests on one goroutine and runs the handler there).
    /// A call whose goroutine went unread is decided as [`Runtime::SharedThreads`].
    Goroutines,
    /// A Python program whose threads' current contextvars Context loupe reads at each syscall:
    /// on an asyncio loop each request runs in its own task and Context, so a call nests under
    /// the request whose response was written from the call's Context ([`LateCall`]).
    Tasks,
}

impl Runtime {
    /// What the user is told once about a process whose calls nest other than by thread.
    pub fn note(self) -> Option<&'static str> {
        match self {
            Self::Threads => None,
            Self::RunToCompletion => Some(
                "runs each event to completion (nginx): a call nests under the request it read just before",
            ),
            Self::SharedThreads => Some(
                "is a Go program: goroutines move between threads, so its calls are not nested (loupe.parent=ambiguous)",
            ),
            Self::Goroutines => {
                Some("is a Go program: its calls nest under the request their goroutine serves")
            }
            Self::Tasks => Some(
                "is a Python program: its calls nest by thread, and on an asyncio loop under the request whose response their task wrote",
            ),
        }
    }
}

/// A request in flight: head read, response not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The thread that read its head (for CPU sampling: the key may be a goroutine).
    pub tid: u32,
    pub conn_id: u64,
    pub seq: u64,
    pub trace_id: u128,
    pub span_id: u64,
    /// When its first byte was read (ns since boot).
    pub start_ns: u64,
}

/// Why a call has no parent (exported as `loupe.parent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unnested {
    /// No request could have made it: none was in flight on its key.
    None,
    /// More than one request could have made it, or the key says nothing: loupe does not guess.
    Ambiguous,
}

impl Unnested {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Ambiguous => "ambiguous",
        }
    }
}

/// What the stitcher knows when a call starts.
#[derive(Clone, Copy, Debug)]
pub struct CallContext<'a> {
    pub runtime: Runtime,
    /// When the call started (ns since boot).
    pub call_ns: u64,
    /// Requests in flight on the call's key: its thread, or its goroutine
    /// ([`Runtime::Goroutines`]).
    pub on_thread: &'a [InFlight],
    /// Requests in flight anywhere in the process (consulted for [`Runtime::SharedThreads`]).
    pub in_process: usize,
    /// The request (connection id, sequence number) whose bytes the thread read last, if the
    /// thread read nothing else since ([`Runtime::RunToCompletion`] only).
    pub last_read: Option<(u64, u64)>,
}

/// The decision for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    Request(InFlight),
    Unnested(Unnested),
}

/// Whether `request` may have made a call at `call_ns`.
pub fn is_candidate(request: &InFlight, call_ns: u64) -> bool {
    request.start_ns <= call_ns && call_ns - request.start_ns <= MAX_REQUEST_AGE_NS
}

/// The one rule.
pub fn decide(call: &CallContext<'_>) -> Parent {
    let mut candidates = call
        .on_thread
        .iter()
        .filter(|request| is_candidate(request, call.call_ns));
    if matches!(call.runtime, Runtime::SharedThreads | Runtime::Goroutines) {
        return Parent::Unnested(if call.in_process == 0 {
            Unnested::None
        } else {
            Unnested::Ambiguous
        });
    }
    if call.runtime == Runtime::RunToCompletion
        && let Some((conn_id, seq)) = call.last_read
        && let Some(request) = call
            .on_thread
            .iter()
            .find(|r| r.conn_id == conn_id && r.seq == seq && is_candidate(r, call.call_ns))
    {
        return Parent::Request(*request);
    }
    match (candidates.next(), candidates.next()) {
        (None, _) => Parent::Unnested(Unnested::None),
        (Some(only), None) => Parent::Request(*only),
        (Some(_), Some(_)) => Parent::Unnested(Unnested::Ambiguous),
    }
}

/// How long a call waits for the requests that may have made it to answer. A candidate that has
/// not answered by then leaves the call ambiguous (a request that slow is rarely the only one).
pub const LATE_LIMIT_NS: u64 = 10_000_000_000;

/// A call a Python thread made in Context `unit` while several of its requests were in flight:
/// it is decided once each of them answered (or left unanswered), by the Contexts their
/// responses were written from.
#[derive(Clone, Debug)]
pub struct LateCall {
    unit: u64,
    candidates: Vec<InFlight>,
    /// Span ids of the candidates yet to answer.
    waiting: Vec<u64>,
    /// The candidates that answered from `unit`.
    matched: Vec<InFlight>,
    /// Candidates that left without answering, or answered from a Context loupe could not read.
    unknown: usize,
}

impl LateCall {
    pub fn new(unit: u64, candidates: Vec<InFlight>) -> Self {
        Self {
            unit,
            waiting: candidates.iter().map(|request| request.span_id).collect(),
            candidates,
            matched: Vec::new(),
            unknown: 0,
        }
    }

    /// The requests that may have made the call (their span ids).
    pub fn candidates(&self) -> impl Iterator<Item = u64> + '_ {
        self.candidates.iter().map(|request| request.span_id)
    }

    /// Candidate `span_id` started its response from Context `unit` (0: not read), or left
    /// without one (None). Returns true once no candidate is waited for.
    pub fn answered(&mut self, span_id: u64, unit: Option<u64>) -> bool {
        if let Some(at) = self.waiting.iter().position(|id| *id == span_id) {
            self.waiting.swap_remove(at);
            match unit {
                Some(unit) if unit != 0 && unit == self.unit => {
                    if let Some(request) = self.candidates.iter().find(|r| r.span_id == span_id) {
                        self.matched.push(*request);
                    }
                }
                Some(unit) if unit != 0 => {}
                _ => self.unknown += 1,
            }
        }
        self.waiting.is_empty()
    }

    /// The decision: the only candidate that answered from the call's Context, when every
    /// other one answered from another; otherwise ambiguous. Candidates still waited for count
    /// as unknown (the wait ran out).
    pub fn decide(&self) -> Parent {
        match (self.matched.as_slice(), self.unknown + self.waiting.len()) {
            ([only], 0) => Parent::Request(*only),
            _ => Parent::Unnested(Unnested::Ambiguous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn request(conn_id: u64, start_ms: u64) -> InFlight {
        InFlight {
            tid: 1,
            conn_id,
            seq: 0,
            trace_id: u128::from(conn_id),
            span_id: conn_id,
            start_ns: start_ms * MS,
        }
    }

    fn call<'a>(runtime: Runtime, call_ms: u64, on_thread: &'a [InFlight]) -> CallContext<'a> {
        CallContext {
            runtime,
            call_ns: call_ms * MS,
            on_thread,
            in_process: on_thread.len(),
            last_read: None,
        }
    }

    #[test]
    fn the_only_request_in_flight_on_a_thread_is_the_parent() {
        let serving = [request(1, 10)];
        assert_eq!(
            decide(&call(Runtime::Threads, 20, &serving)),
            Parent::Request(serving[0])
        );
    }

    #[test]
    fn a_thread_serving_nothing_makes_calls_of_its_own() {
        assert_eq!(
            decide(&call(Runtime::Threads, 20, &[])),
            Parent::Unnested(Unnested::None)
        );
    }

    #[test]
    fn two_requests_in_flight_on_a_thread_are_ambiguous() {
        let serving = [request(1, 10), request(2, 12)];
        assert_eq!(
            decide(&call(Runtime::Threads, 20, &serving)),
            Parent::Unnested(Unnested::Ambiguous)
        );
    }

    #[test]
    fn a_request_that_began_after_the_call_is_no_candidate() {
        // The call started at 20 ms; request 2 was read at 25 ms (events of one thread arrive in
        // order, but a call's start can be stamped before a later read is handled).
        let serving = [request(1, 10), request(2, 25)];
        assert_eq!(
            decide(&call(Runtime::Threads, 20, &serving)),
            Parent::Request(serving[0])
        );
        let later = [request(2, 25)];
        assert_eq!(
            decide(&call(Runtime::Threads, 20, &later)),
            Parent::Unnested(Unnested::None)
        );
    }

    #[test]
    fn a_request_past_the_age_bound_adopts_nothing() {
        let stale = [request(1, 10)];
        let late = 10 + MAX_REQUEST_AGE_NS / MS + 1;
        assert_eq!(
            decide(&call(Runtime::Threads, late, &stale)),
            Parent::Unnested(Unnested::None)
        );
        // A stale one beside a live one: the live one is the only candidate.
        let mixed = [request(1, 10), request(2, late - 5)];
        assert_eq!(
            decide(&call(Runtime::Threads, late, &mixed)),
            Parent::Request(mixed[1])
        );
    }

    #[test]
    fn shared_threads_never_nest_while_any_request_is_in_flight() {
        // One request on this very thread: a goroutine of another request may be running here.
        let serving = [request(1, 10)];
        assert_eq!(
            decide(&call(Runtime::SharedThreads, 20, &serving)),
            Parent::Unnested(Unnested::Ambiguous)
        );
        // None on this thread, one elsewhere in the process: still ambiguous.
        let mut elsewhere = call(Runtime::SharedThreads, 20, &[]);
        elsewhere.in_process = 1;
        assert_eq!(decide(&elsewhere), Parent::Unnested(Unnested::Ambiguous));
        // Nothing in flight anywhere: a call of the process's own.
        let idle = call(Runtime::SharedThreads, 20, &[]);
        assert_eq!(decide(&idle), Parent::Unnested(Unnested::None));
    }

    #[test]
    fn an_event_loop_nests_what_follows_the_read_of_a_request() {
        let serving = [request(1, 10), request(2, 12), request(3, 14)];
        let mut after_read = call(Runtime::RunToCompletion, 20, &serving);
        after_read.last_read = Some((2, 0));
        assert_eq!(decide(&after_read), Parent::Request(serving[1]));
        // Something else was read since (an upstream's response): no request is certain.
        let blind = call(Runtime::RunToCompletion, 20, &serving);
        assert_eq!(decide(&blind), Parent::Unnested(Unnested::Ambiguous));
        // The request read last has answered already: it is no candidate.
        let mut answered = call(Runtime::RunToCompletion, 20, &serving[..1]);
        answered.last_read = Some((2, 0));
        assert_eq!(decide(&answered), Parent::Request(serving[0]));
    }

    #[test]
    fn an_event_loop_does_not_nest_under_a_stale_read() {
        let serving = [request(1, 10), request(2, 12)];
        let late = 12 + MAX_REQUEST_AGE_NS / MS + 1;
        let mut stale = call(Runtime::RunToCompletion, late, &serving);
        stale.last_read = Some((2, 0));
        assert_eq!(decide(&stale), Parent::Unnested(Unnested::None));
    }

    fn late(unit: u64, candidates: &[InFlight]) -> LateCall {
        LateCall::new(unit, candidates.to_vec())
    }

    #[test]
    fn a_late_call_belongs_to_the_only_request_that_answered_from_its_context() {
        let serving = [request(1, 10), request(2, 12), request(3, 14)];
        let mut call = late(0xc0, &serving);
        assert!(!call.answered(2, Some(0xc0)));
        assert!(!call.answered(1, Some(0xa0)));
        assert!(!call.answered(99, Some(0xc0)), "not a candidate: ignored");
        assert!(call.answered(3, Some(0xb0)));
        assert_eq!(call.decide(), Parent::Request(serving[1]));
    }

    #[test]
    fn a_late_call_no_or_two_requests_claim_is_ambiguous() {
        let serving = [request(1, 10), request(2, 12)];
        let mut none = late(0xc0, &serving);
        none.answered(1, Some(0xa0));
        none.answered(2, Some(0xb0));
        assert_eq!(none.decide(), Parent::Unnested(Unnested::Ambiguous));
        // Two requests answered from one Context (a server serving several in one task): no
        // guess.
        let mut shared = late(0xc0, &serving);
        shared.answered(1, Some(0xc0));
        shared.answered(2, Some(0xc0));
        assert_eq!(shared.decide(), Parent::Unnested(Unnested::Ambiguous));
    }

    #[test]
    fn a_candidate_that_never_answers_or_answers_unread_leaves_a_late_call_ambiguous() {
        let serving = [request(1, 10), request(2, 12)];
        let mut gone = late(0xc0, &serving);
        gone.answered(1, Some(0xc0));
        assert!(gone.answered(2, None));
        assert_eq!(gone.decide(), Parent::Unnested(Unnested::Ambiguous));
        let mut unread = late(0xc0, &serving);
        unread.answered(1, Some(0xc0));
        unread.answered(2, Some(0));
        assert_eq!(unread.decide(), Parent::Unnested(Unnested::Ambiguous));
        // The wait ran out before request 2 answered.
        let mut waiting = late(0xc0, &serving);
        waiting.answered(1, Some(0xc0));
        assert_eq!(waiting.decide(), Parent::Unnested(Unnested::Ambiguous));
    }
}
