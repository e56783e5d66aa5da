//! The `pulsecheck` binary: parses the command line and hands over to the library.
use clap::Parser;
use pulsecheck::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(command) => pulsecheck::lab::args::run(command).await,
        _ => anyhow::bail!("not implemented yet"),
    }
}
