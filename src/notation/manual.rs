//! The examples of the QEMU QMP reference manual's text rendering, grouped by the definition
//! whose section they appear in.
//!
//! The rendering marks a definition with a heading line `NAME (META)¶` (`query-status
//! (Command)¶`, `StatusInfo (Object)¶`). A definition's section runs from its heading to the
//! next definition heading. Other headings do not end it: `Since¶`, `Arguments¶` and the like
//! are parts of a definition, and the manual puts no example between a chapter heading
//! (`MIGRATION¶`, `Block core (VM unrelated)¶`) and the next definition. The table of
//! contents lists definitions without the `¶`, so it never counts as a heading.
//!
//! Within a section, an example is a maximal run of exchanges with only whitespace between
//! them. Any other text in between starts a new example: the rendering puts a title
//! (`- Example: Change a removable medium`) or a sentence between separate examples, and
//! nothing between the messages of one.

use nom::{
    IResult, Parser,
    bytes::complete::{tag, take_till1},
    character::complete::{alpha1, char},
    combinator::eof,
    sequence::delimited,
};

use super::Example;

/// A definition heading: its name, its kind, and the byte offset of its line.
struct Heading<'a> {
    name: &'a str,
    meta: &'a str,
    offset: usize,
}

/// `NAME (META)¶` on a line of its own (surrounding whitespace aside), where NAME has no
/// whitespace and META is a word: `Block core (VM unrelated)¶` is a chapter heading, not a
/// definition.
fn heading(line: &str) -> IResult<&str, (&str, &str)> {
    (
        take_till1(|c: char| c.is_whitespace() || c == '('),
        char(' '),
        delimited(char('('), alpha1, char(')')),
        tag("¶"),
        eof,
    )
        .map(|(name, _, meta, _, _)| (name, meta))
        .parse(line)
}

/// Every definition heading of `text`, in order.
fn headings(text: &str) -> Vec<Heading<'_>> {
    let mut offset = 0;
    let mut found = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Ok((_, (name, meta))) = heading(line.trim()) {
            found.push(Heading { name, meta, offset });
        }
        offset += line.len();
    }
    found
}

/// The examples of the QEMU QMP reference manual text rendering `manual_text`, grouped by the
/// definition section they appear in; see the module documentation for the rules. Exchanges
/// before the first definition heading belong to definition `""`.
pub fn manual_examples(manual_text: &str) -> Vec<Example> {
    let headings = headings(manual_text);
    let mut examples: Vec<Example> = Vec::new();
    // Index into `headings` of the section the previous exchange was in, and where that
    // exchange ended.
    let mut last: Option<(Option<usize>, usize)> = None;
    // Index of the first heading after the current section's.
    let mut next_heading = 0;
    for found in super::scan(manual_text) {
        while headings
            .get(next_heading)
            .is_some_and(|heading| heading.offset <= found.start)
        {
            next_heading += 1;
        }
        let section = next_heading.checked_sub(1);
        let continues = last.is_some_and(|(last_section, last_end)| {
            last_section == section
                && manual_text
                    .get(last_end..found.start)
                    .is_some_and(|between| between.trim().is_empty())
        });
        last = Some((section, found.end));
        match examples.last_mut() {
            Some(example) if continues => example.exchanges.push(found.exchange),
            _ => {
                let (definition, meta) = section
                    .and_then(|at| headings.get(at))
                    .map_or(("", ""), |heading| (heading.name, heading.meta));
                examples.push(Example {
                    definition: definition.to_owned(),
                    meta: meta.to_owned(),
                    line: found.exchange.line,
                    exchanges: vec![found.exchange],
                });
            }
        }
    }
    examples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heading_needs_name_meta_and_pilcrow() {
        assert_eq!(
            heading("query-status (Command)¶").map(|(_, h)| h).ok(),
            Some(("query-status", "Command"))
        );
        assert!(heading("- query-status (Command)").is_err());
        assert!(heading("query-status (Command)").is_err());
        assert!(heading("Block core (VM unrelated)¶").is_err());
        assert!(heading("Since¶").is_err());
        assert!(heading("MIGRATION¶").is_err());
    }

    #[test]
    fn prose_and_headings_split_examples() {
        let text = "intro -> [1]\n\
                    query-x (Command)¶\n\
                    Since¶\n9.1\n\
                    -> { \"execute\": \"query-x\" }\n<- { \"return\": {} }\n\
                    - Example: again\n\
                    -> { \"execute\": \"query-x\" } <- { \"return\": {} }\n\
                    X_HAPPENED (Event)¶\n\
                    <- { \"event\": \"X_HAPPENED\" }\n";
        let examples = manual_examples(text);
        let summary: Vec<_> = examples
            .iter()
            .map(|e| {
                (
                    e.definition.as_str(),
                    e.meta.as_str(),
                    e.line,
                    e.exchanges.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("", "", 1, 1),
                ("query-x", "Command", 5, 2),
                ("query-x", "Command", 8, 2),
                ("X_HAPPENED", "Event", 10, 1),
            ]
        );
    }

    #[test]
    fn no_exchanges_no_examples() {
        assert!(manual_examples("query-x (Command)¶\n-> data issued by the Client\n").is_empty());
        assert!(manual_examples("").is_empty());
    }
}
