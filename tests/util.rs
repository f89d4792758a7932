//! Test harness: real QEMU processes, the recording proxy run in-process through the library,
//! and a raw QMP client that keeps every byte it sent and received.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qmptap::addr::Addr;
use qmptap::capture::{Dir, Located, Msg, OnWriteError, Reader, Record, Sink};
use qmptap::proxy::{self, Config, Listener, Shutdown};
use qmptap::wire::{Decoder, Frame, Limits};
use serde_json::Value;

/// How long a test waits for anything before failing.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The QEMU binary the tests need. Missing is a failure, never a skip.
pub fn qemu_binary() -> &'static str {
    let bin = "qemu-system-x86_64";
    let found = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{bin} is required for these tests: apt-get install qemu-system-x86 (see .ci/run)"
    );
    bin
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("qmptap-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A QEMU process, killed on drop.
pub struct Qemu {
    pub child: Child,
    pub socket: PathBuf,
}

impl Qemu {
    /// `-machine none` with one QMP monitor at `dir/qmp.sock`.
    pub fn start(dir: &TempDir) -> Qemu {
        let socket = dir.path("qmp.sock");
        Qemu::start_with(
            &socket,
            &[
                "-qmp",
                &format!("unix:{},server=on,wait=off", socket.display()),
            ],
        )
    }

    /// `-machine none` with the given monitor arguments, whose socket is `socket`.
    pub fn start_with(socket: &Path, monitor: &[&str]) -> Qemu {
        let child = Command::new(qemu_binary())
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .args(monitor)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start QEMU");
        wait_for_monitor(socket);
        Qemu {
            child,
            socket: socket.to_owned(),
        }
    }

    pub fn addr(&self) -> Addr {
        Addr::Unix(self.socket.clone())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a QEMU (or qemu-storage-daemon) command, failing loudly when it is missing.
pub fn spawn(cmd: &mut Command) -> Killed {
    Killed(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a QEMU process (apt-get install qemu-system-x86)"),
    )
}

/// A source and a destination QEMU for a live migration (`pc`, TCG, 128 MiB, no devices):
/// the source's monitor at `dir/src.sock`, the destination's at `dir/dst.sock`, waiting for
/// the migration stream on `dir/mig.sock`. Both are killed when dropped.
pub struct MigrationPair {
    /// The destination (`-incoming`).
    pub dst: Killed,
    /// The source, alive as long as the pair.
    _src: Killed,
    /// The source's QMP socket.
    pub src_socket: PathBuf,
    /// Where the destination listens for the migration stream (`migrate`'s `uri` is
    /// `unix:` and this).
    pub mig_socket: PathBuf,
}

impl MigrationPair {
    pub fn start(dir: &TempDir) -> MigrationPair {
        let qmp = |name: &str| format!("unix:{},server=on,wait=off", dir.path(name).display());
        let base = [
            "-machine",
            "pc,accel=tcg",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
        ];
        let mig_socket = dir.path("mig.sock");
        let dst = spawn(
            Command::new(qemu_binary())
                .args(base)
                .args(["-qmp", &qmp("dst.sock")])
                .arg("-incoming")
                .arg(format!("unix:{}", mig_socket.display())),
        );
        let src = spawn(
            Command::new(qemu_binary())
                .args(base)
                .args(["-qmp", &qmp("src.sock")]),
        );
        let src_socket = dir.path("src.sock");
        wait_for_monitor(&src_socket);
        wait_for_socket(&mig_socket);
        MigrationPair {
            dst,
            _src: src,
            src_socket,
            mig_socket,
        }
    }

    /// `migrate`'s `uri`.
    pub fn uri(&self) -> String {
        format!("unix:{}", self.mig_socket.display())
    }
}

/// Waits until the QMP monitor at `path` answers and QEMU's main loop runs. A QEMU that is
/// still starting can send its vCPUs' RESUME event on a connection it has accepted but not
/// yet greeted (the monitor's I/O thread sets the connection up while the main thread starts
/// the vCPUs), so a session that must begin with the greeting waits for that moment to pass:
/// a reply proves it, as QEMU dispatches commands only from its main loop.
pub fn wait_for_monitor(path: &Path) {
    wait_for_socket(path);
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            // Bound but not yet listening.
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect {}: {e}", path.display()),
        }
    };
    let mut probe = Client::from_stream(stream);
    while probe.next_value().get("QMP").is_none() {}
    probe.execute(r#"{"execute": "qmp_capabilities"}"#);
    probe.execute(r#"{"execute": "query-version"}"#);
}

pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The recording proxy, run in-process on its own runtime, exactly as `qmptap record` runs it.
pub struct Proxy {
    pub listen: PathBuf,
    pub capture: PathBuf,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(dir: &TempDir, upstream: Addr) -> Proxy {
        Proxy::start_polling(dir, upstream, None)
    }

    /// The proxy polling as `--poll` says (e.g. `query-status@50ms`).
    pub fn start_polling(dir: &TempDir, upstream: Addr, poll: Option<&str>) -> Proxy {
        let listen = dir.path("proxy.sock");
        let capture = dir.path("capture.jsonl");
        let config = Config {
            listen: Addr::Unix(listen.clone()),
            upstream,
            socket_mode: 0o600,
            limits: Limits::QEMU,
            poll: poll.map(|p| p.parse().unwrap()),
            upstream_wait: std::time::Duration::ZERO,
        };
        let shutdown = Shutdown::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let out = std::fs::File::create(&capture).unwrap();
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = Listener::bind(&config.listen, config.socket_mode)
                    .await
                    .unwrap();
                let header = Record::Header(qmptap::capture::Header::new(
                    Some(config.listen.to_string()),
                    Some(config.upstream.to_string()),
                ));
                let sink = Sink::start(out, &header, OnWriteError::Continue).unwrap();
                ready_tx.send(()).unwrap();
                let handle = sink.handle();
                proxy::run(listener, &config, &handle, &s).await.unwrap();
                drop(handle);
                sink.finish().unwrap();
            });
        });
        ready_rx.recv_timeout(TIMEOUT).expect("proxy did not start");
        Proxy {
            listen,
            capture,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Stops accepting, waits for the connections to end (closing them after a while), and
    /// returns the capture's records.
    pub fn stop(mut self) -> Vec<Located> {
        self.shutdown.stop_accepting.cancel();
        let close_all = self.shutdown.close_all.clone();
        let thread = self.thread.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() {
            if Instant::now() > deadline {
                close_all.cancel();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().expect("proxy thread panicked");
        read_capture(&self.capture)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.stop_accepting.cancel();
        self.shutdown.close_all.cancel();
    }
}

pub fn read_capture(path: &Path) -> Vec<Located> {
    let mut reader = Reader::open(path).unwrap();
    let records = reader.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(reader.torn_tail(), None, "the capture must be complete");
    records
}

/// The messages of one connection in one direction, as its client sent or received them
/// (the proxy's own polls and their replies left out).
pub fn msgs(records: &[Located], conn: u64, dir: Dir) -> Vec<Msg> {
    records
        .iter()
        .filter_map(|l| match &l.record {
            Record::Msg(m) if m.conn == conn && m.dir == dir && !m.is_proxy() => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The proxy's own messages on one connection (`--poll`), both directions, in capture order.
pub fn proxy_msgs(records: &[Located], conn: u64) -> Vec<Msg> {
    records
        .iter()
        .filter_map(|l| match &l.record {
            Record::Msg(m) if m.conn == conn && m.is_proxy() => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn close_of(records: &[Located], conn: u64) -> qmptap::capture::Close {
    records
        .iter()
        .find_map(|l| match &l.record {
            Record::Close(c) if c.conn == conn => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no close record for conn {conn}"))
}

/// A raw QMP client over a UNIX socket that keeps every byte it sent and received.
pub struct Client {
    pub stream: UnixStream,
    pub sent: Vec<u8>,
    pub received: Vec<u8>,
    decoder: Decoder,
    frames: std::collections::VecDeque<Frame>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        Client::from_stream(
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display())),
        )
    }

    fn from_stream(stream: UnixStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            stream,
            sent: Vec::new(),
            received: Vec::new(),
            decoder: Decoder::new(),
            frames: std::collections::VecDeque::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.sent.extend_from_slice(bytes);
    }

    /// Sends `bytes` with `fd` attached to the same `sendmsg` (the first byte carries it).
    pub fn send_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let raw = [fd.as_raw_fd()];
        let iov = [std::io::IoSlice::new(bytes)];
        let n = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        self.sent.extend_from_slice(&bytes[..n]);
        if n < bytes.len() {
            self.send(&bytes[n..]);
        }
    }

    /// The next frame from the server; `None` at EOF.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Some(f);
            }
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("read: {e}"),
            };
            if n == 0 {
                return None;
            }
            self.received.extend_from_slice(&buf[..n]);
            let mut out = Vec::new();
            self.decoder.feed(&buf[..n], &mut out);
            self.frames.extend(out);
        }
    }

    pub fn next_value(&mut self) -> Value {
        let f = self.next_frame().expect("server closed the connection");
        serde_json::from_slice(&f.bytes).unwrap_or_else(|e| {
            panic!(
                "server sent non-JSON {:?}: {e}",
                String::from_utf8_lossy(&f.bytes)
            )
        })
    }

    /// Reads until a reply (return or error), returning it and the events before it.
    pub fn reply(&mut self) -> (Value, Vec<Value>) {
        let mut events = Vec::new();
        loop {
            let v = self.next_value();
            if v.get("return").is_some() || v.get("error").is_some() {
                return (v, events);
            }
            events.push(v);
        }
    }

    pub fn execute(&mut self, command: &str) -> Value {
        self.send(command.as_bytes());
        self.reply().0
    }

    /// Reads the greeting and negotiates capabilities.
    pub fn negotiate(&mut self) -> Value {
        let greeting = self.next_value();
        assert!(greeting.get("QMP").is_some(), "not a greeting: {greeting}");
        let r = self.execute(r#"{"execute": "qmp_capabilities"}"#);
        assert_eq!(r, serde_json::json!({"return": {}}));
        greeting
    }
}

/// Splits a byte stream into frames exactly as the proxy's decoder does.
pub fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    d.feed(bytes, &mut out);
    out.extend(d.finish());
    out
}

/// Checks that the capture holds, for connection `conn`, exactly what the client sent and
/// received, message for message and byte for byte, with sequence numbers in order.
pub fn assert_capture_matches(records: &[Located], conn: u64, client: &Client) {
    for (dir, bytes) in [(Dir::C2s, &client.sent), (Dir::S2c, &client.received)] {
        let expected = frames_of(bytes);
        let got = msgs(records, conn, dir);
        let got_bytes: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(&m.raw_bytes()).into_owned())
            .collect();
        let expected_bytes: Vec<String> = expected
            .iter()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .collect();
        assert_eq!(
            got_bytes, expected_bytes,
            "conn {conn} {dir:?}: the capture differs from what crossed the wire"
        );
    }
    let seqs: Vec<u64> = records
        .iter()
        .filter_map(|l| match &l.record {
            Record::Msg(m) if m.conn == conn => Some(m.seq),
            _ => None,
        })
        .collect();
    let expected: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "sequence numbers are consecutive in file order"
    );
}
