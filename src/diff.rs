//! `qmptap diff`: two sessions compared by what the client asked and what QEMU answered.
//!
//! Connections are paired in order. Within a pair, commands are aligned by Myers' diff on
//! (command, normalised arguments); the replies of aligned commands are compared structurally
//! through the shared normaliser, and the events between one command and the next are
//! compared as multisets (QEMU's event timing relative to a poll is not stable, their number
//! and content are). Nothing here re-pairs messages: transactions come from the session model.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use similar::{Algorithm, DiffOp, capture_diff_slices};

use crate::capture::{CaptureError, Reader};
use crate::normalize::{Difference, Normalizer, differences};
use crate::session::{Connection, Session};
use crate::wire::Kind;

/// One client request with what came back for it.
struct Step {
    /// Command name (None for a frame that is not a command).
    name: Option<String>,
    /// The request, normalised: what alignment compares.
    key: String,
    /// Capture line of the request.
    line: u64,
    /// The reply, normalised.
    reply: Option<Value>,
    /// Events after the request and before the next one: normalised text → count.
    events: BTreeMap<String, usize>,
}

/// One line of a connection's diff.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Entry {
    /// The same command in both, with the same reply and events.
    Same {
        /// Command name.
        name: Option<String>,
        /// Lines in A and B.
        lines: (u64, u64),
    },
    /// The same command in both; the replies differ.
    ReplyDiffers {
        /// Command name.
        name: Option<String>,
        /// Lines in A and B.
        lines: (u64, u64),
        /// Where and how.
        differences: Vec<Difference>,
    },
    /// The same command in both; the events that followed differ.
    EventsDiffer {
        /// Command name.
        name: Option<String>,
        /// Lines in A and B.
        lines: (u64, u64),
        /// Events only A had (normalised JSON, with counts).
        only_a: Vec<(Value, usize)>,
        /// Events only B had.
        only_b: Vec<(Value, usize)>,
    },
    /// A command only A has.
    OnlyA {
        /// Command name.
        name: Option<String>,
        /// Line in A.
        line: u64,
        /// The request as compared.
        request: Value,
    },
    /// A command only B has.
    OnlyB {
        /// Command name.
        name: Option<String>,
        /// Line in B.
        line: u64,
        /// The request as compared.
        request: Value,
    },
}

impl Entry {
    /// Whether this entry is a difference.
    pub fn differs(&self) -> bool {
        !matches!(self, Entry::Same { .. })
    }
}

/// A pair of connections compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnDiff {
    /// Connection id in A (None if B has more connections).
    pub a: Option<u64>,
    /// Connection id in B.
    pub b: Option<u64>,
    /// The aligned steps.
    pub entries: Vec<Entry>,
}

/// Two captures compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Capture A.
    pub a: String,
    /// Capture B.
    pub b: String,
    /// Per pair of connections.
    pub connections: Vec<ConnDiff>,
}

impl Report {
    /// Whether the sessions are the same (after normalisation).
    pub fn is_same(&self) -> bool {
        self.connections
            .iter()
            .all(|c| !c.entries.iter().any(Entry::differs))
    }
}

/// Compares two captures.
pub fn diff(a: &Path, b: &Path, normalizer: &Normalizer) -> Result<Report, CaptureError> {
    let sa = Session::load(Reader::open(a)?)?;
    let sb = Session::load(Reader::open(b)?)?;
    let ca: Vec<&Connection> = sa.connections.values().collect();
    let cb: Vec<&Connection> = sb.connections.values().collect();
    let mut connections = Vec::new();
    for i in 0..ca.len().max(cb.len()) {
        let steps_a = ca.get(i).map(|c| steps(c, normalizer)).unwrap_or_default();
        let steps_b = cb.get(i).map(|c| steps(c, normalizer)).unwrap_or_default();
        connections.push(ConnDiff {
            a: ca.get(i).map(|c| c.conn),
            b: cb.get(i).map(|c| c.conn),
            entries: align(&steps_a, &steps_b),
        });
    }
    Ok(Report {
        a: a.display().to_string(),
        b: b.display().to_string(),
        connections,
    })
}

/// The connection's requests with their normalised replies and events. The proxy's own polls
/// (`qmptap record --poll`) are not the client's: how many there are depends on timing, so
/// they are left out, replies included.
fn steps(conn: &Connection, normalizer: &Normalizer) -> Vec<Step> {
    let client: Vec<&crate::session::Transaction> = conn
        .transactions
        .iter()
        .filter(|t| !conn.messages[t.request].is_proxy())
        .collect();
    let requests: Vec<usize> = client.iter().map(|t| t.request).collect();
    client
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let m = &conn.messages[t.request];
            let name = m.name.clone();
            let request = m.value().map_or_else(
                || Value::String(String::from_utf8_lossy(&m.raw_bytes()).into_owned()),
                |v| normalizer.normalized(name.as_deref(), &v),
            );
            let reply = t
                .reply
                .and_then(|r| conn.messages[r].value())
                .map(|v| normalizer.normalized(name.as_deref(), &v));
            let until = requests.get(i + 1).copied().unwrap_or(conn.messages.len());
            let mut events = BTreeMap::new();
            for e in &conn.messages[t.request..until] {
                // Events whose number varies from run to run (a normaliser rule) are not counted.
                let volatile = e
                    .name
                    .as_deref()
                    .is_some_and(|n| normalizer.counted_event(n).is_some());
                if e.kind == Kind::Event && !volatile {
                    if let Some(v) = e.value() {
                        *events
                            .entry(normalizer.normalized(e.name.as_deref(), &v).to_string())
                            .or_insert(0) += 1;
                    }
                }
            }
            Step {
                key: request.to_string(),
                name,
                line: conn.lines[t.request],
                reply,
                events,
            }
        })
        .collect()
}

fn align(a: &[Step], b: &[Step]) -> Vec<Entry> {
    let ka: Vec<&str> = a.iter().map(|s| s.key.as_str()).collect();
    let kb: Vec<&str> = b.iter().map(|s| s.key.as_str()).collect();
    let mut out = Vec::new();
    let request = |s: &Step| serde_json::from_str(&s.key).unwrap_or(Value::Null);
    let only_a = |s: &Step| Entry::OnlyA {
        name: s.name.clone(),
        line: s.line,
        request: request(s),
    };
    let only_b = |s: &Step| Entry::OnlyB {
        name: s.name.clone(),
        line: s.line,
        request: request(s),
    };
    for op in capture_diff_slices(Algorithm::Myers, &ka, &kb) {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                out.extend((0..len).map(|k| compare(&a[old_index + k], &b[new_index + k])));
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => out.extend(a[old_index..old_index + old_len].iter().map(only_a)),
            DiffOp::Insert {
                new_index, new_len, ..
            } => out.extend(b[new_index..new_index + new_len].iter().map(only_b)),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                out.extend(a[old_index..old_index + old_len].iter().map(only_a));
                out.extend(b[new_index..new_index + new_len].iter().map(only_b));
            }
        }
    }
    out
}

fn compare(a: &Step, b: &Step) -> Entry {
    let lines = (a.line, b.line);
    let name = a.name.clone();
    let d = differences(
        a.reply.as_ref().unwrap_or(&Value::Null),
        b.reply.as_ref().unwrap_or(&Value::Null),
    );
    if !d.is_empty() {
        return Entry::ReplyDiffers {
            name,
            lines,
            differences: d,
        };
    }
    if a.events != b.events {
        let only =
            |x: &BTreeMap<String, usize>, y: &BTreeMap<String, usize>| -> Vec<(Value, usize)> {
                x.iter()
                    .filter_map(|(e, n)| {
                        let extra = n.saturating_sub(y.get(e).copied().unwrap_or(0));
                        (extra > 0).then(|| (serde_json::from_str(e).unwrap_or(Value::Null), extra))
                    })
                    .collect()
            };
        return Entry::EventsDiffer {
            name,
            lines,
            only_a: only(&a.events, &b.events),
            only_b: only(&b.events, &a.events),
        };
    }
    Entry::Same { name, lines }
}
