//! `ddmd`: the DDM routing daemon.

use std::process::ExitCode;

mod cli;
mod daemon;
mod logging;
mod port_file;

fn main() -> ExitCode {
    let args = cli::Args::parse_or_exit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ddmd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ddmd: {e}");
            ExitCode::FAILURE
        }
    }
}
