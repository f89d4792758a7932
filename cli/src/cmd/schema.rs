//! `qmptap schema show|diff|dump`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use qmptap::schema::{self, Loaded, SchemaSpec, builtin, diff, introspect};

use crate::args::{DumpFormat, Format, SchemaArg, SchemaCommand};

/// The schema named by --schema, or the newest built-in one.
pub fn load(arg: &SchemaArg) -> Result<Loaded> {
    let spec: SchemaSpec = match &arg.schema {
        Some(s) => s.parse()?,
        None => SchemaSpec::Builtin(builtin::VERSIONS[builtin::VERSIONS.len() - 1].to_owned()),
    };
    schema::load(&spec).with_context(|| format!("loading the schema '{spec}'"))
}

pub fn run(cmd: &SchemaCommand) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        SchemaCommand::Show { name, schema } => {
            let loaded = load(schema)?;
            let Some(text) = schema::shape::render(&loaded.schema, name) else {
                bail!("'{name}' is not in the schema ({})", loaded.description);
            };
            writeln!(out, "# {}", loaded.description)?;
            write!(out, "{text}")?;
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Diff { old, new, format } => {
            let a = schema::load(&old.parse()?).with_context(|| format!("loading '{old}'"))?;
            let b = schema::load(&new.parse()?).with_context(|| format!("loading '{new}'"))?;
            let changes = diff::diff(&a.schema, &b.schema);
            match format {
                Format::Json => {
                    for c in &changes {
                        serde_json::to_writer(&mut out, c)?;
                        writeln!(out)?;
                    }
                }
                Format::Text => {
                    writeln!(out, "--- {}\n+++ {}", a.description, b.description)?;
                    for c in &changes {
                        let sign = match c.change {
                            "added" => '+',
                            "removed" => '-',
                            _ => '~',
                        };
                        let at = if c.path.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", c.path)
                        };
                        let detail = if c.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", c.detail)
                        };
                        writeln!(out, "{sign} {} {} {}{at}{detail}", c.change, c.what, c.name)?;
                    }
                    let count = |k: &str| changes.iter().filter(|c| c.change == k).count();
                    writeln!(
                        out,
                        "{} changes: {} added, {} removed, {} changed, {} newly deprecated, {} newly unstable",
                        changes.len(),
                        count("added"),
                        count("removed"),
                        count("changed"),
                        count("deprecated"),
                        count("unstable")
                    )?;
                }
            }
            Ok(if changes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::EXIT_FINDINGS)
            })
        }
        SchemaCommand::Dump { schema, format } => {
            let loaded = load(schema)?;
            match format {
                DumpFormat::Introspection => {
                    serde_json::to_writer(&mut out, &introspect::to_introspection(&loaded.schema))?;
                    writeln!(out)?;
                }
                DumpFormat::Model => write!(out, "{}", builtin::to_model_json(&loaded.schema))?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
