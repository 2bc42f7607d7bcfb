//! Protocol parsers: pure functions from captured socket bytes to messages, with no I/O, so they
//! can be golden-tested on captured payloads and fuzzed. PostgreSQL joins HTTP/1.x here.

pub mod http1;
