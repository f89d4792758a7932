//! Fuzz the QAPI schema reader and compiler: any text gives `Ok` or an error whose position lies
//! inside the text, never a panic; a schema that parses compiles or fails cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmptap::schema::qapi::{compile, parse_str};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    let check = |e: &qmptap::schema::qapi::QapiError| {
        let pos = e.pos();
        assert!(pos.line >= 1 && pos.line <= lines, "{e}");
        assert!(pos.col >= 1, "{e}");
        assert!(e.to_string().starts_with("fuzz.json:"));
    };
    match parse_str(text, "fuzz.json") {
        Ok(exprs) => {
            for expr in &exprs {
                assert!(expr.pos.line <= lines);
            }
            if let Err(e) = compile(&exprs) {
                check(&e);
            }
        }
        Err(e) => check(&e),
    }
});
