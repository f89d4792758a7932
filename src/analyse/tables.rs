//! The analysis as polars `DataFrame`s, and their export (CSV, Parquet, NDJSON), so DuckDB,
//! Spark or polars can query the captures of a whole fleet.
//!
//! - `transactions`: a row per client frame that expects a reply;
//! - `events`: a row per event, its `data` flattened into `data.*` columns;
//! - `jobs`: a timeline per job, a row per state entered (`record = "state"`) and per
//!   progress sample (`record = "progress"`);
//! - `migration`: a timeline per run, a row per status (`"status"`), pass (`"pass"`) and
//!   `query-migrate` sample (`"sample"`).
//!
//! Times are UTC, in microseconds (polars `Datetime[μs]`); durations are integer
//! microseconds or QEMU's own milliseconds, as the column name says.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use polars::prelude::*;
use serde_json::Value;

use super::{ErrorHead, Observed, jobs::JobBoard, migration::Migration};
use crate::capture::{Dir, Record, Time};
use crate::session::Role;
use crate::wire::Kind;

/// Errors building or writing a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// polars refused the data.
    #[error("building the {table} table: {source}")]
    Polars {
        /// Which table.
        table: &'static str,
        /// Why.
        source: PolarsError,
    },
    /// The rows were not kept (the analyser ran with `keep_rows` off).
    #[error("the {0} table needs the rows kept (Options::keep_rows)")]
    NoRows(&'static str),
}

/// The tables by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Commands and their replies.
    Transactions,
    /// Events.
    Events,
    /// Job states and progress.
    Jobs,
    /// Migration statuses, passes and samples.
    Migration,
}

impl Table {
    /// Every table, in documentation order.
    pub const ALL: [Table; 4] = [
        Table::Transactions,
        Table::Events,
        Table::Jobs,
        Table::Migration,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Table::Transactions => "transactions",
            Table::Events => "events",
            Table::Jobs => "jobs",
            Table::Migration => "migration",
        }
    }
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated, with a header line.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// One JSON object per line.
    Ndjson,
}

/// One transaction, while its reply may still come.
#[derive(Debug, Clone)]
struct TxRow {
    line: u64,
    conn: u64,
    seq: u64,
    command: Option<String>,
    id: Option<String>,
    oob: bool,
    proxy: bool,
    sent: Time,
    sent_bytes: u64,
    replied: Option<Time>,
    latency_us: Option<i64>,
    outcome: &'static str,
    error_class: Option<String>,
    received_bytes: Option<u64>,
}

/// One event.
#[derive(Debug, Clone)]
struct EventRow {
    line: u64,
    conn: u64,
    name: String,
    time: Time,
    relayed: Time,
    data: Option<Value>,
}

/// The rows of the transactions and events tables, kept as the capture streams past.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    transactions: Vec<TxRow>,
    /// Transactions awaiting a reply: `(conn, seq) -> index`.
    waiting: HashMap<(u64, u64), usize>,
    events: Vec<EventRow>,
}

/// The length of a message on the wire (its exact bytes when recorded apart, else its JSON).
fn wire_len(m: &crate::capture::Msg) -> u64 {
    if let Some(t) = &m.text {
        return t.len() as u64;
    }
    if m.bytes_b64.is_some() {
        return m.raw_bytes().len() as u64;
    }
    m.json.as_ref().map_or(0, |j| j.get().len() as u64)
}

impl Rows {
    /// Reads a record that is not a message (a closed connection ends its waits).
    pub(super) fn observe_other(&mut self, record: &Record) {
        if let Record::Close(c) = record {
            self.waiting.retain(|(conn, _), _| *conn != c.conn);
        }
    }

    /// Reads one message.
    pub(super) fn observe_msg(&mut self, o: &Observed<'_>) {
        let m = o.msg;
        match (m.dir, o.role) {
            (Dir::C2s, Role::Request) => {
                let id = o.value.and_then(|v| v.get("id")).map(Value::to_string);
                let oob = o.value.is_some_and(|v| v.get("exec-oob").is_some());
                self.waiting
                    .insert((m.conn, m.seq), self.transactions.len());
                self.transactions.push(TxRow {
                    line: o.line,
                    conn: m.conn,
                    seq: m.seq,
                    command: m.name.clone(),
                    id,
                    oob,
                    proxy: m.is_proxy(),
                    sent: m.t,
                    sent_bytes: wire_len(m),
                    replied: None,
                    latency_us: None,
                    outcome: "unanswered",
                    error_class: None,
                    received_bytes: None,
                });
            }
            (
                Dir::S2c,
                Role::Reply {
                    request_seq,
                    latency_us,
                    ..
                },
            ) => {
                if let Some(i) = self.waiting.remove(&(m.conn, *request_seq)) {
                    let row = &mut self.transactions[i];
                    row.replied = Some(m.t);
                    row.latency_us = Some(*latency_us);
                    row.received_bytes = Some(wire_len(m));
                    if m.kind == Kind::Error {
                        row.outcome = "error";
                        row.error_class = m.json.as_deref().and_then(ErrorHead::class_of);
                    } else {
                        row.outcome = "ok";
                    }
                }
            }
            (Dir::S2c, _) if m.kind == Kind::Event => self.events.push(EventRow {
                line: o.line,
                conn: m.conn,
                name: m.name.clone().unwrap_or_default(),
                time: o.at,
                relayed: m.t,
                data: o.value.and_then(|v| v.get("data")).cloned(),
            }),
            _ => {}
        }
    }
}

fn micros(t: Time) -> i64 {
    t.0.timestamp_micros()
}

fn time_column(name: &str, values: Vec<Option<i64>>) -> Column {
    Series::new(name.into(), values)
        .into_datetime(TimeUnit::Microseconds, None)
        .into_column()
}

fn col<T, P>(name: &str, values: T) -> Column
where
    Series: NamedFrom<T, P>,
    P: ?Sized,
{
    Series::new(name.into(), values).into_column()
}

fn frame(table: &'static str, columns: Vec<Column>) -> Result<DataFrame, TableError> {
    DataFrame::new_infer_height(columns).map_err(|source| TableError::Polars { table, source })
}

/// The transactions table.
pub fn transactions(rows: &Rows) -> Result<DataFrame, TableError> {
    let t = &rows.transactions;
    frame(
        "transactions",
        vec![
            col("line", t.iter().map(|r| r.line).collect::<Vec<_>>()),
            col("conn", t.iter().map(|r| r.conn).collect::<Vec<_>>()),
            col("seq", t.iter().map(|r| r.seq).collect::<Vec<_>>()),
            col(
                "command",
                t.iter().map(|r| r.command.clone()).collect::<Vec<_>>(),
            ),
            col("id", t.iter().map(|r| r.id.clone()).collect::<Vec<_>>()),
            col("oob", t.iter().map(|r| r.oob).collect::<Vec<_>>()),
            col(
                "origin",
                t.iter()
                    .map(|r| if r.proxy { "proxy" } else { "client" })
                    .collect::<Vec<_>>(),
            ),
            time_column("sent", t.iter().map(|r| Some(micros(r.sent))).collect()),
            time_column("replied", t.iter().map(|r| r.replied.map(micros)).collect()),
            col(
                "latency_us",
                t.iter().map(|r| r.latency_us).collect::<Vec<_>>(),
            ),
            col("outcome", t.iter().map(|r| r.outcome).collect::<Vec<_>>()),
            col(
                "error_class",
                t.iter().map(|r| r.error_class.clone()).collect::<Vec<_>>(),
            ),
            col(
                "bytes_sent",
                t.iter().map(|r| r.sent_bytes).collect::<Vec<_>>(),
            ),
            col(
                "bytes_received",
                t.iter().map(|r| r.received_bytes).collect::<Vec<_>>(),
            ),
        ],
    )
}

/// Flattens an event's `data` into `data.a.b` paths (objects only; arrays stay JSON).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        v => out.push((prefix.to_owned(), v.clone())),
    }
}

/// A column from JSON scalars: integers, floats, booleans or strings, whichever all the
/// non-null values are (anything mixed or structured becomes its JSON text).
fn json_column(name: &str, values: &[Option<&Value>]) -> Column {
    let present = || values.iter().flatten();
    if present().all(|v| v.is_i64()) {
        col(
            name,
            values
                .iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Vec<_>>(),
        )
    } else if present().all(|v| v.is_u64()) {
        col(
            name,
            values
                .iter()
                .map(|v| v.and_then(Value::as_u64))
                .collect::<Vec<_>>(),
        )
    } else if present().all(|v| v.is_number()) {
        col(
            name,
            values
                .iter()
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Vec<_>>(),
        )
    } else if present().all(|v| v.is_boolean()) {
        col(
            name,
            values
                .iter()
                .map(|v| v.and_then(Value::as_bool))
                .collect::<Vec<_>>(),
        )
    } else {
        col(
            name,
            values
                .iter()
                .map(|v| {
                    v.map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                })
                .collect::<Vec<_>>(),
        )
    }
}

/// The events table.
pub fn events(rows: &Rows) -> Result<DataFrame, TableError> {
    let e = &rows.events;
    let flat: Vec<Vec<(String, Value)>> = e
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            if let Some(d) = &r.data {
                flatten("data", d, &mut out);
            }
            out
        })
        .collect();
    let keys: BTreeSet<&str> = flat
        .iter()
        .flat_map(|row| row.iter().map(|(k, _)| k.as_str()))
        .collect();
    let mut columns = vec![
        col("line", e.iter().map(|r| r.line).collect::<Vec<_>>()),
        col("conn", e.iter().map(|r| r.conn).collect::<Vec<_>>()),
        col("name", e.iter().map(|r| r.name.clone()).collect::<Vec<_>>()),
        time_column("time", e.iter().map(|r| Some(micros(r.time))).collect()),
        time_column(
            "relayed",
            e.iter().map(|r| Some(micros(r.relayed))).collect(),
        ),
        col(
            "data",
            e.iter()
                .map(|r| r.data.as_ref().map(Value::to_string))
                .collect::<Vec<_>>(),
        ),
    ];
    for key in keys {
        let values: Vec<Option<&Value>> = flat
            .iter()
            .map(|row| row.iter().find(|(k, _)| k == key).map(|(_, v)| v))
            .collect();
        columns.push(json_column(key, &values));
    }
    frame("events", columns)
}

/// The jobs table: per job, a row per state entered and per progress sample, in time order.
pub fn jobs(board: &JobBoard, now: Time) -> Result<DataFrame, TableError> {
    struct Row<'a> {
        job: &'a super::jobs::Job,
        record: &'static str,
        time: Time,
        line: u64,
        status: Option<&'a str>,
        spent_us: Option<i64>,
        legal: Option<bool>,
        source: Option<&'static str>,
        current: Option<u64>,
        total: Option<u64>,
    }
    let mut rows = Vec::new();
    for job in board.jobs() {
        let mut mine = Vec::new();
        let spent = job.durations(now);
        for (i, s) in job.states.iter().enumerate() {
            let legal = i
                .checked_sub(1)
                .map(|p| super::jobs::legal(&job.states[p].status, &s.status));
            mine.push(Row {
                job,
                record: "state",
                time: s.at,
                line: s.line,
                status: Some(&s.status),
                spent_us: Some(spent[i]),
                legal,
                source: Some(s.source.name()),
                current: None,
                total: None,
            });
        }
        for p in &job.progress {
            mine.push(Row {
                job,
                record: "progress",
                time: p.at,
                line: p.line,
                status: p.status.as_deref(),
                spent_us: None,
                legal: None,
                source: None,
                current: Some(p.current),
                total: Some(p.total),
            });
        }
        mine.sort_by_key(|r| (r.time, r.line));
        rows.extend(mine);
    }
    let outcome = |j: &super::jobs::Job| match j.outcome() {
        super::jobs::Outcome::Unfinished => "unfinished",
        super::jobs::Outcome::Completed => "completed",
        super::jobs::Outcome::Cancelled => "cancelled",
        super::jobs::Outcome::Failed => "failed",
    };
    frame(
        "jobs",
        vec![
            col(
                "job",
                rows.iter().map(|r| r.job.id.clone()).collect::<Vec<_>>(),
            ),
            col(
                "type",
                rows.iter()
                    .map(|r| r.job.job_type.clone())
                    .collect::<Vec<_>>(),
            ),
            col("conn", rows.iter().map(|r| r.job.conn).collect::<Vec<_>>()),
            col("record", rows.iter().map(|r| r.record).collect::<Vec<_>>()),
            time_column("time", rows.iter().map(|r| Some(micros(r.time))).collect()),
            col("line", rows.iter().map(|r| r.line).collect::<Vec<_>>()),
            col("status", rows.iter().map(|r| r.status).collect::<Vec<_>>()),
            col(
                "spent_us",
                rows.iter().map(|r| r.spent_us).collect::<Vec<_>>(),
            ),
            col("legal", rows.iter().map(|r| r.legal).collect::<Vec<_>>()),
            col("source", rows.iter().map(|r| r.source).collect::<Vec<_>>()),
            col(
                "current",
                rows.iter().map(|r| r.current).collect::<Vec<_>>(),
            ),
            col("total", rows.iter().map(|r| r.total).collect::<Vec<_>>()),
            col(
                "outcome",
                rows.iter().map(|r| outcome(r.job)).collect::<Vec<_>>(),
            ),
            col(
                "error",
                rows.iter().map(|r| r.job.error.clone()).collect::<Vec<_>>(),
            ),
        ],
    )
}

/// The migration table: per run, a row per status, pass and sample, in time order.
pub fn migration(model: &Migration) -> Result<DataFrame, TableError> {
    use super::migration::Sample;
    #[derive(Default)]
    struct Row<'a> {
        run: u64,
        record: &'static str,
        time: i64,
        line: u64,
        status: Option<&'a str>,
        source: Option<&'static str>,
        pass: Option<u64>,
        sample: Option<&'a Sample>,
        stalled: Option<bool>,
    }
    let mut rows: Vec<Row<'_>> = Vec::new();
    for (n, run) in model.runs().iter().enumerate() {
        let run_no = n as u64 + 1;
        let mut mine = Vec::new();
        for t in &run.transitions {
            mine.push(Row {
                run: run_no,
                record: "status",
                time: micros(t.at),
                line: t.line,
                status: Some(&t.status),
                source: Some(t.source.name()),
                ..Row::default()
            });
        }
        for (pass, at, line) in &run.passes {
            mine.push(Row {
                run: run_no,
                record: "pass",
                time: micros(*at),
                line: *line,
                pass: Some(*pass),
                ..Row::default()
            });
        }
        for s in &run.samples {
            let stalled = run
                .stalls
                .iter()
                .any(|st| st.since_line < s.line && (st.ongoing || s.line <= stall_end(run, st)));
            mine.push(Row {
                run: run_no,
                record: "sample",
                time: micros(s.at),
                line: s.line,
                status: s.status.as_deref(),
                sample: Some(s),
                stalled: Some(stalled),
                ..Row::default()
            });
        }
        mine.sort_by_key(|r| (r.time, r.line));
        rows.extend(mine);
    }
    let sample = |f: fn(&Sample) -> Option<u64>| {
        rows.iter()
            .map(|r| r.sample.and_then(f))
            .collect::<Vec<_>>()
    };
    frame(
        "migration",
        vec![
            col("run", rows.iter().map(|r| r.run).collect::<Vec<_>>()),
            col("record", rows.iter().map(|r| r.record).collect::<Vec<_>>()),
            time_column("time", rows.iter().map(|r| Some(r.time)).collect()),
            col("line", rows.iter().map(|r| r.line).collect::<Vec<_>>()),
            col("status", rows.iter().map(|r| r.status).collect::<Vec<_>>()),
            col("source", rows.iter().map(|r| r.source).collect::<Vec<_>>()),
            col("pass", rows.iter().map(|r| r.pass).collect::<Vec<_>>()),
            col("transferred", sample(|s| s.transferred)),
            col("remaining", sample(|s| s.remaining)),
            col("total", sample(|s| s.total)),
            col(
                "mbps",
                rows.iter()
                    .map(|r| r.sample.and_then(|s| s.mbps))
                    .collect::<Vec<_>>(),
            ),
            col("dirty_pages_rate", sample(|s| s.dirty_pages_rate)),
            col("dirty_sync_count", sample(|s| s.dirty_sync_count)),
            col("expected_downtime_ms", sample(|s| s.expected_downtime_ms)),
            col("setup_time_ms", sample(|s| s.setup_time_ms)),
            col("total_time_ms", sample(|s| s.total_time_ms)),
            col("downtime_ms", sample(|s| s.downtime_ms)),
            col(
                "stalled",
                rows.iter().map(|r| r.stalled).collect::<Vec<_>>(),
            ),
        ],
    )
}

/// The capture line of the last poll a finished stall covered.
fn stall_end(run: &super::migration::Run, stall: &super::migration::Stall) -> u64 {
    run.samples
        .iter()
        .filter(|s| s.line > stall.since_line)
        .take(stall.polls)
        .map(|s| s.line)
        .last()
        .unwrap_or(stall.since_line)
}

/// Writes a table.
pub fn write(
    df: &mut DataFrame,
    format: Format,
    out: &mut (impl Write + Send),
) -> Result<(), PolarsError> {
    match format {
        Format::Csv => CsvWriter::new(out).include_header(true).finish(df),
        Format::Parquet => ParquetWriter::new(out).finish(df).map(|_| ()),
        Format::Ndjson => JsonWriter::new(out)
            .with_json_format(JsonFormat::JsonLines)
            .finish(df),
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A capture could not be read.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// A table could not be built.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The output could not be written.
    #[error("writing the {table} table as {format:?}: {source}")]
    Write {
        /// Which table.
        table: &'static str,
        /// In what format.
        format: Format,
        /// Why.
        source: PolarsError,
    },
}

/// Builds `table` from each capture, prefixed with a `capture` column (the file name as
/// given) and stacked, and writes it. Returns the number of rows.
pub fn export(
    captures: &[std::path::PathBuf],
    table: Table,
    format: Format,
    out: &mut (impl Write + Send),
) -> Result<usize, ExportError> {
    let options = super::Options {
        keep_rows: true,
        ..super::Options::default()
    };
    let mut all: Option<DataFrame> = None;
    for path in captures {
        let analyser = super::analyse_file(path, &options, &mut |_, _| {})?;
        let mut df = analyser.table(table)?;
        let name = path.display().to_string();
        let polars = |source| TableError::Polars {
            table: table.name(),
            source,
        };
        df.insert_column(0, col("capture", vec![name; df.height()]))
            .map_err(polars)?;
        all = Some(match all {
            None => df,
            // Captures whose events carry different members get different columns: align
            // them by name, missing ones null.
            Some(acc) => polars::functions::concat_df_diagonal(&[acc, df]).map_err(polars)?,
        });
    }
    let mut df = all.unwrap_or_default();
    write(&mut df, format, out).map_err(|source| ExportError::Write {
        table: table.name(),
        format,
        source,
    })?;
    Ok(df.height())
}
