//! `ddmd`: the DDM routing daemon.

use std::process::ExitCode;

mod alloc;
mod cli;
mod daemon;
mod logging;
mod pages;
mod port_file;

/// Most threads tokio's blocking pool may run at once.
const BLOCKING_THREADS: usize = 4;

/// How long the exit waits for blocking tasks still running (a store
/// write, a netlink request) once the daemon has stopped.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    alloc::tune();
    pages::note_startup_files();
    let args = cli::Args::parse_or_exit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The blocking pool runs the netlink socket (one at a time, behind
        // a lock) and the store: a few threads suffice, and each one costs
        // a stack and allocator state.
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ddmd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ran = runtime.block_on(daemon::run(args));
    // Not the runtime's drop, which waits for every blocking task: a
    // store write stuck on a hung disk would hold the exit for good.
    runtime.shutdown_timeout(EXIT_WAIT);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ddmd: {e}");
            ExitCode::FAILURE
        }
    }
}
