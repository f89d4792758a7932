//! Fuzz the capture reader: any bytes given as a capture file must yield records or a clear
//! error, never a panic; every record read must write back to a line that reads the same.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use qmptap::capture::{Reader, Record};
use qmptap::session::Tracker;

/// A valid header, so that most inputs reach the record parser.
const HEADER: &[u8] = br#"{"type":"header","format":"qmptap-capture","version":1,"created":"2026-11-25T19:10:13.072123Z","tool":"fuzz"}"#;

fuzz_target!(|data: &[u8]| {
    // First byte: whether to prepend a valid header.
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut input = Vec::new();
    if flags & 1 == 1 {
        input.extend_from_slice(HEADER);
        input.push(b'\n');
    }
    input.extend_from_slice(rest);
    let Ok(reader) = Reader::new(Box::new(Cursor::new(input)), "fuzz.jsonl".into()) else { return };
    let mut tracker = Tracker::new();
    for located in reader {
        let Ok(located) = located else { break };
        // Pairing and the accessors must cope with whatever a capture says.
        tracker.observe(&located.record);
        if let Record::Msg(m) = &located.record {
            let _ = m.raw_bytes();
            let _ = m.value();
        }
        let line = serde_json::to_vec(&located.record).expect("a record serialises");
        let again = Record::parse(&line).expect("a written record reads back");
        assert_eq!(again, located.record);
    }
});
