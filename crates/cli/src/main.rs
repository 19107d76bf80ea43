//! `lifeboat`: the command-line interface.
//!
//! Each command lives in `commands/<name>.rs` and does three things: turn arguments into
//! engine options, call the engine, print the report (text for people, `--json` for
//! scripts). Nothing here decides anything about data.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 `verify` found damage.

/// `println!` that never panics: standard output closed by its reader (`lifeboat points |
/// head -1`) ends the printing quietly, and the command finishes its work and exits as it
/// would have (see [`output::write_out`]).
macro_rules! say {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($argument:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($argument)*)))
    };
}

/// A line on standard error for people and logs; a reader that went away (a log pipe
/// that closed) costs the line, never the process.
macro_rules! tell {
    ($($argument:tt)*) => {
        $crate::output::write_err(format_args!("{}\n", format_args!($($argument)*)))
    };
}

mod cli;
mod commands;
mod orchestrator;
mod output;
mod placement;
mod progress;
mod remote;
mod repository;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, VmCommand};

/// Exit code of a command that ran but found damage.
pub const EXIT_DAMAGE: u8 = 3;

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let json = cli.global.json;
    if let Some(url) = &cli.global.remote {
        return match remote::run(&cli.global, url) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                output::print_error(&error, json);
                ExitCode::from(1)
            }
        };
    }
    let result = match &cli.command {
        Command::Init(arguments) => commands::init::run(&cli.global, arguments),
        Command::Backup(arguments) => commands::backup::run(&cli.global, arguments),
        Command::Points(arguments) => commands::points::run(&cli.global, arguments),
        Command::Restore(arguments) => commands::restore::run(&cli.global, arguments),
        Command::Verify(arguments) => commands::verify::run(&cli.global, arguments),
        Command::Forget(arguments) => commands::forget::run(&cli.global, arguments),
        Command::Prune(arguments) => commands::prune::run(&cli.global, arguments),
        Command::Export(arguments) => commands::export::run(&cli.global, arguments),
        Command::GeoSync(arguments) => commands::geo_sync::run(&cli.global, arguments),
        Command::Status(arguments) => commands::status::run(&cli.global, arguments),
        Command::Region(command) => commands::region::run(&cli.global, command),
        Command::Protect(arguments) => commands::protect::run(&cli.global, arguments),
        Command::Receive(arguments) => commands::receive::run(&cli.global, arguments),
        Command::Dns(command) => commands::dns::run(&cli.global, command),
        Command::Failover(arguments) => commands::failover::run(&cli.global, arguments),
        Command::Cleanup(arguments) => commands::failover::cleanup(&cli.global, arguments),
        Command::Commit(arguments) => commands::failover::commit(&cli.global, arguments),
        Command::Reprotect(arguments) => commands::failover::reprotect(&cli.global, arguments),
        Command::Failback(arguments) => commands::failover::failback(&cli.global, arguments),
        Command::Drill(arguments) => commands::failover::drill(&cli.global, arguments),
        Command::Plan(command) => commands::failover::plan(&cli.global, command),
        Command::Audit(arguments) => commands::failover::audit(&cli.global, arguments),
        Command::Serve(arguments) => commands::serve::run(&cli.global, arguments),
        Command::User(crate::cli::UserCommand::Add(arguments)) => {
            commands::serve::add_user(&cli.global, arguments)
        }
        Command::Vm(VmCommand::Stop(arguments)) => commands::failover::stop(&cli.global, arguments),
        Command::Vm(VmCommand::Hydrate(arguments)) => {
            orchestrator::hydrate(&arguments.home, arguments.disks).map(|()| 0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            output::print_error(&error, json);
            ExitCode::from(1)
        }
    }
}

/// Lets glibc's allocator reuse freed buffers instead of returning them to the kernel: the
/// data path allocates and frees buffers of megabytes (cut parts, pack groups, restore
/// windows) all the time, and by default each comes from fresh zeroed pages (page faults
/// and page clearing were a tenth of the receiver's CPU at 100 MiB/s of churn). Allocations
/// under 64 MiB come from the heap, and up to 256 MiB of freed memory is kept for reuse.
/// Measured (`bench/replication.sh`, 100 MiB/s, 30 s, two runs each): the processed-point
/// RPO p50 went from 5.9–6.0 s to 3.0–3.5 s, p99 from 9.5 s to 4.5–5.1 s.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator settings; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
