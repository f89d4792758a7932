//! The checker against QEMU 9.1's real schema (compiled from its QAPI sources): real commands,
//! replies and events, valid and broken, with the exact findings expected.

use std::path::Path;
use std::sync::OnceLock;

use qmptap::schema::Schema;
use qmptap::schema::check::{Checker, Finding, Policy, Rule, Severity};
use qmptap::schema::qapi::load_dir_or_file;
use serde_json::{Value, json};

const QAPI_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/qapi-9.1");

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| load_dir_or_file(Path::new(QAPI_DIR)).unwrap())
}

fn checker() -> &'static Checker<'static> {
    static CHECKER: OnceLock<Checker<'static>> = OnceLock::new();
    CHECKER.get_or_init(|| Checker::new(schema(), Policy::default()))
}

fn command(msg: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    checker().check_command(msg, &mut out);
    out
}

fn reply(cmd: &str, msg: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    checker().check_return(cmd, msg, &mut out);
    out
}

fn error(msg: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    checker().check_error(msg, &mut out);
    out
}

fn event(msg: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    checker().check_event(msg, &mut out);
    out
}

fn value(ty: &str, v: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut path = String::new();
    checker().check_value(ty, v, &mut path, &mut out);
    assert_eq!(path, "", "path restored");
    out
}

fn err(rule: Rule, path: &str, expected: &str, found: &str) -> Finding {
    Finding {
        rule,
        severity: Severity::Error,
        path: path.to_owned(),
        expected: expected.to_owned(),
        found: found.to_owned(),
    }
}

fn warn(rule: Rule, path: &str, expected: &str, found: &str) -> Finding {
    Finding {
        severity: Severity::Warning,
        ..err(rule, path, expected, found)
    }
}

fn ts() -> Value {
    json!({"seconds": 1_732_564_184, "microseconds": 181_926})
}

// --- valid traffic -------------------------------------------------------------------------

#[test]
fn valid_commands() {
    let ok = [
        json!({"execute": "query-status"}),
        json!({"execute": "query-status", "arguments": {}, "id": {"any": ["thing"]}}),
        json!({"execute": "query-status", "id": null}),
        json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}),
        json!({"execute": "migrate", "arguments": {"uri": "tcp:10.0.0.1:4444"}}),
        json!({"execute": "migrate", "arguments": {"channels": [{
            "channel-type": "main",
            "addr": {"transport": "socket", "type": "unix", "path": "/tmp/x"}}]}}),
        json!({"execute": "migrate", "arguments": {"channels": [{
            "channel-type": "main",
            "addr": {"transport": "socket", "type": "inet", "host": "h", "port": "1",
                     "ipv6": true, "keep-alive": false}}]}}),
        json!({"execute": "migrate", "arguments": {"channels": [{
            "channel-type": "main",
            "addr": {"transport": "exec", "args": ["cat", ">/dev/null"]}}]}}),
        // A nested definition of the child, and a reference to a node by name: both branches
        // of the alternate BlockdevRef.
        json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "disk0", "discard": "unmap",
            "file": {"driver": "file", "filename": "/var/lib/disk0.qcow2", "aio": "threads"}}}),
        json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "disk0", "file": "file0",
            "backing": null}}),
        // device_add passes members beyond driver/bus/id on as device properties.
        json!({"execute": "device_add", "arguments": {
            "driver": "virtio-net-pci", "id": "net0", "netdev": "hostnet0",
            "mac": "52:54:00:12:34:56", "bus": "pci.0", "addr": "0x3", "vectors": 4}}),
        json!({"execute": "block-job-set-speed", "arguments": {"device": "job0", "speed": 0}}),
        json!({"execute": "block-job-set-speed",
               "arguments": {"device": "job0", "speed": i64::MAX}}),
        json!({"execute": "block-job-set-speed",
               "arguments": {"device": "job0", "speed": i64::MIN}}),
        json!({"execute": "migrate-set-parameters", "arguments": {
            "cpu-throttle-initial": 255, "max-bandwidth": u64::MAX, "downtime-limit": 300,
            "tls-creds": null, "block-bitmap-mapping": []}}),
        json!({"exec-oob": "migrate-pause", "id": 7}),
        json!({"execute": "qom-set", "arguments": {"path": "/machine", "property": "p",
                                                    "value": {"anything": [1, "goes"]}}}),
    ];
    for msg in &ok {
        assert_eq!(command(msg), [], "{msg}");
    }
}

#[test]
fn valid_replies_and_events() {
    assert_eq!(
        reply(
            "query-status",
            &json!({"return": {"running": true, "status": "running"}, "id": "__qmp#00002"})
        ),
        []
    );
    assert_eq!(reply("qmp_capabilities", &json!({"return": {}})), []);
    assert_eq!(
        reply("query-name", &json!({"return": {"name": "vm0"}, "id": 1})),
        []
    );
    assert_eq!(
        reply(
            "query-jobs",
            &json!({"return": [{"id": "job0", "type": "mirror", "status": "ready",
                                "current-progress": 1_048_576, "total-progress": 1_048_576}]})
        ),
        []
    );
    // An error is a fine reply to any command, known or not.
    let e = json!({"error": {"class": "GenericError", "desc": "it failed"}, "id": 3});
    assert_eq!(error(&e), []);
    assert_eq!(reply("query-status", &e), []);
    assert_eq!(reply("no-such-command", &json!({"return": 42})), []);
    for class in qmptap::schema::check::ERROR_CLASSES {
        assert_eq!(error(&json!({"error": {"class": class, "desc": ""}})), []);
    }

    assert_eq!(
        event(
            &json!({"event": "JOB_STATUS_CHANGE", "data": {"id": "job0", "status": "running"},
                      "timestamp": ts()})
        ),
        []
    );
    assert_eq!(
        event(&json!({"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}})),
        []
    );
    assert_eq!(
        event(&json!({"event": "STOP", "data": {}, "timestamp": ts()})),
        []
    );
}

// --- message shape ---------------------------------------------------------------------------

#[test]
fn command_shape() {
    assert_eq!(
        command(&json!(["execute"])),
        [err(
            Rule::NotAnObject,
            "",
            "a JSON object",
            "an array of 1 element"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "query-status", "arguments": [], "bogus": 1})),
        [
            err(
                Rule::UnknownMember,
                "",
                "only 'execute', 'exec-oob', 'arguments', 'id'",
                "member 'bogus'"
            ),
            err(
                Rule::NotAnObject,
                "arguments",
                "a JSON object",
                "an array of 0 elements"
            ),
        ]
    );
    assert_eq!(
        command(&json!({"execute": 42})),
        [err(Rule::WrongType, "execute", "str", "a number 42")]
    );
    assert_eq!(
        command(&json!({"id": 1})),
        [err(
            Rule::MissingMember,
            "",
            "member 'execute' or 'exec-oob' (str)",
            "nothing"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "stop", "exec-oob": "stop"})),
        [err(
            Rule::BadCommand,
            "",
            "one of 'execute' and 'exec-oob'",
            "both"
        )]
    );
}

#[test]
fn unknown_command() {
    assert_eq!(
        command(&json!({"execute": "no-such-command", "arguments": {"x": 1}})),
        [err(
            Rule::UnknownCommand,
            "execute",
            "a command of this schema",
            "no-such-command"
        )]
    );
}

#[test]
fn out_of_band() {
    assert_eq!(
        command(&json!({"exec-oob": "query-status", "id": 1})),
        [err(
            Rule::OobNotAllowed,
            "exec-oob",
            "a command allowed out-of-band",
            "command 'query-status'"
        )]
    );
    assert_eq!(command(&json!({"exec-oob": "migrate-pause"})), []);
    assert_eq!(command(&json!({"execute": "migrate-pause"})), []);
}

#[test]
fn reply_shape() {
    assert_eq!(
        reply("stop", &json!({"id": 1})),
        [err(
            Rule::BadReply,
            "",
            "exactly one of 'return' and 'error'",
            "neither"
        )]
    );
    assert_eq!(
        error(&json!({"return": {}, "error": {"class": "Bogus"}, "extra": 1})),
        [
            err(
                Rule::UnknownMember,
                "",
                "only 'return', 'error', 'id'",
                "member 'extra'"
            ),
            err(
                Rule::BadReply,
                "",
                "exactly one of 'return' and 'error'",
                "both"
            ),
            err(
                Rule::UnknownErrorClass,
                "error.class",
                "one of: GenericError, CommandNotFound, DeviceNotActive, DeviceNotFound, \
                 KVMMissingCap",
                "Bogus"
            ),
            err(
                Rule::MissingMember,
                "error",
                "member 'desc' (str)",
                "nothing"
            ),
        ]
    );
    assert_eq!(
        error(&json!({"error": {"class": "GenericError", "desc": 5}})),
        [err(Rule::WrongType, "error.desc", "str", "a number 5")]
    );
    assert_eq!(
        error(&json!("error")),
        [err(
            Rule::NotAnObject,
            "",
            "a JSON object",
            "a string \"error\""
        )]
    );
}

#[test]
fn event_shape() {
    assert_eq!(
        event(&json!({"event": "NO_SUCH_EVENT", "timestamp": ts()})),
        [err(
            Rule::UnknownEvent,
            "event",
            "an event of this schema",
            "NO_SUCH_EVENT"
        )]
    );
    assert_eq!(
        event(&json!({"event": "STOP"})),
        [err(
            Rule::MissingMember,
            "",
            "member 'timestamp' ({\"seconds\": int, \"microseconds\": int})",
            "nothing"
        )]
    );
    assert_eq!(
        event(&json!({"event": "STOP", "id": 1,
                      "timestamp": {"seconds": 1.5, "microseconds": 1_000_000, "nanos": 0}})),
        [
            err(
                Rule::UnknownMember,
                "",
                "only 'event', 'data', 'timestamp'",
                "member 'id'"
            ),
            err(
                Rule::UnknownMember,
                "timestamp",
                "only 'seconds', 'microseconds'",
                "member 'nanos'"
            ),
            err(Rule::WrongType, "timestamp.seconds", "int", "a number 1.5"),
            err(
                Rule::OutOfRange,
                "timestamp.microseconds",
                "int (-1..=999999)",
                "1000000"
            ),
        ]
    );
    assert_eq!(
        event(
            &json!({"event": "JOB_STATUS_CHANGE", "data": {"id": "job0", "status": "runnin"},
                      "timestamp": ts()})
        ),
        [err(
            Rule::BadEnumValue,
            "data.status",
            "one of: undefined, created, running, paused, ready, standby, waiting, pending, \
             aborting, concluded, null",
            "\"runnin\""
        )]
    );
    assert_eq!(
        event(&json!({"event": "JOB_STATUS_CHANGE", "timestamp": ts()})),
        [
            err(Rule::MissingMember, "data", "member 'id' (str)", "nothing"),
            err(
                Rule::MissingMember,
                "data",
                "member 'status' (enum JobStatus)",
                "nothing"
            ),
        ]
    );
    assert_eq!(
        event(&json!({"event": "STOP", "data": 1, "timestamp": ts()})),
        [err(
            Rule::NotAnObject,
            "data",
            "a JSON object",
            "a number 1"
        )]
    );
}

// --- members ---------------------------------------------------------------------------------

#[test]
fn missing_and_unknown_members() {
    // 9.1's migrate has both 'uri' and 'channels' optional: nothing is missing.
    assert_eq!(command(&json!({"execute": "migrate"})), []);
    assert_eq!(
        command(&json!({"execute": "device_del", "arguments": {}})),
        [err(
            Rule::MissingMember,
            "arguments",
            "member 'id' (str)",
            "nothing"
        )]
    );
    // An absent 'arguments' is '{}'.
    assert_eq!(
        command(&json!({"execute": "device_del"})),
        [err(
            Rule::MissingMember,
            "arguments",
            "member 'id' (str)",
            "nothing"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "query-status", "arguments": {"bogus": 1}})),
        [err(
            Rule::UnknownMember,
            "arguments",
            "no members (object q_empty)",
            "member 'bogus'"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "migrate", "arguments": {"uri": "tcp:0:1", "urii": "x"}})),
        [err(
            Rule::UnknownMember,
            "arguments",
            "a member of object q_obj_migrate-arg",
            "member 'urii'"
        )]
    );
    // device_add's extra members are not unknown, but its declared ones are still checked.
    assert_eq!(
        command(&json!({"execute": "device_add", "arguments": {"id": 1, "prop": "x"}})),
        [
            err(Rule::WrongType, "arguments.id", "str", "a number 1"),
            err(
                Rule::MissingMember,
                "arguments",
                "member 'driver' (str)",
                "nothing"
            ),
        ]
    );
}

#[test]
fn odd_member_names_are_quoted_in_paths() {
    assert_eq!(
        command(&json!({"execute": "qom-list", "arguments": {"path": "/", "odd key": 1}})),
        [err(
            Rule::UnknownMember,
            "arguments",
            "a member of object q_obj_qom-list-arg",
            "member \"odd key\""
        )]
    );
    assert_eq!(
        value(
            "[StatusInfo]",
            &json!([{"running": true, "status": "running", "a.b": 1}])
        ),
        [err(
            Rule::UnknownMember,
            "[0]",
            "a member of object StatusInfo",
            "member 'a.b'"
        )]
    );
    assert_eq!(
        value("q_obj_migrate-arg", &json!({"channels": {"x": 1}})),
        [err(
            Rule::WrongType,
            "channels",
            "array [MigrationChannel]",
            "an object with 1 member"
        )]
    );
}

// --- scalars ---------------------------------------------------------------------------------

#[test]
fn integer_ranges() {
    assert_eq!(value("int8", &json!(-128)), []);
    assert_eq!(value("int8", &json!(127)), []);
    assert_eq!(
        value("int8", &json!(128)),
        [err(Rule::OutOfRange, "", "int8 (-128..=127)", "128")]
    );
    assert_eq!(
        value("int8", &json!(-129)),
        [err(Rule::OutOfRange, "", "int8 (-128..=127)", "-129")]
    );
    assert_eq!(
        value("uint32", &json!(4_294_967_296_u64)),
        [err(
            Rule::OutOfRange,
            "",
            "uint32 (0..=4294967295)",
            "4294967296"
        )]
    );
    assert_eq!(
        value("int16", &json!(1.0)),
        [err(
            Rule::WrongType,
            "",
            "int16",
            "a floating-point number 1.0"
        )]
    );
    assert_eq!(value("number", &json!(1)), []);
    assert_eq!(value("number", &json!(-1.5e300)), []);
    assert_eq!(
        command(&json!({"execute": "migrate-set-parameters",
                        "arguments": {"cpu-throttle-initial": 256}})),
        [err(
            Rule::OutOfRange,
            "arguments.cpu-throttle-initial",
            "uint8 (0..=255)",
            "256"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "migrate-set-parameters",
                        "arguments": {"cpu-throttle-increment": -1}})),
        [err(
            Rule::OutOfRange,
            "arguments.cpu-throttle-increment",
            "uint8 (0..=255)",
            "-1"
        )]
    );
    // QEMU's uint64 visitor wraps negative values: accepted, so only a warning.
    assert_eq!(
        command(&json!({"execute": "migrate-set-parameters",
                        "arguments": {"max-bandwidth": -1}})),
        [warn(
            Rule::OutOfRange,
            "arguments.max-bandwidth",
            "size (0..=18446744073709551615)",
            "-1 (QEMU accepts it as 18446744073709551615)"
        )]
    );
    // 2^64 does not fit in 64 bits: JSON parsers read it as a float.
    let too_big: Value = serde_json::from_str("18446744073709551616").unwrap();
    assert_eq!(
        value("size", &too_big),
        [err(
            Rule::OutOfRange,
            "",
            "size (0..=18446744073709551615)",
            "1.8446744073709552e+19"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "block-job-set-speed",
                        "arguments": {"device": "job0", "speed": 9_223_372_036_854_775_808_u64}})),
        [err(
            Rule::OutOfRange,
            "arguments.speed",
            "int (-9223372036854775808..=9223372036854775807)",
            "9223372036854775808"
        )]
    );
}

#[test]
fn wrong_json_types() {
    assert_eq!(
        command(&json!({"execute": "qom-list", "arguments": {"path": 42}})),
        [err(Rule::WrongType, "arguments.path", "str", "a number 42")]
    );
    assert_eq!(
        command(&json!({"execute": "qmp_capabilities", "arguments": {"enable": "oob"}})),
        [err(
            Rule::WrongType,
            "arguments.enable",
            "array [QMPCapability]",
            "a string \"oob\""
        )]
    );
    assert_eq!(
        command(&json!({"execute": "qmp_capabilities", "arguments": {"enable": [true, "oob"]}})),
        [err(
            Rule::WrongType,
            "arguments.enable[0]",
            "enum QMPCapability",
            "a boolean true"
        )]
    );
    assert_eq!(
        command(&json!({"execute": "migrate", "arguments": {"detach": "yes", "uri": null}})),
        [
            err(
                Rule::WrongType,
                "arguments.detach",
                "bool",
                "a string \"yes\""
            ),
            err(Rule::WrongType, "arguments.uri", "str", "null"),
        ]
    );
    assert_eq!(
        reply("query-status", &json!({"return": [], "id": 1})),
        [err(
            Rule::WrongType,
            "return",
            "object StatusInfo",
            "an array of 0 elements"
        )]
    );
}

#[test]
fn enum_typos() {
    assert_eq!(
        command(&json!({"execute": "migrate", "arguments": {"channels": [{
            "channel-type": "main",
            "addr": {"transport": "socket", "type": "unix", "path": "/tmp/x"}}, {
            "channel-type": "main",
            "addr": {"transport": "socket", "type": "tcpp", "path": "/tmp/x"}}]}})),
        [err(
            Rule::BadEnumValue,
            "arguments.channels[1].addr.type",
            "one of: inet, unix, vsock, fd",
            "\"tcpp\""
        )]
    );
    // Long enums are listed in part.
    assert_eq!(
        reply(
            "query-status",
            &json!({"return": {"running": true, "status": "runing"}})
        ),
        [err(
            Rule::BadEnumValue,
            "return.status",
            "one of: debug, inmigrate, internal-error, io-error, paused, postmigrate, prelaunch, \
             finish-migrate, restore-vm, running, save-vm, shutdown, … (16 in all)",
            "\"runing\""
        )]
    );
}

// --- unions and alternates -------------------------------------------------------------------

#[test]
fn union_with_bad_discriminator() {
    // With an invalid tag the branch is unknown: members of some branch ('file') are not
    // reported, members of none ('bogus') are.
    assert_eq!(
        command(&json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow3", "node-name": "n", "file": "f", "bogus": 1}})),
        [
            err(
                Rule::BadEnumValue,
                "arguments.driver",
                "one of: blkdebug, blklogwrites, blkreplay, blkverify, bochs, cloop, \
                 compress, copy-before-write, copy-on-read, dmg, file, snapshot-access, \
                 … (47 in all)",
                "\"qcow3\""
            ),
            err(
                Rule::UnknownMember,
                "arguments",
                "a member of object BlockdevOptions",
                "member 'bogus'"
            ),
        ]
    );
    assert_eq!(
        command(&json!({"execute": "blockdev-add", "arguments": {"node-name": "n", "file": "f"}})),
        [err(
            Rule::MissingMember,
            "arguments",
            "member 'driver' (enum BlockdevDriver)",
            "nothing"
        )]
    );
}

#[test]
fn union_with_members_of_the_wrong_branch() {
    // MigrationAddress (tag 'transport') whose 'socket' branch is the union SocketAddress
    // (tag 'type'): 'path' belongs to the 'unix' branch, not 'inet'.
    assert_eq!(
        command(&json!({"execute": "migrate", "arguments": {"channels": [{
            "channel-type": "main",
            "addr": {"transport": "socket", "type": "inet", "path": "/tmp/x"}}]}})),
        [
            err(
                Rule::UnknownMember,
                "arguments.channels[0].addr",
                "a member of object MigrationAddress (transport 'socket', type 'inet')",
                "member 'path'"
            ),
            err(
                Rule::MissingMember,
                "arguments.channels[0].addr",
                "member 'host' (str)",
                "nothing"
            ),
            err(
                Rule::MissingMember,
                "arguments.channels[0].addr",
                "member 'port' (str)",
                "nothing"
            ),
        ]
    );
    assert_eq!(
        command(&json!({"execute": "blockdev-add", "arguments": {
            "driver": "raw", "node-name": "n", "file": "f", "filename": "/x"}})),
        [err(
            Rule::UnknownMember,
            "arguments",
            "a member of object BlockdevOptions (driver 'raw')",
            "member 'filename'"
        )]
    );
}

#[test]
fn alternates() {
    assert_eq!(
        command(&json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "n", "file": 12}})),
        [err(
            Rule::NoAlternateMatch,
            "arguments.file",
            "alternate BlockdevRef (one of: object BlockdevOptions, str)",
            "a number 12"
        )]
    );
    // The object branch chosen, then checked.
    assert_eq!(
        command(&json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "n", "file": {"filename": "/x"}}})),
        [err(
            Rule::MissingMember,
            "arguments.file",
            "member 'driver' (enum BlockdevDriver)",
            "nothing"
        )]
    );
    // BlockdevRefOrNull also takes null; the string branch is a plain str.
    assert_eq!(
        command(&json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "n", "file": "f", "backing": [1]}})),
        [err(
            Rule::NoAlternateMatch,
            "arguments.backing",
            "alternate BlockdevRefOrNull (one of: object BlockdevOptions, str, null)",
            "an array of 1 element"
        )]
    );
}

// --- features --------------------------------------------------------------------------------

#[test]
fn deprecated_and_unstable_use() {
    let msgs = [
        json!({"execute": "drive-backup",
               "arguments": {"device": "d", "sync": "full", "target": "t"}}),
        json!({"execute": "block-commit", "arguments": {"device": "d", "base": "b", "top": "t"}}),
        json!({"execute": "chardev-add",
               "arguments": {"id": "c", "backend": {"type": "memory", "data": {}}}}),
        json!({"execute": "blockdev-add", "arguments": {
            "driver": "nbd", "node-name": "n", "x-dirty-bitmap": "b",
            "server": {"type": "unix", "path": "/tmp/nbd"}}}),
        json!({"execute": "x-debug-query-block-graph"}),
    ];
    let expected = |sev: fn(Rule, &str, &str, &str) -> Finding,
                    usev: fn(Rule, &str, &str, &str) -> Finding| {
        [
            vec![sev(
                Rule::Deprecated,
                "execute",
                "no deprecated use",
                "command 'drive-backup' (deprecated)",
            )],
            vec![
                sev(
                    Rule::Deprecated,
                    "arguments.base",
                    "no deprecated use",
                    "member 'base' (deprecated)",
                ),
                sev(
                    Rule::Deprecated,
                    "arguments.top",
                    "no deprecated use",
                    "member 'top' (deprecated)",
                ),
            ],
            vec![sev(
                Rule::Deprecated,
                "arguments.backend.type",
                "no deprecated use",
                "value 'memory' (deprecated)",
            )],
            vec![usev(
                Rule::Unstable,
                "arguments.x-dirty-bitmap",
                "no unstable use",
                "member 'x-dirty-bitmap' (unstable)",
            )],
            vec![usev(
                Rule::Unstable,
                "execute",
                "no unstable use",
                "command 'x-debug-query-block-graph' (unstable)",
            )],
        ]
    };
    for (msg, want) in msgs.iter().zip(expected(warn, warn)) {
        assert_eq!(command(msg), want, "{msg}");
    }
    let policies = [
        (
            Policy {
                deny_deprecated: true,
                deny_unstable: false,
            },
            expected(err, warn),
        ),
        (
            Policy {
                deny_deprecated: false,
                deny_unstable: true,
            },
            expected(warn, err),
        ),
        (
            Policy {
                deny_deprecated: true,
                deny_unstable: true,
            },
            expected(err, err),
        ),
    ];
    for (policy, wants) in policies {
        let strict = Checker::new(schema(), policy);
        for (msg, want) in msgs.iter().zip(wants) {
            let mut out = Vec::new();
            strict.check_command(msg, &mut out);
            assert_eq!(out, want, "{msg} {policy:?}");
        }
    }
}

#[test]
fn findings_serialize_with_kebab_case_rules() {
    let f = command(&json!({"exec-oob": "query-status"}));
    let text = serde_json::to_string(&f).unwrap();
    assert_eq!(
        text,
        r#"[{"rule":"oob-not-allowed","severity":"error","path":"exec-oob","expected":"a command allowed out-of-band","found":"command 'query-status'"}]"#
    );
    let back: Vec<Finding> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, f);
    assert_eq!(
        f[0].to_string(),
        "error[oob-not-allowed] exec-oob: expected a command allowed out-of-band, found command \
         'query-status'"
    );
}

// --- the real captures -----------------------------------------------------------------------

/// QEMU 7.2 traffic (the bundled captures) against 9.1: what differs between the releases.
#[test]
fn seven_two_replies_against_nine_one() {
    // query-status lost 'singlestep' in 9.0; MigrationStats lost 'skipped' in 9.1.
    assert_eq!(
        reply(
            "query-status",
            &json!({"return": {"status": "running", "singlestep": false, "running": true}})
        ),
        [err(
            Rule::UnknownMember,
            "return",
            "a member of object StatusInfo",
            "member 'singlestep'"
        )]
    );
}

#[test]
fn unknown_type_name() {
    assert_eq!(
        value("NoSuchType", &json!(1)),
        [err(
            Rule::SchemaError,
            "",
            "type 'NoSuchType' (not in the schema)",
            "a number 1"
        )]
    );
    // Commands are not types.
    assert_eq!(
        value("query-status", &json!({})),
        [err(
            Rule::SchemaError,
            "",
            "a type, not command query-status",
            "an object with 0 members"
        )]
    );
}
