//! The transcript notation of QMP's documentation: `->` marks what the client sends, `<-` what
//! the server sends, each followed by a JSON value that may span many lines.
//!
//! ```text
//! -> { "execute": "watchdog-set-action",
//!      "arguments": { "action": "inject-nmi" } }
//! <- { "return": {} }
//! ```
//!
//! [`parse`] finds every arrow-introduced value in any text (a pasted exchange, the manual, a
//! QAPI schema file's `#` doc comments) and skips everything else; [`manual_examples`] groups
//! those of the QEMU QMP reference manual's text rendering by the definition they document.
//!
//! The rules:
//! - An arrow is `->` or `<-` at the start of the input or after whitespace, and only where the
//!   scan is not inside a value already found, so a `"<-"` in a string never starts an
//!   exchange.
//! - After the arrow and any whitespace (newlines included) comes a value that starts with `{`
//!   or `[`. If something else follows (`-> data issued by the Client`, `r/o -> r/w`), the
//!   arrow is prose and is skipped: a bare scalar after an arrow is far likelier prose than
//!   an exchange.
//! - The value's extent is found by balancing brackets, respecting double-quoted strings,
//!   QEMU's single-quoted ones and backslash escapes, and skipping `#` comments to the end of
//!   their line. Lines do not matter, so values can share a line with the next arrow.
//! - The value text is kept exactly as written; a value that is not JSON (the documentation's
//!   elisions `...`, `…`, `# ...`, rendering damage, an unterminated value) keeps its text and
//!   gets the reason in [`Exchange::value`]. Nothing is guessed or repaired.
//!
//! This module must never panic, whatever the input: it reads untrusted text and is fuzzed.

mod manual;
mod scan;

pub use manual::manual_examples;

use serde::Serialize;
use serde_json::Value;

use scan::{Ending, find_elision};

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arrow {
    /// `->`: the client sends it to the server.
    ToServer,
    /// `<-`: the server sends it to the client.
    ToClient,
}

/// One arrow and the value after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exchange {
    /// The arrow's direction.
    pub arrow: Arrow,
    /// 1-based line of the arrow in the input; lines end at `\n` (a `\r` before it is part of
    /// the line's end, so CRLF input counts the same).
    pub line: usize,
    /// 1-based column of the arrow, counted in characters (Unicode scalar values), not bytes.
    pub column: usize,
    /// The value's text as written, from its opening bracket to the bracket that closes it
    /// (for an unterminated value, to the end of the input, trailing whitespace trimmed).
    pub text: String,
    /// The parsed value, or why `text` is not JSON.
    pub value: Result<Value, String>,
}

/// A documented example: consecutive exchanges with nothing but whitespace between them,
/// inside one definition's section of the manual.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// The definition whose section holds the example (`query-status`); `""` before the first
    /// definition heading (the introduction).
    pub definition: String,
    /// The kind of definition as the manual's heading says: `Command`, `Event`, `Object`,
    /// `Enum`, `Alternate`, ...; `""` with the introduction.
    pub meta: String,
    /// 1-based line of the example's first arrow.
    pub line: usize,
    /// The exchanges, in order; never empty.
    pub exchanges: Vec<Exchange>,
}

/// Every arrow-introduced value in `input`, in order; text that is not part of an exchange is
/// skipped.
pub fn parse(input: &str) -> Vec<Exchange> {
    scan(input)
        .into_iter()
        .map(|found| found.exchange)
        .collect()
}

/// An exchange with the byte span it covers, from its arrow to the end of its value, which
/// [`manual_examples`] needs to see what lies between exchanges.
struct Found {
    /// Byte offset of the arrow.
    start: usize,
    /// Byte offset just past the value.
    end: usize,
    exchange: Exchange,
}

/// The scan behind [`parse`], keeping the spans.
fn scan(input: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut lines = LineCounter::new(input);
    let mut pos = 0;
    // The character before `pos`; `None` at the start of the input, which counts as a line
    // start.
    let mut prev: Option<char> = None;
    while let Some(c) = input.get(pos..).and_then(|rest| rest.chars().next()) {
        let at_boundary = prev.is_none_or(char::is_whitespace);
        let attempt = if at_boundary && (c == '-' || c == '<') {
            scan::exchange(&input[pos..]).ok()
        } else {
            None
        };
        if let Some((rest, (arrow, text, ending))) = attempt {
            let end = input.len() - rest.len();
            let (line, column) = lines.locate(pos);
            // The value starts after the two-byte arrow and the whitespace after it.
            let after_arrow = &input[pos + 2..];
            let value_start = pos + 2 + after_arrow.len() - after_arrow.trim_start().len();
            let value_at = lines.locate(value_start);
            found.push(Found {
                start: pos,
                end,
                exchange: Exchange {
                    arrow,
                    line,
                    column,
                    text: text.to_owned(),
                    value: interpret(text, &ending, value_at),
                },
            });
            // Scanning resumes after the value, so nothing inside it can start an exchange.
            prev = input[..end].chars().next_back();
            pos = end;
            continue;
        }
        prev = Some(c);
        pos += c.len_utf8();
    }
    found
}

/// What a value's text means: JSON, or the reason it is not.
///
/// `at` is the line and column of the value's first character, to report where in the input
/// an elision is.
fn interpret(text: &str, ending: &Ending, at: (usize, usize)) -> Result<Value, String> {
    match *ending {
        Ending::Closed => {}
        Ending::Unterminated { open, in_string } => {
            let inside = if in_string { ", inside a string" } else { "" };
            return Err(format!(
                "unterminated value: the input ended with {open} bracket(s) open{inside}"
            ));
        }
        Ending::Mismatched { expected, found } => {
            return Err(format!(
                "mismatched bracket: `{found}` where `{expected}` was needed; the value is cut \
                 there"
            ));
        }
    }
    let converted = scan::double_quoted(text);
    let json = converted.as_deref().unwrap_or(text);
    match serde_json::from_str(json) {
        Ok(value) => Ok(value),
        Err(error) => {
            // An elision outside strings is why the documentation's value does not parse;
            // say so rather than quote the JSON error it causes.
            if let Some((elision, offset)) = find_elision(text) {
                let (line, column) = offset_in(text, offset, at);
                return Err(format!(
                    "documentation elision `{}` at line {line}, column {column}: part of the \
                     value is left out",
                    elision.spelling()
                ));
            }
            let line = at.0 + error.line().saturating_sub(1);
            let message = error.to_string();
            let message = message
                .strip_suffix(&format!(
                    " at line {} column {}",
                    error.line(),
                    error.column()
                ))
                .unwrap_or(&message)
                .to_owned();
            Err(format!(
                "invalid JSON at line {line} (column {} of the value's line {}): {message}",
                error.column(),
                error.line()
            ))
        }
    }
}

/// Line and column in the input of byte `offset` of `text`, where `text` starts at `at`.
fn offset_in(text: &str, offset: usize, at: (usize, usize)) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    match before.rfind('\n') {
        Some(newline) => (
            at.0 + before.matches('\n').count(),
            before[newline + 1..].chars().count() + 1,
        ),
        None => (at.0, at.1 + before.chars().count()),
    }
}

/// Turns byte offsets into 1-based line and character column, for offsets that only grow, so
/// that a whole scan reads each byte of the input once however long its lines.
struct LineCounter<'a> {
    input: &'a str,
    /// Byte offset counted up to.
    offset: usize,
    /// Line of `offset`.
    line: usize,
    /// Characters between the start of that line and `offset`.
    column: usize,
}

impl<'a> LineCounter<'a> {
    fn new(input: &'a str) -> Self {
        LineCounter {
            input,
            offset: 0,
            line: 1,
            column: 0,
        }
    }

    /// Line and column of `offset`, which must be a `char` boundary not before the previous
    /// one asked for (any other offset gets the previous answer, never a panic).
    fn locate(&mut self, offset: usize) -> (usize, usize) {
        if let Some(skipped) = self.input.get(self.offset..offset) {
            match skipped.rfind('\n') {
                Some(newline) => {
                    self.line += skipped.bytes().filter(|&b| b == b'\n').count();
                    self.column = skipped[newline + 1..].chars().count();
                }
                None => self.column += skipped.chars().count(),
            }
            self.offset = offset;
        }
        (self.line, self.column + 1)
    }
}

#[cfg(test)]
mod tests;
