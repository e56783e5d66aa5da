//! The `pulsecheck` binary: parses the command line and hands over to the library.
//!
//! Exit codes, the same for every command: 0 success; 1 findings (`check` found nodes that need
//! attention); 2 errors (bad input, named in the message, or a command that could not do its job).

use std::process::ExitCode;

use clap::Parser;
use pulsecheck::{
    Outcome,
    cli::{Cli, Command},
};

#[tokio::main]
async fn main() -> ExitCode {
    // Installed once for the whole process: kube's client and the prober pick it up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Invoked as `kubectl-pulsecheck` (a kubectl plugin), behave like `pulsecheck check`.
    let cli = Cli::parse_from(pulsecheck::check::argv_as_check(std::env::args_os().collect()));
    match cli.command {
        Command::Run(args) => exit(pulsecheck::controller::run(*args).await),
        Command::Check(args) => exit(pulsecheck::check::run(*args).await),
        Command::Cleanup(args) => exit(pulsecheck::cleanup::run(*args).await),
    }
}

/// The one exit-code convention: 0 clean, 1 findings, 2 any error (clap exits 2 on bad flags too).
fn exit<E: std::fmt::Display>(outcome: Result<Outcome, E>) -> ExitCode {
    match outcome {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Findings) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
