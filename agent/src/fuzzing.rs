//! What the fuzz targets (`fuzz/`, built with `--features fuzzing`) reach that the crate does
//! not otherwise export: the PostgreSQL framer. Everything else they drive is public already
//! (the conversations, `events::decode`, the stitcher). Not an API.

pub use crate::protocols::postgres::MAX_KEPT_BODY as PG_MAX_KEPT_BODY;
pub use crate::protocols::postgres::framing::{
    Framer as PgFramer, Message as PgMessage, backend_kind as pg_backend_kind,
    frontend_kind as pg_frontend_kind,
};
