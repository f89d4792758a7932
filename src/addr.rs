//! Socket addresses as users write them: `unix:PATH`, `tcp:HOST:PORT`, or `fd:N` for a
//! listening socket inherited from the process that started qmptap.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to listen or connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A UNIX stream socket at this path (the only kind that carries file descriptors).
    Unix(PathBuf),
    /// A TCP endpoint, `host:port`; `host` may be a name, an IPv4 address or `[v6]`.
    Tcp {
        /// Host name or address (without brackets).
        host: String,
        /// Port number.
        port: u16,
    },
    /// A listening socket (UNIX or TCP) inherited as descriptor `N`, the way libvirt hands
    /// QEMU its monitor (`-chardev socket,fd=N,server=on`) and systemd activates sockets.
    /// Only for listening: nothing can connect to a descriptor.
    Fd(std::os::fd::RawFd),
}

impl Addr {
    /// The error for connecting to an address that can only be listened on.
    pub(crate) fn not_connectable(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot connect to '{self}': an inherited descriptor can only be listened on"),
        )
    }
}

/// A string that is not an address qmptap understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address '{input}': {why} (expected unix:PATH, tcp:HOST:PORT or fd:N)")]
pub struct AddrError {
    input: String,
    why: &'static str,
}

impl FromStr for Addr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| AddrError {
            input: s.to_owned(),
            why,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("the path is empty"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("no port"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| err("the port is not a number from 0 to 65535"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            // An empty host means the loopback address: qmptap never listens on every
            // interface unless told so explicitly (tcp:0.0.0.0:PORT).
            let host = if host.is_empty() { "127.0.0.1" } else { host };
            return Ok(Addr::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        if let Some(fd) = s.strip_prefix("fd:") {
            return match fd.parse() {
                Ok(fd) if fd >= 0 => Ok(Addr::Fd(fd)),
                _ => Err(err("the descriptor is not a number from 0")),
            };
        }
        Err(err("unknown scheme"))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Addr::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_tcp() {
        assert_eq!(
            "unix:/run/q.sock".parse(),
            Ok(Addr::Unix("/run/q.sock".into()))
        );
        assert_eq!(
            "tcp:localhost:4444".parse(),
            Ok(Addr::Tcp {
                host: "localhost".into(),
                port: 4444
            })
        );
        assert_eq!(
            "tcp::4444".parse(),
            Ok(Addr::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            })
        );
        assert_eq!(
            "tcp:[::1]:4444".parse(),
            Ok(Addr::Tcp {
                host: "::1".into(),
                port: 4444
            })
        );
        assert_eq!(
            "tcp:[::1]:4444".parse::<Addr>().map(|a| a.to_string()),
            Ok("tcp:[::1]:4444".into())
        );
        assert_eq!("fd:3".parse(), Ok(Addr::Fd(3)));
        assert_eq!(Addr::Fd(3).to_string(), "fd:3");
    }

    #[test]
    fn rejects_with_the_bad_value_quoted() {
        let e = "udp:1".parse::<Addr>().unwrap_err().to_string();
        assert!(e.contains("'udp:1'") && e.contains("unix:PATH"), "{e}");
        assert!("tcp:host:99999".parse::<Addr>().is_err());
        assert!("unix:".parse::<Addr>().is_err());
        assert!("fd:-1".parse::<Addr>().is_err());
        assert!("fd:x".parse::<Addr>().is_err());
    }
}
