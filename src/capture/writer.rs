//! Writing captures: a synchronous [`Writer`] and a threaded [`Sink`] that relays use
//! without ever waiting on the disk.
//!
//! A sink can also hand every record to a *tap*, for a consumer in the same process (the
//! TUI): see [`Sink::start_tapped`]. Neither the disk nor a slow tap consumer ever makes a
//! relay wait.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{Gap, Record, Time};

/// How many records may wait for the writer thread before relays start counting them as
/// lost (they never wait for the disk). A record holds at most one frame, and frames are
/// bounded by the decoder's limits.
pub const QUEUE_RECORDS: usize = 65_536;

/// After a flush, how long the writer lets records gather before it writes again. Waking
/// the writer thread for every record costs a busy host more CPU than the write itself
/// (measured: the proxy's round trip grew by 6% on two cores); this bounds how late a
/// record reaches the file, and the writer still sleeps when there is no traffic.
pub const BATCH_WINDOW: Duration = Duration::from_millis(1);

/// The `reason` of the `gap` record for records the relays could not queue.
pub const WRITER_FELL_BEHIND: &str = "the capture writer fell behind";

/// The `reason` of the `gap` record a tap receives when its consumer fell behind.
pub const TAP_FELL_BEHIND: &str = "the tap's consumer fell behind";

/// After a failed write, how long the sink waits before it tries the disk again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Creates a capture file that only its owner can read and write (mode 0600, as for the
/// listening socket): a capture holds everything the clients sent, passwords and secret
/// objects' data included. An existing file is refused unless `replace`, in which case it
/// is truncated and keeps its mode.
///
/// # Errors
/// The file exists (and not `replace`), or cannot be created.
pub fn create(path: &Path, replace: bool) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(replace)
        .create_new(!replace)
        .mode(0o600)
        .open(path)
}

/// Appends records to a byte stream, one JSON line each.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> Self {
        Writer { out }
    }

    /// Serialises one record and its newline. The line is built in memory first, so that a
    /// failing disk leaves at most one torn line, never an interleaved one.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)
    }

    /// Flushes buffered lines to the underlying stream.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying stream.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// What the sink does when the capture cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnWriteError {
    /// Keep relaying; say so on stderr; count lost records and write a `gap` record when
    /// writing works again.
    #[default]
    Continue,
    /// Stop: the sink reports the error through [`SinkHandle::failed`] and the proxy shuts
    /// down, so that no traffic passes unrecorded.
    Fail,
}

/// Shared state between the relays' handles and the writer thread.
#[derive(Default)]
struct Shared {
    /// Records that relays could not queue (queue full).
    overflowed: AtomicU64,
    /// Time of the first overflowed record since the last gap record.
    overflow_since: Mutex<Option<Time>>,
    /// The first write error under [`OnWriteError::Fail`].
    failure: Mutex<Option<String>>,
}

/// The writer thread that owns the capture file.
pub struct Sink {
    handle: SinkHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// A cheap, cloneable handle through which relays hand records to the [`Sink`].
#[derive(Clone)]
pub struct SinkHandle {
    tx: SyncSender<Record>,
    shared: Arc<Shared>,
}

impl SinkHandle {
    /// Queues a record without blocking. If the queue is full the record is counted as lost
    /// and the capture gets a `gap` record for it.
    pub fn record(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let mut since = self
                    .shared
                    .overflow_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                since.get_or_insert_with(Time::now);
                self.shared.overflowed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The write error that stopped the sink, under [`OnWriteError::Fail`].
    pub fn failed(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Sink {
    /// Starts the writer thread. `header` is written first and must succeed: a capture
    /// without a header is useless, so that error is returned at once.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        header: &Record,
        policy: OnWriteError,
    ) -> io::Result<Sink> {
        Sink::start_tapped(Some(out), header, policy, None)
    }

    /// Starts a sink that writes nothing and only hands records to `tap` (see
    /// [`Sink::start_tapped`]): a live view without a capture file.
    pub fn tap_only(header: &Record, tap: SyncSender<Record>) -> io::Result<Sink> {
        Sink::start_tapped(None::<io::Sink>, header, OnWriteError::Continue, Some(tap))
    }

    /// Starts the writer thread, writing to `out` if there is one, and handing a copy of
    /// every record to `tap` if there is one: the header first, then every record in the
    /// order the relays queued it, from the writer thread, as soon as it leaves the queue and
    /// before the disk is tried (so that a failing disk does not blind the tap; records lost
    /// to the disk still reach the tap), and the sink's own `gap` records when they are
    /// written.
    ///
    /// The tap never makes anyone wait: make it a bounded channel
    /// (`std::sync::mpsc::sync_channel(n)`, `n` > 0). When it is full, records are dropped
    /// for it (never for the file) and counted; as soon as it has room again it receives a
    /// [`Gap`] record whose `lost` says how many it missed, `since` when the first was
    /// dropped, and `reason` is [`TAP_FELL_BEHIND`]. When its receiver is dropped the sink
    /// stops tapping and goes on writing.
    pub fn start_tapped<W: Write + Send + 'static>(
        out: Option<W>,
        header: &Record,
        policy: OnWriteError,
        tap: Option<SyncSender<Record>>,
    ) -> io::Result<Sink> {
        let mut writer = out.map(Writer::new);
        if let Some(w) = &mut writer {
            w.write(header)?;
            w.flush()?;
        }
        let mut tap = TapState::new(tap);
        tap.send(header);
        let (tx, rx) = mpsc::sync_channel(QUEUE_RECORDS);
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("qmptap-capture".into())
            .spawn(move || run(writer, tap, &rx, &thread_shared, policy))?;
        Ok(Sink {
            handle: SinkHandle { tx, shared },
            thread: Some(thread),
        })
    }

    /// A handle for relays.
    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }

    /// Waits until every queued record is written and flushed, then stops the thread.
    /// Handles still alive elsewhere must be dropped first, or this waits for them.
    pub fn finish(mut self) -> io::Result<()> {
        let Sink { handle, thread } = &mut self;
        drop(std::mem::replace(&mut handle.tx, mpsc::sync_channel(0).0));
        match thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the capture writer thread panicked")),
            None => Ok(()),
        }
    }
}

/// The writer thread's side of a tap.
struct TapState {
    tx: Option<SyncSender<Record>>,
    /// Records the consumer missed since the last gap it received.
    dropped: u64,
    since: Option<Time>,
}

impl TapState {
    fn new(tx: Option<SyncSender<Record>>) -> TapState {
        TapState {
            tx,
            dropped: 0,
            since: None,
        }
    }

    /// Offers a record to the tap without waiting; a notice of what it missed goes first.
    fn send(&mut self, record: &Record) {
        if self.tx.is_none() {
            return;
        }
        if self.dropped > 0 {
            let gap = Record::Gap(Gap {
                t: Time::now(),
                since: self.since.unwrap_or_else(Time::now),
                lost: self.dropped,
                reason: TAP_FELL_BEHIND.to_owned(),
            });
            if !self.offer(gap) {
                self.dropped += 1;
                return;
            }
            self.dropped = 0;
            self.since = None;
        }
        if !self.offer(record.clone()) {
            self.dropped += 1;
            self.since.get_or_insert_with(Time::now);
        }
    }

    /// Whether the tap took the record. A tap whose receiver is gone is closed for good.
    fn offer(&mut self, record: Record) -> bool {
        let Some(tx) = &self.tx else { return true };
        match tx.try_send(record) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!("the capture tap's receiver is gone; no longer tapping");
                self.tx = None;
                true
            }
        }
    }

    /// At the end: one last try to tell the consumer what it missed.
    fn finish(&mut self) {
        if self.dropped > 0 {
            let gap = Record::Gap(Gap {
                t: Time::now(),
                since: self.since.unwrap_or_else(Time::now),
                lost: self.dropped,
                reason: TAP_FELL_BEHIND.to_owned(),
            });
            if self.offer(gap) {
                self.dropped = 0;
            }
        }
    }
}

/// State of the writer thread's error handling.
struct Outage {
    since: Time,
    lost: u64,
    reason: String,
    retry_at: Instant,
}

fn run<W: Write>(
    writer: Option<Writer<W>>,
    mut tap: TapState,
    rx: &Receiver<Record>,
    shared: &Shared,
    policy: OnWriteError,
) -> io::Result<()> {
    let Some(mut writer) = writer else {
        // Tap only: nothing to write, nothing that can fail; a full queue still shows as a gap.
        for record in rx {
            if let Some(gap) = overflow_gap(shared) {
                tap.send(&gap);
            }
            tap.send(&record);
        }
        if let Some(gap) = overflow_gap(shared) {
            tap.send(&gap);
        }
        tap.finish();
        return Ok(());
    };
    let mut outage: Option<Outage> = None;
    let mut dirty = false;
    loop {
        // Block only when everything written so far is flushed: records reach the file as
        // soon as the stream goes quiet, and in batches while it is busy.
        let next = if dirty {
            match rx.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::TryRecvError::Empty) => {
                    if let Err(e) = writer.flush() {
                        note_failure(&mut outage, 0, &e, policy, shared);
                    }
                    dirty = false;
                    std::thread::sleep(BATCH_WINDOW);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        } else {
            rx.recv().ok()
        };
        let Some(record) = next else { break };
        // Before the disk: a failing disk must not blind the tap.
        tap.send(&record);

        if let Some(o) = &mut outage {
            if Instant::now() < o.retry_at {
                o.lost += 1;
                continue;
            }
        }
        if let Err(e) = write_gap_if_any(&mut writer, &mut outage, shared, &mut tap) {
            note_failure(&mut outage, 1, &e, policy, shared);
            continue;
        }
        match writer.write(&record) {
            Ok(()) => dirty = true,
            Err(e) => note_failure(&mut outage, 1, &e, policy, shared),
        }
        if policy == OnWriteError::Fail && outage.is_some() {
            break;
        }
    }
    // Account for anything lost before stopping, if the disk lets us.
    if let Some(o) = &mut outage {
        o.retry_at = Instant::now();
    }
    let _ = write_gap_if_any(&mut writer, &mut outage, shared, &mut tap);
    tap.finish();
    writer.flush()
}

/// The `gap` record for records that relays could not queue, if any were lost.
fn overflow_gap(shared: &Shared) -> Option<Record> {
    let lost = shared.overflowed.swap(0, Ordering::Relaxed);
    let since = shared
        .overflow_since
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    (lost > 0).then(|| {
        Record::Gap(Gap {
            t: Time::now(),
            since: since.unwrap_or_else(Time::now),
            lost,
            reason: WRITER_FELL_BEHIND.to_owned(),
        })
    })
}

/// Writes the `gap` record that accounts for records lost to an outage or a full queue.
fn write_gap_if_any<W: Write>(
    writer: &mut Writer<W>,
    outage: &mut Option<Outage>,
    shared: &Shared,
    tap: &mut TapState,
) -> io::Result<()> {
    let overflowed = shared.overflowed.swap(0, Ordering::Relaxed);
    let overflow_since = shared
        .overflow_since
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let (lost, since, reason) = match (outage.as_ref(), overflowed) {
        (None, 0) => return Ok(()),
        (None, n) => (
            n,
            overflow_since.unwrap_or_else(Time::now),
            WRITER_FELL_BEHIND.to_owned(),
        ),
        (Some(o), n) => (o.lost + n, o.since, o.reason.clone()),
    };
    let gap = Record::Gap(Gap {
        t: Time::now(),
        since,
        lost,
        reason,
    });
    if let Err(e) = writer.write(&gap).and_then(|()| writer.flush()) {
        // Put the overflow count back so that the next gap record still accounts for it.
        shared.overflowed.fetch_add(overflowed, Ordering::Relaxed);
        return Err(e);
    }
    tap.send(&gap);
    if let Some(o) = outage.take() {
        tracing::warn!(
            lost = o.lost + overflowed,
            "capture writing resumed; a gap record marks the lost records"
        );
    }
    Ok(())
}

fn note_failure(
    outage: &mut Option<Outage>,
    lost: u64,
    err: &io::Error,
    policy: OnWriteError,
    shared: &Shared,
) {
    let retry_at = Instant::now() + RETRY_AFTER;
    if let Some(o) = outage {
        o.lost += lost;
        o.retry_at = retry_at;
    } else {
        tracing::error!(cause = %err, "cannot write the capture; relaying continues and lost records will be marked with a gap record");
        *outage = Some(Outage {
            since: Time::now(),
            lost,
            reason: err.to_string(),
            retry_at,
        });
    }
    if policy == OnWriteError::Fail {
        let mut failure = shared
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failure.get_or_insert_with(|| err.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::record::Header;

    /// A stream that fails while `broken` is set.
    #[derive(Clone, Default)]
    struct Flaky {
        data: Arc<Mutex<Vec<u8>>>,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::Error::other("No space left on device"));
            }
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::Error::other("No space left on device"));
            }
            Ok(())
        }
    }

    fn gap_probe(n: u64) -> Record {
        Record::Gap(Gap {
            t: Time::now(),
            since: Time::now(),
            lost: n,
            reason: "probe".into(),
        })
    }

    fn lines(f: &Flaky) -> Vec<serde_json::Value> {
        let data = f.data.lock().unwrap().clone();
        String::from_utf8(data)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_disk_outage_is_marked_with_a_gap_record() {
        let out = Flaky::default();
        let header = Record::Header(Header::new(None, None));
        let sink = Sink::start(out.clone(), &header, OnWriteError::Continue).unwrap();
        let h = sink.handle();
        h.record(gap_probe(1));
        std::thread::sleep(Duration::from_millis(100));
        out.broken.store(true, Ordering::SeqCst);
        for i in 0..3 {
            h.record(gap_probe(100 + i));
        }
        std::thread::sleep(Duration::from_millis(100));
        out.broken.store(false, Ordering::SeqCst);
        std::thread::sleep(RETRY_AFTER + Duration::from_millis(100));
        h.record(gap_probe(2));
        drop(h);
        sink.finish().unwrap();
        let lines = lines(&out);
        assert_eq!(lines[0]["type"], "header");
        assert_eq!(lines[1]["lost"], 1);
        let gap = lines
            .iter()
            .find(|l| l["reason"] == "No space left on device")
            .expect("gap record");
        assert_eq!(gap["lost"], 3);
        assert_eq!(
            lines.last().unwrap()["lost"],
            2,
            "writing resumed after the gap"
        );
    }

    #[test]
    fn fail_policy_reports_the_error() {
        let out = Flaky::default();
        let header = Record::Header(Header::new(None, None));
        let sink = Sink::start(out.clone(), &header, OnWriteError::Fail).unwrap();
        let h = sink.handle();
        out.broken.store(true, Ordering::SeqCst);
        h.record(gap_probe(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.failed().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(h.failed().as_deref(), Some("No space left on device"));
        drop(h);
        let _ = sink.finish();
    }

    fn wait_for_lines(out: &Flaky, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(out).len() < n {
            assert!(
                Instant::now() < deadline,
                "the writer never wrote {n} lines"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn lost_of(r: &Record) -> Option<(u64, &str)> {
        match r {
            Record::Gap(g) => Some((g.lost, g.reason.as_str())),
            _ => None,
        }
    }

    #[test]
    fn a_full_tap_drops_and_says_so_but_the_file_gets_everything() {
        let out = Flaky::default();
        let header = Record::Header(Header::new(None, None));
        let (tap, taken) = mpsc::sync_channel(2);
        let sink = Sink::start_tapped(
            Some(out.clone()),
            &header,
            OnWriteError::Continue,
            Some(tap),
        )
        .unwrap();
        let h = sink.handle();
        for i in 1..=5 {
            h.record(gap_probe(i));
        }
        // The consumer sleeps: the header and the first probe fill the tap, the rest is
        // dropped for it, and the relays' handle never waited.
        wait_for_lines(&out, 6);
        let first: Vec<Record> = taken.try_iter().collect();
        assert_eq!(first.len(), 2);
        assert!(matches!(first[0], Record::Header(_)));
        assert_eq!(lost_of(&first[1]), Some((1, "probe")));
        h.record(gap_probe(6));
        drop(h);
        sink.finish().unwrap();
        let rest: Vec<Record> = taken.try_iter().collect();
        let rest: Vec<_> = rest.iter().map(lost_of).collect();
        assert_eq!(rest, [Some((4, TAP_FELL_BEHIND)), Some((6, "probe"))]);
        let written: Vec<u64> = lines(&out)[1..]
            .iter()
            .map(|l| l["lost"].as_u64().unwrap())
            .collect();
        assert_eq!(written, [1, 2, 3, 4, 5, 6], "the file misses nothing");
    }

    #[test]
    fn a_tap_only_sink_hands_on_every_record_and_survives_its_consumer() {
        let header = Record::Header(Header::new(None, None));
        let (tap, taken) = mpsc::sync_channel(16);
        let sink = Sink::tap_only(&header, tap).unwrap();
        let h = sink.handle();
        h.record(gap_probe(1));
        h.record(gap_probe(2));
        let got: Vec<Record> = (0..3)
            .map(|_| taken.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert!(matches!(got[0], Record::Header(_)));
        assert_eq!(lost_of(&got[2]), Some((2, "probe")));
        // The consumer goes away: recording goes on, and finishing does not hang.
        drop(taken);
        h.record(gap_probe(3));
        drop(h);
        sink.finish().unwrap();
    }
}
