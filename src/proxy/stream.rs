//! Connected sockets with file descriptor passing on UNIX sockets.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

use crate::addr::Addr;
use crate::capture::Peer;

/// The most descriptors one `recvmsg` can carry on Linux (`SCM_MAX_FD`). QEMU keeps at most
/// 16, but the proxy must not be the one that drops any.
pub const MAX_FDS: usize = 253;

/// A connected stream socket.
#[derive(Debug)]
pub enum Stream {
    /// A UNIX stream socket: carries file descriptors.
    Unix(UnixStream),
    /// A TCP connection.
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `addr`.
    pub async fn connect(addr: &Addr) -> io::Result<Stream> {
        match addr {
            Addr::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
            Addr::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
        }
    }

    /// Whether file descriptors can be sent on this stream.
    pub fn carries_fds(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Who is on the other end: `SO_PEERCRED` for UNIX sockets, the address for TCP.
    pub fn peer(&self) -> Peer {
        match self {
            Stream::Unix(s) => match s.peer_cred() {
                Ok(cred) => Peer {
                    pid: cred.pid(),
                    uid: Some(cred.uid()),
                    gid: Some(cred.gid()),
                    addr: None,
                },
                Err(_) => Peer::default(),
            },
            Stream::Tcp(s) => Peer {
                addr: s.peer_addr().ok().map(|a| a.to_string()),
                ..Peer::default()
            },
        }
    }

    /// Receives bytes and any file descriptors that came with them. `Ok((0, _))` is EOF.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        match self {
            Stream::Unix(s) => loop {
                s.readable().await?;
                match s.try_io(Interest::READABLE, || recv_with_fds(s.as_raw_fd(), buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other,
                }
            },
            Stream::Tcp(s) => loop {
                s.readable().await?;
                match s.try_read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other.map(|n| (n, Vec::new())),
                }
            },
        }
    }

    /// Sends some of `buf`, with `fds` attached to these bytes (UNIX sockets only; the caller
    /// checks [`Stream::carries_fds`]). Returns how many bytes were sent.
    pub async fn send(&self, buf: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => loop {
                s.writable().await?;
                match s.try_io(Interest::WRITABLE, || {
                    send_with_fds(s.as_raw_fd(), buf, fds)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other,
                }
            },
            Stream::Tcp(s) => loop {
                s.writable().await?;
                match s.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other,
                }
            },
        }
    }

    /// Half-closes: the peer reads EOF, the other direction goes on.
    pub fn shutdown_write(&self) -> io::Result<()> {
        let fd = match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        };
        match socket::shutdown(fd, socket::Shutdown::Write) {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = socket::recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for raw_fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for us
                // (SCM_RIGHTS); nothing else owns it, so wrapping it transfers ownership.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw_fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        tracing::warn!(
            received = fds.len(),
            "a peer sent more file descriptors than one message can hold; the rest were discarded by the kernel"
        );
    }
    Ok((msg.bytes, fds))
}

fn send_with_fds(fd: RawFd, buf: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    let iov = [IoSlice::new(buf)];
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    Ok(socket::sendmsg::<()>(
        fd,
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?)
}
