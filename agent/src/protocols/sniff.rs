//! The first bytes of a connection no protocol has recognised yet. A peer may write a message's
//! start in pieces (`GE`, then `T /...`, or a byte at a time); the pieces are held (a few dozen
//! bytes, one direction) so that [`recognise`](super::recognise) sees them together, and the
//! parser that recognises them is then given each held piece as the chunk it came in.

use super::{Chunk, Flow, Timing};

/// Bytes held at most: more than any protocol needs to recognise a message's start.
pub const MAX_HELD: usize = 64;

/// A piece held: which way it went, when, and how many of the held bytes are its.
#[derive(Clone, Copy, Debug)]
struct Piece {
    timing: Timing,
    len: usize,
}

/// The pieces of one direction held so far.
#[derive(Debug, Default)]
pub struct FirstBytes {
    /// Written by the target (else read).
    egress: bool,
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

impl FirstBytes {
    /// What to recognise a chunk going `egress` by, when pieces are held before it (in its
    /// direction): they, then its own first bytes. None: the chunk alone. A chunk the other
    /// way drops what was held.
    pub fn prefix(&mut self, egress: bool, captured: &[u8]) -> Option<Vec<u8>> {
        if egress != self.egress {
            self.clear();
            self.egress = egress;
        }
        if self.bytes.is_empty() {
            return None;
        }
        let mut prefix = self.bytes.clone();
        prefix.extend_from_slice(&captured[..captured.len().min(MAX_HELD)]);
        Some(prefix)
    }

    /// Whether pieces are held.
    pub fn holding(&self) -> bool {
        !self.bytes.is_empty()
    }

    /// How many bytes moved before the chunk being recognised (all captured).
    pub fn held_len(&self) -> usize {
        self.bytes.len()
    }

    /// Holds a chunk nothing recognised, when it was captured whole and what is held stays
    /// under [`MAX_HELD`]; false when it cannot be a message's start split in pieces (what was
    /// held is dropped).
    pub fn hold(&mut self, timing: Timing, captured: &[u8], total_len: usize) -> bool {
        if captured.len() < total_len || self.bytes.len() + captured.len() >= MAX_HELD {
            self.clear();
            return false;
        }
        self.bytes.extend_from_slice(captured);
        self.pieces.push(Piece {
            timing,
            len: captured.len(),
        });
        true
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.pieces.clear();
    }

    /// Gives each held piece, as the chunk it came in (`flow` now that a protocol knows it),
    /// to `push`, and forgets them.
    pub fn replay(&mut self, flow: Flow, mut push: impl FnMut(Chunk<'_>)) {
        let mut at = 0;
        for piece in &self.pieces {
            let captured = &self.bytes[at..at + piece.len];
            at += piece.len;
            push(Chunk {
                flow,
                enter_ns: piece.timing.enter_ns,
                exit_ns: piece.timing.exit_ns,
                captured,
                total_len: piece.len,
                tail: &[],
            });
        }
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(at: u64) -> Timing {
        Timing {
            enter_ns: at,
            exit_ns: at + 1,
        }
    }

    #[test]
    fn pieces_of_one_direction_make_one_prefix_and_replay_as_their_chunks() {
        let mut first = FirstBytes::default();
        assert_eq!(
            first.prefix(false, b"GE"),
            None,
            "nothing held: the chunk alone"
        );
        assert!(first.hold(timing(1), b"GE", 2));
        assert_eq!(
            first.prefix(false, b"T / HTTP/1.1\r\n").as_deref(),
            Some(b"GET / HTTP/1.1\r\n".as_slice())
        );
        assert_eq!(first.held_len(), 2);
        let mut replayed = Vec::new();
        first.replay(Flow::Request, |chunk| {
            replayed.push((chunk.enter_ns, chunk.captured.to_vec(), chunk.total_len))
        });
        assert_eq!(replayed, vec![(1, b"GE".to_vec(), 2)]);
        assert!(!first.holding());
    }

    #[test]
    fn the_other_direction_a_cut_chunk_or_too_many_bytes_drop_what_was_held() {
        let mut first = FirstBytes::default();
        first.prefix(true, b"*1");
        assert!(first.hold(timing(1), b"*1", 2));
        assert_eq!(first.prefix(false, b"+OK"), None, "the other direction");
        assert!(!first.holding());
        assert!(!first.hold(timing(2), b"GE", 4000), "not captured whole");
        let long = [b'x'; MAX_HELD];
        first.prefix(false, &long);
        assert!(!first.hold(timing(3), &long, MAX_HELD), "past the bound");
        assert!(!first.holding());
    }
}
