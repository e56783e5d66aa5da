//! Shared helpers for the integration tests: a real control plane with a simulated fleet,
//! the controller in-process with compressed thresholds, and polling with deadlines.
#![allow(dead_code)]

pub mod real;
pub mod toxiproxy;

use std::{future::Future, time::Duration};

use k8s_openapi::api::{core::v1::Node, events::v1::Event};
use kube::{Api, api::ListParams};
use pulsecheck::{
    config::Settings,
    controller::{self, Running},
    leader::LeaderSettings,
    names,
    probe::ProbeMode,
};
use pulsecheck_lab::{
    controlplane::{ControlPlane, ControlPlaneOptions},
    fleet::{Fleet, FleetOptions},
};

/// A kubelet with compressed periods: Lease every 1 s, status computed every 1 s and reported
/// at least every 2 s (±50 % jitter, so gaps up to 3 s).
pub fn fast_fleet(nodes: usize, prefix: &str) -> FleetOptions {
    FleetOptions {
        nodes,
        name_prefix: prefix.to_string(),
        zones: 3,
        lease_duration: Duration::from_secs(4),
        status_update_frequency: Duration::from_secs(1),
        status_report_frequency: Duration::from_secs(2),
        kubelet_endpoints: false,
        force: false,
        no_pods: false,
    }
}

/// The flags of [`fast_settings`], for tests that run the `pulsecheck` binary. Thresholds
/// compressed in the same proportion as the fleet: stale after 8 s (kubelet reports
/// at least every 3 s here), Lease grace 3 s, recovery after 3 s, a tick every 500 ms.
pub const FAST: &[&str] = &[
    "--lease-grace=3s",
    "--status-stale-after=8s",
    "--os-image-unknown-after=3s",
    "--recover-after=3s",
    "--evaluation-interval=500ms",
    "--probe=none",
    "--leader-elect=false",
    "--admin-addr=127.0.0.1:0",
    "--request-timeout=5s",
    "--max-remediations-per-minute=100",
    "--per-node-metrics=all",
];

/// The status threshold above, for deadlines.
pub const STALE_AFTER: Duration = Duration::from_secs(8);

/// A control plane and a fleet.
pub struct Lab {
    pub cp: ControlPlane,
    pub fleet: Fleet,
}

impl Lab {
    pub async fn start(opts: FleetOptions) -> Lab {
        init();
        let cp = ControlPlane::start(ControlPlaneOptions::default()).await.expect("control plane starts");
        let fleet = Fleet::start(cp.client(), opts).await.expect("fleet starts");
        Lab { cp, fleet }
    }

    pub fn client(&self) -> kube::Client {
        self.cp.client()
    }

    pub async fn stop(self) {
        self.fleet.stop().await;
        let _ = self.cp.stop().await;
    }
}

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).with_test_writer().try_init();
}

/// The settings [`FAST`] stands for, written directly: what the in-process controller runs with.
pub fn fast_settings() -> Settings {
    let mut s = Settings::default();
    s.lease_grace(Duration::from_secs(3));
    s.thresholds.status_stale_after = STALE_AFTER;
    s.thresholds.os_image_unknown_after = Duration::from_secs(3);
    s.guard.recover_after = Duration::from_secs(3);
    s.guard.max_per_minute = 100;
    s.evaluation_interval = Duration::from_millis(500);
    s.probe.mode = ProbeMode::None;
    s.admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s.request_timeout = Duration::from_secs(5);
    // The tests read healthy nodes' series too; the default names only nodes in trouble.
    s.per_node_metrics = pulsecheck::metrics::PerNodeMetrics::All;
    s
}

/// Starts the controller in-process with [`fast_settings`], changed by `tweak`.
pub async fn controller(client: kube::Client, tweak: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = fast_settings();
    tweak(&mut settings);
    controller::start(client, settings).await.expect("controller starts")
}

/// Leader election in namespace `default` with a 4 s Lease, as `identity`.
pub fn elect(identity: &str) -> LeaderSettings {
    LeaderSettings { enabled: true, namespace: "default".into(), name: "pulsecheck".into(), identity: identity.into(), duration: Duration::from_secs(4) }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn get_node(client: &kube::Client, name: &str) -> Node {
    Api::<Node>::all(client.clone()).get(name).await.expect("node exists")
}

/// Reads `name` every 200 ms until `check` holds for it (or panics after `timeout`, naming
/// `what`), and returns it.
pub async fn wait_node(client: &kube::Client, name: &str, what: &str, timeout: Duration, check: impl Fn(&Node) -> bool) -> Node {
    let check = &check;
    eventually(what, timeout, || async move {
        let n = get_node(client, name).await;
        check(&n).then_some(n)
    })
    .await
}

/// Keys of the node's taints.
pub fn taint_keys(node: &Node) -> Vec<String> {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

pub fn has_our_taint(node: &Node) -> bool {
    taint_keys(node).iter().any(|k| k == names::TAINT_KEY)
}

pub fn our_condition(node: &Node) -> Option<(String, String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == names::CONDITION_TYPE)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

/// `(reason, note)` of every Event about `node` in namespace default.
pub async fn events_for(client: &kube::Client, node: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The value of the first exposition line that starts with `series` (e.g.
/// `pulsecheck_node_verdict{node="a",verdict="zombie"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

pub fn verdict_series(node: &str, verdict: &str) -> String {
    format!(r#"pulsecheck_node_verdict{{node="{node}",verdict="{verdict}"}}"#)
}

/// Waits until the controller has judged `node` as `verdict`.
pub async fn wait_verdict(running: &Running, node: &str, verdict: &str, timeout: Duration) {
    let series = verdict_series(node, verdict);
    eventually(&format!("{node} judged {verdict}"), timeout, || {
        let text = running.metrics.render();
        let hit = metric(&text, &series) == Some(1.0);
        async move { hit.then_some(()) }
    })
    .await
}

/// Number of evaluation passes so far.
pub fn evaluations(running: &Running) -> u64 {
    metric(&running.metrics.render(), "pulsecheck_evaluation_duration_seconds_count").unwrap_or(0.0) as u64
}

/// Waits for `n` more evaluation passes (proof that time passed under the controller's eyes).
pub async fn wait_evaluations(running: &Running, n: u64, timeout: Duration) {
    let target = evaluations(running) + n;
    eventually(&format!("{n} more evaluation passes"), timeout, || {
        let done = evaluations(running) >= target;
        async move { done.then_some(()) }
    })
    .await
}

/// A tool built by tools/build.sh (kubectl, promtool, helm, …), building it on first use.
pub fn tool(name: &str) -> std::path::PathBuf {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = match name {
        "kube-apiserver" | "etcd" => "control",
        "kube-controller-manager" => "all",
        "toxiproxy-server" => "toxiproxy",
        other => other,
    };
    let out = std::process::Command::new("bash")
        .arg(repo.join("tools/build.sh"))
        .arg(target)
        .current_dir(&repo)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tools/build.sh {target}: {e}"));
    assert!(out.status.success(), "tools/build.sh {target} failed");
    let folder = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    let path = std::path::Path::new(&folder).join(name);
    assert!(path.exists(), "{} missing after tools/build.sh {target}", path.display());
    path
}

/// A plain HTTP GET to the admin server: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("admin server reachable");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Runs the built binary and returns its output (bounded, so a hang fails the test).
pub async fn pulsecheck(args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulsecheck")).args(args).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(90), run).await.expect("pulsecheck finished within 90s").expect("pulsecheck runs")
}

/// `pulsecheck SUBCOMMAND --kubeconfig K` plus `extra`.
pub async fn run_subcommand(subcommand: &str, kubeconfig: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let kubeconfig = kubeconfig.display().to_string();
    let mut args = vec![subcommand, "--kubeconfig", kubeconfig.as_str()];
    args.extend_from_slice(extra);
    pulsecheck(&args).await
}

/// Output bytes as text, for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code, stdout and stderr of a finished run, for assertion messages.
pub fn describe(out: &std::process::Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Waits until pulsecheck's taint is on `node`, or panics after `timeout` naming `what`.
pub async fn wait_tainted(client: &kube::Client, node: &str, what: &str, timeout: Duration) {
    eventually(what, timeout, || {
        let client = client.clone();
        async move { has_our_taint(&get_node(&client, node).await).then_some(()) }
    })
    .await;
}

/// The files `--probe=kubelet-healthz` needs against a fleet's kubelet endpoints: the fleet's
/// kubelet CA and a token file.
pub struct KubeletProbeFiles {
    _dir: tempfile::TempDir,
    pub ca: std::path::PathBuf,
    pub token: std::path::PathBuf,
}

impl KubeletProbeFiles {
    /// Writes the CA of `fleet`'s kubelet endpoints and `token`.
    pub fn write(fleet: &Fleet, token: &str) -> KubeletProbeFiles {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("kubelet-ca.pem");
        std::fs::write(&ca, fleet.kubelet_ca_pem()).unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, token).unwrap();
        KubeletProbeFiles { _dir: dir, ca, token: path }
    }

    /// `kubelet-healthz` over TLS verified against the fleet's CA, with the token.
    pub fn verified(&self, s: &mut Settings) {
        s.probe.mode = ProbeMode::KubeletHealthz;
        s.probe.ca = Some(self.ca.clone());
        s.probe.token_file = self.token.clone();
    }
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Renders the chart's ServiceAccount and RBAC (default values, release `pulsecheck` in namespace
/// `pulsecheck`) and applies them with kubectl, after the namespace.
pub fn apply_chart_rbac(kubeconfig: &std::path::Path) {
    let rendered = std::process::Command::new(tool("helm"))
        .args(["template", "pulsecheck"])
        .arg(repo().join("charts/pulsecheck"))
        .args(["--namespace", "pulsecheck", "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"])
        .output()
        .expect("helm runs");
    assert!(rendered.status.success(), "helm template failed: {}", String::from_utf8_lossy(&rendered.stderr));
    let rendered = String::from_utf8(rendered.stdout).expect("helm prints UTF-8");
    assert!(rendered.contains("kind: ClusterRole\n") && rendered.contains("kind: ServiceAccount\n"), "{rendered}");
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut child = std::process::Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.unwrap_or("").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    kubectl(&["apply", "-f", repo().join("manifests/namespace.yaml").to_str().unwrap()], None);
    kubectl(&["apply", "-f", "-"], Some(&rendered));
}

/// A TLS acceptor serving a certificate for `ip` (common name `name`) issued by `ca`: the
/// server side of the tests' fake kubelets, apiservers and webhooks.
pub fn tls_acceptor(ca: &pulsecheck_lab::certs::CertificateAuthority, name: &str, ip: std::net::IpAddr) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let serving = ca.issue_server(name, &[ip], &[]).unwrap();
    let chain = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// How long one helm or kubectl command may take (helm waits for hooks up to its own 5 m).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(360);

/// Runs `program --kubeconfig K args…`, which must succeed within [`COMMAND_DEADLINE`] (it is
/// killed and the test fails otherwise); its standard output.
pub fn run_tool(program: std::path::PathBuf, kubeconfig: &std::path::Path, flag: &str, args: &[&str]) -> String {
    let mut child = std::process::Command::new(&program)
        .arg(flag)
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the tool runs");
    // Drained while it runs, so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).ok();
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).ok();
        b
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the tool is waited for") {
            break status;
        }
        if started.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} did not finish within {COMMAND_DEADLINE:?}", program.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::process::Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() };
    assert!(out.status.success(), "{} {args:?} failed: {}\n{}", program.display(), String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
