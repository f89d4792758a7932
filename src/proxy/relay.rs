//! One client connection: relay both directions unchanged, record a copy of each frame.
//!
//! Each direction runs on its own thread with blocking reads, the cheapest way for a
//! proxy's latency to stay close to a direct connection's. Bytes are forwarded first and
//! decoded after: the decoder can cost a record its structure, never a byte on the wire.
//!
//! Ordering: a direction holds the connection's recorder lock while it hands a stretch of
//! bytes to the kernel (a non-blocking `sendmsg`, so the lock is never held while waiting)
//! and records the frames those bytes complete. The peer cannot answer bytes before they are
//! sent, and the other direction cannot record its answer before the lock is released, so
//! every message in the capture precedes anything sent in answer to it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use super::stream::Stream;
use crate::capture::{Close, Dir, Msg, Record, Side, SinkHandle, Time};
use crate::wire::{Decoder, Frame, Limits};

/// Bytes read from a socket at once.
pub const CHUNK: usize = 64 * 1024;

/// Per-connection recording state, shared by the two directions.
struct Recorder {
    conn: u64,
    seq: u64,
    sink: SinkHandle,
    decoders: [Decoder; 2],
    /// Descriptors received in a direction and not yet attributed to a frame: they belong to
    /// the first frame completed at or after the bytes they came with (the `qemu.qmp` way,
    /// one whitespace byte carrying the fd before the command, and the libvirt way, the fd on
    /// the command's own write, both attribute the fd to the command).
    pending_fds: [u32; 2],
    pending_dropped: [u32; 2],
    bytes: [u64; 2],
    frames: Vec<Frame>,
    /// The first side to end the connection, and why.
    first_end: Option<(Side, String)>,
}

fn index(dir: Dir) -> usize {
    match dir {
        Dir::C2s => 0,
        Dir::S2c => 1,
    }
}

impl Recorder {
    fn forwarded(&mut self, dir: Dir, bytes: &[u8], fds: u32, dropped: u32, t: Time) {
        let i = index(dir);
        self.bytes[i] += bytes.len() as u64;
        self.pending_fds[i] += fds;
        self.pending_dropped[i] += dropped;
        let mut frames = std::mem::take(&mut self.frames);
        self.decoders[i].feed(bytes, &mut frames);
        for frame in frames.drain(..) {
            self.emit(dir, &frame, t);
        }
        self.frames = frames;
    }

    /// The direction ended: a message cut short is recorded as truncated.
    fn ended(&mut self, dir: Dir, t: Time) {
        if let Some(frame) = self.decoders[index(dir)].finish() {
            self.emit(dir, &frame, t);
        }
    }

    fn emit(&mut self, dir: Dir, frame: &Frame, t: Time) {
        let i = index(dir);
        let mut msg = Msg::from_frame(
            self.conn,
            self.seq,
            t,
            dir,
            frame,
            std::mem::take(&mut self.pending_fds[i]),
        );
        msg.fds_dropped = std::mem::take(&mut self.pending_dropped[i]);
        self.seq += 1;
        self.sink.record(Record::Msg(msg));
    }

    fn note_end(&mut self, side: Side, why: String) {
        self.first_end.get_or_insert((side, why));
    }
}

/// How one direction ended.
enum End {
    /// The source closed its writing side.
    Eof,
    /// Reading the source failed.
    ReadFailed(io::Error),
    /// Writing to the destination failed.
    WriteFailed(io::Error),
}

fn pump(dir: Dir, src: &Stream, dst: &Stream, rec: &Mutex<Recorder>) -> End {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (n, fds) = match src.recv(&mut buf) {
            Ok((0, _)) => return End::Eof,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return End::ReadFailed(e),
        };
        let t = Time::now();
        let received = fds.len() as u32;
        let (mut fds, dropped): (Vec<OwnedFd>, u32) = if dst.carries_fds() || fds.is_empty() {
            (fds, 0)
        } else {
            tracing::warn!(
                fds = received,
                "file descriptors cannot cross to a TCP socket; they were closed"
            );
            (Vec::new(), received)
        };
        let mut off = 0;
        while off < n {
            let mut recorder = rec.lock().unwrap_or_else(PoisonError::into_inner);
            match dst.try_send(&buf[off..n], &fds) {
                Ok(sent) => {
                    // The kernel duplicated the descriptors into the message: close ours.
                    fds.clear();
                    let (f, d) = if off == 0 {
                        (received, dropped)
                    } else {
                        (0, 0)
                    };
                    recorder.forwarded(dir, &buf[off..off + sent], f, d, t);
                    off += sent;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(recorder);
                    if let Err(e) = dst.wait_writable() {
                        return End::WriteFailed(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return End::WriteFailed(e),
            }
        }
    }
}

/// Runs one direction to its end, then does what that end means for the connection.
fn run_direction(dir: Dir, src: &Stream, dst: &Stream, rec: &Mutex<Recorder>) {
    let end = pump(dir, src, dst, rec);
    let mut recorder = rec.lock().unwrap_or_else(PoisonError::into_inner);
    recorder.ended(dir, Time::now());
    let (src_side, dst_side) = match dir {
        Dir::C2s => (Side::Client, Side::Upstream),
        Dir::S2c => (Side::Upstream, Side::Client),
    };
    match end {
        End::Eof => {
            recorder.note_end(src_side, "eof".into());
            // Half-close: the other side reads EOF, the other direction goes on.
            dst.shutdown_write();
        }
        End::ReadFailed(e) => {
            recorder.note_end(src_side, e.to_string());
            src.shutdown_both();
            dst.shutdown_both();
        }
        End::WriteFailed(e) => {
            recorder.note_end(dst_side, e.to_string());
            src.shutdown_both();
            dst.shutdown_both();
        }
    }
}

/// A relayed connection, as the proxy's async side sees it.
pub struct Relay {
    client: std::sync::Arc<Stream>,
    upstream: std::sync::Arc<Stream>,
    rec: std::sync::Arc<Mutex<Recorder>>,
}

impl Relay {
    /// Prepares to relay `client` to `upstream`, recording under connection id `conn`.
    pub fn new(
        conn: u64,
        client: Stream,
        upstream: Stream,
        sink: SinkHandle,
        limits: Limits,
    ) -> Relay {
        let rec = Recorder {
            conn,
            seq: 0,
            sink,
            decoders: [Decoder::with_limits(limits), Decoder::with_limits(limits)],
            pending_fds: [0; 2],
            pending_dropped: [0; 2],
            bytes: [0; 2],
            frames: Vec::new(),
            first_end: None,
        };
        Relay {
            client: std::sync::Arc::new(client),
            upstream: std::sync::Arc::new(upstream),
            rec: std::sync::Arc::new(Mutex::new(rec)),
        }
    }

    /// Relays until both directions have ended (blocking: run it on a blocking thread), then
    /// records the connection's close.
    pub fn run(&self) {
        std::thread::scope(|scope| {
            let c2s = std::thread::Builder::new()
                .name("qmptap-c2s".into())
                .spawn_scoped(scope, || {
                    run_direction(Dir::C2s, &self.client, &self.upstream, &self.rec);
                });
            if let Err(e) = c2s {
                // No thread for the client's direction: nothing can be relayed.
                self.note_and_close(Side::Proxy, format!("cannot start a relay thread: {e}"));
            }
            run_direction(Dir::S2c, &self.upstream, &self.client, &self.rec);
        });
        let mut rec = self.rec.lock().unwrap_or_else(PoisonError::into_inner);
        let (by, reason) = rec
            .first_end
            .take()
            .unwrap_or((Side::Proxy, "unknown".into()));
        tracing::debug!(conn = rec.conn, ?by, %reason, "connection closed");
        let close = Close {
            conn: rec.conn,
            t: Time::now(),
            by,
            reason,
            c2s_bytes: rec.bytes[0],
            s2c_bytes: rec.bytes[1],
        };
        rec.sink.record(Record::Close(close));
    }

    /// Ends the connection from outside (shutdown): both sockets are closed, which wakes the
    /// relay threads, and the capture says the proxy closed it.
    pub fn close(&self, why: &str) {
        self.note_and_close(Side::Proxy, why.to_owned());
    }

    fn note_and_close(&self, side: Side, why: String) {
        self.rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note_end(side, why);
        self.client.shutdown_both();
        self.upstream.shutdown_both();
    }

    /// A handle that can close the connection while [`Relay::run`] runs elsewhere.
    pub fn closer(&self) -> Relay {
        Relay {
            client: self.client.clone(),
            upstream: self.upstream.clone(),
            rec: self.rec.clone(),
        }
    }
}
