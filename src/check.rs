//! `pulsecheck check`: judge the nodes of the current cluster once, for a person at a terminal.

/// Arguments of `pulsecheck check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {}
