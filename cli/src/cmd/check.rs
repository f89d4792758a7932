//! `qmptap check`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use qmptap::audit::{self, Report};
use qmptap::schema::SchemaSpec;
use qmptap::schema::check::{Policy, Severity};

use crate::args::{CheckArgs, ColorChoice, Format};

pub fn run(args: &CheckArgs, color: ColorChoice) -> Result<ExitCode> {
    let mut policy = Policy::default();
    for feature in &args.deny {
        match feature.as_str() {
            "deprecated" => policy.deny_deprecated = true,
            "unstable" => policy.deny_unstable = true,
            other => bail!("invalid --deny '{other}': expected deprecated, unstable or both"),
        }
    }
    let spec: Option<SchemaSpec> = args.schema.schema.as_deref().map(str::parse).transpose()?;
    // One explicit schema serves every capture: load it once.
    let shared = match &spec {
        Some(spec) => Some(
            qmptap::schema::load(spec).with_context(|| format!("loading the schema '{spec}'"))?,
        ),
        None => None,
    };
    let color = super::use_color(color);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut errors = 0;
    for path in &args.captures {
        let report = audit::check_file(path, shared.as_ref(), policy)
            .with_context(|| format!("checking '{}'", path.display()))?;
        errors += report.errors();
        match args.format {
            Format::Json => {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            }
            Format::Text => print(&mut out, &report, color)?,
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(super::EXIT_FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(out: &mut impl std::io::Write, report: &Report, color: bool) -> std::io::Result<()> {
    let paint = |code: &str, text: &str| super::paint(color, code, text);
    writeln!(
        out,
        "{}: checked {} messages against {}",
        paint("1", &report.file),
        report.messages,
        report.schema
    )?;
    let mut groups: BTreeMap<(std::cmp::Reverse<Severity>, &str), Vec<&audit::Located>> =
        BTreeMap::new();
    for f in &report.findings {
        groups
            .entry((std::cmp::Reverse(f.severity), f.rule.as_str()))
            .or_default()
            .push(f);
    }
    for ((std::cmp::Reverse(severity), rule), findings) in &groups {
        let label = match severity {
            Severity::Error => paint("1;31", "error"),
            Severity::Warning => paint("1;33", "warning"),
        };
        writeln!(out, "  {label} {rule} ({})", findings.len())?;
        for f in findings {
            let name = f
                .name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            let path = if f.path.is_empty() {
                String::new()
            } else {
                format!(" at {}", f.path)
            };
            writeln!(
                out,
                "    line {} conn {} seq {}{name}{path}: expected {}, found {}",
                f.line, f.conn, f.seq, f.expected, f.found
            )?;
        }
    }
    let warnings = report.findings.len() - report.errors();
    writeln!(
        out,
        "  {} error(s), {} warning(s)",
        report.errors(),
        warnings
    )
}
