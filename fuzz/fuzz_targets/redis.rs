//! The RESP (Redis) conversation on a script of chunks in both directions, split anywhere, with
//! unseen tails and closes, from a connection's start or joined mid-way: never panics, and
//! every command it starts ends exactly once (done or abandoned) by the close.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use loupe::protocols::redis::{
    CommandDone, RedisConversation, RedisEvent, looks_like_resp, opens_redis,
};
use loupe_fuzz::{Step, parse};

fuzz_target!(|data: &[u8]| {
    let (config, steps) = parse(data);
    let mut conversation = if config & 1 == 0 {
        RedisConversation::new()
    } else {
        RedisConversation::resumed()
    };
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Chunk(chunk) => {
                let _ = opens_redis(chunk.captured);
                let _ = looks_like_resp(chunk.captured, chunk.total_len, true);
                conversation.push(chunk, &mut out);
            }
            Step::Flush { .. } => {
                let _ = (conversation.is_opaque(), conversation.last_loss());
            }
            Step::Close => conversation.close(&mut out),
        }
    }
    conversation.close(&mut out);
    let _ = conversation.stats();
    let mut open = BTreeSet::new();
    for event in &out {
        match event {
            RedisEvent::Started { seq } => assert!(open.insert(*seq), "{seq} started twice"),
            RedisEvent::Done(CommandDone { seq, .. }) | RedisEvent::Abandoned { seq } => {
                assert!(open.remove(seq), "{seq} ended twice or unstarted")
            }
        }
    }
    assert!(open.is_empty(), "{open:?} never ended");
});
