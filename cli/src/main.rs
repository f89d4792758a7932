//! The `qmptap` command: parses arguments, runs the command, maps the outcome to an exit code.

mod args;
mod cmd;

use std::process::ExitCode;

use clap::Parser as _;

// Records are parsed on one thread and dropped on another (`stats` and the analysis read
// captures in parallel); mimalloc frees across threads far more cheaply than the system
// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if let args::Command::Tui(a) = &cli.command {
        let log = a
            .log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("qmptap-tui.log"));
        if let Err(err) = cmd::init_logging_to_file(cli.global.verbose, &log) {
            eprintln!("qmptap: {err:#}");
            return ExitCode::from(cmd::EXIT_ERROR);
        }
    } else {
        cmd::init_logging(cli.global.verbose, cli.global.quiet);
    }
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if cmd::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("qmptap: {err:#}");
            ExitCode::from(cmd::EXIT_ERROR)
        }
    }
}
