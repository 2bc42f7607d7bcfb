//! HTTP/1.x over captured socket bytes.
//!
//! Input is one [`Chunk`] per syscall: how many bytes moved and the first of them (the capture
//! prefix). The bytes after the prefix are a *gap*: counted, not seen. A gap inside a body whose
//! length is known (Content-Length, or chunk data of a known size) costs nothing; a gap inside a
//! head or a chunk-size line loses the framing, and the message then ends when the other side
//! next speaks, when the connection closes, or after an idle time. [`Conversation`] pairs
//! requests with responses (keep-alive and pipelining included) and reports each pair as an
//! [`Exchange`] with the timings of its first and last bytes. Pure: no I/O, no clock, bounded
//! memory, and no input makes it panic.

mod conversation;
mod framing;
mod head;
mod reader;
mod seam;

#[cfg(test)]
mod tests;

pub use conversation::{Conversation, ConversationStats};
pub use head::{RequestHead, ResponseHead};
pub use seam::SPEC;

pub use super::{Chunk, Flow, Loss, Timing};

/// Bounds on what one conversation keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest head accumulated over several chunks; a longer one is parsed as truncated.
    pub max_head_bytes: usize,
    /// Requests waiting for their response (pipelining); beyond this the oldest is dropped.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_pending: 64,
        }
    }
}

/// A request and its response.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The request's number on its connection, from 0.
    pub seq: u64,
    pub request: RequestHead,
    pub response: ResponseHead,
    /// The chunks that carried the request's first and last bytes.
    pub request_first: Timing,
    pub request_last: Timing,
    /// The chunks that carried the response's first and last bytes.
    pub response_first: Timing,
    pub response_last: Timing,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// True when the response's end was known from its framing; false when it ended by the
    /// other side speaking, a close, or an idle timeout.
    pub framed: bool,
}

/// What a conversation reports as bytes arrive.
#[derive(Clone, Debug)]
pub enum HttpEvent {
    /// A request head was parsed (or is known to be truncated).
    RequestStarted {
        seq: u64,
        first: Timing,
        /// The caller's W3C trace context, if the request carried one.
        traceparent: Option<String>,
        /// Method and target, hashed: the same on both ends of a connection for the same
        /// request, for pairing a caller's request with the callee's.
        line: u64,
    },
    /// The response head for request `seq` was parsed.
    ResponseStarted {
        seq: u64,
        status: u16,
        first: Timing,
    },
    /// A response is complete.
    Exchange(Exchange),
    /// Request `seq` will never be paired (given up for a later one, evicted past
    /// `Limits::max_pending`, or left waiting when the connection switched protocols).
    Abandoned { seq: u64 },
    /// What could not be seen or read.
    Lost(Loss),
}

/// The standard request methods (RFC 9110 and PATCH), each with the space that ends it on a
/// request line.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// `method` as one of the standard methods (exact case), if it is one: a `&'static str`, so
/// callers can keep it without allocating.
pub fn known_method(method: &str) -> Option<&'static str> {
    METHODS.iter().find_map(|token| {
        let name = token.strip_suffix(b" ")?;
        (name == method.as_bytes())
            .then(|| std::str::from_utf8(name).ok())
            .flatten()
    })
}

/// The identity of a request line (method and target as sent).
pub fn line_key(method: &str, target: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = rustc_hash::FxHasher::default();
    (method, target).hash(&mut hasher);
    hasher.finish()
}

/// Whether `bytes` start like an HTTP/1 request line.
pub fn looks_like_request(bytes: &[u8]) -> bool {
    METHODS.iter().any(|method| bytes.starts_with(method))
}

/// Whether `bytes` start like an HTTP/1 status line.
pub fn looks_like_response(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.")
}
