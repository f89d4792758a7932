//! Framing and classification of QMP byte streams.
//!
//! QMP has no framing of its own: QEMU's JSON streamer (`qobject/json-lexer.c`,
//! `qobject/json-streamer.c`) hands a message to the dispatcher as soon as the braces and
//! brackets of the tokens seen so far balance. [`Decoder`] reproduces that exactly, including
//! QEMU's single-quoted strings, its recovery after a lexical error and its limits, so that the
//! frames recorded by qmptap are the messages QEMU itself saw. It never relies on newlines: a
//! `pretty=on` monitor spreads one reply over many lines.
//!
//! [`Message::classify`] then tells what a frame is (greeting, command, return, error, event,
//! other JSON, invalid) without the caller having to know QMP's shapes.
//!
//! This module never performs I/O and never panics on any input: it is fed untrusted bytes.

mod decoder;
pub mod lexer;
mod message;

pub use decoder::{Decoder, Frame, FrameKind, LimitKind, Limits};
pub use message::{Kind, Message};
