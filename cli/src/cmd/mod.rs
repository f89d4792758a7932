//! Turns parsed arguments into library calls.

mod analyse;
mod check;
mod diff;
mod record;
mod replay;
mod schema;
mod serve;
mod show;
mod tui;
mod wrap;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use qmptap::transcript::Filter;

use crate::args::{Cli, ColorChoice, Command, FilterArgs};

/// Exit status when the command found what it looks for (findings, differences).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit status when the command could not run.
pub const EXIT_ERROR: u8 = 2;

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Record(args) => record::run(&args),
        Command::Wrap(args) => wrap::run(&args),
        Command::Show(args) => show::run(&args, cli.global.color),
        Command::Check(args) => check::run(&args, cli.global.color),
        Command::Schema(cmd) => schema::run(&cmd),
        Command::Replay(args) => replay::run(&args, cli.global.color),
        Command::Serve(args) => serve::run(&args),
        Command::Diff(args) => diff::run(&args, cli.global.color),
        Command::Stats(args) => analyse::stats(&args, &cli.global),
        Command::Jobs(args) => analyse::jobs(&args, &cli.global),
        Command::Migration(args) => analyse::migration(&args, &cli.global),
        Command::Export(args) => analyse::export(&args),
        Command::Tui(args) => tui::run(&args, cli.global.color),
    }
}

/// Logging for a full-screen command: to a file, never to the terminal.
pub fn init_logging_to_file(verbose: u8, path: &std::path::Path) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let default = if verbose == 0 { "info" } else { "debug" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the log '{}': {e}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .init();
    Ok(())
}

pub fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}

/// Whether an error is only the reader of our output going away (`qmptap show | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || cause.to_string().contains("Broken pipe")
    })
}

/// The capture file `-o FILE` of `record` and `tui` (private, refused if it exists unless
/// `--force`).
pub fn create_capture(path: &std::path::Path, force: bool) -> Result<std::fs::File> {
    qmptap::capture::create(path, force).with_context(|| {
        format!(
            "cannot create the capture '{}' (use --force to replace an existing one)",
            path.display()
        )
    })
}

/// The proxy's settings from `--listen`, `--upstream`, `--socket-mode` and `--poll`, as
/// `record` and `tui` take them.
pub fn proxy_config(
    listen: &str,
    upstream: &str,
    mode: &str,
    poll: Option<&str>,
) -> Result<qmptap::proxy::Config> {
    let listen: qmptap::addr::Addr = listen.parse().context("--listen")?;
    let upstream: qmptap::addr::Addr = upstream.parse().context("--upstream")?;
    if let qmptap::addr::Addr::Fd(_) = upstream {
        anyhow::bail!(
            "--upstream '{upstream}': qmptap connects to the monitor; fd:N is only for --listen"
        );
    }
    if listen == upstream {
        anyhow::bail!("--listen and --upstream are the same address '{listen}'");
    }
    let poll = poll
        .map(str::parse::<qmptap::proxy::Poll>)
        .transpose()
        .context("--poll")?;
    Ok(qmptap::proxy::Config {
        listen,
        upstream,
        socket_mode: socket_mode(mode)?,
        limits: qmptap::wire::Limits::QEMU,
        poll,
        upstream_wait: std::time::Duration::ZERO,
    })
}

/// A `--socket-mode` value: octal permission bits.
pub fn socket_mode(text: &str) -> Result<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| anyhow::anyhow!("invalid --socket-mode '{text}': expected octal permission bits such as 0600 or 0660"))
}

/// Writes a report as one JSON line or as text for people, and returns the exit status:
/// success when `clean`, else "findings".
pub fn emit<R: serde::Serialize>(
    report: &R,
    format: crate::args::Format,
    color: ColorChoice,
    clean: bool,
    text: impl FnOnce(&mut std::io::StdoutLock<'static>, &R, bool) -> std::io::Result<()>,
) -> Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match format {
        crate::args::Format::Json => {
            serde_json::to_writer(&mut out, report)?;
            writeln!(out)?;
        }
        crate::args::Format::Text => text(&mut out, report, use_color(color))?,
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FINDINGS)
    })
}

/// A JSON value for people, or `(absent)`.
pub fn shown(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "(absent)".to_owned(), ToString::to_string)
}

/// `text` in the ANSI colour `code` when `color` is on.
pub fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Colour on stdout: as asked, or on a terminal unless NO_COLOR is set (no-color.org).
pub fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

impl TryFrom<&FilterArgs> for Filter {
    type Error = anyhow::Error;

    fn try_from(args: &FilterArgs) -> Result<Filter> {
        let dir = args
            .dir
            .as_deref()
            .map(Filter::parse_dir)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--dir: {e}"))?;
        let kinds = args
            .kinds
            .iter()
            .map(|k| Filter::parse_kind(k).map_err(|e| anyhow::anyhow!("--kind: {e}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Filter {
            conns: args.conns.clone(),
            dir,
            names: args.names.clone(),
            kinds,
        })
    }
}
