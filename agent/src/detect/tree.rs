//! A finished server span with the client spans it made: what every detector reads.

use crate::spans::{OpType, SpanRecord};

/// Transaction bookkeeping and session settings: never N+1, never a cache opportunity.
const BOOKKEEPING: &[&str] = &[
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "SHOW",
    "RESET",
    "DISCARD",
    "DEALLOCATE",
    "PREPARE",
];

/// A request and its children, children in no particular order.
pub struct Tree<'a> {
    pub parent: &'a SpanRecord,
    pub children: &'a [SpanRecord],
}

impl<'a> Tree<'a> {
    pub fn new(parent: &'a SpanRecord, children: &'a [SpanRecord]) -> Self {
        Self { parent, children }
    }

    pub fn window(&self) -> (u64, u64) {
        (self.parent.start_ns, self.parent.end_ns)
    }

    pub fn duration_ns(&self) -> u64 {
        self.parent.duration_ns()
    }

    /// `ns` as a share of the request, 0..=1.
    pub fn share(&self, ns: u64) -> f64 {
        match self.duration_ns() {
            0 => 0.0,
            total => (ns as f64 / total as f64).clamp(0.0, 1.0),
        }
    }

    /// The child's time clipped to the request.
    /// Never `end < start`, even for a child outside the request.
    pub fn clipped(&self, child: &SpanRecord) -> (u64, u64) {
        let (start, end) = self.window();
        let end = end.max(start);
        let child_start = child.start_ns.clamp(start, end);
        (child_start, child.end_ns.clamp(child_start, end))
    }

    /// The children that are database queries doing work (no transaction bookkeeping).
    pub fn queries(&self) -> impl Iterator<Item = (usize, &'a SpanRecord)> + 'a {
        self.children.iter().enumerate().filter(|(_, child)| {
            child.op == OpType::DbClient
                && !child
                    .attr_str("db.operation.name")
                    .is_some_and(|op| BOOKKEEPING.contains(&op))
        })
    }
}

/// What a child did, in a few words: `GET 127.0.0.1:8081/score`, or the normalized statement.
/// Identical children share a label.
pub fn label(child: &SpanRecord) -> String {
    match child.op {
        OpType::HttpClient => {
            let method = child.attr_str("http.request.method").unwrap_or("HTTP");
            let route = child.attr_str("url.template").unwrap_or("");
            match peer(child) {
                Some(peer) => format!("{method} {peer}{route}"),
                None => format!("{method} {route}"),
            }
        }
        OpType::DbClient | OpType::CacheClient => match child.attr_str("db.query.text") {
            Some(text) => shorten(text, 120),
            None => child.name.to_string(),
        },
        OpType::HttpServer => child.name.to_string(),
    }
}

/// Where a child went: `host:port`, when known.
pub fn peer(child: &SpanRecord) -> Option<String> {
    let host = child
        .attr_str("server.address")
        .or(child.attr_str("network.peer.address"))?;
    match child
        .attr_int("server.port")
        .or(child.attr_int("network.peer.port"))
    {
        Some(port) => Some(format!("{host}:{port}")),
        None => Some(host.to_owned()),
    }
}

/// The statement identity of a query: its fingerprint, else its normalized text.
pub fn statement(child: &SpanRecord) -> Option<&str> {
    child
        .attr_str("loupe.db.fingerprint")
        .or(child.attr_str("db.query.text"))
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}
