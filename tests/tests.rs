#![allow(clippy::unwrap_used)] // a test that cannot go on should panic
//! Integration tests against real QEMU processes. They fail, never skip, when QEMU is missing.

mod checker;
mod qapi_schema;
mod record;
mod util;
