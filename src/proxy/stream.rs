//! Connected sockets for the relay threads: blocking reads, non-blocking writes, and file
//! descriptor passing on UNIX sockets.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::addr::Addr;
use crate::capture::Peer;

/// The most descriptors one `recvmsg` can carry on Linux (`SCM_MAX_FD`). QEMU keeps at most
/// 16, but the proxy must not be the one that drops any.
pub const MAX_FDS: usize = 253;

/// A connected stream socket in blocking mode, shared by the two relay threads of a
/// connection (one reads it, the other writes it).
#[derive(Debug)]
pub struct Stream {
    fd: OwnedFd,
    unix: bool,
    peer: Peer,
}

impl Stream {
    /// Connects to `addr`.
    pub async fn connect(addr: &Addr) -> io::Result<Stream> {
        match addr {
            Addr::Unix(path) => Stream::from_unix(tokio::net::UnixStream::connect(path).await?),
            Addr::Tcp { host, port } => {
                Stream::from_tcp(tokio::net::TcpStream::connect((host.as_str(), *port)).await?)
            }
            Addr::Fd(_) => Err(addr.not_connectable()),
        }
    }

    /// Takes over a client just accepted.
    pub fn from_accepted(client: super::Accepted) -> io::Result<Stream> {
        match client {
            super::Accepted::Unix(s) => Stream::from_unix(s),
            super::Accepted::Tcp(s) => Stream::from_tcp(s),
        }
    }

    /// Takes over an accepted or connected UNIX stream.
    pub fn from_unix(stream: tokio::net::UnixStream) -> io::Result<Stream> {
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                pid: cred.pid(),
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                addr: None,
            },
            Err(_) => Peer::default(),
        };
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok(Stream {
            fd: std.into(),
            unix: true,
            peer,
        })
    }

    /// Takes over an accepted or connected TCP stream.
    pub fn from_tcp(stream: tokio::net::TcpStream) -> io::Result<Stream> {
        stream.set_nodelay(true)?;
        let peer = Peer {
            addr: stream.peer_addr().ok().map(|a| a.to_string()),
            ..Peer::default()
        };
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok(Stream {
            fd: std.into(),
            unix: false,
            peer,
        })
    }

    /// Whether file descriptors can be sent on this stream.
    pub fn carries_fds(&self) -> bool {
        self.unix
    }

    /// Who is on the other end: `SO_PEERCRED` for UNIX sockets, the address for TCP.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Waits for bytes and any file descriptors that came with them. `Ok((0, _))` is EOF.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let mut iov = [IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let msg = socket::recvmsg::<()>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
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
                "a peer sent more file descriptors than one message can hold; the kernel discarded the rest"
            );
        }
        Ok((msg.bytes, fds))
    }

    /// Sends what the socket takes now of `buf`, with `fds` attached to those bytes, without
    /// waiting (`WouldBlock` when it takes nothing). Only UNIX sockets carry fds; the caller
    /// checks [`Stream::carries_fds`].
    pub fn try_send(&self, buf: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
        let iov = [IoSlice::new(buf)];
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        Ok(socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            flags,
            None,
        )?)
    }

    /// Waits until the socket takes bytes again (or has failed: the next send says how).
    pub fn wait_writable(&self) -> io::Result<()> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
        loop {
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Half-closes: the peer reads EOF, the other direction goes on.
    pub fn shutdown_write(&self) {
        self.shutdown(socket::Shutdown::Write);
    }

    /// Closes both directions now: a thread blocked reading this socket wakes up with EOF.
    pub fn shutdown_both(&self) {
        self.shutdown(socket::Shutdown::Both);
    }

    fn shutdown(&self, how: socket::Shutdown) {
        // ENOTCONN: the peer is already gone, which is what was wanted.
        let _ = socket::shutdown(self.fd.as_raw_fd(), how);
    }
}
