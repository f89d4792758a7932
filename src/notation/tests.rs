//! Unit tests of [`super::parse`]: each names the convention of the notation it pins down.

use serde_json::json;

use super::*;

/// The exchanges as (arrow, line, column, text) for compact assertions.
fn shape(input: &str) -> Vec<(Arrow, usize, usize, String)> {
    parse(input)
        .into_iter()
        .map(|e| (e.arrow, e.line, e.column, e.text))
        .collect()
}

fn values(input: &str) -> Vec<Result<Value, String>> {
    parse(input).into_iter().map(|e| e.value).collect()
}

#[test]
fn single_line_exchange() {
    let exchanges = parse(r#"-> { "execute": "query-status" }"#);
    assert_eq!(
        exchanges,
        [Exchange {
            arrow: Arrow::ToServer,
            line: 1,
            column: 1,
            text: r#"{ "execute": "query-status" }"#.to_owned(),
            value: Ok(json!({"execute": "query-status"})),
        }]
    );
}

#[test]
fn multi_line_value_with_reply_on_the_next_line() {
    let input = "Example:\n\n  -> { \"execute\": \"watchdog-set-action\",\n       \"arguments\": { \"action\": \"inject-nmi\" } }\n  <- { \"return\": {} }\n";
    assert_eq!(
        shape(input),
        [
            (
                Arrow::ToServer,
                3,
                3,
                "{ \"execute\": \"watchdog-set-action\",\n       \"arguments\": { \"action\": \"inject-nmi\" } }".to_owned()
            ),
            (Arrow::ToClient, 5, 3, "{ \"return\": {} }".to_owned()),
        ]
    );
    assert_eq!(
        values(input),
        [
            Ok(json!({"execute": "watchdog-set-action", "arguments": {"action": "inject-nmi"}})),
            Ok(json!({"return": {}})),
        ]
    );
}

#[test]
fn value_on_the_line_after_its_arrow() {
    assert_eq!(
        shape("->\n{ \"execute\": \"stop\" }"),
        [(
            Arrow::ToServer,
            1,
            1,
            "{ \"execute\": \"stop\" }".to_owned()
        )]
    );
}

#[test]
fn two_exchanges_on_one_line() {
    assert_eq!(
        shape("-> { \"execute\": \"query-block\" } <- {\n\"return\": [] }"),
        [
            (
                Arrow::ToServer,
                1,
                1,
                "{ \"execute\": \"query-block\" }".to_owned()
            ),
            (Arrow::ToClient, 1, 33, "{\n\"return\": [] }".to_owned()),
        ]
    );
}

#[test]
fn braces_inside_strings_do_not_count() {
    let input =
        r#"-> { "execute": "x", "arguments": { "a": "{", "b": "]}" } } <- { "return": {} }"#;
    assert_eq!(
        values(input),
        [
            Ok(json!({"execute": "x", "arguments": {"a": "{", "b": "]}"}})),
            Ok(json!({"return": {}})),
        ]
    );
}

#[test]
fn escaped_quotes_do_not_end_strings() {
    let input = r#"<- { "error": { "desc": "bad \"}\" and \\" } } -> { "execute": "y" }"#;
    assert_eq!(
        values(input),
        [
            Ok(json!({"error": {"desc": "bad \"}\" and \\"}})),
            Ok(json!({"execute": "y"})),
        ]
    );
}

#[test]
fn qemu_single_quoted_strings() {
    let input = r#"-> { 'execute': 'human-monitor-command', 'arguments': { 'command-line': 'say \'}\' "hi"' } }"#;
    let exchanges = parse(input);
    assert_eq!(exchanges.len(), 1);
    // The text is kept as written; only the value sees double quotes.
    assert_eq!(exchanges[0].text, &input[3..]);
    assert_eq!(
        exchanges[0].value,
        Ok(
            json!({"execute": "human-monitor-command", "arguments": {"command-line": "say '}' \"hi\""}})
        )
    );
}

#[test]
fn arrows_inside_strings_do_not_start_exchanges() {
    let input = r#"-> { "execute": "echo", "arguments": { "text": " <- { \"fake\": 1 } -> [" } }"#;
    let exchanges = parse(input);
    assert_eq!(exchanges.len(), 1);
    assert_eq!(
        exchanges[0].value,
        Ok(json!({"execute": "echo", "arguments": {"text": " <- { \"fake\": 1 } -> ["}}))
    );
}

#[test]
fn arrows_glued_to_other_text_are_not_arrows() {
    assert!(parse(r#"x-> {"a": 1} "<- [1]" --> [2] a<-[3]"#).is_empty());
}

#[test]
fn prose_arrows_without_a_value_are_skipped() {
    let input = "Also, the following notation is used to denote data flow:\n\
                 Example:\n\
                 -> data issued by the Client <- Server data response\n\
                 perform a reopen to change permissions from r/o -> r/w -> r/o, if needed\n\
                 the valid range is 0 -> 0x7ffff\n\
                 -> <- ->\n";
    assert!(parse(input).is_empty());
}

#[test]
fn prose_arrow_then_a_real_exchange() {
    assert_eq!(
        shape("a -> b\n-> [1]"),
        [(Arrow::ToServer, 2, 1, "[1]".to_owned())]
    );
}

#[test]
fn elided_values_keep_their_text_and_report_the_elision() {
    let input = "-> { \"execute\": \"query-spice\" } <- { \"return\": {\n\"channels\": [\n{ \"port\": \"1\" },\n...\n]\n}\n}";
    let exchanges = parse(input);
    assert_eq!(exchanges.len(), 2);
    assert_eq!(
        exchanges[1].text,
        "{ \"return\": {\n\"channels\": [\n{ \"port\": \"1\" },\n...\n]\n}\n}"
    );
    assert_eq!(
        exchanges[1].value,
        Err(
            "documentation elision `...` at line 4, column 1: part of the value is left out"
                .to_owned()
        )
    );
}

#[test]
fn elided_object_inside_an_array() {
    let exchanges = parse("<- { \"return\": [ {\"a\": 1},\n{...},\n]}");
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0].text, "{ \"return\": [ {\"a\": 1},\n{...},\n]}");
    assert_eq!(
        exchanges[0].value,
        Err(
            "documentation elision `...` at line 2, column 2: part of the value is left out"
                .to_owned()
        )
    );
}

#[test]
fn unicode_ellipsis_and_comments_are_elisions() {
    let exchanges = parse("<- { \"return\": [ 1, … ] }\n<- { \"return\": [ 1, # and so on }\n] }");
    assert_eq!(exchanges.len(), 2);
    assert_eq!(
        exchanges[0].value,
        Err(
            "documentation elision `…` at line 1, column 21: part of the value is left out"
                .to_owned()
        )
    );
    // The `}` in the comment does not close the value.
    assert_eq!(exchanges[1].text, "{ \"return\": [ 1, # and so on }\n] }");
    assert_eq!(
        exchanges[1].value,
        Err(
            "documentation elision `# comment` at line 2, column 21: part of the value is left out"
                .to_owned()
        )
    );
}

#[test]
fn dots_inside_a_string_are_data() {
    assert_eq!(
        values(r#"<- { "return": { "id": "2lvm...61iE==" } }"#),
        [Ok(json!({"return": {"id": "2lvm...61iE=="}}))]
    );
}

#[test]
fn arrays_as_values() {
    assert_eq!(
        values("-> [ { \"execute\": \"a\" }, { \"execute\": \"b\" } ] <- [1, [2, {\"x\": []}]]"),
        [
            Ok(json!([{"execute": "a"}, {"execute": "b"}])),
            Ok(json!([1, [2, {"x": []}]])),
        ]
    );
}

#[test]
fn unterminated_value_at_end_of_input() {
    let exchanges = parse("-> { \"execute\": \"stop\" }\n<- { \"return\": {\n\n  ");
    assert_eq!(exchanges.len(), 2);
    assert_eq!(exchanges[1].text, "{ \"return\": {");
    assert_eq!(
        exchanges[1].value,
        Err("unterminated value: the input ended with 2 bracket(s) open".to_owned())
    );
    assert_eq!(
        values("<- { \"desc\": \"no end }"),
        [Err(
            "unterminated value: the input ended with 1 bracket(s) open, inside a string"
                .to_owned()
        )]
    );
}

#[test]
fn a_mismatched_closer_cuts_the_value_and_scanning_resumes() {
    assert_eq!(
        shape("-> { \"a\": [1 } ] } <- [2]"),
        [
            (Arrow::ToServer, 1, 1, "{ \"a\": [1 }".to_owned()),
            (Arrow::ToClient, 1, 20, "[2]".to_owned()),
        ]
    );
    assert_eq!(
        values("-> { \"a\": [1 }")[0],
        Err("mismatched bracket: `}` where `]` was needed; the value is cut there".to_owned())
    );
}

#[test]
fn invalid_json_reports_serde_error_with_input_line() {
    assert_eq!(
        values("\n\n-> { \"a\":\n 1,\n }"),
        [Err(
            "invalid JSON at line 5 (column 2 of the value's line 3): trailing comma".to_owned()
        )]
    );
}

#[test]
fn crlf_input() {
    let input = "Example:\r\n-> { \"execute\": \"stop\",\r\n  \"arguments\": {} }\r\n<- { \"return\": {} }\r\n";
    assert_eq!(
        shape(input),
        [
            (
                Arrow::ToServer,
                2,
                1,
                "{ \"execute\": \"stop\",\r\n  \"arguments\": {} }".to_owned()
            ),
            (Arrow::ToClient, 4, 1, "{ \"return\": {} }".to_owned()),
        ]
    );
    assert!(parse(input).iter().all(|e| e.value.is_ok()));
}

#[test]
fn non_ascii_text_counts_columns_in_characters() {
    let input = "Grüße — café\u{a0}-> { \"arguments\": { \"name\": \"débit ≥ 5 ✓\" } }\u{3000}<- {\"return\": {}}";
    assert_eq!(
        shape(input)
            .into_iter()
            .map(|(arrow, line, column, _)| (arrow, line, column))
            .collect::<Vec<_>>(),
        [(Arrow::ToServer, 1, 14), (Arrow::ToClient, 1, 60)]
    );
    assert_eq!(
        values(input),
        [
            Ok(json!({"arguments": {"name": "débit ≥ 5 ✓"}})),
            Ok(json!({"return": {}})),
        ]
    );
}

#[test]
fn qapi_doc_comment_examples() {
    // The same notation inside a QAPI schema file's doc comments: `#` then the arrow. The
    // value's continuation lines start with `#`, which is not JSON, so only one-line values
    // parse there.
    let input = "# Example:\n#\n# -> { \"execute\": \"stop\" }\n# <- { \"return\": {} }\n##\n";
    assert_eq!(
        values(input),
        [Ok(json!({"execute": "stop"})), Ok(json!({"return": {}}))]
    );
}

#[test]
fn empty_and_arrow_only_inputs() {
    assert!(parse("").is_empty());
    assert!(parse("->").is_empty());
    assert!(parse("<-   \n\t").is_empty());
    assert_eq!(
        values("-> {"),
        [Err(
            "unterminated value: the input ended with 1 bracket(s) open".to_owned()
        )]
    );
}
