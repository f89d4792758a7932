//! Arbitrary text through the transcript-notation parser: it must never panic, and every
//! exchange it reports must point at an arrow that is really in the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qmptap::notation::{Arrow, Exchange, manual_examples, parse};

/// The exchange's line and column (1-based, `\n`-separated lines, columns in characters) land
/// on `->` or `<-`, matching its direction, and its text is in the input.
fn check(input: &str, exchange: &Exchange) {
    let line = input
        .split('\n')
        .nth(exchange.line - 1)
        .unwrap_or_else(|| panic!("line {} is past the input", exchange.line));
    let at: String = line.chars().skip(exchange.column - 1).take(2).collect();
    let want = match exchange.arrow {
        Arrow::ToServer => "->",
        Arrow::ToClient => "<-",
    };
    assert_eq!(
        at, want,
        "no arrow at {}:{}",
        exchange.line, exchange.column
    );
    assert!(input.contains(&exchange.text), "text not in the input");
    assert!(
        exchange.text.starts_with(['{', '[']),
        "a value starts with a bracket"
    );
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let exchanges = parse(&input);
    let mut last = (0, 0);
    for exchange in &exchanges {
        check(&input, exchange);
        assert!(
            (exchange.line, exchange.column) > last,
            "exchanges out of order"
        );
        last = (exchange.line, exchange.column);
    }
    let examples = manual_examples(&input);
    let grouped: Vec<&Exchange> = examples.iter().flat_map(|e| &e.exchanges).collect();
    assert_eq!(
        grouped.len(),
        exchanges.len(),
        "examples lose or add exchanges"
    );
    for (grouped, exchange) in grouped.iter().zip(&exchanges) {
        assert_eq!(*grouped, exchange);
    }
    for example in &examples {
        assert!(!example.exchanges.is_empty());
        assert_eq!(example.line, example.exchanges[0].line);
    }
});
