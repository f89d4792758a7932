//! One client connection: relay both directions unchanged, record a copy of each frame.
//!
//! Bytes are forwarded first and decoded after: the decoder can cost a record its structure,
//! never a byte on the wire. Each stretch of bytes is recorded right after the `sendmsg`
//! that forwarded it returns and before this task waits again, so every message in the
//! capture precedes anything the peer could have sent in answer to it.

use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use super::stream::Stream;
use crate::capture::{Close, Dir, Msg, Record, Side, SinkHandle, Time};
use crate::wire::{Decoder, Frame, Limits};

/// Bytes read from a socket at once.
pub const CHUNK: usize = 64 * 1024;

/// Per-connection recording state, shared by the two directions of one task.
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
        self.frames.clear();
        self.decoders[i].feed(bytes, &mut self.frames);
        for frame in std::mem::take(&mut self.frames) {
            self.emit(dir, &frame, t);
        }
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
}

/// How one direction ended.
enum End {
    /// The source closed its writing side.
    Eof,
    /// Reading the source failed.
    ReadFailed(std::io::Error),
    /// Writing to the destination failed.
    WriteFailed(std::io::Error),
}

async fn pump(dir: Dir, src: &Stream, dst: &Stream, rec: &Mutex<Recorder>) -> End {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (n, fds) = match src.recv(&mut buf).await {
            Ok((0, _)) => return End::Eof,
            Ok(got) => got,
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
            let sent = match dst.send(&buf[off..n], &fds).await {
                Ok(sent) => sent,
                Err(e) => return End::WriteFailed(e),
            };
            // The kernel duplicated the descriptors into the message: close our copies.
            fds.clear();
            let (f, d) = if off == 0 {
                (received, dropped)
            } else {
                (0, 0)
            };
            rec.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .forwarded(dir, &buf[off..off + sent], f, d, t);
            off += sent;
        }
    }
}

/// Relays one accepted client to its upstream until both directions end or `stop` fires,
/// recording everything under connection id `conn`.
pub async fn relay(
    conn: u64,
    client: Stream,
    upstream: Stream,
    sink: SinkHandle,
    limits: Limits,
    stop: CancellationToken,
) {
    let rec = Mutex::new(Recorder {
        conn,
        seq: 0,
        sink: sink.clone(),
        decoders: [Decoder::with_limits(limits), Decoder::with_limits(limits)],
        pending_fds: [0; 2],
        pending_dropped: [0; 2],
        bytes: [0; 2],
        frames: Vec::new(),
    });
    // The directions borrow the recorder; they are dropped at the end of this block.
    let first = {
        let c2s = pump(Dir::C2s, &client, &upstream, &rec);
        let s2c = pump(Dir::S2c, &upstream, &client, &rec);
        tokio::pin!(c2s, s2c);
        let (mut c2s_done, mut s2c_done) = (false, false);
        // The first side to end, and why.
        let mut first: Option<(Side, String)> = None;
        let mut note = |side: Side, why: String| {
            first.get_or_insert((side, why));
        };
        while !(c2s_done && s2c_done) {
            let (dir, end) = tokio::select! {
                end = &mut c2s, if !c2s_done => (Dir::C2s, end),
                end = &mut s2c, if !s2c_done => (Dir::S2c, end),
                () = stop.cancelled() => {
                    note(Side::Proxy, "shutdown".into());
                    break;
                }
            };
            let t = Time::now();
            rec.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .ended(dir, t);
            let (src_side, dst, dst_side) = match dir {
                Dir::C2s => {
                    c2s_done = true;
                    (Side::Client, &upstream, Side::Upstream)
                }
                Dir::S2c => {
                    s2c_done = true;
                    (Side::Upstream, &client, Side::Client)
                }
            };
            match end {
                End::Eof => {
                    note(src_side, "eof".into());
                    // Half-close: the other side reads EOF, the other direction goes on.
                    let _ = dst.shutdown_write();
                }
                End::ReadFailed(e) => {
                    note(src_side, e.to_string());
                    break;
                }
                End::WriteFailed(e) => {
                    note(dst_side, e.to_string());
                    break;
                }
            }
        }
        first
    };
    let mut rec = rec.into_inner().unwrap_or_else(PoisonError::into_inner);
    let t = Time::now();
    // Whatever was still partial when the connection was torn down is cut short.
    rec.ended(Dir::C2s, t);
    rec.ended(Dir::S2c, t);
    let (by, reason) = first.unwrap_or((Side::Proxy, "unknown".into()));
    tracing::debug!(conn, ?by, %reason, "connection closed");
    sink.record(Record::Close(Close {
        conn,
        t,
        by,
        reason,
        c2s_bytes: rec.bytes[0],
        s2c_bytes: rec.bytes[1],
    }));
}
