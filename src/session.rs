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

use crate::capture::{Close, Dir, FrameError, Header, Located, Msg, Open, Reader, Record, Time};
use crate::wire::Kind;

/// The members pairing needs, read without building the rest of the message (a
/// `query-qmp-schema` reply is hundreds of kilobytes).
#[derive(Debug, Default, serde::Deserialize)]
struct Head {
    id: Option<serde_json::Value>,
    #[serde(rename = "exec-oob")]
    exec_oob: Option<serde::de::IgnoredAny>,
}

impl Head {
    fn of(m: &Msg) -> Head {
        m.json
            .as_ref()
            .and_then(|j| serde_json::from_str(j.get()).ok())
            .unwrap_or_default()
    }
}

/// A client frame still waiting for its reply.
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    t: Time,
    name: Option<String>,
    id: Option<serde_json::Value>,
    oob: bool,
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
    },
    /// A reply that answers nothing the client sent (a protocol error).
    UnpairedReply,
    /// Anything else: greeting, event, a client frame cut short by the connection's end.
    Other,
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
                    (head.id, head.exec_oob.is_some())
                } else {
                    (None, false)
                };
                state.pending.push_back(Pending {
                    seq: m.seq,
                    t: m.t,
                    name: m.name.clone(),
                    id,
                    oob,
                });
                Role::Request
            }
            Dir::S2c => {
                if !matches!(m.kind, Kind::Return | Kind::Error) {
                    return Role::Other;
                }
                let id = Head::of(m).id;
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
