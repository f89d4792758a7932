//! Analysis: answers instead of transcripts. What was slow, what failed, how a block job went
//! through its states, how a migration converged.
//!
//! Everything here is incremental: an [`Analyser`] is fed one record at a time, so `stats`
//! streams captures of any size in bounded memory and the TUI updates the same models live.
//! Pairing comes from [`session::Tracker`](crate::session::Tracker), never re-done here.
//!
//! - [`stats`]: per command (count, errors, latency percentiles), per event, per connection;
//! - [`jobs`]: one [`jobs::Job`] per job, its states with entry times checked against
//!   QEMU's job state table, and its progress;
//! - [`migration`]: status transitions, per-poll `query-migrate` samples, passes, final
//!   figures, stall detection;
//! - [`tables`]: the polars `DataFrame`s (transactions, events, jobs, migration) and their
//!   export to CSV, Parquet and NDJSON.

pub mod jobs;
pub mod migration;
pub mod stats;
pub mod tables;

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::capture::{Msg, Record, Time};
use crate::session::{Role, Tracker};
use crate::wire::Kind;

/// Where a state (of a job, of a migration) was learnt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// An event (`JOB_STATUS_CHANGE`, `MIGRATION`).
    Event,
    /// A poll's reply (`query-jobs`, `query-migrate`).
    Poll,
}

impl Source {
    /// Its name in tables and reports.
    pub fn name(self) -> &'static str {
        match self {
            Source::Event => "event",
            Source::Poll => "poll",
        }
    }
}

/// How to analyse.
#[derive(Debug, Clone)]
pub struct Options {
    /// A migration counts as stalled when `remaining` has not fallen for this many polls.
    pub stall_polls: usize,
    /// Keep the rows of the transactions and events tables (memory grows with the capture;
    /// `stats` leaves this off).
    pub keep_rows: bool,
    /// Feed the jobs and migration models (they keep every state and sample, so memory grows
    /// with the jobs and migrations in the capture; `stats` turns them off).
    pub models: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            stall_polls: 5,
            keep_rows: false,
            models: true,
        }
    }
}

/// A server message, as the models see it: parsed once, with the time QEMU gave it.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// Capture line.
    pub line: u64,
    /// The record.
    pub msg: &'a Msg,
    /// Its role in the conversation.
    pub role: &'a Role,
    /// Its JSON (`None` for invalid frames).
    pub value: Option<&'a serde_json::Value>,
    /// For events, QEMU's own timestamp; otherwise when the proxy relayed it.
    pub at: Time,
    /// For events: an earlier connection already carried this very event (QEMU broadcasts
    /// events to every monitor). Models of the guest's state skip it; per-connection counts
    /// do not.
    pub duplicate: bool,
}

/// Feeds records to every model.
#[derive(Debug)]
pub struct Analyser {
    tracker: Tracker,
    /// Counters and latency histograms.
    pub stats: stats::Stats,
    /// Block and other jobs.
    pub jobs: jobs::JobBoard,
    /// Migration timeline.
    pub migration: migration::Migration,
    /// Table rows, when [`Options::keep_rows`] is set.
    pub rows: Option<tables::Rows>,
    recent_events: VecDeque<SeenEvent>,
    models: bool,
}

/// An event as seen on one connection: `(conn, name, QEMU timestamp, data)`.
type SeenEvent = (u64, String, Time, String);

/// How many recent events are remembered to recognise the same event on another connection.
const RECENT_EVENTS: usize = 64;

impl Analyser {
    /// An analyser with nothing seen.
    pub fn new(options: &Options) -> Self {
        Analyser {
            tracker: Tracker::new(),
            stats: stats::Stats::default(),
            jobs: jobs::JobBoard::default(),
            migration: migration::Migration::new(options.stall_polls),
            rows: options.keep_rows.then(tables::Rows::default),
            recent_events: VecDeque::new(),
            models: options.models,
        }
    }

    /// Feeds one record (and its capture line); returns the message's role, as
    /// [`Tracker::observe`] gives it.
    pub fn observe(&mut self, line: u64, record: &Record) -> Role {
        let role = self.tracker.observe(record);
        self.stats.observe(record, &role);
        let Record::Msg(msg) = record else {
            if let Some(rows) = &mut self.rows {
                rows.observe_other(record);
            }
            return role;
        };
        // The models need the JSON of a few messages only; `stats` alone never parses it.
        let name = msg.name.as_deref().unwrap_or("");
        let wanted = self.rows.is_some()
            || self.models
                && match msg.kind {
                    Kind::Event => {
                        jobs::READS_EVENT.contains(&name) || migration::READS_EVENT.contains(&name)
                    }
                    Kind::Command => {
                        migration::READS_COMMAND.contains(&name)
                            || msg.json.as_ref().is_some_and(|j| jobs::starts_a_job(j))
                    }
                    Kind::Return | Kind::Error => matches!(
                        &role,
                        Role::Reply { command: Some(c), .. }
                            if jobs::READS_REPLY.contains(&c.as_str())
                                || migration::READS_REPLY.contains(&c.as_str())
                    ),
                    _ => false,
                };
        if !wanted {
            return role;
        }
        let value = msg.value();
        let (at, duplicate) = match (&value, msg.kind) {
            (Some(v), Kind::Event) => {
                let at = event_time(v).unwrap_or(msg.t);
                let seen = (
                    msg.conn,
                    msg.name.clone().unwrap_or_default(),
                    at,
                    v.get("data").map(ToString::to_string).unwrap_or_default(),
                );
                (at, self.seen_event(seen))
            }
            _ => (msg.t, false),
        };
        let observed = Observed {
            line,
            msg,
            role: &role,
            value: value.as_ref(),
            at,
            duplicate,
        };
        if self.models {
            self.jobs.observe(&observed);
            self.migration.observe(&observed);
        }
        if let Some(rows) = &mut self.rows {
            rows.observe_msg(&observed);
        }
        role
    }

    /// The end of what was seen: the last record's time (a job or migration still running
    /// counts until then).
    pub fn end(&self) -> Option<Time> {
        self.stats.span.map(|(_, end)| end)
    }

    /// Builds one table.
    pub fn table(
        &self,
        table: tables::Table,
    ) -> Result<polars::prelude::DataFrame, tables::TableError> {
        let now = self.end().unwrap_or_else(Time::now);
        let rows = || {
            self.rows
                .as_ref()
                .ok_or(tables::TableError::NoRows(table.name()))
        };
        match table {
            tables::Table::Transactions => tables::transactions(rows()?),
            tables::Table::Events => tables::events(rows()?),
            tables::Table::Jobs => tables::jobs(&self.jobs, now),
            tables::Table::Migration => tables::migration(&self.migration),
        }
    }

    /// Whether this very event (name, QEMU timestamp and data) was already seen on another
    /// connection; remembers it. Two events alike on one connection are two events.
    fn seen_event(&mut self, event: SeenEvent) -> bool {
        let (conn, name, at, data) = &event;
        if self
            .recent_events
            .iter()
            .any(|(c, n, t, d)| c != conn && n == name && t == at && d == data)
        {
            return true;
        }
        if self.recent_events.len() == RECENT_EVENTS {
            self.recent_events.pop_front();
        }
        self.recent_events.push_back(event);
        false
    }
}

/// How long each entry of a timeline lasted, in microseconds: until the next entry; the last
/// one until `now`, or not at all when the timeline is `finished`.
pub fn durations(times: &[Time], finished: bool, now: Time) -> Vec<i64> {
    times
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let until = match times.get(i + 1) {
                Some(next) => *next,
                None if finished => *at,
                None => now.max(*at),
            };
            until.micros_since(*at)
        })
        .collect()
}

/// Sums durations per state, in order of first entry.
pub fn per_state<'a>(entries: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for (state, us) in entries {
        match out.iter_mut().find(|(s, _)| s == state) {
            Some((_, total)) => *total = total.saturating_add(us),
            None => out.push((state.to_owned(), us)),
        }
    }
    out
}

/// Analyses one capture file, record by record. `progress(done, total)` (bytes) is called
/// about every megabyte, for a progress display.
pub fn analyse_file(
    path: &std::path::Path,
    options: &Options,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Analyser, crate::capture::CaptureError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts the bytes read through it.
    struct Counting(std::fs::File, Arc<AtomicU64>);
    impl std::io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    let name = path.display().to_string();
    let io = |source| crate::capture::CaptureError::Io {
        source_name: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let done = Arc::new(AtomicU64::new(0));
    let input = std::io::BufReader::with_capacity(1 << 18, Counting(file, done.clone()));
    let reader = crate::capture::Reader::new(Box::new(input), name.clone())?;
    let mut analyser = Analyser::new(options);
    let mut reported = 0;
    // Parsing records is most of the work: it runs on every core, the models in file order.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    reader.for_each_parallel(threads, |located| {
        analyser.observe(located.line, &located.record);
        let now = done.load(Ordering::Relaxed);
        if now >= reported + (1 << 20) {
            reported = now;
            progress(now, total);
        }
    })?;
    progress(done.load(Ordering::Relaxed), total);
    Ok(analyser)
}

/// An event's `timestamp` member as a time (QEMU's clock when it emitted the event).
pub fn event_time(event: &serde_json::Value) -> Option<Time> {
    let ts = event.get("timestamp")?;
    let seconds = ts.get("seconds")?.as_i64()?;
    let micros = ts.get("microseconds")?.as_i64()?;
    let nanos = u32::try_from(micros.checked_mul(1000)?).ok()?;
    chrono::DateTime::from_timestamp(seconds, nanos).map(Time)
}

/// The members of a reply that every model needs, parsed without building the whole value.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorHead<'a> {
    #[serde(borrow)]
    pub(crate) error: Option<ErrorBody<'a>>,
}

/// `error.class`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(borrow)]
    pub(crate) class: Option<std::borrow::Cow<'a, str>>,
}

impl ErrorHead<'_> {
    /// The error class of a reply's JSON text, if it is an error.
    pub(crate) fn class_of(json: &RawValue) -> Option<String> {
        serde_json::from_str::<ErrorHead<'_>>(json.get())
            .ok()?
            .error?
            .class
            .map(std::borrow::Cow::into_owned)
    }
}

/// Formats microseconds for people: `850µs`, `12.3ms`, `4.20s`.
pub fn human_micros(us: i64) -> String {
    let a = us.unsigned_abs();
    if a < 1_000 {
        format!("{us}µs")
    } else if a < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Formats a byte count for people: `512 B`, `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_reads_qemu_timestamps() {
        let v =
            serde_json::json!({"timestamp": {"seconds": 1_795_636_198, "microseconds": 655_533}});
        assert_eq!(
            event_time(&v).unwrap().to_string(),
            "2026-11-25T19:49:58.655533Z"
        );
        assert!(event_time(&serde_json::json!({"timestamp": {"seconds": 1}})).is_none());
        let bad = serde_json::json!({"timestamp": {"seconds": 1, "microseconds": -5}});
        assert!(event_time(&bad).is_none());
    }

    #[test]
    fn an_event_broadcast_to_two_connections_feeds_the_models_once() {
        let header = r#"{"type":"header","format":"qmptap-capture","version":1,"created":"2026-11-25T19:10:13.000000Z","tool":"t"}"#;
        let event = |conn: u64, status: &str| {
            format!(
                r#"{{"type":"msg","conn":{conn},"seq":0,"t":"2026-11-25T19:10:13.000100Z","dir":"s2c","kind":"event","name":"JOB_STATUS_CHANGE","json":{{"timestamp":{{"seconds":1795636193,"microseconds":1}},"event":"JOB_STATUS_CHANGE","data":{{"status":"{status}","id":"j"}}}}}}"#
            )
        };
        // Broadcast: conn 1 and conn 2 carry the same event. Then, on conn 1, another job
        // event with the same timestamp but other data, which is a different event.
        let text = [
            header.to_owned(),
            event(1, "created"),
            event(2, "created"),
            event(1, "running"),
        ]
        .join("\n");
        let reader = crate::capture::Reader::new(
            Box::new(std::io::Cursor::new(text.into_bytes())),
            "t".into(),
        )
        .unwrap();
        let mut a = Analyser::new(&Options::default());
        for l in reader {
            let l = l.unwrap();
            a.observe(l.line, &l.record);
        }
        let job = &a.jobs.jobs()[0];
        let states: Vec<&str> = job.states.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(states, ["created", "running"]);
        assert_eq!(
            a.stats.events["JOB_STATUS_CHANGE"], 3,
            "counted per connection"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_micros(850), "850µs");
        assert_eq!(human_micros(12_345), "12.3ms");
        assert_eq!(human_micros(4_200_000), "4.20s");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn error_class_without_a_full_parse() {
        let raw = RawValue::from_string(
            r#"{"error":{"class":"GenericError","desc":"x"},"id":1}"#.to_owned(),
        )
        .unwrap();
        assert_eq!(ErrorHead::class_of(&raw).as_deref(), Some("GenericError"));
        let ok = RawValue::from_string(r#"{"return":{}}"#.to_owned()).unwrap();
        assert_eq!(ErrorHead::class_of(&ok), None);
    }
}
