//! Human-readable transcripts in the QMP manual's notation (`->` client, `<-` server), and the
//! filters shared by every command that selects messages.

use std::io::{self, Write};

use crate::capture::{Dir, Located, Msg, Reader, Record, Time};
use crate::session::{Role, Tracker};
use crate::wire::Kind;

/// Which messages to keep. Empty lists keep everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Connection ids.
    pub conns: Vec<u64>,
    /// Direction.
    pub dir: Option<Dir>,
    /// Command or event names; `*` matches any run of characters. A reply matches when the
    /// command it answers does.
    pub names: Vec<String>,
    /// Message kinds.
    pub kinds: Vec<Kind>,
}

impl Filter {
    /// A direction as the filters spell it: `c2s` (or `->`), `s2c` (or `<-`).
    pub fn parse_dir(text: &str) -> Result<Dir, String> {
        match text {
            "c2s" | "->" => Ok(Dir::C2s),
            "s2c" | "<-" => Ok(Dir::S2c),
            other => Err(format!("invalid direction '{other}': expected c2s or s2c")),
        }
    }

    /// A message kind as the capture spells it.
    pub fn parse_kind(text: &str) -> Result<Kind, String> {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
            format!(
                "invalid kind '{text}': expected greeting, command, return, error, event, other or invalid"
            )
        })
    }

    /// Whether connection records (open, close) of `conn` are kept.
    pub fn keeps_conn(&self, conn: u64) -> bool {
        self.conns.is_empty() || self.conns.contains(&conn)
    }

    /// Whether a message is kept, given its role in the conversation.
    pub fn keeps(&self, m: &Msg, role: &Role) -> bool {
        if !self.keeps_conn(m.conn) || self.dir.is_some_and(|d| d != m.dir) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&m.kind) {
            return false;
        }
        if self.names.is_empty() {
            return true;
        }
        let name = match role {
            Role::Reply { command, .. } => command.as_deref(),
            _ => m.name.as_deref(),
        };
        name.is_some_and(|n| self.names.iter().any(|p| glob(p, n)))
    }

    /// Whether only connection-level filters are set (so open/close records are relevant).
    pub fn is_message_level(&self) -> bool {
        self.dir.is_some() || !self.names.is_empty() || !self.kinds.is_empty()
    }
}

/// `*`-only glob matching.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// How to render.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours.
    pub color: bool,
    /// Cut message text longer than this many characters (0: never).
    pub truncate: usize,
}

/// Arrows of the proxy's own messages (`qmptap record --poll`): its command, the reply.
pub const PROXY_ARROWS: [&str; 2] = ["~>", "<~"];

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

fn kind_color(kind: Kind) -> &'static str {
    match kind {
        Kind::Greeting => "\x1b[34m",
        Kind::Command => "\x1b[36m",
        Kind::Return => "\x1b[32m",
        Kind::Error => "\x1b[1;31m",
        Kind::Event => "\x1b[33m",
        Kind::Other => "",
        Kind::Invalid => "\x1b[35m",
    }
}

impl Style {
    fn paint(&self, color: &str, text: &str) -> String {
        if self.color && !color.is_empty() {
            format!("{color}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }
}

/// The text to show for a message: its JSON as sent, or its bytes escaped.
pub fn message_text(m: &Msg) -> String {
    if let Some(text) = &m.text {
        return match &m.json {
            // Spread over lines on the wire (pretty=on): one line of compact JSON reads better.
            Some(json) if text.contains(['\n', '\r']) => json.get().to_owned(),
            // JSON in QEMU's dialect (single quotes): show it as sent.
            Some(_) => text.clone(),
            None => format!("{text:?}"),
        };
    }
    if m.bytes_b64.is_some() {
        return format!("b\"{}\"", m.raw_bytes().escape_ascii());
    }
    m.json
        .as_ref()
        .map(|j| j.get().to_owned())
        .unwrap_or_default()
}

fn clock(t: Time) -> String {
    t.0.format("%H:%M:%S%.6f").to_string()
}

/// Renders one record as a transcript line (without newline), or `None` if it has no line.
pub fn render(record: &Record, role: &Role, style: Style) -> Option<String> {
    match record {
        Record::Header(_) => None,
        Record::Open(o) => Some(style.paint(
            BOLD,
            &format!("== conn {} opened {} by {}", o.conn, o.t, o.peer),
        )),
        Record::Close(c) => Some(style.paint(
            BOLD,
            &format!(
                    "== conn {} closed {} by {} ({}); {} bytes from the client, {} to it",
                    c.conn,
                    c.t,
                    serde_json::to_value(c.by)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    c.reason,
                    c.c2s_bytes,
                    c.s2c_bytes
                ),
        )),
        Record::Gap(g) => Some(style.paint(
            "\x1b[1;31m",
            &format!(
                "!! {} records lost between {} and {}: {}",
                g.lost, g.since, g.t, g.reason
            ),
        )),
        Record::Msg(m) => {
            let mut text = message_text(m);
            if style.truncate > 0 && text.chars().count() > style.truncate {
                let cut: String = text.chars().take(style.truncate).collect();
                text = format!("{cut}… ({} bytes)", m.raw_bytes().len());
            }
            // The proxy's own polls and their replies, which the client never saw, get their
            // own arrows and are dimmed, so that the client's conversation still reads on its own.
            let (arrow, color) = if m.is_proxy() {
                (PROXY_ARROWS[usize::from(m.dir == Dir::S2c)], DIM)
            } else {
                (m.dir.arrow(), kind_color(m.kind))
            };
            let mut line = format!(
                "{} {:>3} {} {}",
                clock(m.t),
                m.conn,
                arrow,
                style.paint(color, &text)
            );
            let mut notes = Vec::new();
            if m.is_proxy() {
                notes.push("qmptap poll".to_owned());
            }
            if m.fds > 0 {
                notes.push(format!("{} fd{}", m.fds, if m.fds == 1 { "" } else { "s" }));
            }
            if m.fds_dropped > 0 {
                notes.push(format!("{} fds dropped", m.fds_dropped));
            }
            if let Some(frame) = m.frame {
                let what = serde_json::to_value(frame)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                notes.push(match m.at {
                    Some(at) => format!("invalid: {what} error at byte {at}"),
                    None => format!("invalid: {what}"),
                });
            }
            match role {
                Role::Reply { latency_us, .. } => {
                    notes.push(format!("{:.3} ms", *latency_us as f64 / 1000.0));
                }
                Role::UnpairedReply => notes.push("reply to nothing".into()),
                Role::Request | Role::Other => {}
            }
            if !notes.is_empty() {
                line.push_str("  ");
                line.push_str(&style.paint(DIM, &format!("[{}]", notes.join(", "))));
            }
            Some(line)
        }
    }
}

/// Output format of [`show`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShowFormat {
    /// The transcript.
    #[default]
    Text,
    /// The kept records as capture lines (a header first, so the output is a capture).
    Json,
}

/// What [`show`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShowSummary {
    /// Messages written.
    pub shown: u64,
    /// Messages read.
    pub messages: u64,
}

/// Errors of [`show`].
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// The capture could not be read.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// Streams a capture to `out` as a transcript or as records, keeping what `filter` keeps.
pub fn show(
    reader: Reader,
    filter: &Filter,
    format: ShowFormat,
    style: Style,
    out: &mut dyn Write,
) -> Result<ShowSummary, ShowError> {
    let mut tracker = Tracker::new();
    let mut summary = ShowSummary::default();
    if format == ShowFormat::Json {
        serde_json::to_writer(&mut *out, &Record::Header(reader.header().clone()))
            .map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    for located in reader {
        let Located { record, .. } = located?;
        let role = tracker.observe(&record);
        let keep = match &record {
            Record::Msg(m) => {
                summary.messages += 1;
                filter.keeps(m, &role)
            }
            Record::Open(_) | Record::Close(_) => {
                record.conn().is_some_and(|c| filter.keeps_conn(c)) && !filter.is_message_level()
            }
            Record::Gap(_) => true,
            Record::Header(_) => false,
        };
        if !keep {
            continue;
        }
        if matches!(record, Record::Msg(_)) {
            summary.shown += 1;
        }
        match format {
            ShowFormat::Json => {
                serde_json::to_writer(&mut *out, &record).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
            }
            ShowFormat::Text => {
                if let Some(line) = render(&record, &role, style) {
                    writeln!(out, "{line}")?;
                }
            }
        }
    }
    out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conn: u64, dir: Dir, kind: Kind, name: Option<&str>) -> Msg {
        let json = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        Msg {
            conn,
            seq: 0,
            t: Time(chrono::DateTime::UNIX_EPOCH),
            dir,
            kind,
            origin: crate::capture::Origin::Peer,
            name: name.map(str::to_owned),
            fds: 0,
            fds_dropped: 0,
            frame: None,
            at: None,
            len: None,
            json: Some(json),
            text: None,
            bytes_b64: None,
        }
    }

    #[test]
    fn filters_by_connection_direction_kind_and_name() {
        let cmd = msg(2, Dir::C2s, Kind::Command, Some("query-status"));
        let reply = msg(2, Dir::S2c, Kind::Return, None);
        let answers = Role::Reply {
            request_seq: 0,
            request_id: None,
            command: Some("query-status".into()),
            latency_us: 5,
            origin: crate::capture::Origin::Peer,
        };
        let event = msg(1, Dir::S2c, Kind::Event, Some("STOP"));
        let everything = Filter::default();
        assert!(everything.keeps(&cmd, &Role::Request) && everything.keeps(&event, &Role::Other));
        let conn2 = Filter {
            conns: vec![2],
            ..Filter::default()
        };
        assert!(conn2.keeps(&cmd, &Role::Request) && !conn2.keeps(&event, &Role::Other));
        let from_server = Filter {
            dir: Some(Dir::S2c),
            ..Filter::default()
        };
        assert!(
            !from_server.keeps(&cmd, &Role::Request) && from_server.keeps(&event, &Role::Other)
        );
        let errors = Filter {
            kinds: vec![Kind::Error, Kind::Event],
            ..Filter::default()
        };
        assert!(errors.keeps(&event, &Role::Other) && !errors.keeps(&reply, &answers));
        // A reply follows the command it answers.
        let named = Filter {
            names: vec!["query-*".into()],
            ..Filter::default()
        };
        assert!(named.keeps(&cmd, &Role::Request) && named.keeps(&reply, &answers));
        assert!(!named.keeps(&event, &Role::Other) && !named.keeps(&reply, &Role::UnpairedReply));
        assert!(named.is_message_level() && !conn2.is_message_level());
    }

    #[test]
    fn glob_matches_stars() {
        assert!(glob("query-*", "query-status"));
        assert!(glob("*status", "query-status"));
        assert!(glob("q*-st*s", "query-status"));
        assert!(glob("query-status", "query-status"));
        assert!(!glob("query-status", "query-statusx"));
        assert!(!glob("block*", "query-block"));
        assert!(glob("*", ""));
    }

    #[test]
    fn proxy_polls_are_marked() {
        let mut poll = msg(1, Dir::C2s, Kind::Command, Some("query-migrate"));
        poll.origin = crate::capture::Origin::Proxy;
        let line = render(&Record::Msg(poll), &Role::Request, Style::default()).unwrap();
        assert!(line.contains(" ~> {}  [qmptap poll]"), "{line}");
        let mut reply = msg(1, Dir::S2c, Kind::Return, None);
        reply.origin = crate::capture::Origin::Proxy;
        let line = render(&Record::Msg(reply), &Role::Other, Style::default()).unwrap();
        assert!(line.contains(" <~ {}  [qmptap poll]"), "{line}");
        let client = msg(1, Dir::C2s, Kind::Command, Some("query-migrate"));
        let line = render(&Record::Msg(client), &Role::Request, Style::default()).unwrap();
        assert!(line.contains(" -> {}") && !line.contains("poll"), "{line}");
    }
}
