//! Command-line arguments of `pulsecheck lab …` and their entry point (owned by the lab modules).

use clap::Subcommand;

/// `pulsecheck lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a local kube-apiserver + etcd (and optionally a simulated fleet) until SIGINT/SIGTERM.
    Up,
}

/// Runs a `pulsecheck lab` subcommand to completion.
pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up => anyhow::bail!("not implemented yet"),
    }
}
