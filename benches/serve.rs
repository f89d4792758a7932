#![allow(clippy::unwrap_used)] // a benchmark that cannot go on should stop
//! Mock server throughput: a pipelining client writes N `query-status` commands from one
//! thread while another reads the replies, against `replay::server::serve` (in-process,
//! answering from `captures/migration.jsonl` with reuse on, since the capture records only
//! two `query-status`) and against a real QEMU (`-machine none`) as the reference. Prints
//! commands per second for both. Needs QEMU; fails (never skips) without it.
//!
//! Run with `cargo bench --bench serve` (N defaults to 100000; `QMPTAP_BENCH_N` overrides).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qmptap::addr::Addr;
use qmptap::normalize::Normalizer;
use qmptap::proxy::{Listener, Shutdown};
use qmptap::replay::server::{self, Script, ServeOptions};

/// Reads until `n` lines ending in `\r\n` have arrived (every QMP reply is one).
fn read_lines(s: &mut UnixStream, n: usize) {
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0;
    while seen < n {
        let got = s.read(&mut buf).unwrap();
        assert!(got > 0, "server closed after {seen} of {n} lines");
        // A few hundred kB per run: not worth a byte-counting crate.
        #[allow(clippy::naive_bytecount)]
        let lines = buf[..got].iter().filter(|&&b| b == b'\n').count();
        seen += lines;
    }
}

/// Greeting and negotiation, then N pipelined commands; returns commands per second.
fn pipelined(path: &Path, n: usize) -> f64 {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    read_lines(&mut s, 1);
    s.write_all(br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#)
        .unwrap();
    read_lines(&mut s, 1);
    let mut writer = s.try_clone().unwrap();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let command = br#"{"execute":"query-status"}"#;
        let mut chunk = Vec::with_capacity(command.len() * 1000);
        let mut left = n;
        while left > 0 {
            let k = left.min(1000);
            chunk.clear();
            for _ in 0..k {
                chunk.extend_from_slice(command);
            }
            writer.write_all(&chunk).unwrap();
            left -= k;
        }
    });
    read_lines(&mut s, n);
    let elapsed = start.elapsed();
    sender.join().unwrap();
    n as f64 / elapsed.as_secs_f64()
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let n: usize = std::env::var("QMPTAP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("qmptap-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serve_sock: PathBuf = dir.join("serve.sock");
    let qemu_sock: PathBuf = dir.join("qemu.sock");

    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures/migration.jsonl");
    let script = Arc::new(Script::load(&capture, Normalizer::default()).unwrap());
    let shutdown = Shutdown::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (addr, s) = (Addr::Unix(serve_sock.clone()), shutdown.clone());
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = Listener::bind(&addr, 0o600).await.unwrap();
            ready_tx.send(()).unwrap();
            let opts = ServeOptions {
                reuse: true,
                ..ServeOptions::default()
            };
            server::serve(listener, script, opts, s).await.unwrap()
        })
    });
    ready_rx.recv().unwrap();
    let serve_rate = pipelined(&serve_sock, n);
    shutdown.stop_accepting.cancel();
    let report = server.join().unwrap();
    assert_eq!(report.misses, 0);

    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", qemu_sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 is required for this benchmark"),
    );
    wait_for(&qemu_sock);
    // wait_for's probe connection took QEMU's one client slot briefly; let it reset.
    std::thread::sleep(Duration::from_millis(100));
    let qemu_rate = pipelined(&qemu_sock, n);

    println!("serve: {n} pipelined query-status: qmptap serve {serve_rate:.0} commands/s");
    println!("serve: {n} pipelined query-status: QEMU (-machine none) {qemu_rate:.0} commands/s");
    let _ = std::fs::remove_dir_all(&dir);
}
