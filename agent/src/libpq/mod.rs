//! libpq, the second source of PostgreSQL queries ([`LibpqSource`]: what ties its queries to
//! the wire's, so a query both see is one span), and its tracker ([`LibpqTracker`]): libpq calls
//! (from the uprobes) to queries, one per statement the application ran, whichever of libpq's
//! query APIs it used.
//!
//! The synchronous functions (PQexec, PQexecParams, PQexecPrepared, PQprepare) call the send
//! functions and PQgetResult inside: while one is open on a thread, that thread's other libpq
//! events are its insides and are ignored, so a query is never counted twice. The asynchronous
//! ones (PQsend*) queue a query on their connection; PQgetResult results fill it in, and the
//! NULL that ends the results finishes it. Pure: no I/O, no clock, bounded memory.

mod source;
mod tracker;

#[cfg(test)]
mod tests;

pub use source::{LibpqSource, QueryHost};
pub use tracker::{LibpqEvent, LibpqQuery, LibpqStats, LibpqTracker};
