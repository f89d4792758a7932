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
//!
//! With polling ([`super::poll`]) a third thread sends the proxy's own queries under the same
//! lock, only at a frame boundary of the client's stream, and the monitor's direction decodes
//! each chunk before forwarding it, to keep the proxy's replies from the client. There the
//! frames of a chunk are recorded as soon as they are decoded, just before their bytes are
//! forwarded, still under the lock, so that order in the capture stays causal.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::poll::{Poll, Poller, RETRY};
use super::stream::Stream;
use crate::capture::{Close, Dir, Msg, Origin, Record, Side, SinkHandle, Time};
use crate::wire::{Decoder, Frame, FrameKind, Limits};

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
    /// Polling state, when the proxy polls.
    poll: Option<Poller>,
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
        let msg = self.msg(dir, frame, t);
        if let (Dir::C2s, Some(poll)) = (dir, &mut self.poll) {
            poll.client_sent(&msg);
        }
        self.sink.record(Record::Msg(msg));
    }

    /// The record of a frame, with the descriptors that came with it and the next `seq`.
    fn msg(&mut self, dir: Dir, frame: &Frame, t: Time) -> Msg {
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
        msg
    }

    /// A chunk from the monitor, when the proxy polls: decodes and records its frames, and
    /// returns the bytes the client gets (everything but the proxy's replies).
    fn route(&mut self, bytes: &[u8], fds: u32, dropped: u32, t: Time) -> Vec<u8> {
        let i = index(Dir::S2c);
        self.pending_fds[i] += fds;
        self.pending_dropped[i] += dropped;
        let mut frames = std::mem::take(&mut self.frames);
        self.decoders[i].feed(bytes, &mut frames);
        let mut out = Vec::with_capacity(bytes.len());
        if let Some(poll) = &mut self.poll {
            poll.router.push(bytes);
        }
        for frame in frames.drain(..) {
            let mut msg = self.msg(Dir::S2c, &frame, t);
            if let Some(poll) = &mut self.poll {
                let partly = poll.router.partly_forwarded(&frame);
                let dropped = poll.server_sent(&mut msg, partly);
                poll.router.frame(&frame, dropped, &mut out);
            }
            self.sink.record(Record::Msg(msg));
        }
        self.frames = frames;
        if let Some(poll) = &mut self.poll {
            let hold = poll.hold_incomplete();
            poll.router
                .rest(self.decoders[i].incomplete_since(), hold, &mut out);
        }
        out
    }

    /// Hands the rest of a proxy command to the monitor's socket, if one is left over; `Ok`
    /// when nothing is left (so client bytes may follow).
    fn flush_poll(&mut self, dst: &Stream) -> io::Result<()> {
        let Some(poll) = &mut self.poll else {
            return Ok(());
        };
        while !poll.unsent.is_empty() {
            let sent = dst.try_send(&poll.unsent, &[])?;
            poll.unsent.drain(..sent);
        }
        Ok(())
    }

    /// Tries to hand the rest of a proxy command to the socket without waiting; `true` when
    /// nothing is left (or the socket failed for good, which the client's direction sees).
    fn flush_unsent(&mut self, dst: &Stream) -> bool {
        match self.flush_poll(dst) {
            Ok(()) => true,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Err(e) => {
                tracing::debug!(conn = self.conn, cause = %e, "cannot send a poll");
                true
            }
        }
    }

    /// Sends command `i`'s next poll if the client's stream is at a frame boundary and the
    /// socket takes it now. Returns whether it went out (or failed for good: the client's
    /// direction will see the same failure).
    fn send_poll(&mut self, i: usize, dst: &Stream) -> bool {
        // Mid-frame, or descriptors arrived on bytes before a command not yet complete (the
        // `qemu.qmp` way): a poll there would change what QEMU sees.
        let c2s = index(Dir::C2s);
        if self.decoders[c2s].incomplete_since().is_some() || self.pending_fds[c2s] > 0 {
            return false;
        }
        if !self.flush_unsent(dst) {
            return false;
        }
        let Some(poll) = &mut self.poll else {
            return true;
        };
        let bytes = poll.request(i);
        let sent = match dst.try_send(&bytes, &[]) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Err(e) => {
                tracing::debug!(conn = self.conn, cause = %e, "cannot send a poll");
                return true;
            }
        };
        // Whatever the socket did not take goes before the client's next bytes.
        poll.unsent.extend_from_slice(&bytes[sent..]);
        let frame = Frame {
            kind: FrameKind::Message,
            len: bytes.len() as u64,
            bytes,
            offset: 0,
        };
        let mut msg = Msg::from_frame(self.conn, self.seq, Time::now(), Dir::C2s, &frame, 0);
        msg.origin = Origin::Proxy;
        self.seq += 1;
        if let Some(poll) = &mut self.poll {
            poll.sent(i, &msg);
        }
        self.sink.record(Record::Msg(msg));
        true
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

fn lock(rec: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    rec.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pump(dir: Dir, src: &Stream, dst: &Stream, rec: &Mutex<Recorder>, routed: bool) -> End {
    if routed {
        return pump_routed(src, dst, rec);
    }
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
            let mut recorder = lock(rec);
            // The rest of a proxy poll the socket did not take goes first.
            match recorder.flush_poll(dst) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(recorder);
                    if let Err(e) = dst.wait_writable() {
                        return End::WriteFailed(e);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return End::WriteFailed(e),
            }
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

/// The monitor's direction when the proxy polls: each chunk is decoded and routed first,
/// then what is the client's is forwarded (descriptors with its first byte).
fn pump_routed(src: &Stream, dst: &Stream, rec: &Mutex<Recorder>) -> End {
    let mut buf = vec![0u8; CHUNK];
    // Descriptors not yet forwarded: their bytes were held back or dropped.
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        let (n, got) = match src.recv(&mut buf) {
            Ok((0, _)) => return End::Eof,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return End::ReadFailed(e),
        };
        let t = Time::now();
        let received = got.len() as u32;
        let dropped = if dst.carries_fds() || got.is_empty() {
            fds.extend(got);
            0
        } else {
            tracing::warn!(
                fds = received,
                "file descriptors cannot cross to a TCP socket; they were closed"
            );
            received
        };
        let mut recorder = lock(rec);
        let out = recorder.route(&buf[..n], received, dropped, t);
        let mut off = 0;
        while off < out.len() {
            match dst.try_send(&out[off..], &fds) {
                Ok(sent) => {
                    fds.clear();
                    recorder.bytes[index(Dir::S2c)] += sent as u64;
                    off += sent;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(recorder);
                    if let Err(e) = dst.wait_writable() {
                        return End::WriteFailed(e);
                    }
                    recorder = lock(rec);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return End::WriteFailed(e),
            }
        }
    }
}

/// Wakes the poll thread when the connection ends.
#[derive(Default)]
struct PollStop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl PollStop {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Sleeps until `until`; `false` when the connection ended meanwhile.
    fn sleep_until(&self, until: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if *stopped {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The poll thread: at each interval, once the client has negotiated, sends the commands that
/// are due, each as soon as the client's stream is at a frame boundary.
fn run_polls(upstream: &Stream, rec: &Mutex<Recorder>, stop: &PollStop) {
    let Some(interval) = lock(rec).poll.as_ref().map(|p| p.interval) else {
        return;
    };
    let mut next = Instant::now() + interval;
    while stop.sleep_until(next) {
        next += interval;
        let now = Instant::now();
        if next < now {
            // Fell behind (a suspended process): skip the missed ticks rather than burst.
            next = now + interval;
        }
        let mut due = {
            let recorder = lock(rec);
            match &recorder.poll {
                Some(poll) if poll.negotiated => poll.due(now),
                _ => continue,
            }
        };
        loop {
            let left = {
                let mut recorder = lock(rec);
                due.retain(|&i| !recorder.send_poll(i, upstream));
                // The rest of a poll the socket took only in part must not wait for the
                // client's next bytes.
                !due.is_empty() || !recorder.flush_unsent(upstream)
            };
            if !left || Instant::now() + RETRY >= next || !stop.sleep_until(Instant::now() + RETRY)
            {
                // Still mid-frame when the next tick comes: that tick tries again.
                break;
            }
        }
    }
}

/// Runs one direction to its end, then does what that end means for the connection.
fn run_direction(dir: Dir, src: &Stream, dst: &Stream, rec: &Mutex<Recorder>, routed: bool) {
    let end = pump(dir, src, dst, rec, routed);
    let mut recorder = lock(rec);
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
    stop: std::sync::Arc<PollStop>,
}

impl Relay {
    /// Prepares to relay `client` to `upstream`, recording under connection id `conn`, and
    /// polling if `poll` says so.
    pub fn new(
        conn: u64,
        client: Stream,
        upstream: Stream,
        sink: SinkHandle,
        limits: Limits,
        poll: Option<&Poll>,
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
            poll: poll.map(|p| Poller::new(conn, p)),
        };
        Relay {
            client: std::sync::Arc::new(client),
            upstream: std::sync::Arc::new(upstream),
            rec: std::sync::Arc::new(Mutex::new(rec)),
            stop: std::sync::Arc::default(),
        }
    }

    /// Relays until both directions have ended (blocking: run it on a blocking thread), then
    /// records the connection's close.
    pub fn run(&self) {
        let polling = lock(&self.rec).poll.is_some();
        std::thread::scope(|scope| {
            let c2s = std::thread::Builder::new()
                .name("qmptap-c2s".into())
                .spawn_scoped(scope, || {
                    run_direction(Dir::C2s, &self.client, &self.upstream, &self.rec, false);
                    // The monitor's writing half is shut: nothing more can be polled.
                    self.stop.stop();
                });
            if let Err(e) = c2s {
                // No thread for the client's direction: nothing can be relayed.
                self.note_and_close(Side::Proxy, format!("cannot start a relay thread: {e}"));
            }
            if polling {
                let poller = std::thread::Builder::new()
                    .name("qmptap-poll".into())
                    .spawn_scoped(scope, || run_polls(&self.upstream, &self.rec, &self.stop));
                if let Err(e) = poller {
                    // Relaying matters more than polling: go on without it.
                    tracing::error!(cause = %e, "cannot start the poll thread; not polling");
                }
            }
            run_direction(Dir::S2c, &self.upstream, &self.client, &self.rec, polling);
            self.stop.stop();
        });
        let mut rec = lock(&self.rec);
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
            stop: self.stop.clone(),
        }
    }
}
