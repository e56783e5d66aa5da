//! A lab of real nodes for the integration tests: the real control plane, kube-controller-manager,
//! and real kubelets ([`pulsecheck_lab::realnode`]), with pulsecheck in-process under the chart's
//! ServiceAccount, probing the kubelets over TLS verified against the cluster CA.

use std::time::Duration;

use pulsecheck::{config::Settings, controller::Running, probe::ProbeMode};
use pulsecheck_lab::{
    binaries::Binaries,
    controllers::Controller,
    controlplane::{ControlPlane, ControlPlaneOptions},
    realnode::{HostTools, KubeletTiming, RealNode, RealNodeOptions},
};

use super::{apply_chart_rbac, fast_settings};

/// The kubelets' periods, compressed: status computed every second and reported at least every
/// 10 s, Lease of 8 s renewed every 2 s.
pub const TIMING: KubeletTiming = KubeletTiming {
    status_update_frequency: Some(Duration::from_secs(1)),
    status_report_frequency: Some(Duration::from_secs(10)),
    lease_duration: Some(Duration::from_secs(8)),
};
/// kube-controller-manager's `--node-monitor-grace-period`.
pub const KCM_GRACE: Duration = Duration::from_secs(12);

/// Real nodes never run two labs at once in one test binary: two cores.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fields drop in this order on a panic: the logs are printed, the nodes and
/// kube-controller-manager end, and only then does the control plane remove its folder.
pub struct RealLab {
    logs: LogsOnPanic,
    pub nodes: Vec<RealNode>,
    pub kcm: Controller,
    pub cp: ControlPlane,
    files: tempfile::TempDir,
    token: String,
}

impl RealLab {
    /// The control plane, kube-controller-manager and one real node per name, all Ready.
    pub async fn start(names: &[&str]) -> RealLab {
        super::init();
        let tools = HostTools::check().unwrap_or_else(|e| panic!("{e}"));
        let cp = ControlPlane::start(ControlPlaneOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let binaries = Binaries::locate().unwrap();
        let kcm_program = binaries.require_kube_controller_manager().unwrap_or_else(|e| panic!("{e}")).to_path_buf();
        let kcm = Controller::kube_controller_manager(&kcm_program, cp.kubeconfig_path(), KCM_GRACE, &cp.dir().join("kube-controller-manager.log")).unwrap();
        let mut nodes = Vec::new();
        for name in names {
            let options = RealNodeOptions { name: (*name).to_owned(), dir: cp.dir().join("nodes").join(name), timing: TIMING };
            nodes.push(RealNode::start(&cp, &tools, options).await.unwrap_or_else(|e| panic!("{e}")));
        }
        apply_chart_rbac(cp.kubeconfig_path());
        let token = cp.service_account_token("pulsecheck", "pulsecheck").await.unwrap();
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("ca.crt"), cp.ca_pem()).unwrap();
        std::fs::write(files.path().join("token"), &token).unwrap();
        let logs = LogsOnPanic(nodes.iter().map(|n| n.kubelet_log().to_path_buf()).chain([kcm.log().to_path_buf()]).collect());
        RealLab { logs, nodes, kcm, cp, files, token }
    }

    pub fn node(&mut self, name: &str) -> &mut RealNode {
        self.nodes.iter_mut().find(|n| n.name() == name).unwrap_or_else(|| panic!("no real node {name}"))
    }

    /// pulsecheck in-process as the chart's ServiceAccount, probing every 2 s over TLS
    /// verified against the cluster CA (so it reads each kubelet's /configz), guard opened to
    /// half the fleet (these fleets have two nodes).
    pub async fn controller(&self, tweak: impl FnOnce(&mut Settings)) -> Running {
        let client = self.cp.client_with_token(&self.token).await.unwrap();
        let mut settings: Settings = fast_settings();
        settings.probe.mode = ProbeMode::KubeletHealthz;
        settings.probe.ca = Some(self.files.path().join("ca.crt"));
        settings.probe.token_file = self.files.path().join("token");
        settings.probe_every(Duration::from_secs(2));
        // Two cores under several processes per node: a kubelet may take a while to answer.
        settings.probe.timeout = Duration::from_millis(1500);
        settings.thresholds.status_stale_after = Duration::from_secs(120);
        settings.thresholds.os_image_unknown_after = Duration::from_secs(6);
        settings.guard.max_unhealthy_percent = 50.0;
        tweak(&mut settings);
        pulsecheck::controller::start(client, settings).await.expect("controller starts")
    }

    /// Stops everything; nothing of the nodes is left when this returns.
    pub async fn stop(self) {
        let _logs = self.logs;
        for node in self.nodes {
            node.stop().await;
        }
        self.kcm.stop().await;
        self.cp.stop().await.unwrap();
    }
}

/// Prints the kubelets' log tails when a test fails (declared first: dropped before the
/// control plane removes its folder).
struct LogsOnPanic(Vec<std::path::PathBuf>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.0 {
                println!("--- {} (tail) ---\n{}", log.display(), pulsecheck_lab::process::log_tail(log));
            }
        }
    }
}
