//! `qmptap serve`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use qmptap::addr::Addr;
use qmptap::normalize::Normalizer;
use qmptap::proxy::{self, Listener};
use qmptap::replay::server::{self, OnMiss, Script, ServeOptions, ServeReport};

use super::EXIT_FINDINGS;
use crate::args::{self, Format, ServeArgs};

/// How long connections get to finish after SIGTERM.
const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

struct Validated {
    capture: PathBuf,
    listen: Addr,
    socket_mode: u32,
    normalizer: Normalizer,
    options: ServeOptions,
}

impl TryFrom<&ServeArgs> for Validated {
    type Error = anyhow::Error;

    fn try_from(a: &ServeArgs) -> Result<Validated> {
        let listen: Addr = a.listen.parse().context("--listen")?;
        let socket_mode = super::socket_mode(&a.socket_mode)?;
        let normalizer = Normalizer::with_ignores(&a.ignores)?;
        if a.strict_order && a.reuse {
            bail!(
                "--strict-order and --reuse cannot be combined: strict order uses each recorded interaction once, in order"
            );
        }
        Ok(Validated {
            capture: a.capture.clone(),
            listen,
            socket_mode,
            normalizer,
            options: ServeOptions {
                strict_order: a.strict_order,
                on_miss: match a.on_miss {
                    args::OnMiss::Error => OnMiss::Error,
                    args::OnMiss::Close => OnMiss::Close,
                },
                pace: a.pace.parse()?,
                reuse: a.reuse,
                once: a.once,
            },
        })
    }
}

pub fn run(args: &ServeArgs) -> Result<ExitCode> {
    let v = Validated::try_from(args)?;
    let script = Arc::new(Script::load(&v.capture, v.normalizer)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let listener = Listener::bind(&v.listen, v.socket_mode).await?;
        let bound = listener.local_addr()?;
        let shutdown = proxy::shutdown_on_signals(GRACE)?;
        // Scripts and tests wait for this line before connecting.
        eprintln!("qmptap: serving {} on {bound}", v.capture.display());
        anyhow::Ok(server::serve(listener, script.clone(), v.options, shutdown).await?)
    })?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Format::Text => write_text(&mut out, &v.capture.display().to_string(), &report)?,
    }
    out.flush()?;
    let incomplete = report.misses > 0 || !report.unused.is_empty();
    Ok(if args.require_all && incomplete {
        ExitCode::from(EXIT_FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_text(out: &mut impl std::io::Write, capture: &str, r: &ServeReport) -> Result<()> {
    writeln!(
        out,
        "{capture}: {} connection(s); {} of {} recorded interaction(s) used; {} command(s) answered from the recording ({} reused), {} by protocol rules, {} miss(es)",
        r.connections,
        r.recorded - r.unused.len() as u64,
        r.recorded,
        r.answered,
        r.reused,
        r.by_rule,
        r.misses
    )?;
    if !r.missed.is_empty() {
        writeln!(out, "  missed ({})", r.misses)?;
        for m in &r.missed {
            writeln!(
                out,
                "    conn {} {}: nearest recorded: {}",
                m.conn,
                m.json,
                m.nearest.as_deref().unwrap_or("none")
            )?;
        }
        if r.misses > r.missed.len() as u64 {
            writeln!(out, "    ... and {} more", r.misses - r.missed.len() as u64)?;
        }
    }
    if !r.unused.is_empty() {
        writeln!(out, "  unused ({})", r.unused.len())?;
        for u in &r.unused {
            writeln!(
                out,
                "    line {} conn {} seq {} {}",
                u.line, u.conn, u.seq, u.command
            )?;
        }
    }
    Ok(())
}
