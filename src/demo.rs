//! `pulsecheck demo`: a local control plane, a simulated fleet and the controller at work.

/// Arguments of `pulsecheck demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {}
