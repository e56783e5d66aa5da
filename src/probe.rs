//! Kubelet probes (placeholder until the prober lands): the types the controller wires.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{cli::{ProbeArgs, ProbeMode}, facts::{KubeletEndpoint, ProbeOutcome}, metrics::Metrics};

/// Errors setting up the prober.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CA file is unusable.
    #[error("--kubelet-certificate-authority: {0}")]
    Ca(String),
}

impl Error {
    /// True for errors in the user's input.
    pub fn is_usage(&self) -> bool {
        true
    }
}

/// One node to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget {
    /// Node name.
    pub node: String,
    /// Where its kubelet listens.
    pub endpoint: KubeletEndpoint,
}

/// One probe result.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Node name.
    pub node: String,
    /// What happened.
    pub outcome: ProbeOutcome,
    /// When.
    pub at: Timestamp,
}

/// Prober settings.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    mode: ProbeMode,
}

impl ProbeSettings {
    /// From the flags.
    pub fn from_args(args: &ProbeArgs) -> ProbeSettings {
        ProbeSettings { mode: args.probe }
    }
    /// The configured mode.
    pub fn mode(&self) -> ProbeMode {
        self.mode
    }
}

/// The prober.
#[derive(Clone)]
pub struct Prober;

impl Prober {
    /// Builds a prober.
    pub fn new(_settings: ProbeSettings, _client: kube::Client) -> Result<Prober, Error> {
        Ok(Prober)
    }
    /// Why the mode fell back, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        None
    }
}

/// Runs probes until shutdown.
pub async fn run_scheduler(_p: Prober, _i: Duration, _c: usize, _t: watch::Receiver<Vec<ProbeTarget>>, _r: mpsc::Sender<ProbeReport>, _m: Metrics, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}
