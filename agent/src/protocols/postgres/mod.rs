//! PostgreSQL's frontend/backend protocol (v3) over captured socket bytes, for clients that do
//! not go through libpq as much as for those that do.
//!
//! Every message carries its length, so a gap (bytes counted, not captured) inside a message
//! costs nothing: its body is skipped. A gap over a message header loses the framing until the
//! next chunk that starts with a plausible message. Simple queries (`Q`) end at ReadyForQuery;
//! extended-protocol executions (`P`/`B`/`E` ... `S`) end at their CommandComplete (or error).
//! Pure: no I/O, no clock, bounded memory, and no input makes it panic.

mod conversation;
mod framing;
mod messages;

#[cfg(test)]
mod tests;

pub use conversation::{PgConversation, PgEvent, PgStats, QueryDone};
pub use messages::tag_rows;

/// Protocol version 3.0 in a StartupMessage.
const PROTOCOL_V3: u32 = 196_608;
/// The magic numbers of SSLRequest and GSSENCRequest.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Longest message body kept for parsing (a query text, an error); longer ones are parsed as far
/// as they were captured.
pub const MAX_KEPT_BODY: usize = 16 * 1024;

/// Whether a client's first bytes open a PostgreSQL session (StartupMessage, SSLRequest or
/// GSSENCRequest), or look like a query on a session opened before loupe attached.
pub fn looks_like_client(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(0..4).map(be32) else {
        return false;
    };
    if let Some(code) = bytes.get(4..8).map(be32) {
        if (code == SSL_REQUEST || code == GSSENC_REQUEST) && len == 8 {
            return true;
        }
        if code == PROTOCOL_V3 && (9..=10_000).contains(&len) {
            return true;
        }
    }
    // A session already open: a simple Query or a Parse with a sane length and text.
    match bytes.first() {
        Some(b'Q' | b'P') => {
            let Some(len) = bytes.get(1..5).map(be32) else {
                return false;
            };
            let text = &bytes[5..];
            (5..(64 << 20)).contains(&len)
                && !text.is_empty()
                && text
                    .iter()
                    .take(32)
                    .all(|&b| b == 0 || b.is_ascii_graphic() || b.is_ascii_whitespace())
        }
        _ => false,
    }
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
