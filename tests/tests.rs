#![allow(clippy::unwrap_used)] // a test that cannot go on should panic
//! Integration tests against real QEMU processes. They fail, never skip, when QEMU is missing.

mod analyse;
mod check;
mod checker;
mod diff;
mod notation_manual;
mod poll;
mod qapi_schema;
mod record;
mod replay;
mod serve;
mod util;
