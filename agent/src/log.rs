//! Logging that can never block the agent: lines go to stderr from a thread of their own,
//! through a bounded queue that drops lines when full.
//!
//! The container runtime writes the agent's stderr to a log file under `/var/log/pods`, on the
//! node's disk. When that disk hangs, the runtime stops draining the pipe, the pipe fills, and a
//! plain `write(2)` to stderr blocks — a network loop that logged its renewal would stop
//! renewing on the very failure it exists to report. So every line is handed to
//! tracing-appender's non-blocking writer in lossy mode: the writer thread may block on the
//! pipe, the queue fills, and further lines are dropped (counted, never waited for).
//!
//! What this module must never do: write to stderr from the caller's thread.

use clap::Args;
use pulsecheck::admin::LogFormat;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines queued for stderr before new ones are dropped: minutes of the agent's usual output,
/// and a bounded amount of memory when stderr blocks.
const QUEUED_LINES: usize = 1024;

/// How the agent logs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "PULSECHECK_AGENT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log filter in tracing's env-filter syntax.
    #[arg(long, env = "PULSECHECK_AGENT_LOG", value_name = "FILTER", default_value = "info")]
    pub log_filter: String,
}

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter does not parse.
    #[error("--log-filter '{filter}': {source}")]
    Filter { filter: String, source: tracing_subscriber::filter::ParseError },
}

/// The filter `args` ask for, or what is wrong with it.
pub fn filter(args: &LogArgs) -> Result<EnvFilter, Error> {
    EnvFilter::builder().parse(&args.log_filter).map_err(|source| Error::Filter { filter: args.log_filter.clone(), source })
}

/// Starts logging to stderr through the lossy queue. Keep the guard until exit: dropping it
/// flushes what is queued (waiting about a second at most).
pub fn init(format: LogFormat, filter: EnvFilter) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default().lossy(true).buffered_lines_limit(QUEUED_LINES).thread_name("log-writer").finish(std::io::stderr());
    // Colours only for a person at a terminal: never escape codes in `kubectl logs`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    guard
}
