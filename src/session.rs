//! The session model: connections, their ordered messages, and command ↔ reply pairing.
//!
//! Pairing lives here once; every consumer (show, check, replay, diff, analysis, the TUI)
//! reads it instead of re-pairing. [`Tracker`] pairs a stream of records incrementally, with
//! memory proportional to the commands still awaiting replies; [`Session`] collects a whole
//! capture on top of it.
//!
//! QMP's rules it implements: in-band replies come strictly in order, so they pair first in
//! first out; every frame a client sends gets exactly one reply, including frames QEMU could
//! not parse (their error replies carry no `id`), so invalid frames take their place in the
//! queue; out-of-band commands (`exec-oob`) may be answered out of order and are matched by
//! their `id`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::capture::{
    Close, Dir, FrameError, Header, Located, Msg, Open, Origin, Reader, Record, Time,
};
use crate::wire::Kind;

/// A client frame still waiting for its reply.
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    t: Time,
    name: Option<String>,
    id: Option<serde_json::Value>,
    oob: bool,
    origin: Origin,
}

/// What a message is in its connection's conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// A client frame that will get a reply.
    Request,
    /// A reply, and the request it answers.
    Reply {
        /// `seq` of the request.
        request_seq: u64,
        /// The request's `id`, which the reply should echo.
        request_id: Option<serde_json::Value>,
        /// The request's command name (None for a frame that was not a command).
        command: Option<String>,
        /// Microseconds from request to reply.
        latency_us: i64,
        /// Who sent the request: the client, or the proxy polling on its own (whose replies
        /// the client never saw).
        origin: Origin,
    },
    /// A reply that answers nothing the client sent (a protocol error).
    UnpairedReply,
    /// Anything else: greeting, event, a client frame cut short by the connection's end.
    Other,
}

/// The members pairing needs, read without building the rest of the message (a reply can be
/// hundreds of kilobytes, and the recording proxy pairs while it relays).
#[derive(Debug, Default, serde::Deserialize)]
struct Head {
    /// Present even when `null` (QEMU echoes any id, null included).
    #[serde(default, deserialize_with = "present")]
    id: Option<serde_json::Value>,
    #[serde(default, rename = "exec-oob")]
    oob: Option<serde::de::IgnoredAny>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

impl Head {
    fn of(m: &Msg) -> Head {
        let Some(json) = &m.json else {
            return Head::default();
        };
        serde_json::from_str(json.get()).unwrap_or_else(|_| {
            // Duplicate members, which serde refuses for a struct: the last one wins, as in
            // a parsed value.
            let v = m.value();
            Head {
                id: v.as_ref().and_then(|v| v.get("id")).cloned(),
                oob: v
                    .as_ref()
                    .and_then(|v| v.get("exec-oob"))
                    .map(|_| serde::de::IgnoredAny),
            }
        })
    }
}

#[derive(Debug, Default)]
struct ConnState {
    pending: VecDeque<Pending>,
}

/// Pairs requests and replies as records stream past.
#[derive(Debug, Default)]
pub struct Tracker {
    conns: HashMap<u64, ConnState>,
}

impl Tracker {
    /// A tracker with no connections.
    pub fn new() -> Self {
        Tracker::default()
    }

    /// Feeds one record; for a message, says what it is in its conversation.
    pub fn observe(&mut self, record: &Record) -> Role {
        match record {
            Record::Msg(m) => self.observe_msg(m),
            Record::Close(c) => {
                self.conns.remove(&c.conn);
                Role::Other
            }
            Record::Open(o) => {
                self.conns.insert(o.conn, ConnState::default());
                Role::Other
            }
            Record::Header(_) | Record::Gap(_) => Role::Other,
        }
    }

    /// Who sent the request that an in-band reply arriving now on `conn` would answer (the
    /// oldest in-band request still unanswered), or `None` when nothing is awaiting a reply.
    ///
    /// The recording proxy routes replies with this: QEMU answers in-band commands strictly
    /// in order, so only when the proxy's own command is next can the next reply be the
    /// proxy's. (Out-of-band replies are matched by id; the proxy never sends `exec-oob`.)
    pub fn next_reply_origin(&self, conn: u64) -> Option<Origin> {
        let pending = &self.conns.get(&conn)?.pending;
        pending
            .iter()
            .find(|p| !p.oob)
            .or_else(|| pending.front())
            .map(|p| p.origin)
    }

    /// Feeds one message.
    pub fn observe_msg(&mut self, m: &Msg) -> Role {
        let state = self.conns.entry(m.conn).or_default();
        match m.dir {
            Dir::C2s => {
                // A frame cut short by the end of the connection never reaches QEMU's parser.
                if m.frame == Some(FrameError::Truncated) {
                    return Role::Other;
                }
                let (id, oob) = if m.kind == Kind::Command {
                    let head = Head::of(m);
                    (head.id, head.oob.is_some())
                } else {
                    (None, false)
                };
                state.pending.push_back(Pending {
                    seq: m.seq,
                    t: m.t,
                    name: m.name.clone(),
                    id,
                    oob,
                    origin: m.origin,
                });
                Role::Request
            }
            Dir::S2c => {
                if !matches!(m.kind, Kind::Return | Kind::Error) {
                    return Role::Other;
                }
                // Only out-of-band commands are matched by id: with none pending, the reply's
                // id is not needed (and a large reply is not parsed for it).
                let id = if state.pending.iter().any(|p| p.oob) {
                    Head::of(m).id
                } else {
                    None
                };
                let index = match &id {
                    // An out-of-band command answered out of order is matched by its id.
                    Some(id) => state
                        .pending
                        .iter()
                        .position(|p| p.oob && p.id.as_ref() == Some(id))
                        .or_else(|| state.pending.iter().position(|p| !p.oob)),
                    None => state.pending.iter().position(|p| !p.oob),
                }
                .or(if state.pending.is_empty() {
                    None
                } else {
                    Some(0)
                });
                match index.and_then(|i| state.pending.remove(i)) {
                    Some(p) => Role::Reply {
                        request_seq: p.seq,
                        request_id: p.id,
                        command: p.name,
                        latency_us: m.t.micros_since(p.t),
                        origin: p.origin,
                    },
                    None => Role::UnpairedReply,
                }
            }
        }
    }
}

/// A request and its reply, as indexes into [`Connection::messages`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Index of the request.
    pub request: usize,
    /// Index of the reply, if one came.
    pub reply: Option<usize>,
    /// Microseconds from request to reply.
    pub latency_us: Option<i64>,
}

/// One client connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// Connection id.
    pub conn: u64,
    /// The open record, if the capture has it.
    pub open: Option<Open>,
    /// The close record, if the connection ended within the capture.
    pub close: Option<Close>,
    /// Messages in causal order.
    pub messages: Vec<Msg>,
    /// Capture line of each message.
    pub lines: Vec<u64>,
    /// Requests in order, with their replies.
    pub transactions: Vec<Transaction>,
    /// Replies that answer nothing, as indexes into `messages`.
    pub unpaired_replies: Vec<usize>,
}

/// A whole capture in memory. Use [`Tracker`] and [`Reader`] directly to stream large ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The capture's header.
    pub header: Header,
    /// Connections by id.
    pub connections: BTreeMap<u64, Connection>,
    /// Records lost while recording (sum of gap records).
    pub lost: u64,
}

impl Session {
    /// Reads every record of a capture.
    pub fn load(mut reader: Reader) -> Result<Session, crate::capture::CaptureError> {
        let header = reader.header().clone();
        let mut session = Session {
            header,
            connections: BTreeMap::new(),
            lost: 0,
        };
        let mut tracker = Tracker::new();
        for located in reader.by_ref() {
            session.add(&mut tracker, located?);
        }
        Ok(session)
    }

    fn connection(&mut self, conn: u64) -> &mut Connection {
        self.connections.entry(conn).or_insert_with(|| Connection {
            conn,
            open: None,
            close: None,
            messages: Vec::new(),
            lines: Vec::new(),
            transactions: Vec::new(),
            unpaired_replies: Vec::new(),
        })
    }

    fn add(&mut self, tracker: &mut Tracker, Located { line, record }: Located) {
        let role = tracker.observe(&record);
        match record {
            Record::Header(_) => {}
            Record::Gap(g) => self.lost += g.lost,
            Record::Open(o) => {
                let conn = o.conn;
                self.connection(conn).open = Some(o);
            }
            Record::Close(c) => {
                let conn = c.conn;
                self.connection(conn).close = Some(c);
            }
            Record::Msg(m) => {
                let c = self.connection(m.conn);
                let index = c.messages.len();
                c.messages.push(m);
                c.lines.push(line);
                match role {
                    Role::Request => c.transactions.push(Transaction {
                        request: index,
                        reply: None,
                        latency_us: None,
                    }),
                    Role::Reply {
                        request_seq,
                        latency_us,
                        ..
                    } => {
                        let request = c
                            .transactions
                            .iter_mut()
                            .rev()
                            .find(|t| c.messages[t.request].seq == request_seq);
                        if let Some(t) = request {
                            t.reply = Some(index);
                            t.latency_us = Some(latency_us);
                        }
                    }
                    Role::UnpairedReply => c.unpaired_replies.push(index),
                    Role::Other => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, FrameKind};

    fn msg(seq: u64, dir: Dir, text: &str, origin: Origin) -> Msg {
        let frame = Frame {
            kind: FrameKind::Message,
            bytes: text.as_bytes().to_vec(),
            offset: 0,
            len: text.len() as u64,
        };
        let mut m = Msg::from_frame(1, seq, Time::now(), dir, &frame, 0);
        m.origin = origin;
        m
    }

    fn answered(role: &Role) -> Option<(u64, Origin)> {
        match role {
            Role::Reply {
                request_seq,
                origin,
                ..
            } => Some((*request_seq, *origin)),
            _ => None,
        }
    }

    #[test]
    fn proxy_requests_take_their_place_in_the_in_band_queue() {
        let mut t = Tracker::new();
        assert_eq!(t.next_reply_origin(1), None);
        let client = r#"{"execute": "query-status", "id": 7}"#;
        let poll = r#"{"execute": "query-migrate", "id": {"qmptap-poll": 1}}"#;
        assert_eq!(
            t.observe_msg(&msg(1, Dir::C2s, client, Origin::Peer)),
            Role::Request
        );
        t.observe_msg(&msg(2, Dir::C2s, poll, Origin::Proxy));
        t.observe_msg(&msg(3, Dir::C2s, "GARBAGE", Origin::Peer));
        assert_eq!(t.next_reply_origin(1), Some(Origin::Peer));
        let r = t.observe_msg(&msg(
            4,
            Dir::S2c,
            r#"{"return": {}, "id": 7}"#,
            Origin::Peer,
        ));
        assert_eq!(answered(&r), Some((1, Origin::Peer)));
        assert_eq!(t.next_reply_origin(1), Some(Origin::Proxy));
        // An event between replies answers nothing.
        let event = r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#;
        assert_eq!(
            t.observe_msg(&msg(5, Dir::S2c, event, Origin::Peer)),
            Role::Other
        );
        let r = t.observe_msg(&msg(
            6,
            Dir::S2c,
            r#"{"return": {}, "id": {"qmptap-poll": 1}}"#,
            Origin::Proxy,
        ));
        assert_eq!(answered(&r), Some((2, Origin::Proxy)));
        // The parse error has no id and answers the garbage, in order.
        let r = t.observe_msg(&msg(
            7,
            Dir::S2c,
            r#"{"error": {"class": "GenericError", "desc": "JSON parse error, stray 'G'"}}"#,
            Origin::Peer,
        ));
        assert_eq!(answered(&r), Some((3, Origin::Peer)));
        assert_eq!(t.next_reply_origin(1), None);
    }

    #[test]
    fn out_of_band_replies_do_not_hide_the_in_band_head() {
        let mut t = Tracker::new();
        t.observe_msg(&msg(
            1,
            Dir::C2s,
            r#"{"exec-oob": "migrate-pause", "id": "oob-1"}"#,
            Origin::Peer,
        ));
        t.observe_msg(&msg(
            2,
            Dir::C2s,
            r#"{"execute": "query-migrate", "id": {"qmptap-poll": 1}}"#,
            Origin::Proxy,
        ));
        assert_eq!(t.next_reply_origin(1), Some(Origin::Proxy));
        let r = t.observe_msg(&msg(
            3,
            Dir::S2c,
            r#"{"return": {}, "id": "oob-1"}"#,
            Origin::Peer,
        ));
        assert_eq!(answered(&r), Some((1, Origin::Peer)));
        let r = t.observe_msg(&msg(
            4,
            Dir::S2c,
            r#"{"return": {"status": "active"}, "id": {"qmptap-poll": 1}}"#,
            Origin::Proxy,
        ));
        assert_eq!(answered(&r), Some((2, Origin::Proxy)));
    }

    #[test]
    fn a_null_id_is_an_id() {
        let mut t = Tracker::new();
        t.observe_msg(&msg(
            1,
            Dir::C2s,
            r#"{"execute": "stop", "id": null}"#,
            Origin::Peer,
        ));
        let r = t.observe_msg(&msg(
            2,
            Dir::S2c,
            r#"{"return": {}, "id": null}"#,
            Origin::Peer,
        ));
        let Role::Reply { request_id, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(request_id, Some(serde_json::Value::Null));
    }
}
