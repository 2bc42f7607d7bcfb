//! The PostgreSQL conversation on a script of chunks in both directions, split anywhere, with
//! unseen tails and closes, from a session's start or joined mid-way: never panics, and every
//! execution it starts ends at most once.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use loupe::protocols::postgres::{PgConversation, PgEvent, looks_like_session, opens_session};
use loupe_fuzz::{Step, parse};

fuzz_target!(|data: &[u8]| {
    let (config, steps) = parse(data);
    let mut conversation = match config % 3 {
        0 => PgConversation::new(),
        1 => PgConversation::resumed(None),
        _ => PgConversation::resumed(Some("shop".into())),
    };
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Chunk(chunk) => {
                let _ = opens_session(chunk.captured);
                let _ = looks_like_session(chunk.captured, chunk.total_len, true);
                let _ = looks_like_session(chunk.captured, chunk.total_len, false);
                conversation.push(chunk, &mut out);
            }
            Step::Flush { .. } => {
                let _ = conversation.is_opaque();
            }
            Step::Close => conversation.close(&mut out),
        }
    }
    conversation.close(&mut out);
    let _ = conversation.stats();
    let (mut open, mut ended) = (BTreeSet::new(), BTreeSet::new());
    for event in &out {
        match event {
            PgEvent::Started { seq } => assert!(open.insert(*seq), "{seq} started twice"),
            PgEvent::Done(done) => assert!(ended.insert(done.seq), "{} ended twice", done.seq),
            PgEvent::Skipped { seq } | PgEvent::Abandoned { seq } => {
                assert!(ended.insert(*seq), "{seq} ended twice")
            }
            PgEvent::Lost(_) | PgEvent::Encrypted => {}
        }
    }
});
