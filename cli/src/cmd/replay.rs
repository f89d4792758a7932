//! `qmptap replay`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use qmptap::normalize::Normalizer;
use qmptap::replay::client::{self, Options, Report};

use crate::args::{ColorChoice, ReplayArgs};

impl TryFrom<&ReplayArgs> for Options {
    type Error = anyhow::Error;

    fn try_from(a: &ReplayArgs) -> Result<Options> {
        if !a.timeout.is_finite() || a.timeout <= 0.0 {
            bail!(
                "invalid --timeout '{}': expected seconds, more than 0",
                a.timeout
            );
        }
        Ok(Options {
            target: a.target.parse().context("--target")?,
            conns: a.conns.clone(),
            pace: a.pace.parse()?,
            timeout: Duration::from_secs_f64(a.timeout),
            normalizer: Normalizer::with_ignores(&a.ignores)?,
            rewrites: a
                .rewrites
                .iter()
                .map(|r| match r.split_once('=') {
                    Some((from, to)) if !from.is_empty() => Ok((from.to_owned(), to.to_owned())),
                    _ => bail!("invalid --rewrite '{r}': expected FROM=TO with FROM not empty"),
                })
                .collect::<Result<_>>()?,
        })
    }
}

pub fn run(args: &ReplayArgs, color: ColorChoice) -> Result<ExitCode> {
    let options = Options::try_from(args)?;
    let report = client::replay(&args.capture, &options)
        .with_context(|| format!("replaying '{}'", args.capture.display()))?;
    super::emit(&report, args.format, color, report.is_clean(), print)
}

fn print(out: &mut impl std::io::Write, report: &Report, color: bool) -> std::io::Result<()> {
    let paint = |code: &str, text: &str| super::paint(color, code, text);
    writeln!(
        out,
        "replay of {} against {}",
        report.capture, report.target
    )?;
    for c in &report.connections {
        writeln!(
            out,
            "conn {}: {} sent; {} matched, {} differing, {} missing, {} unexpected",
            c.conn,
            c.sent,
            c.matched,
            c.differing.len(),
            c.missing.len(),
            c.unexpected.len()
        )?;
        let what = |kind: qmptap::wire::Kind, name: &Option<String>| {
            let name = name.as_deref().unwrap_or("?");
            match kind {
                qmptap::wire::Kind::Return | qmptap::wire::Kind::Error => {
                    format!("reply to {name}")
                }
                qmptap::wire::Kind::Event => format!("event {name}"),
                other => format!("{other:?}").to_lowercase(),
            }
        };
        for d in &c.differing {
            writeln!(
                out,
                "  {} line {} seq {} {}:",
                paint("33", "~"),
                d.line,
                d.seq,
                what(d.kind, &d.name)
            )?;
            for diff in &d.differences {
                writeln!(
                    out,
                    "      {}: {} -> {}",
                    diff.path,
                    paint("31", &super::shown(diff.left.as_ref())),
                    paint("32", &super::shown(diff.right.as_ref()))
                )?;
            }
        }
        for m in &c.missing {
            writeln!(
                out,
                "  {} line {} seq {} {} never came",
                paint("31", "-"),
                m.line,
                m.seq,
                what(m.kind, &m.name)
            )?;
        }
        for u in &c.unexpected {
            writeln!(
                out,
                "  {} unexpected {}: {}",
                paint("32", "+"),
                what(u.kind, &u.name),
                u.json
            )?;
        }
        for e in &c.explained {
            writeln!(
                out,
                "  = {} event {} explained by rule {} ({})",
                e.change, e.name, e.rule, e.why
            )?;
        }
    }
    let bad: usize = report
        .connections
        .iter()
        .map(|c| c.differing.len() + c.missing.len() + c.unexpected.len())
        .sum();
    if bad == 0 {
        writeln!(out, "everything matched")
    } else {
        writeln!(out, "{bad} difference(s)")
    }
}
