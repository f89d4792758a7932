//! The recording proxy: accept clients, connect each to the upstream monitor, relay bytes
//! (and file descriptors) unchanged in both directions, record every frame.
//!
//! What this module must never do: alter, reorder, delay on the disk, or drop a byte on the
//! wire. Recording is best effort behind relaying, and says so (gap records) when it fails.

mod listener;
mod relay;
pub mod stream;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listener::Listener;
pub use relay::CHUNK;
pub use stream::Stream;

use crate::addr::Addr;
use crate::capture::{Close, Open, Record, Side, SinkHandle, Time};
use crate::wire::Limits;

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
    let tasks = TaskTracker::new();
    let next_conn = Arc::new(AtomicU64::new(1));
    let listen_name = config.listen.to_string();
    let mut failure_check = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            () = shutdown.stop_accepting.cancelled() => break Ok(()),
            _ = failure_check.tick() => {
                if let Some(why) = sink.failed() {
                    shutdown.close_all.cancel();
                    break Err(ProxyError::CaptureFailed(why));
                }
            }
            accepted = listener.accept() => match accepted {
                Ok(client) => {
                    let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(serve(conn, client, config.clone(), sink.clone(), shutdown.close_all.clone()));
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(cause = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(source) => break Err(ProxyError::Accept { addr: listen_name.clone(), source }),
            }
        }
    };
    // Stop accepting: the socket file goes away now, connections go on.
    drop(listener);
    tasks.close();
    tokio::select! {
        () = tasks.wait() => {}
        () = shutdown.close_all.cancelled() => tasks.wait().await,
    }
    result.map(|()| Summary {
        connections: next_conn.load(Ordering::Relaxed) - 1,
    })
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
    client: Stream,
    config: Config,
    sink: SinkHandle,
    stop: CancellationToken,
) {
    let peer = client.peer().clone();
    tracing::info!(conn, %peer, "client connected");
    sink.record(Record::Open(Open {
        conn,
        t: Time::now(),
        peer,
    }));
    let upstream = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, Stream::connect(&config.upstream)) => match r {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => return refuse(conn, &sink, &config.upstream, &e.to_string()),
            Err(_) => return refuse(conn, &sink, &config.upstream, "timed out"),
        },
        () = stop.cancelled() => return refuse(conn, &sink, &config.upstream, "shutdown before connecting"),
    };
    let relay = relay::Relay::new(conn, client, upstream, sink, config.limits);
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
