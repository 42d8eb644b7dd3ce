//! Bunyan JSON logs on stdout.

use slog::{o, Drain, Level, Logger};

/// Parse a level name as `--log-level` and `RUST_LOG` spell it.
pub fn parse_level(s: &str) -> Result<Level, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "trace" => Ok(Level::Trace),
        "debug" => Ok(Level::Debug),
        "info" => Ok(Level::Info),
        "warn" | "warning" => Ok(Level::Warning),
        "error" => Ok(Level::Error),
        "crit" | "critical" => Ok(Level::Critical),
        other => Err(format!(
            "unknown log level {other:?} (expected trace, debug, info, warn, \
             error or critical)"
        )),
    }
}

/// The level from the flag, else `RUST_LOG` (a bare level name), else info.
pub fn level(flag: Option<Level>) -> Level {
    flag.or_else(|| {
        std::env::var("RUST_LOG").ok().and_then(|v| parse_level(&v).ok())
    })
    .unwrap_or(Level::Info)
}

/// A logger writing bunyan JSON lines to stdout, and the guard that flushes
/// it when dropped.
pub fn init(level: Level) -> (Logger, slog_async::AsyncGuard) {
    let drain =
        slog_bunyan::with_name("ddmd", std::io::stdout()).build().fuse();
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(1024)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("ddmd-log".to_string())
        .build_with_guard();
    let drain = drain.filter_level(level).fuse();
    (Logger::root(drain, o!()), guard)
}
