//! Listening sockets: UNIX with a safe mode and stale-socket handling, TCP on loopback by
//! default.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};
use tokio::net::{TcpListener, UnixListener};

use super::ProxyError;
use super::stream::Stream;
use crate::addr::Addr;

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A UNIX socket; the file is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. A UNIX socket file gets `mode` (and is never, even briefly, more open
    /// than that); a stale socket file left by a dead process is replaced; any other existing
    /// file, or a socket someone still listens on, is refused.
    pub async fn bind(addr: &Addr, mode: u32) -> Result<Listener, ProxyError> {
        match addr {
            Addr::Unix(path) => bind_unix(path, mode),
            Addr::Tcp { host, port } => TcpListener::bind((host.as_str(), *port))
                .await
                .map(Listener::Tcp)
                .map_err(|source| ProxyError::Listen {
                    addr: addr.to_string(),
                    source,
                }),
        }
    }

    /// The address actually bound (a TCP port of 0 becomes the chosen port).
    pub fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Unix(_, path) => Ok(Addr::Unix(path.clone())),
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Ok(Addr::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            }
        }
    }

    /// Accepts the next client as the relay takes it (blocking mode, fds).
    pub async fn accept(&self) -> io::Result<Stream> {
        Stream::from_accepted(self.accept_raw().await?)
    }

    /// Accepts the next client as a tokio stream (TCP with Nagle off: QMP messages are small
    /// and latency matters more than packet count).
    pub async fn accept_raw(&self) -> io::Result<Accepted> {
        match self {
            Listener::Unix(l, _) => Ok(Accepted::Unix(l.accept().await?.0)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Accepted::Tcp(s))
            }
        }
    }
}

/// A client just accepted, before the proxy or the mock server takes it over.
#[derive(Debug)]
pub enum Accepted {
    /// On a UNIX socket.
    Unix(tokio::net::UnixStream),
    /// On TCP.
    Tcp(tokio::net::TcpStream),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = fs::remove_file(path);
        }
    }
}

fn bind_unix(path: &Path, mode: u32) -> Result<Listener, ProxyError> {
    let listen_err = |source| ProxyError::Listen {
        addr: format!("unix:{}", path.display()),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(listen_err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                )));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            fs::remove_file(path).map_err(listen_err)?;
        }
        Ok(_) => {
            return Err(listen_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    // bind() creates the file with the process umask: tighten it for the duration so that the
    // socket is never reachable by others, then set the requested mode.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(listen_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(listen_err)?;
    Ok(Listener::Unix(listener, path.to_owned()))
}
