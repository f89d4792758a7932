//! The analysis models and tables on the real captures, checked against what the capture's
//! own raw lines say (read here with plain `serde_json`, independently of the models).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polars::prelude::*;
use qmptap::addr::Addr;
use qmptap::analyse::tables::{Format, Table, write};
use qmptap::analyse::{Analyser, Options, event_time};
use qmptap::capture::Reader;
use serde_json::Value;

use crate::util::{Client, MigrationPair, Proxy, TempDir};

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures")
        .join(name)
}

fn analyse(name: &str) -> Analyser {
    let mut a = Analyser::new(&Options {
        keep_rows: true,
        ..Options::default()
    });
    for located in Reader::open(&capture(name)).unwrap() {
        let located = located.unwrap();
        a.observe(located.line, &located.record);
    }
    a
}

/// The capture's messages as plain JSON lines.
fn raw_msgs(name: &str) -> Vec<Value> {
    std::fs::read_to_string(capture(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == "msg")
        .collect()
}

/// Rows whose string column `name` is `value`.
fn count(df: &DataFrame, name: &str, value: &str) -> usize {
    let column = df.column(name).unwrap().str().unwrap();
    (0..column.len())
        .filter(|&i| column.get(i) == Some(value))
        .count()
}

#[test]
fn migration_summary_equals_qemus_final_query_migrate_and_pass_events() {
    let a = analyse("migration.jsonl");
    let runs = a.migration.runs();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    let msgs = raw_msgs("migration.jsonl");

    // QEMU's own final figures: the last query-migrate reply.
    let last = msgs
        .iter()
        .rfind(|m| m["dir"] == "s2c" && m["json"]["return"]["ram"].is_object())
        .unwrap();
    let ret = &last["json"]["return"];
    assert_eq!(ret["status"], "completed");
    let fin = run.final_sample().unwrap();
    assert_eq!(fin.setup_time_ms, ret["setup-time"].as_u64());
    assert_eq!(fin.downtime_ms, ret["downtime"].as_u64());
    assert_eq!(fin.total_time_ms, ret["total-time"].as_u64());
    assert_eq!(fin.transferred, ret["ram"]["transferred"].as_u64());
    assert_eq!(fin.remaining, Some(0));
    assert_eq!(fin.total, ret["ram"]["total"].as_u64());
    assert_eq!(fin.mbps, ret["ram"]["mbps"].as_f64());

    // Pass count = the MIGRATION_PASS events.
    let passes: Vec<u64> = msgs
        .iter()
        .filter(|m| m["name"] == "MIGRATION_PASS")
        .map(|m| m["json"]["data"]["pass"].as_u64().unwrap())
        .collect();
    assert_eq!(run.pass_count(), passes.len() as u64);
    assert_eq!(run.pass_count(), *passes.iter().max().unwrap());

    // Statuses: the MIGRATION events, in order, at their timestamps.
    let events: Vec<(String, String)> = msgs
        .iter()
        .filter(|m| m["name"] == "MIGRATION")
        .map(|m| {
            let at = event_time(&m["json"]).unwrap().to_string();
            (m["json"]["data"]["status"].as_str().unwrap().to_owned(), at)
        })
        .collect();
    let got: Vec<(String, String)> = run
        .transitions
        .iter()
        .map(|t| (t.status.clone(), t.at.to_string()))
        .collect();
    assert_eq!(got, events);
    assert_eq!(
        run.samples.len(),
        msgs.iter()
            .filter(|m| m["dir"] == "s2c" && m["json"]["return"]["ram"].is_object())
            .count()
    );
    assert!(run.saw_events);
    assert_eq!(run.events_capability, Some(true));
    assert!(run.warnings().is_empty(), "{:?}", run.warnings());
}

#[test]
fn block_job_time_per_state_equals_the_event_timestamps() {
    let a = analyse("block-mirror.jsonl");
    let jobs = a.jobs.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.id, "mirror0");
    assert_eq!(job.job_type.as_deref(), Some("mirror"));
    assert_eq!(
        job.started_by.as_ref().map(|s| s.0.as_str()),
        Some("blockdev-mirror")
    );
    assert!(job.illegal.is_empty(), "{:?}", job.illegal);
    assert_eq!(job.outcome(), qmptap::analyse::jobs::Outcome::Completed);

    // Independently: each JOB_STATUS_CHANGE's timestamp minus the previous one's.
    let changes: Vec<(String, i64)> = raw_msgs("block-mirror.jsonl")
        .iter()
        .filter(|m| m["name"] == "JOB_STATUS_CHANGE")
        .map(|m| {
            let ts = &m["json"]["timestamp"];
            (
                m["json"]["data"]["status"].as_str().unwrap().to_owned(),
                ts["seconds"].as_i64().unwrap() * 1_000_000 + ts["microseconds"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = changes
        .iter()
        .enumerate()
        .map(|(i, (status, at))| {
            let next = changes.get(i + 1).map_or(*at, |n| n.1);
            (status.clone(), next - at)
        })
        .collect();
    assert_eq!(job.time_in_states(a.end().unwrap()), expected);
    assert_eq!(
        expected.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            "created",
            "running",
            "ready",
            "waiting",
            "pending",
            "concluded",
            "null"
        ]
    );

    // Progress: one sample per query-jobs entry, ending at the total.
    let entries: usize = raw_msgs("block-mirror.jsonl")
        .iter()
        .filter_map(|m| m["json"]["return"].as_array().map(Vec::len))
        .sum();
    assert_eq!(job.progress.len(), entries);
    assert_eq!(job.fraction(), Some(1.0));
}

#[test]
fn tables_have_a_row_per_thing_and_export_round_trips_through_parquet() {
    let a = analyse("errors-fds-oob.jsonl");
    let msgs = raw_msgs("errors-fds-oob.jsonl");
    let commands = msgs.iter().filter(|m| m["dir"] == "c2s").count();
    let errors = msgs.iter().filter(|m| m["kind"] == "error").count();

    let tx = a.table(Table::Transactions).unwrap();
    // Every client frame gets a reply except one cut short by the end of its connection.
    let truncated = msgs.iter().filter(|m| m["frame"] == "truncated").count();
    assert_eq!(tx.height(), commands - truncated);
    assert_eq!(count(&tx, "outcome", "error"), errors);

    let mut events = a.table(Table::Events).unwrap();
    assert_eq!(
        events.height(),
        msgs.iter().filter(|m| m["kind"] == "event").count()
    );

    let mut buf = Vec::new();
    write(&mut events, Format::Parquet, &mut buf).unwrap();
    let back = ParquetReader::new(std::io::Cursor::new(buf))
        .finish()
        .unwrap();
    assert!(back.equals_missing(&events));

    let mut csv = Vec::new();
    write(&mut events, Format::Csv, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("line,conn,name,time,relayed,data"), "{csv}");

    let mut json = Vec::new();
    let mut tx = tx;
    write(&mut tx, Format::Ndjson, &mut json).unwrap();
    let first: Value =
        serde_json::from_str(String::from_utf8(json).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["command"], "qmp_capabilities");
    assert_eq!(first["outcome"], "ok");

    for table in Table::ALL {
        a.table(table).unwrap();
    }
}

#[test]
fn jobs_and_migration_tables_hold_the_timelines() {
    let a = analyse("block-mirror.jsonl");
    let jobs = a.table(Table::Jobs).unwrap();
    assert_eq!(count(&jobs, "record", "state"), 7);
    assert_eq!(
        count(&jobs, "record", "progress"),
        a.jobs.jobs()[0].progress.len()
    );
    let m = analyse("migration.jsonl");
    let mig = m.table(Table::Migration).unwrap();
    assert_eq!(count(&mig, "record", "pass"), 3);
    assert_eq!(
        count(&mig, "status", "completed"),
        3,
        "the event and two polls"
    );
}

/// A migration whose destination is frozen (SIGSTOP) stops making progress: the model must
/// call it stalled while frozen, converging once thawed, and completed at the end. The client
/// polls and never turns the `events` capability on, so the statuses come from its polls and
/// the model says so.
#[test]
fn a_frozen_destination_is_a_stall_and_polls_stand_in_for_missing_events() {
    let dir = TempDir::new("analyse-stall");
    let pair = MigrationPair::start(&dir);
    let proxy = Proxy::start(&dir, Addr::Unix(pair.src_socket.clone()));
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    let ok = serde_json::json!({"return": {}});
    assert_eq!(
        c.execute(r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":400000}}"#),
        ok
    );
    let migrate = format!(
        r#"{{"execute":"migrate","arguments":{{"uri":"{}"}}}}"#,
        pair.uri()
    );
    assert_eq!(c.execute(&migrate), ok);
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pair.dst.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let mut poll = |n: usize| {
        let mut last = Value::Null;
        for _ in 0..n {
            std::thread::sleep(Duration::from_millis(100));
            last = c.execute(r#"{"execute":"query-migrate"}"#);
        }
        last
    };
    poll(3);
    signal("-STOP");
    // The socket buffers fill within a second; then nothing moves for the rest.
    poll(25);
    signal("-CONT");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = poll(1);
        if r["return"]["status"] == "completed" {
            break;
        }
        assert_ne!(r["return"]["status"], "failed", "{r}");
        assert!(std::time::Instant::now() < deadline, "never completed: {r}");
    }
    drop(c);
    let _ = proxy.stop();

    let a = {
        let mut a = Analyser::new(&Options::default());
        for located in Reader::open(&dir.path("capture.jsonl")).unwrap() {
            let located = located.unwrap();
            a.observe(located.line, &located.record);
        }
        a
    };
    let run = &a.migration.runs()[0];
    assert_eq!(run.status(), Some("completed"));
    assert!(!run.saw_events);
    let statuses: Vec<&str> = run.transitions.iter().map(|t| t.status.as_str()).collect();
    assert_eq!(statuses.first(), Some(&"active"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"completed"), "{statuses:?}");
    assert!(
        run.transitions
            .iter()
            .all(|t| t.source == qmptap::analyse::migration::Source::Poll)
    );
    // The freeze is one long stall. (Near the end remaining may hover too, as the last
    // passes find the guest's freshly dirtied pages: by the definition, also a stall.)
    let frozen = run
        .stalls
        .iter()
        .find(|s| s.polls >= 15)
        .unwrap_or_else(|| panic!("no stall over the freeze: {:?}", run.stalls));
    assert!(!frozen.ongoing);
    let warnings = run.warnings();
    assert!(warnings[0].contains("no MIGRATION events"), "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w.starts_with("stalled")),
        "{warnings:?}"
    );
    assert_eq!(
        run.convergence(),
        qmptap::analyse::migration::Convergence::Completed
    );
}
