#![allow(clippy::unwrap_used)] // a benchmark that cannot go on should panic
//! Throughput of the schema checker on real traffic: every command, reply and event of the
//! bundled captures (recorded from QEMU 7.2), checked against QEMU 9.1's schema, each message
//! parsed from its JSON text and then checked, as a live audit would do.
//!
//! Before measuring it prints the findings the 7.2 traffic gets against 9.1 and a plain
//! timing of at least a million messages on one thread.
//!
//! Input: `QMPTAP_CAPTURES`, a directory of `*.jsonl` captures (default: the bundled ones).
//! Also measured: loading the built-in schemas and compiling QEMU 9.1's QAPI sources.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{Criterion, Throughput, black_box, criterion_main};
use qmptap::schema::check::{Checker, Finding, Policy};
use qmptap::schema::qapi::load_dir_or_file;
use qmptap::schema::{Schema, builtin};
use serde_json::Value;

/// What to do with one message.
#[derive(Clone)]
enum Kind {
    Command,
    /// A reply, with the name of the command it answers (if it could be paired).
    Reply(Option<String>),
    Event,
}

struct Msg {
    kind: Kind,
    text: String,
}

fn env_path(var: &str, defaults: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    defaults
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(defaults[0]))
}

/// Reads the messages of every capture in `dir`, pairing each reply with its command: by `id`
/// when the reply has one, else the oldest command still waiting on that connection.
fn load_messages(dir: &Path) -> Vec<Msg> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut msgs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Commands waiting for a reply, per connection: (id, name).
        let mut waiting: HashMap<u64, VecDeque<(Option<Value>, String)>> = HashMap::new();
        for line in text.lines() {
            let rec: Value = serde_json::from_str(line).unwrap();
            if rec["type"] != "msg" {
                continue;
            }
            let conn = rec["conn"].as_u64().unwrap_or(0);
            let json = &rec["json"];
            let queue = waiting.entry(conn).or_default();
            let kind = match rec["kind"].as_str() {
                Some("command") => {
                    let name = rec["name"].as_str().unwrap_or_default().to_owned();
                    queue.push_back((json.get("id").cloned(), name));
                    Kind::Command
                }
                Some(k @ ("return" | "error")) => {
                    let name = match json.get("id") {
                        Some(id) => queue
                            .iter()
                            .position(|(i, _)| i.as_ref() == Some(id))
                            .and_then(|p| queue.remove(p))
                            .map(|(_, n)| n),
                        // An error without id may answer a message that was no command
                        // (a parse error); only pair it with a command that had no id either.
                        None if k == "error" && queue.front().is_some_and(|(i, _)| i.is_some()) => {
                            None
                        }
                        None => queue.pop_front().map(|(_, n)| n),
                    };
                    Kind::Reply(name)
                }
                Some("event") => Kind::Event,
                _ => continue,
            };
            msgs.push(Msg {
                kind,
                text: serde_json::to_string(json).unwrap(),
            });
        }
    }
    msgs
}

fn check(checker: &Checker<'_>, kind: &Kind, v: &Value, out: &mut Vec<Finding>) {
    match kind {
        Kind::Command => checker.check_command(v, out),
        Kind::Reply(Some(name)) => checker.check_return(name, v, out),
        Kind::Reply(None) => checker.check_error(v, out),
        Kind::Event => checker.check_event(v, out),
    }
}

/// Parses and checks every message once; returns the number of findings.
fn run(checker: &Checker<'_>, msgs: &[Msg], out: &mut Vec<Finding>) -> usize {
    let mut n = 0;
    for m in msgs {
        out.clear();
        if let Ok(v) = serde_json::from_str::<Value>(&m.text) {
            check(checker, &m.kind, &v, out);
        }
        n += out.len();
    }
    n
}

fn report(checker: &Checker<'_>, msgs: &[Msg]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for m in msgs {
        out.clear();
        let v: Value = serde_json::from_str(&m.text).unwrap();
        check(checker, &m.kind, &v, &mut out);
        for f in &out {
            let what = match &m.kind {
                Kind::Command => "command".to_owned(),
                Kind::Reply(Some(n)) => format!("reply to {n}"),
                Kind::Reply(None) => "error reply".to_owned(),
                Kind::Event => "event".to_owned(),
            };
            *seen.entry(format!("{what}: {f}")).or_default() += 1;
        }
    }
    eprintln!(
        "check: {} messages from the captures; findings against the 9.1 schema:",
        msgs.len()
    );
    for (f, n) in &seen {
        eprintln!("  {n:>3} x {f}");
    }
}

fn bench(c: &mut Criterion) {
    let captures = env_path(
        "QMPTAP_CAPTURES",
        &[concat!(env!("CARGO_MANIFEST_DIR"), "/captures")],
    );
    let schema: Schema = builtin::load("9.1").unwrap().schema;
    let checker = Checker::new(&schema, Policy::default());
    let msgs = load_messages(&captures);
    assert!(!msgs.is_empty(), "no messages in {}", captures.display());
    report(&checker, &msgs);

    // A plain timing on this thread: at least a million messages, parse included.
    let rounds = 1_000_000usize.div_ceil(msgs.len());
    let mut out = Vec::new();
    let start = Instant::now();
    let mut findings = 0;
    for _ in 0..rounds {
        findings += run(&checker, black_box(&msgs), &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    let total = rounds * msgs.len();
    eprintln!(
        "check: {total} messages (parse + check) in {secs:.3} s = {:.0} messages/s on one thread \
         ({findings} findings)",
        f64::from(u32::try_from(total).unwrap_or(u32::MAX)) / secs
    );

    let parsed: Vec<(Kind, Value)> = msgs
        .iter()
        .map(|m| (m.kind.clone(), serde_json::from_str(&m.text).unwrap()))
        .collect();
    let mut group = c.benchmark_group("check");
    group.throughput(Throughput::Elements(msgs.len() as u64));
    group.bench_function("parse+check", |b| {
        b.iter(|| run(&checker, black_box(&msgs), &mut out));
    });
    group.bench_function("check", |b| {
        b.iter(|| {
            let mut n = 0;
            for (kind, v) in black_box(&parsed) {
                out.clear();
                check(&checker, kind, v, &mut out);
                n += out.len();
            }
            n
        });
    });
    group.bench_function("parse", |b| {
        b.iter(|| {
            black_box(&msgs)
                .iter()
                .filter(|m| serde_json::from_str::<Value>(&m.text).is_ok())
                .count()
        });
    });
    group.finish();
    // Loading a schema: the built-in ones (parsed from the embedded data) and QEMU 9.1's QAPI
    // sources compiled from scratch.
    for version in builtin::VERSIONS {
        c.bench_function(&format!("load builtin:{version}"), |b| {
            b.iter(|| {
                builtin::load(black_box(version))
                    .unwrap()
                    .schema
                    .entities
                    .len()
            });
        });
    }
    let qapi = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/qapi-9.1");
    c.bench_function("compile qapi-9.1", |b| {
        b.iter(|| load_dir_or_file(black_box(&qapi)).unwrap().entities.len());
    });
    // Building the checker: once per schema, not per message.
    c.bench_function("checker-new", |b| {
        b.iter(|| {
            Checker::new(black_box(&schema), Policy::default())
                .schema()
                .entities
                .len()
        });
    });
}

#[allow(missing_docs)] // criterion generates the entry points
mod entry {
    use super::bench;
    criterion::criterion_group!(benches, bench);
}
use entry::benches;
criterion_main!(benches);
