//! QEMU command lines: finding the QMP monitors a launcher (libvirt, a script) gives QEMU, and
//! moving them to private sockets so that a proxy can listen where clients connect.
//!
//! libvirt hands QEMU its monitor as an already listening socket,
//! `-chardev socket,id=charmonitor,fd=N,server=on,wait=off` with
//! `-mon chardev=charmonitor,id=monitor,mode=control`; scripts mostly write
//! `-qmp unix:PATH,server=on,wait=off`. Both are found, in QEMU's own option syntax
//! (`-opt` or `--opt`, comma-separated `key=value` with `,,` for a literal comma, bare `server`
//! and `nowait` flags of older command lines).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::addr::Addr;
use crate::proxy::{Listener, ProxyError};

/// Longest UNIX socket path the kernel takes (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// Where a launched QEMU's monitors go and where they are recorded.
#[derive(Debug)]
pub struct Plan {
    /// QEMU's arguments, with each monitor moved to its private socket.
    pub args: Vec<OsString>,
    /// One recorder per monitor.
    pub recorders: Vec<Recorder>,
}

/// A monitor to record: the listening socket clients reach it on, QEMU's private socket
/// behind it, and the capture.
#[derive(Debug)]
pub struct Recorder {
    /// Where clients connected before (shown to people).
    pub was: Addr,
    /// The listening socket, inherited from the launcher or bound here.
    pub listen: OwnedFd,
    /// QEMU's monitor, moved here.
    pub upstream: PathBuf,
    /// The capture file.
    pub capture: PathBuf,
}

/// Why a launch cannot be recorded.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A monitor definition qmptap does not understand.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A monitor's address cannot be listened on.
    #[error(transparent)]
    Listen(#[from] ProxyError),
    /// A private socket path would be too long for the kernel.
    #[error("the socket path '{0}' is longer than 107 bytes; choose a shorter socket directory")]
    PathTooLong(PathBuf),
}

/// Plans the recording of QEMU's monitors: takes over each listening socket (an inherited
/// `fd=N` as it is, a path or port bound now, mode `socket_mode`), and names QEMU's private
/// socket `DIR/STEM.qmp.sock` in `socket_dir` and the capture `STEM.jsonl` in `capture_dir`,
/// STEM being `GUEST-TIME-PID` (`-monN` added when there are several monitors).
pub fn plan(
    args: &[OsString],
    capture_dir: &Path,
    socket_dir: &Path,
    stem: &str,
    socket_mode: u32,
) -> Result<Plan, PlanError> {
    let found = monitors(args)?;
    let mut moved = args.to_vec();
    let mut recorders = Vec::with_capacity(found.len());
    for (n, monitor) in found.iter().enumerate() {
        let stem = if found.len() > 1 {
            format!("{stem}-mon{}", n + 1)
        } else {
            stem.to_owned()
        };
        let upstream = socket_dir.join(format!("{stem}.qmp.sock"));
        if upstream.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PlanError::PathTooLong(upstream));
        }
        let listen = Listener::bind_fd(&monitor.listen, socket_mode)?;
        moved = move_monitor(&moved, monitor, &upstream);
        recorders.push(Recorder {
            was: monitor.listen.clone(),
            listen,
            upstream,
            capture: capture_dir.join(format!("{stem}.jsonl")),
        });
    }
    Ok(Plan {
        args: moved,
        recorders,
    })
}

/// A file-name-safe stem for a launch now: the guest name (or `qemu`), the UTC time and the
/// pid.
pub fn stem(args: &[OsString], pid: u32) -> String {
    let name: String = guest_name(args)
        .unwrap_or_else(|| "qemu".to_owned())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{name}-{}-{pid}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// Makes `command` start with `listen` as its descriptor 3 and no other inherited
/// descriptor than its standard ones (a launcher's tap devices or migration pipes must not
/// be held open by the recorder). Keep `listen` open until the command has been spawned.
pub fn inherit_only(command: &mut Command, listen: &OwnedFd) {
    let fd = listen.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // system calls (dup2, fcntl, close_range, close), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) < 0 {
                for other in 4..1024 {
                    libc::close(other);
                }
            }
            Ok(())
        });
    }
}

/// Makes `command` run as an orphan: the spawned process forks once more and exits at
/// once, and the command runs in the grandchild, whose parent is then the init process (or
/// the nearest subreaper). A launcher that becomes QEMU by `exec` must not leave its
/// recorders as QEMU's children: QEMU never reaps them, so one that ended first would stay a
/// zombie until QEMU exits. Errors of the final `exec` still reach `spawn`. The caller must
/// `wait` for the returned child, the short-lived middle process.
pub fn orphan(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec in the child of a single-threaded
    // process, and calls only fork and _exit, allocating nothing.
    unsafe {
        command.pre_exec(|| match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => Ok(()),
            _ => libc::_exit(0),
        });
    }
}

/// A QMP monitor served on a listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// Index in the argument list of the value that defines the socket (what follows
    /// `-chardev` or `-qmp`).
    pub arg: usize,
    /// Where clients reach the monitor: `fd:N` (inherited), `unix:PATH` or `tcp:HOST:PORT`.
    pub listen: Addr,
}

/// A monitor definition qmptap understands only in part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {arg} ('{text}'): {why}")]
pub struct LaunchError {
    arg: usize,
    text: String,
    why: &'static str,
}

/// The QMP monitors of a QEMU command line (`args` without the program name) that listen on
/// a socket, in order: `-chardev socket,...,server=on` used by `-mon ...,mode=control`, and
/// `-qmp` / `-qmp-pretty` with a `unix:` or `tcp:` server address. Monitors QEMU connects
/// out from (client mode), on stdio or other backends are not listed.
pub fn monitors(args: &[OsString]) -> Result<Vec<Monitor>, LaunchError> {
    let mut sockets = Vec::new(); // (chardev id, index of its definition)
    let mut qmp_chardevs = Vec::new(); // chardev ids of QMP -mon options
    let mut found = Vec::new();
    let mut i = 0;
    while i + 1 < args.len() {
        let (opt, value) = (option_name(&args[i]), &args[i + 1]);
        match opt {
            Some("chardev") => {
                let opts = keyval(value.as_bytes(), "backend");
                if get(&opts, "backend") == Some("socket") && is_server(&opts) {
                    if let Some(id) = get(&opts, "id") {
                        sockets.push((id.to_owned(), i + 1));
                    }
                }
            }
            Some("mon") => {
                let opts = keyval(value.as_bytes(), "chardev");
                if get(&opts, "mode") == Some("control") {
                    if let Some(id) = get(&opts, "chardev") {
                        qmp_chardevs.push(id.to_owned());
                    }
                }
            }
            Some("qmp" | "qmp-pretty") => {
                let opts = keyval(value.as_bytes(), "addr");
                if is_server(&opts) {
                    let addr = get(&opts, "addr").unwrap_or_default();
                    if addr.starts_with("unix:") || addr.starts_with("tcp:") {
                        let listen = addr.parse().map_err(|_| LaunchError {
                            arg: i + 1,
                            text: value.to_string_lossy().into_owned(),
                            why: "not an address qmptap can listen on",
                        })?;
                        found.push(Monitor { arg: i + 1, listen });
                    }
                }
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    for id in qmp_chardevs {
        let Some(&(_, arg)) = sockets.iter().find(|(s, _)| *s == id) else {
            continue;
        };
        let opts = keyval(args[arg].as_bytes(), "backend");
        let err = |why| LaunchError {
            arg,
            text: args[arg].to_string_lossy().into_owned(),
            why,
        };
        let listen = if let Some(fd) = get(&opts, "fd") {
            Addr::Fd(fd.parse().map_err(|_| err("fd= is not a number"))?)
        } else if let Some(path) = get(&opts, "path") {
            Addr::Unix(PathBuf::from(path))
        } else if let (Some(host), Some(port)) = (get(&opts, "host"), get(&opts, "port")) {
            Addr::Tcp {
                host: if host.is_empty() { "0.0.0.0" } else { host }.to_owned(),
                port: port
                    .parse()
                    .map_err(|_| err("port= is not a port number"))?,
            }
        } else {
            return Err(err(
                "a socket chardev without fd=, path= or host= and port=",
            ));
        };
        found.push(Monitor { arg, listen });
    }
    found.sort_by_key(|m| m.arg);
    Ok(found)
}

/// `args` with `monitor` moved to a UNIX socket at `path`, every other option kept: with
/// `wait` (QEMU's default for a server), QEMU still waits for its first client before it runs,
/// which is now the recorder, connecting when its own first client does.
pub fn move_monitor(args: &[OsString], monitor: &Monitor, path: &Path) -> Vec<OsString> {
    let mut out = args.to_vec();
    let old = args[monitor.arg].as_bytes();
    let mut new = Vec::with_capacity(old.len() + path.as_os_str().len());
    let is_qmp = monitor.arg > 0
        && matches!(
            option_name(&args[monitor.arg - 1]),
            Some("qmp" | "qmp-pretty")
        );
    let mut parts = split(old).into_iter();
    if is_qmp {
        // The first part is the address itself.
        parts.next();
        new.extend_from_slice(b"unix:");
        new.extend_from_slice(&escape(path.as_os_str().as_bytes()));
    }
    let mut placed = is_qmp;
    for part in parts {
        let key = part.split(|&b| b == b'=').next().unwrap_or_default();
        let key = std::str::from_utf8(key).unwrap_or_default();
        match key {
            "fd" | "path" | "host" | "port" | "to" | "ipv4" | "ipv6" | "numeric" => {
                if !placed {
                    push_part(&mut new, b"path=");
                    new.extend_from_slice(&escape(path.as_os_str().as_bytes()));
                    placed = true;
                }
            }
            // An empty part would join its neighbours into one `,,` (a literal comma).
            "" => {}
            _ => push_part(&mut new, &part),
        }
    }
    out[monitor.arg] = OsString::from_vec(new);
    out
}

/// The guest name given with `-name guest=NAME,...` or `-name NAME`.
pub fn guest_name(args: &[OsString]) -> Option<String> {
    args.windows(2).find_map(|w| {
        (option_name(&w[0]) == Some("name"))
            .then(|| get(&keyval(w[1].as_bytes(), "guest"), "guest").map(str::to_owned))
            .flatten()
    })
}

/// Whether QEMU is told to detach (`-daemonize`): it then forks, and the launcher's process
/// is not QEMU's for long.
pub fn daemonizes(args: &[OsString]) -> bool {
    args.iter().any(|a| option_name(a) == Some("daemonize"))
}

/// `-opt` or `--opt` as `opt`; anything else (values, the program) as `None`.
fn option_name(arg: &OsStr) -> Option<&str> {
    let s = arg.to_str()?;
    s.strip_prefix("--")
        .or_else(|| s.strip_prefix('-'))
        .filter(|o| !o.is_empty())
}

/// QEMU's comma-separated options: `,,` is a comma; a part without `=` is the implied key
/// for the first part (`socket`, `unix:...`), or a bare flag (`server`, `nowait`).
fn keyval(value: &[u8], implied: &str) -> Vec<(String, String)> {
    split(value)
        .into_iter()
        .enumerate()
        .map(|(n, part)| {
            let part = String::from_utf8_lossy(&part).into_owned();
            match part.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None if n == 0 => (implied.to_owned(), part),
                None => (part, "on".to_owned()),
            }
        })
        .collect()
}

fn split(value: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut i = 0;
    while i < value.len() {
        match (value[i], value.get(i + 1)) {
            (b',', Some(b',')) => {
                part.push(b',');
                i += 1;
            }
            (b',', _) => parts.push(std::mem::take(&mut part)),
            (b, _) => part.push(b),
        }
        i += 1;
    }
    parts.push(part);
    parts
}

fn escape(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|&b| if b == b',' { vec![b',', b','] } else { vec![b] })
        .collect()
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(&escape(part));
}

fn get<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn is_server(opts: &[(String, String)]) -> bool {
    matches!(get(opts, "server"), Some("on" | "yes" | "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_libvirts_inherited_monitor_and_moves_it() {
        let a = args(&[
            "-name",
            "guest=vm1,debug-threads=on",
            "-chardev",
            "socket,id=charmonitor,fd=23,server=on,wait=off",
            "-mon",
            "chardev=charmonitor,id=monitor,mode=control",
            "-chardev",
            "socket,id=charserial0,path=/tmp/serial,server=on",
        ]);
        let found = monitors(&a).unwrap();
        assert_eq!(
            found,
            vec![Monitor {
                arg: 3,
                listen: Addr::Fd(23)
            }]
        );
        let moved = move_monitor(&a, &found[0], Path::new("/run/x,y.sock"));
        assert_eq!(
            moved[3],
            "socket,id=charmonitor,path=/run/x,,y.sock,server=on,wait=off"
        );
        assert_eq!(moved[7], a[7], "other chardevs stay");
        assert_eq!(guest_name(&a).as_deref(), Some("vm1"));
    }

    #[test]
    fn finds_qmp_shorthands_old_flags_and_tcp() {
        let a = args(&[
            "-qmp",
            "unix:/run/q.sock,server,nowait",
            "--qmp-pretty",
            "tcp::4444,server=on",
            "-qmp",
            "unix:/run/client.sock",
            "-chardev",
            "socket,id=m,host=,port=5555,server=on",
            "-mon",
            "m,mode=control",
            "-name",
            "plain",
            "-daemonize",
        ]);
        let found = monitors(&a).unwrap();
        let listens: Vec<String> = found.iter().map(|m| m.listen.to_string()).collect();
        assert_eq!(
            listens,
            ["unix:/run/q.sock", "tcp:127.0.0.1:4444", "tcp:0.0.0.0:5555"]
        );
        assert_eq!(
            move_monitor(&a, &found[0], Path::new("/p"))[1],
            "unix:/p,server,nowait"
        );
        // Found by the fuzzer: an empty part must not turn the next separator into `,,`.
        let trailing = args(&["-qmp", "unix:/q,server,"]);
        let at = monitors(&trailing).unwrap();
        let moved = move_monitor(&trailing, &at[0], Path::new("/p"));
        assert_eq!(moved[1], "unix:/p,server");
        assert_eq!(monitors(&moved).unwrap().len(), 1);
        assert_eq!(
            move_monitor(&a, &found[2], Path::new("/p"))[7],
            "socket,id=m,path=/p,server=on"
        );
        assert_eq!(guest_name(&a).as_deref(), Some("plain"));
        assert!(daemonizes(&a));
    }

    #[test]
    fn a_readline_monitor_or_a_client_socket_is_not_a_qmp_server() {
        let a = args(&[
            "-chardev",
            "socket,id=hmp,path=/h,server=on",
            "-mon",
            "chardev=hmp",
            "-chardev",
            "socket,id=out,path=/o",
            "-mon",
            "chardev=out,mode=control",
        ]);
        assert_eq!(monitors(&a).unwrap(), vec![]);
    }

    #[test]
    fn a_bad_fd_is_an_error_naming_the_argument() {
        let a = args(&[
            "-chardev",
            "socket,id=c,fd=x,server=on",
            "-mon",
            "chardev=c,mode=control",
        ]);
        let e = monitors(&a).unwrap_err().to_string();
        assert!(e.contains("argument 1") && e.contains("fd="), "{e}");
    }
}
