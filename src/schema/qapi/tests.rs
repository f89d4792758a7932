#![allow(clippy::unwrap_used)] // a test that cannot go on should panic

use std::path::{Path, PathBuf};

use super::*;
use crate::schema::model::{Cond, Meta};

fn compile_str(src: &str) -> Result<Schema, QapiError> {
    compile(&parse_str(src, "t.json")?)
}

fn schema(src: &str) -> Schema {
    compile_str(src).unwrap_or_else(|e| panic!("{e}"))
}

/// The error's line, column and message.
fn error(result: Result<impl std::fmt::Debug, QapiError>) -> (usize, usize, String) {
    let e = result.unwrap_err();
    let pos = e.pos().clone();
    let text = e.to_string();
    let prefix = format!("{pos}: ");
    assert!(text.starts_with(&prefix), "{text}");
    (pos.line, pos.col, text[prefix.len()..].to_owned())
}

fn parse_error(src: &str) -> (usize, usize, String) {
    error(parse_str(src, "t.json"))
}

fn compile_error(src: &str) -> (usize, usize, String) {
    error(compile_str(src))
}

fn meta<'a>(s: &'a Schema, name: &str) -> &'a Meta {
    &s.get(name).unwrap_or_else(|| panic!("no {name}")).meta
}

fn member_names(s: &Schema, name: &str) -> Vec<String> {
    match meta(s, name) {
        Meta::Object { members, .. } => members.iter().map(|m| m.name.clone()).collect(),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------- parser

#[test]
fn comments_and_doc_blocks_are_skipped() {
    let src = "# -*- Mode: Python -*-\n##\n# @Foo:\n#\n# Doc with 'quotes' and { braces\n##\n\
               { 'enum': 'Foo', # trailing comment\n  'data': [ 'a' ] } # after\n# end";
    let exprs = parse_str(src, "t.json").unwrap();
    assert_eq!(exprs.len(), 1);
    assert_eq!((exprs[0].pos.line, exprs[0].pos.col), (7, 1));
    let data = exprs[0].dict.get("data").unwrap();
    assert_eq!((data.pos.line, data.pos.col), (8, 11));
    assert_eq!(&*exprs[0].pos.file, "t.json");
}

#[test]
fn empty_and_comment_only_input() {
    assert!(parse_str("", "t").unwrap().is_empty());
    assert!(parse_str("  \n# nothing\n\t", "t").unwrap().is_empty());
}

#[test]
fn escapes() {
    let exprs = parse_str(r#"{ 'k': 'a\\b\'c\"d\/e\tf\u0041\n' }"#, "t").unwrap();
    let Value::Str(s) = &exprs[0].dict.get("k").unwrap().value else {
        panic!()
    };
    assert_eq!(s, "a\\b'c\"d/e\tfA\n");
    // A raw double quote is fine inside a single-quoted string.
    let exprs = parse_str(r#"{ 'k': 'say "hi"' }"#, "t").unwrap();
    assert_eq!(
        exprs[0].dict.get("k").unwrap().value,
        Value::Str("say \"hi\"".into())
    );
}

#[test]
fn nested_lists_and_objects_keep_order_and_positions() {
    let src = "{ 'z': [ 'a', [ 'b' ], { 'c': true } ],\n  'a': { 'y': false, 'x': {} } }";
    let exprs = parse_str(src, "t").unwrap();
    let keys: Vec<&str> = exprs[0]
        .dict
        .entries
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(keys, ["z", "a"]);
    let Value::List(items) = &exprs[0].dict.get("z").unwrap().value else {
        panic!()
    };
    assert_eq!(items.len(), 3);
    assert_eq!((items[1].pos.line, items[1].pos.col), (1, 15));
    let Value::Dict(inner) = &items[2].value else {
        panic!()
    };
    assert_eq!(inner.get("c").unwrap().value, Value::Bool(true));
    let (key, value) = exprs[0].dict.entry("a").unwrap();
    assert_eq!((key.pos.line, key.pos.col), (2, 3));
    assert_eq!((value.pos.line, value.pos.col), (2, 8));
    let Value::Dict(a) = &value.value else {
        panic!()
    };
    let keys: Vec<&str> = a.entries.iter().map(|(k, _)| k.name.as_str()).collect();
    assert_eq!(keys, ["y", "x"]);
}

#[test]
fn syntax_errors_point_at_the_culprit() {
    // Unterminated string: reported at its opening quote.
    assert_eq!(
        parse_error("{ 'enum': 'Foo,\n  'data': [] }"),
        (1, 11, "unterminated string (missing closing ')".into())
    );
    assert_eq!(
        parse_error("{ 'a': 'b"),
        (1, 8, "unterminated string (missing closing ')".into())
    );
    // Missing colon.
    assert_eq!(
        parse_error("{ 'a' 'b' }"),
        (1, 7, "expected ':' after key, found '''".into())
    );
    // Numbers, null, bare words, double quotes.
    assert_eq!(
        parse_error("{ 'a': [ 'x',\n        42 ] }"),
        (
            2,
            9,
            "numbers are not allowed in QAPI schemas, found '42'".into()
        )
    );
    assert_eq!(parse_error("{ 'a': -1 }").0..2, 1..2);
    assert_eq!(
        parse_error("{ 'a': null }"),
        (1, 8, "null is not allowed in QAPI schemas".into())
    );
    assert_eq!(
        parse_error("{ 'a': yes }").2,
        "invalid literal 'yes' (expected a string, true, false, a list or an object)"
    );
    assert_eq!(
        parse_error("{ \"a\": 'b' }"),
        (1, 3, "expected a string key, found '\"'".into())
    );
    assert_eq!(
        parse_error("{ 'a': \"b\" }"),
        (1, 8, "strings must be single-quoted ('...')".into())
    );
    // Trailing garbage after a complete expression.
    assert_eq!(
        parse_error("{ 'a': 'b' }\n{ 'c': 'd' } ]"),
        (
            2,
            14,
            "expected '{' to begin a top-level expression, found ']'".into()
        )
    );
    assert_eq!(
        parse_error("'top'").2,
        "expected '{' to begin a top-level expression, found '''"
    );
    // Separators.
    assert_eq!(
        parse_error("{ 'a': 'b' 'c': 'd' }"),
        (1, 12, "expected ',' or '}' in object, found '''".into())
    );
    assert_eq!(
        parse_error("{ 'a': [ 'b' 'c' ] }"),
        (1, 14, "expected ',' or ']' in list, found '''".into())
    );
    assert_eq!(
        parse_error("{ 'a': 'b', }"),
        (1, 13, "expected a string key, found '}'".into())
    );
    assert_eq!(
        parse_error("{ 'a': [ 'b', ] }"),
        (1, 15, "expected a value, found ']'".into())
    );
    assert_eq!(
        parse_error("{ 'a': [ 'b'"),
        (
            1,
            13,
            "expected ',' or ']' in list, found end of input".into()
        )
    );
    // Duplicate keys, at the second one.
    assert_eq!(
        parse_error("{ 'a': 'b',\n  'a': 'c' }"),
        (2, 3, "duplicate key 'a'".into())
    );
    // Escapes and characters.
    assert_eq!(
        parse_error(r"{ 'a': 'x\qy' }"),
        (1, 10, "unknown escape '\\q'".into())
    );
    assert_eq!(
        parse_error(r"{ 'a': '\u12' }"),
        (1, 9, "'\\u' must be followed by four hex digits".into())
    );
    assert_eq!(
        parse_error(r"{ 'a': '\ud800' }").2,
        "'\\ud800' is not an allowed character"
    );
    assert_eq!(
        parse_error("{ 'a': 'caf\u{e9}' }"),
        (
            1,
            12,
            "character 'é' is not allowed in a string (only printable ASCII)".into()
        )
    );
    assert_eq!(parse_error("{ 'a': 'tab\there' }").1, 12);
    // Columns count characters: the tab and the accented comment are one column each.
    assert_eq!(parse_error("# é\n\t{ 'a' }").0..2, 2..2);
    assert_eq!(
        parse_error("\t{ 'a' }"),
        (1, 8, "expected ':' after key, found '}'".into())
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{{ 'a': {}{} }}", "[".repeat(100_000), "]".repeat(100_000));
    let (line, col, message) = parse_error(&deep);
    assert_eq!((line, col), (1, 8 + MAX_DEPTH - 1));
    assert_eq!(message, format!("nesting deeper than {MAX_DEPTH} levels"));
    let ok = format!(
        "{{ 'a': {}{} }}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    parse_str(&ok, "t").unwrap();
    let dicts = "{ 'a': ".repeat(10_000);
    assert!(parse_str(&dicts, "t").is_err());
}

#[test]
fn errors_display_file_line_column() {
    let e = parse_str("{\n  'a' }", "dir/x.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "dir/x.json:2:7: expected ':' after key, found '}'"
    );
    assert!(matches!(e, QapiError::Syntax { .. }));
}

// ---------------------------------------------------------------------------------- files

/// A fresh directory under the system temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qmptap-qapi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn includes_are_relative_and_read_once() {
    let dir = temp_dir("once");
    write(
        &dir,
        "qapi-schema.json",
        "{ 'include': 'sub/a.json' }\n{ 'include': 'common.json' }\n\
         { 'struct': 'Top', 'data': { 'a': 'A', 'c': 'C' } }",
    );
    // Relative to the including file: sub/a.json names ../common.json.
    write(
        &dir,
        "sub/a.json",
        "{ 'include': '../common.json' }\n{ 'struct': 'A', 'data': { 'c': 'C' } }",
    );
    write(&dir, "common.json", "{ 'enum': 'C', 'data': [ 'x' ] }");
    let s = load_dir_or_file(&dir).unwrap();
    assert!(matches!(meta(&s, "C"), Meta::Enum { .. }));
    assert_eq!(member_names(&s, "Top"), ["a", "c"]);
    // parse_file does not follow includes.
    let exprs = parse_file(&dir.join("qapi-schema.json")).unwrap();
    assert_eq!(exprs.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn include_loops_and_missing_files_are_errors() {
    let dir = temp_dir("loop");
    write(&dir, "a.json", "{ 'include': 'b.json' }");
    write(&dir, "b.json", "# loop back\n  { 'include': 'a.json' }");
    let e = load_dir_or_file(&dir.join("a.json")).unwrap_err();
    assert!(matches!(e, QapiError::Include { .. }), "{e}");
    assert_eq!((e.pos().line, e.pos().col), (2, 3));
    assert!(e.pos().file.ends_with("b.json"));
    assert!(e.to_string().contains("inclusion loop for"), "{e}");

    write(
        &dir,
        "c.json",
        "{ 'struct': 'S', 'data': {} }\n{ 'include': 'nope.json' }",
    );
    let e = load_dir_or_file(&dir.join("c.json")).unwrap_err();
    let QapiError::Io { path, pos, .. } = &e else {
        panic!("{e}")
    };
    assert!(path.ends_with("nope.json"));
    assert_eq!((pos.line, pos.col), (2, 1));
    assert!(e.to_string().contains("cannot read"), "{e}");

    // A directory without qapi-schema.json, and a file that is not UTF-8.
    let e = load_dir_or_file(&dir.join("missing-dir")).unwrap_err();
    assert!(matches!(e, QapiError::Io { .. }));
    std::fs::write(dir.join("bad.json"), b"{ 'a':\n 'x\xff' }").unwrap();
    let e = parse_file(&dir.join("bad.json")).unwrap_err();
    assert_eq!((e.pos().line, e.pos().col), (2, 4));
    assert!(e.to_string().ends_with("invalid UTF-8"));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------- compile

#[test]
fn builtins_and_q_empty_always_exist() {
    let s = schema("");
    assert_eq!(s.entities.len(), 15 + 2);
    assert!(matches!(
        meta(&s, "size"),
        Meta::Builtin {
            json_type: JsonType::Int
        }
    ));
    assert!(matches!(
        meta(&s, "any"),
        Meta::Builtin {
            json_type: JsonType::Value
        }
    ));
    let Meta::Enum { members } = meta(&s, "QType") else {
        panic!()
    };
    assert_eq!(members.len(), 7);
    assert_eq!(member_names(&s, "q_empty"), Vec::<String>::new());
}

use crate::schema::model::JsonType;

#[test]
fn implicit_names() {
    let s = schema(
        "{ 'enum': 'E', 'data': [ 'a', 'b' ], 'if': 'CONFIG_E' }
         { 'struct': 'S', 'data': { 'x': 'int8' } }
         { 'command': 'do-it', 'data': { 'list': ['str'], '*e': ['E'] }, 'returns': ['S'] }
         { 'command': 'nothing' }
         { 'command': 'empty', 'data': {} }
         { 'command': 'named', 'data': 'S', 'allow-oob': true }
         { 'event': 'EVT', 'data': { 's': 'S' } }
         { 'event': 'BARE' }
         { 'union': 'U', 'base': { 'kind': 'E' }, 'discriminator': 'kind',
           'data': { 'a': 'S' } }",
    );
    assert_eq!(
        *meta(&s, "do-it"),
        Meta::Command {
            arg_type: "q_obj_do-it-arg".into(),
            ret_type: "[S]".into(),
            allow_oob: false
        }
    );
    assert_eq!(member_names(&s, "q_obj_do-it-arg"), ["list", "e"]);
    assert_eq!(
        *meta(&s, "[str]"),
        Meta::Array {
            element_type: "str".into()
        }
    );
    // An array takes its element's condition.
    assert_eq!(
        s.get("[E]").unwrap().cond,
        Some(Cond::Symbol("CONFIG_E".into()))
    );
    for cmd in ["nothing", "empty"] {
        assert_eq!(
            *meta(&s, cmd),
            Meta::Command {
                arg_type: "q_empty".into(),
                ret_type: "q_empty".into(),
                allow_oob: false
            }
        );
    }
    assert!(s.get("q_obj_empty-arg").is_none());
    assert_eq!(
        *meta(&s, "named"),
        Meta::Command {
            arg_type: "S".into(),
            ret_type: "q_empty".into(),
            allow_oob: true
        }
    );
    assert_eq!(
        *meta(&s, "EVT"),
        Meta::Event {
            arg_type: "q_obj_EVT-arg".into()
        }
    );
    assert_eq!(
        *meta(&s, "BARE"),
        Meta::Event {
            arg_type: "q_empty".into()
        }
    );
    assert_eq!(member_names(&s, "q_obj_U-base"), ["kind"]);
    assert_eq!(s.commands().count(), 4);
    assert_eq!(s.events().count(), 2);
}

#[test]
fn flat_union_flattening() {
    let s = schema(
        "{ 'enum': 'Kind', 'data': [ 'one', 'two', 'three' ] }
         { 'struct': 'Root', 'data': { 'id': 'str' } }
         { 'struct': 'Base', 'base': 'Root', 'data': { 'kind': 'Kind', '*opt': 'bool' } }
         { 'struct': 'One', 'data': { 'n': 'int' } }
         { 'struct': 'Two', 'base': 'One', 'data': { 'm': 'int' } }
         { 'union': 'U', 'base': 'Base', 'discriminator': 'kind',
           'data': { 'one': 'One', 'two': { 'type': 'Two', 'if': 'CONFIG_TWO' } } }",
    );
    assert_eq!(member_names(&s, "Two"), ["n", "m"]);
    let Meta::Object {
        members,
        tag,
        variants,
    } = meta(&s, "U")
    else {
        panic!()
    };
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["id", "kind", "opt"]);
    assert!(members[2].optional);
    assert_eq!(tag.as_deref(), Some("kind"));
    // 'three' has no branch, so no variant.
    assert_eq!(variants.len(), 2);
    assert_eq!(
        (variants[0].case.as_str(), variants[0].ty.as_str()),
        ("one", "One")
    );
    assert_eq!(variants[1].cond, Some(Cond::Symbol("CONFIG_TWO".into())));
}

#[test]
fn simple_union() {
    let s = schema(
        "{ 'struct': 'S', 'data': { 'x': 'int' } }
         { 'union': 'Simple', 'data': { 's': 'S', 'n': 'int', 'l': ['str'],
                                        'c': { 'type': 'S', 'if': 'CONFIG_C' } } }",
    );
    let Meta::Enum { members } = meta(&s, "SimpleKind") else {
        panic!()
    };
    let values: Vec<&str> = members.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(values, ["s", "n", "l", "c"]);
    assert!(members[3].cond.is_some());
    let Meta::Object {
        members,
        tag,
        variants,
    } = meta(&s, "Simple")
    else {
        panic!()
    };
    assert_eq!(
        (members[0].name.as_str(), members[0].ty.as_str()),
        ("type", "SimpleKind")
    );
    assert_eq!(tag.as_deref(), Some("type"));
    let types: Vec<&str> = variants.iter().map(|v| v.ty.as_str()).collect();
    assert_eq!(
        types,
        [
            "q_obj_S-wrapper",
            "q_obj_int-wrapper",
            "q_obj_strList-wrapper",
            "q_obj_S-wrapper"
        ]
    );
    let Meta::Object { members, .. } = meta(&s, "q_obj_strList-wrapper") else {
        panic!()
    };
    assert_eq!(
        (members[0].name.as_str(), members[0].ty.as_str()),
        ("data", "[str]")
    );
    // The implicit enum's name is taken.
    let (_, _, message) =
        compile_error("{ 'enum': 'UKind', 'data': [] }\n{ 'union': 'U', 'data': { 'a': 'int' } }");
    assert!(
        message.starts_with("'UKind' is already defined at t.json:1:11"),
        "{message}"
    );
}

#[test]
fn alternates() {
    let s = schema(
        "{ 'enum': 'Mode', 'data': [ 'auto', 'manual' ] }
         { 'struct': 'S', 'data': {} }
         { 'alternate': 'A', 'data': { 'm': 'Mode', 'n': 'int', 'b': 'bool', 'o': 'S',
                                       'l': ['int'], 'z': 'null' } }
         { 'alternate': 'StrOrNull', 'data': { 's': 'str', 'n': 'null' } }",
    );
    assert_eq!(
        *meta(&s, "A"),
        Meta::Alternate {
            members: ["Mode", "int", "bool", "S", "[int]", "null"]
                .map(String::from)
                .to_vec()
        }
    );
    let clash = |data: &str| {
        compile_error(&format!(
            "{{ 'enum': 'OnOff', 'data': [ 'on', 'off' ] }}\n{{ 'alternate': 'A', 'data': {data} }}"
        ))
    };
    assert_eq!(
        clash("{ 's': 'str', 'i': 'int' }"),
        (
            2,
            43,
            "alternate branch 'i' can't be distinguished from 's'".into()
        )
    );
    assert_eq!(
        clash("{ 'b': 'bool', 'e': 'OnOff' }").2,
        "alternate branch 'e' can't be distinguished from 'b'"
    );
    assert_eq!(
        clash("{ 'a': 'int', 'b': 'number' }").2,
        "alternate branch 'b' can't be distinguished from 'a'"
    );
    assert_eq!(
        clash("{ 'a': 'any' }").2,
        "alternate branch 'a' cannot be a built-in type 'any'"
    );
    assert_eq!(clash("{}").2, "alternate 'A' has no branches");
}

#[test]
fn conditions_and_features_are_kept_everywhere() {
    let s = schema(
        "{ 'enum': 'E', 'data': [ 'a', { 'name': 'b', 'if': 'CONFIG_B', 'features': [ 'deprecated' ] } ],
           'if': { 'all': [ 'CONFIG_X', { 'not': 'CONFIG_Y' } ] }, 'prefix': 'QE' }
         { 'struct': 'S', 'data': { '*m': { 'type': 'str', 'if': { 'any': [ 'A', 'B' ] },
                                            'features': [ 'unstable' ] } },
           'features': [ 'deprecated', { 'name': 'fancy', 'if': 'CONFIG_F' } ] }
         { 'command': 'c', 'if': 'CONFIG_C', 'data': { 'x': 'int' } }",
    );
    let e = s.get("E").unwrap();
    assert_eq!(
        e.cond,
        Some(Cond::All {
            all: vec![
                Cond::Symbol("CONFIG_X".into()),
                Cond::Not {
                    not: Box::new(Cond::Symbol("CONFIG_Y".into()))
                }
            ]
        })
    );
    let Meta::Enum { members } = &e.meta else {
        panic!()
    };
    assert_eq!(members[1].features, ["deprecated"]);
    assert_eq!(members[1].cond, Some(Cond::Symbol("CONFIG_B".into())));
    let st = s.get("S").unwrap();
    assert_eq!(st.features, ["deprecated", "fancy"]);
    let Meta::Object { members, .. } = &st.meta else {
        panic!()
    };
    assert!(members[0].optional);
    assert_eq!(members[0].features, ["unstable"]);
    assert!(matches!(members[0].cond, Some(Cond::Any { .. })));
    // Implicit argument types take their command's condition.
    assert_eq!(
        s.get("q_obj_c-arg").unwrap().cond,
        Some(Cond::Symbol("CONFIG_C".into()))
    );
}

#[test]
fn schema_errors_point_at_the_culprit() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "{ 'struct': 'S', 'data': { 'a': 'Nope' } }",
            (1, 33),
            "member 'a' uses undefined type 'Nope'",
        ),
        (
            "{ 'command': 'c', 'returns': ['Nope'] }",
            (1, 31),
            "'returns' uses undefined type 'Nope'",
        ),
        (
            "{ 'struct': 'S', 'data': {}, 'bogus': true }",
            (1, 30),
            "struct 'S' has unknown key 'bogus' (valid keys: base, data, features, if, struct)",
        ),
        (
            "{ 'struct': 'S' }",
            (1, 1),
            "struct 'S' is missing key 'data'",
        ),
        (
            "{ 'data': {} }",
            (1, 1),
            "expression has no definition keyword (one of enum, struct, union, alternate, command, event, or include, pragma)",
        ),
        (
            "{ 'enum': 'E', 'data': 'a' }",
            (1, 24),
            "enum 'data' must be a list, not a string",
        ),
        (
            "{ 'enum': ['E'], 'data': [] }",
            (1, 11),
            "'enum' must be a string, not a list",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a', 'a' ] }",
            (1, 31),
            "duplicate enum value 'a'",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a b' ] }",
            (1, 26),
            "enum value has an invalid name 'a b'",
        ),
        (
            "{ 'enum': 'E', 'data': [] }\n{ 'struct': 'E', 'data': {} }",
            (2, 13),
            "'E' is already defined at t.json:1:11",
        ),
        (
            "{ 'struct': 'int', 'data': {} }",
            (1, 13),
            "'int' is a built-in type",
        ),
        (
            "{ 'struct': 'q_x', 'data': {} }",
            (1, 13),
            "struct name 'q_x' uses the reserved prefix 'q_'",
        ),
        (
            "{ 'struct': 'FooList', 'data': {} }",
            (1, 13),
            "struct name 'FooList' must not end in 'List'",
        ),
        (
            "{ 'struct': 'S', 'data': { 'a': 'int', '*a': 'str' } }",
            (1, 40),
            "duplicate member 'a'",
        ),
        (
            "{ 'struct': 'B', 'data': { 'a': 'int' } }\n{ 'struct': 'S', 'base': 'B', 'data': { 'a': 'int' } }",
            (2, 41),
            "member 'a' of 'S' clashes with a member of its base",
        ),
        (
            "{ 'struct': 'A', 'base': 'B', 'data': {} }\n{ 'struct': 'B', 'base': 'A', 'data': {} }",
            (1, 1),
            "struct 'A' is its own base",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'k', 'data': {} }\n{ 'struct': 'S', 'base': 'U', 'data': {} }",
            (3, 26),
            "'base' must be a struct, but 'U' is a union",
        ),
        (
            "{ 'struct': 'S', 'base': ['T'], 'data': {} }",
            (1, 26),
            "'base' must be a string, not a list",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'x', 'data': {} }",
            (2, 56),
            "discriminator 'x' is not a member of the base of 'U'",
        ),
        (
            "{ 'union': 'U', 'base': { 'k': 'str' }, 'discriminator': 'k', 'data': {} }",
            (1, 58),
            "discriminator member 'k' must be of enum type, not 'str'",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'union': 'U', 'base': { '*k': 'E' }, 'discriminator': 'k', 'data': {} }",
            (2, 57),
            "discriminator member 'k' must not be optional",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'union': 'U', 'base': { 'k': { 'type': 'E', 'if': 'X' } }, 'discriminator': 'k', 'data': {} }",
            (2, 79),
            "discriminator member 'k' must not be conditional",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'struct': 'S', 'data': {} }\n{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'k', 'data': { 'b': 'S' } }",
            (3, 71),
            "branch 'b' is not a value of 'E', the discriminator's type",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'k', 'data': { 'a': 'int' } }",
            (3 - 1, 76),
            "branch 'a' must be a struct or union, but 'int' is a built-in type",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'struct': 'S', 'data': { 'k': 'int' } }\n{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'k', 'data': { 'a': 'S' } }",
            (3, 71),
            "member 'k' of branch 'a' ('S') clashes with a base member",
        ),
        (
            "{ 'union': 'U', 'base': 'B', 'data': {} }",
            (1, 1),
            "union 'U' has 'base' but no 'discriminator'",
        ),
        (
            "{ 'enum': 'E', 'data': [ 'a' ] }\n{ 'union': 'U', 'base': { 'k': 'E' }, 'discriminator': 'k', 'data': {} }\n{ 'command': 'c', 'data': 'U' }",
            (3, 27),
            "'data' may name union 'U' only with 'boxed': true",
        ),
        (
            "{ 'command': 'c', 'data': { 'a': 'int' }, 'boxed': true }",
            (1, 1),
            "'boxed': true requires 'data' to name a type",
        ),
        (
            "{ 'command': 'c', 'data': 'E' }",
            (1, 27),
            "'data' uses undefined type 'E'",
        ),
        (
            "{ 'event': 'E' }\n{ 'command': 'c', 'data': 'E' }",
            (2, 27),
            "'data' uses an event 'E' as a type",
        ),
        (
            "{ 'command': 'c', 'gen': true }",
            (1, 26),
            "flag 'gen' may only be false",
        ),
        (
            "{ 'command': 'c', 'allow-oob': false }",
            (1, 32),
            "flag 'allow-oob' may only be true",
        ),
        (
            "{ 'command': 'c', 'coroutine': 'yes' }",
            (1, 32),
            "'coroutine' must be true or false, not a string",
        ),
        (
            "{ 'command': 'c', 'if': 'not valid' }",
            (1, 25),
            "'if' condition 'not valid' is not a valid identifier",
        ),
        (
            "{ 'command': 'c', 'if': { 'all': [] } }",
            (1, 34),
            "'if' condition 'all' is empty",
        ),
        (
            "{ 'command': 'c', 'if': { 'some': 'X' } }",
            (1, 27),
            "unknown 'if' operator 'some' (expected 'all', 'any' or 'not')",
        ),
        (
            "{ 'command': 'c', 'if': { 'not': 'X', 'all': ['Y'] } }",
            (1, 25),
            "'if' condition must have exactly one key: 'all', 'any' or 'not'",
        ),
        (
            "{ 'command': 'c', 'features': [ 'x', 'x' ] }",
            (1, 38),
            "duplicate feature 'x'",
        ),
        (
            "{ 'command': 'c', 'returns': [ 'a', 'b' ] }",
            (1, 30),
            "'returns' must be a type name or a list of exactly one type name",
        ),
        (
            "{ 'include': 'x.json', 'extra': true }",
            (1, 24),
            "include has unknown key 'extra' (valid keys: include)",
        ),
        (
            "{ 'pragma': { 'doc-required': 'yes' } }",
            (1, 31),
            "pragma 'doc-required' must be true or false, not a string",
        ),
        (
            "{ 'pragma': { 'what': [] } }",
            (1, 15),
            "unknown pragma 'what'",
        ),
    ];
    for (src, (line, col), message) in cases {
        let got = compile_error(src);
        assert_eq!(got, (*line, *col, (*message).to_owned()), "{src}");
    }
}

#[test]
fn pragmas_and_includes_are_accepted_by_compile() {
    let s = schema(
        "{ 'pragma': { 'doc-required': true } }
         { 'pragma': { 'command-name-exceptions': [ 'a_b' ], 'member-name-exceptions': [] } }
         { 'include': 'elsewhere.json' }
         { 'command': 'a_b' }",
    );
    assert!(s.get("a_b").is_some());
}

#[test]
fn vendor_prefixed_names() {
    let s = schema(
        "{ 'enum': '__com.example_E', 'data': [ '__com.example_x', '2_5' ] }
         { 'command': '__org.qemu_cmd', 'data': { '__org.qemu_arg': '__com.example_E' } }",
    );
    assert!(s.get("q_obj___org.qemu_cmd-arg").is_some());
}

/// Mutates a real schema file many ways: whatever the text, parsing and compiling return
/// (`Ok` or `Err`) and never panic. A cheap stand-in for the fuzz target.
#[test]
fn mangled_schemas_never_panic() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/qapi-9.1/run-state.json"
    ))
    .expect("QEMU 9.1's QAPI sources beside the project (../shared/qapi-9.1)");
    let bytes = text.as_bytes();
    let tokens: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"'",
        b"\\",
        b"#",
        b"\n",
        b"true",
        b"7",
        b"\xc3\xa9",
        b"'base'",
        b"'data'",
        b"'union'",
        b"'S'",
        b"['str']",
        b"{'type': 'int'}",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        // xorshift64*: deterministic, so a failure reproduces.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        usize::try_from(state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33).unwrap() % bound.max(1)
    };
    let mut ok = 0;
    for round in 0..400 {
        let mut mutated = bytes.to_vec();
        for _ in 0..=round % 4 {
            let at = next(mutated.len());
            match next(3) {
                0 => {
                    let len = next(40).min(mutated.len() - at);
                    mutated.drain(at..at + len);
                }
                1 => {
                    let token = tokens[next(tokens.len())];
                    mutated.splice(at..at, token.iter().copied());
                }
                _ => mutated.truncate(at),
            }
        }
        let text = String::from_utf8_lossy(&mutated);
        if let Ok(exprs) = parse_str(&text, "m.json")
            && compile(&exprs).is_ok()
        {
            ok += 1;
        }
    }
    // Some mutations (in comments, say) leave a valid schema; most do not.
    assert!(ok < 400);
}

/// A base chain of `n` structs `S0` (base `S1`) ... `Sn` (no base), one member each but the
/// last.
fn chain(n: usize) -> String {
    use std::fmt::Write;
    let mut src = String::new();
    for i in 0..n {
        let next = i + 1;
        writeln!(
            src,
            "{{ 'struct': 'S{i}', 'base': 'S{next}', 'data': {{ 'm{i}': 'int' }} }}"
        )
        .unwrap();
    }
    writeln!(src, "{{ 'struct': 'S{n}', 'data': {{}} }}").unwrap();
    src
}

/// Inputs built to be slow: many keys, a long base chain, one huge line. Each must finish
/// quickly, with an error where a limit is hit.
#[test]
fn hostile_sizes_stay_cheap() {
    let start = std::time::Instant::now();
    // 50,000 members in one struct, all on one line.
    let mut members = String::new();
    for i in 0..50_000 {
        std::fmt::Write::write_fmt(&mut members, format_args!("'m{i}': 'int', ")).unwrap();
    }
    let src = format!("{{ 'struct': 'S', 'data': {{ {members} 'last': 'str' }} }}");
    let s = schema(&src);
    assert_eq!(member_names(&s, "S").len(), 50_001);
    // A base chain of 2,000 structs, one member each: flattening is quadratic, so it is capped.
    let (_, _, message) = compile_error(&chain(2_000));
    assert!(message.starts_with("schema too large"), "{message}");
    // A shorter chain is fine, and does not recurse.
    let s = schema(&chain(500));
    assert_eq!(member_names(&s, "S0").len(), 500);
    assert_eq!(member_names(&s, "S0")[0], "m499");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
