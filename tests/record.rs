//! The recording proxy against a real QEMU: every test reads its capture back and checks it
//! message for message against what its client sent and received.

use std::os::fd::AsFd;
use std::time::Duration;

use qmptap::capture::{Dir, FrameError, Record, Side};
use qmptap::wire::Kind;
use serde_json::json;

use crate::util::{
    Client, Proxy, Qemu, TempDir, assert_capture_matches, close_of, frames_of, msgs,
};

fn kinds(records: &[qmptap::capture::Located], conn: u64, dir: Dir) -> Vec<(Kind, Option<String>)> {
    msgs(records, conn, dir)
        .into_iter()
        .map(|m| (m.kind, m.name))
        .collect()
}

#[test]
fn negotiation_commands_errors_and_events() {
    let dir = TempDir::new("basic");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    let greeting = c.next_value();
    assert!(greeting["QMP"]["version"]["qemu"]["major"].is_u64());
    // Before negotiation only qmp_capabilities runs.
    let early = c.execute(r#"{"execute": "query-status", "id": 1}"#);
    assert_eq!(early["error"]["class"], "CommandNotFound");
    assert_eq!(
        c.execute(r#"{"execute": "qmp_capabilities"}"#),
        json!({"return": {}})
    );
    let status = c.execute(r#"{"execute": "query-status", "id": {"nested": [1, "x"]}}"#);
    assert_eq!(status["id"], json!({"nested": [1, "x"]}));
    let unknown = c.execute(r#"{"execute": "no-such-command", "id": null}"#);
    assert_eq!(unknown["error"]["class"], "CommandNotFound");
    let bad = c.execute(r#"{"execute": "query-status", "arguments": {"bogus": 1}}"#);
    assert_eq!(bad["error"]["class"], "GenericError");
    c.send(br#"{"execute": "stop"}"#);
    let (r, mut events) = c.reply();
    assert_eq!(r, json!({"return": {}}));
    c.send(br#"{"execute": "cont"}"#);
    let (r, more) = c.reply();
    assert_eq!(r, json!({"return": {}}));
    events.extend(more);
    // Events may trail the reply: wait for both.
    while events.len() < 2 {
        events.push(c.next_value());
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["STOP", "RESUME"]);
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    assert!(
        c.next_frame().is_none(),
        "QEMU closes after the client's EOF"
    );
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let s2c = kinds(&records, 1, Dir::S2c);
    assert_eq!(s2c[0].0, Kind::Greeting);
    assert_eq!(s2c.iter().filter(|(k, _)| *k == Kind::Error).count(), 3);
    let events: Vec<_> = s2c
        .iter()
        .filter(|(k, _)| *k == Kind::Event)
        .map(|(_, n)| n.clone().unwrap())
        .collect();
    assert_eq!(events, ["STOP", "RESUME"]);
    let c2s = kinds(&records, 1, Dir::C2s);
    assert!(c2s.iter().all(|(k, _)| *k == Kind::Command));
    assert_eq!(c2s[1].1.as_deref(), Some("qmp_capabilities"));
    let close = close_of(&records, 1);
    assert_eq!((close.by, close.reason.as_str()), (Side::Client, "eof"));
    assert_eq!(close.c2s_bytes, c.sent.len() as u64);
    assert_eq!(close.s2c_bytes, c.received.len() as u64);
    // The open record carries the client's credentials: this very process.
    let Record::Open(open) = &records[0].record else {
        panic!("first record is {:?}", records[0].record)
    };
    assert_eq!(open.peer.pid, Some(std::process::id() as i32));
    assert_eq!(open.peer.uid, Some(unsafe_free_uid()));
}

#[test]
fn pretty_monitor_is_framed_by_json_not_lines() {
    let dir = TempDir::new("pretty");
    let socket = dir.path("qmp.sock");
    let chardev = format!(
        "socket,id=mon0,path={},server=on,wait=off",
        socket.display()
    );
    let qemu = Qemu::start_with(
        &socket,
        &[
            "-chardev",
            &chardev,
            "-mon",
            "chardev=mon0,mode=control,pretty=on",
        ],
    );
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    let status = c.execute(r#"{"execute": "query-status"}"#);
    assert_eq!(status["return"]["status"], "running");
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let replies = msgs(&records, 1, Dir::S2c);
    let last = replies.last().unwrap();
    assert!(
        last.raw_bytes().windows(2).filter(|w| w == b"\r\n").count() >= 3,
        "a pretty reply spans lines"
    );
    assert_eq!(last.value().unwrap()["return"]["status"], "running");
    assert!(
        last.text.is_some(),
        "the exact multi-line text is kept beside the compact JSON"
    );
}

/// qemu.qmp sends the fd on one whitespace byte before the command; libvirt attaches it to the
/// command's own write. Both must reach QEMU with the bytes they came with.
#[test]
fn getfd_and_add_fd_through_the_proxy_in_both_styles() {
    let dir = TempDir::new("fds");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    let (r, _w) = nix::unistd::pipe().unwrap();
    // The qemu.qmp way.
    c.send_with_fd(b" ", r.as_fd());
    assert_eq!(
        c.execute(r#"{"execute": "getfd", "arguments": {"fdname": "a"}}"#),
        json!({"return": {}})
    );
    // The libvirt way.
    c.send_with_fd(
        br#"{"execute": "getfd", "arguments": {"fdname": "b"}, "id": "libvirt-7"}"#,
        r.as_fd(),
    );
    assert_eq!(c.reply().0, json!({"return": {}, "id": "libvirt-7"}));
    c.send_with_fd(
        br#"{"execute": "add-fd", "arguments": {"fdset-id": 3}}"#,
        r.as_fd(),
    );
    let added = c.reply().0;
    assert_eq!(added["return"]["fdset-id"], 3, "{added}");
    // The fds really arrived: closing them by name works, and a getfd without one fails.
    assert_eq!(
        c.execute(r#"{"execute": "closefd", "arguments": {"fdname": "a"}}"#),
        json!({"return": {}})
    );
    assert_eq!(
        c.execute(r#"{"execute": "closefd", "arguments": {"fdname": "b"}}"#),
        json!({"return": {}})
    );
    let without = c.execute(r#"{"execute": "getfd", "arguments": {"fdname": "c"}}"#);
    assert_eq!(
        without["error"]["desc"],
        "No file descriptor supplied via SCM_RIGHTS"
    );
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let fds: Vec<(Option<String>, u32)> = msgs(&records, 1, Dir::C2s)
        .into_iter()
        .map(|m| (m.name, m.fds))
        .collect();
    assert_eq!(
        fds,
        [
            (Some("qmp_capabilities".into()), 0),
            (Some("getfd".into()), 1),
            (Some("getfd".into()), 1),
            (Some("add-fd".into()), 1),
            (Some("closefd".into()), 0),
            (Some("closefd".into()), 0),
            (Some("getfd".into()), 0),
        ]
    );
}

/// QEMU's socket monitor serves one client at a time: a second client waits in the backlog
/// until the first leaves. Both are recorded, with distinct connection ids.
#[test]
fn concurrent_clients_get_distinct_connections() {
    let dir = TempDir::new("concurrent");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut a = Client::connect(&proxy.listen);
    a.negotiate();
    let mut b = Client::connect(&proxy.listen);
    let waiter = std::thread::spawn(move || {
        b.negotiate();
        let r = b.execute(r#"{"execute": "query-name", "id": "b"}"#);
        assert_eq!(r["id"], "b");
        drop(b.stream.shutdown(std::net::Shutdown::Write));
        while b.next_frame().is_some() {}
        b
    });
    std::thread::sleep(Duration::from_millis(200));
    let r = a.execute(r#"{"execute": "query-status", "id": "a"}"#);
    assert_eq!(r["id"], "a");
    drop(a.stream.shutdown(std::net::Shutdown::Write));
    while a.next_frame().is_some() {}
    let b = waiter.join().unwrap();
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &a);
    assert_capture_matches(&records, 2, &b);
    let opens = records
        .iter()
        .filter(|l| matches!(l.record, Record::Open(_)))
        .count();
    assert_eq!(opens, 2);
}

/// The largest ordinary reply (about 200 KB) crosses the proxy byte for byte.
#[test]
fn schema_reply_is_byte_identical_to_a_direct_session() {
    let dir = TempDir::new("schema");
    let qemu = Qemu::start(&dir);
    let session = |path: &std::path::Path| {
        let mut c = Client::connect(path);
        c.negotiate();
        let schema = c.execute(r#"{"execute": "query-qmp-schema", "id": 1}"#);
        assert!(schema["return"].as_array().is_some_and(|a| a.len() > 1000));
        drop(c.stream.shutdown(std::net::Shutdown::Write));
        while c.next_frame().is_some() {}
        c
    };
    let direct = session(&qemu.socket);
    let proxy = Proxy::start(&dir, qemu.addr());
    let proxied = session(&proxy.listen);
    let records = proxy.stop();
    assert_eq!(
        direct.received, proxied.received,
        "the bytes the client receives are the same"
    );
    assert!(proxied.received.len() > 100_000);
    assert_capture_matches(&records, 1, &proxied);
}

#[test]
fn garbage_from_a_client_is_forwarded_and_the_error_recorded() {
    let dir = TempDir::new("garbage");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    c.send(b"GARBAGE\n");
    let (err, _) = c.reply();
    assert_eq!(err["error"]["desc"], "JSON parse error, stray 'G'");
    assert!(err.get("id").is_none());
    c.send(b"[1, 2]\n");
    let (err, _) = c.reply();
    assert_eq!(err["error"]["desc"], "QMP input must be a JSON object");
    // QEMU accepts single-quoted strings; the proxy records them as a command.
    let r = c.execute("{'execute': 'query-status', 'id': 'it\\'s \"q\"'}");
    assert_eq!(r["id"], "it's \"q\"");
    c.send(b"\xff\xfe{\"execute\": \"query-status\"}");
    let (first, _) = c.reply();
    assert!(
        first["error"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error"),
        "{first}"
    );
    drop(c.stream.shutdown(std::net::Shutdown::Write));
    while c.next_frame().is_some() {}
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let c2s = msgs(&records, 1, Dir::C2s);
    let garbage = &c2s[1];
    assert_eq!(
        (garbage.kind, garbage.frame),
        (Kind::Invalid, Some(FrameError::Lexical))
    );
    assert_eq!(garbage.raw_bytes(), b"GARBAGE");
    assert_eq!((c2s[2].kind, c2s[3].kind), (Kind::Other, Kind::Command));
    assert_eq!(c2s[3].name.as_deref(), Some("query-status"));
    assert!(
        c2s[3].text.is_some(),
        "the single-quoted original is kept exactly"
    );
    assert!(
        c2s.iter().any(|m| m.bytes_b64.is_some()),
        "non-UTF-8 bytes are kept as base64"
    );
}

#[test]
fn upstream_killed_mid_session_closes_the_client_and_the_proxy_goes_on() {
    let dir = TempDir::new("upstream-killed");
    let mut qemu = Qemu::start(&dir);
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    qemu.kill();
    assert!(
        c.next_frame().is_none(),
        "the client sees its connection end"
    );
    // A new client is accepted, told nothing, and closed: the monitor is gone.
    let mut late = Client::connect(&proxy.listen);
    assert!(late.next_frame().is_none());
    let records = proxy.stop();
    assert_capture_matches(&records, 1, &c);
    let close = close_of(&records, 1);
    assert_eq!(close.by, Side::Upstream);
    let refused = close_of(&records, 2);
    assert_eq!(refused.by, Side::Upstream);
    assert!(
        refused.reason.starts_with("upstream unreachable: "),
        "{}",
        refused.reason
    );
}

#[test]
fn client_killed_mid_message_closes_the_upstream() {
    let dir = TempDir::new("client-killed");
    let qemu = Qemu::start(&dir);
    let proxy = Proxy::start(&dir, qemu.addr());
    let mut c = Client::connect(&proxy.listen);
    c.negotiate();
    c.send(br#"{"execute": "query-st"#);
    std::thread::sleep(Duration::from_millis(100));
    let sent = c.sent.clone();
    drop(c);
    // QEMU is free again: the proxy closed its connection.
    let mut next = Client::connect(&qemu.socket);
    next.negotiate();
    let records = proxy.stop();
    let c2s = msgs(&records, 1, Dir::C2s);
    let last = c2s.last().unwrap();
    assert_eq!(
        (last.kind, last.frame),
        (Kind::Invalid, Some(FrameError::Truncated))
    );
    assert_eq!(last.raw_bytes(), br#"{"execute": "query-st"#);
    let expected: Vec<Vec<u8>> = frames_of(&sent).into_iter().map(|f| f.bytes).collect();
    let got: Vec<Vec<u8>> = c2s.iter().map(qmptap::capture::Msg::raw_bytes).collect();
    assert_eq!(
        got, expected,
        "everything the client sent is recorded, the cut message too"
    );
    assert_eq!(close_of(&records, 1).by, Side::Client);
}

fn unsafe_free_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just created is its effective uid.
    let probe = std::env::temp_dir().join(format!("qmptap-uid-{}", std::process::id()));
    std::fs::write(&probe, b"").unwrap();
    let uid = std::fs::metadata(&probe).unwrap().uid();
    let _ = std::fs::remove_file(probe);
    uid
}
