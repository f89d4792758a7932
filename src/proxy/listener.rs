//! Listening sockets: UNIX with a safe mode and stale-socket handling, TCP on loopback by
//! default, or a listening socket inherited from the process that started qmptap.

use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};
use nix::sys::stat::{Mode, umask};
use tokio::net::{TcpListener, UnixListener};

use super::ProxyError;
use super::stream::Stream;
use crate::addr::Addr;

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A UNIX socket; a file qmptap created is removed when the listener is dropped (an
    /// inherited socket's file belongs to whoever created it).
    Unix(UnixListener, Option<SocketFile>),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. A UNIX socket file gets `mode` (and is never, even briefly, more open
    /// than that); a stale socket file left by a dead process is replaced; any other existing
    /// file, or a socket someone still listens on, is refused. `fd:N` takes over descriptor
    /// `N`, which must be a listening UNIX or TCP socket (`mode` does not apply).
    pub async fn bind(addr: &Addr, mode: u32) -> Result<Listener, ProxyError> {
        match addr {
            Addr::Unix(path) => bind_unix(path, mode),
            Addr::Fd(fd) => adopt(*fd).map_err(|source| ProxyError::Listen {
                addr: addr.to_string(),
                source,
            }),
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
            Listener::Unix(_, Some(file)) => Ok(Addr::Unix(file.0.clone())),
            Listener::Unix(l, None) => {
                let a = l.local_addr()?;
                a.as_pathname()
                    .map(|p| Addr::Unix(p.to_owned()))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::Unsupported,
                            "the inherited socket has no path",
                        )
                    })
            }
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

impl Listener {
    /// Binds `addr` as [`Listener::bind`] does, outside any async runtime, and returns the
    /// socket as a plain descriptor for another process to serve (`fd:N`).
    pub fn bind_fd(addr: &Addr, mode: u32) -> Result<OwnedFd, ProxyError> {
        let listen_err = |source| ProxyError::Listen {
            addr: addr.to_string(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(listen_err)?;
        let _entered = runtime.enter();
        runtime
            .block_on(Listener::bind(addr, mode))?
            .into_fd()
            .map_err(listen_err)
    }

    /// Makes the listener remove its UNIX socket's file when dropped, as it does for a
    /// socket it bound: for an inherited socket (`fd:N`) handed over for good. Nothing to do
    /// for TCP, or for a socket that has no file (abstract or unnamed).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn remove_file_when_dropped(&mut self) -> io::Result<()> {
        if let Listener::Unix(l, file @ None) = self {
            if let Some(path) = l.local_addr()?.as_pathname() {
                *file = Some(SocketFile(path.to_owned()));
            }
        }
        Ok(())
    }

    /// Hands the socket over as a plain blocking descriptor, for another process to serve
    /// (`fd:N`); a UNIX socket file stays in place.
    pub fn into_fd(self) -> io::Result<OwnedFd> {
        match self {
            Listener::Unix(l, file) => {
                if let Some(file) = file {
                    file.keep();
                }
                let std = l.into_std()?;
                std.set_nonblocking(false)?;
                Ok(std.into())
            }
            Listener::Tcp(l) => {
                let std = l.into_std()?;
                std.set_nonblocking(false)?;
                Ok(std.into())
            }
        }
    }
}

/// The file of a UNIX socket qmptap bound, removed when dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl SocketFile {
    /// Leaves the file in place.
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
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
    Ok(Listener::Unix(listener, Some(SocketFile(path.to_owned()))))
}

/// Descriptors already taken over, so that `fd:N` given twice cannot close one twice.
static ADOPTED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Takes over inherited descriptor `fd` after checking that it is a listening UNIX or TCP
/// socket, and keeps it from being inherited further.
fn adopt(fd: RawFd) -> io::Result<Listener> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
    let mut adopted = ADOPTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if adopted.contains(&fd) {
        return Err(invalid("this descriptor is already in use as a listener"));
    }
    // Probe without owning: F_GETFD fails with EBADF on a descriptor that is not open.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|_| invalid("no such open descriptor (was it passed to qmptap?)"))?;
    // Checked on a borrow, so that a descriptor refused is handed back untouched.
    // SAFETY: `fd` is open (checked above), and nothing in qmptap owns or closes it while
    // this borrow lives.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| match e {
        Errno::ENOTSOCK => invalid("the descriptor is not a socket"),
        e => io::Error::from(e),
    })?;
    if !listening {
        return Err(invalid("the socket is not listening"));
    }
    let family = getsockname::<SockaddrStorage>(fd)
        .map_err(io::Error::from)?
        .family();
    let unix = match family {
        Some(AddressFamily::Unix) => true,
        Some(AddressFamily::Inet | AddressFamily::Inet6) => false,
        _ => return Err(invalid("the socket is neither UNIX nor TCP")),
    };
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: `fd` is an open listening socket, and `ADOPTED` guarantees this is its only
    // owner within qmptap; the process that started qmptap handed it over for this purpose.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = if unix {
        let std = std::os::unix::net::UnixListener::from(owned);
        std.set_nonblocking(true)?;
        Listener::Unix(UnixListener::from_std(std)?, None)
    } else {
        let std = std::net::TcpListener::from(owned);
        std.set_nonblocking(true)?;
        Listener::Tcp(TcpListener::from_std(std)?)
    };
    adopted.push(fd);
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd as _, IntoRawFd as _};

    use super::*;

    /// A descriptor refused is handed back open and untouched; a listening one is taken over.
    #[test]
    fn adopts_only_listening_unix_or_tcp_sockets() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = adopt(a.as_raw_fd()).unwrap_err();
        assert_eq!(e.to_string(), "the socket is not listening");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = adopt(udp.as_raw_fd()).unwrap_err();
        assert_eq!(e.to_string(), "the socket is not listening");
        let file = fs::File::open("/dev/null").unwrap();
        let e = adopt(file.as_raw_fd()).unwrap_err();
        assert_eq!(e.to_string(), "the descriptor is not a socket");
        for fd in [a.as_raw_fd(), udp.as_raw_fd(), file.as_raw_fd()] {
            let open = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD);
            assert!(open.is_ok(), "fd {fd} was closed");
        }

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let fd = tcp.into_raw_fd();
        let listener = adopt(fd).unwrap();
        assert_eq!(
            listener.local_addr().unwrap(),
            Addr::Tcp {
                host: "127.0.0.1".into(),
                port
            }
        );
        assert_eq!(
            adopt(fd).unwrap_err().to_string(),
            "this descriptor is already in use as a listener"
        );
    }
}
