//! The HTTP/1 conversation on a script of chunks in both directions, split anywhere, with
//! unseen tails, idle flushes and closes: never panics, and exchanges come in request order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe::protocols::http1::{
    Conversation, HttpEvent, Limits, looks_like_request, looks_like_response,
};
use loupe_fuzz::{IDLE_NS, Step, parse};

fuzz_target!(|data: &[u8]| {
    let (config, steps) = parse(data);
    // Small bounds half the time, so that heads and pipelines reach them.
    let limits = if config & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_head_bytes: 16 + usize::from(config >> 1),
            max_pending: 1 + usize::from(config >> 5),
        }
    };
    let mut conversation = Conversation::new(limits);
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Chunk(chunk) => {
                let _ = looks_like_request(chunk.captured);
                let _ = looks_like_response(chunk.captured);
                conversation.push(chunk, &mut out);
            }
            Step::Flush { now_ns } => conversation.flush_idle(now_ns, IDLE_NS, &mut out),
            Step::Close => conversation.close(&mut out),
        }
    }
    conversation.close(&mut out);
    let _ = conversation.stats();
    let _ = conversation.is_http();
    let mut last = None;
    for event in &out {
        if let HttpEvent::Exchange(exchange) = event {
            assert!(
                last.is_none_or(|last| last < exchange.seq),
                "exchange {} after {last:?}",
                exchange.seq
            );
            last = Some(exchange.seq);
        }
    }
});
