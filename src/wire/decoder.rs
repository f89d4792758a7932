//! Reassembly of a QMP byte stream into the messages QEMU's JSON streamer would hand on.
//!
//! The decoder combines the lexer of [`super::lexer`] with a reimplementation of QEMU's
//! streamer: it counts braces and brackets, emits a message as soon as they balance (or go
//! negative), enforces QEMU's limits, and after a lexical error skips input the way QEMU's
//! lexer does in its recovery state. Every frame keeps its exact wire bytes and stream offset,
//! so that recording and replaying lose nothing.

use nom::Err;
use serde::{Deserialize, Serialize};

use super::lexer::{self, Token};

/// Limits on one message, as enforced by QEMU's JSON streamer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum total size of a message's tokens, and of a single token (QEMU's
    /// `MAX_TOKEN_SIZE`, 64 MiB). A frame longer than this on the wire is also reported as
    /// [`LimitKind::MessageSize`], to keep memory bounded (see [`Decoder`]).
    pub max_message_bytes: usize,
    /// Maximum number of tokens in a message (QEMU's `MAX_TOKEN_COUNT`, 2 Mi).
    pub max_tokens: usize,
    /// Maximum nesting of braces and brackets together (QEMU's `MAX_NESTING`, 1024).
    pub max_depth: usize,
    /// How many bytes of an over-limit frame are kept in [`Frame::bytes`].
    pub keep_prefix: usize,
}

impl Limits {
    /// The limits of QEMU's streamer.
    pub const QEMU: Limits = Limits {
        max_message_bytes: 64 << 20,
        max_tokens: 2 << 20,
        max_depth: 1024,
        keep_prefix: 4096,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::QEMU
    }
}

/// Which limit a message exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitKind {
    /// The message's tokens (or one token) exceeded [`Limits::max_message_bytes`].
    MessageSize,
    /// The message had more than [`Limits::max_tokens`] tokens.
    TokenCount,
    /// Braces and brackets nested deeper than [`Limits::max_depth`].
    Depth,
}

/// What a frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// The tokens QEMU's streamer hands to its JSON parser as one message (which the parser
    /// may still reject; see [`super::Message`]).
    Message,
    /// A lexical error. The frame holds the tokens of the message it interrupted, the
    /// offending byte, and the bytes QEMU skipped while recovering.
    Invalid {
        /// The byte the lexer rejected.
        offending: u8,
        /// Index of that byte within [`Frame::bytes`].
        at: usize,
    },
    /// A limit was exceeded; [`Frame::bytes`] holds only a prefix of the frame.
    Limit(LimitKind),
    /// The stream ended inside a message (only from [`Decoder::finish`]).
    Truncated,
}

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: FrameKind,
    /// The frame's exact wire bytes (only a prefix for [`FrameKind::Limit`] frames).
    pub bytes: Vec<u8>,
    /// Stream offset of the frame's first byte.
    pub offset: u64,
    /// Length of the frame on the wire (equal to `bytes.len()` except for limit frames).
    pub len: u64,
}

/// A token that ran to the end of the buffered input.
#[derive(Debug, Clone, Copy)]
enum Partial {
    /// A string; scanning resumes at `resume` (never just after an unpaired backslash), so a
    /// long string is scanned once however many chunks it spans.
    String {
        start: usize,
        quote: u8,
        resume: usize,
    },
    /// A number or keyword; `checked` is where bytes not yet looked at begin. These are lexed
    /// again from `start` only when a byte arrives that may end them: a byte other than a
    /// digit for numbers (which can happen at most four times per number: `.`, `e`, sign and
    /// end) and other than `a-z` for keywords.
    Other {
        start: usize,
        checked: usize,
        keyword: bool,
    },
}

impl Partial {
    fn start(self) -> usize {
        match self {
            Partial::String { start, .. } | Partial::Other { start, .. } => start,
        }
    }

    fn shift(self, by: usize) -> Self {
        match self {
            Partial::String {
                start,
                quote,
                resume,
            } => Partial::String {
                start: start - by,
                quote,
                resume: resume - by,
            },
            Partial::Other {
                start,
                checked,
                keyword,
            } => Partial::Other {
                start: start - by,
                checked: checked - by,
                keyword,
            },
        }
    }
}

/// What became of a partial token when more input was looked at.
enum Step {
    /// Still incomplete: wait for more input.
    Wait,
    /// A complete token at `start..end`.
    Token(Token, usize, usize),
    /// A lexical error in the token starting at `start`, at index `at`.
    Error(usize, usize),
    /// The token grew past the size limit; QEMU hands the first `end - start` bytes on as a
    /// token and restarts lexing at `end`.
    Cut(usize, usize),
}

/// The frame being assembled.
#[derive(Debug)]
struct Pending {
    /// Stream offset of the frame's first byte.
    start: u64,
    /// Set once a lexical error was seen: the frame then ends when recovery does.
    invalid: Option<(u8, usize)>,
    /// Prefix kept once the frame grew past `max_message_bytes`; its other bytes are dropped.
    spill: Option<Vec<u8>>,
}

/// QEMU's streamer state for the current message.
#[derive(Debug, Default)]
struct Counts {
    brace: i64,
    bracket: i64,
    tokens: usize,
    token_bytes: usize,
}

/// Reassembles a QMP byte stream into [`Frame`]s exactly as QEMU frames it.
///
/// Feed it chunks of any size with [`Decoder::feed`]; the frames do not depend on how the
/// stream is split. Whitespace between messages belongs to no frame; whitespace inside a
/// message belongs to it.
///
/// Memory stays bounded by about `max_message_bytes` plus one chunk: a frame that grows
/// longer than `max_message_bytes` on the wire keeps only `keep_prefix` bytes and is reported
/// as [`LimitKind::MessageSize`]. QEMU counts only token bytes against its limit, so this
/// differs from QEMU only for a message padded with more than 64 MiB of whitespace, or for
/// more than 64 MiB of input skipped after a lexical error; the framing of what follows is
/// unaffected.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Input from stream offset `base` on: the pending frame (unless spilled), a partial token
    /// and the bytes not yet lexed.
    buf: Vec<u8>,
    base: u64,
    /// Next byte of `buf` to process.
    pos: usize,
    /// In QEMU's recovery state, skipping input after a lexical error.
    recovering: bool,
    partial: Option<Partial>,
    counts: Counts,
    pending: Option<Pending>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

fn offset_to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Decoder {
    /// A decoder with QEMU's limits.
    pub fn new() -> Self {
        Decoder::with_limits(Limits::QEMU)
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            recovering: false,
            partial: None,
            counts: Counts::default(),
            pending: None,
        }
    }

    /// While the decoder skips input after a lexical error, as QEMU's lexer does in its
    /// recovery state, the frame holding the error is not complete yet; QEMU has already
    /// reported the error at the offending byte, though. This gives what a server imitating
    /// QEMU needs to answer at that moment: the stream offset of the offending byte, the
    /// frame's bytes so far, and the offending byte's index in them. `None` when not
    /// recovering, or when the frame's start was already dropped (an oversized frame).
    pub fn recovering_from(&self) -> Option<(u64, &[u8], usize)> {
        if !self.recovering {
            return None;
        }
        let pending = self.pending.as_ref()?;
        if pending.spill.is_some() {
            return None;
        }
        let (_, at) = pending.invalid?;
        let start = offset_to_usize(pending.start.checked_sub(self.base)?);
        let bytes = self.buf.get(start..self.pos.max(start))?;
        (at < bytes.len()).then(|| (pending.start + at as u64, bytes, at))
    }

    /// Stream offset of the first byte of the frame still incomplete — a message whose
    /// brackets have not balanced yet, a token that has not ended, or a lexical error whose
    /// recovery is still skipping input — or `None` at a frame boundary, where bytes of
    /// another stream could be spliced in without changing how any frame is cut.
    pub fn incomplete_since(&self) -> Option<u64> {
        if let Some(p) = &self.pending {
            return Some(p.start);
        }
        if let Some(partial) = self.partial {
            return Some(self.base + partial.start() as u64);
        }
        self.recovering.then_some(self.base + self.pos as u64)
    }

    /// Bytes currently held (pending frame, partial token and unprocessed input).
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + self
                .pending
                .as_ref()
                .and_then(|p| p.spill.as_ref())
                .map_or(0, Vec::len)
    }

    /// Feed the next chunk of the stream, appending the frames it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Frame>) {
        self.buf.extend_from_slice(chunk);
        self.run(out);
        self.spill();
        self.compact();
    }

    /// End of stream: return the frame left incomplete, if any, and reset the decoder (the
    /// next byte fed is offset 0 of a new stream).
    ///
    /// A pending message, or a token that had not ended, yields a [`FrameKind::Truncated`]
    /// frame holding every byte from the message's start; a lexical error whose recovery was
    /// still skipping input yields its [`FrameKind::Invalid`] frame.
    pub fn finish(&mut self) -> Option<Frame> {
        let end = self.buf.len();
        if self.pending.is_none()
            && let Some(p) = self.partial
        {
            self.pending = Some(Pending {
                start: self.base + p.start() as u64,
                invalid: None,
                spill: None,
            });
        }
        let frame = match self.pending.as_ref().map(|p| p.invalid) {
            None => None,
            Some(Some((offending, at))) => {
                self.take_frame(FrameKind::Invalid { offending, at }, end)
            }
            Some(None) => self.take_frame(FrameKind::Truncated, end),
        };
        *self = Decoder::with_limits(self.limits);
        frame
    }

    /// Process as much of `buf` as possible.
    fn run(&mut self, out: &mut Vec<Frame>) {
        loop {
            if let Some(partial) = self.partial {
                match self.resume(partial) {
                    Step::Wait => return,
                    Step::Token(token, start, end) => {
                        self.partial = None;
                        self.pos = end;
                        self.on_token(Some(token), start, end, out);
                    }
                    Step::Error(start, at) => {
                        self.partial = None;
                        self.on_error(start, at);
                    }
                    Step::Cut(start, end) => {
                        self.partial = None;
                        self.pos = end;
                        self.on_token(None, start, end, out);
                    }
                }
                continue;
            }
            let Some(&first) = self.buf.get(self.pos) else {
                return;
            };
            if self.recovering {
                let rest = &self.buf[self.pos..];
                match rest.iter().position(|&b| !lexer::is_recovery_skip(b)) {
                    None => {
                        self.pos = self.buf.len();
                        return;
                    }
                    Some(n) => {
                        // The byte that ends recovery is not consumed: it starts what follows.
                        self.pos += n;
                        self.recovering = false;
                        if let Some((offending, at)) = self.pending.as_ref().and_then(|p| p.invalid)
                        {
                            self.emit(FrameKind::Invalid { offending, at }, self.pos, out);
                        }
                    }
                }
                continue;
            }
            let start = self.pos;
            let cap = self.cap(start);
            match lexer::token(&self.buf[start..cap]) {
                Ok((rest, Token::Whitespace)) => self.pos = cap - rest.len(),
                Ok((rest, token)) => {
                    let end = cap - rest.len();
                    self.pos = end;
                    self.on_token(Some(token), start, end, out);
                }
                Err(Err::Error(e) | Err::Failure(e)) => self.on_error(start, start + e.offset),
                Err(Err::Incomplete(_)) => {
                    if cap - start > self.limits.max_message_bytes {
                        self.pos = cap;
                        self.on_token(None, start, cap, out);
                    } else {
                        self.partial = Some(match first {
                            b'"' | b'\'' => Partial::String {
                                start,
                                quote: first,
                                resume: start + 1,
                            },
                            _ => Partial::Other {
                                start,
                                checked: cap,
                                keyword: first.is_ascii_lowercase(),
                            },
                        });
                    }
                }
            }
        }
    }

    /// End of the bytes a token starting at `start` may use: QEMU hands a token on as soon as
    /// it has grown past `max_message_bytes`, so lexing never looks further.
    fn cap(&self, start: usize) -> usize {
        let limit = start
            .saturating_add(self.limits.max_message_bytes)
            .saturating_add(1);
        self.buf.len().min(limit)
    }

    /// Continue a partial token with the bytes that arrived since it was last looked at.
    fn resume(&mut self, partial: Partial) -> Step {
        let max = self.limits.max_message_bytes;
        match partial {
            Partial::String {
                start,
                quote,
                resume,
            } => {
                let cap = self.cap(start);
                match lexer::string_progress(&self.buf[resume..cap], quote) {
                    Ok((rest, true)) => {
                        Step::Token(Token::String { quote }, start, cap - rest.len())
                    }
                    Ok((rest, false)) => {
                        if cap - start > max {
                            Step::Cut(start, cap)
                        } else {
                            self.partial = Some(Partial::String {
                                start,
                                quote,
                                resume: cap - rest.len(),
                            });
                            Step::Wait
                        }
                    }
                    Err(Err::Error(e) | Err::Failure(e)) => Step::Error(start, resume + e.offset),
                    // string_progress never asks for more input; treat it as "no progress".
                    Err(Err::Incomplete(_)) => Step::Wait,
                }
            }
            Partial::Other {
                start,
                checked,
                keyword,
            } => {
                let cap = self.cap(start);
                if cap == checked {
                    return Step::Wait;
                }
                let continues = |b: &u8| {
                    if keyword {
                        b.is_ascii_lowercase()
                    } else {
                        b.is_ascii_digit()
                    }
                };
                // A number seen so far as "0" or "-0" ends in an error at its next digit rather
                // than continuing: while what was already seen is that short, always look
                // again (measured on what was seen before, not with the new bytes: "0" then
                // "30" must not wait as a three-digit number).
                let may_end = cap - start > max
                    || (!keyword && checked - start <= 2)
                    || !self.buf[checked..cap].iter().all(continues);
                if !may_end {
                    self.partial = Some(Partial::Other {
                        start,
                        checked: cap,
                        keyword,
                    });
                    return Step::Wait;
                }
                match lexer::token(&self.buf[start..cap]) {
                    Ok((rest, token)) => Step::Token(token, start, cap - rest.len()),
                    Err(Err::Error(e) | Err::Failure(e)) => Step::Error(start, start + e.offset),
                    Err(Err::Incomplete(_)) => {
                        if cap - start > max {
                            Step::Cut(start, cap)
                        } else {
                            self.partial = Some(Partial::Other {
                                start,
                                checked: cap,
                                keyword,
                            });
                            Step::Wait
                        }
                    }
                }
            }
        }
    }

    /// QEMU's `json_message_process_token` for a token at `start..end` (`None`: a token cut
    /// at the size limit, which never balances anything).
    fn on_token(&mut self, token: Option<Token>, start: usize, end: usize, out: &mut Vec<Frame>) {
        let len = end - start;
        let c = &mut self.counts;
        match token {
            Some(Token::LCurly) => c.brace += 1,
            Some(Token::RCurly) => c.brace -= 1,
            Some(Token::LSquare) => c.bracket += 1,
            Some(Token::RSquare) => c.bracket -= 1,
            _ => {}
        }
        if self.pending.is_none() {
            self.pending = Some(Pending {
                start: self.base + start as u64,
                invalid: None,
                spill: None,
            });
        }
        // Checked before the token is added, in QEMU's order.
        let max_depth = i64::try_from(self.limits.max_depth).unwrap_or(i64::MAX);
        let exceeded = if c.token_bytes.saturating_add(len).saturating_add(1)
            > self.limits.max_message_bytes
        {
            Some(LimitKind::MessageSize)
        } else if c.tokens.saturating_add(1) > self.limits.max_tokens {
            Some(LimitKind::TokenCount)
        } else if c.brace.saturating_add(c.bracket) > max_depth {
            Some(LimitKind::Depth)
        } else {
            None
        };
        if let Some(kind) = exceeded {
            self.counts = Counts::default();
            self.emit(FrameKind::Limit(kind), end, out);
            return;
        }
        c.tokens += 1;
        c.token_bytes += len;
        if (c.brace > 0 || c.bracket > 0) && c.brace >= 0 && c.bracket >= 0 {
            return;
        }
        // Balanced, or a closing token without its opener: QEMU parses what it has.
        self.counts = Counts::default();
        self.emit(FrameKind::Message, end, out);
    }

    /// A lexical error in the token starting at `start`, at index `at`: QEMU discards the
    /// message so far and skips input until it can resynchronise.
    fn on_error(&mut self, start: usize, at: usize) {
        self.counts = Counts::default();
        let base = self.base;
        let pending = self.pending.get_or_insert(Pending {
            start: base + start as u64,
            invalid: None,
            spill: None,
        });
        let offending = self.buf.get(at).copied().unwrap_or(0);
        let at_in_frame = offset_to_usize(base + at as u64 - pending.start);
        pending.invalid = Some((offending, at_in_frame));
        self.recovering = true;
        self.pos = at + 1;
    }

    /// Complete the pending frame at buffer index `end` and append it to `out`.
    fn emit(&mut self, kind: FrameKind, end: usize, out: &mut Vec<Frame>) {
        if let Some(frame) = self.take_frame(kind, end) {
            out.push(frame);
        }
    }

    fn take_frame(&mut self, kind: FrameKind, end: usize) -> Option<Frame> {
        let pending = self.pending.take()?;
        let offset = pending.start;
        let len = self.base + end as u64 - offset;
        let keep = self.limits.keep_prefix;
        // A frame longer than the size limit is reported as such whatever it is: its bytes
        // may already have been dropped, and the decision must not depend on chunking.
        let kind = if len > self.limits.max_message_bytes as u64 {
            match kind {
                FrameKind::Limit(k) => FrameKind::Limit(k),
                _ => FrameKind::Limit(LimitKind::MessageSize),
            }
        } else {
            kind
        };
        let bytes = if let Some(spill) = pending.spill {
            spill
        } else {
            let from = offset_to_usize(offset - self.base);
            let whole = &self.buf[from..end];
            match kind {
                FrameKind::Limit(_) => whole[..whole.len().min(keep)].to_vec(),
                _ => whole.to_vec(),
            }
        };
        Some(Frame {
            kind,
            bytes,
            offset,
            len,
        })
    }

    /// Keep only a prefix of a pending frame that has outgrown the size limit.
    fn spill(&mut self) {
        let (base, max, keep) = (
            self.base,
            self.limits.max_message_bytes,
            self.limits.keep_prefix,
        );
        if let Some(p) = self.pending.as_mut()
            && p.spill.is_none()
        {
            let from = offset_to_usize(p.start - base);
            if self.buf.len() - from > max {
                let to = from + keep.min(self.buf.len() - from);
                p.spill = Some(self.buf[from..to].to_vec());
            }
        }
    }

    /// Drop the bytes no longer needed. Only bytes after the last completed frame move, and
    /// those all arrived with the last chunk, so this costs at most one chunk per feed.
    fn compact(&mut self) {
        let keep_from = match (&self.pending, self.partial) {
            (Some(p), _) if p.spill.is_none() => offset_to_usize(p.start - self.base),
            (_, Some(partial)) => partial.start(),
            _ => self.pos,
        };
        if keep_from == 0 {
            return;
        }
        self.buf.drain(..keep_from);
        self.base += keep_from as u64;
        self.pos -= keep_from;
        self.partial = self.partial.map(|p| p.shift(keep_from));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_since_marks_where_the_unfinished_frame_began() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        assert_eq!(d.incomplete_since(), None);
        d.feed(b"{\"a\": 1}  {\"b\"", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.incomplete_since(), Some(10));
        d.feed(b": [1]}\r\n", &mut out);
        assert_eq!(
            d.incomplete_since(),
            None,
            "whitespace between frames is a boundary"
        );
        d.feed(b"tru", &mut out);
        assert_eq!(
            d.incomplete_since(),
            Some(22),
            "a keyword that has not ended"
        );
        d.feed(b"e GAR", &mut out);
        assert_eq!(
            d.incomplete_since(),
            Some(27),
            "recovering after a lexical error"
        );
        d.feed(b"\n", &mut out);
        assert_eq!(d.incomplete_since(), None);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn recovering_from_points_at_the_offending_byte_until_recovery_ends() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.feed(b"{}GAR", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.recovering_from(), Some((2, &b"GAR"[..], 0)));
        d.feed(b"BAGE", &mut out);
        assert_eq!(d.recovering_from(), Some((2, &b"GARBAGE"[..], 0)));
        d.feed(b"\n", &mut out);
        assert_eq!(d.recovering_from(), None);
        assert_eq!(
            out[1].kind,
            FrameKind::Invalid {
                offending: b'G',
                at: 0
            }
        );
        assert_eq!(out[1].offset, 2);
    }

    /// Found by the fuzzer: "0" waiting at the end of one chunk, "30" in the next. QEMU's lexer
    /// fails at the '3' (a leading zero takes no digits), however the bytes are split.
    #[test]
    fn leading_zero_then_digits_split_across_chunks() {
        let whole = {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            d.feed(b"[030", &mut out);
            out.extend(d.finish());
            out
        };
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for chunk in [&b"["[..], b"0", b"30"] {
            d.feed(chunk, &mut out);
        }
        out.extend(d.finish());
        assert_eq!(out, whole);
        assert_eq!(
            whole[0].kind,
            FrameKind::Invalid {
                offending: b'3',
                at: 2
            }
        );
    }

    fn message(bytes: &[u8], offset: u64) -> Frame {
        Frame {
            kind: FrameKind::Message,
            bytes: bytes.to_vec(),
            offset,
            len: bytes.len() as u64,
        }
    }

    fn invalid(bytes: &[u8], offset: u64, at: usize) -> Frame {
        Frame {
            kind: FrameKind::Invalid {
                offending: bytes[at],
                at,
            },
            bytes: bytes.to_vec(),
            offset,
            len: bytes.len() as u64,
        }
    }

    /// Decode `input` in chunks of `size` bytes, including the frame from `finish`.
    fn decode_chunked(input: &[u8], size: usize, limits: Limits) -> Vec<Frame> {
        let mut decoder = Decoder::with_limits(limits);
        let mut out = Vec::new();
        for chunk in input.chunks(size.max(1)) {
            decoder.feed(chunk, &mut out);
        }
        out.extend(decoder.finish());
        assert_eq!(decoder.buffered(), 0);
        out
    }

    /// Decode `input` whole, check the invariants against every chunk size, and return the
    /// frames.
    fn check(input: &[u8], limits: Limits) -> Vec<Frame> {
        let whole = decode_chunked(input, input.len(), limits);
        for size in 1..input.len() {
            assert_eq!(
                decode_chunked(input, size, limits),
                whole,
                "chunk size {size}"
            );
        }
        let mut at = 0u64;
        let mut limited = false;
        for frame in &whole {
            let start = usize::try_from(frame.offset).unwrap();
            let gap = &input[usize::try_from(at).unwrap()..start];
            if !limited {
                assert!(gap.iter().all(|&b| lexer::is_whitespace(b)), "gap {gap:?}");
            }
            if let FrameKind::Limit(_) = frame.kind {
                limited = true;
                assert!(frame.bytes.len() <= limits.keep_prefix);
                assert_eq!(&input[start..start + frame.bytes.len()], &frame.bytes[..]);
            } else {
                assert_eq!(frame.len, frame.bytes.len() as u64);
                assert_eq!(&input[start..start + frame.bytes.len()], &frame.bytes[..]);
            }
            at = frame.offset + frame.len;
        }
        let tail = &input[usize::try_from(at).unwrap()..];
        assert!(
            tail.iter().all(|&b| lexer::is_whitespace(b)),
            "tail {tail:?}"
        );
        whole
    }

    fn frames(input: &[u8]) -> Vec<Frame> {
        check(input, Limits::QEMU)
    }

    #[test]
    fn several_messages_in_one_chunk() {
        let input = b"{\"QMP\": {}}\r\n{\"return\": {}}\r\n  [1, 2]\n";
        assert_eq!(
            frames(input),
            vec![
                message(b"{\"QMP\": {}}", 0),
                message(b"{\"return\": {}}", 13),
                message(b"[1, 2]", 31),
            ]
        );
    }

    #[test]
    fn byte_by_byte() {
        let input = b"{\"execute\": \"query-status\", \"id\": 12}\n";
        let frames = decode_chunked(input, 1, Limits::QEMU);
        assert_eq!(frames, vec![message(&input[..input.len() - 1], 0)]);
    }

    #[test]
    fn pretty_printed_reply() {
        let input = b"{\r\n    \"return\": {\r\n    }\r\n}\r\n";
        assert_eq!(frames(input), vec![message(&input[..input.len() - 2], 0)]);
    }

    #[test]
    fn single_quoted_strings() {
        let input = b"{'execute': 'a\"b\\'c', \"x\": \"it\\'s\"}";
        assert_eq!(frames(input), vec![message(input, 0)]);
    }

    #[test]
    fn escapes_and_braces_inside_strings() {
        let input = b"{\"a\": \"\\\" } \\\\ \\u00e9 {\", 'b': '\\\" ] \\\\ \\u00e9 ['}";
        assert_eq!(frames(input), vec![message(input, 0)]);
    }

    #[test]
    fn nested_arrays() {
        let input = b"[[1, [2, [3]]], []] [[]]";
        assert_eq!(
            frames(input),
            vec![message(b"[[1, [2, [3]]], []]", 0), message(b"[[]]", 20)]
        );
    }

    #[test]
    fn numbers() {
        let input = b"-0 1e5 1.5E-3 0.25 -12 ";
        let got: Vec<Vec<u8>> = frames(input).into_iter().map(|f| f.bytes).collect();
        let want: Vec<&[u8]> = vec![b"-0", b"1e5", b"1.5E-3", b"0.25", b"-12"];
        assert_eq!(got, want);
        // A digit after a leading zero is an error on that digit; recovery then skips "2".
        assert_eq!(
            frames(b"012\n7 "),
            vec![invalid(b"012", 0, 1), message(b"7", 4)]
        );
        // "0e1" is the integer 0, the keyword "e" and the integer 1.
        let got: Vec<Vec<u8>> = frames(b"0e1 ").into_iter().map(|f| f.bytes).collect();
        assert_eq!(got, vec![b"0".to_vec(), b"e".to_vec(), b"1".to_vec()]);
        // Errors inside numbers: "-x", "1.x", "1ex".
        assert_eq!(frames(b"-x\n"), vec![invalid(b"-x", 0, 1)]);
        assert_eq!(frames(b"1.}"), vec![invalid(b"1.}", 0, 2)]);
        // The offending byte is consumed even when it is structural.
        assert_eq!(frames(b"1e+,"), vec![invalid(b"1e+,", 0, 3)]);
    }

    #[test]
    fn keywords() {
        let got: Vec<Vec<u8>> = frames(b"true false null foo ")
            .into_iter()
            .map(|f| f.bytes)
            .collect();
        assert_eq!(
            got,
            vec![
                b"true".to_vec(),
                b"false".to_vec(),
                b"null".to_vec(),
                b"foo".to_vec()
            ]
        );
    }

    #[test]
    fn garbage_then_message() {
        let input = b"GARBAGE\n{\"execute\":\"x\"}";
        assert_eq!(
            frames(input),
            vec![
                invalid(b"GARBAGE", 0, 0),
                message(b"{\"execute\":\"x\"}", 8)
            ]
        );
    }

    #[test]
    fn error_in_the_middle_of_a_message() {
        let input = b"{\"execute\": @, \"x\": 1}";
        assert_eq!(
            frames(input),
            vec![
                invalid(b"{\"execute\": @", 0, 12),
                message(b",", 13),
                message(b"\"x\"", 15),
                message(b":", 18),
                message(b"1", 20),
                message(b"}", 21),
            ]
        );
    }

    #[test]
    fn resync_on_0xff() {
        let input = b"{\"a\": \xff{\"b\": 1}";
        assert_eq!(
            frames(input),
            vec![invalid(b"{\"a\": \xff", 0, 6), message(b"{\"b\": 1}", 7)]
        );
        // Recovery stops at 0xFF, which is itself an error in the start state.
        let input = b"Xyz\xff\xff\n";
        assert_eq!(
            frames(input),
            vec![
                invalid(b"Xyz", 0, 0),
                invalid(b"\xff", 3, 0),
                invalid(b"\xff", 4, 0)
            ]
        );
    }

    #[test]
    fn stray_close_and_lone_scalars() {
        assert_eq!(frames(b"}"), vec![message(b"}", 0)]);
        assert_eq!(frames(b"{]"), vec![message(b"{]", 0)]);
        assert_eq!(frames(b"123\n"), vec![message(b"123", 0)]);
        // Without a byte after it, a number might still go on.
        let truncated = Frame {
            kind: FrameKind::Truncated,
            bytes: b"123".to_vec(),
            offset: 1,
            len: 3,
        };
        assert_eq!(frames(b" 123"), vec![truncated]);
    }

    #[test]
    fn control_char_inside_string() {
        // Recovery skips `b"` (printable) and stops at the newline.
        let input = b"\"a\x01b\"\n{}";
        assert_eq!(
            frames(input),
            vec![invalid(b"\"a\x01b\"", 0, 2), message(b"{}", 6)]
        );
        // Escape followed by a control character.
        assert_eq!(frames(b"'\\\x02'"), vec![invalid(b"'\\\x02'", 0, 2)]);
    }

    #[test]
    fn non_utf8_inside_string_is_lexically_fine() {
        let input = b"\"\xc3\x28\x80\xfd\"";
        assert_eq!(frames(input), vec![message(input, 0)]);
    }

    #[test]
    fn depth_limit() {
        let mut input = vec![b'['; 1025];
        input.extend_from_slice(b"]]\n");
        let frames = decode_chunked(&input, 7, Limits::QEMU);
        assert_eq!(
            frames[0],
            Frame {
                kind: FrameKind::Limit(LimitKind::Depth),
                bytes: vec![b'['; 1025],
                offset: 0,
                len: 1025,
            }
        );
        // The counts were reset: each `]` is now a message of its own.
        assert_eq!(&frames[1..], &[message(b"]", 1025), message(b"]", 1026)]);
        let mut ok = vec![b'['; 1024];
        ok.extend(vec![b']'; 1024]);
        assert_eq!(
            decode_chunked(&ok, 100, Limits::QEMU),
            vec![message(&ok, 0)]
        );
    }

    #[test]
    fn message_size_limit() {
        let limits = Limits {
            max_message_bytes: 16,
            keep_prefix: 4,
            ..Limits::QEMU
        };
        let input = b"{\"a\": \"0123456789\"} {}";
        assert_eq!(
            check(input, limits),
            vec![
                Frame {
                    kind: FrameKind::Limit(LimitKind::MessageSize),
                    bytes: b"{\"a\"".to_vec(),
                    offset: 0,
                    len: 18,
                },
                message(b"}", 18),
                message(b"{}", 20),
            ]
        );
    }

    #[test]
    fn oversized_token_is_cut() {
        let limits = Limits {
            max_message_bytes: 8,
            ..Limits::QEMU
        };
        // QEMU hands on the first 9 bytes of the string and lexes the rest afresh.
        let input = b"\"abcdefghijkl\"";
        assert_eq!(
            check(input, limits),
            vec![
                Frame {
                    kind: FrameKind::Limit(LimitKind::MessageSize),
                    bytes: b"\"abcdefgh".to_vec(),
                    offset: 0,
                    len: 9,
                },
                message(b"ijkl", 9),
                Frame {
                    kind: FrameKind::Truncated,
                    bytes: b"\"".to_vec(),
                    offset: 13,
                    len: 1,
                },
            ]
        );
        let input = b"123456789123 ";
        let got = check(input, limits);
        assert_eq!(got[0].kind, FrameKind::Limit(LimitKind::MessageSize));
        assert_eq!(got[0].len, 9);
        assert_eq!(got[1], message(b"123", 9));
        // Restarting in the middle of a number can itself be an error ("0" then "1").
        let got = check(b"123456789012 ", limits);
        assert_eq!(got[1], invalid(b"012 ", 9, 1));
    }

    #[test]
    fn token_count_limit() {
        let limits = Limits {
            max_tokens: 3,
            ..Limits::QEMU
        };
        assert_eq!(
            check(b"[1,2] [3]", limits),
            vec![
                Frame {
                    kind: FrameKind::Limit(LimitKind::TokenCount),
                    bytes: b"[1,2".to_vec(),
                    offset: 0,
                    len: 4,
                },
                message(b"]", 4),
                message(b"[3]", 6),
            ]
        );
    }

    #[test]
    fn whitespace_heavy_frame_is_bounded() {
        let limits = Limits {
            max_message_bytes: 32,
            keep_prefix: 3,
            ..Limits::QEMU
        };
        let mut input = b"[1,".to_vec();
        input.extend(vec![b' '; 100]);
        input.extend_from_slice(b"2] [3]");
        let got = check(&input, limits);
        assert_eq!(got[0].kind, FrameKind::Limit(LimitKind::MessageSize));
        assert_eq!(got[0].len, 105);
        assert_eq!(got[0].bytes, b"[1,");
        assert_eq!(got[1], message(b"[3]", 106));
    }

    #[test]
    fn truncated_at_finish() {
        let input = b"{\"return\": {\"a\": ";
        assert_eq!(
            frames(input),
            vec![Frame {
                kind: FrameKind::Truncated,
                bytes: input.to_vec(),
                offset: 0,
                len: input.len() as u64,
            }]
        );
        assert_eq!(
            frames(b"{} {\"a\": \"unfinished"),
            vec![
                message(b"{}", 0),
                Frame {
                    kind: FrameKind::Truncated,
                    bytes: b"{\"a\": \"unfinished".to_vec(),
                    offset: 3,
                    len: 17,
                }
            ]
        );
        // A lexical error whose recovery is still running at the end.
        assert_eq!(frames(b"[1, %abc"), vec![invalid(b"[1, %abc", 0, 4)]);
        let mut decoder = Decoder::new();
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn long_string_over_many_chunks() {
        let mut input = b"{\"s\": \"".to_vec();
        for i in 0..200_000u32 {
            input.push(b"ab\\\"c"[(i % 5) as usize]);
        }
        input.extend_from_slice(b"\"}\n");
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(997) {
            decoder.feed(chunk, &mut out);
            assert!(decoder.buffered() <= input.len());
        }
        assert_eq!(out, vec![message(&input[..input.len() - 1], 0)]);
    }
}
