//! `replay::server`: the mock QMP server, run in-process on a temporary UNIX socket, against
//! a raw client that sends what the bundled captures recorded.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qmptap::addr::Addr;
use qmptap::capture::{Dir, Msg};
use qmptap::normalize::Normalizer;
use qmptap::proxy::{Listener, Shutdown};
use qmptap::replay::Pace;
use qmptap::replay::server::{self, OnMiss, Script, ServeOptions, ServeReport};
use qmptap::wire::Kind;
use serde_json::{Value, json};

use crate::util::{Client, TIMEOUT, TempDir, msgs, read_capture};

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures")
        .join(name)
}

/// `qmptap serve` run in-process on its own runtime.
struct Served {
    socket: PathBuf,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<ServeReport>>,
    _dir: TempDir,
}

impl Served {
    fn start(name: &str, opts: ServeOptions) -> Served {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = TempDir::new(&format!("serve-{}-{n}", name.replace('.', "-")));
        let socket = dir.path("serve.sock");
        let script = Arc::new(Script::load(&capture(name), Normalizer::default()).unwrap());
        let shutdown = Shutdown::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (addr, s) = (Addr::Unix(socket.clone()), shutdown.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = Listener::bind(&addr, 0o600).await.unwrap();
                ready_tx.send(()).unwrap();
                server::serve(listener, script, opts, s).await.unwrap()
            })
        });
        ready_rx.recv_timeout(TIMEOUT).expect("serve did not start");
        Served {
            socket,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Stops serving (clients must have gone) and returns the report.
    fn stop(mut self) -> ServeReport {
        self.shutdown.stop_accepting.cancel();
        self.thread.take().unwrap().join().expect("serve panicked")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.stop_accepting.cancel();
        self.shutdown.close_all.cancel();
    }
}

/// The name a server message is normalised under: its command's for a reply, its own for an
/// event.
fn normalized(m: &Value, command: Option<&str>) -> Value {
    let name = m.get("event").and_then(Value::as_str).or(command);
    Normalizer::default().normalized(name, m)
}

/// Sends what connection 1 of `name` sent, and checks that the mock answers with what the
/// capture recorded: greeting byte for byte, then every reply and event, in order, equal
/// after normalisation.
fn replay_connection_1(name: &str, opts: ServeOptions) {
    let records = read_capture(&capture(name));
    let c2s = msgs(&records, 1, Dir::C2s);
    let s2c = msgs(&records, 1, Dir::S2c);
    assert_eq!(s2c[0].kind, Kind::Greeting);
    let served = Served::start(name, opts);
    let mut client = served.client();
    let greeting = client.next_frame().unwrap();
    assert_eq!(
        greeting.bytes,
        s2c[0].json.as_ref().unwrap().get().as_bytes()
    );
    assert!(client.received.ends_with(b"\r\n"));
    let pipe = nix::unistd::pipe().unwrap();
    for (i, command) in c2s.iter().enumerate() {
        if command.fds > 0 {
            client.send_with_fd(&command.raw_bytes(), pipe.0.as_fd());
        } else {
            client.send(&command.raw_bytes());
        }
        let until = c2s.get(i + 1).map_or(u64::MAX, |next| next.seq);
        let expected: Vec<&Msg> = s2c
            .iter()
            .filter(|m| m.seq > command.seq && m.seq < until)
            .collect();
        for want in expected {
            let got = client.next_value();
            let want = want.value().unwrap();
            assert_eq!(
                normalized(&got, command.name.as_deref()),
                normalized(&want, command.name.as_deref()),
                "{name}: answer to line with seq {}",
                command.seq
            );
        }
    }
    drop(client);
    let report = served.stop();
    assert_eq!(report.misses, 0, "{report:?}");
    assert_eq!(report.connections, 1);
    // Every interaction of connection 1 was used; only other connections' are left.
    assert!(report.unused.iter().all(|u| u.conn != 1), "{report:?}");
}

#[test]
fn serves_migration_as_recorded() {
    replay_connection_1("migration.jsonl", ServeOptions::default());
}

#[test]
fn serves_block_mirror_as_recorded() {
    replay_connection_1("block-mirror.jsonl", ServeOptions::default());
}

#[test]
fn serves_errors_fds_oob_as_recorded_with_fds() {
    replay_connection_1("errors-fds-oob.jsonl", ServeOptions::default());
}

/// libvirt's own session (about 420 commands, `getfd` with its fd, a save by migration).
#[test]
fn serves_libvirt_save_as_recorded() {
    replay_connection_1("libvirt-save.jsonl", ServeOptions::default());
}

#[test]
fn paced_and_strict_replays_give_the_same_answers() {
    replay_connection_1(
        "migration.jsonl",
        ServeOptions {
            pace: Pace::Scaled(8.0),
            strict_order: true,
            ..ServeOptions::default()
        },
    );
}

#[test]
fn paced_replies_wait_for_their_recorded_delays() {
    // The first query-migrate after migrate is followed, 0.4 s later in the recording, by
    // nothing; the poll that sees MIGRATION_PASS 2 and STOP has events after its reply. With
    // pace x1 the whole session must take about the recorded time.
    let started = std::time::Instant::now();
    replay_connection_1(
        "migration.jsonl",
        ServeOptions {
            pace: Pace::Scaled(1.0),
            ..ServeOptions::default()
        },
    );
    assert!(started.elapsed() > std::time::Duration::from_millis(300));
}

#[test]
fn replies_carry_the_clients_ids() {
    let served = Served::start("migration.jsonl", ServeOptions::default());
    let mut c = served.client();
    c.next_value();
    c.send(br#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": [1, "x"]}"#);
    assert_eq!(c.next_value(), json!({"return": {}, "id": [1, "x"]}));
    // Recorded without an id; asked with one.
    c.send(br#"{"execute": "query-status", "id": {"n": 1}}"#);
    let r = c.next_value();
    assert_eq!(r["id"], json!({"n": 1}));
    assert_eq!(r["return"]["status"], "running");
    // Recorded with "__qmp#00003"; asked without.
    let migrate = msgs(&read_capture(&capture("migration.jsonl")), 1, Dir::C2s)
        .into_iter()
        .find(|m| m.name.as_deref() == Some("migrate"))
        .unwrap();
    let mut command = migrate.value().unwrap();
    command.as_object_mut().unwrap().remove("id");
    c.send(command.to_string().as_bytes());
    let (reply, events) = c.reply();
    assert_eq!(reply, json!({"return": {}}));
    assert!(!events.is_empty());
    // Numbers are echoed as QEMU re-formats them.
    c.send(br#"{"execute": "query-migrate", "id": 7}"#);
    let raw = std::iter::from_fn(|| c.next_frame())
        .find(|f| f.bytes.starts_with(br#"{"return""#))
        .unwrap();
    assert!(
        raw.bytes.ends_with(br#", "id": 7}"#),
        "{}",
        String::from_utf8_lossy(&raw.bytes)
    );
}

#[test]
fn events_keep_their_recorded_order_around_the_reply() {
    let served = Served::start("migration.jsonl", ServeOptions::default());
    let mut c = served.client();
    c.negotiate();
    let records = read_capture(&capture("migration.jsonl"));
    let migrate = msgs(&records, 1, Dir::C2s)
        .into_iter()
        .find(|m| m.name.as_deref() == Some("migrate"))
        .unwrap();
    c.send(&migrate.raw_bytes());
    let (reply, before) = c.reply();
    assert_eq!(reply["id"], "__qmp#00003");
    let names: Vec<&str> = before
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let recorded: Vec<String> = msgs(&records, 1, Dir::S2c)
        .iter()
        .skip_while(|m| m.seq < migrate.seq)
        .take_while(|m| m.kind != Kind::Return)
        .filter_map(|m| m.name.clone())
        .collect();
    assert_eq!(names, recorded);
    // Timestamps are the mock's own (now), not the recorded ones.
    let seconds = before[0]["timestamp"]["seconds"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(seconds.abs_diff(now) < 60, "{seconds} vs {now}");
}

#[test]
fn unmatched_commands_name_the_nearest_recorded_one() {
    let served = Served::start("errors-fds-oob.jsonl", ServeOptions::default());
    let mut c = served.client();
    c.negotiate();
    let r = c.execute(r#"{"execute": "device_del", "arguments": {"id": "other"}, "id": 5}"#);
    assert_eq!(
        r,
        json!({"id": 5, "error": {"class": "GenericError", "desc": "qmptap serve: no recorded reply for 'device_del' with these arguments; nearest recorded: device_del {\"id\":\"no-such-device\"}"}})
    );
    let r = c.execute(r#"{"execute": "query-nam"}"#);
    assert_eq!(
        r["error"]["desc"],
        "qmptap serve: no recorded reply for 'query-nam' with these arguments; nearest recorded: query-name {}"
    );
    drop(c);
    let report = served.stop();
    assert_eq!(report.misses, 2);
    assert_eq!(report.missed[0].command, "device_del");
}

#[test]
fn negotiation_and_parse_errors_follow_qemu() {
    let served = Served::start("errors-fds-oob.jsonl", ServeOptions::default());
    let mut c = served.client();
    c.next_value();
    let expecting = json!({"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}});
    assert_eq!(c.execute(r#"{"execute": "query-status"}"#), expecting);
    // stop has a STOP event recorded with it: none may be sent before negotiation.
    c.send(br#"{"execute": "stop"}"#);
    assert_eq!(c.next_value(), expecting);
    assert_eq!(
        c.execute(r#"{"execute": "qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert_eq!(
        c.execute(r#"{"execute": "qmp_capabilities", "id": "again"}"#),
        json!({"id": "again", "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}})
    );
    // oob was not enabled on this connection.
    assert_eq!(
        c.execute(r#"{"exec-oob": "query-yank", "id": "oob-off"}"#),
        json!({"id": "oob-off", "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}})
    );
    let generic = |desc: &str| json!({"error": {"class": "GenericError", "desc": desc}});
    c.send(b"GARBAGE\n");
    assert_eq!(c.next_value(), generic("JSON parse error, stray 'G'"));
    assert_eq!(
        c.execute("[1, 2]"),
        generic("QMP input must be a JSON object")
    );
    assert_eq!(
        c.execute(r#"{"execute": nul}"#),
        generic("JSON parse error, invalid keyword 'nul'")
    );
    assert_eq!(
        c.execute(r#"{"a": 1, "a": 2}"#),
        generic("JSON parse error, duplicate key")
    );
    assert_eq!(
        c.execute(r#"{"execute": "x" "id": 1}"#),
        generic("JSON parse error, expected separator in dict")
    );
    assert_eq!(c.execute("{}"), generic("QMP input lacks member 'execute'"));
    assert_eq!(
        c.execute(r#"{"execute": "query-status", "arguments": [], "id": 1}"#),
        json!({"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}})
    );
    // A single-quoted command (QEMU's dialect) is answered from the recording.
    assert_eq!(
        c.execute("{'execute': 'query-name', 'id': 42}"),
        json!({"return": {}, "id": 42})
    );
}

#[test]
fn strict_order_demands_the_recorded_order() {
    let served = Served::start(
        "migration.jsonl",
        ServeOptions {
            strict_order: true,
            ..ServeOptions::default()
        },
    );
    let mut c = served.client();
    c.next_value();
    c.execute(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#);
    // The recording's next command is query-status, not query-migrate.
    let r = c.execute(r#"{"execute": "query-migrate"}"#);
    let desc = r["error"]["desc"].as_str().unwrap();
    assert!(
        desc.contains("at this point of the recorded order; nearest recorded: query-migrate"),
        "{desc}"
    );
    let r = c.execute(r#"{"execute": "query-status"}"#);
    assert_eq!(r["return"]["status"], "running");
    drop(c);
    let report = served.stop();
    assert_eq!((report.answered, report.misses), (2, 1));
}

#[test]
fn unused_interactions_are_reported_with_their_lines() {
    let served = Served::start("errors-fds-oob.jsonl", ServeOptions::default());
    let mut c = served.client();
    c.negotiate();
    c.execute(r#"{"execute": "query-name", "id": "a"}"#);
    drop(c);
    let report = served.stop();
    let records = read_capture(&capture("errors-fds-oob.jsonl"));
    let commands = records
        .iter()
        .filter(|l| matches!(&l.record, qmptap::capture::Record::Msg(m) if m.kind == Kind::Command))
        .count() as u64;
    assert_eq!(report.recorded, commands);
    // qmp_capabilities without arguments (recorded on conn 2) and one query-name were used;
    // conn 1's qmp_capabilities enabled oob, so it is not the same command.
    assert_eq!(report.unused.len() as u64, commands - 2);
    let first = &report.unused[0];
    assert_eq!(
        (first.line, first.conn, first.seq, first.command.as_str()),
        (4, 1, 1, "qmp_capabilities")
    );
    assert!(
        report
            .unused
            .iter()
            .any(|u| u.conn == 2 && u.command == "query-name")
    );
}

#[test]
fn on_miss_close_closes_the_connection() {
    let served = Served::start(
        "migration.jsonl",
        ServeOptions {
            on_miss: OnMiss::Close,
            ..ServeOptions::default()
        },
    );
    let mut c = served.client();
    c.negotiate();
    c.send(br#"{"execute": "no-such-command"}"#);
    assert!(c.next_frame().is_none(), "the connection should be closed");
}

#[test]
fn reuse_answers_repeats_and_connections_share_the_pool() {
    let served = Served::start(
        "migration.jsonl",
        ServeOptions {
            reuse: true,
            ..ServeOptions::default()
        },
    );
    let mut a = served.client();
    a.negotiate();
    let mut b = served.client();
    b.negotiate();
    // Two recorded query-status: the first goes to a, the second to b, then b repeats.
    assert_eq!(
        a.execute(r#"{"execute": "query-status"}"#)["return"]["status"],
        "running"
    );
    assert_eq!(
        b.execute(r#"{"execute": "query-status"}"#)["return"]["status"],
        "postmigrate"
    );
    assert_eq!(
        b.execute(r#"{"execute": "query-status"}"#)["return"]["status"],
        "postmigrate"
    );
    drop((a, b));
    let report = served.stop();
    assert_eq!(
        (
            report.connections,
            report.answered,
            report.reused,
            report.misses
        ),
        (2, 3, 1, 0)
    );
}

/// `qmptap replay` against `qmptap serve` of the same capture: every connection, every reply
/// and event matches, and the mock used every recorded interaction.
#[test]
fn replay_against_serve_of_the_same_capture_matches_everything() {
    use qmptap::replay::client::{Options, replay};
    for name in [
        "migration.jsonl",
        "block-mirror.jsonl",
        "errors-fds-oob.jsonl",
    ] {
        let served = Served::start(name, ServeOptions::default());
        let options = Options {
            target: Addr::Unix(served.socket.clone()),
            conns: Vec::new(),
            pace: Pace::Asap,
            timeout: std::time::Duration::from_secs(10),
            normalizer: Normalizer::default(),
            rewrites: Vec::new(),
        };
        let report = replay(&capture(name), &options).unwrap();
        assert!(report.is_clean(), "{name}: {report:#?}");
        assert!(
            report.connections.iter().all(|c| c.explained.is_empty()),
            "{name}: {report:#?}"
        );
        let served = served.stop();
        assert_eq!(
            (served.misses, served.unused.len()),
            (0, 0),
            "{name}: {served:?}"
        );
    }
}

/// QEMU answers garbage at the offending byte, while it goes on skipping what follows; a
/// client that sends nothing more still gets its error, once.
#[test]
fn a_lexical_error_is_answered_at_once_and_once() {
    let served = Served::start("errors-fds-oob.jsonl", ServeOptions::default());
    let mut c = served.client();
    c.negotiate();
    c.send(b"GARBAGE");
    let (err, _) = c.reply();
    assert_eq!(err["error"]["desc"], "JSON parse error, stray 'G'");
    // The end of recovery completes the same frame: no second answer for it.
    c.send(b"\n{\"execute\": \"query-name\", \"id\": \"after\"}");
    let (next, _) = c.reply();
    assert_eq!(next["id"], "after", "{next}");
}
