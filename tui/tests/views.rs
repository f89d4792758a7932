#![allow(clippy::unwrap_used)] // a test that cannot go on should panic
//! The views, drawn with ratatui's test backend from the real captures, and the sources.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qmptap::capture::Reader;
use qmptap_tui::app::{App, Tab};
use qmptap_tui::input::Action;
use qmptap_tui::view::{Palette, render};
use qmptap_tui::{Event, Source, drain};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../captures")
        .join(name)
}

fn load(name: &str) -> App {
    let mut app = App::new(name);
    for located in Reader::open(&capture(name)).unwrap() {
        app.ingest(located.unwrap());
    }
    app
}

/// The screen as text, one line per row.
fn screen(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(140, 44)).unwrap();
    terminal
        .draw(|frame| render(frame, app, Palette::new(false)))
        .unwrap();
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_migration_dashboard_shows_qemus_final_figures() {
    let mut app = load("migration.jsonl");
    app.apply(Action::Tab(1));
    assert_eq!(app.tab, Tab::Migration);
    let s = screen(&app);
    assert!(s.contains("status          completed"), "{s}");
    // Three MIGRATION_PASS events in the capture.
    assert!(s.contains("passes          3"), "{s}");
    assert!(
        s.contains("setup 1 ms   total 3607 ms   downtime 2 ms"),
        "{s}"
    );
    assert!(s.contains("100%"), "{s}");
    assert!(!s.contains("STALLED"), "{s}");
}

#[test]
fn the_jobs_board_shows_the_mirror_job() {
    let mut app = load("block-mirror.jsonl");
    app.apply(Action::Tab(2));
    let s = screen(&app);
    let row = s
        .lines()
        .find(|l| l.contains("mirror0"))
        .unwrap_or_else(|| panic!("{s}"));
    assert!(row.contains("mirror"), "{row}");
    assert!(row.contains("null"), "{row}");
    assert!(row.contains("100%"), "{row}");
}

#[test]
fn the_stream_pairs_and_the_inspector_shows_both_sides() {
    let mut app = load("errors-fds-oob.jsonl");
    let s = screen(&app);
    assert!(s.contains("-> {\"execute\":"), "{s}");
    // Jump to the first error: the inspector shows it, the command it answers, and the
    // status line counts errors.
    app.apply(Action::Top);
    app.apply(Action::NextError);
    let s = screen(&app);
    assert!(app.paused);
    assert!(s.contains("PAUSED"), "{s}");
    assert!(s.contains("\"error\": {"), "{s}");
    assert!(s.contains("request (line"), "{s}");
    let errors = app.entries.iter().filter(|e| e.is_error()).count();
    assert!(s.contains(&format!("{errors} errors")), "{s}");
}

#[test]
fn the_filter_uses_the_clis_terms_and_refuses_nonsense() {
    let mut app = load("errors-fds-oob.jsonl");
    app.apply(Action::StartFilter);
    for c in "kind:error".chars() {
        app.apply(Action::FilterChar(c));
    }
    app.apply(Action::ApplyFilter);
    assert!(!app.visible.is_empty());
    assert!(app.visible.iter().all(|&i| app.entries[i].is_error() || {
        matches!(&app.entries[i].record, qmptap::capture::Record::Msg(m) if m.kind == qmptap::wire::Kind::Error)
    }));
    app.apply(Action::StartFilter);
    app.apply(Action::FilterChar('x'));
    app.apply(Action::FilterChar(':'));
    app.apply(Action::ApplyFilter);
    let s = screen(&app);
    assert!(s.contains("filter refused"), "{s}");
}

#[test]
fn the_stats_panel_ranks_commands() {
    let mut app = load("block-mirror.jsonl");
    app.apply(Action::Tab(3));
    let s = screen(&app);
    let first = s
        .lines()
        .skip_while(|l| !l.contains("top commands by count"))
        .nth(2)
        .unwrap();
    assert!(first.contains("query-jobs"), "{s}");
    assert!(s.contains("slowest commands (p95)"), "{s}");
}

#[test]
fn the_help_overlay_lists_the_keys() {
    let mut app = load("migration.jsonl");
    app.apply(Action::Help);
    let s = screen(&app);
    for (keys, _) in qmptap_tui::input::KEYS {
        assert!(s.contains(keys), "{keys} missing from\n{s}");
    }
}

/// Following a capture as it is written: records appear as their lines complete; a line
/// written in two halves appears once, whole.
#[test]
fn follow_sees_records_as_they_are_written() {
    let dir = std::env::temp_dir().join(format!("qmptap-tui-follow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("growing.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(capture("migration.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "{}", lines[0]).unwrap();
    let (tx, rx) = mpsc::channel();
    let _running = Source::Follow(path.clone()).start(tx);
    let mut app = App::new("follow");
    let wait_for = |app: &mut App, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while app.entries.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} records",
                app.entries.len()
            );
            drain(app, &rx);
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for line in &lines[1..10] {
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
    let start = Instant::now();
    wait_for(&mut app, 9);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let (a, b) = lines[10].split_at(lines[10].len() / 2);
    write!(file, "{a}").unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drain(&mut app, &rx);
    assert_eq!(app.entries.len(), 9, "half a line is not a record yet");
    writeln!(file, "{b}").unwrap();
    file.flush().unwrap();
    wait_for(&mut app, 10);
    assert_eq!(app.entries[9].line, 11);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Replay at speed: the migration capture's 3.6 s pass in about 0.36 s at x10, in order.
#[test]
fn replay_plays_at_the_recorded_pace_scaled() {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let _running = Source::Replay {
        path: capture("migration.jsonl"),
        speed: 10.0,
    }
    .start(tx);
    let mut app = App::new("replay");
    let mut ended = false;
    while !ended {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::Record(l) => app.ingest(l),
            Event::End(r) => {
                r.unwrap();
                ended = true;
            }
            Event::Findings(_) => {}
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(330) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(app.entries.len(), load("migration.jsonl").entries.len());
    assert_eq!(app.analyser.migration.runs()[0].status(), Some("completed"));
}

/// A capture being written gets the schema findings `qmptap check` gives the finished file,
/// record by record as they arrive (the live proxy goes through the same `audited`).
#[test]
fn findings_come_as_a_followed_capture_grows() {
    let dir = std::env::temp_dir().join(format!("qmptap-tui-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("growing.jsonl");
    let whole = capture("errors-fds-oob.jsonl");
    let text = std::fs::read_to_string(&whole).unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let _running = Source::Follow(path.clone()).start(qmptap_tui::audited(tx));
    let mut app = App::new("follow");
    for line in text.lines() {
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
    let loaded = qmptap::audit::schema_for(&whole, None).unwrap();
    let expected =
        qmptap::audit::check_capture(&whole, &loaded, qmptap::schema::check::Policy::default())
            .unwrap();
    assert_eq!(expected.errors(), 9);
    let count = |app: &App| app.findings.values().map(Vec::len).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&app) < expected.findings.len() {
        assert!(Instant::now() < deadline, "{} findings so far", count(&app));
        drain(&mut app, &rx);
        std::thread::sleep(Duration::from_millis(5));
    }
    for f in &expected.findings {
        assert!(app.findings[&f.line].contains(f), "{f:?}");
    }
    assert_eq!(app.schema.as_deref(), Some(loaded.description.as_str()));
    std::fs::remove_dir_all(&dir).unwrap();
}
