//! The capture format (version 1): JSON Lines, one record per line.
//!
//! The full specification is `docs/capture-format.md`; this module is its implementation.
//! [`Record`] is the data model, [`writer`] appends records as they happen (flushed, so a
//! crash loses at most a torn last line) and [`reader`] streams files of any size back,
//! rejecting unknown versions and skipping a torn last line with a warning.
//!
//! This module must never hold a whole capture in memory.

pub mod reader;
mod record;
pub mod writer;

pub use reader::{CaptureError, Located, Reader};
pub use record::{
    Close, Dir, FORMAT, FrameError, Gap, Header, Msg, Open, Origin, Peer, Record, Side, Time,
    VERSION,
};
pub use writer::{OnWriteError, Sink, SinkHandle, Writer, create};
