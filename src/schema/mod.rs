//! QMP schemas: one model ([`Schema`]) built from QEMU's introspection, from QAPI sources, or
//! from the schemas built into qmptap; and where a command finds the schema it was told to
//! use ([`SchemaSpec`]).
//!
//! This module must never guess silently: every [`Loaded`] schema says where it came from.

pub mod builtin;
pub mod check;
pub mod diff;
pub mod introspect;
pub mod live;
pub mod model;
pub mod qapi;
pub mod shape;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use model::{Cond, Entity, EnumValue, JsonType, Member, Meta, Schema, Variant};

use crate::addr::Addr;

/// Where to take a schema from, as users write it (`--schema`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSpec {
    /// A file: introspection JSON (a `query-qmp-schema` result or reply), a capture holding a
    /// `query-qmp-schema` reply, or a QAPI schema file (its includes followed).
    File(PathBuf),
    /// A directory of QAPI sources (its `qapi-schema.json`).
    Dir(PathBuf),
    /// A schema built into qmptap: `builtin:7.2`, `builtin:9.1`.
    Builtin(String),
    /// Ask a live monitor: `live:unix:PATH` or `live:tcp:HOST:PORT`.
    Live(Addr),
}

impl FromStr for SchemaSpec {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(version) = s.strip_prefix("builtin:") {
            return Ok(SchemaSpec::Builtin(version.to_owned()));
        }
        if let Some(addr) = s.strip_prefix("live:") {
            return addr
                .parse()
                .map(SchemaSpec::Live)
                .map_err(|e| SchemaError::Spec(e.to_string()));
        }
        let path = PathBuf::from(s);
        Ok(if path.is_dir() {
            SchemaSpec::Dir(path)
        } else {
            SchemaSpec::File(path)
        })
    }
}

impl fmt::Display for SchemaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaSpec::File(p) | SchemaSpec::Dir(p) => write!(f, "{}", p.display()),
            SchemaSpec::Builtin(v) => write!(f, "builtin:{v}"),
            SchemaSpec::Live(a) => write!(f, "live:{a}"),
        }
    }
}

/// A schema and a description of where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The schema.
    pub schema: Schema,
    /// Where it came from, for people: `builtin:9.1 (QAPI sources of QEMU 9.1.0)`.
    pub description: String,
}

/// Why a schema could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The `--schema` value is not understood.
    #[error("invalid schema '{0}' (expected FILE, DIR, builtin:VERSION or live:ADDR)")]
    Spec(String),
    /// A file could not be read.
    #[error("cannot read schema '{path}'")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QAPI sources are invalid.
    #[error(transparent)]
    Qapi(#[from] qapi::QapiError),
    /// An introspection document is invalid.
    #[error("{source_name}: {error}")]
    Introspect {
        /// Where the document came from.
        source_name: String,
        /// What is wrong.
        error: introspect::IntrospectError,
    },
    /// A file is none of the formats a schema can come in.
    #[error("{path}: not a schema: {why}")]
    NotASchema {
        /// The file.
        path: String,
        /// Why not.
        why: String,
    },
    /// No built-in schema has that version.
    #[error("no built-in schema '{0}' (built in: {list})", list = builtin::VERSIONS.join(", "))]
    UnknownBuiltin(String),
    /// A capture could not be read while looking for its schema.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// Asking a live monitor failed.
    #[error("cannot get the schema from '{addr}': {why}")]
    Live {
        /// The monitor.
        addr: String,
        /// What went wrong.
        why: String,
    },
}

/// Loads the schema `spec` names.
pub fn load(spec: &SchemaSpec) -> Result<Loaded, SchemaError> {
    match spec {
        SchemaSpec::Builtin(version) => builtin::load(version),
        SchemaSpec::Dir(dir) => Ok(Loaded {
            schema: qapi::load_dir_or_file(dir)?,
            description: format!("QAPI sources in {}", dir.display()),
        }),
        SchemaSpec::Live(addr) => {
            let doc = live::query_schema(addr).map_err(|why| SchemaError::Live {
                addr: addr.to_string(),
                why,
            })?;
            let schema =
                introspect::from_introspection(&doc).map_err(|error| SchemaError::Introspect {
                    source_name: format!("live:{addr}"),
                    error,
                })?;
            Ok(Loaded {
                schema,
                description: format!("introspected from live:{addr}"),
            })
        }
        SchemaSpec::File(path) => load_file(path),
    }
}

fn load_file(path: &Path) -> Result<Loaded, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_owned(),
        source,
    })?;
    let name = path.display().to_string();
    let first = text.trim_start();
    if first.starts_with("{\"type\":\"header\"") {
        let reader = crate::capture::Reader::new(
            Box::new(std::io::Cursor::new(text.into_bytes())),
            name.clone(),
        )?;
        return match from_capture(reader)? {
            Some(schema) => Ok(Loaded {
                schema,
                description: format!("the query-qmp-schema reply in {name}"),
            }),
            None => Err(SchemaError::NotASchema {
                path: name,
                why: "the capture has no query-qmp-schema reply".into(),
            }),
        };
    }
    // Introspection and qmptap's model are JSON; QAPI sources are not (comments, quotes).
    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
        let (schema, what) = if builtin::is_model_json(&doc) {
            (builtin::from_model_json(&doc), "qmptap schema model")
        } else {
            (introspect::from_introspection(&doc), "introspection")
        };
        let schema = schema.map_err(|error| SchemaError::Introspect {
            source_name: name.clone(),
            error,
        })?;
        return Ok(Loaded {
            schema,
            description: format!("{what} in {name}"),
        });
    }
    Ok(Loaded {
        schema: qapi::load_dir_or_file(path)?,
        description: format!("QAPI sources {name}"),
    })
}

/// Finds the reply to a `query-qmp-schema` command in a capture, if it has one.
pub fn from_capture(reader: crate::capture::Reader) -> Result<Option<Schema>, SchemaError> {
    let source_name = reader.source_name().to_owned();
    let mut tracker = crate::session::Tracker::new();
    for located in reader {
        let located = located?;
        let role = tracker.observe(&located.record);
        if let (
            crate::capture::Record::Msg(m),
            crate::session::Role::Reply {
                command: Some(c), ..
            },
        ) = (&located.record, &role)
        {
            if c == "query-qmp-schema" && m.kind == crate::wire::Kind::Return {
                let Some(value) = m.value() else { continue };
                let schema = introspect::from_introspection(&value).map_err(|error| {
                    SchemaError::Introspect {
                        source_name: format!("{source_name}:{}", located.line),
                        error,
                    }
                })?;
                return Ok(Some(schema));
            }
        }
    }
    Ok(None)
}
