//! A mock QMP server that plays the server (QEMU) side of a recorded session.
//!
//! [`Script::load`] reads a capture into the interactions it recorded: for each client
//! command, its recorded reply (paired by [`crate::session::Tracker`], never by hand) and the
//! events that followed it on its connection until the next command. [`serve`] then accepts
//! clients on a [`Listener`] and, for each connection:
//!
//! - sends the recorded greeting, exactly as recorded, ended by `\r\n` like QEMU;
//! - enforces QEMU's protocol rules itself (input validation, capabilities negotiation,
//!   `exec-oob` only once `oob` is enabled), with QEMU's exact error texts, because those
//!   answers depend on the live connection's state rather than on the recording;
//! - answers every other command with the recorded reply whose key (command name plus
//!   arguments, normalised by the [`Normalizer`], as canonical JSON) matches, first in first
//!   out among equal keys across the whole capture (one pool shared by every connection), or
//!   strictly in recorded order with [`ServeOptions::strict_order`];
//! - gives the reply the client's own `id` (or none if it sent none), in the place QEMU puts
//!   it (last in a return, first in an error);
//! - sends the events recorded with the interaction in their recorded order relative to the
//!   reply, at once or with their recorded delays ([`Pace`]), stamped with the current time;
//! - answers frames QEMU could not parse with QEMU's id-less errors (`JSON parse error, ...`,
//!   `QMP input must be a JSON object`);
//! - accepts and closes file descriptors clients send (SCM_RIGHTS on UNIX sockets): a mock
//!   has no use for them, but the command they come with is answered as recorded.
//!
//! What it must never do: panic or stop serving because of what a client sends, or keep
//! per-connection state after the client left. Memory per connection is bounded by the
//! decoder's limits and [`OUTPUT_QUEUE`]; the report keeps at most [`MAX_REPORTED_MISSES`]
//! misses in detail.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Pace;
use crate::capture::{CaptureError, Dir, Located, Msg, Reader, Record, Time};
use crate::normalize::{Normalizer, differences};
use crate::proxy::{Accepted, Listener, Shutdown, accept_clients};
use crate::session::{Role, Tracker};
use crate::wire::lexer::{self, Token};
use crate::wire::{Decoder, Frame, FrameKind, Kind, LimitKind, Message};

/// Bytes read from a client at a time.
pub const READ_CHUNK: usize = 64 * 1024;
/// Output batches a connection may have queued for writing before it stops reading its
/// client (back-pressure on a client that sends without reading).
pub const OUTPUT_QUEUE: usize = 256;
/// Misses kept in detail in the report; later ones are only counted.
pub const MAX_REPORTED_MISSES: usize = 1000;
/// The most descriptors one `recvmsg` can carry on Linux (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// Why the mock server could not load its script or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The capture could not be read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The capture has no greeting to send, so no client could be served.
    #[error("{source_name}: the capture has no greeting ({{\"QMP\": ...}}) to send to clients")]
    NoGreeting {
        /// The capture's name.
        source_name: String,
    },
    /// Accepting clients failed for good (client side).
    #[error("accepting clients on '{addr}' failed")]
    Accept {
        /// The listening address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
}

/// When, relative to the negotiation of its connection, a command was answered. QEMU
/// answers the same command differently before and after `qmp_capabilities`, so recorded
/// replies only match a live command in the same stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Before `qmp_capabilities` succeeded (including that command itself).
    Negotiation,
    /// After it.
    Negotiated,
}

/// A recorded message with one top-level member that is rewritten when it is sent (a
/// reply's `id`, an event's `timestamp`).
#[derive(Debug, Clone)]
struct Template {
    /// The recorded JSON text (one line).
    text: String,
    /// The member's value, `start..end` in `text`, if the message has the member.
    value: Option<(usize, usize)>,
    /// What to cut to remove the member with its separator.
    remove: (usize, usize),
    /// Where a new first member goes (just after `{`).
    front: usize,
    /// Where a new last member goes (just after the last member's value).
    back: usize,
    /// Whether the object has any member at all.
    empty: bool,
}

impl Template {
    /// `None` when `text` is not a JSON object.
    fn new(text: &str, member: &str) -> Option<Template> {
        let members = top_level_members(text.as_bytes())?;
        let front = text.find('{')? + 1;
        let back = members.last().map_or(front, |m| m.value_end);
        let found = members.iter().position(|m| m.key == member);
        let (value, remove) = match found {
            None => (None, (0, 0)),
            Some(i) => {
                let m = &members[i];
                let remove = if let Some(next) = members.get(i + 1) {
                    (m.start, next.start)
                } else if i > 0 {
                    (members[i - 1].value_end, m.value_end)
                } else {
                    (m.start, m.value_end)
                };
                (Some((m.value_start, m.value_end)), remove)
            }
        };
        Some(Template {
            text: text.to_owned(),
            value,
            remove,
            front,
            back,
            empty: members.is_empty(),
        })
    }

    /// Appends the message with the member set to `json` (or removed when `None`) and
    /// QEMU's line end. A new member goes first or last, as QEMU places it.
    fn render(&self, member: &str, json: Option<&str>, first: bool, out: &mut Vec<u8>) {
        let t = self.text.as_bytes();
        match (self.value, json) {
            (Some((start, end)), Some(json)) => {
                out.extend_from_slice(&t[..start]);
                out.extend_from_slice(json.as_bytes());
                out.extend_from_slice(&t[end..]);
            }
            (Some(_), None) => {
                out.extend_from_slice(&t[..self.remove.0]);
                out.extend_from_slice(&t[self.remove.1..]);
            }
            (None, Some(json)) => {
                let at = if first { self.front } else { self.back };
                out.extend_from_slice(&t[..at]);
                if self.empty {
                    let _ = write!(ByteWriter(out), "\"{member}\": {json}");
                } else if first {
                    let _ = write!(ByteWriter(out), "\"{member}\": {json}, ");
                } else {
                    let _ = write!(ByteWriter(out), ", \"{member}\": {json}");
                }
                out.extend_from_slice(&t[at..]);
            }
            (None, None) => out.extend_from_slice(t),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `fmt::Write` into a byte buffer.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A member of a JSON object, as byte offsets into its text.
struct Member {
    key: String,
    start: usize,
    value_start: usize,
    value_end: usize,
}

/// The top-level members of a JSON object's text, found with QEMU's lexer; `None` if the
/// text is not an object.
fn top_level_members(text: &[u8]) -> Option<Vec<Member>> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        match lexer::token(&text[pos..]) {
            Ok((rest, token)) => {
                let end = text.len() - rest.len();
                if token != Token::Whitespace {
                    tokens.push((token, pos, end));
                }
                pos = end;
            }
            // A number or keyword at the very end; an object never ends with one.
            Err(nom::Err::Incomplete(_)) => break,
            Err(_) => return None,
        }
    }
    if tokens.first().map(|t| t.0) != Some(Token::LCurly) {
        return None;
    }
    let mut members: Vec<Member> = Vec::new();
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut expect_value = false;
    let mut previous_end = 0;
    for &(token, start, end) in &tokens {
        if depth == 1 && expect_value {
            if let Some(m) = members.last_mut() {
                m.value_start = start;
            }
            expect_value = false;
        }
        match token {
            Token::LCurly | Token::LSquare => {
                depth += 1;
                if depth == 1 {
                    expect_key = true;
                }
            }
            Token::RCurly | Token::RSquare => {
                if depth == 1
                    && let Some(m) = members.last_mut()
                    && m.value_end == 0
                {
                    m.value_end = previous_end;
                }
                depth = depth.checked_sub(1)?;
            }
            Token::Comma if depth == 1 => {
                if let Some(m) = members.last_mut() {
                    m.value_end = previous_end;
                }
                expect_key = true;
            }
            Token::String { .. } if depth == 1 && expect_key => {
                let key = serde_json::from_slice::<String>(&text[start..end])
                    .unwrap_or_else(|_| String::from_utf8_lossy(&text[start..end]).into_owned());
                members.push(Member {
                    key,
                    start,
                    value_start: 0,
                    value_end: 0,
                });
                expect_key = false;
            }
            Token::Colon if depth == 1 => expect_value = true,
            _ => {}
        }
        previous_end = end;
    }
    Some(members)
}

/// A recorded reply.
#[derive(Debug, Clone)]
pub struct RecordedReply {
    /// `return` or `error`.
    pub kind: Kind,
    /// The reply as recorded (one line of JSON).
    pub json: String,
    /// Microseconds from the command to the reply in the recording.
    pub latency_us: i64,
    /// Capture line.
    pub line: u64,
    template: Template,
}

/// A recorded event that followed a command.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// The event's name.
    pub name: String,
    /// The event as recorded.
    pub json: String,
    /// Microseconds from the command to the event in the recording.
    pub offset_us: i64,
    /// Whether it was recorded before the command's reply.
    pub before_reply: bool,
    /// Capture line.
    pub line: u64,
    template: Template,
}

/// One recorded client command with what the server answered.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// Recorded connection.
    pub conn: u64,
    /// The command's `seq` in its connection.
    pub seq: u64,
    /// The command's capture line.
    pub line: u64,
    /// When the command was recorded.
    pub t: Time,
    /// The command as recorded.
    pub command: Value,
    /// The command's name.
    pub name: String,
    /// Whether it was sent with `exec-oob`.
    pub oob: bool,
    /// The matching key: the command without `id` (and without empty `arguments`),
    /// normalised, as canonical JSON (members sorted).
    pub key: String,
    /// Negotiation stage of its connection when it was answered.
    pub stage: Stage,
    /// The recorded reply; `None` when the connection ended first (such a command is never
    /// matched).
    pub reply: Option<RecordedReply>,
    /// Events recorded after the command and before the next command of its connection.
    pub events: Vec<RecordedEvent>,
}

/// A recorded connection's greeting.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// Recorded connection.
    pub conn: u64,
    /// The greeting's exact text.
    pub json: String,
    /// Whether it offers the `oob` capability.
    pub offers_oob: bool,
}

/// Everything a capture recorded that the mock server can play back.
#[derive(Debug, Clone)]
pub struct Script {
    /// The capture's name.
    pub source_name: String,
    /// Greetings, in the order of their connections.
    pub greetings: Vec<Greeting>,
    /// Interactions in recorded order (by capture line).
    pub interactions: Vec<Interaction>,
    normalizer: Normalizer,
}

/// The matching key of a command: it without `id` and without empty `arguments` (QEMU
/// treats absent and empty alike), normalised, as canonical JSON.
pub fn command_key(normalizer: &Normalizer, name: &str, command: &Value) -> String {
    let mut v = command.clone();
    if let Value::Object(map) = &mut v {
        map.remove("id");
        if map
            .get("arguments")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            map.remove("arguments");
        }
    }
    normalizer.normalize(Some(name), &mut v);
    let mut out = String::new();
    canonical(&v, &mut out);
    out
}

/// Compact JSON with object members sorted, so that member order does not matter.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Per recorded connection, while loading.
#[derive(Default)]
struct Loading {
    negotiated: bool,
    /// Interactions of this connection awaiting their reply, by the command's `seq`.
    by_seq: HashMap<u64, usize>,
    /// The latest command, which events attach to.
    last_command: Option<usize>,
}

impl Script {
    /// Loads a capture file with `normalizer` building the matching keys.
    pub fn load(path: &Path, normalizer: Normalizer) -> Result<Script, ServeError> {
        Script::from_reader(Reader::open(path)?, normalizer)
    }

    /// Reads every record of a capture.
    pub fn from_reader(mut reader: Reader, normalizer: Normalizer) -> Result<Script, ServeError> {
        let source_name = reader.source_name().to_owned();
        let mut script = Script {
            source_name: source_name.clone(),
            greetings: Vec::new(),
            interactions: Vec::new(),
            normalizer,
        };
        let mut tracker = Tracker::new();
        let mut conns: HashMap<u64, Loading> = HashMap::new();
        for located in reader.by_ref() {
            let Located { line, record } = located?;
            let role = tracker.observe(&record);
            match &record {
                Record::Close(c) => {
                    conns.remove(&c.conn);
                }
                Record::Msg(m) => {
                    let state = conns.entry(m.conn).or_default();
                    script.add_msg(state, m, line, &role);
                }
                Record::Header(_) | Record::Open(_) | Record::Gap(_) => {}
            }
        }
        if script.greetings.is_empty() {
            return Err(ServeError::NoGreeting { source_name });
        }
        Ok(script)
    }

    fn add_msg(&mut self, state: &mut Loading, m: &Msg, line: u64, role: &Role) {
        // The recording proxy's own polls are not interactions of the recorded client.
        if m.is_proxy()
            || matches!(
                role,
                Role::Reply {
                    origin: crate::capture::Origin::Proxy,
                    ..
                }
            )
        {
            return;
        }
        let Some(json) = m.json.as_ref().map(|j| j.get()) else {
            return;
        };
        match (m.dir, m.kind) {
            (Dir::S2c, Kind::Greeting) => {
                let offers_oob = serde_json::from_str::<Value>(json).is_ok_and(|v| {
                    v.pointer("/QMP/capabilities")
                        .and_then(Value::as_array)
                        .is_some_and(|caps| caps.iter().any(|c| c == "oob"))
                });
                self.greetings.push(Greeting {
                    conn: m.conn,
                    json: json.to_owned(),
                    offers_oob,
                });
            }
            (Dir::C2s, Kind::Command) => {
                let (Some(value), Some(name)) = (m.value(), m.name.clone()) else {
                    return;
                };
                let oob = value.get("exec-oob").is_some();
                let key = command_key(&self.normalizer, &name, &value);
                let index = self.interactions.len();
                self.interactions.push(Interaction {
                    conn: m.conn,
                    seq: m.seq,
                    line,
                    t: m.t,
                    command: value,
                    name,
                    oob,
                    key,
                    stage: Stage::Negotiation,
                    reply: None,
                    events: Vec::new(),
                });
                state.by_seq.insert(m.seq, index);
                state.last_command = Some(index);
            }
            (Dir::S2c, Kind::Return | Kind::Error) => {
                let Role::Reply {
                    request_seq,
                    latency_us,
                    ..
                } = role
                else {
                    return;
                };
                let Some(index) = state.by_seq.remove(request_seq) else {
                    // The reply to a frame that was not a command (QEMU's parse errors): the
                    // mock computes those itself.
                    return;
                };
                let Some(template) = Template::new(json, "id") else {
                    return;
                };
                let it = &mut self.interactions[index];
                // QEMU answers in order, so the stage at the reply is the stage the command
                // was executed in, even if the client pipelined it behind qmp_capabilities.
                it.stage = if state.negotiated {
                    Stage::Negotiated
                } else {
                    Stage::Negotiation
                };
                if !state.negotiated && it.name == "qmp_capabilities" && m.kind == Kind::Return {
                    state.negotiated = true;
                }
                it.reply = Some(RecordedReply {
                    kind: m.kind,
                    json: json.to_owned(),
                    latency_us: *latency_us,
                    line,
                    template,
                });
            }
            (Dir::S2c, Kind::Event) => {
                let Some(index) = state.last_command else {
                    return;
                };
                let Some(template) = Template::new(json, "timestamp") else {
                    return;
                };
                let it = &mut self.interactions[index];
                it.events.push(RecordedEvent {
                    name: m.name.clone().unwrap_or_default(),
                    json: json.to_owned(),
                    offset_us: m.t.micros_since(it.t).max(0),
                    before_reply: it.reply.is_none(),
                    line,
                    template,
                });
            }
            _ => {}
        }
    }

    /// The greeting for the `n`-th accepted connection (from 0): that recorded connection's,
    /// or the last one's when more clients connect than were recorded.
    pub fn greeting(&self, n: usize) -> Option<&Greeting> {
        self.greetings.get(n).or(self.greetings.last())
    }

    /// The normaliser the keys were built with.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// The interactions the server can answer with (those with a recorded reply).
    pub fn answerable(&self) -> impl Iterator<Item = (usize, &Interaction)> {
        self.interactions
            .iter()
            .enumerate()
            .filter(|(_, it)| it.reply.is_some())
    }

    /// The recorded command nearest to a live one: the same name with the fewest differing
    /// argument paths (after normalisation; ties go to differing values over missing
    /// members, then to the first recorded), else the closest name. Returns its index.
    pub fn nearest(&self, name: &str, command: &Value) -> Option<usize> {
        let args = |v: &Value, n: &str| {
            let a = v
                .get("arguments")
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            let mut wrapped = Value::Object(Map::from_iter([("arguments".to_owned(), a)]));
            self.normalizer.normalize(Some(n), &mut wrapped);
            wrapped
        };
        let live = args(command, name);
        let same_name = self
            .answerable()
            .filter(|(_, it)| it.name == name)
            .min_by_key(|(_, it)| {
                // Fewest differing paths; among equals, the one whose members differ in
                // value rather than in presence.
                let d = differences(&args(&it.command, &it.name), &live);
                let presence = d
                    .iter()
                    .filter(|d| d.left.is_none() || d.right.is_none())
                    .count();
                (d.len(), presence)
            });
        if let Some((i, _)) = same_name {
            return Some(i);
        }
        self.answerable()
            .min_by_key(|(_, it)| edit_distance(&it.name, name))
            .map(|(i, _)| i)
    }
}

/// Levenshtein distance, for naming the closest recorded command.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// What to do with a command that has no recorded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMiss {
    /// Answer with a `GenericError` naming the nearest recorded command.
    #[default]
    Error,
    /// Close the client's connection (after what was already answered).
    Close,
}

/// The delay to wait for a recorded offset under `pace`, or `None` for at once.
fn delay(pace: Pace, recorded_us: i64) -> Option<Duration> {
    pace.due(Duration::from_micros(recorded_us.max(0).unsigned_abs()))
}

/// How the mock server behaves.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Demand the next unused interaction in recorded order (across the whole capture)
    /// instead of any unused one with the same key.
    pub strict_order: bool,
    /// What to do with a command that has no recorded reply.
    pub on_miss: OnMiss,
    /// When replies and events are sent.
    pub pace: Pace,
    /// Answer a command whose recorded replies are all used with the last one used for the
    /// same key, instead of missing. Each recorded interaction is still used once before
    /// any is reused (useful for polling loops and load tests).
    pub reuse: bool,
    /// Stop accepting after the first client and return when it has gone.
    pub once: bool,
}

/// A command that got no recorded reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Miss {
    /// Served connection (numbered from 1 in accept order).
    pub conn: u64,
    /// The command's name.
    pub command: String,
    /// The command as the client sent it (compact JSON).
    pub json: String,
    /// The nearest recorded command (`name arguments`), if the capture has any.
    pub nearest: Option<String>,
}

/// A recorded interaction no client used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unused {
    /// Recorded connection.
    pub conn: u64,
    /// The command's `seq` in its recorded connection.
    pub seq: u64,
    /// The command's capture line.
    pub line: u64,
    /// The command's name.
    pub command: String,
}

/// What happened while serving.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServeReport {
    /// Connections accepted.
    pub connections: u64,
    /// Commands answered from the recording (reuses included).
    pub answered: u64,
    /// Of those, answered by reusing an already used interaction ([`ServeOptions::reuse`]).
    pub reused: u64,
    /// Frames answered by QEMU's protocol rules (parse errors, negotiation, input checks).
    pub by_rule: u64,
    /// Commands with no recorded reply (all of them, even past those kept in `missed`).
    pub misses: u64,
    /// The first [`MAX_REPORTED_MISSES`] misses.
    pub missed: Vec<Miss>,
    /// Recorded interactions (with a reply) that no client used, in recorded order.
    pub unused: Vec<Unused>,
    /// Recorded interactions that could be answered (had a reply).
    pub recorded: u64,
}

/// Which interactions are used; shared by every connection.
struct Pool {
    /// Unused interactions per (stage, key), in recorded order.
    queues: HashMap<(Stage, String), VecDeque<usize>>,
    used: Vec<bool>,
    /// Strict order: the first interaction that may be unused.
    cursor: usize,
    /// The last interaction used per key, for reuse.
    last: HashMap<(Stage, String), usize>,
}

/// How a command was matched.
enum Taken {
    Fresh(usize),
    Reused(usize),
}

impl Pool {
    fn new(script: &Script) -> Pool {
        let mut queues: HashMap<(Stage, String), VecDeque<usize>> = HashMap::new();
        for (i, it) in script.answerable() {
            queues
                .entry((it.stage, it.key.clone()))
                .or_default()
                .push_back(i);
        }
        Pool {
            queues,
            used: vec![false; script.interactions.len()],
            cursor: 0,
            last: HashMap::new(),
        }
    }

    fn take(
        &mut self,
        script: &Script,
        stage: Stage,
        key: String,
        strict: bool,
        reuse: bool,
    ) -> Option<Taken> {
        let slot = (stage, key);
        let fresh = if strict {
            while self.cursor < script.interactions.len()
                && (self.used[self.cursor] || script.interactions[self.cursor].reply.is_none())
            {
                self.cursor += 1;
            }
            script
                .interactions
                .get(self.cursor)
                .filter(|it| it.stage == slot.0 && it.key == slot.1)
                .map(|_| self.cursor)
        } else {
            self.queues.get_mut(&slot).and_then(VecDeque::pop_front)
        };
        if let Some(i) = fresh {
            self.used[i] = true;
            self.last.insert(slot, i);
            return Some(Taken::Fresh(i));
        }
        if reuse {
            return self.last.get(&slot).map(|&i| Taken::Reused(i));
        }
        None
    }
}

/// State shared by every connection of one [`serve`] call.
struct Shared {
    script: Arc<Script>,
    opts: ServeOptions,
    pool: Mutex<Pool>,
    report: Mutex<ServeReport>,
}

impl Shared {
    fn tally(&self, f: impl FnOnce(&mut ServeReport)) {
        f(&mut self.report.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn take(&self, stage: Stage, key: String, reuse: bool) -> Option<Taken> {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(&self.script, stage, key, self.opts.strict_order, reuse)
    }
}

/// Serves clients from `script` on `listener` until `shutdown.stop_accepting` fires (or,
/// with [`ServeOptions::once`], the first client has gone) and every connection has ended
/// (`shutdown.close_all` closes them at once). Returns what was answered, missed and left
/// unused.
pub async fn serve(
    listener: Listener,
    script: Arc<Script>,
    opts: ServeOptions,
    shutdown: Shutdown,
) -> Result<ServeReport, ServeError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let once = opts.once;
    let shared = Arc::new(Shared {
        pool: Mutex::new(Pool::new(&script)),
        script,
        opts,
        report: Mutex::new(ServeReport::default()),
    });
    let accepted = accept_clients(listener, &shutdown, once, |conn, client| {
        connection(conn, client, shared.clone(), shutdown.close_all.clone())
    })
    .await
    .map_err(|source| ServeError::Accept {
        addr: addr.clone(),
        source,
    })?;
    let mut report = shared
        .report
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    report.connections = accepted;
    let pool = shared.pool.lock().unwrap_or_else(PoisonError::into_inner);
    for (i, it) in shared.script.answerable() {
        report.recorded += 1;
        if !pool.used[i] {
            report.unused.push(Unused {
                conn: it.conn,
                seq: it.seq,
                line: it.line,
                command: it.name.clone(),
            });
        }
    }
    Ok(report)
}

/// An accepted client socket; the mock reads and writes it as a tokio stream.
type Sock = Accepted;

impl Sock {
    /// Reads bytes; on a UNIX socket any file descriptors that came with them are received
    /// and closed (counted in `fds`).
    async fn recv(&self, buf: &mut [u8], fds: &mut u64) -> io::Result<usize> {
        match self {
            Accepted::Unix(s) => {
                let raw = s.as_raw_fd();
                s.async_io(Interest::READABLE, || recv_closing_fds(raw, buf, fds))
                    .await
            }
            Accepted::Tcp(s) => loop {
                s.readable().await?;
                match s.try_read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return r,
                }
            },
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let r = match self {
                Accepted::Unix(s) => {
                    s.writable().await?;
                    s.try_write(buf)
                }
                Accepted::Tcp(s) => {
                    s.writable().await?;
                    s.try_write(buf)
                }
            };
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One non-blocking `recvmsg`; descriptors received are closed at once, because a mock has
/// nothing to do with them, and leaving them in the socket would not close them sooner.
fn recv_closing_fds(fd: RawFd, buf: &mut [u8], count: &mut u64) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for raw_fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for us
                // (SCM_RIGHTS); nothing else owns it, so wrapping it transfers ownership
                // and dropping it closes it.
                drop(unsafe { OwnedFd::from_raw_fd(raw_fd) });
                *count += 1;
            }
        }
    }
    Ok(msg.bytes)
}

/// Bytes to write, not before `due` (`None`: as soon as what precedes them is written).
struct Out {
    due: Option<Instant>,
    bytes: Vec<u8>,
}

/// What one read's frames produced, in order.
#[derive(Default)]
struct Batch {
    items: Vec<Out>,
}

impl Batch {
    fn push(&mut self, due: Option<Instant>, bytes: Vec<u8>) {
        if due.is_none()
            && let Some(last) = self.items.last_mut()
            && last.due.is_none()
        {
            last.bytes.extend_from_slice(&bytes);
            return;
        }
        self.items.push(Out { due, bytes });
    }

    /// The buffer of immediate output to append to.
    fn now(&mut self) -> &mut Vec<u8> {
        let n = self.items.len();
        if n == 0 || self.items[n - 1].due.is_some() {
            self.items.push(Out {
                due: None,
                bytes: Vec::new(),
            });
        }
        let last = self.items.len() - 1;
        &mut self.items[last].bytes
    }
}

/// Writes a connection's output in order, each item not before it is due. Once the client
/// has gone (`gone`), output not yet due is dropped, as QEMU drops events for absent clients.
async fn write_loop(
    sock: Arc<Sock>,
    mut rx: mpsc::Receiver<Out>,
    gone: CancellationToken,
    close: CancellationToken,
) {
    loop {
        let out = tokio::select! {
            o = rx.recv() => o,
            () = close.cancelled() => None,
        };
        let Some(out) = out else { return };
        if let Some(due) = out.due {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = gone.cancelled() => continue,
                () = close.cancelled() => return,
            }
        }
        if let Err(e) = sock.write_all(&out.bytes).await {
            tracing::debug!(cause = %e, "client went away while being written to");
            return;
        }
    }
}

/// Negotiation state of a live connection.
struct ConnState {
    conn: u64,
    negotiated: bool,
    oob: bool,
    offers_oob: bool,
    /// Stream offset of the lexical error already answered while its recovery was running.
    answered_error: Option<u64>,
}

enum Flow {
    Continue,
    Close,
}

async fn connection(conn: u64, sock: Sock, shared: Arc<Shared>, close: CancellationToken) {
    tracing::info!(conn, "client connected");
    let sock = Arc::new(sock);
    let (tx, rx) = mpsc::channel::<Out>(OUTPUT_QUEUE);
    let gone = CancellationToken::new();
    let writer = tokio::spawn(write_loop(sock.clone(), rx, gone.clone(), close.clone()));
    let index = usize::try_from(conn - 1).unwrap_or(usize::MAX);
    let greeting = shared.script.greeting(index);
    let mut state = ConnState {
        conn,
        negotiated: false,
        oob: false,
        offers_oob: greeting.is_some_and(|g| g.offers_oob),
        answered_error: None,
    };
    if let Some(g) = greeting {
        let mut bytes = g.json.clone().into_bytes();
        bytes.extend_from_slice(b"\r\n");
        let _ = tx.send(Out { due: None, bytes }).await;
    }
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut frames = Vec::new();
    let mut fds = 0u64;
    'read: loop {
        let n = tokio::select! {
            r = sock.recv(&mut buf, &mut fds) => r,
            () = close.cancelled() => break,
        };
        let n = match n {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(conn, cause = %e, "reading the client failed");
                break;
            }
        };
        decoder.feed(&buf[..n], &mut frames);
        let mut batch = Batch::default();
        let mut flow = Flow::Continue;
        for frame in frames.drain(..) {
            flow = on_frame(&shared, &mut state, &frame, &mut batch);
            if matches!(flow, Flow::Close) {
                break;
            }
        }
        // QEMU answers a lexical error at the offending byte, while it still skips what
        // follows: so does the mock, without waiting for the frame to end.
        if let Some((offset, bytes, at)) = decoder.recovering_from() {
            if state.answered_error != Some(offset) {
                state.answered_error = Some(offset);
                lexical_error(&shared, &stray(bytes, at), &mut batch);
            }
        }
        for out in batch.items {
            if tx.send(out).await.is_err() {
                break 'read;
            }
        }
        if matches!(flow, Flow::Close) {
            tracing::info!(conn, "closing the connection on a miss (--on-miss close)");
            break;
        }
    }
    // QEMU drops a closed connection's state and never sends it events; so does the mock.
    gone.cancel();
    drop(tx);
    let _ = writer.await;
    tracing::info!(conn, fds_closed = fds, "client gone");
}

/// QEMU's answer to a lexical error.
fn lexical_error(shared: &Shared, stray: &str, out: &mut Batch) {
    shared.tally(|r| r.by_rule += 1);
    error_reply(
        None,
        "GenericError",
        &format!("JSON parse error, stray '{stray}'"),
        out.now(),
    );
}

/// Answers one client frame.
fn on_frame(shared: &Shared, state: &mut ConnState, frame: &Frame, out: &mut Batch) -> Flow {
    let error = |out: &mut Batch, desc: &str| {
        shared.tally(|r| r.by_rule += 1);
        error_reply(None, "GenericError", desc, out.now());
    };
    match &frame.kind {
        FrameKind::Truncated => {}
        FrameKind::Invalid { at, .. } => {
            // Unless it was answered while its recovery was still running.
            if state.answered_error != Some(frame.offset + *at as u64) {
                lexical_error(shared, &stray(&frame.bytes, *at), out);
            }
        }
        FrameKind::Limit(limit) => error(
            out,
            match limit {
                LimitKind::MessageSize => "JSON token size limit exceeded",
                LimitKind::TokenCount => "JSON token count limit exceeded",
                LimitKind::Depth => "JSON nesting depth limit exceeded",
            },
        ),
        FrameKind::Message => {
            let message = Message::classify(frame);
            match message.value {
                None => error(
                    out,
                    &format!("JSON parse error, {}", parse_error(&frame.bytes, &message)),
                ),
                Some(Value::Object(map)) => return on_object(shared, state, &map, out),
                Some(_) => error(out, "QMP input must be a JSON object"),
            }
        }
    }
    Flow::Continue
}

/// QEMU's checks of a request object (`qmp_dispatch_check_obj`), in its order.
fn check_request(map: &Map<String, Value>, allow_oob: bool) -> Result<(String, bool), String> {
    for (key, value) in map {
        match key.as_str() {
            "execute" | "exec-oob" if key == "execute" || allow_oob => {
                if !value.is_string() {
                    return Err(format!("QMP input member '{key}' must be a string"));
                }
            }
            "arguments" => {
                if !value.is_object() {
                    return Err("QMP input member 'arguments' must be an object".to_owned());
                }
            }
            "id" => {}
            other => return Err(format!("QMP input member '{other}' is unexpected")),
        }
    }
    let execute = map.get("execute").and_then(Value::as_str);
    let oob = map.get("exec-oob").and_then(Value::as_str);
    match (execute, oob) {
        (Some(_), Some(_)) => Err("QMP input member 'execute' clashes with 'exec-oob'".to_owned()),
        (Some(name), None) => Ok((name.to_owned(), false)),
        (None, Some(name)) => Ok((name.to_owned(), true)),
        (None, None) => Err("QMP input lacks member 'execute'".to_owned()),
    }
}

fn on_object(
    shared: &Shared,
    state: &mut ConnState,
    map: &Map<String, Value>,
    out: &mut Batch,
) -> Flow {
    let id = map.get("id");
    let (name, oob) = match check_request(map, state.oob) {
        Ok(found) => found,
        Err(desc) => {
            // As with negotiation errors below: a recorded instance of the same mistake is
            // used up, so that it is not reported as unused.
            let named = map
                .get("execute")
                .or_else(|| map.get("exec-oob"))
                .and_then(Value::as_str);
            if let Some(name) = named {
                let key = command_key(&shared.script.normalizer, name, &Value::Object(map.clone()));
                let when = if state.negotiated {
                    Stage::Negotiated
                } else {
                    Stage::Negotiation
                };
                let _ = shared.take(when, key, false);
            }
            shared.tally(|r| r.by_rule += 1);
            error_reply(id, "GenericError", &desc, out.now());
            return Flow::Continue;
        }
    };
    let command = Value::Object(map.clone());
    let key = command_key(&shared.script.normalizer, &name, &command);
    let capabilities = name == "qmp_capabilities" && !oob;
    if !state.negotiated && !capabilities {
        // A recorded instance of the same mistake is used up, so that it is not reported
        // as unused; the answer is QEMU's rule either way.
        let _ = shared.take(Stage::Negotiation, key, false);
        shared.tally(|r| r.by_rule += 1);
        error_reply(
            id,
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
            out.now(),
        );
        return Flow::Continue;
    }
    if state.negotiated && capabilities {
        let _ = shared.take(Stage::Negotiated, key, false);
        shared.tally(|r| r.by_rule += 1);
        error_reply(
            id,
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored",
            out.now(),
        );
        return Flow::Continue;
    }
    let enables_oob = || {
        command
            .pointer("/arguments/enable")
            .and_then(Value::as_array)
            .is_some_and(|caps| caps.iter().any(|c| c == "oob"))
    };
    let current = if state.negotiated {
        Stage::Negotiated
    } else {
        Stage::Negotiation
    };
    let now = Instant::now();
    match shared.take(current, key, shared.opts.reuse) {
        Some(taken) => {
            let (index, reused) = match taken {
                Taken::Fresh(i) => (i, false),
                Taken::Reused(i) => (i, true),
            };
            shared.tally(|r| {
                r.answered += 1;
                r.reused += u64::from(reused);
            });
            let it = &shared.script.interactions[index];
            if capabilities && it.reply.as_ref().is_some_and(|r| r.kind == Kind::Return) {
                state.negotiated = true;
                state.oob = enables_oob();
            }
            answer(shared.opts.pace, it, id, now, out);
        }
        None if capabilities => {
            // Negotiation the recording does not hold: accept it as QEMU would.
            shared.tally(|r| r.by_rule += 1);
            if enables_oob() && !state.offers_oob {
                error_reply(
                    id,
                    "GenericError",
                    "Capability oob not available",
                    out.now(),
                );
            } else {
                state.negotiated = true;
                state.oob = enables_oob();
                return_reply(id, out.now());
            }
        }
        None => return miss(shared, state, &name, &command, id, out),
    }
    Flow::Continue
}

/// Sends an interaction's reply and events, in their recorded order.
fn answer(pace: Pace, it: &Interaction, id: Option<&Value>, now: Instant, out: &mut Batch) {
    let Some(reply) = &it.reply else { return };
    let id_json = id.map(qemu_json);
    let due = |us: i64| delay(pace, us).map(|d| now + d);
    let event = |e: &RecordedEvent, out: &mut Batch| {
        let delay = delay(pace, e.offset_us).unwrap_or_default();
        let stamp = timestamp(SystemTime::now() + delay);
        let mut bytes = Vec::with_capacity(e.json.len() + 16);
        e.template
            .render("timestamp", Some(&stamp), true, &mut bytes);
        out.push(due(e.offset_us), bytes);
    };
    for e in it.events.iter().filter(|e| e.before_reply) {
        event(e, out);
    }
    let mut bytes = Vec::with_capacity(reply.json.len() + 32);
    reply.template.render(
        "id",
        id_json.as_deref(),
        reply.kind == Kind::Error,
        &mut bytes,
    );
    out.push(due(reply.latency_us), bytes);
    for e in it.events.iter().filter(|e| !e.before_reply) {
        event(e, out);
    }
}

fn miss(
    shared: &Shared,
    state: &ConnState,
    name: &str,
    command: &Value,
    id: Option<&Value>,
    out: &mut Batch,
) -> Flow {
    let script = &shared.script;
    let nearest = script.nearest(name, command).map(|i| {
        let it = &script.interactions[i];
        let args = it
            .command
            .get("arguments")
            .map_or_else(|| "{}".to_owned(), Value::to_string);
        let mut text = format!("{} {args}", it.name);
        if it.key == command_key(&script.normalizer, name, command) {
            text.push_str(" (its recorded replies are all used)");
        }
        text
    });
    tracing::warn!(conn = state.conn, command = name, nearest = ?nearest, "no recorded reply");
    shared.tally(|r| {
        r.misses += 1;
        if r.missed.len() < MAX_REPORTED_MISSES {
            r.missed.push(Miss {
                conn: state.conn,
                command: name.to_owned(),
                json: command.to_string(),
                nearest: nearest.clone(),
            });
        }
    });
    match shared.opts.on_miss {
        OnMiss::Close => Flow::Close,
        OnMiss::Error => {
            let order = if shared.opts.strict_order {
                " at this point of the recorded order"
            } else {
                ""
            };
            let desc = format!(
                "qmptap serve: no recorded reply for '{name}' with these arguments{order}; nearest recorded: {}",
                nearest.as_deref().unwrap_or("none")
            );
            error_reply(id, "GenericError", &desc, out.now());
            Flow::Continue
        }
    }
}

/// QEMU's event timestamp for a time.
fn timestamp(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!(
            "{{\"seconds\": {}, \"microseconds\": {}}}",
            d.as_secs(),
            d.subsec_micros()
        ),
        // QEMU's value when the host time is unavailable.
        Err(_) => "{\"seconds\": -1, \"microseconds\": -1}".to_owned(),
    }
}

/// `{"return": {}}` with the client's id, as QEMU writes it.
fn return_reply(id: Option<&Value>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"return\": {}");
    if let Some(id) = id {
        out.extend_from_slice(b", \"id\": ");
        out.extend_from_slice(qemu_json(id).as_bytes());
    }
    out.extend_from_slice(b"}\r\n");
}

/// An error reply as QEMU writes it: `id` first when there is one.
fn error_reply(id: Option<&Value>, class: &str, desc: &str, out: &mut Vec<u8>) {
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\": ");
        out.extend_from_slice(qemu_json(id).as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"\"error\": {\"class\": ");
    out.extend_from_slice(qemu_string(class).as_bytes());
    out.extend_from_slice(b", \"desc\": ");
    out.extend_from_slice(qemu_string(desc).as_bytes());
    out.extend_from_slice(b"}}\r\n");
}

/// JSON as QEMU's formatter writes it: `": "` and `", "` separators, ASCII only.
fn qemu_json(v: &Value) -> String {
    let mut out = String::new();
    write_qemu_json(v, &mut out);
    out
}

fn write_qemu_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&qemu_string(k));
                out.push_str(": ");
                write_qemu_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_qemu_json(item, out);
            }
            out.push(']');
        }
        Value::String(s) => out.push_str(&qemu_string(s)),
        other => out.push_str(&other.to_string()),
    }
}

/// A string as QEMU's `to_json` quotes it: control characters and everything outside
/// ASCII as `\u` and four upper-case hex digits (surrogate pairs above the BMP).
fn qemu_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (' '..'\u{7f}').contains(&c) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// The token QEMU's lexer rejected: from the start of the token being lexed to the offending
/// byte, included (QEMU's `JSON parse error, stray '%s'`).
fn stray(bytes: &[u8], at: usize) -> String {
    let Some(upto) = bytes.get(..=at) else {
        return String::new();
    };
    let mut start = 0;
    while start <= at {
        match lexer::token(&upto[start..]) {
            Ok((rest, _)) => {
                let end = upto.len() - rest.len();
                if end <= start {
                    break;
                }
                start = end;
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(upto.get(start..).unwrap_or_default()).into_owned()
}

/// Why QEMU's JSON parser rejects a frame its lexer accepted, in QEMU's words
/// (`qobject/json-parser.c`): the first error in parse order.
fn parse_error(bytes: &[u8], message: &Message) -> String {
    if message.json.is_some() {
        // Valid JSON that QEMU still rejects: the only such case is a repeated key.
        return "duplicate key".to_owned();
    }
    let mut tokens: Vec<(Token, &[u8])> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match lexer::token(&bytes[pos..]) {
            Ok((rest, token)) => {
                let end = bytes.len() - rest.len();
                if token != Token::Whitespace {
                    tokens.push((token, &bytes[pos..end]));
                }
                pos = end;
            }
            Err(nom::Err::Incomplete(_)) => {
                // The frame ended the token (numbers and keywords end by lookahead).
                let rest = &bytes[pos..];
                let token = if rest.first().is_some_and(u8::is_ascii_lowercase) {
                    Token::Keyword
                } else {
                    Token::Integer
                };
                tokens.push((token, rest));
                break;
            }
            Err(_) => break,
        }
    }
    Parser {
        tokens: &tokens,
        next: 0,
    }
    .run()
    .err()
    .unwrap_or_else(|| "expecting value".to_owned())
}

/// A validating walk over tokens with QEMU's parser's error messages. Iterative, because
/// QEMU accepts 1024 levels of nesting.
struct Parser<'a> {
    tokens: &'a [(Token, &'a [u8])],
    next: usize,
}

enum Open {
    /// Inside an object: after `{` or `,` (a pair is due), or after a pair.
    Object { pair_done: bool },
    /// Inside an array: after `[` (a value or `]`), after `,` (a value), or after a value.
    Array { first: bool, value_done: bool },
}

impl Parser<'_> {
    fn pop(&mut self) -> Option<(Token, &[u8])> {
        let t = self.tokens.get(self.next).copied();
        self.next += 1;
        t
    }

    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.next).map(|t| t.0)
    }

    /// Parses a scalar, or opens a container onto `stack`.
    fn value(&mut self, stack: &mut Vec<Open>) -> Result<(), String> {
        let Some((token, text)) = self.pop() else {
            return Err("premature EOI".to_owned());
        };
        match token {
            Token::LCurly => {
                if self.peek() == Some(Token::RCurly) {
                    self.next += 1;
                } else {
                    stack.push(Open::Object { pair_done: false });
                }
                Ok(())
            }
            Token::LSquare => {
                stack.push(Open::Array {
                    first: true,
                    value_done: false,
                });
                Ok(())
            }
            Token::String { quote } => string_ok(text, quote),
            Token::Integer | Token::Float => Ok(()),
            Token::Keyword => match text {
                b"true" | b"false" | b"null" => Ok(()),
                _ => Err(format!(
                    "invalid keyword '{}'",
                    String::from_utf8_lossy(text)
                )),
            },
            _ => Err("expecting value".to_owned()),
        }
    }

    fn run(mut self) -> Result<(), String> {
        let mut stack = Vec::new();
        self.value(&mut stack)?;
        while let Some(top) = stack.pop() {
            match top {
                Open::Object { pair_done: false } => {
                    match self.pop() {
                        None => return Err("premature EOI".to_owned()),
                        Some((Token::String { quote }, text)) => string_ok(text, quote)?,
                        Some(_) => {
                            // QEMU parses the key as a value first, so a bad value wins.
                            self.next -= 1;
                            let mut scratch = Vec::new();
                            self.value(&mut scratch)?;
                            return Err("key is not a string in object".to_owned());
                        }
                    }
                    match self.pop() {
                        None => return Err("premature EOI".to_owned()),
                        Some((Token::Colon, _)) => {}
                        Some(_) => return Err("missing : in object pair".to_owned()),
                    }
                    stack.push(Open::Object { pair_done: true });
                    self.value(&mut stack)?;
                }
                Open::Object { pair_done: true } => match self.pop() {
                    None => return Err("premature EOI".to_owned()),
                    Some((Token::RCurly, _)) => {}
                    Some((Token::Comma, _)) => stack.push(Open::Object { pair_done: false }),
                    Some(_) => return Err("expected separator in dict".to_owned()),
                },
                Open::Array {
                    first,
                    value_done: false,
                } => {
                    if first && self.peek() == Some(Token::RSquare) {
                        self.next += 1;
                        continue;
                    }
                    stack.push(Open::Array {
                        first: false,
                        value_done: true,
                    });
                    self.value(&mut stack)?;
                }
                Open::Array {
                    value_done: true, ..
                } => match self.pop() {
                    None => return Err("premature EOI".to_owned()),
                    Some((Token::RSquare, _)) => {}
                    Some((Token::Comma, _)) => stack.push(Open::Array {
                        first: false,
                        value_done: false,
                    }),
                    Some(_) => return Err("expected separator in list".to_owned()),
                },
            }
        }
        Ok(())
    }
}

/// Whether QEMU's parser accepts a string token's escapes and encoding.
fn string_ok(text: &[u8], quote: u8) -> Result<(), String> {
    if std::str::from_utf8(text).is_err() {
        return Err("invalid UTF-8 sequence in string".to_owned());
    }
    if quote == b'"' && serde_json::from_slice::<String>(text).is_err() {
        return Err("invalid escape sequence in string".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, member: &str, json: Option<&str>, first: bool) -> String {
        let mut out = Vec::new();
        Template::new(text, member)
            .unwrap()
            .render(member, json, first, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ids_are_replaced_removed_or_placed_where_qemu_puts_them() {
        let ret = r#"{"return": {"a": [1, {"id": 2}]}, "id": "__qmp#00003"}"#;
        assert_eq!(
            render(ret, "id", Some("7"), false),
            "{\"return\": {\"a\": [1, {\"id\": 2}]}, \"id\": 7}\r\n"
        );
        assert_eq!(
            render(ret, "id", None, false),
            "{\"return\": {\"a\": [1, {\"id\": 2}]}}\r\n"
        );
        let err = r#"{"id": "x", "error": {"class": "C", "desc": "d"}}"#;
        assert_eq!(
            render(err, "id", None, true),
            "{\"error\": {\"class\": \"C\", \"desc\": \"d\"}}\r\n"
        );
        assert_eq!(
            render(r#"{"error": {"class": "C"}}"#, "id", Some("\"a\""), true),
            "{\"id\": \"a\", \"error\": {\"class\": \"C\"}}\r\n"
        );
        assert_eq!(
            render(r#"{"return": {}}"#, "id", Some("1"), false),
            "{\"return\": {}, \"id\": 1}\r\n"
        );
    }

    #[test]
    fn strings_are_quoted_like_qemu() {
        assert_eq!(
            qemu_string("a\"\\\u{1}é😀"),
            r#""a\"\\\u0001\u00E9\uD83D\uDE00""#
        );
        assert_eq!(
            qemu_json(&serde_json::json!({"b": [1, 2.5], "a": null})),
            r#"{"b": [1, 2.5], "a": null}"#
        );
    }

    #[test]
    fn parse_errors_name_what_qemu_names() {
        assert_eq!(stray(b"GARBAGE", 0), "G");
        assert_eq!(stray(b"{\"a\": 1.x", 8), "1.x");
        assert_eq!(stray(b"{\"a\":  \x01", 7), "\u{1}");
        let error =
            |text: &str| parse_error(text.as_bytes(), &Message::from_bytes(text.as_bytes()));
        assert_eq!(error(r#"{"a": 1, "a": 2}"#), "duplicate key");
        assert_eq!(error(r#"{"a": tru}"#), "invalid keyword 'tru'");
        assert_eq!(error(r#"{"a" 1}"#), "missing : in object pair");
        assert_eq!(error("{1: 2}"), "key is not a string in object");
        assert_eq!(error("[1 2]"), "expected separator in list");
        assert_eq!(error(r#"{"a": [1,]}"#), "expecting value");
        assert_eq!(error("}"), "expecting value");
    }

    #[test]
    fn closest_names() {
        assert_eq!(edit_distance("query-nam", "query-name"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("stop", "stop"), 0);
    }
}
