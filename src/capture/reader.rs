//! Reading captures back, streaming, with errors that name the file and line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use super::record::{FORMAT, Header, Record, VERSION};

/// Longest record line accepted. The decoder keeps at most a 4 KiB prefix of an oversized
/// message, so real records stay far below this; the bound keeps a corrupt file from
/// exhausting memory.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("cannot read '{source_name}'")]
    Io {
        /// File name (or `-` for standard input).
        source_name: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The first line is not a qmptap capture header.
    #[error("{source_name}:{line}: not a qmptap capture: {why}")]
    NotACapture {
        /// File name.
        source_name: String,
        /// Line number, from 1.
        line: u64,
        /// What was wrong.
        why: String,
    },
    /// The header names a version this library does not read.
    #[error(
        "{source_name}:{line}: capture format version {found} is not supported (this qmptap reads version {VERSION}); upgrade qmptap"
    )]
    UnsupportedVersion {
        /// File name.
        source_name: String,
        /// Line number, from 1.
        line: u64,
        /// The version found.
        found: u64,
    },
    /// A line in the middle of the file is not a valid record.
    #[error("{source_name}:{line}: invalid record: {why}")]
    InvalidRecord {
        /// File name.
        source_name: String,
        /// Line number, from 1.
        line: u64,
        /// What was wrong.
        why: String,
    },
}

/// A record with the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// Line number in the capture, from 1.
    pub line: u64,
    /// The record.
    pub record: Record,
}

/// Streams the records of one capture. The header is read and checked on open.
pub struct Reader {
    input: Box<dyn BufRead + Send>,
    source_name: String,
    header: Header,
    line: u64,
    buf: Vec<u8>,
    torn_tail: Option<u64>,
    done: bool,
}

impl Reader {
    /// Opens a capture file; `-` reads standard input.
    pub fn open(path: &Path) -> Result<Reader, CaptureError> {
        let name = path.display().to_string();
        if name == "-" {
            return Reader::new(Box::new(BufReader::new(io::stdin())), name);
        }
        let file = File::open(path).map_err(|source| CaptureError::Io {
            source_name: name.clone(),
            source,
        })?;
        Reader::new(Box::new(BufReader::with_capacity(1 << 16, file)), name)
    }

    /// Reads a capture from any stream; `source_name` names it in errors.
    pub fn new(
        input: Box<dyn BufRead + Send>,
        source_name: String,
    ) -> Result<Reader, CaptureError> {
        let mut reader = Reader {
            input,
            source_name,
            header: Header {
                format: String::new(),
                version: 0,
                created: super::Time::now(),
                listen: None,
                upstream: None,
                host: None,
                tool: String::new(),
            },
            line: 0,
            buf: Vec::new(),
            torn_tail: None,
            done: false,
        };
        reader.header = reader.read_header()?;
        Ok(reader)
    }

    /// The capture's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file name used in errors.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The line number of a torn last line that was skipped (a crash while writing), once
    /// the reader has reached the end.
    pub fn torn_tail(&self) -> Option<u64> {
        self.torn_tail
    }

    fn read_header(&mut self) -> Result<Header, CaptureError> {
        let not_capture = |s: &Self, why: String| CaptureError::NotACapture {
            source_name: s.source_name.clone(),
            line: 1,
            why,
        };
        let Some(complete) = self.next_line()? else {
            return Err(not_capture(self, "the file is empty".into()));
        };
        let value: serde_json::Value = serde_json::from_slice(&self.buf).map_err(|e| {
            not_capture(
                self,
                format!(
                    "the first line is not JSON ({e}){}",
                    if complete { "" } else { " and is torn" }
                ),
            )
        })?;
        if value.get("type").and_then(|t| t.as_str()) != Some("header")
            || value.get("format").and_then(|t| t.as_str()) != Some(FORMAT)
        {
            return Err(not_capture(
                self,
                format!("the first line is not a header with \"format\":\"{FORMAT}\""),
            ));
        }
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(found) => {
                return Err(CaptureError::UnsupportedVersion {
                    source_name: self.source_name.clone(),
                    line: 1,
                    found,
                });
            }
            None => {
                return Err(not_capture(
                    self,
                    "the header has no numeric version".into(),
                ));
            }
        }
        serde_json::from_value::<Header>(value)
            .map_err(|e| not_capture(self, format!("invalid header: {e}")))
    }

    /// Reads the next line into `self.buf` (without its newline). Returns whether it was
    /// complete (ended by a newline), or `None` at the end.
    fn next_line(&mut self) -> Result<Option<bool>, CaptureError> {
        self.buf.clear();
        let limit = (MAX_RECORD_BYTES + 1) as u64;
        let n = (&mut self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| CaptureError::Io {
                source_name: self.source_name.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            return Ok(Some(true));
        }
        if self.buf.len() > MAX_RECORD_BYTES {
            return Err(CaptureError::InvalidRecord {
                source_name: self.source_name.clone(),
                line: self.line,
                why: format!("longer than {MAX_RECORD_BYTES} bytes"),
            });
        }
        Ok(Some(false))
    }

    fn next_record(&mut self) -> Result<Option<Located>, CaptureError> {
        loop {
            let Some(complete) = self.next_line()? else {
                return Ok(None);
            };
            match parse_line(&self.buf, complete, self.line, &self.source_name)? {
                Line::Blank => {}
                Line::Record(located) => return Ok(Some(located)),
                Line::Torn => {
                    self.torn_tail = Some(self.line);
                    return Ok(None);
                }
            }
        }
    }

    /// Hands every remaining record to `f`, in order, parsing on `threads` threads: the same
    /// records, the same errors (after the records before them) and the same torn-tail rule
    /// as iterating, about `threads` times faster on large captures. Memory stays bounded:
    /// at most a few chunks of [`CHUNK_BYTES`] per thread are in flight.
    pub fn for_each_parallel(
        mut self,
        threads: usize,
        mut f: impl FnMut(Located),
    ) -> Result<(), CaptureError> {
        if self.done {
            return Ok(());
        }
        let threads = threads.max(1);
        let source_name = self.source_name.clone();
        let first_line = self.line + 1;
        let mut input = std::mem::replace(&mut self.input, Box::new(io::empty()));
        std::thread::scope(|scope| {
            let (work_tx, work_rx) = mpsc::sync_channel::<Chunk>(threads * 2);
            let work_rx = Arc::new(Mutex::new(work_rx));
            let (done_tx, done_rx) = mpsc::channel::<(u64, Parsed)>();
            // One token per chunk in flight, returned once its records are handed over: the
            // parsers never run further ahead of `f` than this.
            let (token_tx, token_rx) = mpsc::sync_channel::<()>(threads * 4);
            for _ in 0..threads * 4 {
                let _ = token_tx.send(());
            }
            {
                let done_tx = done_tx.clone();
                let source_name = source_name.clone();
                scope.spawn(move || {
                    for index in 0.. {
                        if token_rx.recv().is_err() {
                            return;
                        }
                        match read_chunk(&mut input, &source_name) {
                            Ok(None) => return,
                            Ok(Some(bytes)) => {
                                let chunk = Chunk { index, bytes };
                                if work_tx.send(chunk).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let parsed = Parsed {
                                    records: Vec::new(),
                                    end: Some(End::Error(e)),
                                    lines: 0,
                                };
                                let _ = done_tx.send((index, parsed));
                                return;
                            }
                        }
                    }
                });
            }
            for _ in 0..threads {
                let (work_rx, done_tx) = (Arc::clone(&work_rx), done_tx.clone());
                let source_name = source_name.clone();
                scope.spawn(move || {
                    loop {
                        let chunk = match work_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(chunk) = chunk else { return };
                        let parsed = parse_chunk(&chunk, &source_name);
                        if done_tx.send((chunk.index, parsed)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            // Chunks finish in any order; records are handed over in file order, their line
            // numbers (counted from each chunk's start) made the file's.
            let mut ready = std::collections::BTreeMap::new();
            let mut next = 0;
            let mut before = first_line - 1;
            for (index, parsed) in done_rx {
                ready.insert(index, parsed);
                while let Some(Parsed {
                    records,
                    end,
                    lines,
                }) = ready.remove(&next)
                {
                    next += 1;
                    let _ = token_tx.try_send(());
                    for mut located in records {
                        located.line += before;
                        f(located);
                    }
                    match end {
                        None => {}
                        Some(End::Torn) => return Ok(()),
                        Some(End::Error(e)) => return Err(e.after_lines(before)),
                    }
                    before += lines;
                }
            }
            Ok(())
        })
    }
}

/// What one line of a capture holds.
enum Line {
    /// Nothing (whitespace).
    Blank,
    /// A record.
    Record(Located),
    /// An unterminated last line that does not parse: a write cut short by a crash.
    Torn,
}

/// Parses line `line` (without its newline; `complete` when a newline ended it).
fn parse_line(
    buf: &[u8],
    complete: bool,
    line: u64,
    source_name: &str,
) -> Result<Line, CaptureError> {
    let invalid = |why: String| CaptureError::InvalidRecord {
        source_name: source_name.to_owned(),
        line,
        why,
    };
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(Line::Blank);
    }
    match Record::parse(buf) {
        Ok(Record::Header(_)) => Err(invalid("a second header".into())),
        Ok(record) => {
            check(&record).map_err(invalid)?;
            Ok(Line::Record(Located { line, record }))
        }
        Err(_) if !complete => {
            // The writer builds each line in memory and writes it whole, so an unterminated
            // last line can only be a write cut short by a crash.
            tracing::warn!(file = %source_name, line, "skipping a torn last line (the recorder stopped while writing it)");
            Ok(Line::Torn)
        }
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// Bytes handed to one parsing thread at a time by [`Reader::for_each_parallel`].
pub const CHUNK_BYTES: usize = 1 << 20;

/// Whole lines of a capture, for one parsing thread.
struct Chunk {
    index: u64,
    bytes: Vec<u8>,
}

/// How a chunk ended, if not simply at its end.
enum End {
    /// At a torn last line.
    Torn,
    /// At an error.
    Error(CaptureError),
}

/// A chunk's records, numbered from its first line (1), how it ended, and its line count.
struct Parsed {
    records: Vec<Located>,
    end: Option<End>,
    lines: u64,
}

impl CaptureError {
    /// The same error with its line number moved on by `lines`.
    fn after_lines(self, lines: u64) -> CaptureError {
        match self {
            CaptureError::InvalidRecord {
                source_name,
                line,
                why,
            } => CaptureError::InvalidRecord {
                source_name,
                line: line + lines,
                why,
            },
            other => other,
        }
    }
}

/// Reads about [`CHUNK_BYTES`] of whole lines, or `None` at the end. An error's line number
/// counts from the chunk's first line.
fn read_chunk(
    input: &mut (impl BufRead + ?Sized),
    source_name: &str,
) -> Result<Option<Vec<u8>>, CaptureError> {
    let io = |source| CaptureError::Io {
        source_name: source_name.to_owned(),
        source,
    };
    let mut bytes = Vec::with_capacity(CHUNK_BYTES + 4096);
    input
        .take(CHUNK_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.last() != Some(&b'\n') {
        // Finish the line the chunk ends in (bounded, as the line-by-line reader is).
        let before = bytes.len();
        input
            .take((MAX_RECORD_BYTES + 1) as u64)
            .read_until(b'\n', &mut bytes)
            .map_err(io)?;
        let start = bytes[..before]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let tail = bytes.len() - start - usize::from(bytes.last() == Some(&b'\n'));
        if tail > MAX_RECORD_BYTES {
            let lines = memchr::memchr_iter(b'\n', &bytes[..start]).count() as u64;
            return Err(CaptureError::InvalidRecord {
                source_name: source_name.to_owned(),
                line: lines + 1,
                why: format!("longer than {MAX_RECORD_BYTES} bytes"),
            });
        }
    }
    Ok(Some(bytes))
}

/// Parses the lines of a chunk; stops at the first error or torn line.
fn parse_chunk(chunk: &Chunk, source_name: &str) -> Parsed {
    let mut records = Vec::new();
    let mut rest = &chunk.bytes[..];
    let mut line = 1;
    while !rest.is_empty() {
        let (text, complete, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        let text = if complete {
            text.strip_suffix(b"\r").unwrap_or(text)
        } else {
            text
        };
        match parse_line(text, complete, line, source_name) {
            Ok(Line::Blank) => {}
            Ok(Line::Record(located)) => records.push(located),
            Ok(Line::Torn) => {
                return Parsed {
                    records,
                    end: Some(End::Torn),
                    lines: line,
                };
            }
            Err(e) => {
                return Parsed {
                    records,
                    end: Some(End::Error(e)),
                    lines: line,
                };
            }
        }
        rest = next;
        line += 1;
    }
    Parsed {
        records,
        end: None,
        lines: line - 1,
    }
}

/// Checks what serde cannot: a record's payload is well-formed.
fn check(record: &Record) -> Result<(), String> {
    use base64::Engine as _;
    if let Record::Msg(m) = record {
        if let Some(b64) = &m.bytes_b64 {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("bytes_b64 is not base64: {e}"))?;
        }
        if m.json.is_none() && m.text.is_none() && m.bytes_b64.is_none() {
            return Err("a msg record needs json, text or bytes_b64".into());
        }
    }
    Ok(())
}

impl Iterator for Reader {
    type Item = Result<Located, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records and the error (as text) the line-by-line reader gives, and the parallel one.
    fn both(text: &[u8]) -> [(Vec<Located>, Option<String>); 2] {
        let open =
            || Reader::new(Box::new(io::Cursor::new(text.to_vec())), "t.jsonl".into()).unwrap();
        let mut serial = (Vec::new(), None);
        for r in open() {
            match r {
                Ok(l) => serial.0.push(l),
                Err(e) => serial.1 = Some(e.to_string()),
            }
        }
        let mut parallel = (Vec::new(), None);
        if let Err(e) = open().for_each_parallel(3, |l| parallel.0.push(l)) {
            parallel.1 = Some(e.to_string());
        }
        [serial, parallel]
    }

    #[test]
    fn parallel_reading_is_serial_reading_across_chunks() {
        let mut text = format!("{HEADER}\n{OPEN}\n").into_bytes();
        // Several chunks' worth, with blank and CRLF lines on the way.
        for i in 0..20_000 {
            let line = MSG.replace("\"seq\":0", &format!("\"seq\":{i}"));
            text.extend_from_slice(line.as_bytes());
            text.extend_from_slice(if i % 1000 == 7 { b"\r\n\n" } else { b"\n" });
        }
        assert!(text.len() > 2 * CHUNK_BYTES);
        let [serial, parallel] = both(&text);
        assert_eq!(serial.0.len(), 20_001);
        assert_eq!(serial, parallel);

        // An invalid line late in the file: the same records before it, the same error.
        let mut bad = text.clone();
        bad.extend_from_slice(b"{\"type\":\"msg\"}\n");
        bad.extend_from_slice(MSG.as_bytes());
        bad.push(b'\n');
        let [serial, parallel] = both(&bad);
        assert!(
            serial.1.as_deref().is_some_and(|e| e.contains("t.jsonl:")),
            "{:?}",
            serial.1
        );
        assert_eq!(serial, parallel);

        // A torn last line is skipped by both.
        let mut torn = text;
        torn.extend_from_slice(&MSG.as_bytes()[..40]);
        let [serial, parallel] = both(&torn);
        assert_eq!((serial.0.len(), serial.1.as_ref()), (20_001, None));
        assert_eq!(serial, parallel);
    }

    const HEADER: &str = r#"{"type":"header","format":"qmptap-capture","version":1,"created":"2026-11-25T19:10:13.072123Z","tool":"qmptap 0.1.0"}"#;
    const OPEN: &str = r#"{"type":"open","conn":1,"t":"2026-11-25T19:10:13.072200Z","peer":{"pid":42,"uid":0,"gid":0}}"#;
    const MSG: &str = r#"{"type":"msg","conn":1,"seq":0,"t":"2026-11-25T19:10:13.072300Z","dir":"s2c","kind":"greeting","json":{"QMP": {"version": {}, "capabilities": []}}}"#;

    fn read(text: &str) -> Result<(Vec<Located>, Option<u64>), CaptureError> {
        let mut r = Reader::new(
            Box::new(io::Cursor::new(text.as_bytes().to_vec())),
            "test.jsonl".into(),
        )?;
        let records = r.by_ref().collect::<Result<Vec<_>, _>>()?;
        Ok((records, r.torn_tail()))
    }

    #[test]
    fn reads_records_with_line_numbers() {
        let (records, torn) = read(&format!("{HEADER}\n{OPEN}\n{MSG}\n")).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].line, 3);
        assert_eq!(torn, None);
    }

    #[test]
    fn reads_proxy_origin_messages() {
        let poll = r#"{"type":"msg","conn":1,"seq":1,"t":"2026-11-25T19:10:13.072400Z","dir":"c2s","kind":"command","origin":"proxy","name":"query-migrate","json":{"execute": "query-migrate", "id": {"qmptap-poll": 1}}}"#;
        let (records, _) = read(&format!("{HEADER}\n{OPEN}\n{MSG}\n{poll}\n")).unwrap();
        let origins: Vec<_> = records
            .iter()
            .filter_map(|l| match &l.record {
                Record::Msg(m) => Some(m.origin),
                _ => None,
            })
            .collect();
        assert_eq!(
            origins,
            [super::super::Origin::Peer, super::super::Origin::Proxy]
        );
    }

    #[test]
    fn skips_a_torn_last_line() {
        let torn_msg = &MSG[..MSG.len() / 2];
        let (records, torn) = read(&format!("{HEADER}\n{OPEN}\n{torn_msg}")).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(torn, Some(3));
    }

    #[test]
    fn rejects_an_unknown_version_clearly() {
        let e = read(&HEADER.replace("\"version\":1", "\"version\":7"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "test.jsonl:1: capture format version 7 is not supported (this qmptap reads version 1); upgrade qmptap"
        );
    }

    #[test]
    fn a_bad_line_in_the_middle_names_its_line() {
        let e = read(&format!("{HEADER}\n{OPEN}\nnot json\n{MSG}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.jsonl:3: invalid record"), "{e}");
        let e = read("hello\n").unwrap_err().to_string();
        assert!(e.starts_with("test.jsonl:1: not a qmptap capture"), "{e}");
        let e = read("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
