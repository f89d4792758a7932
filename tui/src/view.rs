//! Drawing: pure functions from [`App`] to a frame. Nothing here changes state.

use qmptap::analyse::migration::Run;
use qmptap::analyse::{human_bytes, human_micros};
use qmptap::capture::{Dir, Record, Time};
use qmptap::session::Role;
use qmptap::transcript::message_text;
use qmptap::wire::Kind;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Gauge, Paragraph, Row, Sparkline, Table, Tabs, Wrap};

use crate::app::{App, Entry, Feed, Tab};
use crate::input::KEYS;

/// Colours, or none (NO_COLOR, or a terminal that asked for none).
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    color: bool,
}

impl Palette {
    /// With or without colour.
    pub fn new(color: bool) -> Self {
        Palette { color }
    }

    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn kind(self, kind: Kind) -> Style {
        match kind {
            Kind::Command => self.fg(Color::Cyan),
            Kind::Return => self.fg(Color::Green),
            Kind::Error | Kind::Invalid => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            Kind::Event => self.fg(Color::Yellow),
            Kind::Greeting | Kind::Other => self.fg(Color::Magenta),
        }
    }
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame<'_>, app: &App, palette: Palette) {
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let titles: Vec<String> = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()))
        .collect();
    let selected = Tab::ALL.iter().position(|t| *t == app.tab).unwrap_or(0);
    frame.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        tabs,
    );
    match app.tab {
        Tab::Stream => stream(frame, body, app, palette),
        Tab::Migration => migration(frame, body, app, palette),
        Tab::Jobs => jobs(frame, body, app, palette),
        Tab::Stats => stats(frame, body, app, palette),
    }
    status_line(frame, status, app, palette);
    if app.help {
        help(frame, frame.area());
    }
}

fn status_line(frame: &mut Frame<'_>, area: Rect, app: &App, palette: Palette) {
    let (messages, errors) = app.counts();
    let feed = match &app.feed {
        Feed::Live => "live".to_owned(),
        Feed::Ended => "end".to_owned(),
        Feed::Failed(e) => format!("stopped: {e}"),
    };
    let mut spans = vec![
        Span::raw(format!(" {} ", app.title)),
        Span::raw(format!("[{feed}] {messages} messages ")),
        Span::styled(format!("{errors} errors "), palette.fg(Color::Red)),
    ];
    if app.paused {
        spans.push(Span::styled(
            format!("PAUSED (+{}) ", app.unseen),
            palette.fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    if let Some(text) = &app.editing {
        spans.push(Span::raw(format!("filter: {text}█")));
    } else if let Some(e) = &app.filter_error {
        spans.push(Span::styled(
            format!("filter refused: {e}"),
            palette.fg(Color::Red),
        ));
    } else if !app.filter_text.is_empty() {
        spans.push(Span::raw(format!("filter: {} ", app.filter_text)));
    }
    spans.push(Span::raw("  ? help"));
    frame.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::default().add_modifier(Modifier::REVERSED)),
        area,
    );
}

fn clock(t: Time) -> String {
    t.0.format("%H:%M:%S%.6f").to_string()
}

/// One message as a row of the stream.
fn row_line(e: &Entry, palette: Palette, width: usize) -> Line<'static> {
    match &e.record {
        Record::Msg(m) => {
            let arrow = match (m.dir, m.is_proxy()) {
                (Dir::C2s, false) => "->",
                (Dir::S2c, false) => "<-",
                (Dir::C2s, true) => "~>",
                (Dir::S2c, true) => "<~",
            };
            let latency = match &e.role {
                Role::Reply { latency_us, .. } => format!("  [{}]", human_micros(*latency_us)),
                _ => String::new(),
            };
            let head = format!("{} {:>3} {arrow} ", clock(m.t), m.conn);
            let room = width.saturating_sub(head.chars().count() + latency.chars().count());
            // An event reads better as its name and data than as its timestamp first.
            let text = match (m.kind, m.value()) {
                (Kind::Event, Some(v)) => format!(
                    "{} {}",
                    m.name.as_deref().unwrap_or("?"),
                    v.get("data").map_or_else(String::new, ToString::to_string)
                ),
                _ => message_text(m),
            };
            let text: String = text.chars().take(room).collect();
            Line::from(vec![
                Span::raw(head),
                Span::styled(text, palette.kind(m.kind)),
                Span::raw(latency),
            ])
        }
        Record::Open(o) => Line::styled(
            format!("{} {:>3} == opened", clock(o.t), o.conn),
            palette.fg(Color::Blue),
        ),
        Record::Close(c) => Line::styled(
            format!(
                "{} {:>3} == closed by {:?} ({})",
                clock(c.t),
                c.conn,
                c.by,
                c.reason
            )
            .to_lowercase(),
            palette.fg(Color::Blue),
        ),
        Record::Gap(g) => Line::styled(
            format!("{} --- {} records lost", clock(g.t), g.lost),
            palette.fg(Color::Red),
        ),
        Record::Header(_) => Line::raw(""),
    }
}

fn stream(frame: &mut Frame<'_>, area: Rect, app: &App, palette: Palette) {
    let [list, inspector] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
    let block = Block::bordered().title(format!(
        " messages {}/{} ",
        app.visible.len(),
        app.entries.len()
    ));
    let inner = block.inner(list);
    frame.render_widget(block, list);
    // Only the rows on screen are built, so a million messages draw as fast as a hundred.
    let height = inner.height as usize;
    let cursor = app.cursor();
    let start = cursor.map_or(0, |c| (c + 1).saturating_sub(height));
    let lines: Vec<Line<'_>> = app.visible[start..(start + height).min(app.visible.len())]
        .iter()
        .enumerate()
        .map(|(i, &index)| {
            let line = row_line(&app.entries[index], palette, inner.width as usize);
            if Some(start + i) == cursor && app.selected.is_some() {
                line.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                line
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
    inspect(frame, inspector, app, palette);
}

fn pretty(e: &Entry) -> String {
    match &e.record {
        Record::Msg(m) => m
            .value()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| message_text(m)),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

fn inspect(frame: &mut Frame<'_>, area: Rect, app: &App, palette: Palette) {
    let block = Block::bordered().title(" inspector ");
    let Some(index) = app.current() else {
        frame.render_widget(Paragraph::new("nothing yet").block(block), area);
        return;
    };
    let e = &app.entries[index];
    let mut lines: Vec<Line<'_>> = Vec::new();
    let what = match (&e.record, &e.role) {
        (
            Record::Msg(m),
            Role::Reply {
                command,
                latency_us,
                ..
            },
        ) => format!(
            "line {} · conn {} · seq {} · reply to {} in {}",
            e.line,
            m.conn,
            m.seq,
            command.as_deref().unwrap_or("?"),
            human_micros(*latency_us)
        ),
        (Record::Msg(m), _) => format!(
            "line {} · conn {} · seq {} · {:?}{}",
            e.line,
            m.conn,
            m.seq,
            m.kind,
            m.name.as_deref().map_or(String::new(), |n| format!(" {n}"))
        )
        .to_lowercase(),
        (_, _) => format!("line {}", e.line),
    };
    lines.push(Line::styled(
        what,
        Style::default().add_modifier(Modifier::BOLD),
    ));
    lines.extend(pretty(e).lines().map(|l| Line::raw(l.to_owned())));
    if let Some(p) = e.pair.map(|p| &app.entries[p]) {
        let label = if matches!(e.role, Role::Request) {
            format!("reply (line {})", p.line)
        } else {
            format!("request (line {})", p.line)
        };
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            label,
            Style::default().add_modifier(Modifier::BOLD),
        ));
        lines.extend(pretty(p).lines().map(|l| Line::raw(l.to_owned())));
    }
    let findings: Vec<_> = [Some(e.line), e.pair.map(|p| app.entries[p].line)]
        .into_iter()
        .flatten()
        .filter_map(|line| app.findings.get(&line))
        .flatten()
        .collect();
    if !findings.is_empty() || app.schema.is_some() {
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            format!(
                "schema findings ({})",
                app.schema.as_deref().unwrap_or("no schema")
            ),
            Style::default().add_modifier(Modifier::BOLD),
        ));
        if findings.is_empty() {
            lines.push(Line::styled("none", palette.fg(Color::Green)));
        }
        for f in findings {
            lines.push(Line::styled(
                format!(
                    "line {} {:?} {}: {} at {}: expected {}, found {}",
                    f.line,
                    f.severity,
                    f.rule,
                    f.name.as_deref().unwrap_or(""),
                    if f.path.is_empty() {
                        "(message)"
                    } else {
                        &f.path
                    },
                    f.expected,
                    f.found
                ),
                palette.fg(Color::Red),
            ));
        }
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"))
}

fn bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), human_bytes)
}

fn migration(frame: &mut Frame<'_>, area: Rect, app: &App, palette: Palette) {
    let runs = app.analyser.migration.runs();
    let Some(run) = runs.last() else {
        frame.render_widget(
            Paragraph::new(
                "no migration seen yet (poll query-migrate, or turn the events capability on)",
            )
            .block(Block::bordered().title(" migration ")),
            area,
        );
        return;
    };
    let [facts, gauge, throughput, dirty] = Layout::vertical([
        Constraint::Length(10),
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Min(4),
    ])
    .areas(area);
    let latest = run.latest();
    let status = run.status().unwrap_or("unknown");
    let status_style = match status {
        "completed" => palette.fg(Color::Green),
        "failed" | "cancelled" => palette.fg(Color::Red),
        _ => palette.fg(Color::Yellow),
    }
    .add_modifier(Modifier::BOLD);
    let mut lines = vec![
        Line::from(vec![
            Span::raw("status          "),
            Span::styled(status.to_owned(), status_style),
            Span::raw(format!("   (migration {} of {})", runs.len(), runs.len())),
        ]),
        Line::raw(format!("passes          {}", run.pass_count())),
        Line::raw(format!(
            "transferred     {}   remaining {}   of {}",
            bytes(latest.and_then(|s| s.transferred)),
            bytes(latest.and_then(|s| s.remaining)),
            bytes(latest.and_then(|s| s.total))
        )),
        Line::raw(format!(
            "throughput      {}   dirty rate {} pages/s",
            latest
                .and_then(|s| s.mbps)
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.2} Mbit/s")),
            latest
                .and_then(|s| s.dirty_pages_rate)
                .map_or_else(|| "-".to_owned(), |d| d.to_string())
        )),
        Line::raw(format!(
            "expected downtime {}   setup {}   total {}   downtime {}",
            ms(latest.and_then(|s| s.expected_downtime_ms)),
            ms(latest.and_then(|s| s.setup_time_ms)),
            ms(latest.and_then(|s| s.total_time_ms)),
            ms(latest.and_then(|s| s.downtime_ms))
        )),
    ];
    if let Some(stall) = run.stall() {
        lines.push(Line::styled(
            format!(
                "STALLED: remaining has not fallen below {} for {} polls (since line {})",
                human_bytes(stall.remaining),
                stall.polls,
                stall.since_line
            ),
            palette.fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    for w in run
        .warnings()
        .into_iter()
        .filter(|w| !w.starts_with("stalled"))
    {
        lines.push(Line::styled(w, palette.fg(Color::Yellow)));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" migration "))
            .wrap(Wrap { trim: false }),
        facts,
    );
    frame.render_widget(
        Gauge::default()
            .block(Block::bordered().title(" RAM sent (1 - remaining / total) "))
            .gauge_style(palette.fg(Color::Cyan))
            .ratio(progress(run))
            .label(format!("{:.0}%", progress(run) * 100.0)),
        gauge,
    );
    let mbps: Vec<u64> = run
        .samples
        .iter()
        .filter_map(|s| s.mbps)
        .map(|m| (m * 100.0) as u64)
        .collect();
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(" throughput (Mbit/s) "))
            .style(palette.fg(Color::Green))
            .data(&mbps),
        throughput,
    );
    let rate: Vec<u64> = run
        .samples
        .iter()
        .filter_map(|s| s.dirty_pages_rate)
        .collect();
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(" dirty pages/s "))
            .style(palette.fg(Color::Yellow))
            .data(&rate),
        dirty,
    );
}

/// How far the migration has come, 0 to 1: complete when completed, else the share of RAM
/// not remaining.
pub fn progress(run: &Run) -> f64 {
    if run.status() == Some("completed") {
        return 1.0;
    }
    run.latest()
        .and_then(|s| Some((s.remaining?, s.total?)))
        .filter(|(_, total)| *total > 0)
        .map_or(0.0, |(remaining, total)| {
            (1.0 - remaining as f64 / total as f64).clamp(0.0, 1.0)
        })
}

fn bar(fraction: f64, width: usize) -> String {
    let full = (fraction * width as f64).round() as usize;
    format!(
        "{}{} {:>3.0}%",
        "█".repeat(full.min(width)),
        "░".repeat(width.saturating_sub(full)),
        fraction * 100.0
    )
}

fn jobs(frame: &mut Frame<'_>, area: Rect, app: &App, palette: Palette) {
    let now = app.analyser.end().unwrap_or_else(Time::now);
    let rows: Vec<Row<'_>> = app
        .analyser
        .jobs
        .jobs()
        .iter()
        .map(|j| {
            let state = j.status().unwrap_or("?").to_owned();
            let in_state = j
                .since()
                .map_or_else(String::new, |s| human_micros(now.micros_since(s)));
            let error = j.error.clone().unwrap_or_default();
            let illegal = j
                .illegal
                .last()
                .map_or_else(String::new, |i| format!(" illegal {}->{}", i.from, i.to));
            Row::new(vec![
                Cell::from(j.id.clone()),
                Cell::from(j.job_type.clone().unwrap_or_default()),
                Cell::from(state),
                Cell::from(j.fraction().map_or_else(String::new, |f| bar(f, 20))),
                Cell::from(if j.finished() {
                    String::new()
                } else {
                    in_state
                }),
                Cell::from(format!("{error}{illegal}")).style(palette.fg(Color::Red)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(26),
            Constraint::Length(12),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(["job", "type", "state", "progress", "in state", "error"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(" jobs "));
    frame.render_widget(table, area);
}

fn stats(frame: &mut Frame<'_>, area: Rect, app: &App, palette: Palette) {
    let [by_count, by_latency] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let rows = app.analyser.stats.command_rows();
    let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| human_micros(v as i64));
    let to_row = |r: &qmptap::analyse::stats::CommandRow| {
        Row::new(vec![
            Cell::from(r.command.clone()),
            Cell::from(r.count.to_string()),
            Cell::from(r.errors.to_string()).style(if r.errors > 0 {
                palette.fg(Color::Red)
            } else {
                Style::default()
            }),
            Cell::from(us(r.p50_us)),
            Cell::from(us(r.p95_us)),
            Cell::from(us(r.max_us)),
        ])
    };
    let widths = [
        Constraint::Min(24),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    let header = Row::new(["command", "count", "errors", "p50", "p95", "max"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    frame.render_widget(
        Table::new(rows.iter().map(to_row), widths)
            .header(header.clone())
            .block(Block::bordered().title(" top commands by count ")),
        by_count,
    );
    let mut slow = rows.clone();
    slow.sort_by_key(|r| std::cmp::Reverse(r.p95_us));
    frame.render_widget(
        Table::new(slow.iter().map(to_row), widths)
            .header(header)
            .block(Block::bordered().title(" slowest commands (p95) ")),
        by_latency,
    );
}

fn help(frame: &mut Frame<'_>, area: Rect) {
    let width = 86.min(area.width);
    let height = (KEYS.len() as u16 + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    let lines: Vec<Line<'_>> = KEYS
        .iter()
        .map(|(k, what)| Line::raw(format!("{k:<14} {what}")))
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        popup,
    );
}
