//! Spans from protocol exchanges: the model every exporter reads, how HTTP exchanges become
//! spans, and the stitcher that owns connection and thread state and nests client calls under
//! the server request their thread is serving.

pub mod clock;
pub mod db;
pub mod deadlines;
pub mod http;
pub mod ids;
pub mod model;
pub mod names;
pub mod parent;
pub mod route;
pub mod stitcher;

pub use http::{Actor, Endpoints, SpanIds};
pub use model::{AttrValue, OpType, SpanEvent, SpanKind, SpanRecord};
pub use stitcher::Stitcher;
