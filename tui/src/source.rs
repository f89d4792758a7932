//! Where records come from: a finished capture, a capture still being written, a capture
//! played back in (scaled) real time, or the recording proxy run in this process. Each runs
//! on its own thread and sends [`Event`]s; none of them ever drops a record.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use qmptap::capture::{CaptureError, FORMAT, Located, Reader, Record, Time, VERSION};
use qmptap::proxy::{self, Config, Listener, Shutdown};

/// What a source sends.
#[derive(Debug)]
pub enum Event {
    /// A record.
    Record(Located),
    /// Schema findings for the capture.
    Findings(qmptap::audit::Report),
    /// The source has nothing more: `Err` says why it stopped.
    End(Result<(), String>),
}

/// A source of records.
#[derive(Debug, Clone)]
pub enum Source {
    /// A finished capture, read whole.
    File(PathBuf),
    /// A capture another process is still writing: read what is there, then follow it.
    Follow(PathBuf),
    /// A capture played back at its recorded pace times `speed`.
    Replay {
        /// The capture.
        path: PathBuf,
        /// 1 real time, 10 ten times faster.
        speed: f64,
    },
    /// The recording proxy, in this process.
    Live {
        /// Proxy settings (listen, upstream, poll).
        config: Config,
        /// Also write the capture to this file (see [`qmptap::capture::create`]).
        output: Option<Arc<File>>,
    },
}

/// How often a followed file is looked at for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// A running source; dropping it stops it.
pub struct Running {
    stop: Arc<AtomicBool>,
    shutdown: Option<Shutdown>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = &self.shutdown {
            s.stop_accepting.cancel();
            s.close_all.cancel();
        }
    }
}

impl Source {
    /// What to call it on screen.
    pub fn title(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Follow(p) => format!("{} (following)", p.display()),
            Source::Replay { path, speed } => format!("{} (replay x{speed})", path.display()),
            Source::Live { config, .. } => format!("{} -> {}", config.listen, config.upstream),
        }
    }

    /// Starts the source on its own thread.
    pub fn start(&self, tx: Sender<Event>) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let mut running = Running {
            stop: Arc::clone(&stop),
            shutdown: None,
        };
        let source = self.clone();
        match source {
            Source::File(path) => spawn(tx, move |tx| read_all(&path, tx, &stop)),
            Source::Follow(path) => spawn(tx, move |tx| follow(&path, tx, &stop)),
            Source::Replay { path, speed } => {
                spawn(tx, move |tx| replay(&path, speed, tx, &stop));
            }
            Source::Live { config, output } => {
                let shutdown = Shutdown::default();
                running.shutdown = Some(shutdown.clone());
                spawn(tx, move |tx| live(&config, output.as_ref(), tx, &shutdown));
            }
        }
        running
    }
}

fn spawn(
    tx: Sender<Event>,
    body: impl FnOnce(&Sender<Event>) -> Result<(), String> + Send + 'static,
) {
    std::thread::spawn(move || {
        let result = body(&tx);
        let _ = tx.send(Event::End(result));
    });
}

fn read_all(path: &Path, tx: &Sender<Event>, stop: &AtomicBool) -> Result<(), String> {
    for located in Reader::open(path).map_err(|e| e.to_string())? {
        if stop.load(Ordering::Relaxed)
            || tx
                .send(Event::Record(located.map_err(|e| e.to_string())?))
                .is_err()
        {
            break;
        }
    }
    Ok(())
}

fn record_time(r: &Record) -> Option<Time> {
    match r {
        Record::Open(o) => Some(o.t),
        Record::Msg(m) => Some(m.t),
        Record::Close(c) => Some(c.t),
        Record::Gap(g) => Some(g.t),
        Record::Header(_) => None,
    }
}

fn replay(path: &Path, speed: f64, tx: &Sender<Event>, stop: &AtomicBool) -> Result<(), String> {
    let start = Instant::now();
    let mut first: Option<Time> = None;
    for located in Reader::open(path).map_err(|e| e.to_string())? {
        let located = located.map_err(|e| e.to_string())?;
        if let Some(t) = record_time(&located.record) {
            let t0 = *first.get_or_insert(t);
            let offset = t.micros_since(t0).max(0) as f64 / speed;
            let due = start + Duration::from_secs_f64(offset / 1e6);
            // Sleep in slices, so that quitting is prompt.
            while let Some(wait) = due.checked_duration_since(Instant::now()) {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(wait.min(Duration::from_millis(50)));
            }
        }
        if stop.load(Ordering::Relaxed) || tx.send(Event::Record(located)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Follows a growing capture: complete lines are parsed as they appear; a line still being
/// written is kept until its newline arrives.
fn follow(path: &Path, tx: &Sender<Event>, stop: &AtomicBool) -> Result<(), String> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read '{name}': {e}"))?;
    let mut input = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("cannot read '{name}': {e}"))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            // Nothing more yet, or a line cut where the writer has got to: wait for more.
            // (A file truncated under us starts over.)
            if let Ok(meta) = std::fs::metadata(path) {
                let pos = input.stream_position().unwrap_or(0);
                if meta.len() < pos {
                    input.rewind().map_err(|e| e.to_string())?;
                    buf.clear();
                    line = 0;
                }
            }
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        line += 1;
        let text = buf.trim_ascii_end();
        if !text.is_empty() {
            let record = Record::parse(text).map_err(|e| {
                CaptureError::InvalidRecord {
                    source_name: name.clone(),
                    line,
                    why: e.to_string(),
                }
                .to_string()
            })?;
            match (&record, line) {
                (Record::Header(h), 1) if h.format == FORMAT && h.version == VERSION => {}
                (_, 1) => {
                    return Err(format!(
                        "{name}:1: not a qmptap capture header (format {FORMAT}, version {VERSION})"
                    ));
                }
                (Record::Header(_), _) => return Err(format!("{name}:{line}: a second header")),
                _ => {
                    if tx.send(Event::Record(Located { line, record })).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        buf.clear();
    }
}

/// Runs the recording proxy in this process, its records tapped into the monitor.
fn live(
    config: &Config,
    output: Option<&Arc<File>>,
    tx: &Sender<Event>,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let out = output
        .map(|f| {
            f.try_clone()
                .map(std::io::BufWriter::new)
                .map_err(|e| format!("cannot write the capture: {e}"))
        })
        .transpose()?;
    runtime.block_on(async {
        let listener = Listener::bind(&config.listen, config.socket_mode)
            .await
            .map_err(|e| e.to_string())?;
        let header = Record::Header(qmptap::capture::Header::new(
            Some(config.listen.to_string()),
            Some(config.upstream.to_string()),
        ));
        // Generous: the monitor drains it every few milliseconds.
        let (tap_tx, tap_rx) = std::sync::mpsc::sync_channel(1 << 16);
        let sink = qmptap::capture::Sink::start_tapped(
            out,
            &header,
            qmptap::capture::OnWriteError::Continue,
            Some(tap_tx),
        )
        .map_err(|e| e.to_string())?;
        let forward = {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Line numbers as the capture file has them: the header is line 1.
                for (line, record) in (1..).zip(tap_rx) {
                    if tx.send(Event::Record(Located { line, record })).is_err() {
                        break;
                    }
                }
            })
        };
        let handle = sink.handle();
        let result = proxy::run(listener, config, &handle, shutdown).await;
        drop(handle);
        let finished = sink.finish();
        let _ = forward.join();
        result.map_err(|e| e.to_string())?;
        finished.map_err(|e| e.to_string())
    })
}
