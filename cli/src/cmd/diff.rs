//! `qmptap diff`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use qmptap::diff::{self, Entry, Report};
use qmptap::normalize::Normalizer;

use crate::args::{ColorChoice, DiffArgs};

pub fn run(args: &DiffArgs, color: ColorChoice) -> Result<ExitCode> {
    let normalizer = Normalizer::with_ignores(&args.ignores)?;
    let report = diff::diff(&args.a, &args.b, &normalizer).with_context(|| {
        format!(
            "comparing '{}' and '{}'",
            args.a.display(),
            args.b.display()
        )
    })?;
    super::emit(&report, args.format, color, report.is_same(), print)
}

fn print(out: &mut impl std::io::Write, report: &Report, color: bool) -> std::io::Result<()> {
    let paint = |code: &str, text: &str| super::paint(color, code, text);
    let name = |n: &Option<String>| n.clone().unwrap_or_else(|| "(not a command)".into());
    writeln!(out, "{}", paint("1", &format!("--- {}", report.a)))?;
    writeln!(out, "{}", paint("1", &format!("+++ {}", report.b)))?;
    let mut differing = 0;
    for c in &report.connections {
        let conn = |id: Option<u64>| id.map_or_else(|| "none".to_owned(), |c| c.to_string());
        writeln!(
            out,
            "{}",
            paint(
                "36",
                &format!("@@ conn {} / conn {} @@", conn(c.a), conn(c.b))
            )
        )?;
        for e in &c.entries {
            differing += usize::from(e.differs());
            match e {
                Entry::Same { name: n, .. } => writeln!(out, "  {}", name(n))?,
                Entry::OnlyA {
                    name: n,
                    line,
                    request,
                } => {
                    writeln!(
                        out,
                        "{}",
                        paint("31", &format!("- {} (line {line}) {request}", name(n)))
                    )?;
                }
                Entry::OnlyB {
                    name: n,
                    line,
                    request,
                } => {
                    writeln!(
                        out,
                        "{}",
                        paint("32", &format!("+ {} (line {line}) {request}", name(n)))
                    )?;
                }
                Entry::ReplyDiffers {
                    name: n,
                    lines,
                    differences,
                } => {
                    writeln!(
                        out,
                        "{}",
                        paint(
                            "33",
                            &format!(
                                "~ {} (lines {} / {}): reply differs",
                                name(n),
                                lines.0,
                                lines.1
                            )
                        )
                    )?;
                    for d in differences {
                        writeln!(
                            out,
                            "{}",
                            paint(
                                "31",
                                &format!("-     {}: {}", d.path, super::shown(d.left.as_ref()))
                            )
                        )?;
                        writeln!(
                            out,
                            "{}",
                            paint(
                                "32",
                                &format!("+     {}: {}", d.path, super::shown(d.right.as_ref()))
                            )
                        )?;
                    }
                }
                Entry::EventsDiffer {
                    name: n,
                    lines,
                    only_a,
                    only_b,
                } => {
                    writeln!(
                        out,
                        "{}",
                        paint(
                            "33",
                            &format!(
                                "~ {} (lines {} / {}): events after it differ",
                                name(n),
                                lines.0,
                                lines.1
                            )
                        )
                    )?;
                    for (e, count) in only_a {
                        writeln!(out, "{}", paint("31", &format!("-     {count} x {e}")))?;
                    }
                    for (e, count) in only_b {
                        writeln!(out, "{}", paint("32", &format!("+     {count} x {e}")))?;
                    }
                }
            }
        }
    }
    if differing == 0 {
        writeln!(out, "the same")
    } else {
        writeln!(out, "{differing} difference(s)")
    }
}
