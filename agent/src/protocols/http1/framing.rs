//! Where a message body ends: Content-Length, chunked transfer coding, or only when the other
//! side speaks. Works on positions, so bytes in a gap are skipped wherever their content does not
//! matter.

/// How a body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (requests without length, HEAD responses, 204, 304).
    None,
    /// A 1xx response: no body, and not the final response.
    Interim,
    /// 101 Switching Protocols: the last HTTP on the connection.
    Switched,
    Length(u64),
    Chunked,
    /// Unknown end: the message ends when the other side speaks, on close, or when idle.
    UntilSwitch,
}

/// States of a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size; `any` once one digit was read.
    Size {
        size: u64,
        any: bool,
    },
    /// Skipping a chunk extension up to the end of the line.
    Extension {
        size: u64,
    },
    /// Expecting LF after the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Expecting the final LF.
    TrailerLf,
    /// Skipping a trailer field line.
    TrailerLine,
    Done,
}

/// What a slice of chunked body did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkStep {
    /// All of it was body; more is expected.
    More,
    /// The body ended after this many bytes of the slice.
    Done(usize),
    /// The bytes do not follow the chunked syntax.
    Invalid,
}

/// Decodes the framing of a chunked body, without keeping its data.
#[derive(Clone, Debug)]
pub struct ChunkDecoder {
    state: ChunkState,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self {
            state: ChunkState::Size {
                size: 0,
                any: false,
            },
        }
    }
}

impl ChunkDecoder {
    /// Feeds seen bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> ChunkStep {
        let mut i = 0;
        while i < bytes.len() {
            if let ChunkState::Data { left } = self.state {
                let skip = left.min((bytes.len() - i) as u64);
                i += skip as usize;
                self.state = if skip == left {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { left: left - skip }
                };
                continue;
            }
            let byte = bytes[i];
            i += 1;
            self.state = match (self.state, byte) {
                (ChunkState::Size { size, .. }, b) if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                        Some(size) => ChunkState::Size { size, any: true },
                        None => return ChunkStep::Invalid,
                    }
                }
                (ChunkState::Size { size, any: true }, b';' | b' ' | b'\t') => {
                    ChunkState::Extension { size }
                }
                (ChunkState::Size { size, any: true }, b'\r') => ChunkState::SizeLf { size },
                (ChunkState::Size { size, any: true }, b'\n') => Self::after_size(size),
                (ChunkState::Extension { size }, b'\n') => Self::after_size(size),
                (ChunkState::Extension { size }, _) => ChunkState::Extension { size },
                (ChunkState::SizeLf { size }, b'\n') => Self::after_size(size),
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataCr, b'\n') | (ChunkState::DataLf, b'\n') => ChunkState::Size {
                    size: 0,
                    any: false,
                },
                (ChunkState::TrailerStart, b'\r') => ChunkState::TrailerLf,
                (ChunkState::TrailerStart, b'\n') | (ChunkState::TrailerLf, b'\n') => {
                    self.state = ChunkState::Done;
                    return ChunkStep::Done(i);
                }
                (ChunkState::TrailerStart, _) => ChunkState::TrailerLine,
                (ChunkState::TrailerLine, b'\n') => ChunkState::TrailerStart,
                (ChunkState::TrailerLine, _) => ChunkState::TrailerLine,
                _ => return ChunkStep::Invalid,
            };
        }
        ChunkStep::More
    }

    fn after_size(size: u64) -> ChunkState {
        if size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data { left: size }
        }
    }

    /// Skips `gap` unseen bytes; false when they did not all fall inside chunk data, which loses
    /// the framing.
    pub fn skip_gap(&mut self, gap: u64) -> bool {
        match self.state {
            ChunkState::Data { left } if gap <= left => {
                self.state = if gap == left {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { left: left - gap }
                };
                true
            }
            _ => gap == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_body_ends_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut decoder = ChunkDecoder::default();
        assert_eq!(decoder.feed(body), ChunkStep::Done(body.len() - 4));
    }

    #[test]
    fn chunked_body_split_anywhere_gives_the_same_end() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut decoder = ChunkDecoder::default();
            assert_eq!(
                decoder.feed(&body[..split]),
                ChunkStep::More,
                "split {split}"
            );
            assert_eq!(
                decoder.feed(&body[split..]),
                ChunkStep::Done(body.len() - split),
                "split {split}"
            );
        }
    }

    #[test]
    fn gaps_inside_chunk_data_are_skipped_and_elsewhere_lose_framing() {
        let mut decoder = ChunkDecoder::default();
        assert_eq!(decoder.feed(b"100\r\nabc"), ChunkStep::More);
        assert!(decoder.skip_gap(0x100 - 3));
        assert_eq!(decoder.feed(b"\r\n0\r\n\r\n"), ChunkStep::Done(7));
        let mut decoder = ChunkDecoder::default();
        assert_eq!(decoder.feed(b"10"), ChunkStep::More);
        assert!(
            !decoder.skip_gap(3),
            "a gap in a size line loses the framing"
        );
    }

    #[test]
    fn malformed_chunk_sizes_are_invalid() {
        assert_eq!(ChunkDecoder::default().feed(b"zz\r\n"), ChunkStep::Invalid);
        assert_eq!(ChunkDecoder::default().feed(b"\r\n"), ChunkStep::Invalid);
        assert_eq!(
            ChunkDecoder::default().feed(b"ffffffffffffffffff\r\n"),
            ChunkStep::Invalid,
            "overflowing sizes"
        );
    }
}
