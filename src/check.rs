//! `pulsecheck check`: judge the nodes of the current cluster once, for a person at a terminal.

use std::process::ExitCode;

/// Arguments of `pulsecheck check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {}

/// Runs `pulsecheck check`.
pub async fn main(_args: CheckArgs) -> ExitCode {
    eprintln!("error: not implemented yet");
    ExitCode::from(2)
}
