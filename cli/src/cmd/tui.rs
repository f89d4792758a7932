//! `qmptap tui`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use qmptap_tui::Source;

use crate::args::{ColorChoice, TuiArgs};

pub fn run(args: &TuiArgs, color: ColorChoice) -> Result<ExitCode> {
    let source = if let Some(path) = &args.replay {
        if !args.speed.is_finite() || args.speed <= 0.0 {
            bail!(
                "invalid --speed '{}': expected a positive number",
                args.speed
            );
        }
        Source::Replay {
            path: path.clone(),
            speed: args.speed,
        }
    } else if let (Some(listen), Some(upstream)) = (&args.listen, &args.upstream) {
        let config =
            super::proxy_config(listen, upstream, &args.socket_mode, args.poll.as_deref())?;
        // Created before the screen is taken over, so a refusal reads as a plain error.
        let output = args
            .output
            .as_ref()
            .map(|path| super::create_capture(path, args.force))
            .transpose()?;
        Source::Live {
            config,
            output: output.map(Arc::new),
        }
    } else if let Some(path) = &args.capture {
        // Fail before the screen is taken over when the capture cannot be read.
        std::fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
        if args.follow {
            Source::Follow(path.clone())
        } else {
            Source::File(path.clone())
        }
    } else {
        bail!("give a CAPTURE, --replay CAPTURE or --listen ADDR --upstream ADDR");
    };
    qmptap_tui::run(&source, tui_color(color))?;
    Ok(ExitCode::SUCCESS)
}

/// Colour on the terminal unless NO_COLOR is set or --color never.
fn tui_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}
