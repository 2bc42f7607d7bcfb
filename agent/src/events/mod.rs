//! From the ring buffer to typed events: `reader` only moves bytes, `decode` turns one record
//! into an [`Event`] with every length checked.

pub mod decode;
pub mod reader;

pub use decode::{
    ConnRecord, CpuSample, DataRecord, DecodeError, Event, ExecRecord, FdNews, LibpqCallRecord,
    LibpqResultRecord, OffCpuRecord, PgResultInfo, PyRawFrame, SampleSource, UnwindInput, decode,
    decode_fd_news,
};
pub use reader::Batch;
