//! `qmptap replay`: send a recorded client side to a live monitor, in causal order, and
//! compare every reply and event with the recording.
//!
//! Before each client message is sent, the server messages that preceded it in the recording
//! (its predecessors' replies, the events the client had seen) must have arrived, each wait
//! bounded by a timeout: that is what makes a replay of `block-job-complete` wait for
//! `BLOCK_JOB_READY`. Replies are matched in order (QEMU answers in-band commands strictly in
//! order), events by name in arrival order; both are compared after normalisation.
//!
//! Recorded connections are replayed one after the other: a QEMU monitor serves one client at
//! a time.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::Pace;
use crate::addr::Addr;
use crate::capture::{CaptureError, Dir, FrameError, Msg, Reader, Side};
use crate::normalize::{Difference, Normalizer, differences};
use crate::session::{Connection, Session, Tracker};
use crate::wire::{Decoder, Kind, Message};

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// The monitor to replay against.
    pub target: Addr,
    /// Only these recorded connections (all when empty).
    pub conns: Vec<u64>,
    /// How fast.
    pub pace: Pace,
    /// Longest wait for any one expected message.
    pub timeout: Duration,
    /// What to mask before comparing.
    pub normalizer: Normalizer,
    /// Text to replace in every recorded message, client and server side, before it is sent
    /// or compared: `(from, to)`, e.g. a recorded socket or image path and where the fresh
    /// environment has it.
    pub rewrites: Vec<(String, String)>,
}

/// Applies the rewrites to a recorded message's bytes.
fn rewrite(bytes: Vec<u8>, rewrites: &[(String, String)]) -> Vec<u8> {
    let mut bytes = bytes;
    for (from, to) in rewrites {
        if from.is_empty() || !bytes.windows(from.len()).any(|w| w == from.as_bytes()) {
            continue;
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        while let Some(i) = rest.windows(from.len()).position(|w| w == from.as_bytes()) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(to.as_bytes());
            rest = &rest[i + from.len()..];
        }
        out.extend_from_slice(rest);
        bytes = out;
    }
    bytes
}

/// Numbers the server hands out and the client passes back: `(command whose reply assigns
/// them, member of its return, commands that take them, member of their arguments)`. A fresh
/// QEMU may assign other numbers (its descriptor numbers depend on what else it has open), so
/// replay learns each recorded-to-live pair from the reply and rewrites the later arguments.
const HANDLES: &[(&str, &str, &[&str], &str)] = &[
    ("add-fd", "fd", &["remove-fd"], "fd"),
    ("add-fd", "fdset-id", &["remove-fd", "add-fd"], "fdset-id"),
];

/// The handles learnt so far: `(member, recorded) -> live`.
#[derive(Debug, Default)]
struct Handles(std::collections::HashMap<(&'static str, i64), i64>);

impl Handles {
    /// Learns from a reply to `command`: where the live return differs from the recorded one
    /// at a handle member.
    fn learn(&mut self, command: &str, recorded: &Value, live: &Value) {
        for (producer, member, _, _) in HANDLES {
            if *producer != command {
                continue;
            }
            let get = |v: &Value| v.get("return")?.get(member)?.as_i64();
            if let (Some(r), Some(l)) = (get(recorded), get(live)) {
                if r != l {
                    self.0.insert((member, r), l);
                }
            }
        }
    }

    /// A recorded command's bytes with its handles replaced by the live ones, or `None` when
    /// it uses none (and goes out byte for byte).
    fn apply(&self, command: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.0.is_empty() {
            return None;
        }
        let mut value: Value = serde_json::from_slice(bytes).ok()?;
        let mut changed = false;
        for (_, member, consumers, arg) in HANDLES {
            if !consumers.contains(&command) {
                continue;
            }
            let Some(slot) = value.get_mut("arguments").and_then(|a| a.get_mut(*arg)) else {
                continue;
            };
            if let Some(live) = slot.as_i64().and_then(|r| self.0.get(&(*member, r))) {
                *slot = Value::from(*live);
                changed = true;
            }
        }
        changed.then(|| value.to_string().into_bytes())
    }
}

/// A recorded server message and what the replay got instead.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Differing {
    /// Capture line of the recorded message.
    pub line: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// The command (for replies) or event name.
    pub name: Option<String>,
    /// Where and how they differ, after normalisation.
    pub differences: Vec<Difference>,
}

/// A recorded server message that never came.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Missing {
    /// Capture line of the recorded message.
    pub line: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// The command (for replies) or event name.
    pub name: Option<String>,
}

/// A server message the recording does not have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unexpected {
    /// Its kind.
    pub kind: Kind,
    /// Event name, if an event.
    pub name: Option<String>,
    /// The message as received.
    pub json: Value,
}

/// A difference that a normaliser rule explains (an event whose number varies).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    /// The rule.
    pub rule: String,
    /// Why the rule exists.
    pub why: String,
    /// `missing` or `unexpected`.
    pub change: &'static str,
    /// The event.
    pub name: String,
}

/// The result for one recorded connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnReport {
    /// Recorded connection id.
    pub conn: u64,
    /// Client messages sent.
    pub sent: u64,
    /// Server messages that matched the recording.
    pub matched: u64,
    /// Server messages that differ.
    pub differing: Vec<Differing>,
    /// Server messages that never came.
    pub missing: Vec<Missing>,
    /// Server messages the recording does not have.
    pub unexpected: Vec<Unexpected>,
    /// Differences the normaliser's rules explain.
    pub explained: Vec<Explained>,
}

impl ConnReport {
    /// Whether everything matched.
    pub fn is_clean(&self) -> bool {
        self.differing.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// The result of a replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The capture replayed.
    pub capture: String,
    /// The monitor it was replayed against.
    pub target: String,
    /// Per connection.
    pub connections: Vec<ConnReport>,
}

impl Report {
    /// Whether every connection matched.
    pub fn is_clean(&self) -> bool {
        self.connections.iter().all(ConnReport::is_clean)
    }
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture could not be read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The capture has none of the connections asked for.
    #[error("the capture has no connection {0:?}")]
    NoSuchConnection(Vec<u64>),
    /// The target could not be reached or failed mid-replay.
    #[error("replaying connection {conn} against '{target}'")]
    Target {
        /// Recorded connection id.
        conn: u64,
        /// The target.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Replays a capture (see the module documentation).
pub fn replay(path: &Path, options: &Options) -> Result<Report, ReplayError> {
    let session = Session::load(Reader::open(path)?)?;
    let chosen: Vec<&Connection> = session
        .connections
        .values()
        .filter(|c| options.conns.is_empty() || options.conns.contains(&c.conn))
        .collect();
    if chosen.is_empty() {
        return Err(ReplayError::NoSuchConnection(options.conns.clone()));
    }
    let mut report = Report {
        capture: path.display().to_string(),
        target: options.target.to_string(),
        connections: Vec::new(),
    };
    for conn in chosen {
        let target_err = |source| ReplayError::Target {
            conn: conn.conn,
            target: options.target.to_string(),
            source,
        };
        report
            .connections
            .push(replay_connection(conn, options).map_err(target_err)?);
    }
    Ok(report)
}

/// A server message received during the replay.
struct Actual {
    kind: Kind,
    name: Option<String>,
    value: Value,
}

/// The live connection: a writer, and a reader thread that decodes server messages.
struct Live {
    stream: Box<dyn Stream>,
    unix: bool,
    rx: Receiver<Actual>,
    /// Received, not yet matched to the recording.
    pending: VecDeque<Actual>,
    /// The reader thread ended (EOF or error).
    closed: bool,
}

trait Stream: Write + Send {
    fn raw_fd(&self) -> std::os::fd::RawFd;
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Stream for std::net::TcpStream {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

fn connect(target: &Addr) -> io::Result<Live> {
    let (stream, reader, unix): (Box<dyn Stream>, Box<dyn Read + Send>, bool) = match target {
        Addr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            let r = s.try_clone()?;
            (Box::new(s), Box::new(r), true)
        }
        Addr::Tcp { host, port } => {
            let s = std::net::TcpStream::connect((host.as_str(), *port))?;
            s.set_nodelay(true)?;
            let r = s.try_clone()?;
            (Box::new(s), Box::new(r), false)
        }
        Addr::Fd(_) => return Err(target.not_connectable()),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("qmptap-replay-read".into())
        .spawn(move || read_loop(reader, &tx))?;
    Ok(Live {
        stream,
        unix,
        rx,
        pending: VecDeque::new(),
        closed: false,
    })
}

fn read_loop(mut reader: Box<dyn Read + Send>, tx: &mpsc::Sender<Actual>) {
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.feed(&buf[..n], &mut frames);
        for frame in frames.drain(..) {
            let m = Message::classify(&frame);
            let value = m.value.unwrap_or_else(|| {
                Value::String(String::from_utf8_lossy(&frame.bytes).into_owned())
            });
            if tx
                .send(Actual {
                    kind: m.kind,
                    name: m.name,
                    value,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

impl Live {
    /// Waits until `accept` picks a received message (searching in arrival order), or the
    /// deadline passes.
    fn take(&mut self, deadline: Instant, accept: impl Fn(&Actual) -> bool) -> Option<Actual> {
        loop {
            if let Some(i) = self.pending.iter().position(&accept) {
                return self.pending.remove(i);
            }
            if self.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(actual) => self.pending.push_back(actual),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Sends one recorded client frame; a frame that came with descriptors gets as many
    /// substitutes (`/dev/null`, read and write: a migration or dump QEMU writes to it
    /// succeeds, its bytes discarded), attached to its own bytes.
    fn send(&mut self, msg: &Msg, mut bytes: Vec<u8>) -> io::Result<()> {
        // Whitespace between messages is not recorded. A frame that only ends when something
        // follows it gets a newline, which means nothing else to QEMU: a lone number or
        // keyword, and a lexical error, whose recovery a control character ends.
        if bytes.last().is_some_and(u8::is_ascii_alphanumeric) && msg.frame.is_none()
            || msg.frame == Some(FrameError::Lexical)
        {
            bytes.push(b'\n');
        }
        if msg.fds == 0 || !self.unix {
            return self.stream.write_all(&bytes);
        }
        let fds: Vec<OwnedFd> = (0..msg.fds)
            .map(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
            })
            .collect::<Result<_, _>>()?;
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let iov = [IoSlice::new(&bytes)];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let sent = nix::sys::socket::sendmsg::<()>(
            self.stream.raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        self.stream.write_all(&bytes[sent..])
    }
}

fn replay_connection(conn: &Connection, options: &Options) -> io::Result<ConnReport> {
    let mut report = ConnReport {
        conn: conn.conn,
        sent: 0,
        matched: 0,
        differing: Vec::new(),
        missing: Vec::new(),
        unexpected: Vec::new(),
        explained: Vec::new(),
    };
    let mut live = connect(&options.target)?;
    let first = conn.messages.first().map(|m| m.t);
    let start = Instant::now();
    // Replies are named after their command: pair the recording once, as everywhere.
    let mut tracker = Tracker::new();
    let mut handles = Handles::default();
    for (msg, line) in conn.messages.iter().zip(&conn.lines) {
        let role = tracker.observe_msg(msg);
        // The recording proxy's own polls and their replies were never the client's: they
        // are neither sent nor expected.
        if msg.is_proxy()
            || matches!(
                role,
                crate::session::Role::Reply {
                    origin: crate::capture::Origin::Proxy,
                    ..
                }
            )
        {
            continue;
        }
        match msg.dir {
            Dir::C2s => {
                let offset =
                    first.map_or(0, |first| msg.t.micros_since(first).max(0).unsigned_abs());
                if let Some(due) = options.pace.due(Duration::from_micros(offset)) {
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let bytes = rewrite(msg.raw_bytes(), &options.rewrites);
                let bytes = match msg.name.as_deref() {
                    Some(command) => handles.apply(command, &bytes).unwrap_or(bytes),
                    None => bytes,
                };
                live.send(msg, bytes)?;
                report.sent += 1;
                if msg.frame == Some(FrameError::Truncated) {
                    break;
                }
            }
            Dir::S2c => {
                let name = match &role {
                    crate::session::Role::Reply { command, .. } => command.clone(),
                    _ => msg.name.clone(),
                };
                let deadline = Instant::now() + options.timeout;
                let expected_kind = msg.kind;
                let got = match expected_kind {
                    // QEMU answers in order: the next reply is this one's, success or error.
                    Kind::Return | Kind::Error => {
                        live.take(deadline, |a| matches!(a.kind, Kind::Return | Kind::Error))
                    }
                    Kind::Event => {
                        live.take(deadline, |a| a.kind == Kind::Event && a.name == msg.name)
                    }
                    kind => live.take(deadline, |a| a.kind == kind),
                };
                match got {
                    None => match name
                        .as_deref()
                        .and_then(|n| options.normalizer.counted_event(n))
                        .filter(|_| msg.kind == Kind::Event)
                    {
                        Some((rule_name, reason)) => report.explained.push(Explained {
                            rule: rule_name.to_owned(),
                            why: reason.to_owned(),
                            change: "missing",
                            name: name.unwrap_or_default(),
                        }),
                        None => report.missing.push(Missing {
                            line: *line,
                            seq: msg.seq,
                            kind: msg.kind,
                            name,
                        }),
                    },
                    Some(actual) => {
                        let expected = if options.rewrites.is_empty() {
                            msg.value().unwrap_or(Value::Null)
                        } else {
                            let text = msg
                                .json
                                .as_ref()
                                .map_or_else(Vec::new, |j| j.get().as_bytes().to_vec());
                            serde_json::from_slice(&rewrite(text, &options.rewrites))
                                .unwrap_or(Value::Null)
                        };
                        if let Some(command) = &name {
                            handles.learn(command, &expected, &actual.value);
                        }
                        let d = differences(
                            &options.normalizer.normalized(name.as_deref(), &expected),
                            &options
                                .normalizer
                                .normalized(name.as_deref(), &actual.value),
                        );
                        if d.is_empty() {
                            report.matched += 1;
                        } else {
                            report.differing.push(Differing {
                                line: *line,
                                seq: msg.seq,
                                kind: msg.kind,
                                name,
                                differences: d,
                            });
                        }
                    }
                }
            }
        }
    }
    // End as the recorded client did: close our side, then collect what is left.
    let client_closed = conn.close.as_ref().is_none_or(|c| c.by == Side::Client);
    if client_closed {
        let _ = live.stream.shutdown_write();
    }
    // Accepting nothing, `take` gathers what arrives until the server closes or time is up.
    let _ = live.take(
        Instant::now() + options.timeout.min(Duration::from_secs(2)),
        |_| false,
    );
    for a in live.pending.drain(..) {
        let rule = a
            .name
            .as_deref()
            .and_then(|n| options.normalizer.counted_event(n))
            .filter(|_| a.kind == Kind::Event);
        match rule {
            Some((rule, why)) => report.explained.push(Explained {
                rule: rule.to_owned(),
                why: why.to_owned(),
                change: "unexpected",
                name: a.name.clone().unwrap_or_default(),
            }),
            None => report.unexpected.push(Unexpected {
                kind: a.kind,
                name: a.name,
                json: a.value,
            }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{Handles, Value, rewrite};

    #[test]
    fn handles_follow_the_live_numbers_into_later_arguments() {
        let mut h = Handles::default();
        let cmd = br#"{"execute":"remove-fd","arguments":{"fdset-id":1,"fd":12}}"#;
        assert_eq!(h.apply("remove-fd", cmd), None, "nothing learnt yet");
        h.learn(
            "add-fd",
            &serde_json::json!({"return": {"fd": 12, "fdset-id": 1}}),
            &serde_json::json!({"return": {"fd": 14, "fdset-id": 1}}),
        );
        let sent = h.apply("remove-fd", cmd).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&sent).unwrap(),
            serde_json::json!({"execute":"remove-fd","arguments":{"fdset-id":1,"fd":14}})
        );
        assert_eq!(
            h.apply("query-fdsets", br#"{"execute":"query-fdsets"}"#),
            None
        );
    }

    #[test]
    fn rewrites_every_occurrence_in_order() {
        let rules = vec![
            ("/tmp/rec".to_owned(), "/srv/t".to_owned()),
            ("src".to_owned(), "a".to_owned()),
        ];
        let got = rewrite(
            br#"{"f": "/tmp/rec/src.qcow2", "g": "/tmp/rec/x"}"#.to_vec(),
            &rules,
        );
        assert_eq!(got, br#"{"f": "/srv/t/a.qcow2", "g": "/srv/t/x"}"#);
        assert_eq!(
            rewrite(b"abc".to_vec(), &[(String::new(), "x".to_owned())]),
            b"abc"
        );
    }
}
