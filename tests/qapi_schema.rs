//! The QAPI compiler against QEMU 9.1's real sources, cross-checked with the QMP reference
//! manual of the same release.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use qmptap::schema::qapi::{Value, load_dir_or_file, parse_file};
use qmptap::schema::{Cond, Entity, Meta, Schema};

const QAPI_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/qapi-9.1");
const MANUAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/reference/qemu-qmp-ref-9.1.txt"
);

fn schema() -> Schema {
    load_dir_or_file(Path::new(QAPI_DIR)).unwrap()
}

fn entity<'a>(schema: &'a Schema, name: &str) -> &'a Entity {
    schema
        .get(name)
        .unwrap_or_else(|| panic!("'{name}' missing"))
}

/// Definitions that sit in a second-level documentation section (`# == Title` in a doc
/// comment), by name, with the section's title. The manual's table of contents is two levels
/// deep: it names these sections but none of their definitions.
///
/// A definition's section is the last heading above it in its own file (`# = Title` closes a
/// subsection). Every 9.1 file opens with a heading except machine-target.json and
/// misc-target.json, which are included right after the first-level sections of machine.json
/// and misc.json, so "no heading yet" counts as first level.
fn subsection_definitions() -> BTreeMap<String, String> {
    const METAS: &[&str] = &["enum", "struct", "union", "alternate", "command", "event"];
    let mut out = BTreeMap::new();
    for file in std::fs::read_dir(QAPI_DIR).unwrap() {
        let path = file.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // (line, Some(title) for a second-level heading, None for a first-level one)
        let headings: Vec<(usize, Option<String>)> = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                if let Some(title) = l.strip_prefix("# == ") {
                    Some((i + 1, Some(title.to_owned())))
                } else {
                    l.strip_prefix("# = ").map(|_| (i + 1, None))
                }
            })
            .collect();
        for expr in parse_file(&path).unwrap() {
            let Some(Value::Str(name)) = METAS
                .iter()
                .find_map(|m| expr.dict.get(m))
                .map(|n| &n.value)
            else {
                continue;
            };
            let section = headings
                .iter()
                .rev()
                .find(|(line, _)| *line < expr.pos.line);
            if let Some((_, Some(title))) = section {
                out.insert(name.clone(), title.clone());
            }
        }
    }
    out
}

#[test]
fn every_file_parses() {
    let mut files = 0;
    for entry in std::fs::read_dir(QAPI_DIR).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            parse_file(&path).unwrap_or_else(|e| panic!("{e}"));
            files += 1;
        }
    }
    assert_eq!(files, 42);
}

#[test]
fn loads_a_directory_or_its_entry_file() {
    let from_dir = schema();
    let from_file = load_dir_or_file(&Path::new(QAPI_DIR).join("qapi-schema.json")).unwrap();
    assert_eq!(from_dir, from_file);
    // A file loaded on its own brings what it includes.
    let block = load_dir_or_file(&Path::new(QAPI_DIR).join("block.json")).unwrap();
    assert!(block.get("blockdev-add").is_some());
    assert!(block.get("query-status").is_none());
}

/// The manual's table of contents: `- NAME (Kind)` lines between `Contents¶` and the first
/// section body (`INTRODUCTION¶`).
fn manual_toc(text: &str) -> BTreeMap<String, String> {
    let start = text.find("\nContents¶\n").unwrap();
    let end = text.find("\nINTRODUCTION¶\n").unwrap();
    let mut toc = BTreeMap::new();
    for line in text[start..end].lines() {
        let Some(entry) = line.strip_prefix("- ") else {
            continue;
        };
        let Some((name, kind)) = entry.strip_suffix(')').and_then(|e| e.rsplit_once(" (")) else {
            continue;
        };
        if matches!(kind, "Command" | "Event" | "Object" | "Enum" | "Alternate") {
            assert!(!name.contains(' '), "odd entry {line:?}");
            assert!(
                toc.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} listed twice"
            );
        }
    }
    toc
}

fn kind_matches(meta: &Meta, kind: &str) -> bool {
    matches!(
        (meta, kind),
        (Meta::Command { .. }, "Command")
            | (Meta::Event { .. }, "Event")
            | (Meta::Object { .. }, "Object")
            | (Meta::Enum { .. }, "Enum")
            | (Meta::Alternate { .. }, "Alternate")
    )
}

#[test]
fn manual_table_of_contents_matches_the_model() {
    let schema = schema();
    let text = std::fs::read_to_string(MANUAL).unwrap();
    let toc = manual_toc(&text);

    let mut found = 0;
    let mut missing = Vec::new();
    let mut wrong_kind = Vec::new();
    for (name, kind) in &toc {
        match schema.get(name) {
            None => missing.push(name.clone()),
            Some(e) if !kind_matches(&e.meta, kind) => {
                wrong_kind.push(format!("{name}: manual {kind}, model {:?}", e.meta));
            }
            Some(_) => found += 1,
        }
    }

    // Definitions the manual does not list, and why.
    let subsections = subsection_definitions();
    let mut implicit = 0;
    let mut builtin = 0;
    let mut in_subsection: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for (name, e) in &schema.entities {
        if toc.contains_key(name) {
            continue;
        }
        if name.starts_with("q_") || name.starts_with('[') {
            implicit += 1;
        } else if matches!(e.meta, Meta::Builtin { .. }) || name == "QType" {
            builtin += 1;
        } else if let Some(title) = subsections.get(name) {
            *in_subsection.entry(title).or_default() += 1;
        } else {
            unexplained.push(name.clone());
        }
    }
    println!(
        "manual TOC: {} names, {found} found with the right kind, {} missing, {} of another kind",
        toc.len(),
        missing.len(),
        wrong_kind.len()
    );
    println!(
        "model: {} entities; not in the manual: {} in second-level sections {in_subsection:?}, \
         {implicit} implicit (q_obj_*, q_empty, [T]), {builtin} builtins (QType included), {} \
         unexplained",
        schema.entities.len(),
        in_subsection.values().sum::<usize>(),
        unexplained.len()
    );
    assert!(missing.is_empty(), "missing from the model: {missing:?}");
    assert!(wrong_kind.is_empty(), "{wrong_kind:#?}");
    assert!(unexplained.is_empty(), "not in the manual: {unexplained:?}");
    // No definition of a second-level section is in the table of contents.
    assert_eq!(in_subsection.values().sum::<usize>(), subsections.len());
    // The sections: the three of "Block devices" and the two of "Remote desktop".
    let titles: BTreeSet<&str> = in_subsection.keys().copied().collect();
    assert_eq!(
        titles,
        BTreeSet::from([
            "Additional block stuff (VM related)",
            "Block core (VM unrelated)",
            "Block device exports",
            "Spice",
            "VNC"
        ])
    );
}

/// The manual's body: each definition's heading `NAME (Kind)¶`, and its `If¶` section, whose
/// next line is the condition.
#[test]
fn manual_if_sections_match_model_conditions() {
    let schema = schema();
    let text = std::fs::read_to_string(MANUAL).unwrap();
    let body = &text[text.find("\nINTRODUCTION¶\n").unwrap()..];
    let mut current: Option<&str> = None;
    let mut lines = body.lines();
    let mut checked = 0;
    let mut headings = 0;
    let mut conditional_in_body = BTreeSet::new();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_suffix('¶') {
            if let Some((name, kind)) = heading.strip_suffix(')').and_then(|h| h.rsplit_once(" ("))
                && matches!(kind, "Command" | "Event" | "Object" | "Enum" | "Alternate")
            {
                current = Some(name);
                headings += 1;
                continue;
            }
            if heading == "If" {
                let symbol = lines.next().unwrap();
                let name = current.expect("If section before any definition");
                let e = entity(&schema, name);
                assert_eq!(
                    e.cond,
                    Some(Cond::Symbol(symbol.to_owned())),
                    "{name}: manual says If {symbol}"
                );
                conditional_in_body.insert(name);
                checked += 1;
            }
        }
    }
    // The converse, over the definitions the (truncated) body documents: a definition with a
    // condition in the model has an If section in the manual.
    let mut documented = BTreeSet::new();
    for line in body.lines() {
        if let Some((name, kind)) = line.strip_suffix(")¶").and_then(|h| h.rsplit_once(" ("))
            && matches!(kind, "Command" | "Event" | "Object" | "Enum" | "Alternate")
        {
            documented.insert(name);
        }
    }
    let unmarked: Vec<&str> = documented
        .iter()
        .copied()
        .filter(|n| schema.get(n).is_some_and(|e| e.cond.is_some()))
        .filter(|n| !conditional_in_body.contains(n))
        .collect();
    println!(
        "manual body: {headings} definitions documented, {checked} If sections, all matching \
         the model's conditions; conditional in the model without If in the manual: {unmarked:?}"
    );
    assert_eq!(checked, 68);
    assert!(unmarked.is_empty(), "{unmarked:?}");
}

fn object_members(e: &Entity) -> &[qmptap::schema::Member] {
    match &e.meta {
        Meta::Object { members, .. } => members,
        other => panic!("{} is not an object: {other:?}", e.name),
    }
}

#[test]
fn sanity_of_well_known_definitions() {
    let s = schema();
    assert_eq!(
        entity(&s, "query-status").meta,
        Meta::Command {
            arg_type: "q_empty".into(),
            ret_type: "StatusInfo".into(),
            allow_oob: false
        }
    );
    // blockdev-add is boxed: its argument type is the union itself.
    let Meta::Command { arg_type, .. } = &entity(&s, "blockdev-add").meta else {
        panic!()
    };
    assert_eq!(arg_type, "BlockdevOptions");
    let Meta::Object {
        tag,
        variants,
        members,
    } = &entity(&s, "BlockdevOptions").meta
    else {
        panic!()
    };
    assert_eq!(tag.as_deref(), Some("driver"));
    assert_eq!(members[0].name, "driver");
    assert_eq!(members[0].ty, "BlockdevDriver");
    assert!(
        variants
            .iter()
            .any(|v| v.case == "qcow2" && v.ty == "BlockdevOptionsQcow2")
    );
    assert!(
        variants
            .iter()
            .any(|v| v.case == "nvme-io_uring" && v.cond.is_some())
    );

    let Meta::Command { arg_type, .. } = &entity(&s, "migrate").meta else {
        panic!()
    };
    assert_eq!(arg_type, "q_obj_migrate-arg");
    let args = object_members(entity(&s, arg_type));
    let uri = args.iter().find(|m| m.name == "uri").unwrap();
    assert!(uri.optional);
    assert_eq!(uri.ty, "str");
    let channels = args.iter().find(|m| m.name == "channels").unwrap();
    assert!(channels.optional);
    assert_eq!(channels.ty, "[MigrationChannel]");
    assert_eq!(
        entity(&s, "[MigrationChannel]").meta,
        Meta::Array {
            element_type: "MigrationChannel".into()
        }
    );

    assert_eq!(
        entity(&s, "BLOCK_JOB_READY").meta,
        Meta::Event {
            arg_type: "q_obj_BLOCK_JOB_READY-arg".into()
        }
    );
    assert!(
        matches!(entity(&s, "STOP").meta, Meta::Event { ref arg_type } if arg_type == "q_empty")
    );
    // allow-oob is true for exactly these in 9.1.
    let oob: Vec<&str> = s
        .commands()
        .filter(|e| {
            matches!(
                e.meta,
                Meta::Command {
                    allow_oob: true,
                    ..
                }
            )
        })
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        oob,
        ["migrate-pause", "migrate-recover", "query-yank", "yank"]
    );
    // Integer widths survive.
    let stats = object_members(entity(&s, "MigrationStats"));
    assert_eq!(
        stats.iter().find(|m| m.name == "transferred").unwrap().ty,
        "int"
    );
    assert!(matches!(
        entity(&s, "uint64").meta,
        Meta::Builtin {
            json_type: qmptap::schema::JsonType::Int
        }
    ));
    // Alternates list branch types; arrays as [T].
    assert_eq!(
        entity(&s, "StatsValue").meta,
        Meta::Alternate {
            members: vec!["uint64".into(), "bool".into(), "[uint64]".into()]
        }
    );
    // An inline union base becomes q_obj_<Union>-base.
    assert_eq!(
        object_members(entity(&s, "q_obj_BlockdevOptions-base")),
        object_members(entity(&s, "BlockdevOptions"))
    );
    // A named union base is flattened.
    let Meta::Object { members, tag, .. } = &entity(&s, "ImageInfoSpecificQCow2Encryption").meta
    else {
        panic!()
    };
    assert_eq!(tag.as_deref(), Some("format"));
    assert_eq!(members[0].name, "format");
}

#[test]
fn deprecated_features_where_the_sources_say() {
    let s = schema();
    // Definitions.
    for name in ["drive-backup", "nbd-server-add", "nbd-server-remove"] {
        assert_eq!(entity(&s, name).features, ["deprecated"], "{name}");
    }
    assert!(entity(&s, "drive-mirror").features.is_empty());
    // Members, of named structs and of implicit argument types.
    let member = |owner: &str, name: &str| {
        object_members(entity(&s, owner))
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        member("SecretCommonProperties", "loaded").features,
        ["deprecated"]
    );
    // Flattened into the structs based on it.
    assert_eq!(
        member("SecretProperties", "loaded").features,
        ["deprecated"]
    );
    assert_eq!(
        member("q_obj_block-commit-arg", "base").features,
        ["deprecated"]
    );
    assert_eq!(member("q_obj_eject-arg", "device").features, ["deprecated"]);
    assert!(member("q_obj_eject-arg", "id").features.is_empty());
    // A member merely named `deprecated` is no feature.
    assert_eq!(member("MachineInfo", "deprecated").ty, "bool");
    // Enum values.
    let Meta::Enum { members: values } = &entity(&s, "TransactionActionKind").meta else {
        panic!()
    };
    let value = values.iter().find(|v| v.name == "drive-backup").unwrap();
    assert_eq!(value.features, ["deprecated"]);

    // Every mark: the sources have 21 lines quoting 'deprecated'; 2 are member names
    // (CpuDefinitionInfo, MachineInfo) and 1 is a comment (compat.json), leaving 18 features.
    // Count them where they are written: definitions, own members (not flattened copies) and
    // enum values.
    let mut marks = 0;
    for file in std::fs::read_dir(QAPI_DIR).unwrap() {
        for expr in parse_file(&file.unwrap().path()).unwrap() {
            marks += count_deprecated(&Value::Dict(expr.dict));
        }
    }
    println!("deprecated feature marks in the sources: {marks}");
    assert_eq!(marks, 18);
}

/// Occurrences of 'deprecated' as an element of a `features` list.
fn count_deprecated(value: &Value) -> usize {
    match value {
        Value::Dict(d) => d
            .entries
            .iter()
            .map(|(k, v)| match (&k.name[..], &v.value) {
                ("features", Value::List(items)) => items
                    .iter()
                    .filter(|i| match &i.value {
                        Value::Str(s) => s == "deprecated",
                        Value::Dict(d) => d
                            .get("name")
                            .is_some_and(|n| n.value == Value::Str("deprecated".into())),
                        _ => false,
                    })
                    .count(),
                _ => count_deprecated(&v.value),
            })
            .sum(),
        Value::List(items) => items.iter().map(|i| count_deprecated(&i.value)).sum(),
        _ => 0,
    }
}

#[test]
fn load_time() {
    let start = Instant::now();
    let s = schema();
    let elapsed = start.elapsed();
    println!(
        "loaded and compiled {} entities in {:.1} ms (this build profile; see examples/qapi_load for release)",
        s.entities.len(),
        elapsed.as_secs_f64() * 1e3
    );
}
