//! Command-line arguments of `pulsecheck lab …` (owned by the lab modules).

use clap::Subcommand;

/// `pulsecheck lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a local kube-apiserver + etcd (and optionally a simulated fleet) until SIGINT/SIGTERM.
    Up,
}
