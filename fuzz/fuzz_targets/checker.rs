//! Fuzz the schema checker: any JSON value, checked as a command, a reply, an error and an
//! event against QEMU 9.1's schema, never panics, and every check leaves its path as it found
//! it. An input `{"schema": [ENTITY...], "msg": VALUE}` instead builds a schema from the
//! entities (hostile schemas: undefined types, unions that contain themselves, ...) and checks
//! `msg` against all of it.
//!
//! The schema is the built-in 9.1 one.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qmptap::schema::check::{Checker, Finding, Policy};
use qmptap::schema::builtin;
use qmptap::schema::{Entity, Schema};
use serde_json::Value;

/// Most entities taken from a fuzzed schema (keeps each run fast).
const MAX_ENTITIES: usize = 64;

fn checker() -> &'static Checker<'static> {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    static CHECKER: OnceLock<Checker<'static>> = OnceLock::new();
    CHECKER.get_or_init(|| {
        let schema = SCHEMA.get_or_init(|| {
            builtin::load("9.1").unwrap_or_else(|e| panic!("cannot load the schema: {e}")).schema
        });
        Checker::new(
            schema,
            Policy {
                deny_deprecated: true,
                deny_unstable: false,
            },
        )
    })
}

/// Runs every kind of check on `v`; `command` names the command for the reply check.
fn check_all(checker: &Checker<'_>, command: &str, v: &Value) {
    let mut out: Vec<Finding> = Vec::new();
    checker.check_command(v, &mut out);
    checker.check_return(command, v, &mut out);
    checker.check_error(v, &mut out);
    checker.check_event(v, &mut out);
    for f in &out {
        // Formatting must not panic either.
        let _ = f.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let (Some(Value::Array(entities)), Some(msg)) = (v.get("schema"), v.get("msg")) {
        let mut schema = Schema::default();
        for e in entities.iter().take(MAX_ENTITIES) {
            if let Ok(entity) = serde_json::from_value::<Entity>(e.clone()) {
                schema.insert(entity);
            }
        }
        let checker = Checker::new(&schema, Policy::default());
        let command = msg.get("execute").and_then(Value::as_str).unwrap_or("x");
        check_all(&checker, command, msg);
        let mut out = Vec::new();
        for name in schema.entities.keys() {
            let mut path = String::from("p");
            checker.check_value(name, msg, &mut path, &mut out);
            assert_eq!(path, "p");
        }
        return;
    }
    let checker = checker();
    let command = v
        .get("execute")
        .or_else(|| v.get("exec-oob"))
        .and_then(Value::as_str)
        .unwrap_or("query-status");
    check_all(checker, command, &v);
    // The core on its own, with a type named by the input.
    if let Some(ty) = v.get("type").and_then(Value::as_str) {
        let mut out = Vec::new();
        let mut path = String::new();
        checker.check_value(ty, v.get("value").unwrap_or(&Value::Null), &mut path, &mut out);
        assert!(path.is_empty());
    }
});
