//! `qmptap check`: every message of a capture validated against a schema, plus the protocol
//! rules a schema cannot express (negotiation first, ids echoed, replies answering something).
//!
//! It streams the capture (twice when the schema has to be found in it first) and pairs
//! replies with [`crate::session::Tracker`], like every other consumer.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::capture::{CaptureError, Dir, Reader, Record};
use crate::schema::check::{Checker, Policy, Severity};
use crate::schema::{self, Loaded, SchemaError, SchemaSpec};
use crate::session::{Role, Tracker};
use crate::wire::Kind;

/// One finding, located in its capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    /// Capture line of the message.
    pub line: u64,
    /// Connection id.
    pub conn: u64,
    /// Sequence number in the connection.
    pub seq: u64,
    /// The command or event concerned, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The rule broken, kebab-case (`unknown-member`, `before-negotiation`, ...).
    pub rule: String,
    /// Error or warning.
    pub severity: Severity,
    /// JSON path in the message.
    pub path: String,
    /// What was expected.
    pub expected: String,
    /// What was found.
    pub found: String,
}

/// The result for one capture.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The capture.
    pub file: String,
    /// Which schema was used, and why.
    pub schema: String,
    /// Messages checked.
    pub messages: u64,
    /// Findings in capture order.
    pub findings: Vec<Located>,
}

impl Report {
    /// Findings of error severity.
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }
}

/// Why a capture could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The capture could not be read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The schema could not be loaded.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Protocol rules, beside the schema's.
const BEFORE_NEGOTIATION: &str = "before-negotiation";
const REPEATED_NEGOTIATION: &str = "repeated-negotiation";
const ID_NOT_ECHOED: &str = "id-not-echoed";
const REPLY_TO_NOTHING: &str = "reply-to-nothing";
const INVALID_INPUT: &str = "invalid-input";
const OOB_NOT_ENABLED: &str = "oob-not-enabled";

/// Chooses the schema for a capture: `spec` if given; else the capture's own
/// `query-qmp-schema` reply; else the built-in schema nearest the greeting's QEMU version.
pub fn schema_for(path: &Path, spec: Option<&SchemaSpec>) -> Result<Loaded, AuditError> {
    if let Some(spec) = spec {
        return Ok(schema::load(spec)?);
    }
    if let Some(schema) = schema::from_capture(Reader::open(path)?)? {
        return Ok(Loaded {
            schema,
            description: format!(
                "the capture's own query-qmp-schema reply ({})",
                path.display()
            ),
        });
    }
    let mut greeting = None;
    for located in Reader::open(path)? {
        if let Record::Msg(m) = located?.record {
            if m.kind == Kind::Greeting {
                greeting = m.value();
                break;
            }
        }
    }
    builtin_for_greeting(greeting.as_ref())
}

/// The built-in schema nearest the QEMU version a greeting announces (the newest without
/// one), described with why it was chosen.
pub fn builtin_for_greeting(greeting: Option<&Value>) -> Result<Loaded, AuditError> {
    let version = greeting.and_then(|v| {
        let q = &v["QMP"]["version"]["qemu"];
        Some((q["major"].as_u64()?, q["minor"].as_u64()?))
    });
    let (builtin, why) = match version {
        Some((major, minor)) => (
            schema::builtin::nearest(major, minor),
            format!("nearest to the greeting's QEMU {major}.{minor}"),
        ),
        None => (
            schema::builtin::VERSIONS[schema::builtin::VERSIONS.len() - 1],
            "the newest; the capture has no greeting".to_owned(),
        ),
    };
    let mut loaded = schema::builtin::load(builtin)?;
    loaded.description = format!("{}, {why}", loaded.description);
    Ok(loaded)
}

/// Where a connection is in capability negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negotiation {
    /// `qmp_capabilities` not sent yet: QEMU runs nothing else.
    Pending,
    /// Sent, not answered yet.
    Sent {
        /// It asked for out-of-band execution.
        oob: bool,
    },
    /// Succeeded.
    Done {
        /// Out-of-band execution is on.
        oob: bool,
    },
}

/// Checks one capture against `loaded`.
pub fn check_capture(path: &Path, loaded: &Loaded, policy: Policy) -> Result<Report, AuditError> {
    check_records(
        path.display().to_string(),
        Reader::open(path)?,
        loaded,
        policy,
        false,
    )
}

/// Whether a file is a capture (else it is read as a `->` / `<-` transcript).
pub fn is_capture(path: &Path) -> Result<bool, AuditError> {
    use std::io::Read as _;
    let mut head = [0u8; 32];
    let mut file = std::fs::File::open(path).map_err(|source| CaptureError::Io {
        source_name: path.display().to_string(),
        source,
    })?;
    let n = file.read(&mut head).map_err(|source| CaptureError::Io {
        source_name: path.display().to_string(),
        source,
    })?;
    Ok(head[..n].starts_with(br#"{"type":"header""#))
}

/// Checks an exchange written in the QMP documentation's notation (`->` what the client sends,
/// `<-` what the server sends), as one connection; findings give the line of each arrow.
pub fn check_notation(
    source_name: &str,
    text: &str,
    loaded: &Loaded,
    policy: Policy,
) -> Result<Report, AuditError> {
    let t = crate::capture::Time(chrono::DateTime::UNIX_EPOCH);
    let exchanges = crate::notation::parse(text);
    let greeted = exchanges
        .first()
        .is_some_and(|e| e.value.as_ref().is_ok_and(|v| v.get("QMP").is_some()));
    let records = exchanges
        .into_iter()
        .enumerate()
        .map(move |(seq, exchange)| {
            let dir = match exchange.arrow {
                crate::notation::Arrow::ToServer => Dir::C2s,
                crate::notation::Arrow::ToClient => Dir::S2c,
            };
            let bytes = exchange.text.into_bytes();
            let frame = crate::wire::Frame {
                kind: crate::wire::FrameKind::Message,
                len: bytes.len() as u64,
                bytes,
                offset: 0,
            };
            let msg = crate::capture::Msg::from_frame(1, seq as u64, t, dir, &frame, 0);
            Ok(crate::capture::Located {
                line: exchange.line as u64,
                record: Record::Msg(msg),
            })
        });
    check_records(source_name.to_owned(), records, loaded, policy, !greeted)
}

/// The checks, over any stream of records.
fn check_records(
    file: String,
    records: impl IntoIterator<Item = Result<crate::capture::Located, CaptureError>>,
    loaded: &Loaded,
    policy: Policy,
    assume_negotiated: bool,
) -> Result<Report, AuditError> {
    let mut audit = Audit::new(loaded, policy, assume_negotiated);
    let mut report = Report {
        file,
        schema: loaded.description.clone(),
        messages: 0,
        findings: Vec::new(),
    };
    for located in records {
        let located = located?;
        if matches!(located.record, Record::Msg(_)) {
            report.messages += 1;
        }
        report.findings.extend(audit.observe(&located));
    }
    Ok(report)
}

/// The checks, record by record: what `qmptap check` does over a whole capture, and the TUI
/// over a session as it happens.
pub struct Audit<'s> {
    checker: Checker<'s>,
    tracker: Tracker,
    conns: HashMap<u64, Negotiation>,
    assume_negotiated: bool,
    found: Vec<crate::schema::check::Finding>,
}

impl<'s> Audit<'s> {
    /// Checks against `loaded`; `assume_negotiated` for transcripts that leave negotiation
    /// out.
    pub fn new(loaded: &'s Loaded, policy: Policy, assume_negotiated: bool) -> Audit<'s> {
        Audit {
            checker: Checker::new(&loaded.schema, policy),
            tracker: Tracker::new(),
            conns: HashMap::new(),
            assume_negotiated,
            found: Vec::new(),
        }
    }

    /// The findings about one record (none for records that are not messages).
    pub fn observe(&mut self, located: &crate::capture::Located) -> Vec<Located> {
        let role = self.tracker.observe(&located.record);
        let Record::Msg(m) = &located.record else {
            return Vec::new();
        };
        let checker = &self.checker;
        let mut found = std::mem::take(&mut self.found);
        let state = self
            .conns
            .entry(m.conn)
            .or_insert(if self.assume_negotiated {
                Negotiation::Done { oob: false }
            } else {
                Negotiation::Pending
            });
        let value = m.value();
        let mut rules: Vec<Located> = Vec::new();
        let mut protocol =
            |rule: &str, severity: Severity, path: &str, expected: String, found_text: String| {
                rules.push(Located {
                    line: located.line,
                    conn: m.conn,
                    seq: m.seq,
                    name: None,
                    rule: rule.to_owned(),
                    severity,
                    path: path.to_owned(),
                    expected,
                    found: found_text,
                });
            };
        match (m.dir, m.kind, &value) {
            (Dir::C2s, Kind::Command, Some(v)) => {
                let name = m.name.as_deref().unwrap_or_default();
                if name == "qmp_capabilities" {
                    if *state != Negotiation::Pending {
                        protocol(
                            REPEATED_NEGOTIATION,
                            Severity::Error,
                            "execute",
                            "qmp_capabilities once per connection".into(),
                            "a second qmp_capabilities".into(),
                        );
                    }
                    let oob = v["arguments"]["enable"]
                        .as_array()
                        .is_some_and(|caps| caps.iter().any(|c| c == "oob"));
                    if *state == Negotiation::Pending {
                        *state = Negotiation::Sent { oob };
                    }
                } else if !matches!(state, Negotiation::Done { .. }) {
                    protocol(
                        BEFORE_NEGOTIATION,
                        Severity::Error,
                        "execute",
                        "qmp_capabilities first".into(),
                        format!("'{name}' before negotiation"),
                    );
                }
                if v.get("exec-oob").is_some() && *state != (Negotiation::Done { oob: true }) {
                    protocol(
                        OOB_NOT_ENABLED,
                        Severity::Error,
                        "exec-oob",
                        "the oob capability enabled by qmp_capabilities".into(),
                        "exec-oob without it".into(),
                    );
                }
                checker.check_command(v, &mut found);
            }
            (Dir::C2s, _, _) => {
                // A frame QEMU cannot dispatch (it answers with a parse or "must be an object"
                // error); a truncated one never reached its parser but is still a client fault.
                let text = String::from_utf8_lossy(&m.raw_bytes())
                    .chars()
                    .take(80)
                    .collect::<String>();
                protocol(
                    INVALID_INPUT,
                    Severity::Error,
                    "",
                    "a JSON object with execute or exec-oob".into(),
                    format!("{text:?}"),
                );
            }
            (Dir::S2c, Kind::Return | Kind::Error, Some(v)) => {
                match &role {
                    Role::Reply {
                        command,
                        request_id,
                        ..
                    } => {
                        if v.get("id") != request_id.as_ref() {
                            let shown = |id: Option<&Value>| {
                                id.map_or_else(|| "no id".to_owned(), Value::to_string)
                            };
                            protocol(
                                ID_NOT_ECHOED,
                                Severity::Error,
                                "id",
                                shown(request_id.as_ref()),
                                shown(v.get("id")),
                            );
                        }
                        if m.kind == Kind::Return {
                            if let Some(command) = command {
                                if let (Negotiation::Sent { oob }, "qmp_capabilities") =
                                    (*state, command.as_str())
                                {
                                    *state = Negotiation::Done { oob };
                                }
                                checker.check_return(command, v, &mut found);
                            }
                        }
                    }
                    Role::UnpairedReply => protocol(
                        REPLY_TO_NOTHING,
                        Severity::Error,
                        "",
                        "a reply to a command the client sent".into(),
                        "a reply with no command pending".into(),
                    ),
                    Role::Request | Role::Other => {}
                }
                if m.kind == Kind::Error {
                    checker.check_error(v, &mut found);
                }
            }
            (Dir::S2c, Kind::Event, Some(v)) => checker.check_event(v, &mut found),
            (Dir::S2c, Kind::Greeting | Kind::Return | Kind::Error | Kind::Event, _) => {}
            (Dir::S2c, Kind::Other | Kind::Invalid | Kind::Command, _) => {
                protocol(
                    INVALID_INPUT,
                    Severity::Error,
                    "",
                    "a greeting, reply or event".into(),
                    format!("{:?} from the server", m.kind),
                );
            }
        }
        let name = match &role {
            Role::Reply { command, .. } => command.clone(),
            _ => m.name.clone(),
        };
        for f in found.drain(..) {
            rules.push(Located {
                line: located.line,
                conn: m.conn,
                seq: m.seq,
                name: None,
                rule: serde_json::to_value(f.rule)
                    .ok()
                    .and_then(|r| r.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                severity: f.severity,
                path: f.path,
                expected: f.expected,
                found: f.found,
            });
        }
        self.found = found;
        for f in &mut rules {
            f.name.clone_from(&name);
        }
        rules
    }
}

/// Checks a capture, or a transcript in the documentation's notation, against `schema` if
/// given, else the schema [`schema_for`] chooses (the newest built-in one for a transcript,
/// which has no greeting to go by).
pub fn check_file(
    path: &Path,
    schema: Option<&Loaded>,
    policy: Policy,
) -> Result<Report, AuditError> {
    if is_capture(path)? {
        return match schema {
            Some(loaded) => check_capture(path, loaded, policy),
            None => check_capture(path, &schema_for(path, None)?, policy),
        };
    }
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CaptureError::Io {
        source_name: name.clone(),
        source,
    })?;
    if let Some(loaded) = schema {
        return check_notation(&name, &text, loaded, policy);
    }
    let newest = schema::builtin::VERSIONS[schema::builtin::VERSIONS.len() - 1];
    let loaded = Loaded {
        description: format!(
            "builtin:{newest}, the newest built-in (a transcript has no greeting)"
        ),
        ..schema::builtin::load(newest)?
    };
    check_notation(&name, &text, &loaded, policy)
}
