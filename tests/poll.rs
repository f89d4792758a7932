//! The proxy polling on its own (`qmptap record --poll`) against real QEMU: the client sees
//! exactly what it would see without polling, the capture holds the polls, marked as the
//! proxy's, paired with their replies.

use std::io::Read as _;
use std::time::{Duration, Instant};

use qmptap::addr::Addr;
use qmptap::capture::{Dir, Located, Msg, Origin, Record};
use qmptap::session::{Role, Session};
use qmptap::wire::Kind;
use serde_json::{Value, json};

use crate::util::{
    Client, MigrationPair, Proxy, Qemu, TempDir, assert_capture_matches, msgs, proxy_msgs,
};

/// The proxy's commands and replies of connection 1, checked: commands carry the proxy's
/// ids, each is answered by the next proxy reply with the same id, and none is sent before the
/// previous one was answered. Returns (command time, reply) pairs.
fn polls(records: &[Located], command: &str) -> Vec<(Msg, Value)> {
    let mine = proxy_msgs(records, 1);
    let mut out: Vec<(Msg, Value)> = Vec::new();
    let mut awaiting: Option<Msg> = None;
    for m in mine {
        match m.dir {
            Dir::C2s => {
                assert!(
                    awaiting.is_none(),
                    "a poll sent before the last was answered"
                );
                assert_eq!(m.kind, Kind::Command);
                assert_eq!(m.name.as_deref(), Some(command));
                let v = m.value().unwrap();
                assert_eq!(v["id"]["qmptap-poll"].as_u64(), Some(out.len() as u64 + 1));
                awaiting = Some(m);
            }
            Dir::S2c => {
                let request = awaiting.take().expect("a proxy reply without a poll");
                let v = m.value().unwrap();
                assert_eq!(v["id"], request.value().unwrap()["id"], "{v}");
                assert!(v.get("return").is_some(), "{v}");
                out.push((request, v));
            }
        }
    }
    out
}

/// Every reply of the proxy pairs with the proxy's command in the session model too.
fn assert_pairs_in_the_session(capture: &std::path::Path) {
    let session = Session::load(qmptap::capture::Reader::open(capture).unwrap()).unwrap();
    let conn = &session.connections[&1];
    assert!(conn.unpaired_replies.is_empty());
    for t in &conn.transactions {
        let request = &conn.messages[t.request];
        let reply = &conn.messages[t.reply.expect("every request was answered")];
        assert_eq!(request.origin, reply.origin, "{request:?} / {reply:?}");
    }
}

/// Reads whatever arrives within `wait` (nothing, for a client that sent nothing).
fn extra_bytes(c: &mut Client, wait: Duration) -> Vec<u8> {
    c.stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    let got = match c.stream.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Vec::new()
        }
        Err(e) => panic!("read: {e}"),
    };
    c.stream
        .set_read_timeout(Some(crate::util::TIMEOUT))
        .unwrap();
    got
}

fn end(mut c: Client) -> Client {
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    c
}

#[test]
fn an_idle_client_gets_nothing_while_the_capture_gets_polls_at_the_interval() {
    let dir = TempDir::new("poll-idle");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start_polling(&dir, qemu.addr(), Some("query-status@100ms"));
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    let before = c.received.len();
    assert_eq!(
        extra_bytes(&mut c, Duration::from_secs(1)),
        b"",
        "no extra bytes"
    );
    assert_eq!(c.received.len(), before);
    let c = end(c);
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let polls = polls(&records, "query-status");
    // About ten in one second at 100 ms; the machine is shared, so be lenient.
    assert!((5..=12).contains(&polls.len()), "{} polls", polls.len());
    for (_, reply) in &polls {
        assert_eq!(reply["return"]["status"], "running");
    }
    let gaps: Vec<i64> = polls
        .windows(2)
        .map(|w| w[1].0.t.micros_since(w[0].0.t) / 1000)
        .collect();
    let mut sorted = gaps.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!((80..=200).contains(&median), "gaps {gaps:?} ms");
    // The close record counts only what the client sent and received.
    let close = crate::util::close_of(&records, 1);
    assert_eq!(close.c2s_bytes, c.sent.len() as u64);
    assert_eq!(close.s2c_bytes, c.received.len() as u64);
    assert_pairs_in_the_session(&proxy_capture(&dir));
}

fn proxy_capture(dir: &TempDir) -> std::path::PathBuf {
    dir.path("capture.jsonl")
}

/// A client busy with its own commands, several in one write and one split over writes
/// (spanning poll ticks), gets exactly its own replies, byte for byte as directly.
#[test]
fn a_busy_pipelining_client_gets_exactly_its_own_replies() {
    let dir = TempDir::new("poll-busy");
    let qemu = Qemu::start(&dir);
    let session = |path: &std::path::Path| {
        let mut c = Client::connect(path);
        c.negotiate();
        let start = Instant::now();
        let mut round = 0;
        while start.elapsed() < Duration::from_millis(800) {
            round += 1;
            c.send(
                format!(
                    r#"{{"execute": "query-status", "id": {round}}} {{"execute": "query-name", "id": "n{round}"}}{{"execute": "query-kvm", "id": [{round}]}}"#
                )
                .as_bytes(),
            );
            for id in [json!(round), json!(format!("n{round}")), json!([round])] {
                let (reply, events) = c.reply();
                assert!(events.is_empty());
                assert_eq!(reply["id"], id, "{reply}");
            }
            if round % 20 == 0 {
                // One command over two writes, with a poll tick in between.
                c.send(br#"{"execute": "query-status","#);
                std::thread::sleep(Duration::from_millis(60));
                c.send(br#" "id": "split"}"#);
                assert_eq!(c.reply().0["id"], "split");
            }
        }
        (end(c), round)
    };
    let (direct, rounds) = session(&qemu.socket);
    let proxy = Proxy::start_polling(&dir, qemu.addr(), Some("query-migrate@20ms"));
    let (proxied, _) = session(&proxy.listen);
    let records = proxy.stop();
    // Same replies in the same order: the proxied session, cut to the direct one's rounds
    // (the two ran for the same time, not the same number of rounds).
    let frames = |c: &Client| crate::util::frames_of(&c.received);
    let n = frames(&direct).len().min(frames(&proxied).len());
    assert!(rounds > 20 && n > 60, "{rounds} rounds");
    let bytes = |c: &Client| {
        let f = frames(c);
        let last = &f[n - 1];
        c.received[..(last.offset + last.len) as usize].to_vec()
    };
    assert_eq!(
        String::from_utf8(bytes(&proxied)).unwrap(),
        String::from_utf8(bytes(&direct)).unwrap(),
        "the client receives what it receives directly"
    );
    assert!(!String::from_utf8_lossy(&proxied.received).contains("qmptap-poll"));
    assert_capture_matches(&records, 1, &proxied);
    let polls = polls(&records, "query-migrate");
    assert!(polls.len() >= 5, "{} polls", polls.len());
    // Some polls went out while the client's own commands awaited replies: the routing
    // really had to tell them apart.
    let mut tracker = qmptap::session::Tracker::new();
    let mut interleaved = 0;
    let mut client_pending = 0i64;
    for l in &records {
        let role = tracker.observe(&l.record);
        if let Record::Msg(m) = &l.record {
            match (m.dir, m.is_proxy(), &role) {
                (Dir::C2s, false, _) => client_pending += 1,
                (Dir::C2s, true, _) if client_pending > 0 => interleaved += 1,
                (
                    Dir::S2c,
                    _,
                    Role::Reply {
                        origin: Origin::Peer,
                        ..
                    },
                ) => client_pending -= 1,
                _ => {}
            }
        }
    }
    assert!(
        interleaved > 0,
        "no poll was sent amid the client's commands"
    );
    assert_pairs_in_the_session(&proxy_capture(&dir));
}

#[test]
fn nothing_is_polled_before_negotiation() {
    let dir = TempDir::new("poll-negotiation");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start_polling(&dir, qemu.addr(), Some("query-status@30ms"));
    let mut c = Client::connect(&proxy.listen);
    let greeting = c.next_value();
    assert!(greeting.get("QMP").is_some());
    std::thread::sleep(Duration::from_millis(200));
    let early = c.execute(r#"{"execute": "query-status", "id": 1}"#);
    assert_eq!(early["error"]["class"], "CommandNotFound");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        c.execute(r#"{"execute": "qmp_capabilities"}"#),
        json!({"return": {}})
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(extra_bytes(&mut c, Duration::from_millis(10)), b"");
    let c = end(c);
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let negotiated = msgs(&records, 1, Dir::S2c)
        .iter()
        .find(|m| m.kind == Kind::Return)
        .map(|m| m.seq)
        .unwrap();
    let polls = proxy_msgs(&records, 1);
    assert!(polls.len() >= 4, "polling starts after negotiation");
    assert!(
        polls.iter().all(|m| m.seq > negotiated),
        "a poll before negotiation: {polls:?}"
    );
}

/// A live migration between two real QEMUs, whose client only sends `migrate` and waits for
/// the `MIGRATION` event: the capture still holds its progress, sampled by the proxy.
#[test]
fn a_migration_is_sampled_by_the_proxy_to_completion() {
    let dir = TempDir::new("poll-migration");
    let pair = MigrationPair::start(&dir);
    let mig = pair.uri();
    let proxy = Proxy::start_polling(
        &dir,
        Addr::Unix(pair.src_socket.clone()),
        Some("query-migrate@100ms"),
    );
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    let ok = json!({"return": {}});
    assert_eq!(
        c.execute(r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "events", "state": true}]}}"#),
        ok
    );
    // Slow enough for several samples while it runs.
    assert_eq!(
        c.execute(
            r#"{"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 1000000}}"#
        ),
        ok
    );
    assert_eq!(
        c.execute(&format!(
            r#"{{"execute": "migrate", "arguments": {{"uri": "{mig}"}}, "id": "m"}}"#
        )),
        json!({"return": {}, "id": "m"})
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("completed") {
        assert!(Instant::now() < deadline, "no completion: {statuses:?}");
        let event = c.next_value();
        // Nothing but events: no reply to a poll.
        let name = event["event"]
            .as_str()
            .unwrap_or_else(|| panic!("not an event: {event}"));
        if name == "MIGRATION" {
            statuses.push(event["data"]["status"].as_str().unwrap().to_owned());
        }
        assert_ne!(statuses.last().map(String::as_str), Some("failed"));
    }
    // Let the proxy take a sample after completion.
    assert_eq!(extra_bytes(&mut c, Duration::from_millis(400)), b"");
    let c = end(c);
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    assert!(!String::from_utf8_lossy(&c.received).contains("qmptap-poll"));
    let samples: Vec<String> = polls(&records, "query-migrate")
        .iter()
        .filter_map(|(_, r)| r["return"]["status"].as_str().map(str::to_owned))
        .collect();
    assert!(samples.len() >= 2, "{samples:?}");
    assert_eq!(
        samples.last().map(String::as_str),
        Some("completed"),
        "{samples:?}"
    );
    assert!(
        samples.iter().any(|s| s == "active"),
        "a sample while it ran: {samples:?}"
    );
    assert_pairs_in_the_session(&proxy_capture(&dir));
}

/// A capture with polls: `replay` sends only the client's messages and expects only their
/// replies, `serve` offers only the client's interactions, `diff` sees only the client, and
/// `check` validates the polls with the rest.
#[test]
fn replay_serve_diff_and_check_leave_the_polls_to_the_proxy() {
    let dir = TempDir::new("poll-consumers");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start_polling(&dir, qemu.addr(), Some("query-status,query-name@40ms"));
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    assert_eq!(
        c.execute(r#"{"execute": "query-status", "id": 1}"#)["return"]["status"],
        "running"
    );
    std::thread::sleep(Duration::from_millis(300));
    c.execute(r#"{"execute": "query-version", "id": 2}"#);
    end(c);
    let records = proxy.stop();
    let polled: Vec<Option<String>> = proxy_msgs(&records, 1)
        .into_iter()
        .filter(|m| m.dir == Dir::C2s)
        .map(|m| m.name)
        .collect();
    assert!(
        polled.iter().any(|n| n.as_deref() == Some("query-name")),
        "{polled:?}"
    );
    let capture = proxy_capture(&dir);
    let client_sent = msgs(&records, 1, Dir::C2s).len() as u64;
    assert_eq!(client_sent, 3);

    let options = qmptap::replay::client::Options {
        target: qemu.addr(),
        conns: Vec::new(),
        pace: qmptap::replay::Pace::Asap,
        timeout: Duration::from_secs(20),
        normalizer: qmptap::normalize::Normalizer::default(),
        rewrites: Vec::new(),
    };
    let report = qmptap::replay::client::replay(&capture, &options).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.connections[0].sent, client_sent);
    assert_eq!(
        report.connections[0].matched, 4,
        "greeting and three replies"
    );

    let script =
        qmptap::replay::server::Script::load(&capture, qmptap::normalize::Normalizer::default())
            .unwrap();
    let offered: Vec<&str> = script
        .interactions
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(
        offered,
        ["qmp_capabilities", "query-status", "query-version"]
    );

    // The same client session recorded without polling is the same session.
    let plain_dir = TempDir::new("poll-consumers-plain");
    let plain = Proxy::start(&plain_dir, qemu.addr());
    let mut p = Client::connect(&plain.listen);
    p.negotiate();
    p.execute(r#"{"execute": "query-status", "id": 1}"#);
    p.execute(r#"{"execute": "query-version", "id": 2}"#);
    end(p);
    plain.stop();
    let diff = qmptap::diff::diff(
        &capture,
        &plain_dir.path("capture.jsonl"),
        &qmptap::normalize::Normalizer::default(),
    )
    .unwrap();
    assert!(diff.is_same(), "{diff:#?}");

    let schema = qmptap::audit::schema_for(&capture, None).unwrap();
    let report =
        qmptap::audit::check_capture(&capture, &schema, qmptap::schema::check::Policy::default())
            .unwrap();
    let all = records
        .iter()
        .filter(|l| matches!(l.record, Record::Msg(_)))
        .count();
    assert_eq!(report.messages as usize, all, "every message is checked");
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}
