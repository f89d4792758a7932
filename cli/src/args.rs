//! Command-line syntax (clap). Validation into library types happens in `cmd`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Record, decode and inspect QMP (QEMU Machine Protocol) traffic.
///
/// Exit codes: 0 success; 1 findings or differences (commands that look for them);
/// 2 the command could not run (bad arguments, unreadable capture, ...).
#[derive(Debug, Parser)]
#[command(
    name = "qmptap",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// More diagnostics on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, help_heading = "Global options")]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a transparent proxy in front of a QMP monitor and record every session.
    ///
    /// Clients connect to --listen instead of the monitor; each gets its own connection to
    /// --upstream. Bytes and file descriptors (SCM_RIGHTS) pass unchanged in both directions.
    /// SIGTERM stops accepting and lets connections finish (up to --grace); SIGINT closes
    /// them at once. Either way the capture is complete and the exit status 0.
    Record(RecordArgs),
    /// Start QEMU with its QMP monitors recorded: for launchers such as libvirt (as the
    /// domain emulator) and scripts.
    ///
    /// Finds the QMP monitors on QEMU's command line (libvirt's inherited
    /// `-chardev socket,fd=N,server=on` with `-mon ...,mode=control`, or `-qmp unix:PATH,server`
    /// and `tcp:` forms), moves each to a private socket in --socket-dir, starts a recorder
    /// (`qmptap record`) on the socket clients use, writing --capture-dir/GUEST-TIME-PID.jsonl,
    /// then becomes QEMU (exec: same pid, arguments otherwise unchanged). The recorder waits
    /// for QEMU's socket and stops when QEMU exits. QEMU with -daemonize, or without a QMP
    /// server socket, runs unrecorded.
    ///
    /// Exit status: QEMU's own; 2 if QEMU could not be started or its monitors could not be
    /// recorded (QEMU is then not started).
    Wrap(WrapArgs),
    /// Print a capture as a transcript (-> client, <- server) with times and latencies.
    Show(ShowArgs),
    /// Validate every message of captures against a QMP schema, and the protocol's rules.
    ///
    /// Commands (known, arguments complete and well-typed, exec-oob allowed), replies
    /// (against the command's return type; error classes), events, and protocol order
    /// (negotiation first and once, ids echoed, no reply without a command). Deprecated and
    /// unstable usage is a warning, or an error with --deny.
    ///
    /// Exit status: 0 no errors (warnings allowed), 1 errors found, 2 could not run.
    Check(CheckArgs),
    /// Replay the client side of a capture against a live monitor and compare every reply and
    /// event with the recording.
    ///
    /// Each recorded connection is replayed in turn (a QEMU monitor serves one client at a
    /// time). Before each client message, the server messages that preceded it in the
    /// recording must have arrived (its reply, the events the client had seen), each wait
    /// bounded by --timeout. Messages are sent byte for byte; one that carried file
    /// descriptors gets as many substitutes opened on /dev/null (read-write), so getfd and
    /// add-fd work, and a migration or dump to such an fd completes.
    /// Replies and events are compared after normalisation (event timestamps, ids, migration
    /// counters and times, job progress, fd numbers, host thread ids, the package string; add
    /// rules with --ignore).
    ///
    /// Exit status: 0 everything matched, 1 differences, 2 could not run.
    Replay(ReplayArgs),
    /// Compare two captures: commands aligned (Myers) on command and normalised arguments,
    /// replies of aligned commands compared structurally, events between commands compared
    /// as multisets, all after the replay normaliser (add rules with --ignore).
    ///
    /// Exit status: 0 the same, 1 different, 2 could not run.
    Diff(DiffArgs),
    /// Summarise captures: per command (count, errors, latency p50/p95/p99/max), per event
    /// (count), per connection (peer, duration, messages, bytes).
    ///
    /// Streams: memory stays bounded whatever the size of the captures. Progress is shown on
    /// stderr when it is a terminal.
    ///
    /// Exit status: 0 done, 2 could not run.
    Stats(StatsArgs),
    /// Show every job (mirror, backup, commit, stream, create, ...): type, each state with
    /// the time it entered it and the time spent in it, progress from query-jobs, outcome
    /// and error. Transitions QEMU's job state table does not allow are flagged.
    ///
    /// Exit status: 0 every job completed or is still running, 1 a job failed or made an
    /// illegal transition, 2 could not run.
    Jobs(JobsArgs),
    /// Show each migration: status transitions with times, RAM passes, QEMU's final figures
    /// (setup time, downtime, total time, transferred), convergence and stalls (remaining not
    /// falling over --stall-polls polls), and a chart of transferred and remaining over time.
    ///
    /// Exit status: 0 every migration completed or is converging, 1 one failed, was
    /// cancelled or stalled, 2 could not run.
    Migration(MigrationArgs),
    /// Export an analysis table as CSV, Parquet or NDJSON, with a leading `capture` column,
    /// for DuckDB, Spark or polars.
    ///
    /// Tables: transactions (a row per command: sent, replied, latency, outcome, error
    /// class, bytes each way), events (a row per event, data flattened into data.*
    /// columns), jobs (per job, a row per state and per progress sample), migration (per
    /// run, a row per status, pass and query-migrate sample).
    ///
    /// Exit status: 0 written, 2 could not run.
    Export(ExportArgs),
    /// A terminal monitor: browse a capture, follow one being recorded (--follow), replay
    /// one in real time (--replay, --speed), or run the recording proxy and watch it live
    /// (--listen, --upstream, optionally -o and --poll).
    ///
    /// Tabs: the message stream with an inspector (pretty JSON, the paired command or reply,
    /// schema findings), the migration dashboard, the jobs board, and top commands. Press ?
    /// for the keys. Logs go to --log (default: qmptap-tui.log in the temporary directory),
    /// never to the terminal.
    ///
    /// Exit status: 0 quit, 2 could not run.
    Tui(TuiArgs),
    /// Inspect, compare and export QMP schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Act as a QMP server (a mock QEMU) that answers clients from a capture.
    ///
    /// Each client gets the recorded greeting; QEMU's protocol rules (negotiation, input
    /// checks, parse errors) are enforced with QEMU's error texts; every other command is
    /// answered with the recorded reply whose command name and normalised arguments match
    /// (first recorded first, across all connections), with the client's own id, followed
    /// or preceded by the events recorded with it. A command with no recorded reply gets an
    /// error naming the nearest recorded command. File descriptors clients send are closed.
    ///
    /// Prints "qmptap: serving CAPTURE on ADDR" on stderr once listening; runs until SIGTERM
    /// or SIGINT (or, with --once, until the first client has gone), then prints a report:
    /// interactions answered, misses, recorded interactions never used (with capture lines).
    ///
    /// Exit status: 0 served; 1 with --require-all when a recorded interaction was left
    /// unused or a command missed; 2 could not run (bad arguments, unreadable capture,
    /// cannot listen).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture to replay.
    #[arg(value_name = "CAPTURE")]
    pub capture: PathBuf,
    /// The monitor to replay against: unix:PATH or tcp:HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub target: String,
    /// Only these recorded connections (repeatable, or comma-separated).
    #[arg(long = "conn", value_name = "N", value_delimiter = ',')]
    pub conns: Vec<u64>,
    /// asap (as fast as causality allows), recorded (the recorded gaps), or xN (the recorded
    /// gaps divided by N).
    #[arg(long, value_name = "PACE", default_value = "asap")]
    pub pace: String,
    /// Longest wait, in seconds, for any one expected reply or event.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Replace FROM with TO in every recorded message before sending or comparing it
    /// (repeatable): where the fresh environment differs from the recorded one, e.g.
    /// --rewrite /run/prod/vm1/=/tmp/test/vm1/ for socket and image paths.
    #[arg(long = "rewrite", value_name = "FROM=TO")]
    pub rewrites: Vec<String>,
    /// Also ignore this value: NAME:PATH or PATH, NAME a command or event, PATH dotted
    /// members with * (any member or element) and [] (every element), e.g.
    /// query-jobs:return[].status; or an event name alone (MIGRATION_PASS) to ignore how many
    /// of that event come.
    #[arg(long = "ignore", value_name = "NAME:PATH")]
    pub ignores: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

// Independent command-line flags are bools by nature.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The capture whose server side to play.
    #[arg(value_name = "CAPTURE")]
    pub capture: PathBuf,
    /// Where clients connect: unix:PATH or tcp:HOST:PORT (HOST defaults to 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Mode of the listening UNIX socket file, in octal.
    #[arg(long, value_name = "MODE", default_value = "0600")]
    pub socket_mode: String,
    /// Answer with the next unused recorded interaction in recorded order (across the whole
    /// capture) only; any other command is a miss.
    #[arg(long, help_heading = "Matching")]
    pub strict_order: bool,
    /// A command whose recorded replies are all used gets the last one used again instead of
    /// missing (polling loops, load tests).
    #[arg(long, help_heading = "Matching")]
    pub reuse: bool,
    /// Mask a volatile value when matching arguments, as NAME:PATH or PATH (repeatable), e.g.
    /// migrate:arguments.uri; added to the built-in rules.
    #[arg(long = "ignore", value_name = "NAME:PATH", help_heading = "Matching")]
    pub ignores: Vec<String>,
    /// On a command with no recorded reply: answer with an error naming the nearest recorded
    /// command, or close the connection.
    #[arg(long, value_enum, default_value_t = OnMiss::Error, value_name = "ACTION", help_heading = "Matching")]
    pub on_miss: OnMiss,
    /// When to send replies and events: asap, recorded (the recorded delays), or xN (the
    /// recorded delays at N times the speed: x2 twice as fast, x0.5 half as fast).
    #[arg(
        long,
        value_name = "PACE",
        default_value = "asap",
        help_heading = "Timing"
    )]
    pub pace: String,
    /// Stop after the first client has disconnected.
    #[arg(long, help_heading = "Timing")]
    pub once: bool,
    /// Exit with status 1 if any recorded interaction was left unused or any command missed.
    #[arg(long, help_heading = "Report")]
    pub require_all: bool,
    /// Report format: text for people, or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text, help_heading = "Report")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnMiss {
    Error,
    Close,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Captures to summarise together.
    #[arg(value_name = "CAPTURE", required = true)]
    pub captures: Vec<PathBuf>,
    /// Show only the N most sent commands (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub top: usize,
    /// Output: tables for people, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The capture.
    pub capture: PathBuf,
    /// Output: tables for people, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct MigrationArgs {
    /// The capture.
    pub capture: PathBuf,
    /// Call a migration stalled when remaining has not fallen for N polls.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub stall_polls: usize,
    /// Chart size in columns and rows.
    #[arg(long, value_name = "COLSxROWS", default_value = "72x14", value_parser = chart_size)]
    pub chart: (u16, u16),
    /// No chart.
    #[arg(long)]
    pub no_chart: bool,
    /// Output: tables and a chart for people, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn chart_size(text: &str) -> Result<(u16, u16), String> {
    let err = || format!("invalid chart size '{text}': expected COLSxROWS, e.g. 72x14");
    let (c, r) = text.split_once('x').ok_or_else(err)?;
    let (c, r) = (
        c.parse::<u16>().map_err(|_| err())?,
        r.parse::<u16>().map_err(|_| err())?,
    );
    if c < 20 || r < 5 {
        return Err(format!("chart size '{text}' is too small: at least 20x5"));
    }
    Ok((c, r))
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Captures to export (stacked, each row tagged with its capture).
    #[arg(value_name = "CAPTURE", required = true)]
    pub captures: Vec<PathBuf>,
    /// The table.
    #[arg(long, value_enum)]
    pub table: ExportTable,
    /// The file format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write here instead of standard output (required for Parquet on a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportTable {
    Transactions,
    Events,
    Jobs,
    Migration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Parquet,
    Ndjson,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["capture", "replay", "listen"])))]
pub struct TuiArgs {
    /// A capture to browse (with --follow: to follow as it grows).
    pub capture: Option<PathBuf>,
    /// Follow CAPTURE as `qmptap record` writes it.
    #[arg(long, requires = "capture")]
    pub follow: bool,
    /// Play this capture into the views at its recorded pace.
    #[arg(long, value_name = "CAPTURE")]
    pub replay: Option<PathBuf>,
    /// With --replay: this many times faster than recorded.
    #[arg(long, value_name = "N", default_value_t = 1.0, requires = "replay")]
    pub speed: f64,
    /// Run the recording proxy: where clients connect (unix:PATH or tcp:HOST:PORT).
    #[arg(long, value_name = "ADDR", requires = "upstream")]
    pub listen: Option<String>,
    /// With --listen: the QMP monitor to relay to.
    #[arg(long, value_name = "ADDR", requires = "listen")]
    pub upstream: Option<String>,
    /// With --listen: also write the capture to FILE.
    #[arg(short, long, value_name = "FILE", requires = "listen")]
    pub output: Option<PathBuf>,
    /// With --output: replace an existing capture file.
    #[arg(long, requires = "output")]
    pub force: bool,
    /// With --listen: have the proxy poll these query commands itself once the client has
    /// negotiated (see record --help).
    #[arg(long, value_name = "CMD,...[@INTERVAL]", requires = "listen")]
    pub poll: Option<String>,
    /// With --listen: permission bits of the listening UNIX socket.
    #[arg(long, value_name = "MODE", default_value = "0600")]
    pub socket_mode: String,
    /// Write logs here.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first capture (shown as -).
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The second capture (shown as +).
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Also ignore this value: NAME:PATH or PATH (see replay --help), or an event name whose
    /// number varies.
    #[arg(long = "ignore", value_name = "NAME:PATH")]
    pub ignores: Vec<String>,
    /// Output: a unified-diff-like listing for people, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct SchemaArg {
    /// The schema: a QAPI directory or file, introspection JSON, a capture holding a
    /// query-qmp-schema reply, builtin:7.2, builtin:9.1, or live:ADDR (ask a running monitor).
    #[arg(long, value_name = "SCHEMA")]
    pub schema: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Captures to check; a file that is not a capture is read as a transcript in the QMP
    /// documentation's notation (-> what the client sends, <- what the server sends).
    #[arg(value_name = "CAPTURE", required = true)]
    pub captures: Vec<PathBuf>,
    /// Schema to check against (default: the capture's own query-qmp-schema reply, else the
    /// built-in schema nearest the greeting's QEMU version).
    #[command(flatten)]
    pub schema: SchemaArg,
    /// Make deprecated and/or unstable usage an error: deprecated, unstable, or both
    /// comma-separated (QEMU's -compat deprecated-input=reject as the model).
    #[arg(long, value_name = "FEATURES", value_delimiter = ',')]
    pub deny: Vec<String>,
    /// Output: findings grouped by rule for people, or JSON (one report per capture and line).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Show a command's, event's or type's shape: members with their types, optionality and
    /// features, as paths (arguments.channels[].addr.transport).
    Show {
        /// Command, event or type name.
        name: String,
        #[command(flatten)]
        schema: SchemaArg,
    },
    /// Compare two schemas by what crosses the wire: commands, events, members and enum values
    /// added, removed, changed, or newly deprecated/unstable.
    Diff {
        /// The older schema.
        old: String,
        /// The newer schema.
        new: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print a schema as query-qmp-schema would return it (or in qmptap's model format,
    /// which keeps integer widths and build conditions).
    Dump {
        #[command(flatten)]
        schema: SchemaArg,
        /// introspection or model.
        #[arg(long, value_enum, default_value_t = DumpFormat::Introspection)]
        format: DumpFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    Introspection,
    Model,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where clients connect: unix:PATH or tcp:HOST:PORT (HOST defaults to 127.0.0.1), or
    /// fd:N, a listening socket inherited from the process that started qmptap.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// The QMP monitor to relay to: unix:PATH or tcp:HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub upstream: String,
    /// The capture file to write; - writes records to stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Mode of the listening UNIX socket file, in octal.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "0600",
        help_heading = "Listening"
    )]
    pub socket_mode: String,
    /// With --listen fd:N: remove the UNIX socket's file on exit, as for a socket qmptap
    /// bound itself (for a socket handed over for good, as wrap does; an inherited socket's
    /// file otherwise belongs to whoever created it).
    #[arg(long, help_heading = "Listening")]
    pub remove_socket_file: bool,
    /// Replace an existing capture file (by default qmptap refuses, so that no recording is
    /// lost by mistake).
    #[arg(long, help_heading = "Capture")]
    pub force: bool,
    /// When the capture cannot be written: continue relaying and mark the gap (default), or
    /// fail and stop the proxy so that nothing passes unrecorded.
    #[arg(long, value_enum, default_value_t = OnWriteError::Continue, value_name = "POLICY", help_heading = "Capture")]
    pub on_write_error: OnWriteError,
    /// Poll these query commands on each connection, at INTERVAL (default 1s; e.g. 500ms,
    /// 2s), once the client has negotiated, when the client does not send them itself: e.g.
    /// query-migrate,query-jobs@500ms. The replies are recorded but never reach the client;
    /// the capture marks both with "origin":"proxy".
    #[arg(long, value_name = "CMD,...[@INTERVAL]", help_heading = "Capture")]
    pub poll: Option<String>,
    /// Seconds that connections get to finish after SIGTERM before they are closed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5.0,
        help_heading = "Listening"
    )]
    pub grace: f64,
    /// Keep retrying an upstream socket that does not exist or refuses connections for up to
    /// SECS when a client connects (for launchers that start qmptap just before QEMU).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0.0,
        help_heading = "Listening"
    )]
    pub upstream_wait: f64,
    /// Stop when process PID exits (the QEMU a launcher started): stop accepting, let
    /// connections relay QEMU's last bytes, close what is left after a second.
    #[arg(long, value_name = "PID", help_heading = "Listening")]
    pub exit_with: Option<i32>,
}

#[derive(Debug, Args)]
pub struct WrapArgs {
    /// Directory for the captures, one per QEMU run and monitor.
    #[arg(long, value_name = "DIR")]
    pub capture_dir: PathBuf,
    /// Directory for QEMU's own monitor sockets, behind the recorder (default: --capture-dir).
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// Poll these query commands on each connection (see record --help).
    #[arg(long, value_name = "CMD,...[@INTERVAL]")]
    pub poll: Option<String>,
    /// The QEMU binary and its arguments, after --.
    #[arg(
        value_name = "QEMU",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub qemu: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnWriteError {
    Continue,
    Fail,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The capture to show; - reads standard input.
    #[arg(value_name = "CAPTURE")]
    pub capture: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output: a transcript for people, or the kept records as JSON lines (itself a capture).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Cut messages longer than N characters (0: never; default 400 on a terminal, else 0).
    #[arg(long, value_name = "N")]
    pub truncate: Option<usize>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Only these connections (repeatable, or comma-separated).
    #[arg(long = "conn", value_name = "N", value_delimiter = ',')]
    pub conns: Vec<u64>,
    /// Only one direction: c2s (client to server) or s2c.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<String>,
    /// Only these commands or events (repeatable, comma-separated, * wildcards); replies
    /// follow their command.
    #[arg(long = "name", value_name = "NAME", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Only these kinds: greeting, command, return, error, event, other, invalid.
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn clap_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
