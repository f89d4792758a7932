//! The checker against small hand-made schemas: introspection-shaped ones (masked type names,
//! one `int`) and hostile ones (undefined types, unions that contain themselves, deep values).
#![allow(clippy::unwrap_used)] // a test that cannot go on should panic

use serde_json::{Value, json};

use super::*;
use crate::schema::model::Entity;

fn schema(entities: &Value) -> Schema {
    let mut schema = Schema::default();
    for e in entities.as_array().unwrap() {
        schema.insert(serde_json::from_value::<Entity>(e.clone()).unwrap());
    }
    schema
}

fn e(rule: Rule, path: &str, expected: &str, found: &str) -> Finding {
    Finding {
        rule,
        severity: Severity::Error,
        path: path.to_owned(),
        expected: expected.to_owned(),
        found: found.to_owned(),
    }
}

/// As `query-qmp-schema` would describe a tiny QEMU: types masked as numbers, every integer
/// type collapsed into `int`.
fn introspected() -> Schema {
    schema(&json!([
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
        {"name": "any", "meta-type": "builtin", "json-type": "value"},
        {"name": "0", "meta-type": "object", "members": [
            {"name": "addr", "type": "1"},
            {"name": "size", "type": "int", "optional": true},
            {"name": "old", "type": "bool", "optional": true, "features": ["deprecated"]}]},
        {"name": "1", "meta-type": "object", "members": [{"name": "kind", "type": "2"}],
         "tag": "kind", "variants": [{"case": "a", "type": "3"}, {"case": "b", "type": "4"}]},
        {"name": "2", "meta-type": "enum", "members": [
            {"name": "a"}, {"name": "b"}, {"name": "c", "features": ["unstable"]}]},
        {"name": "3", "meta-type": "object", "members": [{"name": "x", "type": "5"}]},
        {"name": "4", "meta-type": "object", "members": [{"name": "y", "type": "[3]"}]},
        {"name": "5", "meta-type": "alternate", "members": ["str", "int", "3"]},
        {"name": "[3]", "meta-type": "array", "element-type": "3"},
        {"name": "6", "meta-type": "object", "members": []},
        {"name": "cmd", "meta-type": "command", "arg-type": "0", "ret-type": "[3]",
         "allow-oob": true},
        {"name": "EV", "meta-type": "event", "arg-type": "6", "features": ["deprecated"]}
    ]))
}

fn run(checker: &Checker<'_>, f: impl Fn(&Checker<'_>, &mut Vec<Finding>)) -> Vec<Finding> {
    let mut out = Vec::new();
    f(checker, &mut out);
    out
}

#[test]
fn masked_names() {
    let s = introspected();
    let c = Checker::new(&s, Policy::default());
    let cmd = |v: Value| run(&c, |c, out| c.check_command(&v, out));
    assert_eq!(
        cmd(json!({"exec-oob": "cmd", "arguments": {"addr": {"kind": "a", "x": "s"}}})),
        []
    );
    assert_eq!(
        cmd(json!({"execute": "cmd", "arguments": {
            "addr": {"kind": "b", "y": [{"x": 1}, {"x": {"x": true}}]}, "size": 1}})),
        [e(
            Rule::WrongType,
            "arguments.addr.y[1].x.x",
            "alternate 5 (one of: str, int, object 3)",
            "a boolean true"
        )
        .with_rule(Rule::NoAlternateMatch)]
    );
    assert_eq!(
        cmd(json!({"execute": "cmd", "arguments": {"addr": {"kind": "d", "x": "s", "z": 1}}})),
        [
            e(
                Rule::BadEnumValue,
                "arguments.addr.kind",
                "one of: a, b, c",
                "\"d\""
            ),
            e(
                Rule::UnknownMember,
                "arguments.addr",
                "a member of object 1",
                "member 'z'"
            ),
        ]
    );
    assert_eq!(
        cmd(json!({"execute": "cmd", "arguments": {"addr": {"kind": "a"}}})),
        [e(
            Rule::MissingMember,
            "arguments.addr",
            "member 'x' (alternate 5)",
            "nothing"
        )]
    );
    assert_eq!(
        cmd(json!({"execute": "cmd", "arguments": {"addr": []}})),
        [e(
            Rule::WrongType,
            "arguments.addr",
            "object 1",
            "an array of 0 elements"
        )]
    );
    // 'c' has no variant: an empty branch, but unstable.
    assert_eq!(
        cmd(json!({"execute": "cmd", "arguments": {"addr": {"kind": "c"}, "old": false}})),
        [
            Finding {
                severity: Severity::Warning,
                ..e(
                    Rule::Unstable,
                    "arguments.addr.kind",
                    "no unstable use",
                    "value 'c' (unstable)"
                )
            },
            Finding {
                severity: Severity::Warning,
                ..e(
                    Rule::Deprecated,
                    "arguments.old",
                    "no deprecated use",
                    "member 'old' (deprecated)"
                )
            },
        ]
    );
    let ret = run(&c, |c, out| {
        c.check_return("cmd", &json!({"return": [{"x": "a"}, {"x": 2}, {}]}), out);
    });
    assert_eq!(
        ret,
        [e(
            Rule::MissingMember,
            "return[2]",
            "member 'x' (alternate 5)",
            "nothing"
        )]
    );
    let strict = Checker::new(
        &s,
        Policy {
            deny_deprecated: true,
            deny_unstable: true,
        },
    );
    let ev = run(&strict, |c, out| {
        c.check_event(
            &json!({"event": "EV", "data": {"q": 1},
                              "timestamp": {"seconds": 1, "microseconds": 0}}),
            out,
        );
    });
    // A deprecated event is QEMU's output, not the client's use: not rated (see `Policy`).
    assert_eq!(
        ev,
        [e(
            Rule::UnknownMember,
            "data",
            "no members (object 6)",
            "member 'q'"
        ),]
    );
}

impl Finding {
    fn with_rule(mut self, rule: Rule) -> Finding {
        self.rule = rule;
        self
    }
}

#[test]
fn introspected_int_covers_every_width() {
    let s = introspected();
    let c = Checker::new(&s, Policy::default());
    let mut out = Vec::new();
    for v in [json!(u64::MAX), json!(i64::MIN), json!(0)] {
        c.check_value("int", &v, &mut String::new(), &mut out);
    }
    assert_eq!(out, []);
    c.check_value("int", &json!(0.5), &mut String::new(), &mut out);
    assert_eq!(
        out,
        [e(Rule::WrongType, "", "int", "a floating-point number 0.5")]
    );
    // Widths a hand-made schema does not define are still known by name.
    out.clear();
    c.check_value("uint8", &json!(256), &mut String::new(), &mut out);
    assert_eq!(out, [e(Rule::OutOfRange, "", "uint8 (0..=255)", "256")]);
}

#[test]
fn source_schema_int_is_int64() {
    let s = schema(&json!([
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "size", "meta-type": "builtin", "json-type": "int"},
    ]));
    let c = Checker::new(&s, Policy::default());
    let mut out = Vec::new();
    c.check_value("int", &json!(u64::MAX), &mut String::new(), &mut out);
    assert_eq!(
        out,
        [e(
            Rule::OutOfRange,
            "",
            "int (-9223372036854775808..=9223372036854775807)",
            "18446744073709551615"
        )]
    );
}

#[test]
fn union_containing_itself_terminates() {
    let s = schema(&json!([
        {"name": "e", "meta-type": "enum", "members": [{"name": "a"}]},
        {"name": "u", "meta-type": "object", "members": [{"name": "k", "type": "e"}],
         "tag": "k", "variants": [{"case": "a", "type": "u"}]},
        {"name": "c", "meta-type": "command", "arg-type": "u", "ret-type": "u"},
    ]));
    let c = Checker::new(&s, Policy::default());
    let out = run(&c, |c, out| {
        c.check_command(
            &json!({"execute": "c", "arguments": {"k": "a", "z": 1}}),
            out,
        );
    });
    assert_eq!(
        out,
        [
            e(
                Rule::SchemaError,
                "arguments",
                "unions nested at most 16 deep",
                "deeper nesting at object u"
            ),
            e(
                Rule::UnknownMember,
                "arguments",
                &format!("a member of object u ({})", vec!["k 'a'"; 16].join(", ")),
                "member 'z'"
            ),
        ]
    );
}

#[test]
fn broken_references() {
    let s = schema(&json!([
        {"name": "o", "meta-type": "object", "members": [
            {"name": "a", "type": "nowhere"},
            {"name": "b", "type": "c", "optional": true},
            {"name": "d", "type": "[[[nowhere]]]", "optional": true},
            {"name": "t", "type": "str", "optional": true}],
         "tag": "t", "variants": [{"case": "x", "type": "str"}]},
        {"name": "alt", "meta-type": "alternate", "members": ["alt", "nowhere", "[alt]"]},
        {"name": "c", "meta-type": "command", "arg-type": "o", "ret-type": "alt"},
        {"name": "E", "meta-type": "event", "arg-type": "str"},
    ]));
    let c = Checker::new(&s, Policy::default());
    let out = run(&c, |c, out| {
        c.check_command(
            &json!({"execute": "c", "arguments": {"a": 1, "b": {}, "d": [[[true]]], "t": "x"}}),
            out,
        );
    });
    assert_eq!(
        out,
        [
            e(
                Rule::SchemaError,
                "arguments",
                "an object type as union variant, not str",
                "an object with 4 members"
            ),
            e(
                Rule::SchemaError,
                "arguments.a",
                "type 'nowhere' (undefined in the schema)",
                "a number 1"
            ),
            e(
                Rule::SchemaError,
                "arguments.b",
                "a type, not command c",
                "an object with 0 members"
            ),
            e(
                Rule::SchemaError,
                "arguments.d[0][0][0]",
                "type 'nowhere' (undefined in the schema)",
                "a boolean true"
            ),
        ]
    );
    // The alternate's only usable branch is the array; its own alternate branch is ignored.
    let out = run(&c, |c, out| {
        c.check_return("c", &json!({"return": [[["s"]]]}), out);
    });
    assert_eq!(
        out,
        [e(
            Rule::NoAlternateMatch,
            "return[0][0][0]",
            "alternate alt (one of: alternate alt, nowhere, array [alt])",
            "a string \"s\""
        )]
    );
    // Event data of a non-object type.
    let out = run(&c, |c, out| {
        c.check_event(
            &json!({"event": "E", "timestamp": {"seconds": 0, "microseconds": 0}}),
            out,
        );
    });
    assert_eq!(
        out,
        [e(
            Rule::WrongType,
            "data",
            "str",
            "an object with 0 members"
        )]
    );
}

#[test]
fn deep_values_stop_at_the_depth_limit() {
    let s = schema(&json!([
        {"name": "n", "meta-type": "object", "members": [
            {"name": "next", "type": "n", "optional": true}]},
        {"name": "l", "meta-type": "array", "element-type": "l"},
    ]));
    let c = Checker::new(&s, Policy::default());
    // Deeper than serde_json would ever parse (128), built in code.
    let mut deep = json!({});
    for _ in 0..MAX_DEPTH + 100 {
        deep = json!({"next": deep});
    }
    let mut out = Vec::new();
    let mut path = String::new();
    c.check_value("n", &deep, &mut path, &mut out);
    assert_eq!(path, "");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, Rule::TooDeep);
    assert_eq!(out[0].path, vec!["next"; MAX_DEPTH].join("."));
    drop_flat(deep);

    let mut deep = json!([]);
    for _ in 0..MAX_DEPTH + 100 {
        deep = json!([deep]);
    }
    out.clear();
    c.check_value("l", &deep, &mut path, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, "[0]".repeat(MAX_DEPTH));
    // Unknown array names are peeled without recursion on the name, up to a limit.
    out.clear();
    let name = format!("{}l{}", "[".repeat(20), "]".repeat(20));
    c.check_value(&name, &deep, &mut path, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, Rule::TooDeep);
    out.clear();
    let name = format!("{}n{}", "[".repeat(100_000), "]".repeat(100_000));
    c.check_value(&name, &deep, &mut path, &mut out);
    assert_eq!(
        out,
        [e(
            Rule::SchemaError,
            "",
            &format!(
                "type '{}…' (not in the schema)",
                "[".repeat(MAX_QUOTED_CHARS)
            ),
            "an array of 1 element"
        )]
    );
    // Drop the deep values in pieces: serde_json drops recursively.
    drop_flat(deep);
}

fn drop_flat(mut v: Value) {
    loop {
        v = match v {
            Value::Array(mut a) => match a.pop() {
                Some(inner) => inner,
                None => return,
            },
            Value::Object(mut m) => match m.remove("next") {
                Some(inner) => inner,
                None => return,
            },
            _ => return,
        };
    }
}

#[test]
fn hostile_type_names_in_a_schema() {
    let nested = format!("{}str{}", "[".repeat(3), "]".repeat(3));
    let hostile = format!("{}str{}", "[".repeat(50_000), "]".repeat(50_000));
    let s = schema(&json!([
        {"name": "o", "meta-type": "object", "members": [
            {"name": "m", "type": nested, "optional": true},
            {"name": "h", "type": hostile, "optional": true}]},
    ]));
    let start = std::time::Instant::now();
    let c = Checker::new(&s, Policy::default());
    assert!(
        start.elapsed().as_secs() < 5,
        "building must not go quadratic on names"
    );
    let mut out = Vec::new();
    c.check_value(
        "o",
        &json!({"m": [[["a", 1]]], "h": []}),
        &mut String::new(),
        &mut out,
    );
    assert_eq!(
        out,
        [
            e(Rule::WrongType, "m[0][0][1]", "str", "a number 1"),
            e(
                Rule::SchemaError,
                "h",
                &format!(
                    "type '{}…' (undefined in the schema)",
                    "[".repeat(MAX_QUOTED_CHARS)
                ),
                "an array of 0 elements"
            ),
        ]
    );
}

#[test]
fn empty_schema() {
    let s = Schema::default();
    let c = Checker::new(&s, Policy::default());
    let mut out = Vec::new();
    c.check_command(&json!({"execute": "x"}), &mut out);
    c.check_return("x", &json!({"return": 1}), &mut out);
    c.check_event(
        &json!({"event": "E", "timestamp": {"seconds": 0, "microseconds": 0}}),
        &mut out,
    );
    c.check_value("str", &json!("s"), &mut String::new(), &mut out);
    assert_eq!(
        out,
        [
            e(
                Rule::UnknownCommand,
                "execute",
                "a command of this schema",
                "x"
            ),
            e(Rule::UnknownEvent, "event", "an event of this schema", "E"),
        ]
    );
}

#[test]
fn paths() {
    let mut p = String::new();
    push_key(&mut p, "arguments");
    push_key(&mut p, "a-b_c9");
    assert_eq!(p, "arguments.a-b_c9");
    push_key(&mut p, "odd key");
    push_key(&mut p, "");
    push_key(&mut p, "quote\"d");
    assert_eq!(p, r#"arguments.a-b_c9["odd key"][""]["quote\"d"]"#);
    let mut p = String::new();
    push_key(&mut p, "a.b");
    assert_eq!(p, r#"["a.b"]"#);
}

#[test]
fn long_strings_are_cut_in_findings() {
    let long = "é".repeat(100);
    let q = quote(&long);
    assert_eq!(q, format!("\"{}\"…", "é".repeat(MAX_QUOTED_CHARS)));
    assert_eq!(quote_name("it's"), "\"it's\"");
    assert_eq!(quote_name("ok"), "'ok'");
}
