//! Counters: per command, per event, per connection. Memory grows with the number of distinct
//! names and connections, never with the number of messages, so `qmptap stats` streams
//! captures of any size.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::ErrorHead;
use crate::capture::{Dir, Peer, Record, Side, Time};
use crate::session::Role;
use crate::wire::Kind;

/// Latencies above this (one hour, in microseconds) are clamped into the top bucket.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// One command's figures.
#[derive(Debug, Clone)]
pub struct CommandStats {
    /// Times it was sent.
    pub count: u64,
    /// Error replies, by class.
    pub errors: BTreeMap<String, u64>,
    /// Reply latencies in microseconds.
    latency: Histogram<u64>,
}

impl CommandStats {
    fn new() -> Self {
        CommandStats {
            count: 0,
            errors: BTreeMap::new(),
            // Three significant digits up to an hour: a few tens of KiB per command name.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds are valid"),
        }
    }

    /// Error replies of any class.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Replies received.
    pub fn replies(&self) -> u64 {
        self.latency.len()
    }

    /// The latency below which a fraction `q` (0..=1) of the replies came, in microseconds
    /// (to the histogram's three significant digits).
    pub fn latency_us(&self, q: f64) -> Option<u64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q))
    }

    /// The slowest reply, in microseconds.
    pub fn max_latency_us(&self) -> Option<u64> {
        (!self.latency.is_empty()).then(|| self.latency.max())
    }
}

/// One connection's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnStats {
    /// Connection id.
    pub conn: u64,
    /// Who connected.
    pub peer: Option<Peer>,
    /// When it was accepted.
    pub opened: Option<Time>,
    /// When it ended.
    pub closed: Option<Time>,
    /// Who ended it, and why.
    pub closed_by: Option<(Side, String)>,
    /// Last message time (for connections the capture never saw close).
    pub last: Option<Time>,
    /// Messages from the client.
    pub c2s: u64,
    /// Messages from the server.
    pub s2c: u64,
    /// Bytes from the client (from the close record, else the messages' JSON).
    pub c2s_bytes: u64,
    /// Bytes from the server.
    pub s2c_bytes: u64,
}

impl ConnStats {
    /// Microseconds from accept to close (or the last message).
    pub fn duration_us(&self) -> Option<i64> {
        Some(self.closed.or(self.last)?.micros_since(self.opened?))
    }
}

/// All counters.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per command name.
    pub commands: HashMap<String, CommandStats>,
    /// Events per name.
    pub events: HashMap<String, u64>,
    /// Per connection id.
    pub connections: HashMap<u64, ConnStats>,
    /// Messages of every kind.
    pub messages: u64,
    /// Client frames that were not valid JSON.
    pub invalid: u64,
    /// Replies that answered nothing.
    pub unpaired_replies: u64,
    /// Records lost while recording (gap records).
    pub lost: u64,
    /// Messages qmptap's own polls exchanged (`record --poll`): not counted as the client's.
    pub proxy_messages: u64,
    /// First and last time in the capture.
    pub span: Option<(Time, Time)>,
}

impl Stats {
    /// Counts one record.
    pub fn observe(&mut self, record: &Record, role: &Role) {
        match record {
            Record::Header(_) => {}
            Record::Gap(g) => {
                self.lost += g.lost;
                self.widen(g.t);
            }
            Record::Open(o) => {
                let c = self.conn(o.conn);
                c.peer = Some(o.peer.clone());
                c.opened = Some(o.t);
                self.widen(o.t);
            }
            Record::Close(cl) => {
                let c = self.conn(cl.conn);
                c.closed = Some(cl.t);
                c.closed_by = Some((cl.by, cl.reason.clone()));
                c.c2s_bytes = cl.c2s_bytes;
                c.s2c_bytes = cl.s2c_bytes;
                self.widen(cl.t);
            }
            Record::Msg(m) if m.is_proxy() => {
                self.proxy_messages += 1;
                self.widen(m.t);
            }
            Record::Msg(m) => {
                self.messages += 1;
                self.widen(m.t);
                let len = m.json.as_ref().map_or(0, |j| j.get().len()) as u64;
                let c = self.conn(m.conn);
                c.last = Some(m.t);
                match m.dir {
                    Dir::C2s => {
                        c.c2s += 1;
                        if c.closed.is_none() {
                            c.c2s_bytes += len;
                        }
                    }
                    Dir::S2c => {
                        c.s2c += 1;
                        if c.closed.is_none() {
                            c.s2c_bytes += len;
                        }
                    }
                }
                match (m.dir, m.kind) {
                    (Dir::C2s, Kind::Command) => {
                        let name = m.name.as_deref().unwrap_or("?");
                        self.command(name).count += 1;
                    }
                    (Dir::C2s, Kind::Invalid) => self.invalid += 1,
                    (Dir::S2c, Kind::Event) => {
                        let name = m.name.as_deref().unwrap_or_default();
                        match self.events.get_mut(name) {
                            Some(n) => *n += 1,
                            None => {
                                self.events.insert(name.to_owned(), 1);
                            }
                        }
                    }
                    _ => {}
                }
                match role {
                    Role::Reply {
                        command: Some(command),
                        latency_us,
                        ..
                    } => {
                        let class = (m.kind == Kind::Error).then(|| {
                            m.json
                                .as_deref()
                                .and_then(ErrorHead::class_of)
                                .unwrap_or_else(|| "?".to_owned())
                        });
                        let s = self.command(command);
                        let us = (*latency_us).clamp(1, MAX_LATENCY_US as i64) as u64;
                        s.latency.saturating_record(us);
                        if let Some(class) = class {
                            *s.errors.entry(class).or_default() += 1;
                        }
                    }
                    Role::UnpairedReply => self.unpaired_replies += 1,
                    _ => {}
                }
            }
        }
    }

    fn widen(&mut self, t: Time) {
        self.span = Some(match self.span {
            None => (t, t),
            Some((a, b)) => (a.min(t), b.max(t)),
        });
    }

    fn conn(&mut self, conn: u64) -> &mut ConnStats {
        self.connections.entry(conn).or_insert_with(|| ConnStats {
            conn,
            ..ConnStats::default()
        })
    }

    fn command(&mut self, name: &str) -> &mut CommandStats {
        if !self.commands.contains_key(name) {
            self.commands.insert(name.to_owned(), CommandStats::new());
        }
        self.commands.get_mut(name).expect("inserted above")
    }

    /// Merges another capture's counters into these (`qmptap stats A B ...`). Connections
    /// are not merged: their ids are only unique within one capture.
    pub fn merge(&mut self, other: Stats) {
        for (name, s) in other.commands {
            let mine = self.command(&name);
            mine.count += s.count;
            for (class, n) in s.errors {
                *mine.errors.entry(class).or_default() += n;
            }
            // Same bounds on both sides: adding cannot fail.
            let _ = mine.latency.add(&s.latency);
        }
        for (name, n) in other.events {
            *self.events.entry(name).or_default() += n;
        }
        self.messages += other.messages;
        self.invalid += other.invalid;
        self.unpaired_replies += other.unpaired_replies;
        self.lost += other.lost;
        self.proxy_messages += other.proxy_messages;
        if let Some((a, b)) = other.span {
            self.widen(a);
            self.widen(b);
        }
    }
}

/// One command's row in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRow {
    /// Command name.
    pub command: String,
    /// Times sent.
    pub count: u64,
    /// Replies received.
    pub replies: u64,
    /// Error replies.
    pub errors: u64,
    /// Error replies by class.
    pub error_classes: BTreeMap<String, u64>,
    /// Latency percentiles and maximum, in microseconds.
    pub p50_us: Option<u64>,
    /// 95th percentile.
    pub p95_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
    /// Slowest.
    pub max_us: Option<u64>,
}

/// A connection's row in a report.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRow {
    /// The capture it is in.
    pub capture: String,
    /// Its figures.
    #[serde(flatten)]
    pub stats: ConnStats,
    /// Microseconds from accept to close.
    pub duration_us: Option<i64>,
}

/// What `qmptap stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The captures read.
    pub captures: Vec<String>,
    /// First and last record time.
    pub span: Option<(Time, Time)>,
    /// Messages of every kind.
    pub messages: u64,
    /// Client frames that were not JSON.
    pub invalid: u64,
    /// Replies that answered nothing.
    pub unpaired_replies: u64,
    /// Records lost while recording.
    pub lost: u64,
    /// Messages of qmptap's own polls (not counted above).
    pub proxy_messages: u64,
    /// Per command, most sent first.
    pub commands: Vec<CommandRow>,
    /// Events per name, most frequent first.
    pub events: Vec<(String, u64)>,
    /// Per connection.
    pub connections: Vec<ConnRow>,
}

impl Stats {
    /// The per-command rows, most sent first (then by name).
    pub fn command_rows(&self) -> Vec<CommandRow> {
        let mut rows: Vec<CommandRow> = self
            .commands
            .iter()
            .map(|(name, s)| CommandRow {
                command: name.clone(),
                count: s.count,
                replies: s.replies(),
                errors: s.error_count(),
                error_classes: s.errors.clone(),
                p50_us: s.latency_us(0.50),
                p95_us: s.latency_us(0.95),
                p99_us: s.latency_us(0.99),
                max_us: s.max_latency_us(),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.command.cmp(&b.command))
        });
        rows
    }

    /// Events, most frequent first (then by name).
    pub fn event_rows(&self) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> =
            self.events.iter().map(|(n, c)| (n.clone(), *c)).collect();
        // Most frequent first; names break ties, so the order does not depend on hashing.
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows
    }
}

impl Report {
    /// A report of the captures `names`, each with its own counters (merged for the
    /// per-command and per-event rows, kept apart for connections).
    pub fn new(captures: Vec<(String, Stats)>) -> Report {
        let mut total = Stats::default();
        let mut connections = Vec::new();
        let mut names = Vec::new();
        for (name, mut stats) in captures {
            let mut conns: Vec<ConnStats> = std::mem::take(&mut stats.connections)
                .into_values()
                .collect();
            conns.sort_by_key(|c| c.conn);
            for c in conns {
                connections.push(ConnRow {
                    capture: name.clone(),
                    duration_us: c.duration_us(),
                    stats: c,
                });
            }
            total.merge(stats);
            names.push(name);
        }
        Report {
            captures: names,
            span: total.span,
            messages: total.messages,
            invalid: total.invalid,
            unpaired_replies: total.unpaired_replies,
            lost: total.lost,
            proxy_messages: total.proxy_messages,
            commands: total.command_rows(),
            events: total.event_rows(),
            connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Reader;
    use crate::session::Tracker;

    fn stats_of(text: &str) -> Stats {
        let reader = Reader::new(
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
            "t.jsonl".into(),
        )
        .unwrap();
        let mut tracker = Tracker::new();
        let mut stats = Stats::default();
        for located in reader {
            let record = located.unwrap().record;
            let role = tracker.observe(&record);
            stats.observe(&record, &role);
        }
        stats
    }

    const CAPTURE: &str = concat!(
        r#"{"type":"header","format":"qmptap-capture","version":1,"created":"2026-11-25T19:10:13.000000Z","tool":"t"}"#,
        "\n",
        r#"{"type":"open","conn":1,"t":"2026-11-25T19:10:13.000000Z","peer":{"pid":42}}"#,
        "\n",
        r#"{"type":"msg","conn":1,"seq":0,"t":"2026-11-25T19:10:13.000100Z","dir":"c2s","kind":"command","name":"query-status","json":{"execute":"query-status"}}"#,
        "\n",
        r#"{"type":"msg","conn":1,"seq":1,"t":"2026-11-25T19:10:13.000600Z","dir":"s2c","kind":"return","json":{"return":{}}}"#,
        "\n",
        r#"{"type":"msg","conn":1,"seq":2,"t":"2026-11-25T19:10:13.001000Z","dir":"c2s","kind":"command","name":"query-status","json":{"execute":"query-status"}}"#,
        "\n",
        r#"{"type":"msg","conn":1,"seq":3,"t":"2026-11-25T19:10:13.003000Z","dir":"s2c","kind":"error","json":{"error":{"class":"GenericError","desc":"no"}}}"#,
        "\n",
        r#"{"type":"msg","conn":1,"seq":4,"t":"2026-11-25T19:10:13.004000Z","dir":"s2c","kind":"event","name":"STOP","json":{"event":"STOP"}}"#,
        "\n",
        r#"{"type":"close","conn":1,"t":"2026-11-25T19:10:14.000000Z","by":"client","reason":"eof","c2s_bytes":70,"s2c_bytes":90}"#,
        "\n",
    );

    #[test]
    fn counts_latencies_errors_events_and_connections() {
        let s = stats_of(CAPTURE);
        let q = &s.commands["query-status"];
        assert_eq!((q.count, q.replies(), q.error_count()), (2, 2, 1));
        assert_eq!(q.errors["GenericError"], 1);
        assert_eq!(q.latency_us(0.0), Some(500));
        assert_eq!(q.max_latency_us(), Some(2000));
        assert_eq!(s.events["STOP"], 1);
        let c = &s.connections[&1];
        assert_eq!((c.c2s, c.s2c, c.c2s_bytes, c.s2c_bytes), (2, 3, 70, 90));
        assert_eq!(c.duration_us(), Some(1_000_000));
        assert_eq!(c.peer.as_ref().and_then(|p| p.pid), Some(42));
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = stats_of(CAPTURE);
        a.merge(stats_of(CAPTURE));
        let q = &a.commands["query-status"];
        assert_eq!((q.count, q.replies(), q.error_count()), (4, 4, 2));
        assert_eq!(a.events["STOP"], 2);
        assert_eq!(a.messages, 10);
    }
}
