//! The kubelet prober: turns sockets into evidence.
//!
//! A zombie node renews its Lease while its NodeStatus goes stale; NodeStatus takes minutes to
//! look stale, and a kubelet whose sync loop is wedged may still renew its Lease. Asking the
//! kubelet itself (`/healthz` on its port, which includes the sync loop) gives independent
//! evidence within seconds. This module asks; it never decides: each probe becomes a
//! [`ProbeOutcome`], and [`crate::verdict`] weighs the outcomes (behind the partition guard).
//!
//! Four modes ([`ProbeMode`]):
//! * `kubelet-healthz` — HTTPS `GET /healthz` on the kubelet port with pulsecheck's
//!   ServiceAccount token (RBAC `nodes/healthz`, or `nodes/proxy` on kubelets without
//!   KubeletFineGrainedAuthz);
//! * `tcp` — a TCP connect and TLS handshake, nothing sent;
//! * `apiserver-proxy` — `GET /api/v1/nodes/NAME/proxy/healthz` through the apiserver (RBAC
//!   `nodes/proxy`, which also allows exec into every pod);
//! * `none`.
//!
//! The one rule this module must never break: **a bearer token is only ever sent over a TLS
//! connection whose certificate was verified against `--kubelet-certificate-authority`, or when
//! the operator explicitly chose `--kubelet-insecure-tls`.** With neither, `kubelet-healthz`
//! falls back to `tcp` and says so. The rule is structural: only the `Transport::Healthz`
//! variant reads the token file, and it exists only when one of the two flags was given.
//!
//! Every probe is bounded by the probe timeout and never panics; [`run_scheduler`] runs them
//! concurrently so that a hanging kubelet delays nobody else.

mod scheduler;
mod tls;

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::{info, instrument, warn};

pub use scheduler::{ProbeReport, run_scheduler};

pub use crate::connect::KubeletCredential;
use crate::{
    cadence::KubeletCadence,
    facts::{KubeletEndpoint, ProbeOutcome},
    parse::{percentage, positive_duration},
};

/// How pulsecheck asks a kubelet whether it still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeMode {
    /// HTTPS GET /healthz on the kubelet port with the ServiceAccount token (RBAC: nodes/healthz).
    KubeletHealthz,
    /// A TCP connect and TLS handshake with the kubelet port; no credentials are sent.
    Tcp,
    /// GET /api/v1/nodes/NAME/proxy/healthz through the apiserver (RBAC: nodes/proxy, which also allows exec!).
    ApiserverProxy,
    /// No probes.
    None,
}

impl ProbeMode {
    /// The mode as `--probe` spells it (and the `mode` label of `pulsecheck_probe_mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeMode::KubeletHealthz => "kubelet-healthz",
            ProbeMode::Tcp => "tcp",
            ProbeMode::ApiserverProxy => "apiserver-proxy",
            ProbeMode::None => "none",
        }
    }
}

/// Kubelet probes: faster, independent evidence.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// How to probe kubelets.
    #[arg(long = "probe", env = "PULSECHECK_PROBE", value_enum, default_value = "kubelet-healthz")]
    pub probe: ProbeMode,
    /// How often each node with a live Lease is probed (with jitter).
    #[arg(long, env = "PULSECHECK_PROBE_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub probe_interval: Duration,
    /// Timeout of one probe.
    #[arg(long, env = "PULSECHECK_PROBE_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub probe_timeout: Duration,
    /// At most this many probes in flight.
    #[arg(long, env = "PULSECHECK_PROBE_CONCURRENCY", value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_concurrency: u32,
    /// Consecutive failed probes (while the Lease is alive) that become evidence.
    #[arg(long, env = "PULSECHECK_PROBE_FAILURE_THRESHOLD", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_failure_threshold: u32,
    /// Probes failing this long make a node a zombie without other evidence, if every one got through to the kubelet (it answered unhealthy, or took the request and hung or broke off); not getting through (no connection, through the apiserver proxy no answer) stays supporting evidence.
    #[arg(long, env = "PULSECHECK_PROBE_ZOMBIE_AFTER", value_name = "DURATION", default_value = "3m", value_parser = positive_duration)]
    pub probe_zombie_after: Duration,
    /// When probes fail for more than this percentage of nodes with live Leases, pulsecheck assumes its own network is cut off.
    #[arg(long, env = "PULSECHECK_PROBE_PARTITION_THRESHOLD", value_name = "PERCENT", default_value = "50", value_parser = percentage)]
    pub probe_partition_threshold: f64,
    /// Order of node address types to probe.
    #[arg(
        long,
        env = "PULSECHECK_KUBELET_PREFERRED_ADDRESS_TYPES",
        value_name = "TYPES",
        value_delimiter = ',',
        default_value = "InternalIP,ExternalIP,Hostname"
    )]
    pub kubelet_preferred_address_types: Vec<String>,
    /// CA bundle that signs kubelet serving certificates; with it the token is sent over verified TLS.
    #[arg(long, env = "PULSECHECK_KUBELET_CERTIFICATE_AUTHORITY", value_name = "PATH")]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// Send the token to kubelets without verifying their certificates (the metrics-server precedent). Insecure.
    #[arg(long, env = "PULSECHECK_KUBELET_INSECURE_TLS", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kubelet_insecure_tls: bool,
    /// Bearer token file for kubelet-healthz probes, re-read on every probe (projected tokens rotate).
    #[arg(long, env = "PULSECHECK_TOKEN_FILE", value_name = "PATH", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token")]
    pub token_file: PathBuf,
    /// With kubelet-healthz: also read each kubelet's /configz (RBAC nodes/configz, read-only) every 10m to judge the node against its own status cadence.
    #[arg(long, env = "PULSECHECK_KUBELET_CONFIGZ", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kubelet_configz: bool,
}

/// What can stop the prober from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA bundle cannot be read.
    #[error("cannot read --kubelet-certificate-authority {path}: {source}")]
    ReadCertificateAuthority {
        /// The file given.
        path: String,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle holds no certificate rustls accepts as a trust anchor.
    #[error("--kubelet-certificate-authority {path} holds no usable PEM certificate{}", if rejected.is_empty() { String::new() } else { format!(" ({rejected})") })]
    NoCertificates {
        /// The file given.
        path: String,
        /// Why certificates in it were rejected, if any were found.
        rejected: String,
    },
    /// Both TLS flags were given; they mean opposite things.
    #[error(
        "--kubelet-certificate-authority and --kubelet-insecure-tls contradict each other: give the CA to verify kubelet certificates, or the insecure flag to skip verification, not both"
    )]
    CertificateAuthorityAndInsecure,
    /// rustls refused the configuration.
    #[error("cannot build the kubelet TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Result of this module's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One node to probe: its name and where its kubelet listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The Node's name.
    pub node: String,
    /// Its addresses and kubelet port, from the Node's status.
    pub endpoint: KubeletEndpoint,
    /// Its kubelet's configuration may have changed (a report came early): read `/configz`
    /// again at the next probe (at most every [`scheduler::CADENCE_RECHECK`]).
    pub recheck_cadence: bool,
}

/// Everything the prober needs from the command line (`--probe*`, `--kubelet-*`, `--token-file`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    /// The requested mode (`--probe`); see [`Prober::effective_mode`] for the one in force.
    pub mode: ProbeMode,
    /// Bound of one probe (`--probe-timeout`).
    pub timeout: Duration,
    /// How often each node is probed (`--probe-interval`), for [`run_scheduler`].
    pub interval: Duration,
    /// Probes in flight at most (`--probe-concurrency`), for [`run_scheduler`].
    pub concurrency: usize,
    /// Node address types to try, in order (`--kubelet-preferred-address-types`).
    pub preferred_address_types: Vec<String>,
    /// CA bundle of kubelet serving certificates (`--kubelet-certificate-authority`).
    pub ca: Option<PathBuf>,
    /// Send the token without verifying kubelet certificates (`--kubelet-insecure-tls`).
    pub insecure_tls: bool,
    /// Bearer token file, re-read on every probe (`--token-file`).
    pub token_file: PathBuf,
    /// Read kubelets' `/configz` for their status cadence (`--kubelet-configz`).
    pub configz: bool,
    /// What to send when `--token-file` cannot be read: the kubeconfig user's bearer token
    /// (`pulsecheck run` outside a Pod), or why there is none. Set by `run` from its client
    /// configuration, not by a flag.
    pub kubeconfig_credential: Result<KubeletCredential, String>,
}

impl Default for ProbeSettings {
    /// The flags' defaults.
    fn default() -> Self {
        ProbeSettings {
            mode: ProbeMode::KubeletHealthz,
            timeout: Duration::from_secs(5),
            interval: Duration::from_secs(30),
            concurrency: 32,
            preferred_address_types: ["InternalIP", "ExternalIP", "Hostname"].map(String::from).to_vec(),
            ca: None,
            insecure_tls: false,
            token_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            configz: true,
            kubeconfig_credential: Err(NO_KUBECONFIG_CREDENTIAL.into()),
        }
    }
}

/// Why probes have no kubeconfig credential before `run` looked for one.
const NO_KUBECONFIG_CREDENTIAL: &str = "no kubeconfig credential was looked up";

impl ProbeSettings {
    /// The settings as given on the command line.
    pub fn from_args(args: &ProbeArgs) -> ProbeSettings {
        ProbeSettings {
            mode: args.probe,
            timeout: args.probe_timeout,
            interval: args.probe_interval,
            concurrency: usize::try_from(args.probe_concurrency).unwrap_or(usize::MAX).max(1),
            preferred_address_types: args.kubelet_preferred_address_types.clone(),
            ca: args.kubelet_certificate_authority.clone(),
            insecure_tls: args.kubelet_insecure_tls,
            token_file: args.token_file.clone(),
            configz: args.kubelet_configz,
            kubeconfig_credential: Err(NO_KUBECONFIG_CREDENTIAL.into()),
        }
    }
}

/// Why `kubelet-healthz` runs as `tcp` when no way to trust a kubelet was given.
const NO_TRUST_FALLBACK: &str = "--probe=kubelet-healthz without --kubelet-certificate-authority or --kubelet-insecure-tls: \
pulsecheck never sends its token to a kubelet whose certificate it cannot verify, so it probes with --probe=tcp \
(TCP connect and TLS handshake, no credentials, does not see a wedged sync loop)";

/// How probes reach kubelets; fixed at start-up.
enum Transport {
    /// HTTPS GET /healthz with the bearer token. Only built with a CA (`verified`) or with the
    /// explicit insecure flag.
    Healthz { tls: TlsConnector, verified: bool },
    /// TCP connect + TLS handshake with any certificate; nothing is sent.
    Handshake { tls: TlsConnector },
    /// GET /api/v1/nodes/NAME/proxy/healthz through the apiserver.
    ApiserverProxy,
    /// `--probe=none`.
    Disabled,
}

struct Inner {
    transport: Transport,
    fallback_reason: Option<String>,
    timeout: Duration,
    preferred_address_types: Vec<String>,
    token_file: PathBuf,
    configz: bool,
    kubeconfig_credential: Result<KubeletCredential, String>,
    client: kube::Client,
}

/// Asks kubelets whether they work. Cheap to clone: everything is shared behind an `Arc`.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("effective_mode", &self.effective_mode())
            .field("fallback_reason", &self.fallback_reason())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// Builds the TLS configurations and decides the effective mode.
    ///
    /// `kubelet-healthz` with neither `--kubelet-certificate-authority` nor
    /// `--kubelet-insecure-tls` falls back to `tcp` (no token is ever sent) and says so once,
    /// here, as a warning and in [`Prober::fallback_reason`]. `--kubelet-insecure-tls` is
    /// honoured with a warning. Both flags together are an error.
    ///
    /// `client` is only used by `apiserver-proxy`. Build it with `kube::Config::default_retry`
    /// set to `false`: kube's default policy retries 503 — the apiserver's answer when it
    /// cannot reach a kubelet — with backoff, which turns an unreachable kubelet into a
    /// `Timeout` without its reason and multiplies the proxy requests.
    pub fn new(settings: ProbeSettings, client: kube::Client) -> Result<Prober> {
        let mut fallback_reason = None;
        let transport = match settings.mode {
            ProbeMode::KubeletHealthz => match (&settings.ca, settings.insecure_tls) {
                (Some(_), true) => return Err(Error::CertificateAuthorityAndInsecure),
                (Some(ca), false) => Transport::Healthz { tls: TlsConnector::from(Arc::new(tls::verified(ca)?)), verified: true },
                (None, true) => {
                    warn!(
                        "--kubelet-insecure-tls: kubelet certificates are NOT verified and pulsecheck's token is sent to whatever answers on a node's address; give --kubelet-certificate-authority instead where kubelet serving certificates are signed by a cluster CA"
                    );
                    Transport::Healthz { tls: TlsConnector::from(Arc::new(tls::accept_any(true)?)), verified: false }
                }
                (None, false) => {
                    warn!(reason = NO_TRUST_FALLBACK, "kubelet probes fall back to tcp");
                    fallback_reason = Some(NO_TRUST_FALLBACK.to_string());
                    Transport::Handshake { tls: TlsConnector::from(Arc::new(tls::accept_any(false)?)) }
                }
            },
            ProbeMode::Tcp => Transport::Handshake { tls: TlsConnector::from(Arc::new(tls::accept_any(false)?)) },
            ProbeMode::ApiserverProxy => Transport::ApiserverProxy,
            ProbeMode::None => Transport::Disabled,
        };
        if matches!(transport, Transport::Healthz { .. })
            && let Err(why) = read_bearer(&settings.token_file, "--token-file")
        {
            // Outside a Pod there is no ServiceAccount token: the kubeconfig's, or no probe at all.
            match &settings.kubeconfig_credential {
                Ok(credential) => match bearer_of(credential) {
                    Ok(_) => info!(why, "kubelet-healthz probes send the kubeconfig user's bearer token instead of --token-file"),
                    Err(also) => warn!(
                        why,
                        also,
                        "kubelet-healthz probes cannot send a token, so no kubelet will be probed until one is readable (pulsecheck_probe_misconfigured stays 1)"
                    ),
                },
                Err(also) => warn!(
                    why,
                    also = also.as_str(),
                    "kubelet-healthz probes cannot send a token, so no kubelet will be probed until --token-file is readable (pulsecheck_probe_misconfigured stays 1)"
                ),
            }
        }
        Ok(Prober {
            inner: Arc::new(Inner {
                transport,
                fallback_reason,
                timeout: settings.timeout,
                preferred_address_types: settings.preferred_address_types,
                token_file: settings.token_file,
                configz: settings.configz,
                kubeconfig_credential: settings.kubeconfig_credential,
                client,
            }),
        })
    }

    /// The mode in force: the requested one, or `Tcp` after the no-trust fallback.
    pub fn effective_mode(&self) -> ProbeMode {
        match self.inner.transport {
            Transport::Healthz { .. } => ProbeMode::KubeletHealthz,
            Transport::Handshake { .. } => ProbeMode::Tcp,
            Transport::ApiserverProxy => ProbeMode::ApiserverProxy,
            Transport::Disabled => ProbeMode::None,
        }
    }

    /// Why the effective mode differs from the requested one, if it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.inner.fallback_reason.as_deref()
    }

    /// True when kubelet certificates are verified against a CA before the token is sent
    /// (false for `--kubelet-insecure-tls` and for every mode that sends no token to kubelets).
    pub fn verifies_kubelet_certificates(&self) -> bool {
        matches!(self.inner.transport, Transport::Healthz { verified: true, .. })
    }

    /// The timeout every probe is bounded by.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// One probe of one node, bounded by the probe timeout. Never panics, never fails: every
    /// result is a [`ProbeOutcome`] — 2xx is `Success`; 401/403 is `Unauthorized` naming the
    /// missing permission; a 5xx with the kubelet's healthz report is `Failure`; a request taken
    /// over TLS and not answered in time is `Timeout`, broken off without an answer `NoAnswer`;
    /// no connection, a TLS handshake the other side breaks off, or an apiserver proxy that
    /// cannot reach the kubelet, fails on its own or does not answer in time is `Unreachable`;
    /// a TLS handshake that does not complete in time is `NoHandshake`; a certificate
    /// pulsecheck does not accept is `Untrusted`; an answer that says nothing about health (a
    /// redirect, 404, 429, a 5xx without a healthz report, the kubelet unable to authorize the
    /// request, something not HTTP) is `Inconclusive`; no usable address, no port or an
    /// unreadable token file is `NotProbed`.
    ///
    /// How far the probe got when its time ran out decides what the timeout means: only a
    /// kubelet that took the request over a completed TLS handshake and then hung is a
    /// `Timeout`. A handshake that never completes is the path (one that drops large packets —
    /// a path-MTU black hole passes the TCP handshake and loses the certificate), not the
    /// kubelet: the kubelet's TLS server does not wait on its sync loop or its disk.
    #[instrument(level = "debug", skip_all, fields(node = %target.node))]
    pub async fn probe(&self, target: &ProbeTarget) -> ProbeOutcome {
        let inner = &*self.inner;
        let progress = Progress::default();
        // The request stage ends a little before the probe's own timeout, so that a request
        // still unanswered can be told apart while its connection is open (see `healthz`).
        let margin = (inner.timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(250));
        let request_deadline = tokio::time::Instant::now() + inner.timeout.saturating_sub(margin);
        let attempt = async {
            match &inner.transport {
                Transport::Healthz { tls, .. } => inner.healthz(tls, target, &progress, request_deadline).await,
                Transport::Handshake { tls } => inner.handshake(tls, target, &progress).await,
                Transport::ApiserverProxy => inner.apiserver_proxy(&target.node, &progress).await,
                Transport::Disabled => ProbeOutcome::NotProbed("kubelet probes are off (--probe=none)".into()),
            }
        };
        let outcome = match tokio::time::timeout(inner.timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => progress.timed_out(inner.timeout),
        };
        tracing::debug!(?outcome, "kubelet probe");
        outcome
    }
}

impl Prober {
    /// True when this prober reads kubelets' `/configz` (`--kubelet-configz`): only
    /// `kubelet-healthz` over TLS that was verified. Not with `--kubelet-insecure-tls`: what
    /// answers could claim any cadence, and a long one would hide a zombie for an hour.
    pub fn reads_configz(&self) -> bool {
        self.inner.configz && matches!(self.inner.transport, Transport::Healthz { verified: true, .. })
    }

    /// What node `target`'s kubelet says of its status cadence (`GET /configz`, RBAC
    /// `nodes/configz` on 1.33+, `nodes/proxy` before), bounded by the probe timeout; why not,
    /// when it cannot be read. `None` when this prober sends no token to kubelets.
    #[instrument(level = "debug", skip_all, fields(node = %target.node))]
    pub async fn kubelet_cadence(&self, target: &ProbeTarget) -> Option<std::result::Result<KubeletCadence, String>> {
        let inner = &*self.inner;
        let Transport::Healthz { tls, .. } = &inner.transport else { return None };
        if !self.reads_configz() {
            return None;
        }
        let attempt = async {
            let peers = Peer::candidates(&target.endpoint, &inner.preferred_address_types)?;
            let bearer = inner.bearer()?;
            let (peer, stream) = connect_first(&peers, tls, inner.timeout, &Progress::default()).await.map_err(|outcome| match outcome {
                ProbeOutcome::Unreachable(why)
                | ProbeOutcome::Untrusted(why)
                | ProbeOutcome::NotProbed(why)
                | ProbeOutcome::Failure(why)
                | ProbeOutcome::NoAnswer(why)
                | ProbeOutcome::NoHandshake(why)
                | ProbeOutcome::Inconclusive(why)
                | ProbeOutcome::Unauthorized(why) => why,
                other => format!("{other:?}"),
            })?;
            let (status, body) = get(stream, &peer.authority(), bearer, "/configz", Some(CONFIGZ_LIMIT)).await.map_err(|e| e.to_string())?;
            match status {
                s if s.is_success() => KubeletCadence::from_configz(&body),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(format!(
                    "kubelet at {} answered {} to /configz: pulsecheck's ServiceAccount needs `get` on `nodes/configz` (1.33+) to learn the node's status cadence{}",
                    peer.authority(),
                    status.as_u16(),
                    summary(&body)
                )),
                _ => Err(format!("kubelet at {} answered {} to /configz{}", peer.authority(), status.as_u16(), summary(&body))),
            }
        };
        Some(tokio::time::timeout(inner.timeout, attempt).await.unwrap_or_else(|_| Err(format!("no /configz answer within {:?}", inner.timeout))))
    }
}

/// What a request over a completed TLS handshake that got no answer in time means. Only a kubelet
/// whose kernel acknowledged the request took it and hangs (`Timeout`, evidence against the
/// node). Bytes of the request still unacknowledged mean they never arrived: a path that
/// delivered the handshake towards pulsecheck and drops the larger request towards the node (a
/// one-way path-MTU black hole, the bearer token making the request the largest packet) — the
/// path, not the kubelet, so `Unreachable`.
fn unanswered(unacknowledged: Option<u32>, authority: &str, timeout: Duration) -> ProbeOutcome {
    match unacknowledged {
        Some(bytes) if bytes > 0 => ProbeOutcome::Unreachable(format!(
            "the kubelet at {authority} completed the TLS handshake, but {bytes} bytes of the request were still unacknowledged after {timeout:?}: the path drops packets towards the kubelet (a path-MTU black hole?), not a kubelet that hangs"
        )),
        _ => ProbeOutcome::Timeout,
    }
}

/// Bytes written to `socket` and not yet acknowledged by the peer, sent or not (`SIOCOUTQ`:
/// `write_seq - snd_una`), or `None` when the kernel does not say.
#[cfg(target_os = "linux")]
fn unacknowledged_bytes(socket: std::os::fd::RawFd) -> Option<u32> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which points at `queued`;
    // `socket` is the open descriptor of a TCP connection the caller still owns.
    let rc = unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &mut queued) };
    if rc == 0 { u32::try_from(queued).ok() } else { None }
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged_bytes(_socket: std::os::fd::RawFd) -> Option<u32> {
    None
}

/// The most of a `/configz` body pulsecheck reads (a kubelet's is a few KiB).
const CONFIGZ_LIMIT: usize = 256 * 1024;

/// True when any of `outcomes` says pulsecheck itself cannot probe: it lacks permission or does
/// not trust the kubelet's certificate (`pulsecheck_probe_misconfigured`).
pub fn is_misconfigured<'a>(outcomes: impl IntoIterator<Item = &'a ProbeOutcome>) -> bool {
    outcomes.into_iter().any(|o| matches!(o, ProbeOutcome::Unauthorized(_) | ProbeOutcome::Untrusted(_)))
}

/// How far one probe got, so that its timeout can say what it means ([`Prober::probe`]).
#[derive(Debug, Default)]
struct Progress(std::sync::Mutex<Stage>);

/// The stages of a probe, in order.
#[derive(Debug, Clone, Default)]
enum Stage {
    /// No TCP connection yet.
    #[default]
    Connecting,
    /// Connected to the kubelet at this `host:port`; the TLS handshake is under way.
    Handshaking(String),
    /// The request went to the kubelet over a completed TLS handshake.
    Requested,
    /// The request went to the apiserver's node proxy.
    Proxied,
}

impl Progress {
    fn reached(&self, stage: Stage) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = stage;
    }

    /// What running out of time at the stage reached means.
    fn timed_out(&self, timeout: Duration) -> ProbeOutcome {
        match self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            Stage::Connecting => ProbeOutcome::Unreachable(format!("no connection to the kubelet within {timeout:?}")),
            Stage::Handshaking(authority) => no_handshake(&authority, timeout),
            Stage::Requested => ProbeOutcome::Timeout,
            Stage::Proxied => ProbeOutcome::Unreachable(format!(
                "no answer through the apiserver's node proxy within {timeout:?}: from here a kubelet that hangs and one the apiserver cannot reach look the same"
            )),
        }
    }
}

impl Inner {
    async fn healthz(&self, tls: &TlsConnector, target: &ProbeTarget, progress: &Progress, request_deadline: tokio::time::Instant) -> ProbeOutcome {
        let peers = match Peer::candidates(&target.endpoint, &self.preferred_address_types) {
            Ok(peers) => peers,
            Err(reason) => return ProbeOutcome::NotProbed(reason),
        };
        // Read before connecting: a missing token must not cost the kubelet a connection.
        let bearer = match self.bearer() {
            Ok(bearer) => bearer,
            Err(reason) => return ProbeOutcome::NotProbed(reason),
        };
        let (peer, stream) = match connect_first(&peers, tls, self.timeout, progress).await {
            Ok(connected) => connected,
            Err(outcome) => return outcome,
        };
        progress.reached(Stage::Requested);
        let socket = stream.get_ref().0.as_raw_fd();
        let authority = peer.authority();
        let request = get_healthz(stream, &authority, bearer);
        tokio::pin!(request);
        tokio::select! {
            answer = &mut request => match answer {
                Ok((status, body)) => kubelet_answer(status, &body, &authority),
                Err(no_answer) => no_answer.outcome(&authority),
            },
            // The request future, and so its socket, is still alive here.
            () = tokio::time::sleep_until(request_deadline) => unanswered(unacknowledged_bytes(socket), &authority, self.timeout),
        }
    }

    /// The `Authorization` header: `--token-file`, else the kubeconfig user's bearer token.
    fn bearer(&self) -> std::result::Result<HeaderValue, String> {
        read_bearer(&self.token_file, "--token-file").or_else(|why| match &self.kubeconfig_credential {
            Ok(credential) => bearer_of(credential).map_err(|also| format!("{why}; {also}")),
            Err(also) => Err(format!("{why}; {also}")),
        })
    }

    async fn handshake(&self, tls: &TlsConnector, target: &ProbeTarget, progress: &Progress) -> ProbeOutcome {
        let peers = match Peer::candidates(&target.endpoint, &self.preferred_address_types) {
            Ok(peers) => peers,
            Err(reason) => return ProbeOutcome::NotProbed(reason),
        };
        match connect_first(&peers, tls, self.timeout, progress).await {
            // Dropping the stream closes the connection; nothing was sent but the handshake.
            Ok(_stream) => ProbeOutcome::Success,
            Err(outcome) => outcome,
        }
    }

    async fn apiserver_proxy(&self, node: &str, progress: &Progress) -> ProbeOutcome {
        if !is_dns_subdomain(node) {
            return ProbeOutcome::NotProbed(format!("node name {node:?} cannot be used in an apiserver path"));
        }
        let request = match http::Request::get(format!("/api/v1/nodes/{node}/proxy/healthz")).body(kube::client::Body::from(Vec::new())) {
            Ok(request) => request,
            Err(e) => return ProbeOutcome::NotProbed(format!("cannot build the apiserver proxy request: {e}")),
        };
        progress.reached(Stage::Proxied);
        let response = match self.client.send(request).await {
            Ok(response) => response,
            Err(e) => return ProbeOutcome::Unreachable(format!("apiserver proxy request for node {node} failed: {e}")),
        };
        let status = response.status();
        let body = if status.is_success() { Bytes::new() } else { read_limited(response.into_body()).await };
        apiserver_answer(status, &body)
    }
}

/// Where to connect, chosen from a node's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Peer {
    /// The first address of the first preferred type the node lists, with its kubelet port.
    #[cfg(test)]
    fn choose(endpoint: &KubeletEndpoint, preferred: &[String]) -> Result<Peer, String> {
        Peer::candidates(endpoint, preferred).map(|mut peers| peers.remove(0))
    }

    /// Every usable address of the preferred types, in preference order (type first, then the
    /// node's own order), with its kubelet port. A dual-stack node lists an InternalIP of each
    /// family; the prober tries them in turn, so an address of a family pulsecheck's pod cannot
    /// reach does not make the node look dead.
    fn candidates(endpoint: &KubeletEndpoint, preferred: &[String]) -> Result<Vec<Peer>, String> {
        let Some(port) = endpoint.port else {
            return Err("node has no kubelet port (status.daemonEndpoints.kubeletEndpoint.Port)".into());
        };
        let mut peers: Vec<Peer> = Vec::new();
        let mut rejected = None;
        for kind in preferred {
            for (_, address) in endpoint.addresses.iter().filter(|(t, a)| t == kind && !a.trim().is_empty()) {
                let address = address.trim();
                let host = match address.parse::<IpAddr>() {
                    Ok(ip) => Host::Ip(ip),
                    Err(_) if ServerName::try_from(address).is_ok() => Host::Name(address.to_string()),
                    Err(_) => {
                        rejected.get_or_insert_with(|| format!("node address {address:?} is neither an IP address nor a host name"));
                        continue;
                    }
                };
                let peer = Peer { host, port };
                if !peers.contains(&peer) {
                    peers.push(peer);
                }
            }
        }
        if peers.is_empty() {
            return Err(rejected.unwrap_or_else(|| format!("node lists no address of a preferred type ({})", preferred.join(", "))));
        }
        Ok(peers)
    }

    /// `host:port` as it goes into the Host header and messages (IPv6 in brackets).
    fn authority(&self) -> String {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            Host::Ip(ip) => format!("{ip}:{}", self.port),
            Host::Name(name) => format!("{name}:{}", self.port),
        }
    }

    /// The TLS server name: the IP itself (kubelet certificates carry node IPs as SANs) or the name.
    fn server_name(&self) -> Result<ServerName<'static>, String> {
        match &self.host {
            Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
            Host::Name(name) => ServerName::try_from(name.clone()).map_err(|e| format!("{name:?} is not a valid TLS server name: {e}")),
        }
    }

    /// A TCP connection within `within`, or why not.
    async fn connect_tcp(&self, within: Duration) -> Result<TcpStream, String> {
        let connect = async {
            match &self.host {
                Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, self.port)).await,
                Host::Name(name) => TcpStream::connect((name.as_str(), self.port)).await,
            }
        };
        match tokio::time::timeout(within, connect).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(e)) => Err(format!("{}: {e}", self.authority())),
            Err(_) => Err(format!("{}: no TCP connection within {within:?}", self.authority())),
        }
    }

    /// The TLS handshake on a connected stream, within `within`. A certificate pulsecheck does
    /// not accept is [`ProbeOutcome::Untrusted`] (its trust configuration, or a serving
    /// certificate still pending); a handshake that does not complete in time is
    /// [`ProbeOutcome::NoHandshake`]; any other failure means the kubelet could not be talked to.
    async fn handshake(&self, tls: &TlsConnector, tcp: TcpStream, within: Duration) -> Result<TlsStream<TcpStream>, ProbeOutcome> {
        let authority = self.authority();
        let server_name = self.server_name().map_err(ProbeOutcome::NotProbed)?;
        let _ = tcp.set_nodelay(true);
        let Ok(done) = tokio::time::timeout(within, tls.connect(server_name, tcp)).await else {
            return Err(no_handshake(&authority, within));
        };
        done.map_err(|e| {
            if is_certificate_problem(&e) {
                ProbeOutcome::Untrusted(format!(
                    "kubelet at {authority} presented a certificate pulsecheck does not accept ({e}): check --kubelet-certificate-authority, or whether the node's serving certificate is still pending (serverTLSBootstrap)"
                ))
            } else {
                ProbeOutcome::Unreachable(format!("TLS handshake with kubelet at {authority} failed: {e}"))
            }
        })
    }
}

/// Connects to the first of `peers` that accepts a TCP connection and completes the TLS
/// handshake with it. The probe timeout is split so that each stage ends as what it is: TCP gets
/// half of `timeout` (each address an equal share, at least 100 ms) — no connection is
/// [`ProbeOutcome::Unreachable`], naming every address tried; the handshake a quarter — not
/// completed is [`ProbeOutcome::NoHandshake`]; the request keeps at least the last quarter, so
/// that the probe's own [`ProbeOutcome::Timeout`] means a kubelet that took the request and
/// did not answer, never a stage before it that ran long.
async fn connect_first(peers: &[Peer], tls: &TlsConnector, timeout: Duration, progress: &Progress) -> Result<(Peer, TlsStream<TcpStream>), ProbeOutcome> {
    let share = (timeout / 2 / u32::try_from(peers.len()).unwrap_or(u32::MAX).max(1)).max(Duration::from_millis(100));
    let mut errors = Vec::new();
    for peer in peers {
        match peer.connect_tcp(share).await {
            Ok(tcp) => {
                progress.reached(Stage::Handshaking(peer.authority()));
                return peer.handshake(tls, tcp, timeout / 4).await.map(|stream| (peer.clone(), stream));
            }
            Err(e) => errors.push(e),
        }
    }
    Err(ProbeOutcome::Unreachable(format!("cannot connect to the kubelet: {}", errors.join("; "))))
}

/// A TLS handshake with the kubelet at `authority` that did not complete within `within`.
fn no_handshake(authority: &str, within: Duration) -> ProbeOutcome {
    ProbeOutcome::NoHandshake(format!(
        "TLS handshake with kubelet at {authority} did not complete within {within:?}: the connection was made and the handshake never finished (a path that drops large packets, or a kubelet too starved to answer, looks like this)"
    ))
}

/// True when a TLS handshake failed over the certificate: pulsecheck did not accept the
/// kubelet's, or the kubelet refused the handshake with an alert.
fn is_certificate_problem(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        // An alert from the kubelet is its TLS stack refusing the handshake — typically a serving
        // certificate that expired or was never issued (an unapproved CSR): the kubelet answered.
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::AlertReceived(_)
            )
        })
}

/// `Bearer <token>` from the token file, read afresh (projected tokens rotate); `source` names
/// where the path came from in errors.
fn read_bearer(path: &Path, source: &str) -> std::result::Result<HeaderValue, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file {} ({source}): {e}", path.display()))?;
    bearer_header(&raw, &format!("the token file {} ({source})", path.display()))
}

/// The header for a kubeconfig credential.
fn bearer_of(credential: &KubeletCredential) -> std::result::Result<HeaderValue, String> {
    match credential {
        KubeletCredential::Token(token) => bearer_header(token, "the kubeconfig's token"),
        KubeletCredential::TokenFile(path) => read_bearer(path, "the kubeconfig's tokenFile"),
    }
}

/// `Bearer <token>`, marked sensitive (never logged); `what` names the token in errors.
fn bearer_header(raw: &str, what: &str) -> std::result::Result<HeaderValue, String> {
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("{what} is empty"));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| format!("{what} holds characters an HTTP header cannot carry"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Sends `GET /healthz` over `stream` and returns the status and, for non-2xx, the start of the body.
async fn get_healthz(stream: TlsStream<TcpStream>, authority: &str, bearer: HeaderValue) -> Result<(StatusCode, Bytes), NoExchange> {
    get(stream, authority, bearer, "/healthz", None).await
}

/// Why a request over an established TLS connection got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoExchange {
    /// pulsecheck could not make the request (its own problem).
    Local(String),
    /// The connection closed before the request went out.
    NotSent(String),
    /// What came back is not HTTP.
    NotHttp(String),
    /// The request went out and the connection broke off without an answer.
    BrokeOff(String),
}

impl NoExchange {
    /// What hyper's error says about how far the exchange got; `connection` is the connection's
    /// own error, when it ended first with one.
    fn from_hyper(e: &hyper::Error, connection: Option<&hyper::Error>) -> NoExchange {
        let why = match connection {
            Some(c) if c.to_string() != e.to_string() => format!("{e} ({c})"),
            _ => e.to_string(),
        };
        if e.is_user() {
            NoExchange::Local(why)
        } else if e.is_canceled() {
            NoExchange::NotSent(why)
        } else if e.is_parse() || e.is_parse_status() || connection.is_some_and(|c| c.is_parse() || c.is_parse_status()) {
            NoExchange::NotHttp(why)
        } else {
            NoExchange::BrokeOff(why)
        }
    }

    /// The probe outcome of a `/healthz` request to the kubelet at `authority` that got no answer.
    fn outcome(self, authority: &str) -> ProbeOutcome {
        match self {
            NoExchange::Local(why) => ProbeOutcome::NotProbed(format!("cannot send the probe to the kubelet at {authority}: {why}")),
            NoExchange::NotSent(why) => ProbeOutcome::Unreachable(format!("kubelet at {authority} closed the connection before the request went out: {why}")),
            NoExchange::NotHttp(why) => ProbeOutcome::Inconclusive(format!("what answers at {authority} does not speak HTTP like a kubelet: {why}")),
            NoExchange::BrokeOff(why) => ProbeOutcome::NoAnswer(format!("kubelet at {authority} broke off /healthz without an answer: {why}")),
        }
    }
}

impl std::fmt::Display for NoExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoExchange::Local(why) | NoExchange::NotSent(why) | NoExchange::NotHttp(why) | NoExchange::BrokeOff(why) => f.write_str(why),
        }
    }
}

/// Sends `GET path` over `stream` and returns the status and the start of the body: of a 2xx
/// body, at most `success_limit` bytes (nothing when `None`); of any other, at most 4 KiB.
async fn get(
    stream: TlsStream<TcpStream>,
    authority: &str,
    bearer: HeaderValue,
    path: &str,
    success_limit: Option<usize>,
) -> Result<(StatusCode, Bytes), NoExchange> {
    let request = http::Request::get(path)
        .header(header::HOST, authority)
        .header(header::AUTHORIZATION, bearer)
        .header(header::USER_AGENT, concat!("pulsecheck/", env!("CARGO_PKG_VERSION")))
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| NoExchange::Local(format!("cannot build the request: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| NoExchange::from_hyper(&e, None))?;
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = match (status.is_success(), success_limit) {
            (false, _) => read_limited(response.into_body()).await,
            (true, Some(limit)) => match Limited::new(response.into_body(), limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => return Ok(Err(NoExchange::BrokeOff(format!("cannot read the body of {path} (at most {limit} bytes): {e}")))),
            },
            (true, None) => Bytes::new(),
        };
        Ok::<_, hyper::Error>(Ok((status, body)))
    };
    // Drive the connection in this task (no spawn), so that a timeout drops everything at once.
    let mut exchange = std::pin::pin!(exchange);
    let (answer, connection_error) = tokio::select! {
        biased;
        answer = &mut exchange => (answer, None),
        // The connection ended first (closed or failed): the exchange now resolves at once,
        // with the answer it already received or the reason it got none.
        ended = connection => (exchange.await, ended.err()),
    };
    match answer {
        Ok(answer) => answer,
        Err(e) => Err(NoExchange::from_hyper(&e, connection_error.as_ref())),
    }
}

/// At most the first 4 KiB of a body; an unreadable body is empty.
async fn read_limited<B>(body: B) -> Bytes
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Limited::new(body, 4096).collect().await.map(|c| c.to_bytes()).unwrap_or_default()
}

/// What a kubelet's answer to `/healthz` means.
fn kubelet_answer(status: StatusCode, body: &[u8], authority: &str) -> ProbeOutcome {
    let code = status.as_u16();
    match status {
        s if s.is_success() => ProbeOutcome::Success,
        StatusCode::UNAUTHORIZED => ProbeOutcome::Unauthorized(
            "kubelet answered 401: it did not accept pulsecheck's token (--token-file); pulsecheck's ServiceAccount needs `get` on `nodes/healthz` (or `nodes/proxy` on kubelets without KubeletFineGrainedAuthz, before 1.33) and the kubelet needs webhook authentication".into(),
        ),
        StatusCode::FORBIDDEN => ProbeOutcome::Unauthorized(format!(
            "kubelet answered {code}: pulsecheck's ServiceAccount needs `get` on `nodes/healthz` (or `nodes/proxy` on kubelets without KubeletFineGrainedAuthz, before 1.33)"
        )),
        // The kubelet's authorization filter answers 500 when it cannot ask the apiserver
        // (SubjectAccessReview) whether pulsecheck may probe: /healthz never ran.
        s if s.is_server_error() && is_authorization_error(body) => ProbeOutcome::Inconclusive(format!(
            "kubelet at {authority} could not authorize the probe (its SubjectAccessReview failed), so it did not say whether it is healthy{}",
            summary(body)
        )),
        s if s.is_server_error() && is_healthz_report(body) => ProbeOutcome::Failure(format!("kubelet at {authority} answered {code}{}", summary(body))),
        // A 5xx without a healthz report is not the kubelet's /healthz (an intermediary's, with
        // --kubelet-insecure-tls); a redirect, a 404, a 429 are nothing a kubelet's /healthz
        // answers (another server on the port, a proxy in between, throttling).
        _ => ProbeOutcome::Inconclusive(format!("kubelet at {authority} answered {code} to /healthz, which says nothing about its health{}", summary(body))),
    }
}

/// True when `body` is a healthz report (`[+]ping ok`, `[-]syncloop failed: ...`, `healthz check
/// failed`): what a kubelet's (or any Kubernetes component's) `/healthz` answers.
fn is_healthz_report(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).lines().map(str::trim).any(|l| l.starts_with("[+]") || l.starts_with("[-]") || l == "healthz check failed")
}

/// True when `body` is the kubelet's own "cannot authorize this request" answer.
fn is_authorization_error(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).trim_start().starts_with("Authorization error")
}

/// What the apiserver's answer to `nodes/NAME/proxy/healthz` means.
fn apiserver_answer(status: StatusCode, body: &[u8]) -> ProbeOutcome {
    let code = status.as_u16();
    match status {
        s if s.is_success() => ProbeOutcome::Success,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProbeOutcome::Unauthorized(format!(
            "apiserver answered {code}: pulsecheck's ServiceAccount needs `get` on `nodes/proxy` for --probe=apiserver-proxy{}",
            summary(body)
        )),
        // The apiserver's own "cannot reach the kubelet" (dial errors, no route): no answer from
        // the kubelet itself, so only evidence where pulsecheck has reached this kubelet before.
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            ProbeOutcome::Unreachable(format!("apiserver proxy could not reach the kubelet ({code}){}", summary(body)))
        }
        s if s.is_server_error() && is_authorization_error(body) => ProbeOutcome::Inconclusive(format!(
            "the kubelet could not authorize the apiserver's proxied probe, so it did not say whether it is healthy{}",
            summary(body)
        )),
        // Only a healthz report is the kubelet's own answer, passed on; any other 5xx — a
        // Kubernetes Status, the apiserver's panic text, a load balancer's page — is the way
        // to the kubelet failing.
        s if s.is_server_error() && is_healthz_report(body) => {
            ProbeOutcome::Failure(format!("kubelet answered {code} through the apiserver proxy{}", summary(body)))
        }
        s if s.is_server_error() => ProbeOutcome::Unreachable(format!("apiserver proxy failed without the kubelet's answer ({code}){}", summary(body))),
        // 404 (no such node), 429 (the apiserver throttles pulsecheck), ...: nothing about health.
        _ => ProbeOutcome::Inconclusive(format!("apiserver proxy answered {code}, which says nothing about the kubelet's health{}", summary(body))),
    }
}

/// `": <reason>"` from a body: a Kubernetes Status message, the failed checks of a healthz
/// report (`[-]syncloop failed: ...`), or the first line; empty when there is nothing useful.
fn summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let reason = match serde_json::from_str::<kube::core::Status>(text) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => {
            let failed: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("[-]")).collect();
            if failed.is_empty() { text.lines().next().unwrap_or_default().to_string() } else { failed.join("; ") }
        }
    };
    const MAX_CHARS: usize = 300;
    let clean: Vec<char> = reason.chars().filter(|c| !c.is_control()).collect();
    let mut reason: String = clean.iter().take(MAX_CHARS).collect();
    if clean.len() > MAX_CHARS {
        reason.push('…');
    }
    format!(": {reason}")
}

/// A DNS-1123 subdomain, as Node names are.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_spells_its_flag_value_and_its_metric_label() {
        use clap::ValueEnum;
        for mode in ProbeMode::value_variants() {
            assert_eq!(mode.to_possible_value().unwrap().get_name(), mode.as_str());
        }
        let spelled: Vec<&str> = ProbeMode::value_variants().iter().map(|m| m.as_str()).collect();
        assert_eq!(spelled, crate::metrics::PROBE_MODES);
    }

    fn endpoint(addresses: &[(&str, &str)], port: Option<u16>) -> KubeletEndpoint {
        KubeletEndpoint { addresses: addresses.iter().map(|(t, a)| (t.to_string(), a.to_string())).collect(), port }
    }

    fn preferred() -> Vec<String> {
        ["InternalIP", "ExternalIP", "Hostname"].map(String::from).to_vec()
    }

    #[test]
    fn address_follows_the_preferred_type_order_not_the_node_order() {
        let e = endpoint(&[("Hostname", "node-a"), ("ExternalIP", "203.0.113.7"), ("InternalIP", "10.0.0.7")], Some(10250));
        let peer = Peer::choose(&e, &preferred()).unwrap();
        assert_eq!(peer.authority(), "10.0.0.7:10250");
        let peer = Peer::choose(&e, &["ExternalIP".to_string()]).unwrap();
        assert_eq!(peer.authority(), "203.0.113.7:10250");
        let peer = Peer::choose(&e, &["Hostname".to_string()]).unwrap();
        assert_eq!(peer.host, Host::Name("node-a".into()));
    }

    #[test]
    fn ipv6_addresses_are_bracketed_and_used_as_server_name() {
        let e = endpoint(&[("InternalIP", "fd00::7")], Some(10250));
        let peer = Peer::choose(&e, &preferred()).unwrap();
        assert_eq!(peer.authority(), "[fd00::7]:10250");
        assert!(matches!(peer.server_name().unwrap(), ServerName::IpAddress(_)));
    }

    #[test]
    fn no_port_or_no_preferred_address_is_not_probed_with_the_reason() {
        let e = endpoint(&[("InternalIP", "10.0.0.7")], None);
        assert!(Peer::choose(&e, &preferred()).unwrap_err().contains("kubeletEndpoint.Port"));
        let e = endpoint(&[("InternalDNS", "a.example"), ("InternalIP", " ")], Some(10250));
        let why = Peer::choose(&e, &preferred()).unwrap_err();
        assert!(why.contains("InternalIP, ExternalIP, Hostname"), "{why}");
    }

    #[test]
    fn token_is_trimmed_marked_sensitive_and_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def\n").unwrap();
        let v = read_bearer(&path, "--token-file").unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer abc.def");
        assert!(v.is_sensitive());
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_bearer(&path, "--token-file").unwrap_err().contains("is empty"));
        let missing = read_bearer(&dir.path().join("nope"), "--token-file").unwrap_err();
        assert!(missing.contains("--token-file") && missing.contains("nope"), "{missing}");
    }

    #[test]
    fn kubelet_answers_map_to_outcomes() {
        let a = "10.0.0.7:10250";
        assert_eq!(kubelet_answer(StatusCode::OK, b"ok", a), ProbeOutcome::Success);
        let ProbeOutcome::Unauthorized(why) = kubelet_answer(StatusCode::FORBIDDEN, b"Forbidden", a) else { panic!() };
        assert!(why.contains("403") && why.contains("`nodes/healthz`"), "{why}");
        let ProbeOutcome::Unauthorized(why) = kubelet_answer(StatusCode::UNAUTHORIZED, b"", a) else { panic!() };
        assert!(why.contains("401") && why.contains("`nodes/healthz`"), "{why}");
        let body = b"[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n";
        assert_eq!(
            kubelet_answer(StatusCode::INTERNAL_SERVER_ERROR, body, a),
            ProbeOutcome::Failure("kubelet at 10.0.0.7:10250 answered 500: [-]syncloop failed: reason withheld".into())
        );
        // The kubelet's authorization filter could not ask the apiserver: /healthz never ran.
        let body = b"Authorization error (user=system:serviceaccount:pulsecheck:pulsecheck, verb=get, resource=nodes, subresource=healthz)";
        let ProbeOutcome::Inconclusive(why) = kubelet_answer(StatusCode::INTERNAL_SERVER_ERROR, body, a) else { panic!() };
        assert!(why.contains("could not authorize") && why.contains("subresource=healthz"), "{why}");
        // Answers no kubelet's /healthz gives say nothing about health: a 5xx without a healthz
        // report (an intermediary's), redirects, 404, 429.
        for code in
            [StatusCode::SERVICE_UNAVAILABLE, StatusCode::NOT_FOUND, StatusCode::TOO_MANY_REQUESTS, StatusCode::MOVED_PERMANENTLY, StatusCode::BAD_REQUEST]
        {
            let ProbeOutcome::Inconclusive(why) = kubelet_answer(code, b"<html>upstream unavailable</html>", a) else { panic!("{code}") };
            assert!(why.contains(code.as_str()) && why.contains("says nothing about its health"), "{why}");
        }
    }

    #[test]
    fn apiserver_answers_name_nodes_proxy_and_carry_the_status_message() {
        assert_eq!(apiserver_answer(StatusCode::OK, b""), ProbeOutcome::Success);
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes \"n1\" is forbidden: User \"system:serviceaccount:x:y\" cannot get resource \"nodes/proxy\"","reason":"Forbidden","code":403}"#;
        let ProbeOutcome::Unauthorized(why) = apiserver_answer(StatusCode::FORBIDDEN, body) else { panic!() };
        assert!(why.contains("`nodes/proxy`") && why.contains("cannot get resource"), "{why}");
        let body = br#"{"kind":"Status","message":"error trying to reach service: dial tcp 10.0.0.7:10250: connect: connection refused","code":503}"#;
        // The apiserver could not reach the kubelet: no answer of the kubelet's own.
        let ProbeOutcome::Unreachable(why) = apiserver_answer(StatusCode::SERVICE_UNAVAILABLE, body) else { panic!() };
        assert!(why.contains("503") && why.contains("connection refused"), "{why}");
        let ProbeOutcome::Failure(why) = apiserver_answer(StatusCode::INTERNAL_SERVER_ERROR, b"[-]syncloop failed: reason withheld") else { panic!() };
        assert!(why.contains("500") && why.contains("syncloop"), "{why}");
        // The apiserver's panic text or a load balancer's page is not the kubelet's answer.
        let ProbeOutcome::Unreachable(why) =
            apiserver_answer(StatusCode::INTERNAL_SERVER_ERROR, b"This request caused apiserver to panic. Look in the logs for details.")
        else {
            panic!()
        };
        assert!(why.contains("without the kubelet's answer"), "{why}");
        let body = b"Authorization error (user=system:kube-apiserver, verb=get, resource=nodes, subresource=proxy)";
        assert!(matches!(apiserver_answer(StatusCode::INTERNAL_SERVER_ERROR, body), ProbeOutcome::Inconclusive(_)));
        // The apiserver's own 500 (a Status object) is not the kubelet's answer.
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"error dialing backend: EOF","code":500}"#;
        let ProbeOutcome::Unreachable(why) = apiserver_answer(StatusCode::INTERNAL_SERVER_ERROR, body) else { panic!() };
        assert!(why.contains("error dialing backend"), "{why}");
        let body = br#"{"kind":"Status","message":"nodes \"gone\" not found","reason":"NotFound","code":404}"#;
        assert!(matches!(apiserver_answer(StatusCode::NOT_FOUND, body), ProbeOutcome::Inconclusive(_)));
        assert!(matches!(apiserver_answer(StatusCode::TOO_MANY_REQUESTS, b""), ProbeOutcome::Inconclusive(_)));
    }

    #[test]
    fn a_timeout_means_what_the_probe_had_reached() {
        let timeout = Duration::from_secs(5);
        let progress = Progress::default();
        assert!(matches!(progress.timed_out(timeout), ProbeOutcome::Unreachable(why) if why.contains("no connection")));
        progress.reached(Stage::Handshaking("10.0.0.7:10250".into()));
        assert!(
            matches!(progress.timed_out(timeout), ProbeOutcome::NoHandshake(why) if why.contains("TLS handshake with kubelet at 10.0.0.7:10250 did not complete"))
        );
        progress.reached(Stage::Requested);
        assert_eq!(progress.timed_out(timeout), ProbeOutcome::Timeout);
        let proxied = Progress::default();
        proxied.reached(Stage::Proxied);
        assert!(matches!(proxied.timed_out(timeout), ProbeOutcome::Unreachable(why) if why.contains("node proxy")));
    }

    #[test]
    fn unauthorized_outcomes_mark_the_prober_misconfigured() {
        assert!(!is_misconfigured(&[ProbeOutcome::Success, ProbeOutcome::Timeout]));
        assert!(is_misconfigured(&[ProbeOutcome::Success, ProbeOutcome::Unauthorized("403".into())]));
    }

    #[test]
    fn node_names_are_checked_before_they_go_into_a_path() {
        assert!(is_dns_subdomain("ip-10-0-0-7.eu-west-1.compute.internal"));
        for bad in ["", "../secrets", "a/b", "Upper", "-a", "a?x=1"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    fn settings(mode: ProbeMode, ca: Option<PathBuf>, insecure_tls: bool) -> ProbeSettings {
        ProbeSettings {
            mode,
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(30),
            concurrency: 4,
            preferred_address_types: preferred(),
            ca,
            insecure_tls,
            token_file: "/nonexistent/token".into(),
            configz: true,
            kubeconfig_credential: Err("none".into()),
        }
    }

    fn offline_client() -> kube::Client {
        let config = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn effective_mode_falls_back_to_tcp_without_a_way_to_trust_kubelets() {
        let p = Prober::new(settings(ProbeMode::KubeletHealthz, None, false), offline_client()).unwrap();
        assert_eq!(p.effective_mode(), ProbeMode::Tcp);
        let why = p.fallback_reason().unwrap();
        assert!(why.contains("--kubelet-certificate-authority") && why.contains("--kubelet-insecure-tls"), "{why}");

        let p = Prober::new(settings(ProbeMode::KubeletHealthz, None, true), offline_client()).unwrap();
        assert_eq!((p.effective_mode(), p.fallback_reason(), p.verifies_kubelet_certificates()), (ProbeMode::KubeletHealthz, None, false));
        for mode in [ProbeMode::Tcp, ProbeMode::ApiserverProxy, ProbeMode::None] {
            let p = Prober::new(settings(mode, None, false), offline_client()).unwrap();
            assert_eq!((p.effective_mode(), p.fallback_reason()), (mode, None));
        }
    }

    #[tokio::test]
    async fn certificate_authority_problems_are_start_up_errors_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = Prober::new(settings(ProbeMode::KubeletHealthz, Some(missing), false), offline_client()).unwrap_err().to_string();
        assert!(e.contains("--kubelet-certificate-authority") && e.contains("missing.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = Prober::new(settings(ProbeMode::KubeletHealthz, Some(junk.clone()), false), offline_client()).unwrap_err().to_string();
        assert!(e.contains("no usable PEM certificate"), "{e}");
        let e = Prober::new(settings(ProbeMode::KubeletHealthz, Some(junk), true), offline_client()).unwrap_err().to_string();
        assert!(e.contains("contradict"), "{e}");
    }

    #[tokio::test]
    async fn settings_come_from_the_probe_flags() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "pulsecheck",
            "run",
            "--probe-timeout=2s",
            "--probe-concurrency=7",
            "--kubelet-insecure-tls",
            "--kubelet-preferred-address-types=ExternalIP,InternalIP",
            "--token-file=/tmp/t",
        ])
        .unwrap();
        let crate::cli::Command::Run(run) = cli.command else { panic!("not run") };
        let s = ProbeSettings::from_args(&run.probe);
        assert_eq!(s.mode, ProbeMode::KubeletHealthz);
        assert_eq!((s.timeout, s.interval, s.concurrency), (Duration::from_secs(2), Duration::from_secs(30), 7));
        assert_eq!(s.preferred_address_types, vec!["ExternalIP", "InternalIP"]);
        assert!(s.insecure_tls && s.ca.is_none());
        assert_eq!(s.token_file, PathBuf::from("/tmp/t"));
    }
}
