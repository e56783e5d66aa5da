//! Kubernetes' own controllers next to the lab's apiserver: kube-controller-manager (its node
//! lifecycle controller, whose `unreachable`/`not-ready` taints and Ready=Unknown are what
//! Kubernetes says of a node) and kube-scheduler (which places Pods on real nodes).
//!
//! pulsecheck's promise is measured against what Kubernetes itself concludes, so the demo and
//! the real-node tests run the real controllers rather than assume their verdicts. Each runs as a
//! [`Process`] that dies with the lab.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::process::{self, Process};

/// How long [`Controller::stop`] waits after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A controller could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be started.
    #[error(transparent)]
    Spawn(#[from] process::Error),
    /// It exited.
    #[error("{program} exited ({status}); last lines of {}:\n{tail}", .log.display())]
    Exited {
        /// kube-controller-manager or kube-scheduler.
        program: &'static str,
        /// How it exited.
        status: String,
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
}

/// One running controller program.
pub struct Controller(Process);

impl Controller {
    /// kube-controller-manager with only the node lifecycle controller, checking nodes every
    /// second and calling one unreachable after `grace` without a heartbeat
    /// (`--node-monitor-grace-period`).
    pub fn kube_controller_manager(program: &Path, kubeconfig: &Path, grace: Duration, log: &Path) -> Result<Controller, Error> {
        Self::start_kcm(program, kubeconfig, grace, log, Some("node-lifecycle-controller"))
    }

    /// kube-controller-manager with its default controllers, as a cluster that runs Pods has
    /// them (Deployments and ReplicaSets, the `default` ServiceAccounts, `kube-root-ca.crt` in
    /// every namespace, garbage collection, taint-based eviction), and the node lifecycle
    /// controller as in [`Controller::kube_controller_manager`].
    pub fn kube_controller_manager_with_defaults(program: &Path, kubeconfig: &Path, grace: Duration, log: &Path) -> Result<Controller, Error> {
        Self::start_kcm(program, kubeconfig, grace, log, None)
    }

    fn start_kcm(program: &Path, kubeconfig: &Path, grace: Duration, log: &Path, controllers: Option<&str>) -> Result<Controller, Error> {
        let args = [
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--controllers={}", controllers.unwrap_or("*")),
            "--node-monitor-period=1s".to_string(),
            format!("--node-monitor-grace-period={}s", grace.as_secs().max(1)),
            "--leader-elect=false".to_string(),
            "--use-service-account-credentials=false".to_string(),
            "--secure-port=0".to_string(),
            "--v=2".to_string(),
        ];
        let process = Process::spawn("kube-controller-manager", program, &args, log)?;
        tracing::info!(pid = process.pid(), log = %log.display(), "kube-controller-manager started");
        Ok(Controller(process))
    }

    /// kube-scheduler with its default profile.
    pub fn kube_scheduler(program: &Path, kubeconfig: &Path, log: &Path) -> Result<Controller, Error> {
        let args = [
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".to_string(),
            "--secure-port=0".to_string(),
            "--v=1".to_string(),
        ];
        let process = Process::spawn("kube-scheduler", program, &args, log)?;
        tracing::info!(pid = process.pid(), log = %log.display(), "kube-scheduler started");
        Ok(Controller(process))
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.0.log()
    }

    /// Its log's last lines.
    pub fn log_tail(&self) -> String {
        self.0.log_tail()
    }

    /// An error when it has exited.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        match self.0.exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited { program: self.0.program(), status, log: self.0.log().to_path_buf(), tail: self.0.log_tail() }),
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub async fn stop(self) {
        self.0.terminate(STOP_GRACE).await;
    }
}
