//! `pulsecheck demo`: a local control plane, a simulated fleet and the controller at work.

use std::process::ExitCode;

/// Arguments of `pulsecheck demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {}

/// Runs `pulsecheck demo`.
pub async fn main(_args: DemoArgs) -> ExitCode {
    eprintln!("error: not implemented yet");
    ExitCode::from(2)
}
