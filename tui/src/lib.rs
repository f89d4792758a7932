//! `qmptap tui`: a terminal monitor for QMP sessions — browse a capture, follow one being
//! recorded, replay one in (scaled) real time, or run the recording proxy and watch it live,
//! with a migration dashboard, a jobs board and a stats panel built on the analysis models.
//!
//! State ([`app`]), input ([`input`]) and drawing ([`view`]) are apart: sources feed records
//! into the state; keys become actions that change it; views only read it. The loop takes in
//! every record that has arrived before each frame (frames may be skipped under load,
//! records never are) and draws at most every [`FRAME`].

pub mod app;
pub mod input;
pub mod source;
pub mod view;

use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};

pub use app::App;
pub use source::{Event, Source};

/// Shortest time between two frames.
pub const FRAME: Duration = Duration::from_millis(50);

/// Why the monitor stopped.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The terminal could not be driven.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Restores the terminal when dropped: on return, on error and on panic (ratatui's panic
/// hook restores it before the message is printed).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Takes in every event that has arrived; says whether the source is still going.
pub fn drain(app: &mut App, rx: &mpsc::Receiver<Event>) -> bool {
    loop {
        match rx.try_recv() {
            Ok(Event::Record(located)) => app.ingest(located),
            Ok(Event::Findings(report)) => app.set_findings(report),
            Ok(Event::End(result)) => {
                app.feed = match result {
                    Ok(()) => app::Feed::Ended,
                    Err(e) => app::Feed::Failed(e),
                };
                app.dirty = true;
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

/// Starts the findings of a capture file on their own thread (checking a large capture
/// takes a moment; the monitor does not wait for it).
fn start_findings(path: std::path::PathBuf, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let report = qmptap::audit::schema_for(&path, None).and_then(|loaded| {
            qmptap::audit::check_capture(&path, &loaded, qmptap::schema::check::Policy::default())
        });
        match report {
            Ok(report) => {
                let _ = tx.send(Event::Findings(report));
            }
            Err(e) => tracing::warn!(error = %e, "no schema findings"),
        }
    });
}

/// Checks records on their way from a source to the monitor, as `qmptap check` would, for
/// sources that are not finished files (a capture being written, the live proxy): the schema
/// is the built-in one nearest the first greeting's QEMU version; records before it wait.
/// Returns the sender the source should use.
pub fn audited(tx: mpsc::Sender<Event>) -> mpsc::Sender<Event> {
    use qmptap::audit::{Audit, Report, builtin_for_greeting};
    use qmptap::capture::Record;
    let (source_tx, rx) = mpsc::channel::<Event>();
    std::thread::spawn(move || {
        let mut before = Vec::new();
        let loaded = loop {
            let Ok(event) = rx.recv() else { return };
            let mut greeting = None;
            if let Event::Record(located) = &event {
                if let Record::Msg(m) = &located.record {
                    if m.kind == qmptap::wire::Kind::Greeting {
                        greeting = Some(m.value());
                    }
                }
                before.push(located.clone());
            }
            if tx.send(event).is_err() {
                return;
            }
            if let Some(greeting) = greeting {
                match builtin_for_greeting(greeting.as_ref()) {
                    Ok(loaded) => break loaded,
                    Err(e) => {
                        tracing::warn!(error = %e, "no schema findings");
                        // Forward the rest unchecked.
                        for event in rx {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        return;
                    }
                }
            }
        };
        let mut audit = Audit::new(&loaded, qmptap::schema::check::Policy::default(), false);
        let send_findings = |findings: Vec<qmptap::audit::Located>| {
            findings.is_empty()
                || tx
                    .send(Event::Findings(Report {
                        file: String::new(),
                        schema: loaded.description.clone(),
                        messages: 0,
                        findings,
                    }))
                    .is_ok()
        };
        let mut open = before
            .iter()
            .all(|located| send_findings(audit.observe(located)));
        for event in rx {
            if !open {
                return;
            }
            let findings = match &event {
                Event::Record(located) => audit.observe(located),
                _ => Vec::new(),
            };
            open = tx.send(event).is_ok() && send_findings(findings);
        }
    });
    source_tx
}

/// Runs the monitor on the terminal until the user quits.
pub fn run(source: &Source, color: bool) -> Result<(), TuiError> {
    let (tx, rx) = mpsc::channel();
    let _running = match source {
        Source::File(path) | Source::Replay { path, .. } => {
            start_findings(path.clone(), tx.clone());
            source.start(tx)
        }
        Source::Follow(_) | Source::Live { .. } => source.start(audited(tx)),
    };
    let mut app = App::new(source.title());
    let palette = view::Palette::new(color);
    let mut terminal = ratatui::init();
    let _restore = Restore;
    let mut last_draw: Option<Instant> = None;
    loop {
        drain(&mut app, &rx);
        if app.dirty && last_draw.is_none_or(|t| t.elapsed() >= FRAME) {
            terminal.draw(|frame| view::render(frame, &app, palette))?;
            app.dirty = false;
            last_draw = Some(Instant::now());
        }
        if event::poll(Duration::from_millis(20))? {
            if let TermEvent::Key(key) = event::read()? {
                if key.kind == KeyEventKind::Press {
                    let mode = if app.editing.is_some() {
                        input::Mode::Filter
                    } else if app.help {
                        input::Mode::Help
                    } else {
                        input::Mode::Normal
                    };
                    if let Some(action) = input::action(key, mode) {
                        app.apply(action);
                    }
                }
            } else {
                app.dirty = true;
            }
        }
        if app.quit {
            return Ok(());
        }
    }
}
