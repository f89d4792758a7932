//! `qmptap stats`, `jobs`, `migration` and `export`: the analysis models, as tables for
//! people or JSON for machines.

use std::io::{IsTerminal as _, Write};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use qmptap::analyse::jobs::Outcome;
use qmptap::analyse::migration::{Convergence, Run};
use qmptap::analyse::tables::{self, Format as TableFormat, Table};
use qmptap::analyse::{Analyser, Options, analyse_file, human_bytes, human_micros, stats};
use qmptap::capture::{Peer, Time};

use crate::args::{
    ExportArgs, ExportFormat, ExportTable, Global, JobsArgs, MigrationArgs, StatsArgs,
};

/// A table for people: a header and rows, columns padded; numeric columns right-aligned.
struct TextTable {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Option<&'static str>)>>,
}

impl TextTable {
    /// Columns named `headers`; a name starting with `>` is right-aligned.
    fn new(headers: &[&'static str]) -> Self {
        TextTable {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of cells, each with an optional ANSI colour.
    fn row(&mut self, cells: Vec<(String, Option<&'static str>)>) {
        self.rows.push(cells);
    }

    fn print(&self, out: &mut impl Write, indent: &str, color: bool) -> std::io::Result<()> {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.0.chars().count()))
                .chain([self.headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let pad = |text: &str, i: usize| {
            let fill = " ".repeat(widths[i].saturating_sub(text.chars().count()));
            if self.right[i] {
                format!("{fill}{text}")
            } else {
                format!("{text}{fill}")
            }
        };
        let header: Vec<String> = (0..self.headers.len())
            .map(|i| pad(self.headers[i], i))
            .collect();
        writeln!(
            out,
            "{indent}{}",
            super::paint(color, "1", header.join("  ").trim_end())
        )?;
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, (text, code))| {
                    let padded = pad(text, i);
                    match code {
                        Some(code) => super::paint(color, code, &padded),
                        None => padded,
                    }
                })
                .collect();
            writeln!(out, "{indent}{}", cells.join("  ").trim_end())?;
        }
        Ok(())
    }
}

fn plain(text: impl Into<String>) -> (String, Option<&'static str>) {
    (text.into(), None)
}

fn micros_opt(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |us| human_micros(us as i64))
}

fn peer(p: Option<&Peer>) -> String {
    let Some(p) = p else { return "-".to_owned() };
    if let Some(addr) = &p.addr {
        return addr.clone();
    }
    match (p.pid, p.uid) {
        (Some(pid), Some(uid)) => format!("pid {pid} uid {uid}"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "-".to_owned(),
    }
}

/// Analyses one capture, showing progress on stderr when it is a terminal.
fn analyse(path: &std::path::Path, options: &Options, quiet: bool) -> Result<Analyser> {
    let show = !quiet && std::io::stderr().is_terminal();
    let name = path.display().to_string();
    let mut progress = |done: u64, total: u64| {
        if show && total > 0 {
            eprint!(
                "\r{name}: {:3}% ({} of {})",
                done * 100 / total,
                human_bytes(done),
                human_bytes(total)
            );
        }
    };
    let analyser = analyse_file(path, options, &mut progress)
        .with_context(|| format!("analysing '{name}'"))?;
    if show {
        eprint!("\r\x1b[K");
    }
    Ok(analyser)
}

pub fn stats(args: &StatsArgs, global: &Global) -> Result<ExitCode> {
    let mut captures = Vec::new();
    for path in &args.captures {
        let options = Options {
            models: false,
            ..Options::default()
        };
        let a = analyse(path, &options, global.quiet)?;
        captures.push((path.display().to_string(), a.stats));
    }
    let mut report = stats::Report::new(captures);
    if args.top > 0 {
        report.commands.truncate(args.top);
    }
    super::emit(&report, args.format, global.color, true, print_stats)
}

fn print_stats(out: &mut impl Write, r: &stats::Report, color: bool) -> std::io::Result<()> {
    let span = r.span.map_or_else(String::new, |(a, b)| {
        format!(", {a} .. {b} ({})", human_micros(b.micros_since(a)))
    });
    writeln!(
        out,
        "{}: {} connections, {} messages{span}",
        r.captures.join(", "),
        r.connections.len(),
        r.messages
    )?;
    let mut extra = Vec::new();
    if r.invalid > 0 {
        extra.push(format!("{} invalid client frames", r.invalid));
    }
    if r.unpaired_replies > 0 {
        extra.push(format!("{} replies to nothing", r.unpaired_replies));
    }
    if r.proxy_messages > 0 {
        extra.push(format!(
            "{} messages of qmptap's own polls left out",
            r.proxy_messages
        ));
    }
    if r.lost > 0 {
        extra.push(format!("{} records lost while recording", r.lost));
    }
    if !extra.is_empty() {
        writeln!(out, "{}", super::paint(color, "33", &extra.join(", ")))?;
    }
    writeln!(out)?;
    let mut t = TextTable::new(&[
        "command",
        ">count",
        ">errors",
        ">p50",
        ">p95",
        ">p99",
        ">max",
        "error classes",
    ]);
    for c in &r.commands {
        let classes: Vec<String> = c
            .error_classes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        t.row(vec![
            plain(c.command.clone()),
            plain(c.count.to_string()),
            (c.errors.to_string(), (c.errors > 0).then_some("31")),
            plain(micros_opt(c.p50_us)),
            plain(micros_opt(c.p95_us)),
            plain(micros_opt(c.p99_us)),
            plain(micros_opt(c.max_us)),
            plain(classes.join(", ")),
        ]);
    }
    t.print(out, "", color)?;
    if !r.events.is_empty() {
        writeln!(out)?;
        let mut t = TextTable::new(&["event", ">count"]);
        for (name, n) in &r.events {
            t.row(vec![plain(name.clone()), plain(n.to_string())]);
        }
        t.print(out, "", color)?;
    }
    writeln!(out)?;
    let mut t = TextTable::new(&[
        "capture",
        ">conn",
        "peer",
        ">duration",
        ">msgs c2s",
        ">s2c",
        ">bytes c2s",
        ">s2c",
        "closed",
    ]);
    for c in &r.connections {
        let s = &c.stats;
        t.row(vec![
            plain(c.capture.clone()),
            plain(s.conn.to_string()),
            plain(peer(s.peer.as_ref())),
            plain(c.duration_us.map_or_else(|| "-".into(), human_micros)),
            plain(s.c2s.to_string()),
            plain(s.s2c.to_string()),
            plain(s.c2s_bytes.to_string()),
            plain(s.s2c_bytes.to_string()),
            plain(s.closed_by.as_ref().map_or_else(
                || "open".into(),
                |(by, why)| format!("by {by:?} ({why})").to_lowercase(),
            )),
        ]);
    }
    t.print(out, "", color)
}

/// A state (or status) a job or migration entered.
struct Entered<'a> {
    status: &'a str,
    at: Time,
    line: u64,
    source: &'static str,
    illegal: bool,
}

/// The states entered, each with its time in state: the last one "(current)" unless the
/// timeline is finished.
fn timeline(
    out: &mut impl Write,
    what: &'static str,
    entries: &[Entered<'_>],
    finished: bool,
    color: bool,
) -> std::io::Result<()> {
    let times: Vec<Time> = entries.iter().map(|e| e.at).collect();
    let spent = qmptap::analyse::durations(&times, finished, Time::now());
    let heading = if what == "state" {
        ">time in state"
    } else {
        ">time in status"
    };
    let mut t = TextTable::new(&[what, "entered", ">line", heading, "from"]);
    for (i, (e, us)) in entries.iter().zip(spent).enumerate() {
        let current = i + 1 == entries.len() && !finished;
        t.row(vec![
            (e.status.to_owned(), e.illegal.then_some("31")),
            plain(e.at.to_string()),
            plain(e.line.to_string()),
            plain(if current {
                "(current)".to_owned()
            } else {
                human_micros(us)
            }),
            plain(e.source),
        ]);
    }
    t.print(out, "  ", color)
}

/// Prints one block per item, a blank line apart, or says there is none.
fn blocks<W: Write, T>(
    out: &mut W,
    items: &[T],
    what: &str,
    capture: &std::path::Path,
    mut print: impl FnMut(&mut W, usize, &T) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if items.is_empty() {
        return writeln!(out, "{}: no {what}", capture.display());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        print(out, i, item)?;
    }
    Ok(())
}

fn end_of(a: &Analyser) -> Time {
    a.end().unwrap_or_else(Time::now)
}

pub fn jobs(args: &JobsArgs, global: &Global) -> Result<ExitCode> {
    let a = analyse(&args.capture, &Options::default(), global.quiet)?;
    let report = a.jobs.report(end_of(&a));
    let clean = report
        .iter()
        .all(|j| j.job.illegal.is_empty() && j.outcome != Outcome::Failed);
    super::emit(
        &report,
        args.format,
        global.color,
        clean,
        |out, report, color| {
            blocks(out, report, "jobs", &args.capture, |out, _, j| {
                print_job(out, j, color)
            })
        },
    )
}

fn print_job(
    out: &mut impl Write,
    j: &qmptap::analyse::jobs::JobReport<'_>,
    color: bool,
) -> std::io::Result<()> {
    let job = j.job;
    let outcome = match j.outcome {
        Outcome::Unfinished => super::paint(color, "33", "unfinished"),
        Outcome::Completed => super::paint(color, "32", "completed"),
        Outcome::Cancelled => super::paint(color, "33", "cancelled"),
        Outcome::Failed => super::paint(color, "31", "failed"),
    };
    let started = job
        .started_by
        .as_ref()
        .map_or_else(String::new, |(c, line)| {
            format!(", started by {c} at line {line}")
        });
    writeln!(
        out,
        "{} {} ({}{started}, conn {}): {outcome}",
        super::paint(color, "1", "job"),
        super::paint(color, "1", &job.id),
        job.job_type.as_deref().unwrap_or("type unknown"),
        job.conn,
    )?;
    let entries: Vec<Entered<'_>> = job
        .states
        .iter()
        .map(|s| Entered {
            status: &s.status,
            at: s.at,
            line: s.line,
            source: s.source.name(),
            illegal: job.illegal.iter().any(|il| il.line == s.line),
        })
        .collect();
    timeline(out, "state", &entries, job.finished(), color)?;
    let totals: Vec<String> = j
        .time_in_states
        .iter()
        .map(|(s, us)| format!("{s} {}", human_micros(*us)))
        .collect();
    writeln!(out, "  time per state: {}", totals.join(", "))?;
    if let Some(p) = job.progress.last() {
        writeln!(
            out,
            "  progress: {} samples, last {} of {}{}",
            job.progress.len(),
            p.current,
            p.total,
            job.fraction()
                .map_or_else(String::new, |f| format!(" ({:.0}%)", f * 100.0))
        )?;
    }
    for il in &job.illegal {
        writeln!(
            out,
            "  {}",
            super::paint(
                color,
                "31",
                &format!(
                    "illegal transition {} -> {} at line {} (not in QEMU's job state table)",
                    il.from, il.to, il.line
                )
            )
        )?;
    }
    if let Some(e) = &job.error {
        writeln!(
            out,
            "  {}",
            super::paint(color, "31", &format!("error: {e}"))
        )?;
    }
    Ok(())
}

pub fn migration(args: &MigrationArgs, global: &Global) -> Result<ExitCode> {
    let options = Options {
        stall_polls: args.stall_polls,
        ..Options::default()
    };
    let a = analyse(&args.capture, &options, global.quiet)?;
    let report = a.migration.report(end_of(&a));
    let clean = report.iter().all(|r| {
        matches!(
            r.convergence,
            Convergence::Completed | Convergence::Converging | Convergence::Unknown
        )
    });
    let chart = (!args.no_chart).then_some(args.chart);
    super::emit(
        &report,
        args.format,
        global.color,
        clean,
        |out, report, color| {
            blocks(out, report, "migration", &args.capture, |out, i, r| {
                print_run(out, i + 1, r, chart, color)
            })
        },
    )
}

fn print_run(
    out: &mut impl Write,
    n: usize,
    r: &qmptap::analyse::migration::RunReport<'_>,
    chart: Option<(u16, u16)>,
    color: bool,
) -> std::io::Result<()> {
    let run = r.run;
    let status = r.status.unwrap_or("unknown");
    let status = match status {
        "completed" => super::paint(color, "32", status),
        "failed" | "cancelled" => super::paint(color, "31", status),
        other => super::paint(color, "33", other),
    };
    let started = run
        .started
        .as_ref()
        .map_or_else(String::new, |(c, t, line)| {
            format!(" ({c} at line {line}, {t})")
        });
    let convergence = match r.convergence {
        Convergence::Converging => ", converging",
        Convergence::Stalled => ", stalled",
        _ => "",
    };
    writeln!(
        out,
        "{}{started}: {status}{convergence}",
        super::paint(color, "1", &format!("migration {n}")),
    )?;
    let entries: Vec<Entered<'_>> = run
        .transitions
        .iter()
        .map(|t| Entered {
            status: &t.status,
            at: t.at,
            line: t.line,
            source: t.source.name(),
            illegal: false,
        })
        .collect();
    timeline(out, "status", &entries, run.finished(), color)?;
    writeln!(
        out,
        "  passes: {}   polls: {}",
        r.pass_count,
        run.samples.len()
    )?;
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
    let bytes = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), human_bytes);
    if let Some(f) = r.final_figures {
        writeln!(
            out,
            "  final (QEMU's, line {}): setup {}, downtime {}, total {}, transferred {} of {}, {}",
            f.line,
            ms(f.setup_time_ms),
            ms(f.downtime_ms),
            ms(f.total_time_ms),
            bytes(f.transferred),
            bytes(f.total),
            f.mbps
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.2} Mbit/s"))
        )?;
    } else if let Some(s) = run.latest() {
        writeln!(
            out,
            "  latest (line {}): transferred {}, remaining {} of {}, expected downtime {}",
            s.line,
            bytes(s.transferred),
            bytes(s.remaining),
            bytes(s.total),
            ms(s.expected_downtime_ms)
        )?;
    }
    if let Some(e) = run
        .samples
        .iter()
        .rev()
        .find_map(|s| s.error_desc.as_deref())
    {
        writeln!(
            out,
            "  {}",
            super::paint(color, "31", &format!("error: {e}"))
        )?;
    }
    for w in &r.warnings {
        writeln!(
            out,
            "  {}",
            super::paint(color, "33", &format!("warning: {w}"))
        )?;
    }
    if let Some((cols, rows)) = chart {
        if run
            .samples
            .iter()
            .filter(|s| s.transferred.is_some())
            .count()
            >= 2
        {
            writeln!(out)?;
            for line in chart_lines(run, cols, rows, color) {
                writeln!(out, "  {line}")?;
            }
        }
    }
    Ok(())
}

/// Transferred and remaining (MiB) against seconds since the first poll, drawn by ratatui's
/// chart widget into a buffer and printed.
fn chart_lines(run: &Run, cols: u16, rows: u16, color: bool) -> Vec<String> {
    use ratatui::buffer::Buffer;
    use ratatui::layout::{Constraint, Rect};
    use ratatui::style::{Color, Style};
    use ratatui::symbols::Marker;
    use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Widget as _};

    let Some(first) = run.samples.first().map(|s| s.at) else {
        return Vec::new();
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let series = |f: fn(&qmptap::analyse::migration::Sample) -> Option<u64>| -> Vec<(f64, f64)> {
        run.samples
            .iter()
            .filter_map(|s| Some((s.at.micros_since(first) as f64 / 1e6, mib(f(s)?))))
            .collect()
    };
    let transferred = series(|s| s.transferred);
    let remaining = series(|s| s.remaining);
    let x_max = transferred
        .iter()
        .chain(&remaining)
        .map(|p| p.0)
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let y_max = transferred
        .iter()
        .chain(&remaining)
        .map(|p| p.1)
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let chart = Chart::new(vec![
        Dataset::default()
            .name("⠤⠤ transferred (MiB)")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Cyan))
            .data(&transferred),
        Dataset::default()
            .name("•• remaining (MiB)")
            .marker(Marker::Dot)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Yellow))
            .data(&remaining),
    ])
    .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
    .x_axis(
        Axis::default()
            .title("seconds")
            .bounds([0.0, x_max])
            .labels([
                "0".to_owned(),
                format!("{:.1}", x_max / 2.0),
                format!("{x_max:.1}"),
            ]),
    )
    .y_axis(Axis::default().bounds([0.0, y_max]).labels([
        "0".to_owned(),
        format!("{:.1}", y_max / 2.0),
        format!("{y_max:.1}"),
    ]));
    let area = Rect::new(0, 0, cols, rows);
    let mut buf = Buffer::empty(area);
    chart.render(area, &mut buf);
    (0..rows)
        .map(|y| {
            let mut line = String::new();
            for x in 0..cols {
                let Some(cell) = buf.cell((x, y)) else {
                    continue;
                };
                let code = match cell.fg {
                    Color::Cyan => Some("36"),
                    Color::Yellow => Some("33"),
                    _ => None,
                };
                match code {
                    Some(code) if color => line.push_str(&super::paint(true, code, cell.symbol())),
                    _ => line.push_str(cell.symbol()),
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

pub fn export(args: &ExportArgs) -> Result<ExitCode> {
    let table = match args.table {
        ExportTable::Transactions => Table::Transactions,
        ExportTable::Events => Table::Events,
        ExportTable::Jobs => Table::Jobs,
        ExportTable::Migration => Table::Migration,
    };
    let format = match args.format {
        ExportFormat::Csv => TableFormat::Csv,
        ExportFormat::Parquet => TableFormat::Parquet,
        ExportFormat::Ndjson => TableFormat::Ndjson,
    };
    let rows = if let Some(path) = &args.output {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating '{}'", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let rows = tables::export(&args.captures, table, format, &mut out)?;
        out.flush()
            .with_context(|| format!("writing '{}'", path.display()))?;
        rows
    } else {
        if format == TableFormat::Parquet && std::io::stdout().is_terminal() {
            bail!("Parquet is binary: give -o FILE or redirect standard output");
        }
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let rows = tables::export(&args.captures, table, format, &mut out)?;
        out.flush()?;
        rows
    };
    tracing::info!(rows, table = table.name(), "exported");
    Ok(ExitCode::SUCCESS)
}
