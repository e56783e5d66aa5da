//! The network loop: renews the agent's own Lease and carries the disk loop's findings in it.
//!
//! Every `--renew-interval` it reads (once, then after a conflict) and replaces the Lease
//! `pulsecheck-agent-<node>` in the agent's namespace ([`pulsecheck::agent`] is the format):
//! holder the agent's Pod, `renewTime` now, the annotation
//! [`REPORT_ANNOTATION`](pulsecheck::agent::REPORT_ANNOTATION) the disk's health at that moment
//! (with `forSeconds` recomputed), and an ownerReference to the agent's Pod, so deleting the
//! Pod garbage-collects its Lease. Writes carry the resourceVersion of the read they were
//! computed from: a 409 means someone else wrote, so the Lease is read again and the renewal
//! decided again at once; a 404 means it is gone, so it is created.
//!
//! One agent speaks for a node at a time. Two agents of one node can run side by side: a
//! rollout with a surge, a force-deleted Pod whose process lives on, an old agent that stays
//! through its grace period because its disk is in trouble ([`Stop`]) while a new one starts, a
//! second install. The Lease is a lock between them ([`claim`]): an agent writes it only while
//! it is its own Pod's or nobody's, or once its holder has said it is terminating or has not
//! renewed it for its lease duration, as this agent watched (its own monotonic clock: no node's
//! wall clock enters). Until then it stands by and reads the Lease every second (so that it
//! takes over within a second of the holder's last word), for at most one lease duration. An
//! agent that does not hold the Lease never writes it, not even its last "terminating" word.
//!
//! What this loop must never do: touch the disk. It runs on tokio, reads the disk loop's
//! findings from memory ([`DiskStatus`]), logs through the lossy writer (`log.rs`), and its
//! program text lives in memory (`pin.rs`); the in-cluster token it re-reads is on the
//! kubelet's tmpfs, and is looked up from there, not through the container's root filesystem
//! ([`client`]). Every API call is bounded by `--request-timeout`, and it uses only the verbs
//! the agent's Role grants: `leases` get, create and update in its namespace (and delete, never
//! used, which OwnerReferencesPermissionEnforcement asks of a write that changes the owner).

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use pulsecheck::{
    agent::{COMPONENT, COMPONENT_LABEL, DiskHealth, REPORT_ANNOTATION, Report},
    parse::{Contradiction, below, positive_duration},
};
use tokio::time::MissedTickBehavior;

use crate::disk::DiskStatus;

/// Field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "pulsecheck-agent";

/// The label every pulsecheck object carries.
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// Who the agent is and how it keeps its Lease.
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// The node this agent runs on (from the Pod's spec.nodeName).
    #[arg(long, env = "NODE_NAME", value_name = "NODE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub node_name: String,
    /// The namespace of the agent's Lease: pulsecheck's (from the Pod's metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub namespace: String,
    /// The agent's Pod: the Lease's holder and owner (from metadata.name).
    #[arg(long, env = "POD_NAME", value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub pod_name: String,
    /// The agent's Pod's UID, for the Lease's ownerReference (from metadata.uid).
    #[arg(long, env = "POD_UID", value_name = "UID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub pod_uid: String,
    /// How often the Lease is renewed.
    #[arg(long, env = "PULSECHECK_AGENT_RENEW_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub renew_interval: Duration,
    /// The Lease's spec.leaseDurationSeconds: how long a renewal vouches for the agent (rounded up to whole seconds); must be longer than --renew-interval.
    #[arg(long, env = "PULSECHECK_AGENT_LEASE_DURATION", value_name = "DURATION", default_value = "40s", value_parser = positive_duration)]
    pub lease_duration: Duration,
    /// Timeout of every request to the apiserver (and of the last renewal on SIGTERM).
    #[arg(long, env = "PULSECHECK_AGENT_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub request_timeout: Duration,
}

/// Errors of the network loop and its settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node's name does not fit in a Lease name.
    #[error("--node-name '{node}' is too long for the agent's Lease name ({len} characters, at most 236)")]
    NodeNameTooLong { node: String, len: usize },
    /// Two duration flags contradict each other.
    #[error(transparent)]
    Durations(#[from] Contradiction),
    /// The lease duration does not fit in the Lease.
    #[error("--lease-duration {0:?} is too long for spec.leaseDurationSeconds")]
    LeaseDurationTooLong(Duration),
    /// No cluster configuration (not in a Pod, no kubeconfig).
    #[error("no cluster configuration: not in a Pod, and no kubeconfig ($KUBECONFIG or ~/.kube/config): {0}")]
    Config(kube::config::InferConfigError),
    /// The token file's directory cannot be made the working directory.
    #[error("cannot change to the directory of the token file, {}: {source}", .dir.display())]
    TokenDir { dir: PathBuf, source: std::io::Error },
    /// The client cannot be built.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(Box<kube::Error>),
    /// The apiserver refused or failed a request.
    #[error("{action} Lease {namespace}/{name}: {source}")]
    Api { action: &'static str, namespace: String, name: String, source: Box<kube::Error> },
    /// The apiserver did not answer in time.
    #[error("{action} Lease {namespace}/{name}: no answer within {waited:?}")]
    Timeout { action: &'static str, namespace: String, name: String, waited: Duration },
    /// Someone else changed the Lease since it was read; it is read again next time.
    #[error("Lease {namespace}/{name} changed since it was read")]
    Conflict { namespace: String, name: String },
}

impl Error {
    /// The apiserver's answer, if it refused a request.
    fn status(&self) -> Option<&kube::core::Status> {
        match self {
            Error::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => Some(status),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The Lease settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease's name, `pulsecheck-agent-<node>`.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The node.
    pub node: String,
    /// The holder and owner Pod's name.
    pub pod_name: String,
    /// The owner Pod's UID.
    pub pod_uid: String,
    /// How often it is renewed.
    pub renew_interval: Duration,
    /// spec.leaseDurationSeconds.
    pub duration_seconds: i32,
    /// Timeout of every request.
    pub request_timeout: Duration,
}

impl LeaseSettings {
    /// The settings `args` ask for, or what is wrong with them (naming the flags).
    pub fn from_args(args: &LeaseArgs) -> Result<LeaseSettings> {
        let name =
            pulsecheck::agent::lease_name(&args.node_name).ok_or_else(|| Error::NodeNameTooLong { node: args.node_name.clone(), len: args.node_name.len() })?;
        below(("--renew-interval", args.renew_interval), ("--lease-duration", args.lease_duration))?;
        let d = args.lease_duration;
        // Rounded up: a Lease that says less than the agent means would expire between renewals.
        let duration_seconds = i32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).map_err(|_| Error::LeaseDurationTooLong(d))?;
        Ok(LeaseSettings {
            name,
            namespace: args.namespace.clone(),
            node: args.node_name.clone(),
            pod_name: args.pod_name.clone(),
            pod_uid: args.pod_uid.clone(),
            renew_interval: args.renew_interval,
            duration_seconds,
            request_timeout: args.request_timeout,
        })
    }
}

/// The client, inferred as `kube::Client::try_default` does (`$KUBECONFIG` or `~/.kube/config`
/// if there is one, else the in-cluster config of a Pod), with every connection, write and read
/// bounded by `request_timeout`, and its token file read without a path through the disk
/// ([`token_file_off_the_disk`]).
pub async fn client(request_timeout: Duration) -> Result<kube::Client> {
    let mut config = kube::Config::infer().await.map_err(Error::Config)?;
    token_file_off_the_disk(&mut config)?;
    pulsecheck::connect::apply_timeouts(&mut config, request_timeout);
    // The agent never watches: a read may be bounded too.
    config.read_timeout = Some(request_timeout);
    kube::Client::try_from(config).map_err(|e| Error::Client(Box::new(e)))
}

/// Makes the client re-read its token and CA files (kube reads each again about once a minute,
/// on the request path: on the network loop) by paths that never cross the node's disk.
///
/// In a Pod they are `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}`, on a tmpfs
/// the kubelet mounts, but an absolute path is looked up from `/`: through the container's root
/// filesystem, which containerd keeps on the node's disk. On a hung disk that lookup can block —
/// it did on the lab's real nodes, a minute into a hang — and with it every renewal. So the agent
/// makes the token's directory its working directory once, at start, and gives kube the files'
/// names only: a relative path is looked up from the working directory, inside the tmpfs (the
/// kubelet's `token -> ..data/token` links are relative too), and a rotated token or CA is still
/// read. Nothing else in the agent uses a relative path. A CA file elsewhere, a token written in
/// the kubeconfig, or none, are left as they are.
fn token_file_off_the_disk(config: &mut kube::Config) -> Result<()> {
    let Some(path) = config.auth_info.token_file.clone() else { return Ok(()) };
    let path = PathBuf::from(path);
    let (Some(dir), Some(name)) = (path.parent().filter(|d| !d.as_os_str().is_empty()), path.file_name()) else { return Ok(()) };
    std::env::set_current_dir(dir).map_err(|source| Error::TokenDir { dir: dir.to_owned(), source })?;
    config.auth_info.token_file = Some(name.to_string_lossy().into_owned());
    if let Some(ca) = config.root_cert_file.take() {
        config.root_cert_file = Some(match (ca.parent(), ca.file_name()) {
            (Some(ca_dir), Some(ca_name)) if ca_dir == dir => PathBuf::from(ca_name),
            _ => ca,
        });
    }
    tracing::debug!(dir = %dir.display(), ca = ?config.root_cert_file, "token and CA read from the working directory");
    Ok(())
}

/// The Lease `settings` describe, renewed now with `report`, built on `existing` (the latest
/// read or write of it): its resourceVersion (the write's precondition), others' labels and
/// annotations are kept; holder, owner and spec are the agent's. A Lease held by another Pod is
/// taken over: `acquireTime` now, one more `leaseTransitions`. `outlive_pod`: the Lease has no
/// owner, so that it is not collected with the agent's Pod ([`Renewer::outlive_pod`]).
pub fn desired(settings: &LeaseSettings, existing: Option<&Lease>, report: &Report, now: Timestamp, outlive_pod: bool) -> Lease {
    let mut meta = existing.map(|l| l.metadata.clone()).unwrap_or_default();
    meta.name = Some(settings.name.clone());
    meta.namespace = Some(settings.namespace.clone());
    meta.labels.get_or_insert_default().extend(labels());
    meta.annotations.get_or_insert_default().insert(REPORT_ANNOTATION.into(), report.to_annotation());
    // Only the agent's Pod owns the Lease: an older Pod's reference would keep it from being
    // collected with this one. Outliving the Pod, nobody does.
    meta.owner_references = Some(if outlive_pod {
        Vec::new()
    } else {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: settings.pod_name.clone(),
            uid: settings.pod_uid.clone(),
            ..Default::default()
        }]
    });
    // The server keeps its field-ownership records when a write omits them.
    meta.managed_fields = None;
    let spec = existing.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = existing.is_some() && spec.holder_identity.as_deref() == Some(settings.pod_name.as_str());
    let transitions = match existing {
        None => 0,
        Some(_) => spec.lease_transitions.unwrap_or(0).saturating_add(i32::from(!ours)),
    };
    let acquired = if ours { spec.acquire_time.clone() } else { None };
    Lease {
        metadata: meta,
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.pod_name.clone()),
            lease_duration_seconds: Some(settings.duration_seconds),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

/// Whose the Lease is, as this agent reads it: whether it may write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This agent's Pod holds it (a restarted container of that Pod included).
    Ours,
    /// Nobody holds it (no holder, or an empty one): this agent may take it, but not to say it
    /// is terminating (a last word on a Lease it never held would speak for nobody).
    Free,
    /// Another Pod holds it but is going away: it said it is terminating, or its renewals
    /// stopped for its lease duration while this agent watched. It may be taken over.
    Vacated { holder: String, why: &'static str },
    /// Another agent Pod of this node holds it and renews it: stand by.
    Held { holder: String },
}

/// What a standing-by agent saw of the holder's renewals: the holder, its `renewTime`, and
/// when (by this agent's monotonic clock) it first saw that pair unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    holder: String,
    renew_time: Option<Timestamp>,
    since: Instant,
}

impl Watched {
    /// What has been watched, updated with `lease` seen at `now`: the same holder and renewal
    /// keep their first sight; any change starts the watch over.
    pub fn update(previous: Option<Watched>, lease: &Lease, now: Instant) -> Watched {
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.clone()).unwrap_or_default();
        let renew_time = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
        match previous {
            Some(w) if w.holder == holder && w.renew_time == renew_time => w,
            _ => Watched { holder, renew_time, since: now },
        }
    }
}

/// Whose `lease` is for the agent of `settings`, which has watched it as `watched` until `now`.
/// The holder's own `leaseDurationSeconds` (else this agent's) is how long its renewals may
/// stop before the Lease counts as vacated; a report that cannot be read is not "terminating".
pub fn claim(settings: &LeaseSettings, lease: &Lease, watched: Option<&Watched>, now: Instant) -> Claim {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.as_deref()).filter(|h| !h.is_empty());
    let Some(holder) = holder else { return Claim::Free };
    if holder == settings.pod_name {
        return Claim::Ours;
    }
    let terminating =
        lease.metadata.annotations.as_ref().and_then(|a| a.get(REPORT_ANNOTATION)).and_then(|v| Report::from_annotation(v).ok()).is_some_and(|r| r.terminating);
    if terminating {
        return Claim::Vacated { holder: holder.into(), why: "it said it is terminating" };
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|d| u64::try_from(d).ok())
        .filter(|d| *d > 0)
        .map_or(Duration::from_secs(u64::try_from(settings.duration_seconds).unwrap_or(u64::MAX)), Duration::from_secs);
    let renew_time = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let unchanged_for = watched.filter(|w| w.holder == holder && w.renew_time == renew_time).map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since));
    if unchanged_for >= duration {
        return Claim::Vacated { holder: holder.into(), why: "it has not renewed it for its lease duration" };
    }
    Claim::Held { holder: holder.into() }
}

/// What a [`Renewer::renew`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The Lease was written (renewed or taken over; `created`: it did not exist).
    Renewed { created: bool },
    /// Not written: another Pod holds it (`holder`), or — for the last, terminating renewal,
    /// which never takes a Lease — nobody does or it is gone (`None`).
    StandingBy { holder: Option<String> },
}

/// Keeps the agent's Lease: one [`Renewer::renew`] per tick.
pub struct Renewer {
    leases: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease as the latest read or write returned it; `None` until read, after a conflict
    /// or a 404, and while standing by (read again every renewal).
    current: Option<Lease>,
    /// While standing by: the holder's renewals as watched.
    watched: Option<Watched>,
    /// Write the Lease without the Pod's ownerReference, so that the garbage collector leaves it
    /// when the Pod goes: set while the agent stays, asked to stop, because its disk is in
    /// trouble pulsecheck condemns on ([`Stop::Stay`]). Killed at the end of its grace period,
    /// its Pod deleted, the agent is then *silent* to pulsecheck (its report's node never
    /// released on unconfirmed health), not *absent* (no evidence, the node released on the
    /// kubelet's evidence alone) — and the replacement that cannot start on the failing disk
    /// leaves it so. A new agent that does start takes it over and owns it again.
    pub outlive_pod: bool,
}

impl Renewer {
    /// A renewer of `settings`' Lease through `client`.
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Renewer {
        Renewer { leases: Api::namespaced(client, &settings.namespace), settings, current: None, watched: None, outlive_pod: false }
    }

    fn params() -> PostParams {
        PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
    }

    async fn bounded<T>(&self, action: &'static str, call: impl Future<Output = kube::Result<T>>) -> Result<T> {
        let (namespace, name) = (self.settings.namespace.clone(), self.settings.name.clone());
        match tokio::time::timeout(self.settings.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.is_conflict() => Err(Error::Conflict { namespace, name }),
            Ok(Err(source)) => Err(Error::Api { action, namespace, name, source: Box::new(source) }),
            Err(_) => Err(Error::Timeout { action, namespace, name, waited: self.settings.request_timeout }),
        }
    }

    /// Renews the Lease with `report` if it is this agent's to write ([`claim`]): reads it if it
    /// is not known, creates it if it does not exist, else replaces it with the resourceVersion
    /// of what was read. A conflict (someone else wrote) reads it again and decides once more at
    /// once. A `terminating` report is written only to a Lease this agent holds. Each call is
    /// bounded by the request timeout.
    pub async fn renew(&mut self, report: &Report) -> Result<Renewal> {
        // Reads after a conflict or a 404: a Lease that keeps changing is left to the next tick.
        let mut again = 0;
        loop {
            if self.current.is_none() {
                self.current = self.bounded("read", self.leases.get_opt(&self.settings.name)).await?;
            }
            // After the read: nothing there, so this write creates it.
            let created = self.current.is_none();
            let written = match self.current.take() {
                None if report.terminating => return Ok(Renewal::StandingBy { holder: None }),
                None => self.create(report).await,
                Some(read) => {
                    let now = Instant::now();
                    match claim(&self.settings, &read, self.watched.as_ref(), now) {
                        Claim::Ours => {}
                        Claim::Free if report.terminating => return Ok(Renewal::StandingBy { holder: None }),
                        Claim::Free => {}
                        Claim::Vacated { holder, .. } if report.terminating => return Ok(Renewal::StandingBy { holder: Some(holder) }),
                        Claim::Vacated { holder, why } => tracing::info!(lease = %self.settings.name, %holder, why, "taking the Lease over"),
                        Claim::Held { holder } => {
                            self.watched = Some(Watched::update(self.watched.take(), &read, now));
                            return Ok(Renewal::StandingBy { holder: Some(holder) });
                        }
                    }
                    let lease = desired(&self.settings, Some(&read), report, Timestamp::now(), self.outlive_pod);
                    match self.bounded("update", self.leases.replace(&self.settings.name, &Self::params(), &lease)).await {
                        Err(e) if e.status().is_some_and(|s| s.is_not_found()) => {
                            tracing::info!(lease = %self.settings.name, "the Lease is gone; creating it again");
                            Err(e)
                        }
                        other => other,
                    }
                }
            };
            match written {
                Ok(lease) => {
                    self.current = Some(lease);
                    self.watched = None;
                    return Ok(Renewal::Renewed { created });
                }
                Err(e) => {
                    let read_again = matches!(e, Error::Conflict { .. }) || e.status().is_some_and(|s| s.is_not_found());
                    again += 1;
                    if !read_again || again > 2 {
                        return Err(e);
                    }
                    // Another agent of the node taking over or creating it, someone changing
                    // its metadata, or a delete: read it and decide again.
                    tracing::info!(%e, "reading it again");
                }
            }
        }
    }

    async fn create(&self, report: &Report) -> Result<Lease> {
        let lease = desired(&self.settings, None, report, Timestamp::now(), self.outlive_pod);
        match self.bounded("create", self.leases.create(&Self::params(), &lease)).await {
            Ok(written) => {
                tracing::info!(lease = %self.settings.name, namespace = %self.settings.namespace, "agent Lease created");
                Ok(written)
            }
            // Created meanwhile by someone else: read it and decide again.
            Err(e) if e.status().is_some_and(|s| s.is_already_exists()) => {
                Err(Error::Conflict { namespace: self.settings.namespace.clone(), name: self.settings.name.clone() })
            }
            Err(e) => Err(e),
        }
    }
}

/// A short name for the kind of health, to log changes only: the state, the path and operation,
/// and for a failure the OS's error number (`(os error 5)`) or, without one, the error's text
/// up to its first digit (so "returned after 11s" and "after 12s" are one kind).
fn kind(health: &DiskHealth) -> (&'static str, Option<(&str, &str, &str)>) {
    match health {
        DiskHealth::Starting => ("starting", None),
        DiskHealth::Ok => ("ok", None),
        DiskHealth::Hung { path, operation, .. } => ("hung", Some((path, operation, ""))),
        DiskHealth::Failing { path, operation, error, .. } => {
            let class = error.rfind("(os error ").map_or_else(|| error.split(|c: char| c.is_ascii_digit()).next().unwrap_or(""), |at| &error[at..]);
            ("failing", Some((path, operation, class)))
        }
    }
}

/// Whether the disk's health `now` is news against what was last sent (another state, path,
/// operation or error; the seconds alone are not): the renewal [`run`] makes at once.
fn changed(sent: Option<&DiskHealth>, now: &DiskHealth) -> bool {
    sent.is_none_or(|s| kind(s) != kind(now))
}

/// How often the network loop looks whether the disk state changed (see [`run`]).
const STATE_CHANGE_LOOK: Duration = Duration::from_secs(1);

/// What a stop signal (SIGTERM, SIGINT) means, given how many came and the disk's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop now: one last renewal saying `terminating` (its silence from now on says nothing).
    Now,
    /// Stay and go on reporting: the disk is in trouble pulsecheck can condemn the node on
    /// ([`DiskHealth::condemning`]: hung, or failing with EIO or EROFS), and an agent that said
    /// `terminating` would take that evidence away with it (pulsecheck counts a terminating
    /// agent as no evidence) — a rollout or a deleted Pod would hide a dead disk. It stops
    /// once that trouble is over, at a second signal, or at the kubelet's SIGKILL when the
    /// Pod's grace period ends.
    Stay,
    /// A second signal while the disk is still in trouble: exit without a last word, leaving
    /// the Lease saying what the disk does, and owned by nobody ([`Renewer::outlive_pod`]): its
    /// renewals stop, and pulsecheck sees the agent silent (supporting only, the node's health
    /// unconfirmed), even once its Pod is gone. The same follows the kubelet's SIGKILL.
    Exit,
    /// Not yet known: a disk that hangs looks fine until an operation outlasts its deadline,
    /// and a rollout or a deleted Pod may come in those seconds. The agent says `terminating`
    /// only once a disk round started after the signal has finished (a disk interval and a
    /// deadline at most); it goes on renewing meanwhile.
    Confirm,
}

/// What `signals` stop signals so far mean while the disk is `health`; `confirmed`: a disk round
/// that started after the first signal has finished.
pub fn stop(signals: u32, health: &DiskHealth, confirmed: bool) -> Stop {
    match signals {
        0 => Stop::Stay,
        _ if health.condemning() && signals == 1 => Stop::Stay,
        _ if health.condemning() => Stop::Exit,
        1 if !confirmed => Stop::Confirm,
        _ => Stop::Now,
    }
}

/// Whether the agent's Lease must outlive its Pod ([`Renewer::outlive_pod`]): asked to stop
/// (`signals` of them) while its disk is in trouble pulsecheck condemns on, when it stays.
pub fn outlives_pod(signals: u32, health: &DiskHealth) -> bool {
    signals > 0 && health.condemning()
}

/// Whether a change on the signal channel ends the renewals, and how: `decide` says what the
/// signals mean ([`stop`]); a closed channel (the process is going away) stops now.
fn ends(changed: Result<(), tokio::sync::watch::error::RecvError>, decide: impl FnOnce() -> Stop) -> Option<Stop> {
    match changed.map_or(Stop::Now, |()| decide()) {
        Stop::Stay | Stop::Confirm => None,
        stop => Some(stop),
    }
}

/// Renews the Lease every renew interval, and at once when the disk state changes (the interval
/// then counted from that renewal), with the disk's health, until a stop signal on `signals`
/// (a count of SIGTERMs and SIGINTs). Then ([`stop`]): once a disk round started after the
/// signal has finished with the disk fine, once more with `terminating: true` if it holds the
/// Lease, bounded by the request timeout; with the disk hung or failing with EIO or EROFS, it
/// goes on renewing until that is over (then as above) or a second signal (then it exits as it
/// is). While another agent Pod of the node holds the Lease, each
/// tick only reads it ([`claim`]). Failures are logged and retried at the next tick.
pub async fn run(mut renewer: Renewer, disk: Arc<DiskStatus>, mut signals: tokio::sync::watch::Receiver<u32>) {
    let settings = renewer.settings.clone();
    let mut tick = tokio::time::interval(settings.renew_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The disk state is looked at every second (memory only); a change — a hang outlasting its
    // deadline, a first failure, the disk back — is renewed at once rather than at the next tick,
    // so pulsecheck holds a report at most a second behind the disk loop's state.
    let mut look = tokio::time::interval(STATE_CHANGE_LOOK);
    look.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut logged: Option<DiskHealth> = None;
    let mut sent: Option<DiskHealth> = None;
    let mut failing = false;
    // The other agent Pod of this node whose Lease this one waits for, if it stands by, and
    // since when it has stood by.
    let mut standing_by: Option<String> = None;
    let mut standing_by_since: Option<Instant> = None;
    let eager_standby = Duration::from_secs(u64::try_from(settings.duration_seconds).unwrap_or(0));
    // Whether a stop signal was put off because the disk is in trouble (logged once), and the
    // disk rounds started when the first signal came.
    let mut staying = false;
    let mut signalled_at_round: Option<u64> = None;
    // Whether the Lease as last written has no owner (what a retry of a failed write compares).
    let mut written_unowned = false;
    // What the signals mean now ([`stop`]); `Stay` (nothing to do) until one comes, and the disk
    // round to wait for is marked only once one has come.
    let mut decide = |signals: &mut tokio::sync::watch::Receiver<u32>| {
        let count = *signals.borrow_and_update();
        if count == 0 {
            return Stop::Stay;
        }
        let health = disk.health(std::time::Instant::now());
        let (started, finished) = disk.progress();
        let mark = *signalled_at_round.get_or_insert(started);
        let decision = stop(count, &health, finished > mark);
        if decision == Stop::Stay && !std::mem::replace(&mut staying, true) {
            tracing::warn!(
                disk = %health,
                "asked to stop while the disk is in trouble: staying, and reporting it, until the disk is fine again, a second signal, or the end of the Pod's grace period"
            );
        }
        decision
    };
    let decision = 'renewing: loop {
        tokio::select! {
            biased;
            changed = signals.changed() => match ends(changed, || decide(&mut signals)) {
                Some(stop) => break 'renewing stop,
                None => continue,
            },
            _ = tick.tick() => {}
            _ = look.tick() => {
                // Once asked to stop: whether the disk is confirmed fine, or the trouble over.
                match decide(&mut signals) {
                    Stop::Stay | Stop::Confirm => {}
                    Stop::Now => {
                        tracing::info!(disk = %disk.health(std::time::Instant::now()), "the disk answers: stopping");
                        break 'renewing Stop::Now;
                    }
                    Stop::Exit => break 'renewing Stop::Exit,
                }
                // Standing by, the Lease is read every second for a lease duration (a rollout's
                // old agent stops a few seconds after its successor starts: taken over at once,
                // before the garbage collector deletes the Lease with the old Pod), then once a
                // tick.
                let eager = standing_by_since.is_some_and(|since| since.elapsed() < eager_standby);
                // Staying through trouble: the Lease is let go of by its Pod at once.
                let outlive = outlives_pod(*signals.borrow(), &disk.health(std::time::Instant::now()));
                if !eager && !changed(sent.as_ref(), &disk.health(std::time::Instant::now())) && outlive == written_unowned {
                    continue;
                }
                // The renewal clock starts over at a change: while the trouble lasts, its reports
                // come one renew interval apart from its start (a hang seen at 10 s is renewed
                // at 20 s, 30 s, ...), so a report's seconds are never more than a second behind
                // the disk loop at the moments pulsecheck's --agent-disk-after is reached, and
                // pulsecheck never has to guess how long it lasted since.
                tick.reset();
            }
        }
        let health = disk.health(std::time::Instant::now());
        if logged.as_ref().is_none_or(|l| kind(l) != kind(&health)) {
            match &health {
                DiskHealth::Starting | DiskHealth::Ok => tracing::info!(disk = %health, "disk health"),
                DiskHealth::Hung { .. } | DiskHealth::Failing { .. } => tracing::warn!(disk = %health, "disk health"),
            }
            logged = Some(health.clone());
        }
        renewer.outlive_pod = outlives_pod(*signals.borrow(), &health);
        let report = Report { disk: health, terminating: false };
        // What was last tried, renewed or not: a failing apiserver gets the next try at the next
        // tick, not every second (thousands of agents retrying at once would be a storm).
        sent = Some(report.disk.clone());
        // A stop signal during a renewal is not kept waiting for it, unless the agent stays.
        let unowned = renewer.outlive_pod;
        let renewal = renewer.renew(&report);
        tokio::pin!(renewal);
        let result = loop {
            tokio::select! {
                biased;
                changed = signals.changed() => if let Some(stop) = ends(changed, || decide(&mut signals)) {
                    break 'renewing stop;
                },
                result = &mut renewal => break result,
            }
        };
        match result {
            Ok(Renewal::Renewed { created }) => {
                written_unowned = unowned;
                if created {
                    // pulsecheck counts an agent Lease as alive only once it saw it renewed:
                    // renew a new one again at the next look (a second), not a tick later.
                    sent = None;
                }
                if std::mem::take(&mut failing) {
                    tracing::info!(lease = %settings.name, "Lease renewed again");
                }
                if standing_by.take().is_some() {
                    tracing::info!(lease = %settings.name, "holding the Lease");
                }
                standing_by_since = None;
                tracing::debug!(lease = %settings.name, disk = %report.disk, "Lease renewed");
            }
            Ok(Renewal::StandingBy { holder }) => {
                failing = false;
                standing_by_since.get_or_insert_with(Instant::now);
                if standing_by != holder {
                    tracing::info!(
                        lease = %settings.name,
                        holder = %holder.as_deref().unwrap_or("nobody"),
                        "another agent Pod of this node holds the Lease: standing by until it terminates or stops renewing"
                    );
                    standing_by = holder;
                }
            }
            Err(error) => {
                failing = true;
                tracing::warn!(%error, "Lease not renewed");
            }
        }
    };
    if decision == Stop::Exit {
        let health = disk.health(std::time::Instant::now());
        // Two signals at once, or the second before the first unowned renewal: one renewal
        // still, so that the report outlives the Pod.
        if !written_unowned {
            renewer.outlive_pod = true;
            let report = Report { disk: health.clone(), terminating: false };
            match tokio::time::timeout(settings.request_timeout, renewer.renew(&report)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not leave the Lease to outlive the Pod"),
                Err(_) => tracing::warn!(waited = ?settings.request_timeout, "could not leave the Lease to outlive the Pod: timed out"),
            }
        }
        tracing::warn!(lease = %settings.name, disk = %health, "second signal with the disk still in trouble: exiting, the Lease left saying so");
        return;
    }
    tracing::info!(lease = %settings.name, "shutting down: last renewal, terminating");
    // Going away with the disk fine: the Lease goes with the Pod again.
    renewer.outlive_pod = false;
    let last = async {
        let report = Report { disk: disk.health(std::time::Instant::now()), terminating: true };
        loop {
            match renewer.renew(&report).await {
                // A conflict (or a renewal the signal interrupted) re-reads; try again at once.
                Err(Error::Conflict { .. }) => continue,
                other => return other,
            }
        }
    };
    match tokio::time::timeout(settings.request_timeout, last).await {
        Ok(Ok(Renewal::Renewed { .. })) => tracing::info!(lease = %settings.name, "Lease marked terminating"),
        Ok(Ok(Renewal::StandingBy { holder })) => {
            tracing::info!(lease = %settings.name, holder = %holder.as_deref().unwrap_or("nobody"), "not the Lease's holder: left as it is")
        }
        Ok(Err(error)) => tracing::warn!(%error, "could not mark the Lease terminating"),
        Err(_) => tracing::warn!(lease = %settings.name, waited = ?settings.request_timeout, "could not mark the Lease terminating in time"),
    }
}

/// Counts SIGTERMs and SIGINTs in a watch channel, for [`run`]. The handlers are installed when
/// this is called, so a signal that arrives before the count is looked at is not lost.
pub fn stop_signals() -> std::io::Result<tokio::sync::watch::Receiver<u32>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (count, signals) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            tracing::info!(signal = name, "stop signal");
            count.send_modify(|n| *n = n.saturating_add(1));
        }
    });
    Ok(signals)
}

/// The labels of every agent Lease: pulsecheck's, and the component the controller selects on.
pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_string(), "pulsecheck".to_string()), (COMPONENT_LABEL.to_string(), COMPONENT.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> LeaseArgs {
        LeaseArgs {
            node_name: "node-a".into(),
            namespace: "pulsecheck".into(),
            pod_name: "pulsecheck-agent-x7k2p".into(),
            pod_uid: "5f0c6a34-0000-4000-8000-000000000001".into(),
            renew_interval: Duration::from_secs(10),
            lease_duration: Duration::from_millis(40_500),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn settings() -> LeaseSettings {
        LeaseSettings::from_args(&args()).unwrap()
    }

    fn report() -> Report {
        Report { disk: DiskHealth::Ok, terminating: false }
    }

    /// Set in the child process [`the_token_and_a_ca_beside_it_are_read_by_name_from_the_token_s_directory`]
    /// runs itself in: the working directory is the whole process's.
    const TOKEN_CHILD: &str = "PULSECHECK_AGENT_TEST_TOKEN_DIR";

    #[test]
    fn the_token_and_a_ca_beside_it_are_read_by_name_from_the_token_s_directory() {
        let Some(dir) = std::env::var_os(TOKEN_CHILD) else {
            // In a process of its own, this test alone.
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "lease::tests::the_token_and_a_ca_beside_it_are_read_by_name_from_the_token_s_directory", "--nocapture", "--test-threads=1"])
                .env(TOKEN_CHILD, dir.path())
                .output()
                .unwrap();
            let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && printed.contains("1 passed"), "{printed}");
            return;
        };
        let dir = PathBuf::from(dir);
        let secrets = dir.join("serviceaccount");
        std::fs::create_dir(&secrets).unwrap();
        let config = |token: Option<PathBuf>, ca: Option<PathBuf>| {
            let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
            config.auth_info.token_file = token.map(|t| t.to_string_lossy().into_owned());
            config.root_cert_file = ca;
            config
        };

        // The in-cluster case: both by name, from the token's directory.
        let mut pod = config(Some(secrets.join("token")), Some(secrets.join("ca.crt")));
        token_file_off_the_disk(&mut pod).unwrap();
        assert_eq!(std::env::current_dir().unwrap(), secrets);
        assert_eq!(pod.auth_info.token_file.as_deref(), Some("token"));
        assert_eq!(pod.root_cert_file.as_deref(), Some(std::path::Path::new("ca.crt")));

        // A CA elsewhere stays where it is, absolute.
        let elsewhere = dir.join("ca.crt");
        let mut split = config(Some(secrets.join("token")), Some(elsewhere.clone()));
        token_file_off_the_disk(&mut split).unwrap();
        assert_eq!(split.root_cert_file, Some(elsewhere));

        // No token file (a token in the kubeconfig, a client certificate): nothing changes, the
        // working directory included.
        std::env::set_current_dir(&dir).unwrap();
        let mut none = config(None, Some(secrets.join("ca.crt")));
        token_file_off_the_disk(&mut none).unwrap();
        assert_eq!((std::env::current_dir().unwrap(), none.root_cert_file), (dir.clone(), Some(secrets.join("ca.crt"))));

        // A token directory that is not there: an error naming it.
        let missing = dir.join("gone");
        let e = token_file_off_the_disk(&mut config(Some(missing.join("token")), None)).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }

    #[test]
    fn only_an_agent_staying_through_trouble_writes_a_lease_that_outlives_its_pod() {
        let hung = DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: 12 };
        let eio =
            DiskHealth::Failing { path: "/etc/os-release".into(), operation: "read".into(), error: "Input/output error (os error 5)".into(), for_seconds: 3 };
        let full = DiskHealth::Failing {
            path: "/var/lib/kubelet/pulsecheck-agent/heartbeat".into(),
            operation: "write".into(),
            error: "No space left on device (os error 28)".into(),
            for_seconds: 3,
        };
        assert!(outlives_pod(1, &hung) && outlives_pod(2, &eio));
        assert!(!outlives_pod(0, &hung), "not asked to stop: the Pod is not going away");
        assert!(!outlives_pod(1, &DiskHealth::Ok) && !outlives_pod(1, &full), "stopping at once");
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let owned = desired(&settings(), None, &report(), now, false);
        let kept = desired(&settings(), Some(&owned), &Report { disk: hung, terminating: false }, now, true);
        assert_eq!(kept.metadata.owner_references, Some(vec![]), "no owner: the garbage collector leaves it");
        let again = desired(&settings(), Some(&kept), &report(), now, false);
        assert_eq!(again.metadata.owner_references, owned.metadata.owner_references);
    }

    #[test]
    fn settings_name_the_lease_round_the_duration_up_and_refuse_what_cannot_work() {
        let s = settings();
        assert_eq!((s.name.as_str(), s.duration_seconds), ("pulsecheck-agent-node-a", 41));
        let e = LeaseSettings::from_args(&LeaseArgs { lease_duration: Duration::from_secs(10), ..args() }).unwrap_err().to_string();
        assert_eq!(e, "--renew-interval (10s) must be smaller than --lease-duration (10s)");
        let e = LeaseSettings::from_args(&LeaseArgs { node_name: "n".repeat(237), ..args() }).unwrap_err().to_string();
        assert!(e.starts_with("--node-name") && e.contains("237 characters"), "{e}");
    }

    #[test]
    fn a_new_lease_is_labelled_held_and_owned_by_the_agent_s_pod() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let lease = desired(&settings(), None, &report(), now, false);
        let meta = &lease.metadata;
        assert_eq!(meta.name.as_deref(), Some("pulsecheck-agent-node-a"));
        assert_eq!(meta.labels.as_ref(), Some(&labels()));
        assert_eq!(meta.annotations.as_ref().unwrap()[REPORT_ANNOTATION], r#"{"disk":{"state":"ok"},"terminating":false}"#);
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str(), owners[0].uid.as_str()),
            ("Pod", "pulsecheck-agent-x7k2p", "5f0c6a34-0000-4000-8000-000000000001")
        );
        assert_eq!((owners[0].controller, owners[0].block_owner_deletion), (None, None));
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pulsecheck-agent-x7k2p"));
        assert_eq!(spec.lease_duration_seconds, Some(41));
        assert_eq!((spec.renew_time, spec.acquire_time.clone()), (Some(MicroTime(now)), Some(MicroTime(now))));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_lease_of_an_older_pod_is_taken_over_and_others_labels_and_annotations_stay() {
        let then = Timestamp::from_second(1_700_000_000).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let old = LeaseSettings { pod_name: "pulsecheck-agent-old".into(), pod_uid: "old-uid".into(), ..settings() };
        let mut existing = desired(&old, None, &report(), then, false);
        existing.metadata.resource_version = Some("42".into());
        existing.metadata.labels.as_mut().unwrap().insert("team".into(), "storage".into());
        existing.metadata.annotations.as_mut().unwrap().insert("note".into(), "kept".into());
        let hung = Report { disk: DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: 12 }, terminating: true };

        let lease = desired(&settings(), Some(&existing), &hung, now, false);
        let meta = &lease.metadata;
        assert_eq!(meta.resource_version.as_deref(), Some("42"), "the write is conditional on the read");
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "storage");
        assert_eq!(meta.annotations.as_ref().unwrap()["note"], "kept");
        assert_eq!(Report::from_annotation(&meta.annotations.as_ref().unwrap()[REPORT_ANNOTATION]).unwrap(), hung);
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(), ["5f0c6a34-0000-4000-8000-000000000001"]);
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pulsecheck-agent-x7k2p"));
        assert_eq!((spec.acquire_time.clone(), spec.lease_transitions), (Some(MicroTime(now)), Some(1)));

        // Renewed by the same Pod: acquired then, no new transition.
        let later = Timestamp::from_second(1_800_000_010).unwrap();
        let again = desired(&settings(), Some(&lease), &report(), later, false).spec.unwrap();
        assert_eq!((again.acquire_time, again.renew_time, again.lease_transitions), (Some(MicroTime(now)), Some(MicroTime(later)), Some(1)));
    }

    /// A Lease held by `holder`, renewed at `renewed` (seconds), saying `report`.
    fn held(holder: &str, renewed: i64, report: &Report) -> Lease {
        let other = LeaseSettings { pod_name: holder.into(), pod_uid: format!("{holder}-uid"), ..settings() };
        desired(&other, None, report, Timestamp::from_second(1_800_000_000 + renewed).unwrap(), false)
    }

    #[test]
    fn an_agent_writes_a_lease_of_its_own_pod_or_nobody_s_and_stands_by_while_another_pod_renews_it() {
        let me = settings();
        let start = Instant::now();
        let mine = held(&me.pod_name, 0, &report());
        assert_eq!(claim(&me, &mine, None, start), Claim::Ours, "its own Pod's (a restarted container)");
        let mut nobody = mine.clone();
        nobody.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(claim(&me, &nobody, None, start), Claim::Free);
        nobody.spec.as_mut().unwrap().holder_identity = Some(String::new());
        assert_eq!(claim(&me, &nobody, None, start), Claim::Free, "an empty holder is nobody");
        nobody.spec = None;
        assert_eq!(claim(&me, &nobody, None, start), Claim::Free);

        // Another agent Pod of the node (a rollout's surge Pod, or the one it replaces) renews:
        // this one stands by however long it watches, as long as the renewals go on.
        let theirs = "pulsecheck-agent-other";
        let held_by = Claim::Held { holder: theirs.into() };
        let lease = held(theirs, 0, &report());
        let watched = Watched::update(None, &lease, start);
        assert_eq!(claim(&me, &lease, Some(&watched), start), held_by);
        let renewed = held(theirs, 10, &report());
        let later = start + Duration::from_secs(41);
        let watched = Watched::update(Some(watched), &renewed, later - Duration::from_secs(1));
        assert_eq!(claim(&me, &renewed, Some(&watched), later), held_by, "renewed a second ago");
        // A report that cannot be read is not a "terminating".
        let mut garbled = renewed.clone();
        garbled.metadata.annotations.as_mut().unwrap().insert(REPORT_ANNOTATION.into(), "{".into());
        assert_eq!(claim(&me, &garbled, Some(&watched), later), held_by);
    }

    #[test]
    fn a_lease_whose_holder_said_terminating_or_stopped_renewing_for_its_duration_is_taken_over() {
        let me = settings();
        let start = Instant::now();
        let theirs = "pulsecheck-agent-other";
        let going = held(theirs, 0, &Report { disk: DiskHealth::Ok, terminating: true });
        assert!(matches!(claim(&me, &going, None, start), Claim::Vacated { ref holder, why } if holder == theirs && why.contains("terminating")));

        // Silent: vacated only once this agent has watched the same renewal for the holder's own
        // lease duration (41 s here), by its monotonic clock — the renewTime's wall clock, from
        // another node, is never compared with this one's.
        let silent = held(theirs, -3600, &report());
        assert_eq!(claim(&me, &silent, None, start), Claim::Held { holder: theirs.into() }, "first sight: not yet watched");
        let watched = Watched::update(None, &silent, start);
        let watched = Watched::update(Some(watched), &silent, start + Duration::from_secs(20));
        assert_eq!(watched.since, start, "the same renewal keeps its first sight");
        assert_eq!(claim(&me, &silent, Some(&watched), start + Duration::from_secs(40)), Claim::Held { holder: theirs.into() });
        assert!(matches!(claim(&me, &silent, Some(&watched), start + Duration::from_secs(41)), Claim::Vacated { why, .. } if why.contains("not renewed")));

        // A renewal, or another holder, starts the watch over.
        let renewed = held(theirs, -3590, &report());
        let watched = Watched::update(Some(watched), &renewed, start + Duration::from_secs(41));
        assert_eq!(claim(&me, &renewed, Some(&watched), start + Duration::from_secs(81)), Claim::Held { holder: theirs.into() });
        let third = held("pulsecheck-agent-third", -3590, &report());
        assert_eq!(claim(&me, &third, Some(&watched), start + Duration::from_secs(500)), Claim::Held { holder: "pulsecheck-agent-third".into() });

        // The holder's duration counts, not this agent's; without one, this agent's.
        let mut short = held(theirs, 0, &report());
        short.spec.as_mut().unwrap().lease_duration_seconds = Some(4);
        let watched = Watched::update(None, &short, start);
        assert!(matches!(claim(&me, &short, Some(&watched), start + Duration::from_secs(4)), Claim::Vacated { .. }));
        short.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
        assert_eq!(claim(&me, &short, Some(&watched), start + Duration::from_secs(40)), Claim::Held { holder: theirs.into() });
        assert!(matches!(claim(&me, &short, Some(&watched), start + Duration::from_secs(41)), Claim::Vacated { .. }));
    }

    #[test]
    fn a_stop_signal_while_the_disk_is_in_trouble_is_put_off_until_it_is_fine_or_a_second_signal() {
        let hung = DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: 12 };
        let failing =
            DiskHealth::Failing { path: "/etc/os-release".into(), operation: "read".into(), error: "Input/output error (os error 5)".into(), for_seconds: 3 };
        let full = DiskHealth::Failing {
            path: "/s/heartbeat".into(),
            operation: "write".into(),
            error: "No space left on device (os error 28)".into(),
            for_seconds: 3,
        };
        let slow = DiskHealth::Failing {
            path: "/s/heartbeat".into(),
            operation: "fsync".into(),
            error: "returned after 11s, over the 10s deadline".into(),
            for_seconds: 3,
        };
        for confirmed in [false, true] {
            assert_eq!(stop(0, &hung, confirmed), Stop::Stay, "no signal yet");
            assert_eq!(stop(0, &DiskHealth::Ok, confirmed), Stop::Stay, "no signal yet");
            assert_eq!(stop(1, &hung, confirmed), Stop::Stay);
            assert_eq!(stop(1, &failing, confirmed), Stop::Stay);
            assert_eq!(stop(2, &hung, confirmed), Stop::Exit);
            assert_eq!(stop(2, &failing, confirmed), Stop::Exit);
            assert_eq!(stop(2, &DiskHealth::Ok, confirmed), Stop::Now, "fine by the second signal: a last word");
        }
        // A disk that looks fine when the signal comes may be hanging on an operation that has
        // not reached its deadline yet: the last word waits for a round started after it.
        assert_eq!(stop(1, &DiskHealth::Ok, false), Stop::Confirm);
        assert_eq!(stop(1, &DiskHealth::Starting, false), Stop::Confirm);
        assert_eq!(stop(1, &DiskHealth::Ok, true), Stop::Now);
        assert_eq!(stop(1, &DiskHealth::Starting, true), Stop::Now);
        // Trouble pulsecheck cannot condemn on keeps nobody once confirmed: a full or slow disk.
        assert_eq!(stop(1, &full, true), Stop::Now);
        assert_eq!(stop(1, &slow, true), Stop::Now);
    }

    #[test]
    fn a_change_of_disk_state_is_news_and_growing_seconds_are_not() {
        let hung = |s| DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: s };
        assert!(changed(None, &DiskHealth::Starting));
        assert!(changed(Some(&DiskHealth::Ok), &hung(10)));
        assert!(!changed(Some(&hung(10)), &hung(11)));
        assert!(changed(Some(&hung(12)), &DiskHealth::Ok));
        let other_path = DiskHealth::Hung { path: "/var/lib/kubelet/pulsecheck-agent/heartbeat".into(), operation: "fsync".into(), for_seconds: 10 };
        assert!(changed(Some(&hung(10)), &other_path));
        let failing = DiskHealth::Failing { path: "/etc/os-release".into(), operation: "read".into(), error: "EIO".into(), for_seconds: 0 };
        assert!(changed(Some(&DiskHealth::Ok), &failing));
        assert!(!changed(Some(&DiskHealth::Ok), &DiskHealth::Ok));
        // A full disk that starts failing with EIO is news (the controller condemns only on EIO);
        // a slow step's growing seconds are not.
        let write = |error: &str| DiskHealth::Failing { path: "/s/heartbeat".into(), operation: "write".into(), error: error.into(), for_seconds: 0 };
        assert!(changed(Some(&write("No space left on device (os error 28)")), &write("Input/output error (os error 5)")));
        assert!(!changed(Some(&write("Input/output error (os error 5)")), &write("Input/output error (os error 5)")));
        assert!(!changed(Some(&write("returned after 11s, over the 10s deadline")), &write("returned after 12s, over the 10s deadline")));
    }
}
