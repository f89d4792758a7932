//! Zero-copy token parsers for QEMU's dialect of JSON.
//!
//! These are `nom` streaming parsers: a token that runs to the end of the input yields
//! [`nom::Err::Incomplete`], because the next chunk may extend it (a number or keyword ends only
//! when a byte that cannot continue it is seen, exactly like QEMU's lexer, which ends them by
//! lookahead). A lexical error yields [`nom::Err::Error`] with a [`LexError`] that tells which
//! byte is at fault; as in QEMU, that byte belongs to the erroneous token.
//!
//! The byte classes reproduce the table of `qobject/json-lexer.c` in modern QEMU:
//! strings accept any byte `0x20..=0xFD` (so invalid UTF-8 passes the lexer and is left to the
//! parser), both `"` and `'` quote strings, an escape is a backslash followed by any byte
//! `0x20..=0xFD`, numbers follow RFC 8259's grammar, and any run of `a-z` is a keyword.

use nom::error::{ErrorKind, ParseError};
use nom::{Err, IResult, Needed};

/// One token of QEMU's JSON dialect.
///
/// The token's bytes are the input consumed by [`token`]; they are not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Token {
    /// `{`
    LCurly,
    /// `}`
    RCurly,
    /// `[`
    LSquare,
    /// `]`
    RSquare,
    /// `:`
    Colon,
    /// `,`
    Comma,
    /// A string, including both quotes; escapes are not decoded (nor checked beyond their
    /// byte range: QEMU's parser does that).
    String {
        /// The quote byte, `b'"'` or `b'\''`.
        quote: u8,
    },
    /// An integer: `-?(0|[1-9][0-9]*)`.
    Integer,
    /// A number with a fraction and/or an exponent.
    Float,
    /// A run of `a-z`; whether it is `true`, `false` or `null` is the parser's business.
    Keyword,
    /// A run of space, tab, CR and LF, which QEMU skips between tokens.
    Whitespace,
}

/// A lexical error: the byte at `offset` cannot start or continue a token.
///
/// In QEMU the offending byte is consumed as part of the error token, after which the lexer
/// skips input until a point where it can resynchronise (see `Decoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unexpected byte {byte:?} at offset {offset}")]
pub struct LexError {
    /// Offset of the offending byte from the start of the input given to [`token`]
    /// (0 when the error was built by a generic `nom` combinator, see [`ParseError`]).
    pub offset: usize,
    /// The offending byte (`None` only for errors raised by generic combinators on empty input).
    pub byte: Option<u8>,
    /// The `nom` error kind, for errors raised by generic combinators; [`ErrorKind::Char`]
    /// for the lexer's own errors.
    pub kind: ErrorKind,
    /// Length of the input remaining at the offending byte; used to turn the position into
    /// an offset once the start of the token is known.
    remaining: usize,
}

impl LexError {
    /// An error at the first byte of `rest`.
    fn at(rest: &[u8]) -> Self {
        LexError {
            offset: 0,
            byte: rest.first().copied(),
            kind: ErrorKind::Char,
            remaining: rest.len(),
        }
    }

    /// Recompute `offset` relative to `input`, of which the error's position is a suffix.
    fn relative_to(mut self, input: &[u8]) -> Self {
        self.offset = input.len().saturating_sub(self.remaining);
        self
    }
}

impl ParseError<&[u8]> for LexError {
    fn from_error_kind(input: &[u8], kind: ErrorKind) -> Self {
        LexError {
            kind,
            ..LexError::at(input)
        }
    }

    fn append(_input: &[u8], _kind: ErrorKind, other: Self) -> Self {
        // The innermost position is the offending byte; outer context adds nothing.
        other
    }
}

type LexResult<'a, T> = IResult<&'a [u8], T, LexError>;

fn incomplete<T>() -> LexResult<'static, T> {
    Err(Err::Incomplete(Needed::new(1)))
}

fn fail<T>(rest: &[u8]) -> LexResult<'_, T> {
    Err(Err::Error(LexError::at(rest)))
}

/// Whether QEMU skips `b` between tokens.
#[inline]
pub fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether `b` may appear unescaped inside a string (apart from the closing quote and `\`).
#[inline]
fn is_string_byte(b: u8) -> bool {
    (0x20..=0xFD).contains(&b)
}

/// Whether, in QEMU's recovery state after a lexical error, `b` is skipped.
///
/// Recovery stops (without consuming) at a structural character, at an ASCII control
/// character other than tab (so CR and LF resynchronise), and at `0xFE`/`0xFF`, which never
/// occur in UTF-8 and which QMP clients send on purpose to reset the parser.
#[inline]
pub fn is_recovery_skip(b: u8) -> bool {
    match b {
        b'{' | b'}' | b'[' | b']' | b':' | b',' => false,
        b'\t' => true,
        _ => is_string_byte(b),
    }
}

/// Lex one token from the start of `input`.
///
/// Returns the rest of the input and the token; the token's bytes are
/// `&input[..input.len() - rest.len()]`. Whitespace runs are returned as
/// [`Token::Whitespace`] and, unlike real tokens, are complete at the end of the input
/// (splitting a run of whitespace changes nothing).
///
/// # Errors
///
/// [`Err::Incomplete`] when the token runs to the end of `input` (or `input` is empty);
/// [`Err::Error`] with the offending byte's offset when the input is not a token.
pub fn token(input: &[u8]) -> LexResult<'_, Token> {
    let Some(&first) = input.first() else {
        return incomplete();
    };
    let single = |t: Token| Ok((&input[1..], t));
    let result = match first {
        b'{' => single(Token::LCurly),
        b'}' => single(Token::RCurly),
        b'[' => single(Token::LSquare),
        b']' => single(Token::RSquare),
        b':' => single(Token::Colon),
        b',' => single(Token::Comma),
        b' ' | b'\t' | b'\r' | b'\n' => whitespace(input),
        b'"' | b'\'' => string(input),
        b'-' | b'0'..=b'9' => number(input),
        b'a'..=b'z' => keyword(input),
        _ => fail(input),
    };
    result.map_err(|e| e.map(|e| e.relative_to(input)))
}

/// A run of whitespace; complete even at the end of the input.
fn whitespace(input: &[u8]) -> LexResult<'_, Token> {
    let (rest, _) = nom::bytes::complete::take_while1(is_whitespace)(input)?;
    Ok((rest, Token::Whitespace))
}

/// A run of `a-z`, ended (without consuming it) by any other byte.
fn keyword(input: &[u8]) -> LexResult<'_, Token> {
    let (rest, _) = nom::bytes::streaming::take_while1(|b: u8| b.is_ascii_lowercase())(input)?;
    Ok((rest, Token::Keyword))
}

/// A quoted string, both quotes included.
fn string(input: &[u8]) -> LexResult<'_, Token> {
    let Some(&quote) = input.first() else {
        return incomplete();
    };
    match string_progress(&input[1..], quote)? {
        (rest, true) => Ok((rest, Token::String { quote })),
        (_, false) => incomplete(),
    }
}

/// Scan the inside of a string that is quoted by `quote`, as far as `input` allows.
///
/// This is the resumable core of string lexing, used by the decoder so that a long string
/// spread over many chunks is scanned once rather than from its start on every chunk.
/// `input` must start inside the string, at a point that is not just after an unpaired
/// backslash. Runs of plain bytes are skipped in bulk.
///
/// Returns `(rest, true)` after the closing quote, or `(rest, false)` when the input ends
/// first; `rest` is then empty or a lone backslash (an escape whose second byte has not
/// arrived) and scanning must resume at `rest`.
///
/// # Errors
///
/// [`Err::Error`] at a byte below `0x20` or at `0xFE`/`0xFF`, inside the string or after a
/// backslash.
pub fn string_progress(input: &[u8], quote: u8) -> LexResult<'_, bool> {
    scan_string(input, quote).map_err(|e| e.map(|e| e.relative_to(input)))
}

fn scan_string(input: &[u8], quote: u8) -> LexResult<'_, bool> {
    let mut rest = input;
    loop {
        // Bulk skip; the predicate is a couple of comparisons that the compiler turns into a
        // tight loop, which is what makes long strings (the schema reply) cheap.
        let (after, _) = nom::bytes::complete::take_while(|b: u8| {
            is_string_byte(b) && b != quote && b != b'\\'
        })(rest)?;
        rest = after;
        match rest.first() {
            None => return Ok((rest, false)),
            Some(&b) if b == quote => return Ok((&rest[1..], true)),
            Some(b'\\') => match rest.get(1) {
                None => return Ok((rest, false)),
                Some(&e) if is_string_byte(e) => rest = &rest[2..],
                Some(_) => return fail(&rest[1..]),
            },
            Some(_) => return fail(rest),
        }
    }
}

/// Digits after a point where at least one is required; `Incomplete` if they run to the end.
fn required_digits(input: &[u8]) -> LexResult<'_, ()> {
    match input.first() {
        None => incomplete(),
        Some(b) if b.is_ascii_digit() => {
            let (rest, _) = nom::bytes::streaming::take_while(|b: u8| b.is_ascii_digit())(input)?;
            Ok((rest, ()))
        }
        Some(_) => fail(input),
    }
}

/// A number, following the states of QEMU's lexer (zero, digits, sign, mantissa, exponent).
fn number(input: &[u8]) -> LexResult<'_, Token> {
    let mut rest = input;
    if let Some(b'-') = rest.first() {
        rest = &rest[1..];
    }
    // Integer part: a lone zero, or a non-zero digit followed by digits.
    let zero = match rest.first() {
        None => return incomplete(),
        Some(b'0') => {
            rest = &rest[1..];
            match rest.first() {
                None => return incomplete(),
                // "012": QEMU rejects the digit after a leading zero.
                Some(b) if b.is_ascii_digit() => return fail(rest),
                Some(_) => true,
            }
        }
        Some(b'1'..=b'9') => {
            rest = required_digits(rest)?.0;
            false
        }
        Some(_) => return fail(rest),
    };
    let mut kind = Token::Integer;
    if let Some(b'.') = rest.first() {
        rest = required_digits(&rest[1..])?.0;
        kind = Token::Float;
    }
    // QEMU's zero state has no transition on 'e': "0e1" is the integer "0" followed by the
    // keyword "e" and the integer "1". After a fraction or non-zero digits, 'e' starts an
    // exponent.
    if (kind == Token::Float || !zero) && matches!(rest.first(), Some(b'e' | b'E')) {
        rest = &rest[1..];
        if let Some(b'+' | b'-') = rest.first() {
            rest = &rest[1..];
        }
        rest = required_digits(rest)?.0;
        kind = Token::Float;
    }
    if rest.is_empty() {
        // A number ends only when a byte that cannot continue it is seen.
        return incomplete();
    }
    Ok((rest, kind))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The token and its length, or the error offset.
    fn lex(input: &[u8]) -> Result<(Token, usize), Option<usize>> {
        match token(input) {
            Ok((rest, t)) => Ok((t, input.len() - rest.len())),
            Err(Err::Error(e)) => Err(Some(e.offset)),
            Err(_) => Err(None),
        }
    }

    #[test]
    fn tokens_and_lookahead() {
        assert_eq!(lex(b"{x"), Ok((Token::LCurly, 1)));
        assert_eq!(lex(b"\"a\\\"b\" "), Ok((Token::String { quote: b'"' }, 6)));
        assert_eq!(lex(b"'a\"b\\''"), Ok((Token::String { quote: b'\'' }, 7)));
        assert_eq!(lex(b"-12.5e+3,"), Ok((Token::Float, 8)));
        assert_eq!(lex(b"12\xff"), Ok((Token::Integer, 2)));
        assert_eq!(lex(b"0e1"), Ok((Token::Integer, 1)));
        assert_eq!(lex(b"nullx1"), Ok((Token::Keyword, 5)));
        assert_eq!(lex(b" \r\n\t"), Ok((Token::Whitespace, 4)));
    }

    #[test]
    fn incomplete_at_end() {
        for input in [
            &b"12"[..],
            b"1.",
            b"1e",
            b"-",
            b"0",
            b"\"abc",
            b"'a\\",
            b"true",
            b"",
        ] {
            assert_eq!(lex(input), Err(None), "{input:?}");
        }
    }

    #[test]
    fn error_offsets() {
        assert_eq!(lex(b"%"), Err(Some(0)));
        assert_eq!(lex(b"A"), Err(Some(0)));
        assert_eq!(lex(b"012"), Err(Some(1)));
        assert_eq!(lex(b"-a"), Err(Some(1)));
        assert_eq!(lex(b"1.e5"), Err(Some(2)));
        assert_eq!(lex(b"1e+x"), Err(Some(3)));
        assert_eq!(lex(b"\"ab\ncd\""), Err(Some(3)));
        assert_eq!(lex(b"\"a\\\x01\""), Err(Some(3)));
        assert_eq!(lex(b"\"a\xfe\""), Err(Some(2)));
    }

    #[test]
    fn string_progress_resumes() {
        assert_eq!(
            string_progress(b"abc\\", b'"').unwrap(),
            (&b"\\"[..], false)
        );
        assert_eq!(
            string_progress(b"\\\"x\" 1", b'"').unwrap(),
            (&b" 1"[..], true)
        );
        assert_eq!(
            string_progress(b"a\x1f", b'"').map_err(|e| e.map(|e| e.offset)),
            Err(Err::Error(1))
        );
    }

    #[test]
    fn recovery_bytes() {
        assert!(is_recovery_skip(b'\t') && is_recovery_skip(b'a') && is_recovery_skip(0xFD));
        for b in [
            b'\n', b'\r', 0, 0x1F, 0xFE, 0xFF, b'{', b'}', b'[', b']', b':', b',',
        ] {
            assert!(!is_recovery_skip(b), "{b}");
        }
    }
}
