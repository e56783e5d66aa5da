//! The `pulsecheck-lab` binary: a real local control plane, a simulated kubelet fleet and the
//! demo, for tests, experiments and `make demo`. Never shipped in the image.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // Installed once for the whole process: kube's client and the lab's TLS pick it up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    pulsecheck_lab::args::run(pulsecheck_lab::args::Cli::parse()).await
}
