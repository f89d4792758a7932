#![allow(clippy::unwrap_used)] // a test that cannot go on should panic
//! The `qmptap` binary as a user runs it: help output (snapshots), and `record`/`show`
//! end to end against a real QEMU with signals, socket modes and stdout streaming.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qmptap");

#[test]
fn help_and_show_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("qmptap-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu(socket: &Path) -> Killed {
    qemu_with(socket, &[])
}

/// QEMU (`-machine none`) with `extra` options and its monitor at `socket`.
fn qemu_with(socket: &Path, extra: &[&str]) -> Killed {
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-display", "none"])
        .args(extra)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is required: apt-get install qemu-system-x86 (see .ci/run)");
    wait_for_monitor(socket);
    Killed(child)
}

/// Polls `done` every 10 ms until it holds, failing with `what` after 10 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the QEMU monitor at `socket` answers a command. A QEMU still starting can send
/// its RESUME event on a just-accepted connection before greeting it; a command's reply
/// proves the main loop, and so the vCPUs' start, has come and gone, and every later session
/// begins with the greeting.
fn wait_for_monitor(socket: &Path) {
    wait_until("QEMU did not listen on its socket", || {
        UnixStream::connect(socket).is_ok()
    });
    let probe = String::from_utf8(session(socket)).unwrap();
    assert!(
        probe.contains(r#""status""#),
        "QEMU did not answer: {probe}"
    );
}

/// Starts `qmptap record` and waits for its "recording" line.
fn record(args: &[&str], stdout: Stdio) -> Child {
    start("record", args, stdout, "qmptap: recording ")
}

/// Starts `qmptap SUBCOMMAND ARGS` and waits for the line that says it is listening.
fn start(subcommand: &str, args: &[&str], stdout: Stdio, ready: &str) -> Child {
    let mut child = Command::new(BIN)
        .arg(subcommand)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with(ready), "unexpected: {line}");
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    child
}

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args(["-s", sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// One short QMP session: greeting, negotiation, query-status, and back.
fn session(path: &Path) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-status\"}")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "qmptap did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn types(capture: &str) -> Vec<String> {
    capture
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn record_stops_cleanly_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let dir = TempDir::new(&format!("sig{sig}"));
        let qmp = dir.path("qmp.sock");
        let _qemu = qemu(&qmp);
        let listen = dir.path("proxy.sock");
        let capture = dir.path("out.jsonl");
        let mut child = record(
            &[
                "--listen",
                &format!("unix:{}", listen.display()),
                "--upstream",
                &format!("unix:{}", qmp.display()),
                "-o",
                capture.to_str().unwrap(),
            ],
            Stdio::null(),
        );
        let mode = std::fs::metadata(&listen).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the listening socket is private by default");
        let reply = session(&listen);
        assert!(String::from_utf8_lossy(&reply).contains("\"running\""));
        // A client still connected when the signal comes is closed (SIGINT) or given the
        // grace period (SIGTERM) and recorded either way.
        let _idle = UnixStream::connect(&listen).unwrap();
        wait_until("the idle client was not accepted", || {
            std::fs::read_to_string(&capture)
                .unwrap()
                .matches(r#""type":"open""#)
                .count()
                == 2
        });
        signal(&child, sig);
        let status = wait_exit(&mut child);
        assert!(status.success(), "SIG{sig}: {status}");
        assert!(!listen.exists(), "the socket file is removed");
        let mode = std::fs::metadata(&capture).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the capture is private");
        let text = std::fs::read_to_string(&capture).unwrap();
        let t = types(&text);
        assert_eq!(t.first().map(String::as_str), Some("header"));
        assert_eq!(t.iter().filter(|x| *x == "open").count(), 2, "{text}");
        assert_eq!(t.iter().filter(|x| *x == "close").count(), 2, "{text}");
        assert!(text.ends_with('\n'));
    }
}

#[test]
fn record_streams_to_stdout_and_show_reads_stdin() {
    let dir = TempDir::new("stdout");
    let qmp = dir.path("qmp.sock");
    let _qemu = qemu(&qmp);
    let listen = dir.path("proxy.sock");
    let mut child = record(
        &[
            "--listen",
            &format!("unix:{}", listen.display()),
            "--upstream",
            &format!("unix:{}", qmp.display()),
            "-o",
            "-",
            "--socket-mode",
            "0660",
        ],
        Stdio::piped(),
    );
    assert_eq!(
        std::fs::metadata(&listen).unwrap().permissions().mode() & 0o777,
        0o660
    );
    session(&listen);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, "TERM");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(wait_exit(&mut child).success());
    assert_eq!(
        types(&out),
        ["header", "open", "msg", "msg", "msg", "msg", "msg", "close"]
    );
    let mut show = Command::new(BIN)
        .args(["show", "-", "--name", "query-status", "--color", "never"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    show.stdin
        .take()
        .unwrap()
        .write_all(out.as_bytes())
        .unwrap();
    let shown = show.wait_with_output().unwrap();
    assert!(shown.status.success());
    let text = String::from_utf8(shown.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(r#"-> {"execute":"query-status"}"#),
        "{text}"
    );
    assert!(
        lines[1].contains(r#"<- {"return": {"#) && lines[1].ends_with(" ms]"),
        "{text}"
    );
}

/// The capture wrap wrote into `dir`.
fn only_capture(dir: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

/// The exact bytes of each `msg` record of one direction, in order, as text.
fn texts(records: &[qmptap::capture::Record], dir: qmptap::capture::Dir) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            qmptap::capture::Record::Msg(m) if m.dir == dir => {
                Some(String::from_utf8(m.raw_bytes()).unwrap())
            }
            _ => None,
        })
        .collect()
}

/// Starts `qmptap wrap --capture-dir DIR -- qemu-system-x86_64 -machine none -S ... EXTRA`
/// and waits until it says it records the monitor at an address starting with `at`.
///
/// `-S`, as libvirt does: the tests' clients connect while QEMU starts, and a QEMU that
/// starts its vCPUs then can send their RESUME event before the greeting.
fn wrap(dir: &Path, extra: &[&str], at: &str) -> Child {
    let mut args = vec!["--capture-dir", dir.to_str().unwrap(), "--"];
    args.extend([
        "qemu-system-x86_64",
        "-machine",
        "none",
        "-S",
        "-nodefaults",
    ]);
    args.extend(["-display", "none"]);
    args.extend(extra);
    start(
        "wrap",
        &args,
        Stdio::null(),
        &format!("qmptap: recording QEMU's monitor at {at}"),
    )
}

#[test]
fn wrap_records_the_qemu_it_becomes_and_stops_with_it() {
    let dir = TempDir::new("wrap");
    let monitor = dir.path("mon.sock");
    let mut child = wrap(
        &dir.0,
        &[
            "-name",
            "guest=t1,debug-threads=on",
            "-qmp",
            &format!("unix:{},server=on,wait=off", monitor.display()),
        ],
        "unix:",
    );
    // The pid the launcher knows is QEMU's: wrap became QEMU.
    let exe = Path::new("/proc").join(child.id().to_string()).join("exe");
    wait_until("wrap did not exec QEMU", || {
        std::fs::read_link(&exe).is_ok_and(|p| p.ends_with("qemu-system-x86_64"))
    });
    // The recorder is not QEMU's child: QEMU would never reap it.
    let recorder = recorder_of(child.id());
    assert_ne!(parent_of(recorder), child.id());
    // The client connects where it always did, possibly before QEMU listens behind it.
    let mut s = UnixStream::connect(&monitor).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent =
        "{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-status\"}{\"execute\":\"quit\"}";
    s.write_all(sent.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(wait_exit(&mut child).success());
    // The recorder stops with QEMU and leaves a complete capture.
    let capture = only_capture(&dir.0);
    let name = capture.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("t1-") && name.ends_with(&format!("-{}.jsonl", child.id())),
        "{name}"
    );
    let records = finished_capture(&capture);
    assert_eq!(texts(&records, qmptap::capture::Dir::C2s).concat(), sent);
    let received = String::from_utf8(got).unwrap();
    let s2c = texts(&records, qmptap::capture::Dir::S2c);
    assert_eq!(
        s2c.len(),
        5,
        "greeting, two returns, SHUTDOWN, quit's return: {s2c:?}"
    );
    assert_eq!(
        received,
        s2c.iter().map(|t| t.clone() + "\r\n").collect::<String>()
    );
    assert!(
        !dir.path(&name.replace(".jsonl", ".qmp.sock")).exists(),
        "QEMU removed its socket"
    );
    // Gone, or a zombie if whatever adopted it (init, a subreaper) has not reaped it yet.
    wait_until("the recorder did not exit with QEMU", || {
        std::fs::read_to_string(format!("/proc/{recorder}/stat")).map_or(true, |stat| {
            stat[stat.rfind(')').unwrap()..].starts_with(") Z")
        })
    });
    assert!(
        !monitor.exists(),
        "the socket wrap bound is gone with QEMU, as QEMU's own would be"
    );
}

/// The parent of process `pid`, from /proc.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name, which is in parentheses and may contain anything: state, ppid.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The pid of the `qmptap record --exit-with=PID` started for QEMU `pid`.
fn recorder_of(pid: u32) -> u32 {
    let wanted = format!("--exit-with={pid}");
    let mut found = None;
    wait_until("no recorder runs for QEMU", || {
        found = std::fs::read_dir("/proc").unwrap().find_map(|e| {
            let p: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|a| a == wanted.as_bytes())
                .then_some(p)
        });
        found.is_some()
    });
    found.unwrap()
}

/// A script's TCP monitor: wrap binds the port itself and hands the recorder the TCP socket
/// as `fd:3`.
#[test]
fn wrap_records_a_tcp_monitor_through_an_inherited_tcp_socket() {
    let dir = TempDir::new("wrap-tcp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = wrap(
        &dir.0,
        &["-qmp", &format!("tcp:127.0.0.1:{port},server=on,wait=off")],
        &format!("tcp:127.0.0.1:{port}"),
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = "{\"execute\":\"qmp_capabilities\"}{\"execute\":\"quit\"}";
    s.write_all(sent.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(wait_exit(&mut child).success());
    let capture = only_capture(&dir.0);
    let records = finished_capture(&capture);
    let header = qmptap::capture::Reader::open(&capture)
        .unwrap()
        .header()
        .clone();
    assert_eq!(
        header.listen.as_deref(),
        Some(format!("tcp:127.0.0.1:{port}").as_str())
    );
    assert_eq!(texts(&records, qmptap::capture::Dir::C2s).concat(), sent);
    let s2c = texts(&records, qmptap::capture::Dir::S2c);
    assert_eq!(
        String::from_utf8(got).unwrap(),
        s2c.iter().map(|t| t.clone() + "\r\n").collect::<String>()
    );
}

#[test]
fn record_refuses_what_it_must_not_touch() {
    let dir = TempDir::new("refuse");
    let qmp = dir.path("qmp.sock");
    let _qemu = qemu(&qmp);
    // An existing regular file where the socket should go is never replaced.
    let file = dir.path("precious");
    std::fs::write(&file, b"data").unwrap();
    let out = Command::new(BIN)
        .args([
            "record",
            "--listen",
            &format!("unix:{}", file.display()),
            "--upstream",
            &format!("unix:{}", qmp.display()),
            "-o",
        ])
        .arg(dir.path("a.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a socket; refusing to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    assert!(
        !dir.path("a.jsonl").exists(),
        "a capture that never started is not left behind to block the next attempt"
    );
    // An inherited descriptor must exist and be a listening socket; fd:N is never an upstream.
    for (listen, upstream, says) in [
        ("fd:99", "unix:/x", "no such open descriptor"),
        ("fd:0", "unix:/x", "not a socket"),
        ("unix:/x", "fd:3", "only for --listen"),
    ] {
        let out = Command::new(BIN)
            .args(["record", "--listen", listen, "--upstream", upstream, "-o"])
            .arg(dir.path("fd.jsonl"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{listen} {upstream}: {err}");
    }
    // An existing capture is not overwritten without --force.
    let capture = dir.path("old.jsonl");
    std::fs::write(&capture, b"old").unwrap();
    let out = Command::new(BIN)
        .args([
            "record",
            "--listen",
            &format!("unix:{}", dir.path("p.sock").display()),
            "--upstream",
            &format!("unix:{}", qmp.display()),
            "-o",
        ])
        .arg(&capture)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(&capture).unwrap(), b"old");
    // With --force it is replaced, keeping its mode.
    std::fs::set_permissions(&capture, std::fs::Permissions::from_mode(0o640)).unwrap();
    let listen = dir.path("forced.sock");
    let mut child = record(
        &[
            "--listen",
            &format!("unix:{}", listen.display()),
            "--upstream",
            &format!("unix:{}", qmp.display()),
            "-o",
            capture.to_str().unwrap(),
            "--force",
        ],
        Stdio::null(),
    );
    session(&listen);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).success());
    let replaced = std::fs::read_to_string(&capture).unwrap();
    assert_eq!(types(&replaced).first().map(String::as_str), Some("header"));
    assert_eq!(
        std::fs::metadata(&capture).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // Bad addresses are quoted back with what would be accepted.
    let out = Command::new(BIN)
        .args([
            "record",
            "--listen",
            "udp:1",
            "--upstream",
            "unix:/x",
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'udp:1'"));
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let qmp = dir.path("qmp.sock");
    let _qemu = qemu(&qmp);
    let listen = dir.path("proxy.sock");
    // A socket file whose listener is gone, as a crashed recorder leaves it.
    drop(std::os::unix::net::UnixListener::bind(&listen).unwrap());
    assert!(std::fs::metadata(&listen).unwrap().file_type().is_socket());
    let mut child = record(
        &[
            "--listen",
            &format!("unix:{}", listen.display()),
            "--upstream",
            &format!("unix:{}", qmp.display()),
            "-o",
            "-",
        ],
        Stdio::null(),
    );
    assert!(String::from_utf8_lossy(&session(&listen)).contains("\"return\""));
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).success());
}

#[test]
fn tcp_listens_on_loopback_by_default() {
    let dir = TempDir::new("tcp");
    let qmp = dir.path("qmp.sock");
    let _qemu = qemu(&qmp);
    // Port 0: the kernel picks one, and qmptap says which.
    let mut child = Command::new(BIN)
        .args([
            "record",
            "--listen",
            "tcp::0",
            "--upstream",
            &format!("unix:{}", qmp.display()),
            "-o",
            "-",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line.split_whitespace().nth(2).unwrap().to_owned();
    assert!(addr.starts_with("tcp:127.0.0.1:"), "{line}");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(
        got.contains("\"QMP\"") && got.contains("\"return\""),
        "{got}"
    );
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).success());
}

#[test]
fn replay_reports_matches_and_differences_with_its_exit_status() {
    let dir = TempDir::new("replay");
    let capture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../captures/errors-fds-oob.jsonl"
    );
    let same = dir.path("same.sock");
    let _same = qemu(&same);
    let out = Command::new(BIN)
        .args(["replay", capture, "--target"])
        .arg(format!("unix:{}", same.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.ends_with("everything matched\n"), "{text}");
    // The same session against a QEMU with a name: query-name's replies differ, nothing else.
    let named = dir.path("named.sock");
    let _named = qemu_with(&named, &["-name", "guest7"]);
    let out = Command::new(BIN)
        .args(["replay", capture, "--format", "json", "--target"])
        .arg(format!("unix:{}", named.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let differing: Vec<&str> = report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["differing"].as_array().unwrap())
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(differing, ["query-name"; 5], "{report}");
}

/// QEMU's own Python client (`qemu.qmp`) drives `qmptap serve` through the recorded
/// migration: negotiation (it enables oob by itself), the same commands, the recorded
/// replies, and the MIGRATION events in their recorded order.
#[test]
fn serve_answers_qemu_qmp_like_the_recorded_qemu() {
    let dir = TempDir::new("serve-qemu-qmp");
    let socket = dir.path("serve.sock");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../captures/migration.jsonl");
    let listen = format!("unix:{}", socket.display());
    let mut child = start(
        "serve",
        &[
            capture.to_str().unwrap(),
            "--listen",
            &listen,
            "--once",
            "--require-all",
            "--format",
            "json",
        ],
        Stdio::piped(),
        "qmptap: serving ",
    );
    let script = r#"
import asyncio, json, sys
from qemu.qmp import QMPClient

async def main(path):
    qmp = QMPClient("serve-test")
    events = []
    async def listen():
        async for e in qmp.events:
            events.append((e["event"], e.get("data", {})))
    await qmp.connect(path)
    task = asyncio.create_task(listen())
    out = {"version": dict(qmp.greeting.QMP.version["qemu"])}
    out["status"] = await qmp.execute("query-status")
    await qmp.execute("migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": True}]})
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": 200000})
    uri = sys.argv[2]
    out["migrate"] = await qmp.execute("migrate", {"uri": uri})
    polls = []
    while True:
        info = await qmp.execute("query-migrate")
        polls.append(info["status"])
        if info["status"] == "completed":
            break
    out["polls"] = polls
    out["final"] = (await qmp.execute("query-migrate"))["status"]
    out["end"] = await qmp.execute("query-status")
    await asyncio.sleep(0.2)
    await qmp.disconnect()
    task.cancel()
    out["events"] = events
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"#;
    // The recorded migrate URI, which the arguments must match.
    let uri = std::fs::read_to_string(&capture)
        .unwrap()
        .lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["name"] == "migrate" && v["dir"] == "c2s")
                .then(|| v["json"]["arguments"]["uri"].as_str().unwrap().to_owned())
        })
        .unwrap();
    let py = Command::new("python3")
        .args(["-c", script])
        .arg(&socket)
        .arg(&uri)
        .output()
        .expect("python3 with qemu.qmp is required (see .ci/run)");
    assert!(
        py.status.success(),
        "qemu.qmp client failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(
        got["version"],
        serde_json::json!({"micro": 22, "minor": 2, "major": 7})
    );
    assert_eq!(got["status"]["status"], "running");
    assert_eq!(got["migrate"], serde_json::json!({}));
    let polls: Vec<&str> = got["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(polls.len(), 9, "{polls:?}");
    assert!(polls[..8].iter().all(|p| *p == "active"), "{polls:?}");
    assert_eq!(got["final"], "completed");
    assert_eq!(got["end"]["status"], "postmigrate");
    let migration: Vec<&str> = got["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0] == "MIGRATION")
        .map(|e| e[1]["status"].as_str().unwrap())
        .collect();
    assert_eq!(migration, ["setup", "active", "completed"]);
    let passes = got["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0] == "MIGRATION_PASS")
        .count();
    assert_eq!(passes, 3);
    // --once: the server stops when the client leaves; every recorded interaction was used.
    let status = wait_exit(&mut child);
    let mut report = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["unused"], serde_json::json!([]), "{report}");
    assert_eq!(report["misses"], 0, "{report}");
    assert_eq!(report["answered"], 16, "{report}");
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_require_all_fails_when_interactions_are_left() {
    let dir = TempDir::new("serve-require-all");
    let socket = dir.path("serve.sock");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../captures/migration.jsonl");
    let listen = format!("unix:{}", socket.display());
    let mut child = start(
        "serve",
        &[
            capture.to_str().unwrap(),
            "--listen",
            &listen,
            "--once",
            "--require-all",
        ],
        Stdio::piped(),
        "qmptap: serving ",
    );
    let got = session(&socket);
    assert!(
        String::from_utf8_lossy(&got).contains(r#""status": "running""#),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(1));
    let mut report = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    assert!(
        report.contains("1 of 16 recorded interaction(s) used"),
        "{report}"
    );
    assert!(
        report.contains("line 8 conn 1 seq 5 migrate-set-capabilities"),
        "{report}"
    );
}

/// Runs tmux with the given arguments, failing loudly when it is missing.
fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is required: apt-get install tmux (see scripts/setup.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every JSON value in `bytes`, in order.
fn values(bytes: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect()
}

/// A tmux session, killed when dropped.
struct Session(String);
impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// The whole monitor in a real terminal (tmux) during a live migration between two real
/// QEMUs: `qmptap tui --listen ... --poll query-migrate` polls for a client that never
/// does, the dashboard's gauge climbs to completed, and the client gets exactly the replies
/// it asked for.
#[test]
fn tui_follows_a_live_migration_with_its_own_polls() {
    let dir = TempDir::new("tui-live");
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
    let spawn = |args: &[String]| {
        Killed(
            Command::new("qemu-system-x86_64")
                .args(base)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("qemu-system-x86_64 is required: apt-get install qemu-system-x86"),
        )
    };
    let mig = dir.path("mig.sock");
    let _dst = spawn(&[
        "-qmp".into(),
        qmp("dst.sock"),
        "-incoming".into(),
        format!("unix:{}", mig.display()),
    ]);
    let _src = spawn(&["-qmp".into(), qmp("src.sock")]);
    wait_for_monitor(&dir.path("src.sock"));
    wait_until("the migration socket never appeared", || mig.exists());
    // An earlier capture in the way: --force replaces it.
    std::fs::write(dir.path("capture.jsonl"), "an earlier capture\n").unwrap();

    let session = format!("qmptap-test-{}", std::process::id());
    let command = format!(
        "{BIN} tui --listen unix:{} --upstream unix:{} --poll query-migrate@100ms -o {} --force --log {}",
        dir.path("proxy.sock").display(),
        dir.path("src.sock").display(),
        dir.path("capture.jsonl").display(),
        dir.path("tui.log").display(),
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "45",
        &command,
    ]);
    let _session = Session(session.clone());
    wait_until("the TUI did not listen", || dir.path("proxy.sock").exists());

    // The client: negotiates, slows the migration down so that it is watchable, starts it,
    // and never polls.
    let mut client = UnixStream::connect(dir.path("proxy.sock")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut received = Vec::new();
    let read_some = |client: &mut UnixStream, received: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        match client.read(&mut buf) {
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("client read: {e}"),
        }
    };
    for cmd in [
        r#"{"execute":"qmp_capabilities","id":"c1"}"#.to_owned(),
        r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":300000},"id":"c2"}"#
            .to_owned(),
        format!(
            r#"{{"execute":"migrate","arguments":{{"uri":"unix:{}"}},"id":"c3"}}"#,
            mig.display()
        ),
    ] {
        client.write_all(cmd.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        read_some(&mut client, &mut received);
    }
    tmux(&["send-keys", "-t", &session, "2"]);

    // Watch the dashboard: the gauge's percentage climbs until the status is completed.
    let mut seen: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let screen = loop {
        read_some(&mut client, &mut received);
        let screen = tmux(&["capture-pane", "-p", "-t", &session]);
        if let Some(pct) = screen
            .lines()
            .skip_while(|l| !l.contains("RAM sent"))
            .nth(1)
            .and_then(|l| l.split('%').next())
            .and_then(|l| l.rsplit(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse::<u32>().ok())
        {
            if seen.last() != Some(&pct) {
                seen.push(pct);
            }
        }
        if screen.contains("status          completed") {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "never completed; gauge {seen:?}\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen.last(), Some(&100), "{seen:?}\n{screen}");
    assert!(
        seen.iter().any(|p| *p > 0 && *p < 100),
        "the gauge never showed the migration in progress: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

    // The client saw its three replies and nothing of the proxy's polls.
    read_some(&mut client, &mut received);
    let got = values(&received);
    assert!(got[0].get("QMP").is_some(), "{got:?}");
    let ids: Vec<&serde_json::Value> = got.iter().filter_map(|v| v.get("id")).collect();
    assert_eq!(ids, ["c1", "c2", "c3"], "{got:?}");
    assert!(
        got.iter()
            .all(|v| v.get("QMP").is_some() || v.get("id").is_some() || v.get("event").is_some()),
        "{got:?}"
    );

    // Quit; the capture marks the polls as the proxy's own.
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_until("the monitor did not quit", || {
        !tmux(&["list-sessions"]).contains(&session)
    });
    drop(client);
    let capture = std::fs::read_to_string(dir.path("capture.jsonl")).unwrap();
    assert!(
        capture.starts_with(r#"{"type":"header""#),
        "--force replaced the earlier capture"
    );
    let polls = capture
        .lines()
        .filter(|l| l.contains(r#""origin":"proxy""#) && l.contains("\"completed\""))
        .count();
    assert!(polls >= 1, "{capture}");
}

/// A real libvirtd and virtlogd (scripts/libvirt/daemons.sh), stopped when dropped.
struct Libvirt;

impl Libvirt {
    fn start(state: &Path) -> Libvirt {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirt/daemons.sh");
        let status = Command::new(&script)
            .arg("start")
            .arg(state)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "libvirt is required: run scripts/setup.sh as root (see .ci/run)"
        );
        Libvirt
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirt/daemons.sh");
        let _ = Command::new(script).arg("stop").status();
    }
}

/// Runs virsh on the system connection and returns what it printed.
fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A capture's records after its header, once the recorder has closed it.
fn finished_capture(path: &Path) -> Vec<qmptap::capture::Record> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap();
        if types(&text).last().map(String::as_str) == Some("close") {
            return qmptap::capture::Reader::open(path)
                .unwrap()
                .map(|r| r.unwrap().record)
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} was not finished",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each message of a capture as (direction, parsed JSON, fds received with it).
fn messages(
    records: &[qmptap::capture::Record],
) -> Vec<(qmptap::capture::Dir, serde_json::Value, u32)> {
    records
        .iter()
        .filter_map(|r| match r {
            qmptap::capture::Record::Msg(m) => Some((
                m.dir,
                serde_json::from_slice(&m.raw_bytes()).unwrap(),
                m.fds,
            )),
            _ => None,
        })
        .collect()
}

/// The reply to the command with this `execute` name (and these arguments, when given),
/// found by the id libvirt gave it; also the fds the command carried.
fn reply_to(
    msgs: &[(qmptap::capture::Dir, serde_json::Value, u32)],
    execute: &str,
    arguments: Option<&serde_json::Value>,
) -> (serde_json::Value, u32) {
    use qmptap::capture::Dir;
    let (_, command, fds) = msgs
        .iter()
        .find(|(d, m, _)| {
            *d == Dir::C2s
                && m["execute"] == execute
                && arguments.is_none_or(|a| m["arguments"] == *a)
        })
        .unwrap_or_else(|| panic!("libvirt sent no {execute} {arguments:?}"));
    let id = &command["id"];
    assert!(
        id.as_str().is_some_and(|i| i.starts_with("libvirt-")),
        "{command}"
    );
    let (_, reply, _) = msgs
        .iter()
        .find(|(d, m, _)| *d == Dir::S2c && m["id"] == *id)
        .unwrap_or_else(|| panic!("no reply to {command}"));
    (reply.clone(), *fds)
}

/// What libvirt's own debug log (`QEMU_MONITOR_SEND_MSG` lines) says it sent, one list per
/// monitor session: each message with whether an fd went with it.
fn libvirt_sessions(log: &Path) -> Vec<Vec<(serde_json::Value, bool)>> {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
    let mut sessions: Vec<(String, Vec<(serde_json::Value, bool)>)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line
            .split_once("QEMU_MONITOR_SEND_MSG: mon=")
            .map(|(_, r)| r)
        else {
            continue;
        };
        let (mon, msg) = rest.split_once(" msg=").unwrap();
        // The message ends with its CR LF, so " fd=N" is on the next physical line.
        let fd = lines.next_if(|l| l.starts_with(" fd=")).unwrap_or_default();
        let msg: serde_json::Value = serde_json::from_str(msg.trim_end_matches('\r')).unwrap();
        let with_fd = fd.trim() != "fd=-1" && !fd.is_empty();
        if msg["execute"] == "qmp_capabilities" {
            sessions.push((mon.to_owned(), Vec::new()));
        }
        if let Some((_, session)) = sessions.iter_mut().rev().find(|(m, _)| m == mon) {
            session.push((msg, with_fd));
        }
    }
    sessions.into_iter().map(|(_, s)| s).collect()
}

/// libvirt itself as the client: a domain whose `<emulator>` is `qmptap wrap` is started,
/// paused, resumed, queried, saved (libvirt passes the migration fd on `getfd`'s own write)
/// and restored; each QEMU run is recorded from libvirt's first byte, the fd crosses the
/// proxy and `getfd` succeeds, and the captures check clean.
#[test]
fn wrap_records_what_libvirt_says_to_qemu() {
    use qmptap::capture::{Dir, Record};
    use serde_json::json;
    let dir = TempDir::new("libvirt");
    let captures = dir.path("captures");
    std::fs::create_dir(&captures).unwrap();
    let _libvirt = Libvirt::start(&dir.path("libvirt"));
    let wrapper = dir.path("qemu-wrap");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {BIN} wrap --capture-dir {} -- /usr/bin/qemu-system-x86_64 \"$@\"\n",
            captures.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = format!("qmptap-wrap-{}", std::process::id());
    let xml = dir.path("domain.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <emulator>{}</emulator><controller type='usb' model='none'/>\
             <memballoon model='none'/></devices></domain>",
            wrapper.display()
        ),
    )
    .unwrap();
    let saved = dir.path("vm.save");
    virsh(&["define", xml.to_str().unwrap()]);
    virsh(&["start", &name]);
    virsh(&["suspend", &name]);
    virsh(&["resume", &name]);
    let before: serde_json::Value = serde_json::from_str(&virsh(&[
        "qemu-monitor-command",
        &name,
        r#"{"execute":"query-status"}"#,
    ]))
    .unwrap();
    virsh(&["save", &name, saved.to_str().unwrap()]);
    virsh(&["restore", saved.to_str().unwrap()]);
    let after: serde_json::Value = serde_json::from_str(&virsh(&[
        "qemu-monitor-command",
        &name,
        r#"{"execute":"query-status"}"#,
    ]))
    .unwrap();
    virsh(&["destroy", &name]);
    virsh(&["undefine", &name]);

    // One capture per QEMU run (libvirt's capability probes daemonize and are not recorded).
    let mut files: Vec<PathBuf> = std::fs::read_dir(&captures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let libvirtd: i32 = std::fs::read_to_string("/run/libvirtd.pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (started, restored) = (finished_capture(&files[0]), finished_capture(&files[1]));
    for (records, file) in [(&started, &files[0]), (&restored, &files[1])] {
        let header = qmptap::capture::Reader::open(file)
            .unwrap()
            .header()
            .clone();
        let listen = header.listen.as_deref().unwrap_or_default();
        assert!(
            listen.starts_with("unix:/var/lib/libvirt/qemu/domain-")
                && listen.ends_with("/monitor.sock"),
            "the capture names libvirt's own monitor socket: {listen}"
        );
        let Record::Open(open) = &records[0] else {
            panic!("no open record")
        };
        assert_eq!(open.peer.pid, Some(libvirtd), "libvirtd is the client");
        let msgs = messages(records);
        assert_eq!(msgs[0].0, Dir::S2c, "QEMU's greeting first");
        assert!(msgs[0].1["QMP"].is_object());
        assert_eq!(msgs[1].1["execute"], "qmp_capabilities");
        let check = Command::new(BIN).arg("check").arg(file).output().unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }

    // Independently, libvirt's own log of what it sent: each capture holds exactly one of
    // libvirt's monitor sessions, message for message, fds included.
    let logged = libvirt_sessions(&dir.path("libvirt/log/libvirtd.log"));
    assert!(
        logged
            .iter()
            .flatten()
            .any(|(m, fd)| *fd && m["execute"] == "getfd"),
        "the log shows getfd with its fd"
    );
    for (records, file) in [(&started, &files[0]), (&restored, &files[1])] {
        let sent: Vec<(serde_json::Value, bool)> = messages(records)
            .into_iter()
            .filter(|(d, _, _)| *d == Dir::C2s)
            .map(|(_, m, fds)| (m, fds > 0))
            .collect();
        assert!(
            logged.contains(&sent),
            "{}: its {} client messages are not one of libvirt's {} logged sessions",
            file.display(),
            sent.len(),
            logged.len()
        );
    }

    let msgs = messages(&started);
    assert_eq!(reply_to(&msgs, "stop", None).0["return"], json!({}));
    assert_eq!(reply_to(&msgs, "cont", None).0["return"], json!({}));
    let events: Vec<&serde_json::Value> = msgs
        .iter()
        .filter(|(d, m, _)| *d == Dir::S2c && m.get("event").is_some())
        .map(|(_, m, _)| &m["event"])
        .collect();
    for event in ["STOP", "RESUME"] {
        assert!(events.contains(&&json!(event)), "{events:?}");
    }
    // virsh qemu-monitor-command got what QEMU said, and the capture has it.
    let (status, _) = reply_to(&msgs, "query-status", None);
    assert_eq!(status["return"], before["return"]);
    // virsh save: the fd rides on getfd's own write, and QEMU takes it.
    let (getfd, fds) = reply_to(&msgs, "getfd", Some(&json!({"fdname": "migrate"})));
    assert_eq!(fds, 1, "getfd carried the migration fd");
    assert_eq!(getfd, json!({"return": {}, "id": getfd["id"]}));
    let (migrate, _) = reply_to(&msgs, "migrate", None);
    assert_eq!(migrate["return"], json!({}));
    let migrated = |msgs: &[(Dir, serde_json::Value, u32)]| {
        msgs.iter()
            .any(|(_, m, _)| m["event"] == "MIGRATION" && m["data"]["status"] == "completed")
    };
    assert!(migrated(&msgs), "the save completed");
    // virsh restore: the save file is inherited by QEMU, not by the recorder.
    let msgs = messages(&restored);
    let (incoming, _) = reply_to(&msgs, "migrate-incoming", None);
    assert_eq!(incoming["return"], json!({}));
    assert!(migrated(&msgs), "the restore completed");
    let (status, _) = reply_to(&msgs, "query-status", None);
    assert_eq!(status["return"], after["return"]);
}
