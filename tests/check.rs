//! `check` and the schema sources on real data: the bundled captures, the built-in schemas,
//! a live QEMU, and a capture that carries its own schema.

use std::path::{Path, PathBuf};

use qmptap::audit::{check_capture, schema_for};
use qmptap::schema::check::{Policy, Severity};
use qmptap::schema::{self, SchemaSpec, builtin, introspect, qapi};

use crate::util::{Client, Proxy, Qemu, TempDir};

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures")
        .join(name)
}

const QAPI_9_1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/qapi-9.1");

#[test]
fn bundled_migration_block_and_libvirt_captures_check_clean() {
    for name in [
        "migration.jsonl",
        "block-mirror.jsonl",
        "libvirt-save.jsonl",
    ] {
        let path = capture(name);
        let loaded = schema_for(&path, None).unwrap();
        assert!(
            loaded.description.starts_with("builtin:7.2"),
            "{}",
            loaded.description
        );
        let report = check_capture(&path, &loaded, Policy::default()).unwrap();
        assert!(report.messages > 30);
        assert_eq!(report.findings, [], "{name}");
    }
}

/// The errors capture was made to contain mistakes: check finds exactly those.
#[test]
fn the_errors_capture_yields_exactly_its_deliberate_mistakes() {
    let path = capture("errors-fds-oob.jsonl");
    let loaded = schema_for(&path, None).unwrap();
    let report = check_capture(&path, &loaded, Policy::default()).unwrap();
    let got: Vec<(u64, String, String, Option<String>)> = report
        .findings
        .iter()
        .map(|f| (f.conn, f.rule.clone(), f.path.clone(), f.name.clone()))
        .collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        got,
        [
            (
                1,
                s("unknown-command"),
                s("execute"),
                Some(s("no-such-command"))
            ),
            (
                1,
                s("unknown-member"),
                s("arguments"),
                Some(s("query-status"))
            ),
            (
                1,
                s("missing-member"),
                s("arguments"),
                Some(s("device_del"))
            ),
            (1, s("wrong-type"), s("arguments.path"), Some(s("qom-list"))),
            (
                1,
                s("repeated-negotiation"),
                s("execute"),
                Some(s("qmp_capabilities"))
            ),
            (
                2,
                s("before-negotiation"),
                s("execute"),
                Some(s("query-status"))
            ),
            (2, s("invalid-input"), s(""), None),
            (2, s("invalid-input"), s(""), None),
            (
                2,
                s("oob-not-enabled"),
                s("exec-oob"),
                Some(s("query-yank"))
            ),
        ],
        "{:#?}",
        report.findings
    );
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.severity == Severity::Error)
    );
}

#[test]
fn the_built_in_9_1_schema_is_the_compiled_qapi_sources() {
    let compiled = qapi::load_dir_or_file(Path::new(QAPI_9_1)).unwrap();
    let built_in = builtin::load("9.1").unwrap().schema;
    assert_eq!(
        built_in, compiled,
        "schemas/qemu-9.1.json is stale: run scripts/schemas/make.sh"
    );
}

#[test]
fn live_schema_and_a_capture_with_its_own_schema_match_the_built_in_7_2() {
    let dir = TempDir::new("live-schema");
    let qemu = Qemu::start(&dir);
    let live = schema::load(&SchemaSpec::Live(qemu.addr())).unwrap();
    let built_in = builtin::load("7.2").unwrap();
    assert_eq!(
        live.schema, built_in.schema,
        "builtin:7.2 is what this QEMU reports"
    );
    assert_eq!(
        introspect::from_introspection(&introspect::to_introspection(&live.schema)).unwrap(),
        live.schema
    );

    // A capture holding a query-qmp-schema reply is checked against that schema.
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    c.execute(r#"{"execute": "query-qmp-schema"}"#);
    c.execute(r#"{"execute": "query-status", "arguments": {"verbose": true}}"#);
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    drop(proxy.stop());
    let path = dir.path("capture.jsonl");
    let loaded = schema_for(&path, None).unwrap();
    assert!(
        loaded
            .description
            .starts_with("the capture's own query-qmp-schema reply"),
        "{}",
        loaded.description
    );
    let report = check_capture(&path, &loaded, Policy::default()).unwrap();
    let rules: Vec<&str> = report.findings.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(rules, ["unknown-member"], "{:#?}", report.findings);
}
