//! Capture records: what each line of a capture file holds.

use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::wire::{Frame, FrameKind, Kind, LimitKind, Message};

/// The `format` value of every capture header.
pub const FORMAT: &str = "qmptap-capture";
/// The capture format version this library writes and reads.
pub const VERSION: u32 = 1;

/// A point in time, written as RFC 3339 UTC with microseconds
/// (`2026-11-25T19:10:13.072123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub DateTime<Utc>);

impl Time {
    /// The current time.
    pub fn now() -> Self {
        Time(Utc::now())
    }

    /// Microseconds from `earlier` to `self` (negative if `self` is earlier).
    pub fn micros_since(self, earlier: Time) -> i64 {
        (self.0 - earlier.0).num_microseconds().unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| Time(t.with_timezone(&Utc)))
            .map_err(|e| serde::de::Error::custom(format!("invalid time '{s}': {e}")))
    }
}

/// Direction of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dir {
    /// From the client (management software) to the server (QEMU).
    #[serde(rename = "c2s")]
    C2s,
    /// From the server to the client.
    #[serde(rename = "s2c")]
    S2c,
}

impl Dir {
    /// The QMP manual's arrow: `->` for what the client sends, `<-` for what it receives.
    pub fn arrow(self) -> &'static str {
        match self {
            Dir::C2s => "->",
            Dir::S2c => "<-",
        }
    }
}

/// One side of a proxied connection, or the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The connecting client.
    Client,
    /// The monitor the proxy relays to.
    Upstream,
    /// qmptap itself (shutdown, internal error).
    Proxy,
}

/// Who wrote a message: the peer on its side of the connection (the client for `c2s`, the
/// monitor for `s2c`), or the proxy itself.
///
/// The proxy's own messages are the commands it sends when it polls (`qmptap record --poll`)
/// and the monitor's replies to them, which the client never sees. Absent from a record means
/// [`Origin::Peer`], so captures written before this member existed read unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The client's message (`c2s`) or the monitor's message relayed to the client (`s2c`).
    #[default]
    Peer,
    /// A command qmptap sent on its own, or the monitor's reply to it (not relayed).
    Proxy,
}

impl Origin {
    /// Whether this is [`Origin::Peer`] (the default, not written).
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
    pub fn is_peer(&self) -> bool {
        *self == Origin::Peer
    }
}

/// Why a frame is not a well-formed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameError {
    /// QEMU's lexer rejected a byte (the record's `at` gives its offset).
    Lexical,
    /// The message exceeded QEMU's 64 MiB limit; only a prefix is kept.
    MessageSize,
    /// The message exceeded QEMU's token count limit; only a prefix is kept.
    TokenCount,
    /// The message exceeded QEMU's nesting limit; only a prefix is kept.
    Depth,
    /// The connection ended inside the message.
    Truncated,
}

/// The first record of every capture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version, [`VERSION`] for files this library writes.
    pub version: u32,
    /// When recording started.
    pub created: Time,
    /// The address clients connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The monitor the proxy relayed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Host name of the recording machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The program that wrote the capture, e.g. `qmptap 0.1.0`.
    pub tool: String,
}

impl Header {
    /// A header for a capture written now by this version of qmptap.
    pub fn new(listen: Option<String>, upstream: Option<String>) -> Self {
        Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            created: Time::now(),
            listen,
            upstream,
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok()),
            tool: concat!("qmptap ", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Who connected: credentials of a UNIX peer (`SO_PEERCRED`) or a TCP peer's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Process id of the connecting process (UNIX sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// User id of the connecting process (UNIX sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group id of the connecting process (UNIX sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Remote address (TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if let Some(uid) = self.uid {
            parts.push(format!("uid {uid}"));
        }
        if let Some(gid) = self.gid {
            parts.push(format!("gid {gid}"));
        }
        if let Some(addr) = &self.addr {
            parts.push(addr.clone());
        }
        if parts.is_empty() {
            f.write_str("unknown peer")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// A client connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// Connection id, unique within the capture, from 1.
    pub conn: u64,
    /// When the client was accepted.
    pub t: Time,
    /// Who connected.
    pub peer: Peer,
}

/// One framed message (or invalid frame) in one direction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Msg {
    /// Connection id.
    pub conn: u64,
    /// Position in the connection, from 0, counting both directions in causal order.
    pub seq: u64,
    /// When the frame's last byte was relayed.
    pub t: Time,
    /// Direction.
    pub dir: Dir,
    /// What the frame is.
    pub kind: Kind,
    /// Who wrote it: absent for the peer, `"proxy"` for the proxy's own polls and their
    /// replies.
    #[serde(default, skip_serializing_if = "Origin::is_peer")]
    pub origin: Origin,
    /// Command name (`execute`/`exec-oob`) or event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File descriptors received (SCM_RIGHTS) with the bytes of this message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fds: u32,
    /// File descriptors that could not be forwarded (the other side is not a UNIX socket).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fds_dropped: u32,
    /// Why the frame is not a message, for `invalid` frames the decoder rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<FrameError>,
    /// Offset of the offending byte within the frame, for lexical errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// Length on the wire when the kept bytes are only a prefix (limit errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// The message as JSON: the exact text as sent (key order and numbers kept) when that
    /// text is strict JSON on one line; otherwise the same tokens without the whitespace
    /// between them, with `text` holding the exact original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Box<RawValue>>,
    /// The exact bytes as a string, when they are UTF-8 but differ from `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The exact bytes, base64 (standard alphabet, padded), when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_b64: Option<String>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Msg {
    /// Builds the record for a decoded frame.
    pub fn from_frame(conn: u64, seq: u64, t: Time, dir: Dir, frame: &Frame, fds: u32) -> Msg {
        let message = Message::classify(frame);
        let (error, at, len) = match &frame.kind {
            FrameKind::Message => (None, None, None),
            FrameKind::Invalid { at, .. } => (Some(FrameError::Lexical), Some(*at as u64), None),
            FrameKind::Limit(limit) => {
                let error = match limit {
                    LimitKind::MessageSize => FrameError::MessageSize,
                    LimitKind::TokenCount => FrameError::TokenCount,
                    LimitKind::Depth => FrameError::Depth,
                };
                (Some(error), None, Some(frame.len))
            }
            FrameKind::Truncated => (Some(FrameError::Truncated), None, None),
        };
        let json = message
            .json
            .and_then(|text| RawValue::from_string(text).ok());
        let (text, bytes_b64) = if message.exact && json.is_some() {
            (None, None)
        } else {
            match std::str::from_utf8(&frame.bytes) {
                Ok(s) => (Some(s.to_owned()), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&frame.bytes)),
                ),
            }
        };
        Msg {
            conn,
            seq,
            t,
            dir,
            kind: message.kind,
            origin: Origin::Peer,
            name: message.name,
            fds,
            fds_dropped: 0,
            frame: error,
            at,
            len,
            json,
            text,
            bytes_b64,
        }
    }

    /// The exact bytes that crossed the wire (a prefix of them for limit errors).
    pub fn raw_bytes(&self) -> Vec<u8> {
        if let Some(text) = &self.text {
            return text.clone().into_bytes();
        }
        if let Some(b64) = &self.bytes_b64 {
            // A capture that says base64 but holds something else is reported as empty bytes
            // by this accessor; the reader validates base64 when it loads the record.
            return base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
        }
        self.json
            .as_ref()
            .map(|j| j.get().as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Whether the proxy wrote this message (a poll) or it answers one.
    pub fn is_proxy(&self) -> bool {
        self.origin == Origin::Proxy
    }

    /// The message as a JSON value, when it is JSON.
    pub fn value(&self) -> Option<serde_json::Value> {
        self.json
            .as_ref()
            .and_then(|j| serde_json::from_str(j.get()).ok())
    }
}

impl PartialEq for Msg {
    fn eq(&self, other: &Self) -> bool {
        self.conn == other.conn
            && self.seq == other.seq
            && self.t == other.t
            && self.dir == other.dir
            && self.kind == other.kind
            && self.origin == other.origin
            && self.name == other.name
            && self.fds == other.fds
            && self.fds_dropped == other.fds_dropped
            && self.frame == other.frame
            && self.at == other.at
            && self.len == other.len
            && self.json.as_ref().map(|j| j.get()) == other.json.as_ref().map(|j| j.get())
            && self.text == other.text
            && self.bytes_b64 == other.bytes_b64
    }
}

/// A connection ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Close {
    /// Connection id.
    pub conn: u64,
    /// When the connection was fully closed.
    pub t: Time,
    /// The side that ended the connection first.
    pub by: Side,
    /// Why, in words: `eof`, an I/O error, `upstream unreachable: ...`, `shutdown`.
    pub reason: String,
    /// Bytes relayed from the client.
    pub c2s_bytes: u64,
    /// Bytes relayed to the client.
    pub s2c_bytes: u64,
}

/// Records were lost (the disk failed or the writer fell behind); written when writing
/// resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// When writing resumed.
    pub t: Time,
    /// When the first lost record happened.
    pub since: Time,
    /// How many records were lost.
    pub lost: u64,
    /// Why.
    pub reason: String,
}

/// One line of a capture.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    /// The first line.
    Header(Header),
    /// A connection was accepted.
    Open(Open),
    /// A message.
    Msg(Msg),
    /// A connection ended.
    Close(Close),
    /// Records were lost.
    Gap(Gap),
}

impl Record {
    /// Parses one capture line.
    ///
    /// serde's internally tagged enums buffer their content, which loses the exact JSON
    /// text of `msg` records; so the `type` is found first and the record parsed as its own
    /// struct (unknown members, such as `type` itself, are ignored).
    pub fn parse(line: &[u8]) -> Result<Record, serde_json::Error> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            ty: std::borrow::Cow<'a, str>,
        }
        // Records written by qmptap start with their type: skip the extra pass for them.
        let ty = if line.starts_with(br#"{"type":"msg","#) {
            std::borrow::Cow::Borrowed("msg")
        } else {
            serde_json::from_slice::<Tag<'_>>(line)?.ty
        };
        Ok(match ty.as_ref() {
            "msg" => Record::Msg(serde_json::from_slice(line)?),
            "open" => Record::Open(serde_json::from_slice(line)?),
            "close" => Record::Close(serde_json::from_slice(line)?),
            "gap" => Record::Gap(serde_json::from_slice(line)?),
            "header" => Record::Header(serde_json::from_slice(line)?),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown record type '{other}' (expected header, open, msg, close or gap)"
                )));
            }
        })
    }

    /// The connection a record belongs to, if any.
    pub fn conn(&self) -> Option<u64> {
        match self {
            Record::Open(o) => Some(o.conn),
            Record::Msg(m) => Some(m.conn),
            Record::Close(c) => Some(c.conn),
            Record::Header(_) | Record::Gap(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Box<RawValue>>::deserialize(d)?;
        Record::parse(raw.get().as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8], kind: FrameKind) -> Frame {
        Frame {
            kind,
            bytes: bytes.to_vec(),
            offset: 0,
            len: bytes.len() as u64,
        }
    }

    fn t0() -> Time {
        Time(
            DateTime::parse_from_rfc3339("2026-11-25T19:10:13.072123Z")
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn time_has_microseconds_and_z() {
        assert_eq!(t0().to_string(), "2026-11-25T19:10:13.072123Z");
        let back: Time = serde_json::from_str("\"2026-11-25T19:10:13.072123Z\"").unwrap();
        assert_eq!(back, t0());
    }

    #[test]
    fn origin_is_written_only_for_the_proxy_and_reads_back() {
        let bytes = br#"{"execute": "query-migrate", "id": {"qmptap-poll": 1}}"#;
        let mut m = Msg::from_frame(1, 4, t0(), Dir::C2s, &frame(bytes, FrameKind::Message), 0);
        let peer = serde_json::to_string(&Record::Msg(m.clone())).unwrap();
        assert!(!peer.contains("origin"), "{peer}");
        m.origin = Origin::Proxy;
        let line = serde_json::to_string(&Record::Msg(m.clone())).unwrap();
        assert!(line.contains(r#""origin":"proxy""#), "{line}");
        let Record::Msg(back) = Record::parse(line.as_bytes()).unwrap() else {
            panic!("not a msg: {line}")
        };
        assert!(back.is_proxy());
        assert_eq!(back, m);
        // A record without the member (every capture written before it existed) is the peer's.
        let Record::Msg(old) = Record::parse(peer.as_bytes()).unwrap() else {
            panic!("not a msg: {peer}")
        };
        assert_eq!(old.origin, Origin::Peer);
        let unknown = line.replace(r#""origin":"proxy""#, r#""origin":"martian""#);
        assert!(Record::parse(unknown.as_bytes()).is_err());
    }

    #[test]
    fn exact_json_is_kept_verbatim() {
        let bytes = br#"{"execute": "query-status", "id": 1.50, "arguments": {"b": 1, "a": 2}}"#;
        let m = Msg::from_frame(1, 0, t0(), Dir::C2s, &frame(bytes, FrameKind::Message), 0);
        let line = serde_json::to_string(&Record::Msg(m.clone())).unwrap();
        assert!(
            line.contains(
                r#""json":{"execute": "query-status", "id": 1.50, "arguments": {"b": 1, "a": 2}}"#
            ),
            "{line}"
        );
        assert_eq!(m.raw_bytes(), bytes);
        assert_eq!(m.name.as_deref(), Some("query-status"));
        assert!(m.text.is_none());
    }

    #[test]
    fn multiline_json_keeps_exact_text_beside_compact_json() {
        let bytes = b"{\r\n    \"return\": {\r\n    }\r\n}";
        let m = Msg::from_frame(1, 0, t0(), Dir::S2c, &frame(bytes, FrameKind::Message), 0);
        let line = serde_json::to_string(&Record::Msg(m.clone())).unwrap();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(m.json.as_ref().unwrap().get(), r#"{"return":{}}"#);
        assert_eq!(m.raw_bytes(), bytes);
    }

    #[test]
    fn non_utf8_is_base64() {
        let bytes = b"\xff\xfe{";
        let m = Msg::from_frame(
            1,
            0,
            t0(),
            Dir::C2s,
            &frame(
                bytes,
                FrameKind::Invalid {
                    offending: 0xff,
                    at: 0,
                },
            ),
            0,
        );
        assert_eq!(m.kind, Kind::Invalid);
        assert_eq!(m.frame, Some(FrameError::Lexical));
        assert!(m.bytes_b64.is_some());
        let line = serde_json::to_string(&Record::Msg(m.clone())).unwrap();
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Record::Msg(m.clone()));
        assert_eq!(m.raw_bytes(), bytes);
    }
}
