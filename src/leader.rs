//! Leader election: one active pulsecheck at a time.
//!
//! Two replicas acting at once would race each other's taints (harmlessly, thanks to
//! resourceVersion preconditions, but confusingly) and double the Events. A
//! `coordination.k8s.io` Lease, held through kube-lease-manager, makes exactly one instance the
//! actor; the others keep watching and evaluating (so their metrics are warm and a failover is
//! instant) but write nothing. Without `--leader-elect` the instance is always the leader.
//!
//! RBAC: `leases` get, create and patch in the leader Lease's namespace.

use std::time::Duration;

use clap::{ArgAction, Args};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};

use crate::parse::positive_duration;

/// Leader election, so that two replicas never act at once.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// Take a coordination.k8s.io Lease before acting.
    #[arg(long, env = "PULSECHECK_LEADER_ELECT", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (defaults to the pod's namespace, else "pulsecheck").
    #[arg(long, env = "PULSECHECK_LEADER_ELECTION_NAMESPACE", value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "PULSECHECK_LEADER_ELECTION_NAME", value_name = "NAME", default_value = "pulsecheck")]
    pub leader_election_name: String,
    /// How long a leader's claim lasts without renewal.
    #[arg(long, env = "PULSECHECK_LEADER_ELECTION_LEASE_DURATION", value_name = "DURATION", default_value = "15s", value_parser = positive_duration)]
    pub leader_election_lease_duration: Duration,
    /// Identity in the leader Lease (defaults to the pod name, else the host name).
    #[arg(long, env = "PULSECHECK_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,
}

/// Leader election settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSettings {
    /// Elect at all (without, the instance is always the leader).
    pub enabled: bool,
    /// Namespace of the leader Lease.
    pub namespace: String,
    /// Name of the leader Lease.
    pub name: String,
    /// This instance's identity, in the Lease and in Events.
    pub identity: String,
    /// Lease duration.
    pub duration: Duration,
}

impl LeaderSettings {
    /// The settings `args` ask for; the identity defaults to `$POD_NAME`, then the host name,
    /// the namespace to `$POD_NAMESPACE`, then the ServiceAccount's namespace file.
    pub fn from_args(args: &LeaderArgs) -> LeaderSettings {
        let identity = args
            .identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
            .unwrap_or_else(|| "pulsecheck".into());
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .or_else(|| std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok().map(|s| s.trim().to_string()))
            .unwrap_or_else(|| "pulsecheck".into());
        LeaderSettings {
            enabled: args.leader_elect,
            namespace,
            name: args.leader_election_name.clone(),
            identity,
            duration: args.leader_election_lease_duration,
        }
    }

    /// Always the leader, as `identity` (`--leader-elect=false`).
    pub fn disabled(identity: &str) -> LeaderSettings {
        LeaderSettings {
            enabled: false,
            namespace: "pulsecheck".into(),
            name: "pulsecheck".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
        }
    }
}

/// Errors setting up leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lease could not be created or read.
    #[error("leader election Lease {namespace}/{name}: {source}")]
    Lease { namespace: String, name: String, source: LeaseManagerError },
    /// The lease duration is too short to renew in time.
    #[error("--leader-election-lease-duration must be at least 2s, got {0:?}")]
    TooShort(Duration),
}

/// Leadership as the controller sees it: `is_leader()` right now, `changed()` to wait.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    _always: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// Always the leader (`--leader-elect=false`).
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership { receiver: rx, task: None, _always: Some(tx) }
    }

    /// Campaigns for the leader Lease, or is always the leader when election is off.
    pub async fn start(client: kube::Client, settings: &LeaderSettings) -> Result<Leadership, Error> {
        if !settings.enabled {
            return Ok(Leadership::always());
        }
        let LeaderSettings { namespace, name, identity, duration, .. } = settings;
        let duration = *duration;
        let secs = duration.as_secs();
        if secs < 2 {
            return Err(Error::TooShort(duration));
        }
        let grace = (secs / 3).max(1);
        let manager = LeaseManagerBuilder::new(client, name.as_str())
            .with_namespace(namespace.as_str())
            .with_identity(identity.as_str())
            .with_duration(secs)
            .with_grace(grace)
            .with_field_manager(crate::names::FIELD_MANAGER)
            .build()
            .await
            .map_err(|source| Error::Lease { namespace: namespace.clone(), name: name.clone(), source })?;
        let (receiver, handle) = manager.watch().await;
        let task = tokio::spawn(async move {
            match handle.await {
                Ok(Ok(_)) => tracing::info!("leader election stopped; Lease released"),
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election ended with an error"),
                Err(e) => tracing::warn!(error = %e, "leader election task failed"),
            }
        });
        Ok(Leadership { receiver, task: Some(task), _always: None })
    }

    /// True while this instance may act.
    pub fn is_leader(&self) -> bool {
        *self.receiver.borrow()
    }

    /// A handle that answers [`Leadership::is_leader`] at any moment, for checks between writes.
    pub fn current(&self) -> watch::Receiver<bool> {
        self.receiver.clone()
    }

    /// Resolves when leadership changes (or never, when it cannot change).
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Gives the Lease up (on shutdown) and waits briefly for the release to be written.
    pub async fn resign(self, within: Duration) {
        let Leadership { receiver, task, _always } = self;
        drop(receiver);
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}
