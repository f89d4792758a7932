//! qmptap: record, decode, check, replay and analyse QMP traffic.
//!
//! The library holds everything; the `qmptap` binary in `cli/` only parses arguments and
//! calls into it.
//!
//! - [`wire`] frames raw byte streams exactly where QEMU's JSON streamer would, and classifies
//!   each frame (greeting, command, return, error, event, ...).
//! - [`capture`] defines the versioned JSON Lines capture format, its streaming writer and
//!   reader.
//! - [`proxy`] is the byte-transparent recording proxy (UNIX and TCP, SCM_RIGHTS passthrough).
//! - [`launch`] finds and moves the QMP monitors on a QEMU command line, for `qmptap wrap`.
//! - [`session`] pairs commands with replies once, for every consumer.
//! - [`transcript`] renders sessions in the QMP manual's `->` / `<-` notation.
#![deny(missing_docs)]

pub mod addr;
pub mod analyse;
pub mod audit;
pub mod capture;
pub mod diff;
pub mod launch;
pub mod normalize;
pub mod notation;
pub mod proxy;
pub mod replay;
pub mod schema;
pub mod session;
pub mod transcript;
pub mod wire;
