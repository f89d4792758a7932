//! Jobs (block-job mirror, backup, commit, stream, blockdev-create, ...): each job's states
//! with the time it entered them, checked against QEMU's job state table; its progress from
//! `query-jobs`; its type, outcome and error.
//!
//! States come from `JOB_STATUS_CHANGE` events, timed by QEMU's own event timestamps (so the
//! time spent in a state is exactly what the events say). A job seen only through polls
//! (`query-jobs`, the `events` of another connection missing) takes its states from the
//! polled status instead. The legacy `BLOCK_JOB_*` events give the type, the error and the
//! final offset.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::Observed;
pub use super::Source;
use crate::capture::{Dir, Time};
use crate::session::Role;
use crate::wire::Kind;

/// Events this model reads.
pub const READS_EVENT: &[&str] = &[
    "JOB_STATUS_CHANGE",
    "BLOCK_JOB_COMPLETED",
    "BLOCK_JOB_CANCELLED",
    "BLOCK_JOB_ERROR",
    "BLOCK_JOB_READY",
    "BLOCK_JOB_PENDING",
];

/// Replies this model reads (by command).
pub const READS_REPLY: &[&str] = &["query-jobs", "query-block-jobs"];

/// Whether a command's JSON starts a job (it names a `job-id`), so the model reads it.
pub fn starts_a_job(json: &RawValue) -> bool {
    json.get().contains("\"job-id\"")
}

/// QEMU's job state table (`JobSTT` in `job.c`), as data: each status and where it may go.
pub const TRANSITIONS: &[(&str, &[&str])] = &[
    ("undefined", &["created"]),
    ("created", &["running", "aborting", "null"]),
    ("running", &["paused", "ready", "waiting", "aborting"]),
    ("paused", &["running"]),
    ("ready", &["standby", "waiting", "aborting"]),
    ("standby", &["ready"]),
    ("waiting", &["pending", "aborting"]),
    ("pending", &["aborting", "concluded"]),
    ("aborting", &["aborting", "concluded"]),
    ("concluded", &["null"]),
];

/// Whether QEMU's job state table allows `from -> to`.
pub fn legal(from: &str, to: &str) -> bool {
    TRANSITIONS
        .iter()
        .any(|(f, tos)| *f == from && tos.contains(&to))
}

/// A state the job entered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateEntry {
    /// The status (`created`, `running`, ...).
    pub status: String,
    /// When it entered it.
    pub at: Time,
    /// Capture line that says so.
    pub line: u64,
    /// Event or poll.
    pub source: Source,
}

/// A transition QEMU's job state table does not allow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Illegal {
    /// From this status...
    pub from: String,
    /// ...to this one.
    pub to: String,
    /// When.
    pub at: Time,
    /// Capture line.
    pub line: u64,
}

/// One `query-jobs` (or `query-block-jobs`) sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// When the reply came.
    pub at: Time,
    /// Capture line.
    pub line: u64,
    /// Status the reply gave.
    pub status: Option<String>,
    /// `current-progress` (`offset` for query-block-jobs).
    pub current: u64,
    /// `total-progress` (`len`); units are the job's own, and the total may change.
    pub total: u64,
}

/// How a job ended (so far).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Not concluded within the capture.
    Unfinished,
    /// Concluded with no error.
    Completed,
    /// Cancelled (went through `aborting`) with no error.
    Cancelled,
    /// Concluded with an error.
    Failed,
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The job id (`job-id`; the device name for legacy block jobs).
    pub id: String,
    /// Job type (`mirror`, `backup`, `commit`, `stream`, `create`, ...), once known.
    pub job_type: Option<String>,
    /// The command that started it, and its capture line.
    pub started_by: Option<(String, u64)>,
    /// Connection that started it (or first mentioned it).
    pub conn: u64,
    /// States in order, each with its entry time.
    pub states: Vec<StateEntry>,
    /// Progress samples.
    pub progress: Vec<Progress>,
    /// The error it ended with (or the last `BLOCK_JOB_ERROR`).
    pub error: Option<String>,
    /// Transitions the state table does not allow.
    pub illegal: Vec<Illegal>,
}

impl Job {
    fn new(id: &str, conn: u64) -> Self {
        Job {
            id: id.to_owned(),
            job_type: None,
            started_by: None,
            conn,
            states: Vec::new(),
            progress: Vec::new(),
            error: None,
            illegal: Vec::new(),
        }
    }

    /// The current status.
    pub fn status(&self) -> Option<&str> {
        self.states.last().map(|s| s.status.as_str())
    }

    /// Whether the job is gone (`null`) or concluded.
    pub fn finished(&self) -> bool {
        matches!(self.status(), Some("concluded" | "null"))
    }

    /// How it ended.
    pub fn outcome(&self) -> Outcome {
        if !self.states.iter().any(|s| s.status == "concluded") {
            return Outcome::Unfinished;
        }
        if self.error.is_some() {
            Outcome::Failed
        } else if self.states.iter().any(|s| s.status == "aborting") {
            Outcome::Cancelled
        } else {
            Outcome::Completed
        }
    }

    /// Microseconds spent in each status, in order of first entry; the current status counts
    /// until `now` (a finished job's last status counts nothing).
    pub fn time_in_states(&self, now: Time) -> Vec<(String, i64)> {
        let spent = self.durations(now);
        super::per_state(self.states.iter().map(|s| s.status.as_str()).zip(spent))
    }

    /// Microseconds spent in each state entry, in order; the current one counts until
    /// `now` (a finished job's last state counts nothing).
    pub fn durations(&self, now: Time) -> Vec<i64> {
        let times: Vec<Time> = self.states.iter().map(|s| s.at).collect();
        super::durations(&times, self.finished(), now)
    }

    /// When the job entered its current status.
    pub fn since(&self) -> Option<Time> {
        self.states.last().map(|s| s.at)
    }

    /// The latest progress as a fraction (0..=1), if a sample had a total.
    pub fn fraction(&self) -> Option<f64> {
        let p = self.progress.last()?;
        (p.total > 0).then(|| (p.current as f64 / p.total as f64).clamp(0.0, 1.0))
    }

    /// Enters a status. The first one seen is not checked: the capture may have started in
    /// the middle of the job's life.
    fn enter(&mut self, status: &str, at: Time, line: u64, source: Source) {
        if let Some(prev) = self.states.last() {
            if prev.status == status && (source == Source::Poll || prev.at == at) {
                return;
            }
            if !legal(&prev.status, status) {
                self.illegal.push(Illegal {
                    from: prev.status.clone(),
                    to: status.to_owned(),
                    at,
                    line,
                });
            }
        }
        self.states.push(StateEntry {
            status: status.to_owned(),
            at,
            line,
            source,
        });
    }
}

/// Every job in a capture, in order of first appearance.
#[derive(Debug, Clone, Default)]
pub struct JobBoard {
    jobs: Vec<Job>,
}

impl JobBoard {
    /// The jobs, in order of first appearance (an id reused after its job went `null` starts
    /// a new one).
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The live job with this id, or a new one. A job whose status is `null` is gone: its id
    /// may be reused.
    fn job(&mut self, id: &str, conn: u64) -> &mut Job {
        let index = self
            .jobs
            .iter()
            .rposition(|j| j.id == id && j.status() != Some("null"));
        let index = index.unwrap_or_else(|| {
            self.jobs.push(Job::new(id, conn));
            self.jobs.len() - 1
        });
        &mut self.jobs[index]
    }

    /// Reads one message.
    pub fn observe(&mut self, o: &Observed<'_>) {
        let Some(value) = o.value else { return };
        let conn = o.msg.conn;
        match (o.msg.dir, o.msg.kind) {
            (Dir::C2s, Kind::Command) => {
                let args = value.get("arguments");
                if let Some(id) = args.and_then(|a| a.get("job-id")).and_then(Value::as_str) {
                    let command = o.msg.name.clone().unwrap_or_default();
                    let job = self.job(id, conn);
                    if job.started_by.is_none() && job.states.is_empty() {
                        job.started_by = Some((command, o.line));
                    }
                }
            }
            (Dir::S2c, Kind::Event) if !o.duplicate => {
                let data = value.get("data");
                let str_of = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_str);
                match o.msg.name.as_deref() {
                    Some("JOB_STATUS_CHANGE") => {
                        if let (Some(id), Some(status)) = (str_of("id"), str_of("status")) {
                            self.job(id, conn)
                                .enter(status, o.at, o.line, Source::Event);
                        }
                    }
                    Some(name) => {
                        let Some(id) = str_of("device").or_else(|| str_of("id")) else {
                            return;
                        };
                        let job_type = str_of("type").map(str::to_owned);
                        let error = match name {
                            "BLOCK_JOB_COMPLETED" => str_of("error").map(str::to_owned),
                            "BLOCK_JOB_ERROR" => Some(format!(
                                "{} error, action {}",
                                str_of("operation").unwrap_or("I/O"),
                                str_of("action").unwrap_or("?")
                            )),
                            _ => None,
                        };
                        let job = self.job(id, conn);
                        if job.job_type.is_none() {
                            job.job_type = job_type;
                        }
                        if error.is_some() {
                            job.error = error;
                        }
                    }
                    None => {}
                }
            }
            (Dir::S2c, Kind::Return) => {
                let Role::Reply {
                    command: Some(command),
                    ..
                } = o.role
                else {
                    return;
                };
                let (cur, tot) = match command.as_str() {
                    "query-jobs" => ("current-progress", "total-progress"),
                    "query-block-jobs" => ("offset", "len"),
                    _ => return,
                };
                let Some(items) = value.get("return").and_then(Value::as_array) else {
                    return;
                };
                for item in items {
                    let str_of = |k: &str| item.get(k).and_then(Value::as_str);
                    let Some(id) = str_of("id").or_else(|| str_of("device")) else {
                        continue;
                    };
                    let status = str_of("status").map(str::to_owned);
                    let job = self.job(id, conn);
                    if job.job_type.is_none() {
                        job.job_type = str_of("type").map(str::to_owned);
                    }
                    if let Some(e) = str_of("error") {
                        job.error = Some(e.to_owned());
                    }
                    // Polls give states only for jobs whose events this capture lacks.
                    if let Some(status) = &status {
                        if job.states.iter().all(|s| s.source == Source::Poll) {
                            job.enter(status, o.at, o.line, Source::Poll);
                        }
                    }
                    job.progress.push(Progress {
                        at: o.at,
                        line: o.line,
                        status,
                        current: item.get(cur).and_then(Value::as_u64).unwrap_or(0),
                        total: item.get(tot).and_then(Value::as_u64).unwrap_or(0),
                    });
                }
            }
            _ => {}
        }
    }
}

/// A job as `qmptap jobs --format json` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport<'a> {
    /// The job.
    #[serde(flatten)]
    pub job: &'a Job,
    /// How it ended.
    pub outcome: Outcome,
    /// Microseconds per status, in order of first entry.
    pub time_in_states: Vec<(String, i64)>,
}

impl JobBoard {
    /// Every job's report; unfinished states count until `now`.
    pub fn report(&self, now: Time) -> Vec<JobReport<'_>> {
        self.jobs
            .iter()
            .map(|job| JobReport {
                job,
                outcome: job.outcome(),
                time_in_states: job.time_in_states(now),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_qemus() {
        assert!(legal("undefined", "created"));
        assert!(legal("ready", "standby"));
        assert!(legal("aborting", "aborting"));
        assert!(!legal("running", "concluded"));
        assert!(!legal("null", "running"));
        assert!(!legal("paused", "ready"));
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn states_time_and_illegal_transitions() {
        let mut job = Job::new("j", 1);
        job.enter("created", t("2026-01-01T00:00:00Z"), 1, Source::Event);
        job.enter("running", t("2026-01-01T00:00:01Z"), 2, Source::Event);
        // The same event seen twice (another connection) is one state.
        job.enter("running", t("2026-01-01T00:00:01Z"), 3, Source::Event);
        job.enter("concluded", t("2026-01-01T00:00:04Z"), 4, Source::Event);
        job.enter("null", t("2026-01-01T00:00:05Z"), 5, Source::Event);
        assert_eq!(job.states.len(), 4);
        assert_eq!(
            job.illegal,
            vec![Illegal {
                from: "running".into(),
                to: "concluded".into(),
                at: t("2026-01-01T00:00:04Z"),
                line: 4
            }]
        );
        let times = job.time_in_states(t("2026-01-01T01:00:00Z"));
        assert_eq!(
            times,
            vec![
                ("created".into(), 1_000_000),
                ("running".into(), 3_000_000),
                ("concluded".into(), 1_000_000),
                ("null".into(), 0)
            ]
        );
        assert_eq!(job.outcome(), Outcome::Completed);
    }

    #[test]
    fn an_unfinished_job_counts_until_now() {
        let mut job = Job::new("j", 1);
        job.enter("running", t("2026-01-01T00:00:00Z"), 1, Source::Poll);
        job.enter("running", t("2026-01-01T00:00:02Z"), 2, Source::Poll);
        assert_eq!(
            job.time_in_states(t("2026-01-01T00:00:10Z")),
            vec![("running".into(), 10_000_000)]
        );
        assert_eq!(job.outcome(), Outcome::Unfinished);
    }
}
