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

/// A bearer credential of the kubeconfig's user that `kubelet-healthz` probes may present to
/// kubelets when there is no `--token-file` to read (pulsecheck run outside a Pod). Only bearer
/// tokens qualify: a client certificate is the apiserver's business (kubelets trust their own
/// client CA), and an exec or auth-provider plugin's token is never handed out by the client.
#[derive(Clone, PartialEq, Eq)]
pub enum KubeletCredential {
    /// The kubeconfig's `token`.
    Token(String),
    /// The kubeconfig's `tokenFile`, read afresh on every probe.
    TokenFile(PathBuf),
}

impl std::fmt::Debug for KubeletCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeletCredential::Token(_) => f.write_str("Token(<redacted>)"),
            KubeletCredential::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
        }
    }
}

/// The bearer credential `config` authenticates with, or why it has none kubelets could take.
pub fn kubelet_credential(config: &kube::Config) -> Result<KubeletCredential, &'static str> {
    use secrecy::ExposeSecret;
    let auth = &config.auth_info;
    if let Some(token) = auth.token.as_ref().map(|t| t.expose_secret().trim().to_string()).filter(|t| !t.is_empty()) {
        return Ok(KubeletCredential::Token(token));
    }
    if let Some(file) = auth.token_file.as_ref().filter(|f| !f.is_empty()) {
        return Ok(KubeletCredential::TokenFile(PathBuf::from(file)));
    }
    if auth.exec.is_some() || auth.auth_provider.is_some() {
        Err("the kubeconfig's user gets its token from a plugin (exec or auth-provider), which pulsecheck does not pass on to kubelets")
    } else if auth.client_certificate.is_some() || auth.client_certificate_data.is_some() {
        Err("the kubeconfig's user authenticates with a client certificate, which kubelets need not trust")
    } else {
        Err("the kubeconfig's user has no bearer token")
    }
}

/// The client configuration described by `args`, with pulsecheck's timeouts.
pub async fn config(args: &ClientArgs) -> Result<kube::Config, Error> {
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
    Ok(config)
}

/// Builds the client described by `args`. Watches are unaffected by the timeouts because kube
/// sets its own timeouts on watch requests; every other request times out after
/// `--request-timeout`.
pub async fn client(args: &ClientArgs) -> Result<kube::Client, Error> {
    kube::Client::try_from(config(args).await?).map_err(Error::Client)
}

/// Connect and write timeouts; the read timeout stays off so watches can idle (kube bounds them
/// server-side), and pulsecheck wraps every non-watch call in its own timeout.
pub fn apply_timeouts(config: &mut kube::Config, request_timeout: Duration) {
    config.connect_timeout = Some(request_timeout);
    config.write_timeout = Some(request_timeout);
    config.read_timeout = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn config_of(user: &str) -> kube::Config {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\nusers:\n- name: u\n  user:\n{user}"
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("a valid kubeconfig");
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("a usable kubeconfig")
    }

    #[tokio::test]
    async fn only_bearer_tokens_of_the_kubeconfig_are_offered_to_kubelets() {
        assert_eq!(kubelet_credential(&config_of("    token: abc\n").await), Ok(KubeletCredential::Token("abc".into())));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "from-file").unwrap();
        let from_file = config_of(&format!("    tokenFile: {}\n", file.display())).await;
        // kube reads a tokenFile itself; either way the same token reaches the kubelet.
        assert!(
            matches!(kubelet_credential(&from_file), Ok(KubeletCredential::TokenFile(_) | KubeletCredential::Token(_))),
            "{:?}",
            kubelet_credential(&from_file)
        );
        let why = kubelet_credential(&config_of("    username: a\n    password: b\n").await).unwrap_err();
        assert!(why.contains("no bearer token"), "{why}");
        assert!(!format!("{:?}", KubeletCredential::Token("secret".into())).contains("secret"), "the token is never printed");
    }
}
