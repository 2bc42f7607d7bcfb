//! Protocol parsers: pure functions from captured socket bytes to messages, with no I/O, so they
//! can be golden-tested on captured payloads and fuzzed. Each parser takes the same [`Chunk`]s:
//! one per syscall, with the count of bytes moved and the captured prefix of them.

pub mod http1;
pub mod postgres;

/// Which half of an exchange a chunk carries: on a server socket reads are requests, on a
/// client socket writes are (for PostgreSQL: the frontend's messages are the requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Request,
    Response,
}

/// The bytes one syscall moved.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub flow: Flow,
    /// Syscall entry, ns since boot.
    pub enter_ns: u64,
    /// Syscall return, ns since boot.
    pub exit_ns: u64,
    /// The first bytes moved (`len() <= total_len`).
    pub captured: &'a [u8],
    /// Every byte moved.
    pub total_len: usize,
}

/// When a syscall ran, ns since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub enter_ns: u64,
    pub exit_ns: u64,
}

impl Timing {
    pub fn of(chunk: &Chunk<'_>) -> Self {
        Self {
            enter_ns: chunk.enter_ns,
            exit_ns: chunk.exit_ns,
        }
    }
}
