//! `qmptap wrap`: record a launched QEMU's monitors, then become QEMU.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, Result, bail};
use qmptap::addr::Addr;
use qmptap::launch;

use crate::args::WrapArgs;

/// How long a recorder keeps trying QEMU's moved monitor once a client has connected: QEMU
/// creates it early in its start-up, well within this. (libvirt waits for the greeting
/// without a limit, so the bound is the recorder's own.)
const UPSTREAM_WAIT_SECS: &str = "30";

pub fn run(a: &WrapArgs) -> Result<ExitCode> {
    let Some((qemu, args)) = a.qemu.split_first() else {
        bail!("no QEMU to start");
    };
    // Refuse to start QEMU rather than let it run unrecorded behind a recorder that cannot
    // write: the launcher reports the failure with this message.
    if !a.capture_dir.is_dir() {
        bail!(
            "the capture directory '{}' does not exist",
            a.capture_dir.display()
        );
    }
    let pid = std::process::id();
    let plan = if launch::daemonizes(args) {
        eprintln!("qmptap: QEMU is told to -daemonize; starting it unrecorded");
        launch::Plan {
            args: args.to_vec(),
            recorders: Vec::new(),
        }
    } else {
        let stem = launch::stem(args, pid);
        let sockets = a.socket_dir.as_ref().unwrap_or(&a.capture_dir);
        let plan = launch::plan(args, &a.capture_dir, sockets, &stem, 0o600)
            .context("cannot record QEMU's monitors")?;
        if plan.recorders.is_empty() {
            eprintln!(
                "qmptap: no QMP monitor listening on a socket on QEMU's command line; starting it unrecorded"
            );
        }
        plan
    };
    let me = std::env::current_exe().context("cannot find the qmptap binary")?;
    for r in &plan.recorders {
        let mut recorder = Command::new(&me);
        recorder
            .arg("record")
            .arg("--listen=fd:3")
            .arg(format!("--upstream=unix:{}", r.upstream.display()))
            .args(["--upstream-wait", UPSTREAM_WAIT_SECS])
            .arg(format!("--exit-with={pid}"))
            .arg("-o")
            .arg(&r.capture)
            .stdin(Stdio::null());
        if matches!(r.was, Addr::Unix(_)) {
            // Bound here, for good: gone with QEMU, as QEMU's own socket would be.
            recorder.arg("--remove-socket-file");
        }
        if let Some(poll) = &a.poll {
            recorder.arg(format!("--poll={poll}"));
        }
        launch::inherit_only(&mut recorder, &r.listen);
        launch::orphan(&mut recorder);
        recorder
            .spawn()
            .and_then(|mut middle| middle.wait())
            .with_context(|| format!("cannot start the recorder for {}", r.was))?;
        eprintln!(
            "qmptap: recording QEMU's monitor at {} into {}",
            r.was,
            r.capture.display()
        );
    }
    // QEMU must not hold the listening sockets: they are the recorders' now.
    drop(plan.recorders);
    let err = Command::new(qemu).args(&plan.args).exec();
    Err(err).with_context(|| format!("cannot start '{}'", qemu.to_string_lossy()))
}
