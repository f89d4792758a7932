//! Migration: status transitions with times, per-poll `query-migrate` samples, RAM passes,
//! the final figures QEMU reports, convergence and stalls.
//!
//! Statuses come from `MIGRATION` events (timed by QEMU's timestamps) when the `events`
//! migration capability is on, and otherwise from the statuses the polls report. A capture
//! may hold several migrations (a failed one, then a retry): each `migrate` command, or a
//! `setup` after a finished run, starts a new [`Run`].

use serde::Serialize;
use serde_json::Value;

use super::Observed;
pub use super::Source;
use crate::capture::{Dir, Time};
use crate::session::Role;
use crate::wire::Kind;

/// Events this model reads.
pub const READS_EVENT: &[&str] = &["MIGRATION", "MIGRATION_PASS"];

/// Commands this model reads.
pub const READS_COMMAND: &[&str] = &["migrate", "migrate-incoming", "migrate-set-capabilities"];

/// Replies this model reads (by command).
pub const READS_REPLY: &[&str] = &["query-migrate", "migrate-set-capabilities"];

/// Statuses after which a migration run is over.
const TERMINAL: &[&str] = &["completed", "failed", "cancelled"];

/// A status the migration entered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// The status (`setup`, `active`, `completed`, ...).
    pub status: String,
    /// When.
    pub at: Time,
    /// Capture line.
    pub line: u64,
    /// Event or poll.
    pub source: Source,
}

/// One `query-migrate` reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When the reply came.
    pub at: Time,
    /// Capture line.
    pub line: u64,
    /// `status`.
    pub status: Option<String>,
    /// `ram.transferred` (bytes).
    pub transferred: Option<u64>,
    /// `ram.remaining` (bytes).
    pub remaining: Option<u64>,
    /// `ram.total` (bytes).
    pub total: Option<u64>,
    /// `ram.mbps` (megabits per second).
    pub mbps: Option<f64>,
    /// `ram.dirty-pages-rate` (pages per second).
    pub dirty_pages_rate: Option<u64>,
    /// `ram.dirty-sync-count`.
    pub dirty_sync_count: Option<u64>,
    /// `ram.page-size` (bytes).
    pub page_size: Option<u64>,
    /// `expected-downtime` (ms).
    pub expected_downtime_ms: Option<u64>,
    /// `setup-time` (ms).
    pub setup_time_ms: Option<u64>,
    /// `total-time` (ms).
    pub total_time_ms: Option<u64>,
    /// `downtime` (ms), once completed.
    pub downtime_ms: Option<u64>,
    /// `cpu-throttle-percentage`.
    pub cpu_throttle_percentage: Option<u64>,
    /// `error-desc`, when failed.
    pub error_desc: Option<String>,
}

impl Sample {
    fn from_reply(ret: &Value, at: Time, line: u64) -> Sample {
        let u = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_u64);
        let ram = ret.get("ram");
        Sample {
            at,
            line,
            status: ret.get("status").and_then(Value::as_str).map(str::to_owned),
            transferred: u(ram, "transferred"),
            remaining: u(ram, "remaining"),
            total: u(ram, "total"),
            mbps: ram.and_then(|r| r.get("mbps")).and_then(Value::as_f64),
            dirty_pages_rate: u(ram, "dirty-pages-rate"),
            dirty_sync_count: u(ram, "dirty-sync-count"),
            page_size: u(ram, "page-size"),
            expected_downtime_ms: u(Some(ret), "expected-downtime"),
            setup_time_ms: u(Some(ret), "setup-time"),
            total_time_ms: u(Some(ret), "total-time"),
            downtime_ms: u(Some(ret), "downtime"),
            cpu_throttle_percentage: u(Some(ret), "cpu-throttle-percentage"),
            error_desc: ret
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// A stretch of polls over which `remaining` did not fall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stall {
    /// The poll where `remaining` was last at its lowest.
    pub since: Time,
    /// Capture line of that poll.
    pub since_line: u64,
    /// Polls without progress since.
    pub polls: usize,
    /// The lowest `remaining` seen before the stall (bytes).
    pub remaining: u64,
    /// Whether the stall was still going at the last poll.
    pub ongoing: bool,
}

/// How the migration is converging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convergence {
    /// Finished: completed.
    Completed,
    /// Finished: failed or cancelled.
    Ended,
    /// `remaining` is still falling.
    Converging,
    /// `remaining` has not fallen for the stall threshold.
    Stalled,
    /// Not enough polls to tell.
    Unknown,
}

/// One migration, from `migrate` (or the first sign of it) to its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// The `migrate` (or `migrate-incoming`) command, its time and capture line.
    pub started: Option<(String, Time, u64)>,
    /// Status transitions in order.
    pub transitions: Vec<Transition>,
    /// `query-migrate` replies that described this run.
    pub samples: Vec<Sample>,
    /// `MIGRATION_PASS` events: `(pass, time, line)`.
    pub passes: Vec<(u64, Time, u64)>,
    /// Stalls, over the run.
    pub stalls: Vec<Stall>,
    /// Whether `MIGRATION` events arrived for this run.
    pub saw_events: bool,
    /// Whether the `events` capability was on when the run started (`None`: this capture
    /// never set it).
    pub events_capability: Option<bool>,
    /// Lowest `remaining` so far, and the poll where it was reached.
    #[serde(skip)]
    lowest: Option<(u64, Time, u64)>,
    #[serde(skip)]
    flat_polls: usize,
}

impl Run {
    fn new(events_capability: Option<bool>) -> Self {
        Run {
            started: None,
            transitions: Vec::new(),
            samples: Vec::new(),
            passes: Vec::new(),
            stalls: Vec::new(),
            saw_events: false,
            events_capability,
            lowest: None,
            flat_polls: 0,
        }
    }

    /// The current status.
    pub fn status(&self) -> Option<&str> {
        self.transitions.last().map(|t| t.status.as_str())
    }

    /// Whether the run is over.
    pub fn finished(&self) -> bool {
        self.status().is_some_and(|s| TERMINAL.contains(&s))
    }

    /// The number of RAM passes: the last `MIGRATION_PASS` number.
    pub fn pass_count(&self) -> u64 {
        self.passes.iter().map(|p| p.0).max().unwrap_or(0)
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// QEMU's final figures: the first sample that says `completed` (or `failed`).
    pub fn final_sample(&self) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.status.as_deref().is_some_and(|st| TERMINAL.contains(&st)))
    }

    /// How the run is converging.
    pub fn convergence(&self) -> Convergence {
        match self.status() {
            Some("completed") => Convergence::Completed,
            Some(s) if TERMINAL.contains(&s) => Convergence::Ended,
            _ if self.stalls.last().is_some_and(|s| s.ongoing) => Convergence::Stalled,
            _ if self.lowest.is_some() && self.samples.len() >= 2 => Convergence::Converging,
            _ => Convergence::Unknown,
        }
    }

    /// The current stall, if `remaining` has not fallen for the threshold.
    pub fn stall(&self) -> Option<&Stall> {
        self.stalls.last().filter(|s| s.ongoing)
    }

    /// Things an operator should know: the `events` capability off, a stall.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.saw_events {
            out.push(match self.events_capability {
                Some(false) => "the `events` migration capability was off: no MIGRATION events, statuses come from polls only".to_owned(),
                _ if self.started.is_some() => "no MIGRATION events (the `events` migration capability was not turned on in this capture): statuses come from polls only".to_owned(),
                _ => "no MIGRATION events: statuses come from polls only".to_owned(),
            });
        }
        for s in &self.stalls {
            out.push(format!(
                "stalled: remaining did not fall below {} bytes for {} polls from line {}{}",
                s.remaining,
                s.polls,
                s.since_line,
                if s.ongoing { " (still stalled)" } else { "" }
            ));
        }
        out
    }

    /// Microseconds spent in each status, in order of first entry; the last counts until
    /// `now` unless the run is over.
    pub fn time_in_states(&self, now: Time) -> Vec<(String, i64)> {
        let times: Vec<Time> = self.transitions.iter().map(|t| t.at).collect();
        let spent = super::durations(&times, self.finished(), now);
        super::per_state(
            self.transitions
                .iter()
                .map(|t| t.status.as_str())
                .zip(spent),
        )
    }

    fn enter(&mut self, status: &str, at: Time, line: u64, source: Source) {
        if self.status() == Some(status) {
            return;
        }
        self.transitions.push(Transition {
            status: status.to_owned(),
            at,
            line,
            source,
        });
    }

    fn sample(&mut self, sample: Sample, stall_polls: usize) {
        if sample.status.as_deref() == Some("active") {
            if let Some(remaining) = sample.remaining {
                match self.lowest {
                    Some((low, ..)) if remaining >= low => {
                        self.flat_polls += 1;
                        if self.flat_polls >= stall_polls {
                            let (low, since, since_line) =
                                self.lowest.unwrap_or((remaining, sample.at, sample.line));
                            match self.stalls.last_mut() {
                                Some(s) if s.ongoing => s.polls = self.flat_polls,
                                _ => self.stalls.push(Stall {
                                    since,
                                    since_line,
                                    polls: self.flat_polls,
                                    remaining: low,
                                    ongoing: true,
                                }),
                            }
                        }
                    }
                    _ => {
                        self.lowest = Some((remaining, sample.at, sample.line));
                        self.flat_polls = 0;
                        if let Some(s) = self.stalls.last_mut() {
                            s.ongoing = false;
                        }
                    }
                }
            }
        } else if let Some(s) = self.stalls.last_mut() {
            s.ongoing = false;
        }
        self.samples.push(sample);
    }
}

/// Every migration in a capture.
#[derive(Debug, Clone)]
pub struct Migration {
    stall_polls: usize,
    /// The `events` capability as last set (`None`: never set in this capture).
    events_capability: Option<bool>,
    /// Capabilities asked for, awaiting the reply that makes them so: `(request seq, on)`.
    pending_capability: Option<(u64, u64, bool)>,
    runs: Vec<Run>,
}

impl Migration {
    /// A model that calls a run stalled after `stall_polls` polls without progress.
    pub fn new(stall_polls: usize) -> Self {
        Migration {
            stall_polls: stall_polls.max(1),
            events_capability: None,
            pending_capability: None,
            runs: Vec::new(),
        }
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The latest run.
    pub fn current(&self) -> Option<&Run> {
        self.runs.last()
    }

    /// The run to add to: the latest unless it is over (`fresh` starts a new one anyway).
    fn run(&mut self, fresh: bool) -> &mut Run {
        let new = fresh || self.runs.last().is_none_or(Run::finished);
        if new {
            self.runs.push(Run::new(self.events_capability));
        }
        let last = self.runs.len() - 1;
        &mut self.runs[last]
    }

    /// Reads one message.
    pub fn observe(&mut self, o: &Observed<'_>) {
        let Some(value) = o.value else { return };
        match (o.msg.dir, o.msg.kind) {
            (Dir::C2s, Kind::Command) => match o.msg.name.as_deref() {
                Some(name @ ("migrate" | "migrate-incoming")) => {
                    // A migrate while the latest run has not begun yet (a poll said `none`)
                    // belongs to it.
                    let idle = self
                        .runs
                        .last()
                        .is_some_and(|r| r.started.is_none() && r.transitions.is_empty());
                    let run = self.run(!idle);
                    run.started = Some((name.to_owned(), o.msg.t, o.line));
                }
                Some("migrate-set-capabilities") => {
                    let on = value
                        .pointer("/arguments/capabilities")
                        .and_then(Value::as_array)
                        .and_then(|caps| {
                            caps.iter()
                                .find(|c| c.get("capability") == Some(&Value::from("events")))
                        })
                        .and_then(|c| c.get("state"))
                        .and_then(Value::as_bool);
                    if let Some(on) = on {
                        self.pending_capability = Some((o.msg.conn, o.msg.seq, on));
                    }
                }
                _ => {}
            },
            (Dir::S2c, Kind::Event) if !o.duplicate => {
                let data = value.get("data");
                match o.msg.name.as_deref() {
                    Some("MIGRATION") => {
                        if let Some(status) =
                            data.and_then(|d| d.get("status")).and_then(Value::as_str)
                        {
                            let run = self.run(false);
                            run.saw_events = true;
                            run.enter(status, o.at, o.line, Source::Event);
                        }
                    }
                    Some("MIGRATION_PASS") => {
                        if let Some(pass) = data.and_then(|d| d.get("pass")).and_then(Value::as_u64)
                        {
                            self.run(false).passes.push((pass, o.at, o.line));
                        }
                    }
                    _ => {}
                }
            }
            (Dir::S2c, Kind::Return | Kind::Error) => {
                let Role::Reply {
                    command: Some(command),
                    request_seq,
                    ..
                } = o.role
                else {
                    return;
                };
                match command.as_str() {
                    "migrate-set-capabilities" => {
                        if let Some((conn, seq, on)) = self.pending_capability.take() {
                            if conn == o.msg.conn
                                && seq == *request_seq
                                && o.msg.kind == Kind::Return
                            {
                                self.events_capability = Some(on);
                            }
                        }
                    }
                    "query-migrate" if o.msg.kind == Kind::Return => {
                        let Some(ret) = value.get("return") else {
                            return;
                        };
                        let sample = Sample::from_reply(ret, o.at, o.line);
                        // `{}`, or `none`: no migration yet; nothing to describe.
                        let Some(status) = sample.status.clone().filter(|s| s != "none") else {
                            return;
                        };
                        // A repeated poll of a finished run still describes that run.
                        let repeat = self
                            .runs
                            .last()
                            .is_some_and(|r| r.finished() && r.status() == Some(status.as_str()));
                        let stall_polls = self.stall_polls;
                        let run = if repeat {
                            let last = self.runs.len() - 1;
                            &mut self.runs[last]
                        } else {
                            self.run(false)
                        };
                        if !run.saw_events {
                            run.enter(&status, o.at, o.line, Source::Poll);
                        }
                        run.sample(sample, stall_polls);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// A run as `qmptap migration --format json` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport<'a> {
    /// The run.
    #[serde(flatten)]
    pub run: &'a Run,
    /// Its status.
    pub status: Option<&'a str>,
    /// RAM passes (`MIGRATION_PASS`).
    pub pass_count: u64,
    /// How it converged.
    pub convergence: Convergence,
    /// QEMU's final figures.
    pub final_figures: Option<&'a Sample>,
    /// Microseconds per status, in order of first entry.
    pub time_in_states: Vec<(String, i64)>,
    /// What an operator should know.
    pub warnings: Vec<String>,
}

impl Migration {
    /// Every run's report; an unfinished status counts until `now`.
    pub fn report(&self, now: Time) -> Vec<RunReport<'_>> {
        self.runs
            .iter()
            .map(|run| RunReport {
                run,
                status: run.status(),
                pass_count: run.pass_count(),
                convergence: run.convergence(),
                final_figures: run.final_sample(),
                time_in_states: run.time_in_states(now),
                warnings: run.warnings(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32) -> Time {
        Time(chrono::DateTime::from_timestamp(1_700_000_000 + i64::from(s), 0).expect("valid"))
    }

    fn sample(s: u32, status: &str, remaining: u64) -> Sample {
        Sample::from_reply(
            &serde_json::json!({"status": status, "ram": {"remaining": remaining}}),
            t(s),
            u64::from(s),
        )
    }

    #[test]
    fn remaining_flat_over_the_threshold_is_a_stall_until_it_falls() {
        let mut run = Run::new(Some(true));
        run.enter("active", t(0), 0, Source::Event);
        for (s, r) in [(1, 100), (2, 90), (3, 95), (4, 90), (5, 92)] {
            run.sample(sample(s, "active", r), 3);
        }
        assert_eq!(run.convergence(), Convergence::Stalled);
        let stall = run.stall().expect("stalled");
        assert_eq!((stall.since_line, stall.polls, stall.remaining), (2, 3, 90));
        run.sample(sample(6, "active", 10), 3);
        assert_eq!(run.convergence(), Convergence::Converging);
        assert_eq!(run.stalls.len(), 1);
        assert!(
            run.warnings()
                .iter()
                .any(|w| w.contains("did not fall below 90"))
        );
    }

    #[test]
    fn no_events_is_warned() {
        let run = Run::new(Some(false));
        assert!(run.warnings()[0].contains("was off"));
    }
}
