//! Fuzz the analysis models: whatever a capture holds (times out of order or at the ends of
//! the calendar, jobs in any state, migration replies of any shape), the analyser, its reports
//! and every table must come out without a panic.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use qmptap::analyse::tables::Table;
use qmptap::analyse::{Analyser, Options};
use qmptap::capture::{Reader, Time};

/// A valid header, so that inputs reach the records.
const HEADER: &[u8] = br#"{"type":"header","format":"qmptap-capture","version":1,"created":"2026-11-25T19:10:13.072123Z","tool":"fuzz"}"#;

fuzz_target!(|data: &[u8]| {
    let mut input = HEADER.to_vec();
    input.push(b'\n');
    input.extend_from_slice(data);
    let Ok(reader) = Reader::new(Box::new(Cursor::new(input)), "fuzz.jsonl".into()) else { return };
    let mut analyser = Analyser::new(&Options { stall_polls: 2, keep_rows: true, models: true });
    for located in reader {
        let Ok(located) = located else { break };
        analyser.observe(located.line, &located.record);
    }
    let now = analyser.end().unwrap_or_else(Time::now);
    let _ = analyser.jobs.report(now);
    let _ = analyser.migration.report(now);
    for table in Table::ALL {
        let _ = analyser.table(table);
    }
});
