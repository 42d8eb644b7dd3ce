//! `ddmd`: the DDM routing daemon.

use std::process::ExitCode;

mod alloc;
mod cli;
mod daemon;
mod logging;
mod pages;
mod port_file;

/// Tokio's worker threads. The actors' work is serial per message and the
/// heavy work is the kernel's (large netlink batches run on the blocking
/// pool, store writes on the store's thread), so a second worker mostly
/// added wake-ups: every task woken for it woke the idle sibling, which
/// then took a CPU on a prefix's way. The fabric benchmark (alternating
/// sets, medians): one prefix s1 -> s2 after an idle pause 0.76 / 0.68 /
/// 0.81 / 0.72 / 0.75 ms with one worker against 0.81 / 0.89 / 0.72 /
/// 0.79 / 0.90 with two; 100,000 withdrawn in 0.552 / 0.546 s against
/// 0.597 / 0.569, announced in 0.525 / 0.506 against 0.523 / 0.516, with
/// slightly less CPU (0.74 against 0.77 core-s for the announce). The
/// cost: whatever one task computes, the others wait for. The longest an
/// admin call (`GET /originated`, polled every 10 ms) waited during the
/// benchmark's 100,000-prefix rounds was 38 ms at the transit and 33 at
/// the receiver, against 19 and 18 with two workers: far inside the
/// protocol's timers (seconds). And an originator given 1,000,000
/// prefixes in ten requests took them all in before its pushes caught
/// up, holding the backlog meanwhile: a peak of 106-107 MiB against 87
/// with two workers, in the same time.
const WORKERS: usize = 1;

/// Most threads tokio's blocking pool may run at once.
const BLOCKING_THREADS: usize = 4;

/// How long the exit waits, at most, for blocking tasks still running (a
/// netlink batch) once the daemon has stopped, and then as long again, at
/// most, for the store's thread to finish a write under way (never
/// acknowledged, as the daemon stopped first; redb commits atomically, so
/// one cut short is simply not made, but the database is then recovered
/// at the next start).
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    alloc::tune();
    pages::note_startup_files();
    let args = cli::Args::parse_or_exit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        // The blocking pool runs the netlink socket's large batches (one
        // at a time, behind a lock; on illumos every routing-socket batch,
        // with its record): a few threads suffice, and each one costs a
        // stack and allocator state.
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
    // netlink batch that never returns would hold the exit for good.
    runtime.shutdown_timeout(EXIT_WAIT);
    if !ddm_actors::store::wait_for_store_jobs(EXIT_WAIT) {
        eprintln!("ddmd: a store write still under way at exit");
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ddmd: {e}");
            ExitCode::FAILURE
        }
    }
}
