//! The QEMU 9.1 QMP reference manual's examples, as `manual_examples` extracts them from the
//! text rendering in `shared/reference/`. The counts are facts of that file: if one changes,
//! either the parser or the file did.
//!
//! `cargo test --test manual -- --nocapture` prints them; the extracted examples are written to
//! `target/manual-examples.json` for inspection.

use std::collections::BTreeSet;
use std::path::Path;

use qmptap::notation::{Arrow, Example, Exchange, manual_examples, parse};
use serde_json::Value;

fn manual() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/qemu-qmp-ref-9.1.txt");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the manual at {}: {e}", path.display()))
}

fn exchanges(examples: &[Example]) -> Vec<&Exchange> {
    examples.iter().flat_map(|e| &e.exchanges).collect()
}

#[test]
fn manual_counts() {
    let text = manual();
    let examples = manual_examples(&text);
    let definitions: BTreeSet<(&str, &str)> = examples
        .iter()
        .map(|e| (e.definition.as_str(), e.meta.as_str()))
        .collect();
    let all = exchanges(&examples);
    let parsed = all.iter().filter(|x| x.value.is_ok()).count();
    let failed: Vec<(usize, usize, &str)> = all
        .iter()
        .filter_map(|x| {
            x.value
                .as_ref()
                .err()
                .map(|why| (x.line, x.column, why.as_str()))
        })
        .collect();

    println!("definitions with examples: {}", definitions.len());
    println!("examples: {}", examples.len());
    println!("exchanges: {}", all.len());
    println!("parse as JSON: {parsed}");
    println!("do not parse: {}", failed.len());
    for (line, column, why) in &failed {
        println!("  {line}:{column}: {why}");
    }

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/manual-examples.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, serde_json::to_string_pretty(&examples).unwrap()).unwrap();
    println!("examples written to {}", out.display());

    assert_eq!(definitions.len(), 117);
    assert_eq!(examples.len(), 132);
    assert_eq!(all.len(), 268);
    assert_eq!(parsed, 265);
    assert_eq!(
        failed,
        [
            // query-blockstats' reply: a genuine JSON error in the manual, not rendering
            // damage. Ten members lack the comma after them ("rd_operations":36772 then
            // "wr_total_times_ns":...); qapi/block-core.json of 9.1 has the same text.
            (
                2561,
                38,
                "invalid JSON at line 2572 (column 1 of the value's line 12): expected `,` or `}`"
            ),
            // query-rocker-of-dpa-flows' reply: elision, `{...},` stands for more flows (and
            // leaves a trailing comma before `]`).
            (
                7292,
                34,
                "documentation elision `...` at line 7298, column 2: part of the value is left out"
            ),
            // query-spice's reply: elision, a `...` line stands for more channels.
            (
                7650,
                33,
                "documentation elision `...` at line 7677, column 1: part of the value is left out"
            ),
        ]
    );
}

#[test]
fn introduction_arrows_are_prose() {
    // "-> data issued by the Client <- Server data response" explains the notation; no JSON
    // follows either arrow, so the introduction has no example and nothing comes before the
    // first definition.
    let text = manual();
    let examples = manual_examples(&text);
    assert!(examples.iter().all(|e| !e.definition.is_empty()));
    let intro_end = text.find("QMP ERRORS¶").unwrap();
    assert!(parse(&text[..intro_end]).is_empty());
}

#[test]
fn examples_follow_the_manual_structure() {
    let examples = manual_examples(&manual());
    let metas: BTreeSet<&str> = examples.iter().map(|e| e.meta.as_str()).collect();
    assert_eq!(metas, BTreeSet::from(["Command", "Event"]));

    let find = |definition: &str| -> Vec<&Example> {
        examples
            .iter()
            .filter(|e| e.definition == definition)
            .collect()
    };
    // A titled list of examples: each "- Example: ..." line starts a new one.
    let medium = find("blockdev-change-medium");
    assert_eq!(
        medium.iter().map(|e| e.exchanges.len()).collect::<Vec<_>>(),
        [2, 4]
    );
    // Ten messages with nothing between them are one example.
    let migrate = find("migrate");
    assert_eq!(migrate.len(), 1);
    assert_eq!(migrate[0].exchanges.len(), 10);
    // A command and its reply merged onto one line by the rendering.
    let status = &find("watchdog-set-action")[0];
    assert_eq!(
        status
            .exchanges
            .iter()
            .map(|x| (x.arrow, x.line, x.column))
            .collect::<Vec<_>>(),
        [(Arrow::ToServer, 1260, 1), (Arrow::ToClient, 1261, 43)]
    );
}

#[test]
fn messages_that_are_not_shaped_like_qmp() {
    // Parsed values whose shape QMP does not allow for their direction: a client message
    // without `execute`, a server message without `return`, `error` or `event`. They are the
    // manual's own shortcuts, pinned here so that a schema check knows to expect them.
    let examples = manual_examples(&manual());
    let odd: Vec<(&str, usize)> = examples
        .iter()
        .flat_map(|e| e.exchanges.iter().map(move |x| (e.definition.as_str(), x)))
        .filter(|(_, x)| {
            let Ok(Value::Object(members)) = &x.value else {
                return x.value.is_ok();
            };
            let wanted: &[&str] = match x.arrow {
                Arrow::ToServer => &["execute", "exec-oob"],
                Arrow::ToClient => &["return", "error", "event", "QMP"],
            };
            !wanted.iter().any(|key| members.contains_key(*key))
        })
        .map(|(definition, x)| (definition, x.line))
        .collect();
    println!("not shaped like QMP: {odd:?}");
    // query-dirty-rate shows only the DirtyRateInfo returned, without `{ "return": ... }`.
    assert_eq!(
        odd,
        [("query-dirty-rate", 9814), ("query-dirty-rate", 9818)]
    );
}

/// Every example of the manual checked against the schema compiled from the same release's
/// QAPI sources, each example as its own (negotiated) session, through the same path as
/// `qmptap check FILE.txt`. What it finds is the manual's own mistakes, listed in the README.
#[test]
fn manual_examples_check_against_the_9_1_schema() {
    use qmptap::audit::check_notation;
    use qmptap::schema::builtin;
    use qmptap::schema::check::{Policy, Severity};
    let loaded = builtin::load("9.1").unwrap();
    let examples = manual_examples(&manual());
    let mut messages = 0;
    // (definition, line in the manual, rule, severity)
    let mut findings: Vec<(String, usize, String, Severity)> = Vec::new();
    for example in &examples {
        // One exchange per arrow; remember where each starts to give the manual's line back.
        let mut text = String::new();
        let mut starts = Vec::new();
        for e in &example.exchanges {
            starts.push((text.lines().count() + 1, e.line));
            let arrow = if e.arrow == Arrow::ToServer {
                "->"
            } else {
                "<-"
            };
            text.push_str(arrow);
            text.push(' ');
            text.push_str(&e.text);
            text.push('\n');
        }
        let report =
            check_notation(&example.definition, &text, &loaded, Policy::default()).unwrap();
        messages += report.messages;
        for f in report.findings {
            let line = starts
                .iter()
                .find(|(at, _)| *at as u64 == f.line)
                .map_or(0, |(_, manual)| *manual);
            findings.push((example.definition.clone(), line, f.rule, f.severity));
        }
    }
    println!(
        "manual examples: {} examples, {messages} messages, {} findings",
        examples.len(),
        findings.len()
    );
    for f in &findings {
        println!("  {f:?}");
    }
    assert_eq!((examples.len(), messages), (132, 268));
    let mut errors: Vec<(&str, usize, &str, usize)> = Vec::new();
    for (d, l, r, severity) in &findings {
        if *severity == Severity::Error {
            match errors.last_mut() {
                Some(last) if (last.0, last.1, last.2) == (d.as_str(), *l, r.as_str()) => {
                    last.3 += 1;
                }
                _ => errors.push((d.as_str(), *l, r.as_str(), 1)),
            }
        }
    }
    assert_eq!(
        errors,
        [
            ("query-block", 2310, "unknown-member", 1), // `backing_file` is not in 9.1's ImageInfo
            ("query-block", 2310, "missing-member", 1), // nor is the mandatory `cache` there
            ("query-blockstats", 2561, "invalid-input", 1), // ten commas missing in the JSON
            ("query-named-block-nodes", 2994, "unknown-member", 1), // as query-block
            ("query-named-block-nodes", 2994, "missing-member", 1),
            ("query-rocker-of-dpa-flows", 7292, "invalid-input", 1), // elided with `...`
            ("query-spice", 7650, "invalid-input", 1),               // elided with `...`
            ("query-migrate", 8938, "missing-member", 10), // `ram` lacks ten mandatory members
            ("query-migrate", 8959, "missing-member", 10),
            ("query-migrate", 8978, "missing-member", 10),
            ("migrate", 9565, "wrong-type", 1), // `offset` "0x1000" is a string, uint64 expected
            ("query-dirty-rate", 9814, "invalid-input", 1), // a bare result, no {"return": ...}
            ("query-dirty-rate", 9818, "invalid-input", 1),
        ]
    );
    // Examples of deprecated or unstable commands and members: correct, but worth a warning.
    let warned: Vec<(&str, &str)> = findings
        .iter()
        .filter(|f| f.3 == Severity::Warning)
        .map(|(d, _, r, _)| (d.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        warned,
        [
            ("block-commit", "deprecated"),
            ("drive-backup", "deprecated"),
            ("x-blockdev-change", "unstable"),
            ("x-blockdev-change", "unstable"),
            ("x-blockdev-set-iothread", "unstable"),
            ("x-blockdev-set-iothread", "unstable"),
        ]
    );
}
