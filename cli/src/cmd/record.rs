//! `qmptap record`.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use qmptap::addr::Addr;
use qmptap::capture::{Header, OnWriteError, Record, Sink};
use qmptap::proxy::{self, Config, Listener};

use crate::args::{self, RecordArgs};

struct Validated {
    config: Config,
    policy: OnWriteError,
    grace: Duration,
}

impl TryFrom<&RecordArgs> for Validated {
    type Error = anyhow::Error;

    fn try_from(a: &RecordArgs) -> Result<Validated> {
        let mut config =
            super::proxy_config(&a.listen, &a.upstream, &a.socket_mode, a.poll.as_deref())?;
        config.upstream_wait = seconds("--upstream-wait", a.upstream_wait)?;
        if a.remove_socket_file && !matches!(config.listen, Addr::Fd(_)) {
            bail!(
                "--remove-socket-file applies to --listen fd:N only (qmptap removes the sockets it binds)"
            );
        }
        let policy = match a.on_write_error {
            args::OnWriteError::Continue => OnWriteError::Continue,
            args::OnWriteError::Fail => OnWriteError::Fail,
        };
        Ok(Validated {
            config,
            policy,
            grace: seconds("--grace", a.grace)?,
        })
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        bail!("invalid {flag} '{value}': expected seconds, 0 or more");
    }
    Ok(Duration::from_secs_f64(value))
}

pub fn run(args: &RecordArgs) -> Result<ExitCode> {
    let v = Validated::try_from(args)?;
    let out: Box<dyn Write + Send> = if args.output.as_os_str() == "-" {
        Box::new(io::stdout())
    } else {
        let file = super::create_capture(&args.output, args.force)?;
        Box::new(BufWriter::with_capacity(1 << 16, file))
    };
    let result = record(args, &v, out);
    if result.is_err() && args.output.as_os_str() != "-" {
        // Nothing was recorded (not even the header): leave no empty file behind to block
        // the next attempt.
        if std::fs::metadata(&args.output).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&args.output);
        }
    }
    result
}

fn record(args: &RecordArgs, v: &Validated, out: Box<dyn Write + Send>) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut listener = Listener::bind(&v.config.listen, v.config.socket_mode).await?;
        if args.remove_socket_file {
            listener
                .remove_file_when_dropped()
                .context("--remove-socket-file")?;
        }
        let bound = listener.local_addr()?;
        let header = Record::Header(Header::new(
            Some(bound.to_string()),
            Some(v.config.upstream.to_string()),
        ));
        let sink = Sink::start(out, &header, v.policy)
            .with_context(|| format!("cannot write the capture '{}'", args.output.display()))?;
        let shutdown = proxy::shutdown_on_signals(v.grace)?;
        if let Some(pid) = args.exit_with {
            proxy::shutdown_when_exits(pid, &shutdown).context("--exit-with")?;
        }
        // Scripts wait for this line before connecting.
        eprintln!(
            "qmptap: recording {bound} -> {} into {}",
            v.config.upstream,
            args.output.display()
        );
        let handle = sink.handle();
        let result = proxy::run(listener, &v.config, &handle, &shutdown).await;
        drop(handle);
        let flushed = sink.finish();
        let summary = result?;
        flushed
            .with_context(|| format!("cannot finish the capture '{}'", args.output.display()))?;
        tracing::info!(connections = summary.connections, "capture complete");
        eprintln!(
            "qmptap: {} connection(s) recorded into {}",
            summary.connections,
            args.output.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}
