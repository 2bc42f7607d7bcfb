//! The ring-buffer record decoder on any bytes: an event or an error, never a panic, and a
//! data record's payload within its record and its total.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loupe::events::{Event, decode, decode::parse_sockaddr};

fuzz_target!(|data: &[u8]| {
    let record = Bytes::copy_from_slice(data);
    if let Ok(Event::Data(data)) = decode(&record) {
        assert!(data.payload.len() <= data.total_len as usize);
        assert!(data.payload.len() <= record.len());
    }
    let _ = parse_sockaddr(data);
});
