//! The recording proxy: accept clients, connect each to the upstream monitor, relay bytes
//! (and file descriptors) unchanged in both directions, record every frame.
//!
//! What this module must never do: alter, reorder, delay on the disk, or drop a byte on the
//! wire. Recording is best effort behind relaying, and says so (gap records) when it fails.

mod listener;
pub mod poll;
mod relay;
pub mod stream;

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listener::{Accepted, Listener, SocketFile};
pub use poll::{Poll, PollError};
pub use relay::CHUNK;
pub use stream::Stream;

use crate::addr::Addr;
use crate::capture::{Close, Open, Record, Side, SinkHandle, Time};
use crate::wire::Limits;

/// How long connections get to finish after the process [`shutdown_when_exits`] watches has
/// exited.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How long to wait for the upstream monitor to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not run. Each variant says which side failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be set up (client side).
    #[error("cannot listen on '{addr}'")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// Accepting clients failed for good (client side).
    #[error("accepting clients on '{addr}' failed")]
    Accept {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The capture could not be written and the policy says stop (internal).
    #[error("stopped because the capture cannot be written: {0}")]
    CaptureFailed(String),
}

/// What the proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect.
    pub listen: Addr,
    /// The monitor to relay to.
    pub upstream: Addr,
    /// Mode of a listening UNIX socket file.
    pub socket_mode: u32,
    /// Decoder limits (QEMU's by default).
    pub limits: Limits,
    /// Query commands the proxy sends by itself on each connection once the client has
    /// negotiated, keeping the replies from the client (see [`poll`]); `None` relays only.
    pub poll: Option<Poll>,
    /// How long to keep retrying an upstream that does not exist or refuses connections yet
    /// (a launcher that starts the proxy just before QEMU); zero fails at once.
    pub upstream_wait: Duration,
}

/// When and how to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting clients; connections may finish.
    pub stop_accepting: CancellationToken,
    /// Close every connection now.
    pub close_all: CancellationToken,
}

/// Counts reported when the proxy stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections accepted.
    pub connections: u64,
}

/// Runs the proxy on an already bound listener until `shutdown.stop_accepting` fires and
/// every connection has ended (or `shutdown.close_all` closed them).
pub async fn run(
    listener: Listener,
    config: &Config,
    sink: &SinkHandle,
    shutdown: &Shutdown,
) -> Result<Summary, ProxyError> {
    // Under `OnWriteError::Fail` a capture that cannot be written stops everything.
    let watcher = {
        let (sink, shutdown) = (sink.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if let Some(why) = sink.failed() {
                    shutdown.stop_accepting.cancel();
                    shutdown.close_all.cancel();
                    return Some(why);
                }
            }
        })
    };
    let accepted = accept_clients(listener, shutdown, false, |conn, client| {
        serve(
            conn,
            client,
            config.clone(),
            sink.clone(),
            shutdown.close_all.clone(),
        )
    })
    .await;
    watcher.abort();
    if let Ok(Some(why)) = watcher.await {
        return Err(ProxyError::CaptureFailed(why));
    }
    accepted
        .map(|connections| Summary { connections })
        .map_err(|source| ProxyError::Accept {
            addr: config.listen.to_string(),
            source,
        })
}

/// Accepts clients until `shutdown.stop_accepting` fires (or after the first one when
/// `once`), running `handle(number, client)` for each as its own task, numbered from 1, and
/// retrying transient failures (out of descriptors, aborted connections). Then it drops the
/// listener, so the socket file goes away, and waits until the connections have ended or
/// `shutdown.close_all` has ended them. Returns how many clients were accepted.
pub async fn accept_clients<F, Fut>(
    listener: Listener,
    shutdown: &Shutdown,
    once: bool,
    mut handle: F,
) -> io::Result<u64>
where
    F: FnMut(u64, Accepted) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    let mut accepted = 0;
    let result = loop {
        tokio::select! {
            () = shutdown.stop_accepting.cancelled() => break Ok(()),
            client = listener.accept_raw() => match client {
                Ok(client) => {
                    accepted += 1;
                    tasks.spawn(handle(accepted, client));
                    if once {
                        break Ok(());
                    }
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(cause = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => break Err(e),
            }
        }
    };
    drop(listener);
    tasks.close();
    tokio::select! {
        () = tasks.wait() => {}
        () = shutdown.close_all.cancelled() => tasks.wait().await,
    }
    result.map(|()| accepted)
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}

async fn serve(
    conn: u64,
    client: Accepted,
    config: Config,
    sink: SinkHandle,
    stop: CancellationToken,
) {
    let client = match Stream::from_accepted(client) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(conn, cause = %e, "cannot take over an accepted client");
            return;
        }
    };
    let peer = client.peer().clone();
    tracing::info!(conn, %peer, "client connected");
    sink.record(Record::Open(Open {
        conn,
        t: Time::now(),
        peer,
    }));
    let upstream = tokio::select! {
        r = connect_upstream(&config.upstream, config.upstream_wait) => match r {
            Ok(upstream) => upstream,
            Err(why) => return refuse(conn, &sink, &config.upstream, &why),
        },
        () = stop.cancelled() => return refuse(conn, &sink, &config.upstream, "shutdown before connecting"),
    };
    let relay = relay::Relay::new(
        conn,
        client,
        upstream,
        sink,
        config.limits,
        config.poll.as_ref(),
    );
    let closer = relay.closer();
    let mut job = tokio::task::spawn_blocking(move || relay.run());
    tokio::select! {
        _ = &mut job => {}
        () = stop.cancelled() => {
            closer.close("shutdown");
            let _ = job.await;
        }
    }
}

/// Connects to the upstream monitor, each attempt bounded by [`CONNECT_TIMEOUT`], retrying
/// for up to `wait` while the socket does not exist yet or refuses connections.
async fn connect_upstream(addr: &Addr, wait: Duration) -> Result<Stream, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, Stream::connect(addr)).await {
            Ok(Ok(upstream)) => return Ok(upstream),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".to_owned()),
        }
    }
}

/// The upstream could not be reached: the client's connection is closed (by dropping it)
/// and the capture says why.
fn refuse(conn: u64, sink: &SinkHandle, upstream: &Addr, why: &str) {
    tracing::error!(conn, %upstream, cause = why, "upstream unreachable; closing the client");
    sink.record(Record::Close(Close {
        conn,
        t: Time::now(),
        by: Side::Upstream,
        reason: format!("upstream unreachable: {why}"),
        c2s_bytes: 0,
        s2c_bytes: 0,
    }));
}

/// Turns SIGTERM and SIGINT into a [`Shutdown`]: SIGTERM stops accepting and gives
/// connections `grace` to finish before closing them; SIGINT closes them at once; a second
/// signal of either kind closes at once.
pub fn shutdown_on_signals(grace: Duration) -> io::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = Shutdown::default();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        let graceful = tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => false,
        };
        tracing::info!(graceful, "signal received; no longer accepting clients");
        s.stop_accepting.cancel();
        if graceful {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        s.close_all.cancel();
    });
    Ok(shutdown)
}

/// Stops once process `pid` has exited: for a proxy started beside the QEMU it serves, which
/// has nothing left to relay when QEMU is gone. It stops accepting at once; connections end as
/// QEMU's side reaches end of file (so QEMU's last messages are still relayed and recorded),
/// and any left after [`EXIT_GRACE`] are closed. Watches a pidfd, so it sees the exit even
/// while the process waits, a zombie, to be reaped.
pub fn shutdown_when_exits(pid: i32, shutdown: &Shutdown) -> io::Result<()> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::other(format!(
            "cannot watch process {pid}: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
    // the AsyncFd's whole life.
    let watched = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = watched.readable().await;
        tracing::info!(pid, "the watched process exited; closing");
        s.stop_accepting.cancel();
        tokio::time::sleep(EXIT_GRACE).await;
        s.close_all.cancel();
    });
    Ok(())
}
