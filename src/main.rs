//! The `pulsecheck` binary: parses the command line and hands over to the library.
//!
//! Exit codes: 0 success; 1 `check` found unhealthy nodes, or a runtime failure; 2 bad input
//! (flags, files, configuration) or, for `check`, an error reaching the cluster.

use std::process::ExitCode;

use clap::Parser;
use pulsecheck::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // Installed once for the whole process: kube's client and the lab's TLS pick it up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Invoked as `kubectl-pulsecheck` (a kubectl plugin), behave like `pulsecheck check`.
    let cli = Cli::parse_from(pulsecheck::check::argv_as_check(std::env::args_os().collect()));
    match cli.command {
        Command::Run(args) => match pulsecheck::controller::run(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, if e.is_usage() { 2 } else { 1 }),
        },
        Command::Cleanup(args) => match pulsecheck::cleanup::run(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, if e.is_usage() { 2 } else { 1 }),
        },
        Command::Check(args) => pulsecheck::check::main(*args).await,
        Command::Demo(args) => pulsecheck::demo::main(*args).await,
        Command::Lab(command) => match pulsecheck::lab::args::run(command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(code)
}
