//! PostgreSQL's frontend/backend protocol (v3) over captured socket bytes, for clients that do
//! not go through libpq as much as for those that do.
//!
//! Every message carries its length, so a gap (bytes counted, not captured) inside a message
//! costs nothing: its body is skipped. A gap over a message header loses the framing until the
//! next chunk that starts with a plausible message. Simple queries (`Q`) end at ReadyForQuery;
//! extended-protocol executions (`P`/`B`/`E` ... `S`) end at their CommandComplete (or error),
//! reported at the ReadyForQuery after their Sync. A lost chunk costs the queries whose sync
//! point or answer it carried: each ReadyForQuery is paired with the sync point it answers, not
//! merely the oldest (`pairing`). Pure: no I/O, no clock, bounded memory (queries and sync
//! points waiting are bounded, the dropped ones reported), and no input makes it panic.

mod conversation;
pub(crate) mod framing;
mod messages;
mod pairing;
mod seam;

#[cfg(test)]
mod tests;

pub use conversation::{PgConversation, PgEvent, PgStats, QueryDone};
pub use messages::embeds_digest;
pub use messages::tag_rows;
pub use seam::SPEC;

/// Protocol version 3.0 in a StartupMessage.
const PROTOCOL_V3: u32 = 196_608;
/// The magic numbers of SSLRequest and GSSENCRequest.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Longest message body kept for parsing (a query text, an error); longer ones are parsed as far
/// as they were captured.
pub const MAX_KEPT_BODY: usize = 16 * 1024;

/// Whether a client's first bytes open a PostgreSQL session: a StartupMessage, SSLRequest or
/// GSSENCRequest.
pub fn opens_session(bytes: &[u8]) -> bool {
    let (Some(len), Some(code)) = (bytes.get(0..4).map(be32), bytes.get(4..8).map(be32)) else {
        return false;
    };
    ((code == SSL_REQUEST || code == GSSENC_REQUEST) && len == 8)
        || (code == PROTOCOL_V3 && (9..=10_000).contains(&len))
}

/// Whether one chunk of a connection loupe did not see open (it was open at attach) is
/// PostgreSQL past its start-up, from the client (`from_client`) or the server: every message
/// header in the captured bytes has a type that side sends and a sane length, one after the
/// other, and a client's messages end where its write ends. A warm pool's first bytes are
/// whatever it sends next: Bind/Execute/Sync of a statement prepared long ago, a Query, a
/// Parse, or the server's reply to a query sent before attach.
pub fn looks_like_session(captured: &[u8], total_len: usize, from_client: bool) -> bool {
    let plausible = if from_client {
        framing::frontend_kind
    } else {
        framing::backend_kind
    };
    let total_len = total_len.max(captured.len());
    let (mut pos, mut messages) = (0usize, 0u32);
    while pos < captured.len() {
        let Some(header) = captured.get(pos..pos + 5) else {
            // A header cut by the end of the capture: judged on the messages before it.
            break;
        };
        let len = be32(&header[1..5]) as usize;
        if !plausible(header[0]) || !(4..(64 << 20)).contains(&len) {
            return false;
        }
        if header[0] == b'Q' && !text_like(&captured[pos + 5..]) {
            return false;
        }
        pos += 1 + len;
        messages += 1;
    }
    messages > 0 && (!from_client || pos == total_len || captured.len() < total_len)
}

/// The first bytes of a query text look like text.
fn text_like(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .take(32)
            .all(|&b| b == 0 || b.is_ascii_graphic() || b.is_ascii_whitespace())
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
