//! Live polling by the proxy (`qmptap record --poll query-migrate,query-jobs@500ms`): when
//! the client does not poll by itself, the proxy sends query commands on the upstream
//! connection, and keeps their replies from the client.
//!
//! What this module must never do: change the bytes the client sees, or send anything before
//! the client has negotiated (QEMU refuses every other command until then) or in the middle
//! of a client frame.
//!
//! How replies are told apart: QEMU answers in-band commands strictly in order, and every
//! frame it parses gets exactly one reply, so the in-band queue of [`Tracker`] (the one
//! pairing model of the project) knows, for each reply, whose request it answers. The proxy
//! only ever sends in-band commands, and only between two complete client frames, so it takes
//! its place in that queue like any client frame. The ids it uses, `{"qmptap-poll": N}`,
//! only make the capture easy to read; routing does not depend on them.
//!
//! The s2c stream is cut at frame boundaries: a proxy reply is dropped with the whitespace
//! that follows it (QEMU ends each message with `\r\n`), so the client receives exactly the
//! frames, and the whitespace between them, that it would receive without polling. A frame
//! still incomplete is held back only while the oldest request awaiting a reply is the
//! proxy's (only then can it be the proxy's reply); otherwise its bytes go on at once.

use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::capture::{Msg, Origin};
use crate::session::{Role, Tracker};
use crate::wire::{Frame, Kind};

/// The polling interval when `@INTERVAL` is not given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest interval accepted: polling faster would load the monitor more than it tells.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The member of the proxy's ids: `{"qmptap-poll": N}`, N from 1 per connection. A client
/// could send the same id, but no known client uses objects as ids, and routing relies on
/// QEMU's reply order, not on ids.
pub const ID_KEY: &str = "qmptap-poll";
/// How soon the proxy tries again when it could not send a poll at once (the client was in
/// the middle of a frame, or the monitor's socket was full).
pub const RETRY: Duration = Duration::from_millis(5);

/// What to poll, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// Query commands, sent in this order at each interval.
    pub commands: Vec<String>,
    /// Time between two polls of the same command.
    pub interval: Duration,
}

/// Why a `--poll` value was refused. Each variant quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// No command was named.
    #[error(
        "invalid poll '{spec}': expected CMD[,CMD...][@INTERVAL], e.g. query-migrate,query-jobs@500ms"
    )]
    Empty {
        /// The whole value.
        spec: String,
    },
    /// A command name that is not a query.
    #[error(
        "invalid poll '{spec}': '{name}' is not a query command name (expected query-* or x-query-*: the proxy must not change the monitor's state behind the client's back)"
    )]
    NotAQuery {
        /// The whole value.
        spec: String,
        /// The name.
        name: String,
    },
    /// A command named twice.
    #[error("invalid poll '{spec}': '{name}' is named twice")]
    Duplicate {
        /// The whole value.
        spec: String,
        /// The name.
        name: String,
    },
    /// The interval could not be read, or is out of range.
    #[error(
        "invalid poll interval '{interval}': expected a number with ms or s, from 10ms to 3600s (e.g. 500ms, 2s, 1.5s)"
    )]
    Interval {
        /// The interval as given.
        interval: String,
    },
}

impl FromStr for Poll {
    type Err = PollError;

    /// Parses `CMD[,CMD...][@INTERVAL]`; INTERVAL is a number followed by `ms` or `s`
    /// (`500ms`, `2s`, `0.25s`), [`DEFAULT_INTERVAL`] when absent.
    fn from_str(spec: &str) -> Result<Poll, PollError> {
        let (names, interval) = match spec.rsplit_once('@') {
            Some((names, interval)) => (names, parse_interval(interval)?),
            None => (spec, DEFAULT_INTERVAL),
        };
        let mut commands: Vec<String> = Vec::new();
        for name in names.split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if !is_query(name) {
                return Err(PollError::NotAQuery {
                    spec: spec.to_owned(),
                    name: name.to_owned(),
                });
            }
            if commands.iter().any(|c| c == name) {
                return Err(PollError::Duplicate {
                    spec: spec.to_owned(),
                    name: name.to_owned(),
                });
            }
            commands.push(name.to_owned());
        }
        if commands.is_empty() {
            return Err(PollError::Empty {
                spec: spec.to_owned(),
            });
        }
        Ok(Poll { commands, interval })
    }
}

fn is_query(name: &str) -> bool {
    let rest = name
        .strip_prefix("query-")
        .or_else(|| name.strip_prefix("x-query-"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    })
}

fn parse_interval(text: &str) -> Result<Duration, PollError> {
    let bad = || PollError::Interval {
        interval: text.to_owned(),
    };
    let t = text.trim();
    let (number, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(bad());
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let d = Duration::try_from_secs_f64(value * unit).map_err(|_| bad())?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(bad());
    }
    Ok(d)
}

impl Poll {
    /// The bytes of the `n`th poll of `command`, in QEMU's own style.
    pub fn request(command: &str, n: u64) -> Vec<u8> {
        format!(r#"{{"execute": "{command}", "id": {{"{ID_KEY}": {n}}}}}"#).into_bytes()
    }
}

/// Splits the monitor's byte stream at frame boundaries into what the client gets and what
/// is dropped (the proxy's replies and the whitespace after them).
#[derive(Debug, Default)]
pub(crate) struct Router {
    /// Stream offset of the first byte not yet forwarded or dropped.
    decided: u64,
    /// The bytes from `decided` on: a frame still incomplete that may be the proxy's, and
    /// the bytes that arrived after it.
    held: Vec<u8>,
    /// Whether the whitespace after the last complete frame goes with a dropped frame.
    drop_whitespace: bool,
}

impl Router {
    /// Takes the next chunk of the stream.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.held.extend_from_slice(chunk);
    }

    /// Whether part of `frame` already went to the client (it began while nothing the proxy
    /// awaited could come), which makes it the client's whatever pairing says.
    pub(crate) fn partly_forwarded(&self, frame: &Frame) -> bool {
        frame.offset < self.decided
    }

    /// Decides the whitespace before `frame` and `frame` itself (the next complete frame in
    /// stream order): forwarded into `out` unless `dropped`.
    pub(crate) fn frame(&mut self, frame: &Frame, dropped: bool, out: &mut Vec<u8>) {
        let start = frame.offset.max(self.decided);
        self.take_until(start, !self.drop_whitespace, out);
        self.take_until(frame.offset + frame.len, !dropped, out);
        self.drop_whitespace = dropped;
    }

    /// After the chunk's complete frames: the whitespace after them is decided; so is the
    /// beginning of a frame still incomplete (from `incomplete_since`), unless `hold`.
    pub(crate) fn rest(&mut self, incomplete_since: Option<u64>, hold: bool, out: &mut Vec<u8>) {
        let end = self.decided + self.held.len() as u64;
        match incomplete_since {
            Some(start) if start >= self.decided => {
                self.take_until(start, !self.drop_whitespace, out);
                if !hold {
                    self.take_until(end, true, out);
                }
            }
            // Already partly forwarded: the rest follows.
            Some(_) => self.take_until(end, true, out),
            None => self.take_until(end, !self.drop_whitespace, out),
        }
    }

    /// Forwards (`keep`) or drops the held bytes up to stream offset `to`.
    fn take_until(&mut self, to: u64, keep: bool, out: &mut Vec<u8>) {
        let n = usize::try_from(to.saturating_sub(self.decided))
            .unwrap_or(usize::MAX)
            .min(self.held.len());
        if keep {
            out.extend_from_slice(&self.held[..n]);
        }
        self.held.drain(..n);
        self.decided += n as u64;
    }
}

/// One polled command's state on a connection.
#[derive(Debug)]
struct Polled {
    name: String,
    /// The proxy's last poll of it has not been answered yet.
    outstanding: bool,
    /// When the client itself last sent it: the proxy does not duplicate a client that polls.
    client_sent: Option<Instant>,
}

/// A connection's polling state, kept under the relay's recorder lock.
#[derive(Debug)]
pub(crate) struct Poller {
    pub(crate) conn: u64,
    pub(crate) interval: Duration,
    polled: Vec<Polled>,
    tracker: Tracker,
    /// The client's `qmp_capabilities` succeeded.
    pub(crate) negotiated: bool,
    /// Ids handed out so far.
    count: u64,
    /// Bytes of a proxy command the socket did not take at once: they go before anything
    /// else the client sends.
    pub(crate) unsent: Vec<u8>,
    pub(crate) router: Router,
}

impl Poller {
    pub(crate) fn new(conn: u64, poll: &Poll) -> Poller {
        Poller {
            conn,
            interval: poll.interval,
            polled: poll
                .commands
                .iter()
                .map(|name| Polled {
                    name: name.clone(),
                    outstanding: false,
                    client_sent: None,
                })
                .collect(),
            tracker: Tracker::new(),
            negotiated: false,
            count: 0,
            unsent: Vec::new(),
            router: Router::default(),
        }
    }

    /// A client frame was forwarded.
    pub(crate) fn client_sent(&mut self, m: &Msg) {
        self.tracker.observe_msg(m);
        if let Some(p) = self
            .polled
            .iter_mut()
            .find(|p| m.name.as_deref() == Some(p.name.as_str()))
        {
            p.client_sent = Some(Instant::now());
        }
    }

    /// A complete frame from the monitor: marks `m` as the proxy's when it answers a proxy
    /// poll (unless part of it already went to the client), and returns whether to drop it.
    pub(crate) fn server_sent(&mut self, m: &mut Msg, partly_forwarded: bool) -> bool {
        let role = self.tracker.observe_msg(m);
        let Role::Reply {
            command, origin, ..
        } = role
        else {
            return false;
        };
        match origin {
            Origin::Proxy => {
                if let Some(p) = self
                    .polled
                    .iter_mut()
                    .find(|p| command.as_deref() == Some(p.name.as_str()))
                {
                    p.outstanding = false;
                }
                if partly_forwarded {
                    tracing::warn!(
                        conn = self.conn,
                        "a reply paired with a poll had already begun to reach the client; it is left to the client"
                    );
                    return false;
                }
                m.origin = Origin::Proxy;
                true
            }
            Origin::Peer => {
                if command.as_deref() == Some("qmp_capabilities") && m.kind == Kind::Return {
                    self.negotiated = true;
                }
                false
            }
        }
    }

    /// Whether a frame still incomplete may be the proxy's reply, and so must wait.
    pub(crate) fn hold_incomplete(&self) -> bool {
        self.tracker.next_reply_origin(self.conn) == Some(Origin::Proxy)
    }

    /// The commands due now, in order: not answered yet is skipped (polls never pile up),
    /// and so is a command the client itself sent within the interval.
    pub(crate) fn due(&self, now: Instant) -> Vec<usize> {
        let recent = |t: Option<Instant>| {
            t.is_some_and(|t| now.saturating_duration_since(t) < self.interval)
        };
        (0..self.polled.len())
            .filter(|&i| {
                let p = &self.polled[i];
                !p.outstanding && !recent(p.client_sent)
            })
            .collect()
    }

    /// The bytes of the next request for command `i`; the caller sends them, then calls
    /// [`Poller::sent`] with their record.
    pub(crate) fn request(&mut self, i: usize) -> Vec<u8> {
        self.count += 1;
        Poll::request(&self.polled[i].name, self.count)
    }

    /// Command `i`'s request, recorded as `m`, has been handed to the socket.
    pub(crate) fn sent(&mut self, i: usize, m: &Msg) {
        self.tracker.observe_msg(m);
        self.polled[i].outstanding = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Dir, Time};
    use crate::wire::Decoder;

    #[test]
    fn parses_commands_and_intervals() {
        let p: Poll = "query-migrate,query-jobs@500ms".parse().unwrap();
        assert_eq!(p.commands, ["query-migrate", "query-jobs"]);
        assert_eq!(p.interval, Duration::from_millis(500));
        let p: Poll = "query-status".parse().unwrap();
        assert_eq!(p.interval, DEFAULT_INTERVAL);
        assert_eq!(
            "x-query-virtio@2s".parse::<Poll>().unwrap().interval,
            Duration::from_secs(2)
        );
        assert_eq!(
            "query-jobs@1.5s".parse::<Poll>().unwrap().interval,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn refuses_what_is_not_a_poll_and_says_why() {
        let e = |s: &str| s.parse::<Poll>().unwrap_err().to_string();
        assert_eq!(
            e("stop"),
            "invalid poll 'stop': 'stop' is not a query command name (expected query-* or x-query-*: the proxy must not change the monitor's state behind the client's back)"
        );
        assert!(e("").contains("expected CMD[,CMD...][@INTERVAL]"));
        assert!(e("@1s").contains("expected CMD"));
        assert!(e("query-a,query-a").contains("'query-a' is named twice"));
        assert!(e("query-\"x").contains("not a query command name"));
        for bad in ["1", "5ms", "2h", "-1s", "s", "1e3ms", "4000s", "nan s"] {
            assert_eq!(
                e(&format!("query-jobs@{bad}")),
                format!(
                    "invalid poll interval '{bad}': expected a number with ms or s, from 10ms to 3600s (e.g. 500ms, 2s, 1.5s)"
                ),
            );
        }
    }

    #[test]
    fn requests_carry_the_proxy_id() {
        let r = Poll::request("query-migrate", 3);
        assert_eq!(
            r,
            br#"{"execute": "query-migrate", "id": {"qmptap-poll": 3}}"#
        );
    }

    /// Routes `chunks` of a server stream the way the relay does, with a poller that has
    /// negotiated and whose requests are `requests` (`true` for the proxy's), returning what
    /// the client gets and the origin of every recorded frame.
    fn route(requests: &[(bool, &str)], chunks: &[&[u8]]) -> (Vec<u8>, Vec<(Origin, String)>) {
        let poll = Poll {
            commands: vec!["query-migrate".into()],
            interval: Duration::from_secs(1),
        };
        let mut p = Poller::new(1, &poll);
        let mut seq = 0;
        let mut msg = |dir, bytes: &[u8]| {
            let frame = Frame {
                kind: crate::wire::FrameKind::Message,
                bytes: bytes.to_vec(),
                offset: 0,
                len: bytes.len() as u64,
            };
            seq += 1;
            Msg::from_frame(1, seq, Time::now(), dir, &frame, 0)
        };
        for (proxy, text) in requests {
            let mut m = msg(Dir::C2s, text.as_bytes());
            if *proxy {
                m.origin = Origin::Proxy;
                p.sent(0, &m);
            } else {
                p.client_sent(&m);
            }
        }
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        let mut recorded = Vec::new();
        for chunk in chunks {
            p.router.push(chunk);
            let mut frames = Vec::new();
            decoder.feed(chunk, &mut frames);
            for f in &frames {
                let mut m = msg(Dir::S2c, &f.bytes);
                let partly = p.router.partly_forwarded(f);
                let drop = p.server_sent(&mut m, partly);
                p.router.frame(f, drop, &mut out);
                recorded.push((m.origin, String::from_utf8_lossy(&f.bytes).into_owned()));
            }
            let hold = p.hold_incomplete();
            p.router.rest(decoder.incomplete_since(), hold, &mut out);
        }
        (out, recorded)
    }

    const POLL: &str = r#"{"execute": "query-migrate", "id": {"qmptap-poll": 1}}"#;

    #[test]
    fn a_proxy_reply_and_its_line_end_are_cut_out_of_one_read() {
        let (out, recorded) = route(
            &[
                (false, r#"{"execute": "query-status", "id": 1}"#),
                (true, POLL),
                (false, r#"{"execute": "query-name", "id": 2}"#),
            ],
            &[b"{\"return\": {\"status\": \"running\"}, \"id\": 1}\r\n{\"return\": {}, \"id\": {\"qmptap-poll\": 1}}\r\n{\"event\": \"STOP\"}\r\n{\"return\": {}, \"id\": 2}\r\n"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"return\": {\"status\": \"running\"}, \"id\": 1}\r\n{\"event\": \"STOP\"}\r\n{\"return\": {}, \"id\": 2}\r\n"
        );
        let origins: Vec<Origin> = recorded.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            origins,
            [Origin::Peer, Origin::Proxy, Origin::Peer, Origin::Peer]
        );
    }

    #[test]
    fn a_proxy_reply_split_over_reads_never_reaches_the_client() {
        let stream: &[u8] = b"{\"return\": {\"status\": \"active\"}, \"id\": {\"qmptap-poll\": 1}}\r\n{\"return\": {}, \"id\": 5}\r\n";
        // Every split point, including inside the line end after the proxy's reply.
        for cut in 1..stream.len() {
            let (out, recorded) = route(
                &[(true, POLL), (false, r#"{"execute": "stop", "id": 5}"#)],
                &[&stream[..cut], &stream[cut..]],
            );
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "{\"return\": {}, \"id\": 5}\r\n",
                "cut at {cut}"
            );
            assert_eq!(recorded[0].0, Origin::Proxy);
            assert_eq!(recorded[1].0, Origin::Peer);
        }
    }

    #[test]
    fn a_client_reply_flows_on_while_incomplete_when_no_poll_is_next() {
        let (out, _) = route(
            &[(false, r#"{"execute": "query-qmp-schema"}"#), (true, POLL)],
            &[
                b"{\"return\": [1, 2,",
                b" 3]}\r\n{\"return\": {}, \"id\": {\"qmptap-poll\": 1}}\r\n",
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"return\": [1, 2, 3]}\r\n"
        );
    }

    #[test]
    fn parse_errors_keep_their_place_in_the_queue() {
        // The garbage's error reply has no id; the poll's reply follows it.
        let (out, recorded) = route(
            &[(false, "GARBAGE"), (true, POLL)],
            &[b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray 'G'\"}}\r\n{\"return\": {}, \"id\": {\"qmptap-poll\": 1}}\r\n"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray 'G'\"}}\r\n"
        );
        assert_eq!(recorded[1].0, Origin::Proxy);
    }

    #[test]
    fn negotiation_comes_from_the_clients_successful_capabilities() {
        let poll: Poll = "query-migrate@1s".parse().unwrap();
        let mut p = Poller::new(1, &poll);
        let frame = |b: &[u8]| Frame {
            kind: crate::wire::FrameKind::Message,
            bytes: b.to_vec(),
            offset: 0,
            len: b.len() as u64,
        };
        let caps = Msg::from_frame(
            1,
            1,
            Time::now(),
            Dir::C2s,
            &frame(br#"{"execute": "qmp_capabilities"}"#),
            0,
        );
        p.client_sent(&caps);
        let mut refused = Msg::from_frame(
            1,
            2,
            Time::now(),
            Dir::S2c,
            &frame(br#"{"error": {"class": "GenericError", "desc": "x"}}"#),
            0,
        );
        assert!(!p.server_sent(&mut refused, false));
        assert!(!p.negotiated);
        p.client_sent(&caps);
        let mut ok = Msg::from_frame(1, 4, Time::now(), Dir::S2c, &frame(b"{\"return\": {}}"), 0);
        assert!(!p.server_sent(&mut ok, false));
        assert!(p.negotiated);
    }

    #[test]
    fn a_poll_still_unanswered_is_not_sent_again() {
        let poll: Poll = "query-migrate,query-jobs@100ms".parse().unwrap();
        let mut p = Poller::new(1, &poll);
        let now = Instant::now();
        assert_eq!(p.due(now), [0, 1]);
        let bytes = p.request(0);
        let frame = Frame {
            kind: crate::wire::FrameKind::Message,
            len: bytes.len() as u64,
            bytes,
            offset: 0,
        };
        let mut m = Msg::from_frame(1, 1, Time::now(), Dir::C2s, &frame, 0);
        m.origin = Origin::Proxy;
        p.sent(0, &m);
        let later = now + Duration::from_secs(1);
        assert_eq!(p.due(later), [1], "query-migrate is still awaited");
        let mut reply = Msg::from_frame(
            1,
            2,
            Time::now(),
            Dir::S2c,
            &Frame {
                kind: crate::wire::FrameKind::Message,
                bytes: br#"{"return": {}, "id": {"qmptap-poll": 1}}"#.to_vec(),
                offset: 0,
                len: 40,
            },
            0,
        );
        assert!(p.server_sent(&mut reply, false));
        assert_eq!(p.due(later), [0, 1]);
        // A client that polls by itself is not duplicated.
        let mut own = Msg::from_frame(
            1,
            3,
            Time::now(),
            Dir::C2s,
            &Frame {
                kind: crate::wire::FrameKind::Message,
                bytes: br#"{"execute": "query-jobs"}"#.to_vec(),
                offset: 0,
                len: 25,
            },
            0,
        );
        own.origin = Origin::Peer;
        p.client_sent(&own);
        assert_eq!(p.due(Instant::now()), [0]);
    }
}
