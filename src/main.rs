//! The `pulsecheck` binary: parses the command line and hands over to the library.
use clap::Parser;
use pulsecheck::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        _ => Ok(()),
    }
}
