//! QEMU's QAPI schema language: reading `qapi/*.json` sources and compiling them into the
//! [`Schema`] model, as QEMU's introspection generator does, but keeping real type names,
//! integer widths and `if` conditions.
//!
//! Schema files are untrusted input: every failure is a [`QapiError`] naming the file, line and
//! column; nothing here panics or recurses without bound. Nothing here evaluates `if`
//! conditions either: every definition is kept with its condition.
//!
//! - [`parse_str`] / [`parse_file`]: one file's text to [`Expr`]s (includes not followed).
//! - [`load_dir_or_file`]: a file and everything it includes, compiled.
//! - [`compile`]: expressions (includes already expanded) to a [`Schema`].

mod compile;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use compile::{MAX_FLATTEN_WORK, compile};
pub use parse::MAX_DEPTH;

use super::model::Schema;

/// Largest schema file accepted. QEMU's biggest (`block-core.json`) is about 200 KiB; the cap
/// keeps a hostile path (a device, a huge file) from exhausting memory.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Deepest chain of nested includes accepted (QEMU's own schema nests three deep).
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// A place in a schema source: file, 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pos {
    /// The file, as the path it was opened by (or the name given to [`parse_str`]).
    pub file: Arc<str>,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, counting characters.
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A parsed value with the position of its first character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Where the value starts.
    pub pos: Pos,
    /// The value.
    pub value: Value,
}

/// A value of the QAPI schema language: no numbers, no null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string (escapes already decoded).
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// A list.
    List(Vec<Node>),
    /// An object.
    Dict(Dict),
}

impl Value {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::List(_) => "a list",
            Value::Dict(_) => "an object",
        }
    }
}

/// An object key and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Where the key starts (its opening quote).
    pub pos: Pos,
}

/// An object: keys are unique and kept in source order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dict {
    /// Keys and values in source order.
    pub entries: Vec<(Key, Node)>,
}

impl Dict {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find_map(|(k, v)| (k.name == key).then_some(v))
    }

    /// The entry for `key` (key and value), if present.
    pub fn entry(&self, key: &str) -> Option<(&Key, &Node)> {
        self.entries
            .iter()
            .find_map(|(k, v)| (k.name == key).then_some((k, v)))
    }
}

/// A top-level expression (always an object) and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    /// Position of its opening brace.
    pub pos: Pos,
    /// Its keys and values.
    pub dict: Dict,
}

/// Why a schema could not be read or compiled. Every variant carries a position and displays as
/// `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
pub enum QapiError {
    /// A file could not be read. `pos` is the `include` directive that named it, or line 1,
    /// column 1 of the file itself when it was the one asked for.
    #[error("{pos}: cannot read '{}': {error}", path.display())]
    Io {
        /// Where the file was asked for.
        pos: Pos,
        /// The file that could not be read.
        path: PathBuf,
        /// The reason. (Part of the message, so not also reported as the error's source.)
        error: std::io::Error,
    },
    /// The text is not valid QAPI syntax.
    #[error("{pos}: {message}")]
    Syntax {
        /// Where the problem is.
        pos: Pos,
        /// What is wrong.
        message: String,
    },
    /// An include loop, or includes nested too deeply.
    #[error("{pos}: {message}")]
    Include {
        /// The offending `include` directive.
        pos: Pos,
        /// What is wrong.
        message: String,
    },
    /// Well-formed text that is not a valid schema: unknown keys, wrong value types, duplicate
    /// or undefined names, bad unions, ...
    #[error("{pos}: {message}")]
    Schema {
        /// The offending expression, key or value.
        pos: Pos,
        /// What is wrong.
        message: String,
    },
}

impl QapiError {
    /// Where the problem is.
    pub fn pos(&self) -> &Pos {
        match self {
            QapiError::Io { pos, .. }
            | QapiError::Syntax { pos, .. }
            | QapiError::Include { pos, .. }
            | QapiError::Schema { pos, .. } => pos,
        }
    }
}

/// Parses schema text. `file` names it in positions and errors. Includes are not followed.
pub fn parse_str(text: &str, file: &str) -> Result<Vec<Expr>, QapiError> {
    parse::parse_text(text, Arc::from(file))
}

/// Reads and parses one schema file. Includes are not followed.
pub fn parse_file(path: &Path) -> Result<Vec<Expr>, QapiError> {
    let name: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
    let start = Pos {
        file: Arc::clone(&name),
        line: 1,
        col: 1,
    };
    let text = read_text(path, &start, &name)?;
    parse::parse_text(&text, name)
}

/// Loads a schema: `path` is a schema file, or a directory holding `qapi-schema.json` (the entry
/// file of QEMU's `qapi/`). Includes are followed, each file at most once, then everything is
/// compiled.
pub fn load_dir_or_file(path: &Path) -> Result<Schema, QapiError> {
    let file = if path.is_dir() {
        path.join("qapi-schema.json")
    } else {
        path.to_path_buf()
    };
    let mut loader = Loader::default();
    let start = Pos {
        file: Arc::from(file.to_string_lossy().as_ref()),
        line: 1,
        col: 1,
    };
    loader.load(&file, &start)?;
    compile(&loader.exprs)
}

/// Reads a file as UTF-8 text, within [`MAX_FILE_SIZE`]. `asked_at` is where it was asked for
/// (for I/O errors); `name` names it in positions inside it.
fn read_text(path: &Path, asked_at: &Pos, name: &Arc<str>) -> Result<String, QapiError> {
    let io_error = |error| QapiError::Io {
        pos: asked_at.clone(),
        path: path.to_path_buf(),
        error,
    };
    let file = fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    // Read one byte more than allowed to tell "exactly at the cap" from "over it".
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_SIZE {
        return Err(io_error(std::io::Error::other(format!(
            "file larger than {MAX_FILE_SIZE} bytes"
        ))));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // The valid prefix is UTF-8 by definition, so this locates the first bad byte.
        let prefix = std::str::from_utf8(bytes.get(..valid).unwrap_or_default()).unwrap_or("");
        QapiError::Syntax {
            pos: parse::Locator::new(prefix, Arc::clone(name)).pos_at(prefix.len()),
            message: "invalid UTF-8".to_owned(),
        }
    })
}

/// Follows includes depth-first, in source order, collecting the expressions of every file.
#[derive(Default)]
struct Loader {
    exprs: Vec<Expr>,
    /// Canonical paths of the files already loaded (each file is read once).
    seen: HashSet<PathBuf>,
    /// Canonical paths of the files being loaded, outermost first (to report include loops).
    stack: Vec<PathBuf>,
}

impl Loader {
    fn load(&mut self, path: &Path, asked_at: &Pos) -> Result<(), QapiError> {
        let canonical = fs::canonicalize(path).map_err(|error| QapiError::Io {
            pos: asked_at.clone(),
            path: path.to_path_buf(),
            error,
        })?;
        if self.stack.contains(&canonical) {
            // QEMU rejects a file that includes itself, directly or not.
            return Err(QapiError::Include {
                pos: asked_at.clone(),
                message: format!("inclusion loop for '{}'", path.display()),
            });
        }
        if !self.seen.insert(canonical.clone()) {
            return Ok(());
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(QapiError::Include {
                pos: asked_at.clone(),
                message: format!("includes nested deeper than {MAX_INCLUDE_DEPTH} files"),
            });
        }
        let name: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
        let text = read_text(path, asked_at, &name)?;
        let exprs = parse::parse_text(&text, name)?;
        self.stack.push(canonical);
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        for expr in exprs {
            match expr.dict.get("include") {
                Some(Node {
                    value: Value::Str(target),
                    ..
                }) if expr.dict.entries.len() == 1 => {
                    let target = dir.join(target);
                    let pos = expr.pos.clone();
                    self.load(&target, &pos)?;
                }
                // Malformed include directives are kept for `compile` to report.
                _ => self.exprs.push(expr),
            }
        }
        self.stack.pop();
        Ok(())
    }
}
