//! A real kube-apiserver and etcd on loopback, started and stopped by one value.
//!
//! pulsecheck's promises (it never uncordons a node a person cordoned, its RBAC is enough and
//! no more, its patches survive resourceVersion conflicts, its watches resume) can only be
//! checked against the real apiserver: a mock would agree with whatever we believe. This module
//! starts the same programs a cluster runs (see [`super::binaries`]), with RBAC on and
//! throw-away credentials (see [`super::certs`]), so every test, the demo and the benchmarks get
//! their own cluster in a few seconds, in parallel, on free ports.
//!
//! What it guarantees, because a leaked etcd on a shared CI machine is worse than a failed test:
//! - the processes die with the [`ControlPlane`]: [`ControlPlane::stop`] terminates them
//!   gracefully, dropping it kills them, a panicking test drops it, and a parent killed with
//!   SIGKILL takes them along (`PR_SET_PDEATHSIG`);
//! - everything it wrote is removed afterwards (a temporary folder, or only its own entries in a
//!   folder the caller chose);
//! - a start that fails says why, with the last lines of the program's log.
//!
//! Only the apiserver runs: no controllers, so no garbage collection, no namespace deletion, no
//! node lifecycle taints and no default ServiceAccounts (next to real nodes the lab adds
//! kube-controller-manager and [`ControlPlaneOptions::service_accounts`]). The
//! `TaintNodesByCondition` admission plugin does run, and puts
//! `node.kubernetes.io/not-ready:NoSchedule` on new Nodes.
//!
//! It must never be pointed at, or used as a model for, a real cluster: the credentials are
//! minted in-process and the storage skips fsync.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::{
    binaries::{self, Binaries},
    certs::{self, CertificateAuthority},
    process::{self, Process, log_tail},
};

/// How long a start may take before it is reported as stuck (generous: CI machines have two
/// cores and several apiservers may start at once).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long after `/readyz` answers 200 the apiserver gets to create `kube-node-lease` itself.
const NODE_LEASE_NAMESPACE_GRACE: Duration = Duration::from_secs(5);
/// How often start-up polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long [`ControlPlane::stop`] waits after SIGTERM before SIGKILL, per process.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Start attempts when another program grabs one of our free ports first.
const START_ATTEMPTS: usize = 3;

/// Timeouts of the clients handed out: connect and write are short; read is per read on the
/// connection, so it must outlast an idle watch (kube's watcher asks for 290 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(295);

/// Entries the control plane creates in its folder (all removed on stop and drop).
const KUBECONFIG: &str = "kubeconfig";
const PKI: &str = "pki";
const ETCD_DATA: &str = "etcd-data";
const ETCD_LOG: &str = "etcd.log";
const APISERVER_LOG: &str = "kube-apiserver.log";
/// The apiserver's audit log, with [`ControlPlaneOptions::audit_policy`].
pub const AUDIT_LOG: &str = "audit.log";
const CREATED: [&str; 6] = [KUBECONFIG, PKI, ETCD_DATA, ETCD_LOG, APISERVER_LOG, AUDIT_LOG];

/// Name of the cluster, user and context in the kubeconfig files written.
const KUBECONFIG_CLUSTER: &str = "pulsecheck-lab";

/// What can go wrong while running the lab control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube-apiserver or etcd is not installed.
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    /// Minting certificates or keys failed.
    #[error(transparent)]
    Certs(#[from] certs::Error),
    /// A file or folder of the control plane could not be written or removed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// No free loopback port could be found.
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    NoFreePort(#[source] io::Error),
    /// A program could not be started at all.
    #[error(transparent)]
    Process(#[from] process::Error),
    /// A program exited during start-up.
    #[error("{program} exited during start-up ({status}); last lines of {}:\n{tail}", .log.display())]
    Exited {
        /// "etcd" or "kube-apiserver".
        program: &'static str,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// Every attempt lost a port to another program.
    #[error("{attempts} start attempts all found a port taken; last lines of {}:\n{tail}", .log.display())]
    PortsTaken {
        /// How many attempts were made.
        attempts: usize,
        /// The log of the program that reported the clash.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// The control plane did not become ready in time.
    #[error("control plane not ready after {waited:?}: {waiting_for}; last lines of {}:\n{tail}", .log.display())]
    NotReady {
        /// How long start-up waited.
        waited: Duration,
        /// What was still missing, with the last error seen.
        waiting_for: String,
        /// The apiserver log.
        log: PathBuf,
        /// The last lines of the apiserver log.
        tail: String,
    },
    /// A request to the lab apiserver failed.
    #[error("cannot {action}: {source}")]
    Kube {
        /// What was being done, e.g. "create ServiceAccount lab/reader".
        action: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The apiserver answered a TokenRequest without a token.
    #[error("TokenRequest for ServiceAccount {namespace}/{service_account} returned no token")]
    NoToken {
        /// Namespace of the ServiceAccount.
        namespace: String,
        /// Name of the ServiceAccount.
        service_account: String,
    },
    /// A kubeconfig could not be serialized.
    #[error("cannot serialize a kubeconfig: {0}")]
    Kubeconfig(#[source] serde_yaml_ng::Error),
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kube-apiserver frozen by [`ControlPlane::pause_apiserver`]; resumes it when dropped.
#[derive(Debug)]
pub struct PausedApiserver {
    pid: u32,
    resumed: bool,
}

impl PausedApiserver {
    /// Lets kube-apiserver carry on (SIGCONT).
    pub fn resume(mut self) {
        self.continue_now();
    }

    fn continue_now(&mut self) {
        if !self.resumed {
            self.resumed = true;
            match signal(self.pid, nix::sys::signal::Signal::SIGCONT) {
                Ok(()) => tracing::info!(pid = self.pid, "kube-apiserver resumed (SIGCONT)"),
                Err(e) => tracing::warn!(pid = self.pid, error = %e, "cannot resume kube-apiserver"),
            }
        }
    }
}

impl Drop for PausedApiserver {
    fn drop(&mut self) {
        self.continue_now();
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(io::Error::other)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(io::Error::from)
}

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// Folder for the kubeconfig, certificates, etcd data and logs. It is created if missing and
    /// kept afterwards; only the entries the control plane creates in it are removed on stop and
    /// drop (and replaced at start if a previous run left them). `None`: a temporary folder,
    /// removed entirely.
    pub dir: Option<PathBuf>,
    /// Admit Pods as a full cluster does: the ServiceAccount admission plugin gives each Pod
    /// its ServiceAccount's token (the `kubernetes` Service's CA and a projected token), and
    /// refuses Pods whose ServiceAccount does not exist. Only next to kube-controller-manager,
    /// whose serviceaccount controller creates each namespace's `default` ServiceAccount (real
    /// nodes); without it, the plugin is off.
    pub service_accounts: bool,
    /// An audit policy file: the apiserver records what it selects in `DIR/audit.log`, one JSON
    /// event per line (`benches/controller_scale.sh` counts pulsecheck's requests with it).
    pub audit_policy: Option<PathBuf>,
}

/// The `kubernetes` Service's ClusterIP: the first address of `--service-cluster-ip-range`,
/// named in the apiserver's serving certificate as in any cluster, so a Pod's in-cluster client
/// verifies the apiserver it reaches through the Service.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// A running kube-apiserver + etcd on loopback with RBAC on, and an admin client for it.
///
/// Stop it with [`ControlPlane::stop`] (graceful); dropping it kills both processes and removes
/// its files too. The processes also die if the thread that started them ends (Linux
/// `PR_SET_PDEATHSIG`), so start it from a thread that lives as long as the control plane
/// (an async task on a runtime, the main thread or a test thread — not `spawn_blocking`).
pub struct ControlPlane {
    /// Stop order: kube-apiserver first (it hangs on shutdown without etcd), then etcd.
    processes: Vec<Process>,
    workspace: Workspace,
    server_url: String,
    server_uri: http::Uri,
    ca_pem: String,
    ca_der: Vec<u8>,
    admin_token: String,
    kubeconfig_path: PathBuf,
    client: kube::Client,
    /// The cluster CA, kept to issue client certificates (real nodes' kubelets).
    ca: CertificateAuthority,
    /// The apiserver's port on 127.0.0.1.
    port: u16,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("server_url", &self.server_url).field("dir", &self.dir()).field("pids", &self.pids()).finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and returns once an admin client
    /// gets 200 from `/readyz` and the namespaces `default` and `kube-node-lease` exist.
    pub async fn start(opts: ControlPlaneOptions) -> Result<ControlPlane> {
        let started = Instant::now();
        let binaries = Binaries::locate()?;
        let workspace = Workspace::prepare(opts.dir.clone())?;
        let root = workspace.root().to_path_buf();
        let credentials = Credentials::write(&root.join(PKI))?;

        let mut attempt = 1;
        let (processes, ports) = loop {
            let ports = Ports::pick()?;
            match launch(&binaries, &root, &credentials, &ports, &opts).await {
                Ok(processes) => break (processes, ports),
                Err(Launch::PortTaken { log, tail }) if attempt < START_ATTEMPTS => {
                    tracing::debug!(attempt, log = %log.display(), "a lab port was taken, retrying on others: {tail}");
                    attempt += 1;
                }
                Err(Launch::PortTaken { log, tail }) => {
                    return Err(Error::PortsTaken { attempts: attempt, log, tail });
                }
                Err(Launch::Failed(err)) => return Err(err),
            }
        };

        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let server_uri: http::Uri =
            server_url.parse().map_err(|e| Error::Io { action: "parse the apiserver URL", path: PathBuf::from(&server_url), source: io::Error::other(e) })?;
        let admin_config = token_config(&server_uri, &credentials.ca_der, &credentials.admin_token);
        let client = kube::Client::try_from(admin_config).map_err(|source| Error::Kube { action: "build the admin client".to_owned(), source })?;
        let mut control_plane = ControlPlane {
            processes,
            workspace,
            server_url,
            server_uri,
            ca_der: credentials.ca_der,
            ca_pem: credentials.ca_pem,
            admin_token: credentials.admin_token,
            kubeconfig_path: root.join(KUBECONFIG),
            client,
            ca: credentials.ca,
            port: ports.apiserver,
        };
        let probe = ReadyzProbe::new(ports.apiserver, &control_plane.ca_der, &control_plane.admin_token)?;
        control_plane.wait_ready(&probe, started).await?;
        control_plane.write_kubeconfig_for_token(&control_plane.admin_token, &control_plane.kubeconfig_path)?;
        tracing::info!(
            server = %control_plane.server_url,
            kubeconfig = %control_plane.kubeconfig_path.display(),
            elapsed = ?started.elapsed(),
            "lab control plane ready"
        );
        Ok(control_plane)
    }

    /// A client authenticated as the cluster administrator (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file (written at start, removed at stop).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A client certificate signed by the cluster CA: the apiserver takes `common_name` as the
    /// user and each organization as a group (a real node's kubelet is
    /// `system:node:NAME` in `system:nodes`).
    pub fn issue_client_certificate(&self, common_name: &str, organizations: &[&str]) -> Result<certs::IssuedCert> {
        Ok(self.ca.issue_client(common_name, organizations)?)
    }

    /// A TLS serving certificate signed by the cluster CA (a real node's kubelet), valid for
    /// `ip_sans` and `dns_sans`.
    pub fn issue_serving_certificate(&self, common_name: &str, ip_sans: &[IpAddr], dns_sans: &[&str]) -> Result<certs::IssuedCert> {
        Ok(self.ca.issue_server(common_name, ip_sans, dns_sans)?)
    }

    /// A token of ServiceAccount `pulsecheck-lab/NAME`, allowed only to `get` the node
    /// subresources named (`healthz`, `configz`, `pods`, `stats`): what a kubelet's webhook
    /// authorization asks for its read-only endpoints (fine-grained kubelet authorization).
    pub async fn kubelet_reader_token(&self, name: &str, subresources: &[&str]) -> Result<String> {
        let role_name = format!("pulsecheck-lab:{name}");
        let roles: Api<ClusterRole> = Api::all(self.client());
        let role = ClusterRole {
            metadata: named(&role_name),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(subresources.iter().map(|s| format!("nodes/{s}")).collect()),
                verbs: vec!["get".into()],
                ..Default::default()
            }]),
            ..Default::default()
        };
        create_if_missing(&roles, &role, format!("create ClusterRole {role_name}")).await?;
        let bindings: Api<ClusterRoleBinding> = Api::all(self.client());
        let binding = ClusterRoleBinding {
            metadata: named(&role_name),
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: role_name.clone() },
            subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: name.into(), namespace: Some("pulsecheck-lab".into()), ..Default::default() }]),
        };
        create_if_missing(&bindings, &binding, format!("create ClusterRoleBinding {role_name}")).await?;
        self.service_account_token("pulsecheck-lab", name).await
    }

    /// The apiserver's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The folder holding the kubeconfig, certificates, etcd data and logs.
    pub fn dir(&self) -> &Path {
        self.workspace.root()
    }

    /// The process ids of etcd and kube-apiserver (for checking that none outlives the
    /// control plane).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid()).collect()
    }

    /// A client configuration for `token` against this apiserver, verifying its certificate.
    pub fn config_with_token(&self, token: &str) -> kube::Config {
        token_config(&self.server_uri, &self.ca_der, token)
    }

    /// A client that authenticates with `token` (e.g. from [`ControlPlane::service_account_token`]).
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        kube::Client::try_from(self.config_with_token(token)).map_err(|source| Error::Kube { action: "build a client".to_owned(), source })
    }

    /// Creates the namespace and the ServiceAccount if they are missing and returns a token for
    /// that ServiceAccount (TokenRequest, valid 3600 s). Bind roles to
    /// `system:serviceaccount:<namespace>:<service_account>` to give it rights; it has none
    /// beyond discovery otherwise.
    pub async fn service_account_token(&self, namespace: &str, service_account: &str) -> Result<String> {
        let namespaces: Api<Namespace> = Api::all(self.client());
        let ns = Namespace { metadata: named(namespace), ..Default::default() };
        create_if_missing(&namespaces, &ns, format!("create namespace {namespace}")).await?;

        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let sa = ServiceAccount { metadata: named(service_account), ..Default::default() };
        create_if_missing(&accounts, &sa, format!("create ServiceAccount {namespace}/{service_account}")).await?;

        let request = TokenRequest { spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }, ..Default::default() };
        let response = accounts
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .map_err(|source| Error::Kube { action: format!("request a token for ServiceAccount {namespace}/{service_account}"), source })?;
        match response.status.map(|s| s.token).filter(|t| !t.is_empty()) {
            Some(token) => Ok(token),
            None => Err(Error::NoToken { namespace: namespace.to_owned(), service_account: service_account.to_owned() }),
        }
    }

    /// Writes a kubeconfig (mode 0600) that reaches this apiserver as the bearer of `token`,
    /// with the CA embedded, for programs run as a separate process (kubectl, `pulsecheck run`).
    pub fn write_kubeconfig_for_token(&self, token: &str, path: &Path) -> Result<()> {
        let text = kubeconfig_yaml(&self.server_url, &self.ca_pem, token)?;
        write_private(path, text.as_bytes())
    }

    /// Stops kube-apiserver, then etcd: SIGTERM, up to 5 s to exit, then SIGKILL. Then removes
    /// what the control plane created on disk. Both processes are gone when this returns, even
    /// if removing files fails.
    pub async fn stop(mut self) -> Result<()> {
        for process in self.processes.drain(..) {
            process.terminate(STOP_GRACE).await;
        }
        self.workspace.remove()
    }

    /// Freezes kube-apiserver with SIGSTOP: every connection stays open and nothing answers —
    /// an apiserver stuck on a stalled etcd, or a process that stopped being scheduled. It
    /// carries on (SIGCONT) when the returned guard is resumed or dropped, so a failing test
    /// never leaves it frozen.
    pub fn pause_apiserver(&self) -> Result<PausedApiserver> {
        let pid = self.processes.first().map(Process::pid).ok_or_else(|| Error::Io {
            action: "pause kube-apiserver",
            path: self.dir().to_path_buf(),
            source: io::Error::other("kube-apiserver is not running"),
        })?;
        signal(pid, nix::sys::signal::Signal::SIGSTOP).map_err(|source| Error::Io {
            action: "pause kube-apiserver (SIGSTOP)",
            path: self.dir().to_path_buf(),
            source,
        })?;
        tracing::info!(pid, "kube-apiserver paused (SIGSTOP)");
        Ok(PausedApiserver { pid, resumed: false })
    }

    /// If etcd or kube-apiserver has exited, which one and how (the control plane is then
    /// unusable). Does not block.
    pub fn exited(&mut self) -> Option<String> {
        self.processes.iter_mut().find_map(|p| p.exit_status().map(|status| format!("{} exited ({status})", p.program())))
    }

    /// GET /readyz until 200, then wait for the namespaces `default` and `kube-node-lease`.
    async fn wait_ready(&mut self, probe: &ReadyzProbe, started: Instant) -> Result<()> {
        let deadline = started + START_TIMEOUT;
        let mut last: String;
        loop {
            self.fail_if_exited()?;
            match probe.readyz().await {
                Ok(http::StatusCode::OK) => break,
                Ok(status) => last = format!("status {status}"),
                Err(err) => last = err,
            }
            self.sleep_or_give_up(deadline, started, &format!("GET /readyz returning 200 (last: {last})")).await?;
        }

        let namespaces: Api<Namespace> = Api::all(self.client());
        let ready_at = Instant::now();
        loop {
            self.fail_if_exited()?;
            match namespaces.list_metadata(&ListParams::default()).await {
                Ok(list) => {
                    let has = |name: &str| list.items.iter().any(|ns| ns.metadata.name.as_deref() == Some(name));
                    if has("default") && has(pulsecheck::names::NODE_LEASE_NAMESPACE) {
                        return Ok(());
                    }
                    if !has(pulsecheck::names::NODE_LEASE_NAMESPACE) && ready_at.elapsed() > NODE_LEASE_NAMESPACE_GRACE {
                        let ns = Namespace { metadata: named(pulsecheck::names::NODE_LEASE_NAMESPACE), ..Default::default() };
                        create_if_missing(&namespaces, &ns, "create namespace kube-node-lease".to_owned()).await?;
                    }
                    last = format!("namespaces so far: {:?}", list.items.iter().filter_map(|ns| ns.metadata.name.clone()).collect::<Vec<_>>());
                }
                Err(err) => last = err.to_string(),
            }
            self.sleep_or_give_up(deadline, started, &format!("namespaces default and kube-node-lease ({last})")).await?;
        }
    }

    fn fail_if_exited(&mut self) -> Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.exit_status() {
                return Err(Error::Exited { program: process.program(), status, tail: process.log_tail(), log: process.log().to_path_buf() });
            }
        }
        Ok(())
    }

    async fn sleep_or_give_up(&self, deadline: Instant, started: Instant, waiting_for: &str) -> Result<()> {
        if Instant::now() >= deadline {
            let log = self.dir().join(APISERVER_LOG);
            return Err(Error::NotReady { waited: started.elapsed(), waiting_for: waiting_for.to_owned(), tail: log_tail(&log), log });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        Ok(())
    }
}

impl Drop for ControlPlane {
    /// Kills both processes (SIGKILL), waits until they are reaped, then removes the files.
    fn drop(&mut self) {
        // Process::drop kills and reaps; apiserver first, as in `stop`.
        self.processes.clear();
        if let Err(err) = self.workspace.remove() {
            tracing::warn!("lab control plane cleanup: {err}");
        }
    }
}

/// `GET /readyz` as admin over a fresh connection. Not through `kube::Client`: its tracing
/// layer logs every 5xx as an ERROR, and /readyz answers 500 until the apiserver is ready.
struct ReadyzProbe {
    port: u16,
    authorization: String,
    tls: tokio_rustls::TlsConnector,
}

impl ReadyzProbe {
    fn new(port: u16, ca_der: &[u8], token: &str) -> Result<ReadyzProbe> {
        let tls_err = |e: rustls::Error| Error::Io { action: "configure TLS for", path: PathBuf::from("the lab CA"), source: io::Error::other(e) };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec())).map_err(tls_err)?;
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ReadyzProbe { port, authorization: format!("Bearer {token}"), tls: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)) })
    }

    /// The status of one `GET /readyz`, or why there was none.
    async fn readyz(&self) -> Result<http::StatusCode, String> {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await.map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            let connection = tokio::spawn(connection);
            let request = http::Request::get("/readyz")
                .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
                .header(http::header::AUTHORIZATION, &self.authorization)
                .body(http_body_util::Empty::new())
                .map_err(|e| e.to_string())?;
            let status = sender.send_request(request).await.map(|r| r.status()).map_err(|e| e.to_string());
            connection.abort();
            status
        };
        tokio::time::timeout(CONNECT_TIMEOUT, exchange).await.unwrap_or_else(|_| Err("timed out".to_owned()))
    }
}

/// A client configuration for a bearer token, trusting only the lab CA.
fn token_config(server_uri: &http::Uri, ca_der: &[u8], token: &str) -> kube::Config {
    let mut config = kube::Config::new(server_uri.clone());
    config.root_cert = Some(vec![ca_der.to_vec()]);
    config.auth_info.token = Some(token.to_owned().into());
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    config
}

/// Where the control plane keeps its files; removes them when dropped (also when a start
/// fails half-way).
struct Workspace {
    root: PathBuf,
    /// `Some` for a temporary folder (removed entirely); `None` for a folder the caller chose
    /// (only the [`CREATED`] entries are removed).
    temporary: Option<tempfile::TempDir>,
    removed: bool,
}

impl Workspace {
    fn prepare(dir: Option<PathBuf>) -> Result<Workspace> {
        let Some(dir) = dir else {
            let tmp = tempfile::Builder::new().prefix("pulsecheck-lab-").tempdir().map_err(|source| Error::Io {
                action: "create a temporary folder in",
                path: std::env::temp_dir(),
                source,
            })?;
            return Ok(Workspace { root: tmp.path().to_path_buf(), temporary: Some(tmp), removed: false });
        };
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { action: "create", path: dir.clone(), source })?;
        // Absolute, so the kubeconfig and the logs named in errors work from anywhere.
        let root = std::fs::canonicalize(&dir).map_err(|source| Error::Io { action: "resolve", path: dir, source })?;
        // Leftovers of a run that was SIGKILLed.
        remove_created(&root)?;
        Ok(Workspace { root, temporary: None, removed: false })
    }

    fn root(&self) -> &Path {
        &self.root
    }

    /// Removes what the control plane created; later calls do nothing.
    fn remove(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        match self.temporary.take() {
            Some(tmp) => tmp.close().map_err(|source| Error::Io { action: "remove", path: self.root.clone(), source }),
            None => remove_created(&self.root),
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!("lab control plane cleanup: {err}");
        }
    }
}

/// Removes the [`CREATED`] entries of `dir`, and nothing else.
fn remove_created(dir: &Path) -> Result<()> {
    for name in CREATED {
        let path = dir.join(name);
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        };
        removed.map_err(|source| Error::Io { action: "remove", path, source })?;
    }
    Ok(())
}

/// The files kube-apiserver is started with, and what the clients need of them.
struct Credentials {
    pki: PathBuf,
    ca_pem: String,
    ca_der: Vec<u8>,
    admin_token: String,
    ca: CertificateAuthority,
}

impl Credentials {
    fn write(pki: &Path) -> Result<Credentials> {
        std::fs::create_dir_all(pki).map_err(|source| Error::Io { action: "create", path: pki.to_path_buf(), source })?;
        let ca = CertificateAuthority::new("pulsecheck-lab-ca")?;
        let serving = ca.issue_server(
            "kube-apiserver",
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(KUBERNETES_SERVICE_IP)],
            &["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        )?;
        let admin_token = certs::random_token();
        let ca_pem = ca.cert_pem();
        write_private(&pki.join("ca.crt"), ca_pem.as_bytes())?;
        write_private(&pki.join("apiserver.crt"), serving.cert_pem.as_bytes())?;
        write_private(&pki.join("apiserver.key"), serving.key_pem.as_bytes())?;
        write_private(&pki.join("service-account.key"), certs::service_account_key_pem()?.as_bytes())?;
        // The apiserver's own client certificate for kubelets (logs, exec, port-forward on
        // real nodes), in system:masters as kubeadm's apiserver-kubelet-client is.
        let kubelet_client = ca.issue_client("kube-apiserver-kubelet-client", &["system:masters"])?;
        write_private(&pki.join("apiserver-kubelet-client.crt"), kubelet_client.cert_pem.as_bytes())?;
        write_private(&pki.join("apiserver-kubelet-client.key"), kubelet_client.key_pem.as_bytes())?;
        write_private(&pki.join("tokens.csv"), format!("{admin_token},admin,uid-admin,\"system:masters\"\n").as_bytes())?;
        let ca_der = first_certificate_der(&ca_pem).ok_or_else(|| Error::Io {
            action: "read the CA certificate generated for",
            path: pki.join("ca.crt"),
            source: io::Error::other("no CERTIFICATE block"),
        })?;
        Ok(Credentials { pki: pki.to_path_buf(), ca_pem, ca_der, admin_token, ca })
    }

    fn file(&self, name: &str) -> String {
        self.pki.join(name).display().to_string()
    }
}

fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok().map(|der| der.to_vec())
}

/// Loopback ports for one start attempt.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
}

impl Ports {
    /// Three distinct ports the kernel considers free right now. Another program may take one
    /// before our processes bind it; start-up then retries with new ones.
    fn pick() -> Result<Ports> {
        let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::NoFreePort);
        // Hold all three at once so they differ.
        let listeners = [bind()?, bind()?, bind()?];
        let port = |i: usize| listeners[i].local_addr().map(|a| a.port()).map_err(Error::NoFreePort);
        Ok(Ports { etcd_client: port(0)?, etcd_peer: port(1)?, apiserver: port(2)? })
    }
}

/// Why one start attempt failed.
enum Launch {
    /// A program could not bind its port: try again with others.
    PortTaken { log: PathBuf, tail: String },
    /// Anything else.
    Failed(Error),
}

impl From<Error> for Launch {
    fn from(err: Error) -> Self {
        Launch::Failed(err)
    }
}

/// Starts etcd and kube-apiserver (at once: the apiserver retries until etcd answers) and waits
/// until the apiserver listens, so that a port clash is seen here and retried.
async fn launch(binaries: &Binaries, root: &Path, credentials: &Credentials, ports: &Ports, opts: &ControlPlaneOptions) -> Result<Vec<Process>, Launch> {
    let data = root.join(ETCD_DATA);
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|source| Error::Io { action: "remove", path: data.clone(), source })?;
    }
    let etcd_client_url = format!("http://127.0.0.1:{}", ports.etcd_client);
    let etcd_peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let etcd_args = vec![
        "--name=lab".to_owned(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={etcd_client_url}"),
        format!("--advertise-client-urls={etcd_client_url}"),
        format!("--listen-peer-urls={etcd_peer_url}"),
        format!("--initial-advertise-peer-urls={etcd_peer_url}"),
        format!("--initial-cluster=lab={etcd_peer_url}"),
        "--unsafe-no-fsync=true".to_owned(),
    ];
    let etcd = Process::spawn("etcd", &binaries.etcd, &etcd_args, &root.join(ETCD_LOG)).map_err(Error::from)?;

    let mut apiserver_args = vec![
        format!("--etcd-servers={etcd_client_url}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", credentials.pki.display()),
        format!("--tls-cert-file={}", credentials.file("apiserver.crt")),
        format!("--tls-private-key-file={}", credentials.file("apiserver.key")),
        format!("--client-ca-file={}", credentials.file("ca.crt")),
        format!("--token-auth-file={}", credentials.file("tokens.csv")),
        // Node: real nodes' kubelets (system:node:NAME) get exactly a kubelet's access, and
        // NodeRestriction keeps each to its own Node and Lease, as in a production cluster.
        // OwnerReferencesPermissionEnforcement (OpenShift's default, and hardened clusters'):
        // changing an object's ownerReferences takes delete on it.
        "--authorization-mode=Node,RBAC".to_owned(),
        "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement".to_owned(),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        // Real nodes: reach kubelets at their InternalIP (their hostnames resolve nowhere), verify
        // their serving certificates against the cluster CA, and present a client certificate.
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        format!("--kubelet-certificate-authority={}", credentials.file("ca.crt")),
        format!("--kubelet-client-certificate={}", credentials.file("apiserver-kubelet-client.crt")),
        format!("--kubelet-client-key={}", credentials.file("apiserver-kubelet-client.key")),
        format!("--service-account-issuer=https://127.0.0.1:{}", ports.apiserver),
        format!("--service-account-key-file={}", credentials.file("service-account.key")),
        format!("--service-account-signing-key-file={}", credentials.file("service-account.key")),
        "--allow-privileged=true".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        // Without priority and fairness these cap the requests in flight (400 and 200 by
        // default). A 5,000-node simulated fleet renews 500 Leases a second on a 2-core machine;
        // at those caps the apiserver answered 429 and the scale run was not comparable. A lab
        // apiserver queues instead.
        "--max-requests-inflight=3000".to_owned(),
        "--max-mutating-requests-inflight=3000".to_owned(),
        // The "kubernetes" Service cannot point at 127.0.0.1 (loopback endpoints are invalid);
        // without this the log fills with that error.
        "--endpoint-reconciler-type=none".to_owned(),
    ];
    if !opts.service_accounts {
        apiserver_args.push("--disable-admission-plugins=ServiceAccount".to_owned());
    }
    if let Some(policy) = &opts.audit_policy {
        apiserver_args.extend([
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", root.join(AUDIT_LOG).display()),
            "--audit-log-format=json".to_owned(),
        ]);
    }
    let apiserver = Process::spawn("kube-apiserver", &binaries.kube_apiserver, &apiserver_args, &root.join(APISERVER_LOG)).map_err(Error::from)?;
    let mut processes = vec![apiserver, etcd];

    // Until the apiserver accepts TCP connections, watch for a port clash in either program.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for process in &mut processes {
            if let Some(status) = process.exit_status() {
                let tail = process.log_tail();
                if tail.contains("address already in use") {
                    return Err(Launch::PortTaken { log: process.log().to_path_buf(), tail });
                }
                return Err(Launch::Failed(Error::Exited { program: process.program(), status, tail, log: process.log().to_path_buf() }));
            }
        }
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, ports.apiserver)).await.is_ok() {
            return Ok(processes);
        }
        if Instant::now() >= deadline {
            let log = root.join(APISERVER_LOG);
            return Err(Launch::Failed(Error::NotReady {
                waited: START_TIMEOUT,
                waiting_for: format!("kube-apiserver listening on 127.0.0.1:{}", ports.apiserver),
                tail: log_tail(&log),
                log,
            }));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let io_err = |source| Error::Io { action: "write", path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), ..Default::default() }
}

async fn create_if_missing<K>(api: &Api<K>, object: &K, action: String) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube { action, source }),
    }
}

/// A kubeconfig with one cluster (CA embedded), one token user and one context.
fn kubeconfig_yaml(server_url: &str, ca_pem: &str, token: &str) -> Result<String> {
    // k8s-openapi's ByteString serializes as standard base64, what certificate-authority-data wants.
    let ca_data = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": KUBECONFIG_CLUSTER, "cluster": { "server": server_url, "certificate-authority-data": ca_data } }],
        "users": [{ "name": KUBECONFIG_CLUSTER, "user": { "token": token } }],
        "contexts": [{ "name": KUBECONFIG_CLUSTER, "context": { "cluster": KUBECONFIG_CLUSTER, "user": KUBECONFIG_CLUSTER, "namespace": "default" } }],
        "current-context": KUBECONFIG_CLUSTER,
        "preferences": {},
    });
    serde_yaml_ng::to_string(&config).map_err(Error::Kubeconfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_embeds_server_ca_and_token() {
        let yaml = kubeconfig_yaml("https://127.0.0.1:6443", "-----BEGIN CERTIFICATE-----\nAA==\n", "tok").unwrap();
        let parsed: kube::config::Kubeconfig = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some(KUBECONFIG_CLUSTER));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        let data = cluster.certificate_authority_data.as_deref().unwrap();
        let decoded: k8s_openapi::ByteString = serde_json::from_value(serde_json::json!(data)).unwrap();
        assert_eq!(decoded.0, b"-----BEGIN CERTIFICATE-----\nAA==\n");
        assert!(yaml.contains("token: tok"), "{yaml}");
    }

    #[test]
    fn ports_picked_together_are_distinct() {
        let ports = Ports::pick().unwrap();
        assert_ne!(ports.etcd_client, ports.etcd_peer);
        assert_ne!(ports.etcd_client, ports.apiserver);
        assert_ne!(ports.etcd_peer, ports.apiserver);
    }

    #[test]
    fn given_folder_keeps_foreign_files_and_loses_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        std::fs::create_dir_all(dir.join(ETCD_DATA).join("member")).unwrap();
        std::fs::write(dir.join(KUBECONFIG), "stale").unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let mut workspace = Workspace::prepare(Some(dir.clone())).unwrap();
        assert!(!dir.join(ETCD_DATA).exists(), "stale etcd data of a killed run is replaced");
        assert!(!dir.join(KUBECONFIG).exists());
        std::fs::write(dir.join(APISERVER_LOG), "log").unwrap();
        workspace.remove().unwrap();
        assert!(!dir.join(APISERVER_LOG).exists());
        assert!(dir.join("notes.txt").exists());
    }
}
