//! Leader election: one active pulsecheck at a time.
//!
//! Two replicas acting at once would race each other's taints and double the Events, and a
//! leader that only believes it leads is the worst of both: it writes Nodes while another
//! instance does. A `coordination.k8s.io` Lease makes exactly one instance the actor; the others
//! keep watching and evaluating (so their metrics are warm and a failover is quick) but write
//! nothing. Without `--leader-elect` the instance is always the leader.
//!
//! The rules, client-go's (`leaderelection.LeaderElector`), because they are what makes "never
//! two leaders" hold on a half-open connection:
//! * every read and write of the Lease carries a timeout, and every write the resourceVersion of
//!   the read it was computed from, so two instances can never both succeed;
//! * a leader leads only until its last confirmed renewal plus the *renew deadline* (two thirds
//!   of `--leader-election-lease-duration`), by its own clock, checked before every Node write —
//!   a renewal hanging on a dead connection cannot keep it leading;
//! * a follower takes the Lease over only after it has watched it go unrenewed for the Lease's
//!   whole duration, by its own clock: the last third of the duration is the margin between the
//!   old leader stopping and the new one starting, and clocks of different machines are never
//!   compared;
//! * each instance has an identity of its own (`--identity`, else the pod or host name with a
//!   random suffix), and on shutdown the leader gives the Lease up, so a rolling update hands
//!   over at once instead of a Lease duration later.
//!
//! kube-lease-manager was dropped for this: it keeps reporting "leading" while its renewals
//! fail or hang, and has no renew deadline.
//!
//! RBAC: `leases` get, create and update in the leader Lease's namespace.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use clap::{ArgAction, Args};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec as Spec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

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

/// The namespace pulsecheck runs in: `$POD_NAMESPACE`, then the ServiceAccount's namespace file,
/// else "pulsecheck" (the install's). The leader Lease defaults to it, and the node agents' Leases
/// live in it (the chart and the manifests install both there).
pub fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pulsecheck".into())
}

impl LeaderSettings {
    /// The settings `args` ask for; the identity defaults to `$POD_NAME`, then the host name,
    /// the namespace to `$POD_NAMESPACE`, then the ServiceAccount's namespace file.
    pub fn from_args(args: &LeaderArgs) -> LeaderSettings {
        // Unique per instance unless given: two processes on one host (or a pod restarted under
        // the same name) must not both believe they hold the Lease.
        let identity = args.identity.clone().unwrap_or_else(|| {
            let base = std::env::var("POD_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
                .unwrap_or_else(|| "pulsecheck".into());
            format!("{base}_{:08x}", rand::random::<u32>())
        });
        let namespace = args.leader_election_namespace.clone().unwrap_or_else(own_namespace);
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
    /// The lease could not be read.
    #[error("leader election Lease {namespace}/{name}: {source}")]
    Lease { namespace: String, name: String, source: kube::Error },
    /// The lease could not be read in time.
    #[error("leader election Lease {namespace}/{name}: no answer within {waited:?}")]
    Timeout { namespace: String, name: String, waited: Duration },
    /// The lease duration is too short to renew in time.
    #[error("--leader-election-lease-duration must be at least 2s, got {0:?}")]
    TooShort(Duration),
}

/// How long a leader may go without a confirmed renewal before it stops acting: two thirds of
/// the Lease duration (client-go's 10 s of 15 s). The remaining third is the margin by which a
/// leader that cannot renew stops before anyone else may take the Lease over.
fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

/// How often the Lease is renewed or, by a follower, looked at (client-go's 2 s of 15 s).
fn retry_period(duration: Duration) -> Duration {
    (duration / 7).max(Duration::from_millis(200))
}

/// Leadership as the controller sees it: [`Leadership::is_leader`] right now, `changed()` to wait.
pub struct Leadership {
    check: LeaderCheck,
    changed: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

/// Answers "may I write now?" at any moment, by the clock: the instance leads only until its
/// last confirmed renewal plus the renew deadline, whatever its election task is doing (a renewal
/// hanging on a half-open connection cannot keep it leading).
#[derive(Debug, Clone)]
pub struct LeaderCheck(Arc<Mutex<Option<Instant>>>);

impl LeaderCheck {
    fn always() -> LeaderCheck {
        LeaderCheck(Arc::new(Mutex::new(None)))
    }

    /// True while this instance may act.
    pub fn is_leader(&self) -> bool {
        match *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some(until) => Instant::now() < until,
            // Without leader election there is no deadline.
            None => true,
        }
    }

    /// How long this instance may still act: `None` without leader election (no deadline),
    /// zero once leadership has ended. A write is bounded by it, so a request cannot outlast
    /// the leadership it was sent under by more than the takeover margin.
    pub fn remaining(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// A check that leads until `until` and never renews (for tests of what depends on it).
    pub fn leading_until(until: Instant) -> LeaderCheck {
        LeaderCheck(Arc::new(Mutex::new(Some(until))))
    }

    fn lead_until(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    fn lead_until_now(&self) {
        self.lead_until(Instant::now());
    }
}

impl Leadership {
    /// Always the leader (`--leader-elect=false`).
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        // The sender lives in a task that never ends, so `changed()` never fires.
        let task = tokio::spawn(async move {
            std::future::pending::<()>().await;
            drop(tx);
        });
        Leadership { check: LeaderCheck::always(), changed: rx, task: Some(task), stop: CancellationToken::new() }
    }

    /// Campaigns for the leader Lease, or is always the leader when election is off.
    pub async fn start(client: kube::Client, settings: &LeaderSettings) -> Result<Leadership, Error> {
        if !settings.enabled {
            return Ok(Leadership::always());
        }
        if settings.duration < Duration::from_secs(2) {
            return Err(Error::TooShort(settings.duration));
        }
        let check = LeaderCheck(Arc::new(Mutex::new(Some(Instant::now()))));
        let (tx, rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let elector = Elector {
            leases: Api::namespaced(client, &settings.namespace),
            name: settings.name.clone(),
            identity: settings.identity.clone(),
            duration: settings.duration,
            check: check.clone(),
            holder: HolderWatch::default(),
            renewed: None,
        };
        // Fail early on a Lease that cannot be read at all (RBAC, a missing namespace).
        match tokio::time::timeout(renew_deadline(settings.duration), elector.leases.get_opt(&settings.name)).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => return Err(Error::Lease { namespace: settings.namespace.clone(), name: settings.name.clone(), source }),
            Err(_) => {
                return Err(Error::Timeout { namespace: settings.namespace.clone(), name: settings.name.clone(), waited: renew_deadline(settings.duration) });
            }
        }
        let task = tokio::spawn(elector.run(tx, stop.clone()));
        Ok(Leadership { check, changed: rx, task: Some(task), stop })
    }

    /// True while this instance may act.
    pub fn is_leader(&self) -> bool {
        self.check.is_leader()
    }

    /// A handle that answers [`Leadership::is_leader`] at any moment, for checks between writes.
    pub fn current(&self) -> LeaderCheck {
        self.check.clone()
    }

    /// Resolves when leadership changes (or never, when it cannot change).
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops campaigning and, if this instance holds the Lease, gives it up so another instance
    /// takes over at once instead of a Lease duration later (a rolling update). Waits at most
    /// `within`.
    pub async fn resign(self, within: Duration) {
        let Leadership { stop, task, .. } = self;
        stop.cancel();
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}

/// The election loop of one instance (client-go's LeaderElector, on `coordination.k8s.io`
/// Leases): acquire or renew every retry period with the resourceVersion of a fresh read — or,
/// while this instance holds the Lease, of what its own last write returned — so two
/// instances can never both succeed; a follower takes over only a Lease it has watched go
/// unrenewed for its whole duration by its own clock (clocks of different machines are never
/// compared).
struct Elector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    check: LeaderCheck,
    holder: HolderWatch,
    /// The Lease as this instance's last successful write returned it, while it holds it: the
    /// base of the next renewal, so a leader's renewal is one request (an update carrying that
    /// resourceVersion), not a read and a write. Dropped on any failure: a conflict (someone
    /// else wrote the Lease) falls back to a fresh read in the same round.
    renewed: Option<Lease>,
}

/// Who holds a leader Lease, as far as one observer can tell without comparing clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the Lease has no holder (released, or never held).
    Nobody,
    /// `identity` holds it: it renewed within the Lease's duration, as this observer has seen.
    Held(String),
    /// `identity` is named, but this observer has watched the Lease go unrenewed for its whole
    /// duration, by its own clock: that instance no longer acts (its renew deadline is shorter).
    Lapsed(String),
}

/// Watches one Lease's holder and renew time across reads, so that "unrenewed for its whole
/// duration" is measured by the observer's own clock from the first read that showed the
/// current record — never by comparing the holder's `renewTime` with this machine's clock.
#[derive(Debug, Default)]
pub struct HolderWatch {
    /// The holder and renew time last seen, and when (this observer's clock) they were first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl HolderWatch {
    /// Takes in a read of the Lease's spec that came back at `now`.
    pub fn observe(&mut self, spec: &Spec, now: Instant) -> Holder {
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        if self.observed.as_ref().is_none_or(|(h, r, _)| (h, r) != (&record.0, &record.1)) {
            self.observed = Some((record.0, record.1, now));
        }
        let Some(holder) = holder else { return Holder::Nobody };
        let seen_since = self.observed.as_ref().map_or(now, |(_, _, at)| *at);
        if now.saturating_duration_since(seen_since) < lease_duration(spec) { Holder::Held(holder) } else { Holder::Lapsed(holder) }
    }
}

/// A Lease's `leaseDurationSeconds` (zero when missing or negative).
pub fn lease_duration(spec: &Spec) -> Duration {
    Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0))
}

impl Elector {
    async fn run(mut self, leading: watch::Sender<bool>, stop: CancellationToken) {
        let mut was = false;
        loop {
            let attempt_started = Instant::now();
            let deadline = attempt_started + renew_deadline(self.duration);
            let outcome = tokio::select! {
                _ = stop.cancelled() => break,
                r = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()) => r,
            };
            match outcome {
                Ok(Ok(true)) => self.check.lead_until(attempt_started + renew_deadline(self.duration)),
                Ok(Ok(false)) => self.check.lead_until_now(),
                Ok(Err(e)) => tracing::warn!(lease = %self.name, error = %e, "leader election: cannot read or write the Lease"),
                Err(_) => tracing::warn!(lease = %self.name, "leader election: the Lease request did not finish within the renew deadline"),
            }
            let now = self.check.is_leader();
            if now != was {
                if now {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became the leader");
                } else {
                    tracing::warn!(identity = %self.identity, lease = %self.name, "no longer the leader: stopped acting");
                }
                was = now;
                leading.send_replace(now);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(retry_period(self.duration).min(self.until_deadline_or_retry())) => {}
            }
        }
        self.release().await;
        self.check.lead_until_now();
        leading.send_replace(false);
    }

    /// Wakes at the renew deadline at the latest, so a lost leadership is announced in time.
    fn until_deadline_or_retry(&self) -> Duration {
        let until = *self.check.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A follower (deadline already past) waits the retry period, not a busy 50 ms.
        until
            .filter(|u| *u > Instant::now())
            .map_or(retry_period(self.duration), |u| u.saturating_duration_since(Instant::now()).max(Duration::from_millis(50)))
    }

    fn params() -> PostParams {
        PostParams { field_manager: Some(crate::names::FIELD_MANAGER.into()), ..Default::default() }
    }

    /// One round: `Ok(true)` when this instance holds the Lease after it.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        if let Some(mut lease) = self.renewed.take() {
            let wall = Timestamp::now();
            let spec = lease.spec.clone().unwrap_or_default();
            lease.spec =
                Some(Spec { acquire_time: spec.acquire_time.clone().or(Some(MicroTime(wall))), ..self.spec(wall, spec.lease_transitions.unwrap_or(0)) });
            match self.leases.replace(&self.name, &Self::params(), &lease).await {
                Ok(written) => {
                    self.renewed = Some(written);
                    return Ok(true);
                }
                // Changed (or deleted) by someone else since our write: judge a fresh read.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let wall = Timestamp::now();
        let read = self.leases.get_opt(&self.name).await?;
        // When the record was seen is when the read came back, not when it was asked for: a read
        // that hangs for seconds must not count as seconds of watching the holder not renew.
        let now = Instant::now();
        let Some(mut lease) = read else {
            let lease = Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() }, spec: Some(self.spec(wall, 0)) };
            return match self.leases.create(&Self::params(), &lease).await {
                Ok(written) => {
                    self.renewed = Some(written);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        match self.holder.observe(&spec, now) {
            Holder::Held(other) if !ours => {
                tracing::trace!(holder = %other, "the Lease is held");
                return Ok(false);
            }
            Holder::Lapsed(other) if !ours => tracing::info!(holder = %other, "the Lease was not renewed for its whole duration; taking it over"),
            _ => {}
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time.clone() } else { None };
        lease.spec = Some(Spec { acquire_time: acquired.or(Some(MicroTime(wall))), ..self.spec(wall, transitions) });
        // The resourceVersion of the read travels with the write: if anyone changed the Lease
        // meanwhile, this write fails with 409 and nobody holds it twice.
        match self.leases.replace(&self.name, &Self::params(), &lease).await {
            Ok(written) => {
                self.renewed = Some(written);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32) -> Spec {
        Spec {
            holder_identity: Some(self.identity.clone()),
            // Rounded up: a Lease that says less than this instance's duration would shrink the
            // margin between its renew deadline and another's takeover.
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0)).unwrap_or(i32::MAX)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Spec::default()
        }
    }

    /// Gives the Lease up if this instance holds it: no holder, so the next instance acquires at
    /// once. Bounded by the renew deadline; a failure only costs the others a Lease duration.
    async fn release(&self) {
        let release = async {
            let Some(mut lease) = self.leases.get_opt(&self.name).await? else { return Ok(()) };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            // The duration stays: followers take a Lease without a holder at once, and
            // `pulsecheck cleanup` waits that long for none of them to.
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            lease.spec = Some(spec);
            self.leases.replace(&self.name, &Self::params(), &lease).await.map(|_| ())
        };
        match tokio::time::timeout(renew_deadline(self.duration), release).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "leader Lease released"),
            Ok(Err(e)) => tracing::warn!(lease = %self.name, error = %e, "could not release the leader Lease; the next leader waits for it to expire"),
            Err(_) => tracing::warn!(lease = %self.name, "releasing the leader Lease timed out; the next leader waits for it to expire"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>, renewed_at: i64, duration: i32) -> Spec {
        Spec {
            holder_identity: holder.map(Into::into),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).unwrap())),
            lease_duration_seconds: Some(duration),
            ..Spec::default()
        }
    }

    #[test]
    fn a_holder_lapses_only_after_this_observer_has_watched_it_unrenewed_for_the_whole_duration() {
        let start = Instant::now();
        let mut watch = HolderWatch::default();
        // The renewTime is years in the past by this machine's clock: skew, never compared.
        let lease = held_by(Some("a"), 1_000, 15);
        assert_eq!(watch.observe(&lease, start), Holder::Held("a".into()));
        assert_eq!(watch.observe(&lease, start + Duration::from_secs(14)), Holder::Held("a".into()));
        // A renewal (a new renewTime) starts the watch again.
        let renewed = held_by(Some("a"), 1_010, 15);
        assert_eq!(watch.observe(&renewed, start + Duration::from_secs(14)), Holder::Held("a".into()));
        assert_eq!(watch.observe(&renewed, start + Duration::from_secs(28)), Holder::Held("a".into()));
        assert_eq!(watch.observe(&renewed, start + Duration::from_secs(29)), Holder::Lapsed("a".into()));
        // Released: no holder, or an empty one.
        assert_eq!(watch.observe(&held_by(None, 1_020, 1), start + Duration::from_secs(30)), Holder::Nobody);
        assert_eq!(watch.observe(&held_by(Some(""), 1_020, 1), start + Duration::from_secs(30)), Holder::Nobody);
    }
}
