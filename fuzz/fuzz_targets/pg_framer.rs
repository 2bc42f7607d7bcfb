//! The PostgreSQL framer on one direction's chunks, split anywhere, with unseen tails: never
//! panics, and keeps no body past its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe::fuzzing::{PG_MAX_KEPT_BODY, PgFramer, pg_backend_kind, pg_frontend_kind};
use loupe_fuzz::{Step, parse};

fuzz_target!(|data: &[u8]| {
    let (config, steps) = parse(data);
    let plausible = if config & 1 == 0 {
        pg_frontend_kind
    } else {
        pg_backend_kind
    };
    let mut framer = PgFramer::new(config & 2 != 0, plausible);
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Chunk(chunk) => framer.feed(chunk.captured, chunk.total_len, &mut out),
            // The framer has no flush: a refused SSLRequest is its one outside event.
            Step::Flush { .. } => framer.expect_untyped(),
            Step::Close => {
                let _ = framer.is_lost();
            }
        }
    }
    for message in &out {
        assert!(
            message.body.len() <= PG_MAX_KEPT_BODY,
            "{} bytes kept",
            message.body.len()
        );
        assert!(
            message.kind == 0 || plausible(message.kind),
            "kind {}",
            message.kind
        );
    }
});
