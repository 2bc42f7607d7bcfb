//! The input format the conversation targets share: a script of steps, each a chunk in either
//! direction (its captured bytes and an unseen tail), an idle flush or a close. Small and
//! byte-oriented so that libFuzzer's mutations map onto it and a captured stream becomes a seed
//! by wrapping it (`cargo xtask fuzz --seed` writes the corpus in this format).
//!
//! ```text
//! input := config:u8 step*
//! step  := op:u8 (len:u16le bytes[len])?    (op % 4: 0 request chunk, 1 response chunk,
//!                                            2 idle flush, 3 close)
//! ```
//!
//! For a chunk, `op >> 2` picks the unseen tail from [`GAPS`] (total_len = captured + gap); a
//! length past the end of the input takes what is left. For a flush, `op >> 2` is how many
//! idle limits past the last chunk it comes. Time goes 1 µs a step.

use loupe::protocols::{Chunk, Flow};

/// Unseen tails a chunk can have: none, small, a body's worth, past any capture.
pub const GAPS: [usize; 64] = {
    let mut gaps = [0usize; 64];
    let small = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 64, 100, 1000,
    ];
    let mut i = 0;
    while i < small.len() {
        gaps[i] = small[i];
        i += 1;
    }
    // 2^6 .. 2^31: long bodies, up to what one syscall can move.
    while i < 46 {
        gaps[i] = 1 << (i - small.len() + 6);
        i += 1;
    }
    // Odd sizes, 2^14 - 1 .. 2^31 - 1.
    while i < 64 {
        gaps[i] = (1 << (i - 46 + 14)) - 1;
        i += 1;
    }
    gaps
};

/// The idle limit flushes are measured in (ns).
pub const IDLE_NS: u64 = 1_000_000_000;

/// One step of a script.
pub enum Step<'a> {
    Chunk(Chunk<'a>),
    /// `flush_idle(now_ns, IDLE_NS)`.
    Flush {
        now_ns: u64,
    },
    Close,
}

/// A script's first byte and its steps.
pub fn parse(data: &[u8]) -> (u8, Vec<Step<'_>>) {
    let Some((&config, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut steps = Vec::new();
    let mut at = 1_000u64;
    while let Some((&op, after)) = rest.split_first() {
        rest = after;
        at += 1_000;
        match op % 4 {
            kind @ (0 | 1) => {
                let captured = match rest {
                    [lo, hi, tail @ ..] => {
                        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
                        let (captured, after) = tail.split_at(len);
                        rest = after;
                        captured
                    }
                    _ => std::mem::take(&mut rest),
                };
                steps.push(Step::Chunk(Chunk {
                    flow: if kind == 0 {
                        Flow::Request
                    } else {
                        Flow::Response
                    },
                    enter_ns: at,
                    exit_ns: at + 10,
                    captured,
                    total_len: captured.len() + GAPS[usize::from(op >> 2)],
                    tail: &[],
                }));
            }
            2 => steps.push(Step::Flush {
                now_ns: at + u64::from(op >> 2) * IDLE_NS,
            }),
            _ => steps.push(Step::Close),
        }
    }
    (config, steps)
}
