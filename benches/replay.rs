#![allow(clippy::unwrap_used)] // a benchmark that cannot go on should stop
//! Replay's own cost per message: the same session of query commands sent to a real QEMU by
//! a plain client (send, wait for the reply, next) and by `qmptap replay` (which also decodes,
//! pairs, normalises and compares every reply), in one run.
//!
//! Run with `cargo bench --bench replay`. Needs QEMU; fails (never skips) without it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qmptap::addr::Addr;
use qmptap::capture::{Dir, Header, Msg, Open, Record, Time, Writer};
use qmptap::normalize::Normalizer;
use qmptap::replay::Pace;
use qmptap::replay::client::{Options, replay};
use qmptap::wire::{Decoder, Frame};

const COMMANDS: usize = 5_000;
const ROUNDS: usize = 3;

const MIX: [&[u8]; 4] = [
    br#"{"execute": "query-status"}"#,
    br#"{"execute": "query-name"}"#,
    br#"{"execute": "query-version"}"#,
    br#"{"execute": "qom-list", "arguments": {"path": "/"}}"#,
];

struct Session {
    s: UnixStream,
    d: Decoder,
    frames: std::collections::VecDeque<Frame>,
}

impl Session {
    fn open(path: &Path) -> Session {
        let s = UnixStream::connect(path).unwrap();
        Session {
            s,
            d: Decoder::new(),
            frames: std::collections::VecDeque::new(),
        }
    }

    fn next(&mut self) -> Frame {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(f) = self.frames.pop_front() {
                return f;
            }
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "QEMU closed the connection");
            let mut out = Vec::new();
            self.d.feed(&buf[..n], &mut out);
            self.frames.extend(out);
        }
    }

    fn call(&mut self, cmd: &[u8]) -> Frame {
        self.s.write_all(cmd).unwrap();
        loop {
            let f = self.next();
            if !f.bytes.starts_with(b"{\"timestamp\"") {
                return f;
            }
        }
    }
}

/// A direct session of `COMMANDS` commands; returns its duration, and writes it as a capture
/// when `record` is given.
fn direct(qmp: &Path, record: Option<&Path>) -> Duration {
    let mut records = Vec::new();
    let mut seq = 0;
    let mut add = |dir: Dir, bytes: &[u8]| {
        let frame = Frame {
            kind: qmptap::wire::FrameKind::Message,
            bytes: bytes.to_vec(),
            offset: 0,
            len: bytes.len() as u64,
        };
        records.push(Record::Msg(Msg::from_frame(
            1,
            seq,
            Time::now(),
            dir,
            &frame,
            0,
        )));
        seq += 1;
    };
    let start = Instant::now();
    let mut s = Session::open(qmp);
    let greeting = s.next();
    add(Dir::S2c, &greeting.bytes);
    let caps = br#"{"execute": "qmp_capabilities"}"#;
    let r = s.call(caps);
    add(Dir::C2s, caps);
    add(Dir::S2c, &r.bytes);
    for i in 0..COMMANDS {
        let cmd = MIX[i % MIX.len()];
        let r = s.call(cmd);
        if record.is_some() {
            add(Dir::C2s, cmd);
            add(Dir::S2c, &r.bytes);
        }
    }
    drop(s);
    let took = start.elapsed();
    if let Some(path) = record {
        let mut w = Writer::new(std::fs::File::create(path).unwrap());
        w.write(&Record::Header(Header::new(None, None))).unwrap();
        w.write(&Record::Open(Open {
            conn: 1,
            t: Time::now(),
            peer: qmptap::capture::Peer::default(),
        }))
        .unwrap();
        for r in &records {
            w.write(r).unwrap();
        }
    }
    took
}

fn main() {
    let dir = std::env::temp_dir().join(format!("qmptap-bench-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let qmp = dir.join("qmp.sock");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is required for this benchmark");
    while UnixStream::connect(&qmp).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let capture = dir.join("session.jsonl");
    direct(&qmp, Some(&capture));
    let options = Options {
        target: Addr::Unix(qmp.clone()),
        conns: Vec::new(),
        pace: Pace::Asap,
        timeout: Duration::from_secs(10),
        normalizer: Normalizer::default(),
        rewrites: Vec::new(),
    };
    let (mut plain, mut replayed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(100));
        plain.push(direct(&qmp, None));
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        let report = replay(&capture, &options).unwrap();
        replayed.push(start.elapsed());
        assert!(report.is_clean(), "{report:?}");
    }
    plain.sort();
    replayed.sort();
    let (p, r) = (plain[ROUNDS / 2], replayed[ROUNDS / 2]);
    let messages = 2 * COMMANDS + 3;
    println!(
        "replay overhead: {COMMANDS} commands ({messages} messages), median of {ROUNDS} runs against QEMU 7.2"
    );
    println!(
        "  plain client   {:>8.1} ms  {:>6.1} us/command",
        p.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e6 / COMMANDS as f64
    );
    println!(
        "  qmptap replay  {:>8.1} ms  {:>6.1} us/command",
        r.as_secs_f64() * 1e3,
        r.as_secs_f64() * 1e6 / COMMANDS as f64
    );
    println!(
        "  replay's own cost: {:.1} us per message ({:.2}x the plain client)",
        (r.as_secs_f64() - p.as_secs_f64()) * 1e6 / messages as f64,
        r.as_secs_f64() / p.as_secs_f64()
    );
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
