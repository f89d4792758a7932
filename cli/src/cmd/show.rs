//! `qmptap show`.

use std::io::{BufWriter, IsTerminal as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use qmptap::capture::Reader;
use qmptap::transcript::{self, Filter, ShowFormat, Style};

use crate::args::{ColorChoice, Format, ShowArgs};

/// Default cut for long messages on a terminal: a 200 KB schema reply is not for reading.
const TTY_TRUNCATE: usize = 400;

pub fn run(args: &ShowArgs, color: ColorChoice) -> Result<ExitCode> {
    let filter = Filter::try_from(&args.filter)?;
    let reader = Reader::open(&args.capture)?;
    let tty = std::io::stdout().is_terminal();
    let style = Style {
        color: super::use_color(color),
        truncate: args.truncate.unwrap_or(if tty { TTY_TRUNCATE } else { 0 }),
    };
    let format = match args.format {
        Format::Text => ShowFormat::Text,
        Format::Json => ShowFormat::Json,
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    transcript::show(reader, &filter, format, style, &mut out)
        .with_context(|| format!("showing '{}'", args.capture.display()))?;
    Ok(ExitCode::SUCCESS)
}
