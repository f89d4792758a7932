#![allow(clippy::unwrap_used)] // a benchmark that cannot go on should stop
//! Proxy benchmark: `query-status` round-trip latency and `query-qmp-schema` throughput,
//! direct to QEMU, through `qmptap record`, and through `socat`, in one run.
//!
//! Run with `scripts/bench.sh` (builds the release binary first) or
//! `QMPTAP_BIN=target/release/qmptap cargo bench --bench proxy`.
//! The setups are measured in interleaved rounds so that drift on the machine hits all three
//! alike. Needs QEMU and socat; fails (never skips) without them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qmptap::wire::{Decoder, Frame};

const ROUNDS: usize = 10;
const ROUND_TRIPS_PER_ROUND: usize = 1_000;
const SCHEMA_REPLIES_PER_ROUND: usize = 5;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so that qmptap flushes; then make sure.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(100));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Proc {
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} is required for this benchmark: {e}")),
    )
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

struct Conn {
    s: UnixStream,
    d: Decoder,
    frames: std::collections::VecDeque<Frame>,
    buf: Vec<u8>,
    bytes: u64,
}

impl Conn {
    fn open(path: &Path) -> Conn {
        let s = UnixStream::connect(path).expect("connect");
        let mut c = Conn {
            s,
            d: Decoder::new(),
            frames: std::collections::VecDeque::new(),
            buf: vec![0; 1 << 16],
            bytes: 0,
        };
        c.next(); // greeting
        c.call(b"{\"execute\":\"qmp_capabilities\"}");
        c
    }

    fn next(&mut self) -> Frame {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return f;
            }
            let n = self.s.read(&mut self.buf).expect("read");
            assert!(n > 0, "server closed");
            self.bytes += n as u64;
            let mut out = Vec::new();
            self.d.feed(&self.buf[..n], &mut out);
            self.frames.extend(out);
        }
    }

    fn call(&mut self, cmd: &[u8]) -> Frame {
        self.s.write_all(cmd).expect("write");
        loop {
            let f = self.next();
            if !f.bytes.starts_with(b"{\"timestamp\"") {
                return f;
            }
        }
    }
}

#[derive(Default)]
struct Results {
    latencies_us: Vec<f64>,
    schema_bytes: u64,
    schema_secs: f64,
}

fn round(path: &Path, r: &mut Results) {
    let mut c = Conn::open(path);
    for _ in 0..ROUND_TRIPS_PER_ROUND {
        let t = Instant::now();
        c.call(b"{\"execute\":\"query-status\"}");
        r.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let before = c.bytes;
    let t = Instant::now();
    for _ in 0..SCHEMA_REPLIES_PER_ROUND {
        c.call(b"{\"execute\":\"query-qmp-schema\"}");
    }
    r.schema_secs += t.elapsed().as_secs_f64();
    r.schema_bytes += c.bytes - before;
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let bin = std::env::var_os("QMPTAP_BIN")
        .map_or_else(|| PathBuf::from("target/release/qmptap"), PathBuf::from);
    assert!(
        bin.exists(),
        "{} not found: build it with cargo build --release -p qmptap-cli (or set QMPTAP_BIN)",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("qmptap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let qmp = dir.join("qmp.sock");
    let via_qmptap = dir.join("qmptap.sock");
    let via_socat = dir.join("socat.sock");
    let capture = dir.join("bench.jsonl");

    let _qemu = spawn(
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", qmp.display())),
        "qemu-system-x86_64",
    );
    wait_for(&qmp);
    let _qmptap = spawn(
        Command::new(&bin)
            .args(["record", "--force", "-o"])
            .arg(&capture)
            .arg("--listen")
            .arg(format!("unix:{}", via_qmptap.display()))
            .arg("--upstream")
            .arg(format!("unix:{}", qmp.display())),
        "qmptap",
    );
    let _socat = spawn(
        Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", via_socat.display()))
            .arg(format!("UNIX-CONNECT:{}", qmp.display())),
        "socat",
    );
    wait_for(&via_qmptap);
    wait_for(&via_socat);
    // Each setup connects to QEMU's one monitor in turn; let the probes' connections drain.
    std::thread::sleep(Duration::from_millis(300));

    let setups: [(&str, &Path); 3] = [
        ("direct", &qmp),
        ("qmptap record", &via_qmptap),
        ("socat", &via_socat),
    ];
    let mut results: Vec<Results> = setups.iter().map(|_| Results::default()).collect();
    for _ in 0..ROUNDS {
        for ((_, path), r) in setups.iter().zip(results.iter_mut()) {
            round(path, r);
            // QEMU notices the previous client's close asynchronously.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    println!(
        "QMP proxy benchmark: {} query-status round trips and {} query-qmp-schema replies per setup",
        ROUNDS * ROUND_TRIPS_PER_ROUND,
        ROUNDS * SCHEMA_REPLIES_PER_ROUND
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>14}",
        "setup", "p50 us", "p99 us", "mean us", "schema MB/s"
    );
    let mut medians = Vec::new();
    let mut rates = Vec::new();
    for ((name, _), r) in setups.iter().zip(results.iter_mut()) {
        r.latencies_us.sort_by(f64::total_cmp);
        let mean = r.latencies_us.iter().sum::<f64>() / r.latencies_us.len() as f64;
        let p50 = percentile(&r.latencies_us, 0.5);
        let rate = r.schema_bytes as f64 / r.schema_secs / 1e6;
        println!(
            "{name:<14} {p50:>10.1} {:>10.1} {mean:>10.1} {rate:>14.1}",
            percentile(&r.latencies_us, 0.99)
        );
        medians.push(p50);
        rates.push(rate);
    }
    println!(
        "median round trip: qmptap/direct = {:.2}x, qmptap/socat = {:.2}x",
        medians[1] / medians[0],
        medians[1] / medians[2]
    );
    println!(
        "schema throughput: qmptap/direct = {:.2}x, qmptap/socat = {:.2}x",
        rates[1] / rates[0],
        rates[1] / rates[2]
    );
    let size = std::fs::metadata(&capture).map_or(0, |m| m.len());
    println!("capture written by qmptap meanwhile: {size} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}
