//! Reading captures back, streaming, with errors that name the file and line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

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
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return match Record::parse(&self.buf) {
                Ok(Record::Header(_)) => Err(self.invalid("a second header".into())),
                Ok(record) => {
                    check(&record).map_err(|why| self.invalid(why))?;
                    Ok(Some(Located {
                        line: self.line,
                        record,
                    }))
                }
                Err(_) if !complete => {
                    // The writer builds each line in memory and writes it whole, so an
                    // unterminated last line can only be a write cut short by a crash.
                    tracing::warn!(file = %self.source_name, line = self.line, "skipping a torn last line (the recorder stopped while writing it)");
                    self.torn_tail = Some(self.line);
                    Ok(None)
                }
                Err(e) => Err(self.invalid(e.to_string())),
            };
        }
    }

    fn invalid(&self, why: String) -> CaptureError {
        CaptureError::InvalidRecord {
            source_name: self.source_name.clone(),
            line: self.line,
            why,
        }
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
