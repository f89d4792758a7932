//! Classification of frames: what QMP message, if any, a frame carries.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::decoder::{Frame, FrameKind, Limits};
use super::lexer::{self, Token};

/// What kind of QMP message a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The server's greeting (an object with a `QMP` member).
    Greeting,
    /// A command (`execute` or `exec-oob`).
    Command,
    /// A successful reply (`return`).
    Return,
    /// An error reply (`error`).
    Error,
    /// An asynchronous event (`event`).
    Event,
    /// Any other value QEMU's parser accepts (a non-object, or an object without those keys).
    Other,
    /// Not a value QEMU's parser accepts, or not a message frame at all.
    Invalid,
}

/// A classified frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// What the frame is.
    pub kind: Kind,
    /// The value, when QEMU's parser would accept the frame.
    pub value: Option<Value>,
    /// Strict-JSON text of the frame (QEMU's single-quoted strings rewritten), or `None` when
    /// the frame is not JSON even after that rewrite (or not UTF-8).
    pub json: Option<String>,
    /// `json` is byte-identical to the frame's bytes.
    pub exact: bool,
    /// The command name (`execute` / `exec-oob`) or the event name.
    pub name: Option<String>,
    /// The command was sent with `exec-oob`.
    pub oob: bool,
    /// The `id` member, if present (any JSON value, including `null`).
    pub id: Option<Value>,
    /// `error.class` of an error reply.
    pub error_class: Option<String>,
}

impl Message {
    fn invalid() -> Message {
        Message {
            kind: Kind::Invalid,
            value: None,
            json: None,
            exact: false,
            name: None,
            oob: false,
            id: None,
            error_class: None,
        }
    }

    /// Classify a frame; anything but a [`FrameKind::Message`] frame is [`Kind::Invalid`].
    pub fn classify(frame: &Frame) -> Message {
        match frame.kind {
            FrameKind::Message => Message::from_bytes(&frame.bytes),
            _ => Message::invalid(),
        }
    }

    /// Classify the bytes of one message frame.
    pub fn from_bytes(bytes: &[u8]) -> Message {
        let Some(tokens) = tokens(bytes) else {
            return Message::invalid();
        };
        let Some(Strict {
            json,
            exact,
            depth,
            keys,
        }) = strict_json(bytes, &tokens)
        else {
            return Message::invalid();
        };
        let mut message = Message::invalid();
        // serde_json's own parser is the fast path; it recurses, so it is used only well within
        // its recursion limit, and duplicate keys (which its maps silently merge) are detected
        // by counting members. Deeper values go through the iterative builder.
        let built = if depth <= SERDE_DEPTH {
            match serde_json::from_str::<Value>(&json) {
                Ok(value) if members(&value) == keys => Ok(value),
                Ok(_) => Err(Reject::Duplicate),
                Err(_) => Err(Reject::NotJson),
            }
        } else {
            build(&tokens)
        };
        match built {
            Err(Reject::NotJson) => return message,
            Err(Reject::Duplicate) => {
                // Valid JSON that QEMU's parser rejects.
                message.json = Some(json);
                message.exact = exact;
                return message;
            }
            Ok(value) => {
                message.describe(&value);
                message.value = Some(value);
            }
        }
        message.json = Some(json);
        message.exact = exact;
        message
    }

    /// Fill in the kind and the QMP members from an accepted value.
    fn describe(&mut self, value: &Value) {
        let Value::Object(map) = value else {
            self.kind = Kind::Other;
            return;
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        self.id = map.get("id").cloned();
        self.kind = if map.contains_key("QMP") {
            Kind::Greeting
        } else if map.contains_key("execute") || map.contains_key("exec-oob") {
            self.oob = map.contains_key("exec-oob");
            self.name = text("execute").or_else(|| text("exec-oob"));
            Kind::Command
        } else if map.contains_key("return") {
            Kind::Return
        } else if let Some(error) = map.get("error") {
            self.error_class = error
                .get("class")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Kind::Error
        } else if map.contains_key("event") {
            self.name = text("event");
            Kind::Event
        } else {
            Kind::Other
        };
    }
}

/// Lex `bytes` completely; `None` on a lexical error or an unfinished string.
///
/// A number or keyword at the very end is complete (the frame ended there), though the
/// streaming lexer cannot know it: it is lexed again followed by a space.
fn tokens(bytes: &[u8]) -> Option<Vec<(Token, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match lexer::token(rest) {
            Ok((after, token)) => {
                out.push((token, &rest[..rest.len() - after.len()]));
                rest = after;
            }
            Err(nom::Err::Incomplete(_)) => {
                let mut padded = rest.to_vec();
                padded.push(b' ');
                let (after, token) = lexer::token(&padded).ok()?;
                if after.len() != 1 || matches!(token, Token::String { .. }) {
                    return None;
                }
                out.push((token, rest));
                rest = &[];
            }
            Err(_) => return None,
        }
    }
    Some(out)
}

/// The strict-JSON text of `bytes`, whether it is `bytes` unchanged, and facts for parsing.
///
/// `None` when the bytes do not lex, nest deeper than QEMU allows (which also keeps the
/// recursive drop, clone or comparison of the value from exhausting the stack), or are not
/// UTF-8.
fn strict_json(bytes: &[u8], tokens: &[(Token, &[u8])]) -> Option<Strict> {
    let mut depth: i64 = 0;
    let mut deepest: i64 = 0;
    let max_depth = i64::try_from(Limits::QEMU.max_depth).unwrap_or(i64::MAX);
    let mut exact = true;
    let mut keys = 0;
    let mut after_string = false;
    let mut after_word = false;
    for (token, text) in tokens {
        // QEMU lexes "0e1" as "0", "e", "1" (its zero state takes no exponent), which strict
        // JSON would read as one number: adjacent words must be kept apart.
        let word = is_word(*token);
        exact &= !(word && after_word);
        after_word = word;
        if *token == Token::Colon && after_string {
            keys += 1;
        }
        if *token != Token::Whitespace {
            after_string = matches!(token, Token::String { .. });
        }
        match token {
            Token::LCurly | Token::LSquare => depth += 1,
            Token::RCurly | Token::RSquare => depth -= 1,
            Token::String { quote: b'"' } => exact &= !text.windows(2).any(|w| w == b"\\'"),
            Token::String { .. } => exact = false,
            Token::Whitespace => exact &= !text.iter().any(|&b| b == b'\r' || b == b'\n'),
            _ => {}
        }
        if depth > max_depth {
            return None;
        }
        deepest = deepest.max(depth);
    }
    let strict = |json| Strict {
        json,
        exact,
        depth: usize::try_from(deepest).unwrap_or(0),
        keys,
    };
    if exact {
        return String::from_utf8(bytes.to_vec()).ok().map(strict);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut after_word = false;
    for (token, text) in tokens {
        // Whitespace is dropped, but two numbers or keywords must not run together ("1 2"
        // would become "12"): QEMU rejects them, and so must the strict text.
        let word = is_word(*token);
        if word && after_word {
            out.push(b' ');
        }
        if *token != Token::Whitespace {
            after_word = word;
        }
        match token {
            Token::Whitespace => {}
            Token::String { quote } => rewrite_string(text, *quote, &mut out),
            _ => out.extend_from_slice(text),
        }
    }
    String::from_utf8(out).ok().map(strict)
}

/// Whether a token is a number or keyword, which strict JSON cannot place side by side.
fn is_word(token: Token) -> bool {
    matches!(token, Token::Integer | Token::Float | Token::Keyword)
}

/// Nesting up to which `serde_json`'s recursive parser is used (its own limit is 128).
const SERDE_DEPTH: usize = 100;

/// The strict-JSON form of a frame, and what the token scan learnt on the way.
struct Strict {
    json: String,
    /// `json` is the frame's bytes unchanged.
    exact: bool,
    /// Deepest nesting of braces and brackets.
    depth: usize,
    /// Number of object members (a string followed by `:`).
    keys: usize,
}

/// Number of members of all objects in `value` (called only on values nested at most
/// `SERDE_DEPTH` deep, so the recursion is bounded).
fn members(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(members).sum(),
        Value::Object(map) => map.len() + map.values().map(members).sum::<usize>(),
        _ => 0,
    }
}

/// Append the double-quoted form of a string token: `\'` becomes `'` (strict JSON has no
/// such escape) and, in a single-quoted string, a bare `"` is escaped.
fn rewrite_string(text: &[u8], quote: u8, out: &mut Vec<u8>) {
    let inner = text
        .get(1..text.len().saturating_sub(1))
        .unwrap_or_default();
    out.push(b'"');
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'\\' => {
                match inner.get(i + 1) {
                    Some(b'\'') => out.push(b'\''),
                    Some(&e) => out.extend_from_slice(&[b'\\', e]),
                    // Cannot happen for a lexed string; keep the byte so parsing fails.
                    None => out.push(b'\\'),
                }
                i += 2;
            }
            b'"' if quote == b'\'' => {
                out.extend_from_slice(b"\\\"");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out.push(b'"');
}

/// Why a value could not be built.
enum Reject {
    /// Not JSON at all.
    NotJson,
    /// JSON, but QEMU's parser refuses it (a duplicate key).
    Duplicate,
}

/// An array or object being built, with the key awaiting its value.
enum Open {
    Array(Vec<Value>),
    Object(Map<String, Value>, Option<String>),
}

/// What the next token may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (after `:` or `,` in an array, or at the start).
    Value,
    /// A value or `]` (just after `[`).
    ValueOrClose,
    /// A key or `}` (just after `{`).
    KeyOrClose,
    /// A key (after `,` in an object).
    Key,
    /// `:` after a key.
    Colon,
    /// `,` or the closing bracket of the innermost container.
    CommaOrClose,
    /// Nothing: the value is complete.
    End,
}

/// Build the value of a token stream the way QEMU's parser reads it: JSON's grammar, with
/// duplicate keys rejected (QEMU's `parse_pair`; `serde_json` would keep the last one).
///
/// This is iterative, with an explicit stack, because QEMU accepts 1024 levels of nesting,
/// more than a recursive parser can safely take on a small thread stack.
fn build(tokens: &[(Token, &[u8])]) -> Result<Value, Reject> {
    let mut stack: Vec<Open> = Vec::new();
    let mut expect = Expect::Value;
    let mut result = None;
    let mut scratch = Vec::new();
    for &(token, text) in tokens {
        let value = match (token, expect) {
            (Token::Whitespace, _) | (_, Expect::End) => {
                if token == Token::Whitespace {
                    continue;
                }
                return Err(Reject::NotJson);
            }
            (Token::Colon, Expect::Colon) => {
                expect = Expect::Value;
                continue;
            }
            (Token::Comma, Expect::CommaOrClose) => {
                expect = match stack.last() {
                    Some(Open::Object(..)) => Expect::Key,
                    _ => Expect::Value,
                };
                continue;
            }
            (Token::String { quote }, Expect::Key | Expect::KeyOrClose) => {
                let key = decode_string(text, quote, &mut scratch)?;
                let Some(Open::Object(map, pending)) = stack.last_mut() else {
                    return Err(Reject::NotJson);
                };
                if map.contains_key(&key) {
                    return Err(Reject::Duplicate);
                }
                *pending = Some(key);
                expect = Expect::Colon;
                continue;
            }
            (Token::LSquare, Expect::Value | Expect::ValueOrClose) => {
                stack.push(Open::Array(Vec::new()));
                expect = Expect::ValueOrClose;
                continue;
            }
            (Token::LCurly, Expect::Value | Expect::ValueOrClose) => {
                stack.push(Open::Object(Map::new(), None));
                expect = Expect::KeyOrClose;
                continue;
            }
            (Token::RSquare, Expect::ValueOrClose | Expect::CommaOrClose) => match stack.pop() {
                Some(Open::Array(items)) => Value::Array(items),
                _ => return Err(Reject::NotJson),
            },
            (Token::RCurly, Expect::KeyOrClose | Expect::CommaOrClose) => match stack.pop() {
                Some(Open::Object(map, _)) => Value::Object(map),
                _ => return Err(Reject::NotJson),
            },
            (Token::String { quote }, Expect::Value | Expect::ValueOrClose) => {
                Value::String(decode_string(text, quote, &mut scratch)?)
            }
            (Token::Integer | Token::Float, Expect::Value | Expect::ValueOrClose) => {
                let number: Number = serde_json::from_slice(text).map_err(|_| Reject::NotJson)?;
                Value::Number(number)
            }
            (Token::Keyword, Expect::Value | Expect::ValueOrClose) => match text {
                b"true" => Value::Bool(true),
                b"false" => Value::Bool(false),
                b"null" => Value::Null,
                _ => return Err(Reject::NotJson),
            },
            _ => return Err(Reject::NotJson),
        };
        // A complete value: it goes into the innermost container, or it is the result.
        expect = Expect::CommaOrClose;
        match stack.last_mut() {
            Some(Open::Array(items)) => items.push(value),
            Some(Open::Object(map, pending)) => {
                let key = pending.take().ok_or(Reject::NotJson)?;
                map.insert(key, value);
            }
            None => {
                result = Some(value);
                expect = Expect::End;
            }
        }
    }
    result.ok_or(Reject::NotJson)
}

/// Decode a string token (either quote style) into its text.
fn decode_string(text: &[u8], quote: u8, scratch: &mut Vec<u8>) -> Result<String, Reject> {
    let strict = if quote == b'"' && !text.contains(&b'\'') {
        text
    } else {
        scratch.clear();
        rewrite_string(text, quote, scratch);
        scratch
    };
    serde_json::from_slice(strict).map_err(|_| Reject::NotJson)
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::Decoder;
    use serde_json::json;

    fn m(text: &str) -> Message {
        Message::from_bytes(text.as_bytes())
    }

    #[test]
    fn every_kind() {
        assert_eq!(
            m(r#"{"QMP": {"version": {}, "capabilities": []}}"#).kind,
            Kind::Greeting
        );
        let c = m(r#"{"execute": "query-status", "id": 7}"#);
        assert_eq!(
            (c.kind, c.name.as_deref(), c.oob),
            (Kind::Command, Some("query-status"), false)
        );
        assert_eq!(c.id, Some(json!(7)));
        assert_eq!(m(r#"{"return": {}}"#).kind, Kind::Return);
        let e = m(r#"{"error": {"class": "GenericError", "desc": "x"}, "id": "a"}"#);
        assert_eq!(
            (e.kind, e.error_class.as_deref()),
            (Kind::Error, Some("GenericError"))
        );
        assert_eq!(e.id, Some(json!("a")));
        let ev = m(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#);
        assert_eq!((ev.kind, ev.name.as_deref()), (Kind::Event, Some("STOP")));
        assert_eq!(m("[1, 2]").kind, Kind::Other);
        assert_eq!(m(r#"{"foo": 1}"#).kind, Kind::Other);
        assert_eq!(m("123").kind, Kind::Other);
        assert_eq!(m("\"s\"").kind, Kind::Other);
        assert_eq!(m("null").value, Some(Value::Null));
    }

    #[test]
    fn exec_oob() {
        let c = m(r#"{"exec-oob": "migrate-pause", "id": "o1"}"#);
        assert_eq!(c.kind, Kind::Command);
        assert_eq!(c.name.as_deref(), Some("migrate-pause"));
        assert!(c.oob);
    }

    #[test]
    fn ids_of_any_type() {
        for id in ["null", "1", "-2.5", "\"x\"", "{\"a\": [1]}", "[]", "true"] {
            let c = m(&format!(r#"{{"execute": "x", "id": {id}}}"#));
            assert_eq!(
                c.id,
                Some(serde_json::from_str::<Value>(id).unwrap()),
                "{id}"
            );
        }
        assert_eq!(m(r#"{"execute": "x"}"#).id, None);
    }

    #[test]
    fn rejected_by_qemu() {
        for text in [
            r#"{"a" 1}"#,
            ",",
            "}",
            "foo",
            "{]",
            "[1,]",
            "{\"a\": 1,}",
            "[1] 2",
            "'unterminated",
            "{1: 2}",
            "\"\\x\"",
            "01",
            "[",
            "[0e1]",
            "[1 2]",
            "[-0E5]",
            "[1e5e5]",
            "[true\nfalse]",
        ] {
            let msg = m(text);
            assert_eq!(msg.kind, Kind::Invalid, "{text}");
            assert_eq!(msg.value, None, "{text}");
            assert_eq!(msg.json, None, "{text}");
        }
        // Duplicate keys: JSON, but QEMU's parser refuses them.
        let dup = m(r#"{"a": 1, "b": {"c": 1, "c": 2}}"#);
        assert_eq!(
            (dup.kind, dup.value.is_none(), dup.json.is_some()),
            (Kind::Invalid, true, true)
        );
        // Invalid UTF-8 passes QEMU's lexer but is not JSON text.
        assert_eq!(Message::from_bytes(b"\"\xc3\x28\"").json, None);
    }

    #[test]
    fn strict_json_rewrite() {
        let exact = m(r#"{"execute": "a",	"id": 1.50}"#);
        assert!(exact.exact);
        assert_eq!(
            exact.json.as_deref(),
            Some(r#"{"execute": "a",	"id": 1.50}"#)
        );

        let sq = m(r#"{'execute': 'say "hi"', "arg": 'it\'s', "dq": "it\'s", "e": '\"\\\u00e9'}"#);
        assert!(!sq.exact);
        assert_eq!(
            sq.json.as_deref(),
            Some(r#"{"execute":"say \"hi\"","arg":"it's","dq":"it's","e":"\"\\\u00e9"}"#)
        );
        assert_eq!(sq.name.as_deref(), Some("say \"hi\""));
        let value = sq.value.unwrap();
        assert_eq!(value["e"], json!("\"\\é"));
        // Key order is the order on the wire.
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["execute", "arg", "dq", "e"]);

        let pretty = m("{\r\n    \"return\": {\r\n    }\r\n}");
        assert_eq!((pretty.kind, pretty.exact), (Kind::Return, false));
        assert_eq!(pretty.json.as_deref(), Some(r#"{"return":{}}"#));
    }

    #[test]
    fn deep_nesting() {
        let ok = format!("{}{}", "[".repeat(1024), "]".repeat(1024));
        assert_eq!(m(&ok).kind, Kind::Other);
        let deep = format!("{}{}", "[".repeat(1025), "]".repeat(1025));
        assert_eq!(m(&deep).kind, Kind::Invalid);
        // Past serde_json's recursion limit the iterative builder applies the same rules.
        for depth in [3, 200] {
            let wrap =
                |inner: &str| format!("{}{inner}{}", "{'k': [".repeat(depth), "]}".repeat(depth));
            let ok = m(&wrap("{'a': 1, \"b\": [true, null, -0.5e3, \"\\u00e9\"]}"));
            assert_eq!((ok.kind, ok.exact), (Kind::Other, false), "{depth}");
            let mut inner = ok.value.as_ref().unwrap();
            for _ in 0..depth {
                inner = &inner["k"][0];
            }
            assert_eq!(inner, &json!({"a": 1, "b": [true, null, -0.5e3, "é"]}));
            let dup = m(&wrap("{'a': 1, 'a': 2}"));
            assert_eq!(
                (dup.kind, dup.value, dup.json.is_some()),
                (Kind::Invalid, None, true)
            );
            for bad in ["{'a' 1}", "[1,]", "{'a': 1,}", "[foo]", "[1 2]", "{1: 2}"] {
                let msg = m(&wrap(bad));
                assert_eq!((msg.kind, msg.json), (Kind::Invalid, None), "{depth} {bad}");
            }
        }
    }

    #[test]
    fn non_message_frames_are_invalid() {
        let frame = Frame {
            kind: FrameKind::Truncated,
            bytes: b"{}".to_vec(),
            offset: 0,
            len: 2,
        };
        assert_eq!(Message::classify(&frame).kind, Kind::Invalid);
    }

    fn decode(bytes: &[u8], chunk: usize) -> Vec<Frame> {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            decoder.feed(c, &mut out);
        }
        out.extend(decoder.finish());
        out
    }

    fn kinds(frames: &[Frame]) -> Vec<Kind> {
        frames.iter().map(|f| Message::classify(f).kind).collect()
    }

    #[test]
    fn real_qemu_server_stream() {
        use Kind::{Error, Event, Greeting, Return};
        let s2c = include_bytes!("../../benches/data/qemu-7.2-s2c.bin");
        let frames = decode(s2c, 4096);
        assert_eq!(frames, decode(s2c, 1_000_000));
        assert_eq!(frames, decode(s2c, 61));
        assert_eq!(
            kinds(&frames),
            [
                Greeting, Return, Return, Return, Return, Return, Return, Return, Error, Error,
                Error, Error, Error, Event, Return, Event, Return, Return, Event, Return
            ]
        );
        for frame in &frames {
            let msg = Message::classify(frame);
            // QEMU's output is strict JSON, one message per CRLF-terminated line.
            assert!(msg.exact);
        }
        let schema = Message::classify(&frames[6]);
        assert!(frames[6].bytes.len() > 100_000);
        assert!(schema.value.unwrap()["return"].as_array().unwrap().len() > 100);
        assert_eq!(
            Message::classify(&frames[8]).error_class.as_deref(),
            Some("CommandNotFound")
        );
        assert_eq!(Message::classify(&frames[10]).id, Some(json!("oob-1")));
        assert_eq!(
            Message::classify(&frames[18]).name.as_deref(),
            Some("SHUTDOWN")
        );
    }

    #[test]
    fn real_qemu_client_stream() {
        let c2s = include_bytes!("../../benches/data/qemu-7.2-c2s.bin");
        let frames = decode(c2s, 7);
        assert_eq!(frames, decode(c2s, c2s.len()));
        let mut want = vec![Kind::Command; 16];
        want[10] = Kind::Invalid; // GARBAGE
        want[11] = Kind::Other; // [1, 2, 3]
        assert_eq!(kinds(&frames), want);
        assert_eq!(
            frames[10].kind,
            FrameKind::Invalid {
                offending: b'G',
                at: 0
            }
        );
        let sq = Message::classify(&frames[3]);
        assert!(!sq.exact);
        assert_eq!(
            sq.json.as_deref(),
            Some(r#"{"execute":"query-name","id":"single-quoted"}"#)
        );
        assert_eq!(
            Message::classify(&frames[9]).name.as_deref(),
            Some("migrate-pause")
        );
        assert!(Message::classify(&frames[9]).oob);
        assert_eq!(Message::classify(&frames[6]).id, Some(json!(3.5)));
    }
}
