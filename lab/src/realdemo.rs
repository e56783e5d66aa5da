//! The seed failure on a real kubelet: the first act of `pulsecheck-lab demo` on a machine that
//! can run real nodes ([`crate::realnode`]).
//!
//! Two real nodes (upstream kubelet, containerd, a FUSE root disk) next to the real control plane
//! and kube-controller-manager, pulsecheck in-process probing them over verified TLS. The root
//! disk of `seed-1` hangs: its status loop stops, its Lease goes on, Kubernetes keeps it Ready,
//! and pulsecheck taints it; the disk comes back and pulsecheck lets it go. One line per change,
//! then what must have held. Periods are compressed (status reported every 10 s, Lease of 8 s).

use std::{path::Path, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::Api;
use tokio::time::Instant;

use pulsecheck::{config::Settings, controller, guard::GuardConfig, names, probe::ProbeMode, verdict::Verdict};

use crate::{
    controllers::Controller,
    controlplane::{ControlPlane, ControlPlaneOptions},
    realnode::{HostTools, KubeletTiming, NodeFault, RealNode, RealNodeOptions},
};

/// The node whose disk hangs, and the one that stays healthy.
const SEED: &str = "seed-1";
const CONTROL: &str = "seed-2";
/// The kubelets' periods.
const TIMING: KubeletTiming = KubeletTiming {
    status_update_frequency: Some(Duration::from_secs(1)),
    status_report_frequency: Some(Duration::from_secs(10)),
    lease_duration: Some(Duration::from_secs(8)),
};
/// How long the disk stays hung after pulsecheck's taint, and the longest each phase may take.
const HUNG_AFTER_TAINT: Duration = Duration::from_secs(5);
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the act could not be played.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control plane did not start.
    #[error("cannot start the real-node control plane: {0}")]
    ControlPlane(#[from] crate::controlplane::Error),
    /// A real node did not start.
    #[error(transparent)]
    Node(#[from] crate::realnode::Error),
    /// kube-controller-manager did not start.
    #[error(transparent)]
    Controller(#[from] crate::controllers::Error),
    /// kube-controller-manager is missing.
    #[error(transparent)]
    Binaries(#[from] crate::binaries::Error),
    /// pulsecheck did not start.
    #[error("cannot start the pulsecheck controller: {0}")]
    Pulsecheck(#[from] controller::Error),
    /// A file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What one look shows of the seed node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Look {
    ready: String,
    lease_fresh: bool,
    status_fresh: bool,
    verdict: Option<Verdict>,
    tainted: bool,
}

impl Look {
    fn line(&self, lease_age: Option<u64>, status_age: Option<u64>) -> String {
        let ago = |age: Option<u64>| age.map_or("not yet".to_owned(), |a| format!("{a}s ago"));
        format!(
            "Kubernetes: Ready={} · Lease renewed {} · status reported {} · pulsecheck: {}{}",
            self.ready,
            ago(lease_age),
            ago(status_age),
            self.verdict.map_or("-", Verdict::as_str),
            if self.tainted { ", tainted" } else { "" }
        )
    }
}

/// Plays the act in `dir`, saying each line with `say`; returns the expectations and whether
/// each held.
pub async fn run(tools: &HostTools, kcm_program: &Path, dir: &Path, say: &mut dyn FnMut(&str)) -> Result<Vec<(bool, String)>, Error> {
    say("act 1 — the seed failure on a real kubelet: starting kube-apiserver, kube-controller-manager and two real nodes …");
    let cp = ControlPlane::start(ControlPlaneOptions { dir: Some(dir.to_path_buf()), ..Default::default() }).await?;
    let result = with_control_plane(&cp, tools, kcm_program, dir, say).await;
    let _ = cp.stop().await;
    result
}

async fn with_control_plane(
    cp: &ControlPlane,
    tools: &HostTools,
    kcm_program: &Path,
    dir: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<(bool, String)>, Error> {
    let kcm = Controller::kube_controller_manager(kcm_program, cp.kubeconfig_path(), Duration::from_secs(12), &dir.join("kube-controller-manager.log"))?;
    let mut nodes = Vec::new();
    for name in [SEED, CONTROL] {
        nodes.push(RealNode::start(cp, tools, RealNodeOptions { name: name.into(), dir: dir.join("nodes").join(name), timing: TIMING }).await?);
    }
    let write = |name: &str, text: &str| {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(name);
        let io = |source| Error::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(io)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)
    };
    write("kubelet-ca.crt", cp.ca_pem())?;
    // What the chart grants pulsecheck on kubelets, and no more.
    write("probe-token", &cp.kubelet_reader_token("pulsecheck-demo", &["healthz", "configz"]).await?)?;
    let running = controller::start(cp.client(), settings(dir)).await?;
    let outcome = play(cp, &running, &mut nodes, say).await;
    running.stop().await;
    for node in nodes {
        node.stop().await;
    }
    kcm.stop().await;
    Ok(outcome)
}

/// pulsecheck probing the real kubelets over TLS verified against the cluster CA; the status
/// threshold comes from each kubelet's /configz (10 s reports: about 27 s).
fn settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.lease_grace(Duration::from_secs(3));
    // The demo reads the seed node's verdict from /metrics, healthy or not.
    s.per_node_metrics = pulsecheck::metrics::PerNodeMetrics::All;
    s.guard = GuardConfig { max_per_minute: 100, recover_after: Duration::from_secs(4), max_unhealthy_percent: 50.0, ..GuardConfig::default() };
    s.evaluation_interval = Duration::from_millis(500);
    s.request_timeout = Duration::from_secs(5);
    s.probe.mode = ProbeMode::KubeletHealthz;
    s.probe.ca = Some(dir.join("kubelet-ca.crt"));
    s.probe.token_file = dir.join("probe-token");
    s.probe.timeout = Duration::from_millis(1500);
    s.probe_every(Duration::from_secs(2));
    s.admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s
}

async fn look(cp: &ControlPlane, running: &controller::Running) -> (Look, Option<u64>, Option<u64>) {
    let node = Api::<Node>::all(cp.client()).get(SEED).await.ok();
    let lease = Api::<Lease>::namespaced(cp.client(), "kube-node-lease").get(SEED).await.ok();
    let now = k8s_openapi::jiff::Timestamp::now();
    let age = |t: k8s_openapi::jiff::Timestamp| (now - t).get_seconds().max(0) as u64;
    let lease_age = lease.and_then(|l| l.spec?.renew_time).map(|t| age(t.0));
    let ready = node.as_ref().and_then(|n| n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").cloned());
    let status_age = ready.as_ref().and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| age(t.0));
    let tainted = node.as_ref().and_then(|n| n.spec.as_ref()?.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == names::TAINT_KEY));
    let verdict = crate::demo::verdicts(&running.metrics.render()).get(SEED).copied();
    let look = Look {
        ready: ready.map_or("?".into(), |c| c.status),
        lease_fresh: lease_age.is_some_and(|a| a < 8),
        status_fresh: status_age.is_some_and(|a| a < 20),
        verdict,
        tainted,
    };
    (look, lease_age, status_age)
}

/// Watches until `done` holds (or the phase times out), saying a line per change.
async fn watch(
    cp: &ControlPlane,
    running: &controller::Running,
    started: Instant,
    last: &mut Option<Look>,
    say: &mut dyn FnMut(&str),
    done: impl Fn(&Look) -> bool,
) -> Option<Look> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let (now, lease_age, status_age) = look(cp, running).await;
        if last.as_ref() != Some(&now) {
            say(&format!("t+{:>2}s {SEED}: {}", started.elapsed().as_secs(), now.line(lease_age, status_age)));
            *last = Some(now.clone());
        }
        if done(&now) {
            return Some(now);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn play(cp: &ControlPlane, running: &controller::Running, nodes: &mut [RealNode], say: &mut dyn FnMut(&str)) -> Vec<(bool, String)> {
    let started = Instant::now();
    let mut last = None;
    let mut held = Vec::new();
    let settled = watch(cp, running, started, &mut last, say, |l| l.verdict == Some(Verdict::Healthy) && l.ready == "True").await;
    held.push((settled.is_some(), format!("{SEED} and {CONTROL}: real kubelets, Ready, judged healthy")));
    if settled.is_none() {
        return held;
    }
    say(&format!(
        "t+{:>2}s fault: {SEED}'s root disk hangs (every read and write blocks; the kubelet is stuck reading /etc/os-release)",
        started.elapsed().as_secs()
    ));
    let hung_at = Instant::now();
    nodes[0].inject(NodeFault::DiskHang).ok();
    let tainted = watch(cp, running, started, &mut last, say, |l| l.tainted).await;
    held.push((
        tainted.as_ref().is_some_and(|l| l.ready == "True" && l.lease_fresh && !l.status_fresh),
        format!(
            "{SEED}: Kubernetes kept it Ready=True, its Lease renewing, while pulsecheck tainted it ({}s after the disk hung)",
            hung_at.elapsed().as_secs()
        ),
    ));
    tokio::time::sleep(HUNG_AFTER_TAINT).await;
    say(&format!("t+{:>2}s fault: {SEED}'s disk comes back", started.elapsed().as_secs()));
    let recovered_at = Instant::now();
    nodes[0].inject(NodeFault::Recover).ok();
    let released = watch(cp, running, started, &mut last, say, |l| !l.tainted && l.verdict == Some(Verdict::Healthy)).await;
    held.push((released.is_some(), format!("{SEED}: pulsecheck released it after it recovered ({}s after)", recovered_at.elapsed().as_secs())));
    let control = Api::<Node>::all(cp.client()).get(CONTROL).await.ok();
    let control_tainted = control.and_then(|n| n.spec?.taints).is_some_and(|t| t.iter().any(|t| t.key == names::TAINT_KEY));
    held.push((!control_tainted, format!("{CONTROL}: never tainted")));
    held
}
