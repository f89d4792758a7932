//! The QAPI schema reader: "loosely JSON" text to [`Expr`]s, with positions.
//!
//! It only knows the syntax (objects, lists, single-quoted strings, `true`/`false`, `#`
//! comments); what the keys mean is [`super::compile`]'s business. It must never panic and
//! never recurse without bound, whatever the input: nesting is capped at [`MAX_DEPTH`].
//!
//! The grammar is LL(1), so the parsers dispatch on the next character instead of trying
//! alternatives: once a token has started, any failure is final (`nom::Err::Failure`) and
//! carries a message written for a human and the exact place it happened.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Arc;

use nom::IResult;
use nom::bytes::complete::{take_till, take_while, take_while1};
use nom::character::complete::char;
use nom::error::{ErrorKind, ParseError};

use super::{Dict, Expr, Key, Node, Pos, QapiError, Value};

/// Deepest nesting of lists and objects accepted. QEMU's own schemas nest about four deep; the
/// cap keeps the recursive descent from exhausting the stack on hostile input.
pub const MAX_DEPTH: usize = 64;

/// A parse failure: where (the unparsed rest of the text) and why.
#[derive(Debug)]
pub(crate) struct SyntaxError<'a> {
    at: &'a str,
    message: String,
}

impl<'a> ParseError<&'a str> for SyntaxError<'a> {
    fn from_error_kind(input: &'a str, kind: ErrorKind) -> Self {
        // Only reached if a nom primitive fails where the code below did not expect it; the
        // dispatching parsers report their own messages, so this is a fallback.
        SyntaxError {
            at: input,
            message: format!("syntax error ({kind:?})"),
        }
    }

    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = IResult<&'a str, T, SyntaxError<'a>>;

/// A committed failure at `at`.
fn fail<T>(at: &str, message: impl Into<String>) -> PResult<'_, T> {
    Err(nom::Err::Failure(SyntaxError {
        at,
        message: message.into(),
    }))
}

/// Describes the next character for an error message (`end of input` when there is none).
fn found(rest: &str) -> String {
    match rest.chars().next() {
        None => "end of input".to_owned(),
        Some(c) if c.is_ascii_graphic() => format!("'{c}'"),
        Some(c) => format!("{c:?}"),
    }
}

/// Turns byte offsets into 1-based line and column numbers (columns count characters).
pub(crate) struct Locator<'a> {
    text: &'a str,
    file: Arc<str>,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    /// The last position computed: (offset, line, column). Positions are mostly asked for in
    /// increasing order, so counting characters from there keeps a file made of one huge line
    /// from costing time quadratic in its length.
    last: Cell<(usize, usize, usize)>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str, file: Arc<str>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator {
            text,
            file,
            line_starts,
            last: Cell::new((0, 1, 1)),
        }
    }

    /// Position of `rest`, a suffix of the text.
    fn pos_of(&self, rest: &str) -> Pos {
        self.pos_at(self.text.len().saturating_sub(rest.len()))
    }

    /// Position of byte offset `offset`.
    pub(crate) fn pos_at(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        // Index of the last line starting at or before `offset`; line 0 starts at 0, so the
        // partition point is at least 1.
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let (last_offset, last_line, last_col) = self.last.get();
        let (start, base_col) = if last_line == line && last_offset <= offset {
            (last_offset, last_col)
        } else {
            (self.line_starts.get(line - 1).copied().unwrap_or(0), 1)
        };
        let counted = self
            .text
            .get(start..offset)
            .map_or(offset.saturating_sub(start), |s| s.chars().count());
        let col = base_col + counted;
        self.last.set((offset, line, col));
        Pos {
            file: Arc::clone(&self.file),
            line,
            col,
        }
    }
}

/// Parses a whole schema file's text.
pub(crate) fn parse_text(text: &str, file: Arc<str>) -> Result<Vec<Expr>, QapiError> {
    let loc = Locator::new(text, file);
    let mut exprs = Vec::new();
    let mut rest = text;
    loop {
        match top_level(&loc, rest) {
            Ok((next, Some(expr))) => {
                exprs.push(expr);
                rest = next;
            }
            Ok((_, None)) => return Ok(exprs),
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
                return Err(QapiError::Syntax {
                    pos: loc.pos_of(e.at),
                    message: e.message,
                });
            }
            Err(nom::Err::Incomplete(_)) => {
                // Only streaming parsers report Incomplete, and none is used here.
                return Err(QapiError::Syntax {
                    pos: loc.pos_of(rest),
                    message: "unexpected end of input".to_owned(),
                });
            }
        }
    }
}

/// One top-level expression, or `None` at the end of the input.
fn top_level<'a>(loc: &Locator<'a>, input: &'a str) -> PResult<'a, Option<Expr>> {
    let (rest, ()) = skip(input)?;
    if rest.is_empty() {
        return Ok((rest, None));
    }
    if !rest.starts_with('{') {
        return fail(
            rest,
            format!(
                "expected '{{' to begin a top-level expression, found {}",
                found(rest)
            ),
        );
    }
    let pos = loc.pos_of(rest);
    let (rest, dict) = dict(loc, 1, rest)?;
    Ok((rest, Some(Expr { pos, dict })))
}

/// Skips whitespace and `#` comments (doc comments `##` included).
fn skip(mut input: &str) -> PResult<'_, ()> {
    loop {
        let (rest, _) =
            take_while(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))(input)?;
        if let Ok((rest, _)) = char::<_, SyntaxError>('#')(rest) {
            let (rest, _) = take_till(|c| c == '\n')(rest)?;
            input = rest;
        } else {
            return Ok((rest, ()));
        }
    }
}

/// Any value, dispatching on its first character.
fn value<'a>(loc: &Locator<'a>, depth: usize, input: &'a str) -> PResult<'a, Node> {
    let pos = loc.pos_of(input);
    let (rest, value) = match input.chars().next() {
        Some('\'') => {
            let (rest, s) = string(input)?;
            (rest, Value::Str(s))
        }
        Some('{') => {
            let (rest, d) = dict(loc, depth + 1, input)?;
            (rest, Value::Dict(d))
        }
        Some('[') => {
            let (rest, l) = list(loc, depth + 1, input)?;
            (rest, Value::List(l))
        }
        Some('"') => return fail(input, "strings must be single-quoted ('...')"),
        Some(c) if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_') => {
            literal(input)?
        }
        Some(_) => return fail(input, format!("expected a value, found {}", found(input))),
        None => return fail(input, "expected a value, found end of input"),
    };
    Ok((rest, Node { pos, value }))
}

/// A bare word: only `true` and `false` are values in QAPI.
fn literal(input: &str) -> PResult<'_, Value> {
    let (rest, word) = take_while1(|c: char| {
        !c.is_whitespace() && !matches!(c, '[' | ']' | '{' | '}' | ':' | ',' | '\'' | '#')
    })(input)?;
    match word {
        "true" => Ok((rest, Value::Bool(true))),
        "false" => Ok((rest, Value::Bool(false))),
        "null" => fail(input, "null is not allowed in QAPI schemas"),
        w if w.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.')) => fail(
            input,
            format!("numbers are not allowed in QAPI schemas, found '{w}'"),
        ),
        w => fail(
            input,
            format!("invalid literal '{w}' (expected a string, true, false, a list or an object)"),
        ),
    }
}

/// A single-quoted string. Only printable ASCII may appear raw, as in QEMU; the usual JSON
/// escapes (plus `\'`) are understood, so text copied from QMP traffic reads the same.
fn string(input: &str) -> PResult<'_, String> {
    let (mut rest, _) = char('\'')(input)?;
    let mut out = String::new();
    loop {
        let mut chars = rest.chars();
        match chars.next() {
            None | Some('\n') => return fail(input, "unterminated string (missing closing ')"),
            Some('\'') => return Ok((chars.as_str(), out)),
            Some('\\') => {
                let (after, c) = escape(rest)?;
                out.push(c);
                rest = after;
            }
            Some(c) if c == ' ' || c.is_ascii_graphic() => {
                out.push(c);
                rest = chars.as_str();
            }
            Some(c) => {
                return fail(
                    rest,
                    format!("character {c:?} is not allowed in a string (only printable ASCII)"),
                );
            }
        }
    }
}

/// One escape sequence starting at the backslash in `input`.
fn escape(input: &str) -> PResult<'_, char> {
    let mut chars = input.chars();
    chars.next(); // the backslash
    let c = match chars.next() {
        Some('\\') => '\\',
        Some('\'') => '\'',
        Some('"') => '"',
        Some('/') => '/',
        Some('b') => '\u{8}',
        Some('f') => '\u{c}',
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('u') => {
            let digits = chars.as_str();
            let hex = digits
                .get(..4)
                .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
            let Some(hex) = hex else {
                return fail(input, "'\\u' must be followed by four hex digits");
            };
            let decoded = u32::from_str_radix(hex, 16)
                .ok()
                .and_then(char::from_u32)
                .filter(|&c| c != '\0');
            let Some(c) = decoded else {
                // Surrogate halves and NUL have no place in a schema name or doc string.
                return fail(input, format!("'\\u{hex}' is not an allowed character"));
            };
            return Ok((digits.get(4..).unwrap_or(""), c));
        }
        Some(c) => return fail(input, format!("unknown escape '\\{c}'")),
        None => return fail(input, "unterminated string (missing closing ')"),
    };
    Ok((chars.as_str(), c))
}

/// An object `{ 'key': value, ... }`; keys are strings, unique, kept in source order.
fn dict<'a>(loc: &Locator<'a>, depth: usize, input: &'a str) -> PResult<'a, Dict> {
    if depth > MAX_DEPTH {
        return fail(input, format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    let (rest, _) = char('{')(input)?;
    let (mut rest, ()) = skip(rest)?;
    let mut entries: Vec<(Key, Node)> = Vec::new();
    // A set, not a scan of `entries`: hostile input may have many keys.
    let mut seen: HashSet<String> = HashSet::new();
    if let Ok((after, _)) = char::<_, SyntaxError>('}')(rest) {
        return Ok((after, Dict { entries }));
    }
    loop {
        if !rest.starts_with('\'') {
            return fail(
                rest,
                format!("expected a string key, found {}", found(rest)),
            );
        }
        let key_pos = loc.pos_of(rest);
        let key_start = rest;
        let (after, name) = string(rest)?;
        if !seen.insert(name.clone()) {
            return fail(key_start, format!("duplicate key '{name}'"));
        }
        let (after, ()) = skip(after)?;
        let Ok((after, _)) = char::<_, SyntaxError>(':')(after) else {
            return fail(
                after,
                format!("expected ':' after key, found {}", found(after)),
            );
        };
        let (after, ()) = skip(after)?;
        let (after, node) = value(loc, depth, after)?;
        entries.push((Key { name, pos: key_pos }, node));
        let (after, ()) = skip(after)?;
        match after.chars().next() {
            Some(',') => {
                let (after, ()) = skip(after.get(1..).unwrap_or(""))?;
                rest = after;
            }
            Some('}') => return Ok((after.get(1..).unwrap_or(""), Dict { entries })),
            _ => {
                return fail(
                    after,
                    format!("expected ',' or '}}' in object, found {}", found(after)),
                );
            }
        }
    }
}

/// A list `[ value, ... ]`.
fn list<'a>(loc: &Locator<'a>, depth: usize, input: &'a str) -> PResult<'a, Vec<Node>> {
    if depth > MAX_DEPTH {
        return fail(input, format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    let (rest, _) = char('[')(input)?;
    let (mut rest, ()) = skip(rest)?;
    let mut items = Vec::new();
    if let Ok((after, _)) = char::<_, SyntaxError>(']')(rest) {
        return Ok((after, items));
    }
    loop {
        let (after, node) = value(loc, depth, rest)?;
        items.push(node);
        let (after, ()) = skip(after)?;
        match after.chars().next() {
            Some(',') => {
                let (after, ()) = skip(after.get(1..).unwrap_or(""))?;
                rest = after;
            }
            Some(']') => return Ok((after.get(1..).unwrap_or(""), items)),
            _ => {
                return fail(
                    after,
                    format!("expected ',' or ']' in list, found {}", found(after)),
                );
            }
        }
    }
}
