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

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};

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

    /// Campaigns for the Lease `namespace/name` as `identity`.
    pub async fn elect(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Result<Leadership, Error> {
        let secs = duration.as_secs();
        if secs < 2 {
            return Err(Error::TooShort(duration));
        }
        let grace = (secs / 3).max(1);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(secs)
            .with_grace(grace)
            .with_field_manager(crate::names::FIELD_MANAGER)
            .build()
            .await
            .map_err(|source| Error::Lease { namespace: namespace.into(), name: name.into(), source })?;
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
