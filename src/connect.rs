//! How pulsecheck reaches the apiserver: one place that turns `--kubeconfig`/`--context` (or the
//! in-cluster ServiceAccount) into a `kube::Client` with timeouts on every request. Every command
//! (and the lab) builds its client here.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::parse::positive_duration;

/// How to reach the cluster.
#[derive(Debug, Clone, Args, Default)]
pub struct ClientArgs {
    /// Kubeconfig file; without it, the in-cluster config, then $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "PULSECHECK_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, env = "PULSECHECK_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Timeout of every non-watch request to the apiserver.
    #[arg(long, env = "PULSECHECK_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub request_timeout: Duration,
}

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file cannot be read or parsed.
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    /// No configuration found at all.
    #[error("no cluster configuration: not in a cluster, and no kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig: {0}")]
    Infer(kube::config::InferConfigError),
    /// The context or the config is unusable.
    #[error("kubeconfig{}: {source}", context.as_ref().map(|c| format!(" context '{c}'")).unwrap_or_default())]
    Config { context: Option<String>, source: kube::config::KubeconfigError },
    /// The client cannot be built (TLS, proxy).
    #[error("cannot build a Kubernetes client: {0}")]
    Client(kube::Error),
}

/// Builds the client described by `args`. Watches are unaffected by the timeouts because kube
/// sets its own timeouts on watch requests; every other request times out after
/// `--request-timeout`.
pub async fn client(args: &ClientArgs) -> Result<kube::Client, Error> {
    let options = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig { path: path.display().to_string(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|source| Error::Config { context: args.context.clone(), source })?
        }
        None if args.context.is_some() => {
            kube::Config::from_kubeconfig(&options).await.map_err(|source| Error::Config { context: args.context.clone(), source })?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    apply_timeouts(&mut config, args.request_timeout);
    kube::Client::try_from(config).map_err(Error::Client)
}

/// Connect and write timeouts; the read timeout stays off so watches can idle (kube bounds them
/// server-side), and pulsecheck wraps every non-watch call in its own timeout.
pub fn apply_timeouts(config: &mut kube::Config, request_timeout: Duration) {
    config.connect_timeout = Some(request_timeout);
    config.write_timeout = Some(request_timeout);
    config.read_timeout = None;
}
