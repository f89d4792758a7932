//! The nom parsers behind [`super::parse`]: an arrow, the whitespace after it, and the extent of
//! the JSON value that follows, found by balancing brackets rather than by lines (the manual's
//! rendering merges and splits lines freely, and QMP itself never frames by newline).
//!
//! Nothing here may panic or recurse on input depth: the text is untrusted and fuzzed. The
//! bracket scanner keeps an explicit stack, and it only ever cuts the input at ASCII bytes, so
//! every slice lands on a `char` boundary.

use nom::{
    IResult, Parser,
    branch::alt,
    bytes::complete::{tag, take_while},
    character::complete::one_of,
    combinator::{peek, value},
};

use super::Arrow;

/// How the scan of a value's brackets ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// Every bracket opened was closed by its own kind.
    Closed,
    /// The input ended with `open` brackets still open.
    Unterminated {
        /// How many brackets were still open.
        open: usize,
        /// Whether it ended inside a string: one stray quote is the usual cause.
        in_string: bool,
    },
    /// A closer of the wrong kind (`{ ... ]`); the value is cut right after it, so that one
    /// typo cannot swallow the rest of the input.
    Mismatched {
        /// The closer the innermost open bracket needed.
        expected: char,
        /// The closer found instead.
        found: char,
    },
}

/// `->` or `<-`.
pub(super) fn arrow(input: &str) -> IResult<&str, Arrow> {
    alt((
        value(Arrow::ToServer, tag("->")),
        value(Arrow::ToClient, tag("<-")),
    ))
    .parse(input)
}

/// Whitespace of any kind, newlines included: renderings indent with non-ASCII spaces too, and
/// a value often starts on the line after its arrow.
fn blank(input: &str) -> IResult<&str, &str> {
    take_while(char::is_whitespace).parse(input)
}

/// An arrow and the value after it: the arrow, the value's text (from its opening bracket to
/// its closer, or to the end of the input when unterminated, trailing whitespace trimmed) and
/// how the scan ended. Fails, consuming nothing, when no `{` or `[` follows the arrow: that is
/// prose such as "r/o -> r/w", not an exchange.
pub(super) fn exchange(input: &str) -> IResult<&str, (Arrow, &str, Ending)> {
    (arrow, blank, balanced)
        .map(|(arrow, _, (text, ending))| (arrow, text, ending))
        .parse(input)
}

/// Lexical state of the bracket scanner.
#[derive(Clone, Copy)]
enum Lex {
    /// Between tokens, where brackets count.
    Code,
    /// Inside `"..."`.
    Double,
    /// Inside QEMU's `'...'`.
    Single,
    /// After a `#` outside strings, up to the end of the line: documentation comments such as
    /// `# ...` may hold brackets that must not count.
    Comment,
}

/// A JSON value's extent: must start at `{` or `[`; ends at the bracket that balances it,
/// respecting double- and single-quoted strings and their backslash escapes.
fn balanced(input: &str) -> IResult<&str, (&str, Ending)> {
    let (_, _) = peek(one_of("{[")).parse(input)?;
    let bytes = input.as_bytes();
    let mut open: Vec<u8> = Vec::new();
    let mut lex = Lex::Code;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match lex {
            Lex::Code => match b {
                b'{' => open.push(b'}'),
                b'[' => open.push(b']'),
                b'}' | b']' => {
                    let ending = match open.pop() {
                        Some(want) if want == b => {
                            if open.is_empty() {
                                Some(Ending::Closed)
                            } else {
                                None
                            }
                        }
                        // The first byte is a bracket, so the stack is never empty here;
                        // treat an empty one as a mismatch rather than assume it.
                        want => Some(Ending::Mismatched {
                            expected: want.map_or('?', char::from),
                            found: char::from(b),
                        }),
                    };
                    if let Some(ending) = ending {
                        let (text, rest) = input.split_at(i + 1);
                        return Ok((rest, (text, ending)));
                    }
                }
                b'"' => lex = Lex::Double,
                b'\'' => lex = Lex::Single,
                b'#' => lex = Lex::Comment,
                _ => {}
            },
            Lex::Double | Lex::Single => {
                let quote = if matches!(lex, Lex::Double) {
                    b'"'
                } else {
                    b'\''
                };
                if b == b'\\' {
                    // Skip the escaped byte. If it starts a multi-byte character, its
                    // continuation bytes are >= 0x80 and can never look like syntax.
                    i += 1;
                } else if b == quote {
                    lex = Lex::Code;
                }
            }
            Lex::Comment => {
                if b == b'\n' {
                    lex = Lex::Code;
                }
            }
        }
        i += 1;
    }
    let text = input.trim_end();
    Ok((
        "",
        (
            text,
            Ending::Unterminated {
                open: open.len(),
                in_string: matches!(lex, Lex::Double | Lex::Single),
            },
        ),
    ))
}

/// A documentation elision outside strings: what the manual writes where it leaves part of a
/// value out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Elision {
    /// `...`
    Dots,
    /// `…` (U+2026)
    Ellipsis,
    /// `# ...`, a comment
    Comment,
}

impl Elision {
    /// How the manual spells it, for messages.
    pub(super) fn spelling(self) -> &'static str {
        match self {
            Elision::Dots => "...",
            Elision::Ellipsis => "…",
            Elision::Comment => "# comment",
        }
    }
}

/// The first elision outside strings in `text`, with its byte offset. Inside strings `...` is
/// data (a truncated hash, say) and the value may still be valid JSON.
pub(super) fn find_elision(text: &str) -> Option<(Elision, usize)> {
    let mut lex = Lex::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match lex {
            Lex::Code => match c {
                '"' => lex = Lex::Double,
                '\'' => lex = Lex::Single,
                '#' => return Some((Elision::Comment, at)),
                '…' => return Some((Elision::Ellipsis, at)),
                '.' if text[at..].starts_with("...") => return Some((Elision::Dots, at)),
                _ => {}
            },
            Lex::Double | Lex::Single => {
                let quote = if matches!(lex, Lex::Double) {
                    '"'
                } else {
                    '\''
                };
                if c == '\\' {
                    chars.next();
                } else if c == quote {
                    lex = Lex::Code;
                }
            }
            Lex::Comment => {}
        }
    }
    None
}

/// `text` with QEMU's single-quoted strings rewritten as JSON double-quoted ones, or `None`
/// when it has none (the common case, which then needs no copy).
///
/// Inside `'...'` a `"` needs no escape and `\'` means `'`; in JSON it is the other way round.
/// Other escapes are the same in both and are copied as they are.
pub(super) fn double_quoted(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 8);
    let mut changed = false;
    let mut lex = Lex::Code;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match lex {
            Lex::Code | Lex::Comment => match c {
                '"' => {
                    lex = Lex::Double;
                    out.push(c);
                }
                '\'' => {
                    lex = Lex::Single;
                    changed = true;
                    out.push('"');
                }
                _ => out.push(c),
            },
            Lex::Double => {
                out.push(c);
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else if c == '"' {
                    lex = Lex::Code;
                }
            }
            Lex::Single => match c {
                '\\' => match chars.next() {
                    Some('\'') => out.push('\''),
                    Some(next) => {
                        out.push('\\');
                        out.push(next);
                    }
                    None => out.push('\\'),
                },
                '"' => out.push_str("\\\""),
                '\'' => {
                    lex = Lex::Code;
                    out.push('"');
                }
                _ => out.push(c),
            },
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_stops_at_the_matching_closer() {
        let (rest, (text, ending)) = balanced(r#"{ "a": [1, "}"] } tail"#).unwrap();
        assert_eq!(text, r#"{ "a": [1, "}"] }"#);
        assert_eq!(rest, " tail");
        assert_eq!(ending, Ending::Closed);
    }

    #[test]
    fn balanced_reports_a_mismatch_and_stops_there() {
        let (rest, (text, ending)) = balanced("{ [ } ] }").unwrap();
        assert_eq!(text, "{ [ }");
        assert_eq!(rest, " ] }");
        assert_eq!(
            ending,
            Ending::Mismatched {
                expected: ']',
                found: '}'
            }
        );
    }

    #[test]
    fn balanced_ignores_brackets_in_comments() {
        let (_, (text, ending)) = balanced("{ \"a\": 1 # {\n}").unwrap();
        assert_eq!(text, "{ \"a\": 1 # {\n}");
        assert_eq!(ending, Ending::Closed);
    }

    #[test]
    fn balanced_needs_an_opening_bracket() {
        assert!(balanced("data issued").is_err());
        assert!(balanced("").is_err());
    }

    #[test]
    fn elisions_inside_strings_do_not_count() {
        assert_eq!(find_elision(r#"{"a": "x...y"}"#), None);
        assert_eq!(find_elision("[1, ...]"), Some((Elision::Dots, 4)));
        assert_eq!(find_elision("[1, …]"), Some((Elision::Ellipsis, 4)));
        assert_eq!(find_elision("[1 # more\n]"), Some((Elision::Comment, 3)));
    }

    #[test]
    fn single_quotes_become_double_quotes() {
        assert_eq!(
            double_quoted(r#"{"a": 'b'}"#).as_deref(),
            Some(r#"{"a": "b"}"#)
        );
        assert_eq!(
            double_quoted(r#"{'a': 'it\'s "x"'}"#).as_deref(),
            Some(r#"{"a": "it's \"x\""}"#)
        );
        assert_eq!(double_quoted(r#"{"it's": 1}"#), None);
    }
}
