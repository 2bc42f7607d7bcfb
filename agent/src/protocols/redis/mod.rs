//! Redis' protocol (RESP2 and RESP3) over the captured bytes of a client connection.
//!
//! Commands are arrays of blobs (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or inline lines
//! (`PING\r\n`); replies are any RESP value, nested. Every blob carries its length, so a gap
//! (bytes counted, not captured) inside a large value costs nothing: its body is skipped by
//! count. A gap over a header loses the framing of that direction until a chunk that starts
//! like a command (or, once the client has sent one, a reply) again. Replies answer commands in
//! order; pushes (`>`, and RESP2's subscriber-mode messages) answer none and are skipped.
//! Arguments are never kept: a command is reported as its name and one `?` per argument, with
//! hashes of its first key and of all its arguments for telling misses and repeats apart.
//! Pure: no I/O, no clock, bounded memory, and no input makes it panic.

mod commands;
mod conversation;
mod framing;
mod seam;
mod span;

#[cfg(test)]
mod tests;

pub use conversation::{CommandDone, RedisConversation, RedisEvent, RedisStats};
pub use framing::FrameError;
pub use seam::SPEC;

/// Commands waiting for their reply, at most; beyond, the oldest is dropped (and its reply,
/// when it comes, skipped).
pub const MAX_PENDING: usize = 256;
/// Placeholders written in a command's text, at most: `DEL` of a thousand keys is `DEL ?`
/// with this many ` ?`, then ` ...`.
pub const MAX_TEXT_ARGS: u64 = 64;
/// Aggregates nested deeper than this lose the framing.
pub const MAX_DEPTH: usize = 32;
/// Longest blob believed (4 GiB; Redis' default limit is 512 MiB).
pub const MAX_BLOB: u64 = u32::MAX as u64;

/// Whether one chunk of a connection loupe did not see open (it was open at attach) is a
/// client's Redis commands: arrays of blobs, each named by a plausible command name
/// (`*<n>\r\n$<len>\r\n<NAME>\r\n...`), one after the other to the end of the write (or of the
/// capture, the last cut by it). Strict, as anything else might send text: inline commands are
/// not accepted here, and server bytes (`from_client` false) never are, since `+OK` or `:1`
/// could be anything and a resumed conversation waits for the client's next command anyway.
pub fn looks_like_resp(captured: &[u8], total_len: usize, from_client: bool) -> bool {
    from_client && commands_tile(captured, total_len, false)
}

/// Whether a client's first bytes on a connection are Redis: a command array as in
/// [`looks_like_resp`], or an inline command clients open with (`PING`, `HELLO 3`,
/// `AUTH secret`, `SELECT 2`).
pub fn opens_redis(bytes: &[u8]) -> bool {
    commands_tile(bytes, bytes.len(), true)
}

/// The captured bytes are whole commands one after the other, up to the end of the write or
/// to a command cut after its name.
fn commands_tile(captured: &[u8], total_len: usize, inline: bool) -> bool {
    let mut pos = 0;
    while pos < captured.len() {
        match framing::command_at(&captured[pos..], inline) {
            framing::Scan::Whole(len) => pos += len,
            framing::Scan::Cut => return true,
            framing::Scan::Bad => return false,
        }
    }
    pos > 0 && (pos == total_len.max(captured.len()) || captured.len() < total_len)
}
