//! A simulated kubelet fleet: Nodes, Leases and kubelet endpoints that behave like real ones.
//!
//! pulsecheck exists because a kubelet can keep renewing its Lease while its NodeStatus goes
//! stale. To show that (and every other failure pulsecheck must tell apart) without a
//! thousand machines, this module plays the kubelet's part for N Nodes against a real
//! apiserver, following kubelet's own timing (see `shared/reference/heartbeats.md`):
//!
//! - the **Lease** `kube-node-lease/<node>` is renewed every `lease_duration / 4`; a failed
//!   renewal is retried with kubelet's backoff (200 ms doubling to 7 s) and a missing Lease is
//!   recreated, owned by its Node;
//! - the **NodeStatus** is recomputed every `status_update_frequency` (with kubelet's 4 %
//!   jitter) and PATCHed to `nodes/status` only when it changed or `status_report_frequency`
//!   elapsed, plus kubelet's one-off random delay of ±0.5 × report frequency after a start or a
//!   change ([`ReportSchedule`]);
//! - each node may serve a fake kubelet HTTPS endpoint ([`super::kubelet`]).
//!
//! The Lease and the status run in separate tasks, like kubelet's separate goroutines, so one
//! can stop while the other goes on. [`Fault`]s switch that on and off at run time.
//!
//! Cost matters: a thousand simulated nodes must run on two cores next to the apiserver. Each
//! node is two small tasks sharing one `kube::Client`; a tick builds only a tiny JSON patch, and
//! start times are spread evenly over each period so that the fleet never bursts.
//!
//! The fleet never touches a Node it did not create (it refuses a cluster with other Nodes
//! unless forced, and never adopts a same-named Node without the fleet label). It must never
//! be pointed at a real cluster: its Nodes are fiction.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeStatus},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

pub use super::kubelet::KubeletRequest;
use super::{
    certs::{self, CertificateAuthority},
    kubelet::{self, EndpointFaults, KubeletConfig, KubeletEndpoint},
};
use pulsecheck::names::NODE_LEASE_NAMESPACE;

use crate::FLEET_LABEL;

/// Field manager of every write the simulated kubelets make.
pub const FIELD_MANAGER: &str = "pulsecheck-lab-kubelet";
/// The osImage a healthy simulated node reports.
pub const OS_IMAGE: &str = "Ubuntu 24.04.1 LTS";
/// The osImage cadvisor reports when it cannot read /etc/os-release.
pub const OS_IMAGE_UNKNOWN: &str = "Unknown";
/// The kubelet version every simulated node claims.
pub const KUBELET_VERSION: &str = "v1.36.3";
/// Port written to `daemonEndpoints` when the fleet runs without kubelet endpoints.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// A flapping node spends this many status report periods as a zombie, then as many healthy.
pub const FLAP_PHASE_REPORT_PERIODS: u32 = 3;
/// Most nodes one fleet can have: one loopback address 127.0.X.Y per node, X and Y in 1..=254.
pub const MAX_NODES: usize = 254 * 254;

const KERNEL_VERSION: &str = "6.8.0-51-generic";
const CONTAINER_RUNTIME_VERSION: &str = "containerd://2.1.4";
/// Timeout of every apiserver call the fleet makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Nodes registered concurrently at start.
const REGISTRATION_CONCURRENCY: usize = 16;
/// Attempts of each registration step on transient errors.
const REGISTRATION_ATTEMPTS: u32 = 6;
/// Kubelet's lease renewal backoff: 200 ms doubling up to 7 s.
const RENEW_BACKOFF_FIRST: Duration = Duration::from_millis(200);
const RENEW_BACKOFF_MAX: Duration = Duration::from_secs(7);
/// Kubelet's status loop runs `wait.JitterUntil(.., nodeStatusUpdateFrequency, 0.04, ..)`.
const STATUS_UPDATE_JITTER: f64 = 0.04;
/// The condition types kubelet owns, in the order kubelet writes them.
const CONDITIONS: [ConditionKind; 4] = [ConditionKind::MemoryPressure, ConditionKind::DiskPressure, ConditionKind::PidPressure, ConditionKind::Ready];
/// Taint the `TaintNodesByCondition` admission plugin puts on every new Node.
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// Errors of the simulated fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`FleetOptions`] value makes no sense.
    #[error("invalid fleet options: {0}")]
    InvalidOptions(String),
    /// The cluster has Nodes the fleet did not create and `force` was not given.
    #[error(
        "the cluster already has {count} node(s) not created by a simulated fleet (e.g. {example:?}); \
         refusing to add simulated nodes next to them — pass --force to do it anyway"
    )]
    ForeignNodes {
        /// How many Nodes lack the fleet label.
        count: usize,
        /// One of them.
        example: String,
    },
    /// A Node with a fleet node's name exists and was not created by a fleet.
    #[error("node {node:?} already exists without the label {FLEET_LABEL}=true; refusing to take it over")]
    NotOurs {
        /// Its name.
        node: String,
    },
    /// `set_fault` or a fault on the command line named a node that is not in the fleet.
    #[error("no simulated node named {0:?} in this fleet")]
    UnknownNode(String),
    /// A fault could not be parsed.
    #[error("{input:?} is not a fault: {reason}")]
    InvalidFault {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An apiserver call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the fleet was doing.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An apiserver call did not answer in time.
    #[error("{action}: no answer from the apiserver within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// What the fleet was doing.
        action: String,
    },
    /// After registration, not every node showed up Ready.
    #[error("only {ready} of {expected} simulated nodes are Ready after registration")]
    NotReady {
        /// Nodes seen Ready.
        ready: usize,
        /// Nodes created.
        expected: usize,
    },
    /// The kubelet CA or a serving certificate could not be made.
    #[error(transparent)]
    Certs(#[from] certs::Error),
    /// A fake kubelet endpoint could not start or re-open.
    #[error(transparent)]
    Kubelet(#[from] kubelet::Error),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure a simulated node can be given (and taken out of) at run time. Faults combine
/// (e.g. `Zombie` and `ProbeFail`); `Recover` clears them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The status loop is wedged: the Lease keeps renewing, NodeStatus patches stop.
    Zombie,
    /// The machine is gone: Lease and status stop, the kubelet endpoint refuses connections.
    Dead,
    /// cadvisor cannot read /etc/os-release: osImage becomes "Unknown" (patched at once, as a
    /// change); the Lease and later reports go on.
    OsImageUnknown,
    /// The kubelet endpoint accepts the connection and the TLS handshake, then never answers.
    ProbeHang,
    /// The kubelet endpoint answers `/healthz` with 500 (sync loop failed).
    ProbeFail,
    /// The kubelet port refuses connections while the node is otherwise healthy: a NetworkPolicy
    /// or security group that blocks port 10250 from the controller.
    ProbeRefuse,
    /// The kubelet endpoint answers 401 even to a token (the prober lacks permission).
    Unauthorized,
    /// Alternates zombie and healthy every [`FLAP_PHASE_REPORT_PERIODS`] report periods, zombie first.
    Flapping,
    /// Every timestamp the node writes (renewTime, lastHeartbeatTime) is off by this much.
    ClockSkew(SignedDuration),
    /// The Lease is deleted and no longer renewed (a kubelet without the lease controller).
    NoLease,
    /// Clears every fault: Lease, status, osImage and endpoint back to healthy.
    Recover,
}

impl FromStr for Fault {
    type Err = Error;

    /// Parses `zombie`, `dead`, `os-image-unknown`, `probe-hang`, `probe-fail`, `probe-refuse`, `unauthorized`,
    /// `flapping`, `clock-skew=+1h` (or `-90s`, `2m`), `no-lease`, `recover`.
    fn from_str(s: &str) -> Result<Fault> {
        let input = s.trim();
        let invalid = |reason: &str| Error::InvalidFault { input: s.to_string(), reason: reason.to_string() };
        if let Some(offset) = input.strip_prefix("clock-skew=") {
            return parse_skew(offset).map(Fault::ClockSkew).map_err(|reason| invalid(&reason));
        }
        Ok(match input {
            "zombie" => Fault::Zombie,
            "dead" => Fault::Dead,
            "os-image-unknown" => Fault::OsImageUnknown,
            "probe-hang" => Fault::ProbeHang,
            "probe-fail" => Fault::ProbeFail,
            "probe-refuse" => Fault::ProbeRefuse,
            "unauthorized" => Fault::Unauthorized,
            "flapping" => Fault::Flapping,
            "no-lease" => Fault::NoLease,
            "recover" => Fault::Recover,
            "clock-skew" => return Err(invalid("clock-skew needs an offset, like clock-skew=+1h")),
            _ => {
                return Err(invalid(
                    "want one of zombie, dead, os-image-unknown, probe-hang, probe-fail, probe-refuse, unauthorized, \
                     flapping, clock-skew=+1h, no-lease, recover",
                ));
            }
        })
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Zombie => f.write_str("zombie"),
            Fault::Dead => f.write_str("dead"),
            Fault::OsImageUnknown => f.write_str("os-image-unknown"),
            Fault::ProbeHang => f.write_str("probe-hang"),
            Fault::ProbeFail => f.write_str("probe-fail"),
            Fault::ProbeRefuse => f.write_str("probe-refuse"),
            Fault::Unauthorized => f.write_str("unauthorized"),
            Fault::Flapping => f.write_str("flapping"),
            Fault::ClockSkew(offset) => {
                let sign = if offset.is_negative() { '-' } else { '+' };
                write!(f, "clock-skew={sign}{}", humantime::format_duration(offset.unsigned_abs()))
            }
            Fault::NoLease => f.write_str("no-lease"),
            Fault::Recover => f.write_str("recover"),
        }
    }
}

/// Parses a clock offset: an optional sign and a humantime duration (`+1h`, `-90s`, `2m`).
pub fn parse_skew(s: &str) -> Result<SignedDuration, String> {
    let s = s.trim();
    let (negative, magnitude) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = humantime::parse_duration(magnitude.trim()).map_err(|e| format!("not a clock offset ({e}); write it like +1h, -90s or 2m"))?;
    let offset = SignedDuration::try_from(magnitude).map_err(|e| format!("clock offset too large: {e}"))?;
    Ok(if negative { -offset } else { offset })
}

/// Every fault a node has at one moment (pure data; [`NodeFaults::with`] applies one more).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFaults {
    /// [`Fault::Zombie`].
    pub zombie: bool,
    /// [`Fault::Dead`].
    pub dead: bool,
    /// [`Fault::OsImageUnknown`].
    pub os_image_unknown: bool,
    /// [`Fault::ProbeHang`].
    pub probe_hang: bool,
    /// [`Fault::ProbeFail`].
    pub probe_fail: bool,
    /// [`Fault::ProbeRefuse`].
    pub probe_refuse: bool,
    /// [`Fault::Unauthorized`].
    pub unauthorized: bool,
    /// [`Fault::Flapping`].
    pub flapping: bool,
    /// [`Fault::ClockSkew`]; zero without skew.
    pub clock_skew: SignedDuration,
    /// [`Fault::NoLease`].
    pub no_lease: bool,
}

impl NodeFaults {
    /// These faults plus `fault` (`Recover` gives no faults at all).
    pub fn with(mut self, fault: Fault) -> NodeFaults {
        match fault {
            Fault::Zombie => self.zombie = true,
            Fault::Dead => self.dead = true,
            Fault::OsImageUnknown => self.os_image_unknown = true,
            Fault::ProbeHang => self.probe_hang = true,
            Fault::ProbeFail => self.probe_fail = true,
            Fault::ProbeRefuse => self.probe_refuse = true,
            Fault::Unauthorized => self.unauthorized = true,
            Fault::Flapping => self.flapping = true,
            Fault::ClockSkew(offset) => self.clock_skew = offset,
            Fault::NoLease => self.no_lease = true,
            Fault::Recover => return NodeFaults::default(),
        }
        self
    }

    /// True while the lease controller renews.
    pub fn renews_lease(&self) -> bool {
        !self.dead && !self.no_lease
    }

    /// True while the status loop posts, given how long the node has been flapping.
    pub fn posts_status(&self, flapping_for: Option<Duration>, report_frequency: Duration) -> bool {
        if self.dead || self.zombie {
            return false;
        }
        match (self.flapping, flapping_for) {
            (true, Some(elapsed)) => !in_zombie_phase(elapsed, report_frequency),
            (true, None) => false,
            (false, _) => true,
        }
    }

    /// What the kubelet endpoint must do (a dead node's endpoint is closed instead).
    pub fn endpoint(&self) -> EndpointFaults {
        EndpointFaults { hang: self.probe_hang, fail: self.probe_fail, unauthorized: self.unauthorized }
    }

    /// The node's clock: the true time plus its skew.
    fn clock(&self) -> Timestamp {
        let now = Timestamp::now();
        now.checked_add(self.clock_skew).unwrap_or(now)
    }
}

/// A flapping node is a zombie during even phases (the first one included).
fn in_zombie_phase(flapping_for: Duration, report_frequency: Duration) -> bool {
    let phase = report_frequency.saturating_mul(FLAP_PHASE_REPORT_PERIODS).as_secs_f64();
    if phase <= 0.0 {
        return false;
    }
    ((flapping_for.as_secs_f64() / phase) as u64).is_multiple_of(2)
}

/// How to build and run a fleet; periods default to kubelet's defaults.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How many nodes (1 ..= [`MAX_NODES`]).
    pub nodes: usize,
    /// Node names are `<name_prefix>NNNN`.
    pub name_prefix: String,
    /// Nodes are spread round-robin over `zone-a`, `zone-b`, … (`topology.kubernetes.io/zone`).
    pub zones: usize,
    /// `leaseDurationSeconds` of every Lease; it is renewed every quarter of it.
    pub lease_duration: Duration,
    /// How often each node recomputes its status (kubelet `nodeStatusUpdateFrequency`).
    pub status_update_frequency: Duration,
    /// How often an unchanged status is still posted (kubelet `nodeStatusReportFrequency`),
    /// with ±50 % one-off jitter after a start or a change.
    pub status_report_frequency: Duration,
    /// Start a fake kubelet HTTPS endpoint per node.
    pub kubelet_endpoints: bool,
    /// Start even when the cluster has Nodes the fleet did not create.
    pub force: bool,
    /// Register every Node with the taint [`SIMULATED_TAINT`]`=true:NoSchedule`, as kwok does
    /// with its nodes, so that the scheduler never places a Pod where no kubelet runs (next to
    /// real nodes, where Pods are scheduled). Tolerated by nothing of pulsecheck's, ignored by
    /// its guard (another actor's taint with a key of its own).
    pub no_pods: bool,
}

/// The taint of simulated nodes with [`FleetOptions::no_pods`].
pub const SIMULATED_TAINT: &str = "lab.pulsecheck.dev/simulated";

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            nodes: 3,
            name_prefix: "sim-".to_string(),
            zones: 3,
            lease_duration: Duration::from_secs(40),
            status_update_frequency: Duration::from_secs(10),
            status_report_frequency: Duration::from_secs(300),
            kubelet_endpoints: true,
            force: false,
            no_pods: false,
        }
    }
}

impl FleetOptions {
    /// Checks the options, naming the offending one.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidOptions(msg));
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return invalid(format!("nodes must be between 1 and {MAX_NODES}, not {}", self.nodes));
        }
        if self.zones == 0 {
            return invalid("zones must be at least 1".into());
        }
        let prefix_ok = self.name_prefix.len() <= 200
            && self.name_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && self.name_prefix.chars().next().is_none_or(|c| c.is_ascii_alphanumeric());
        if !prefix_ok {
            return invalid(format!("name prefix {:?} must be lowercase letters, digits, '-' or '.', starting with a letter or digit", self.name_prefix));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return invalid(format!("lease duration must be at least 1s (whole seconds), not {:?}", self.lease_duration));
        }
        if self.status_update_frequency.is_zero() || self.status_report_frequency.is_zero() {
            return invalid("status update and report frequencies must be greater than zero".into());
        }
        Ok(())
    }

    fn renew_interval(&self) -> Duration {
        self.lease_duration / 4
    }
}

/// The name of node `index` of a fleet of `total`: `<prefix>0007`, at least 4 digits.
pub fn node_name(prefix: &str, index: usize, total: usize) -> String {
    let width = total.saturating_sub(1).to_string().len().max(4);
    format!("{prefix}{index:0width$}")
}

/// The loopback address of node `index`: 127.0.X.Y with X, Y in 1..=254 (127.0.0.1 stays free).
pub fn node_ip(index: usize) -> Ipv4Addr {
    let index = index % MAX_NODES;
    Ipv4Addr::new(127, 0, (1 + index / 254) as u8, (1 + index % 254) as u8)
}

/// The zone of node `index`: `zone-a` … `zone-z`, then `zone-27`, …
pub fn zone_name(index: usize, zones: usize) -> String {
    let zone = index % zones.max(1);
    match u8::try_from(zone) {
        Ok(z) if z < 26 => format!("zone-{}", char::from(b'a' + z)),
        _ => format!("zone-{}", zone + 1),
    }
}

/// A running simulated fleet. Dropping it stops every node (like [`Fleet::stop`], without waiting).
pub struct Fleet {
    nodes: Vec<SimulatedNode>,
    by_name: HashMap<String, usize>,
    kubelet_ca_pem: String,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// The fleet's handle on one node.
struct SimulatedNode {
    name: String,
    faults: watch::Sender<NodeFaults>,
    /// Its kubelet's `nodeStatusReportFrequency`, changed by [`Fleet::restart_kubelet`].
    report_frequency: watch::Sender<Duration>,
    endpoint: Option<KubeletEndpoint>,
}

/// What never changes about a node once it is registered.
#[derive(Debug)]
struct NodeIdentity {
    name: String,
    index: usize,
    ip: Ipv4Addr,
    zone: String,
    kubelet_port: u16,
    /// The Node's uid, for the Lease's ownerReference.
    uid: String,
}

/// What every node task shares.
struct FleetContext {
    nodes: Api<Node>,
    leases: Api<Lease>,
    patch_params: PatchParams,
    lease_duration: Duration,
    renew_interval: Duration,
    status_update_frequency: Duration,
    status_report_frequency: Duration,
    no_pods: bool,
    stop: CancellationToken,
}

impl Fleet {
    /// Creates the Nodes (status through `nodes/status`) and their Leases, starts the kubelet
    /// endpoints and the heartbeat loops, and returns once every node exists and is Ready.
    ///
    /// Refuses a cluster that has Nodes without the fleet label unless `opts.force`.
    pub async fn start(client: Client, opts: FleetOptions) -> Result<Fleet> {
        opts.validate()?;
        let nodes_api: Api<Node> = Api::all(client.clone());
        if !opts.force {
            refuse_foreign_nodes(&nodes_api).await?;
        }
        if opts.kubelet_endpoints {
            raise_open_file_limit(opts.nodes);
        }
        let ca = CertificateAuthority::new("pulsecheck-lab-kubelet-ca")?;
        let ctx = Arc::new(FleetContext {
            nodes: nodes_api,
            leases: Api::namespaced(client, NODE_LEASE_NAMESPACE),
            patch_params: PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() },
            lease_duration: opts.lease_duration,
            renew_interval: opts.renew_interval(),
            status_update_frequency: opts.status_update_frequency,
            status_report_frequency: opts.status_report_frequency,
            no_pods: opts.no_pods,
            stop: CancellationToken::new(),
        });

        // Endpoints first: each Node's status carries its endpoint's port.
        let mut identities = Vec::with_capacity(opts.nodes);
        let mut endpoints = Vec::with_capacity(opts.nodes);
        for index in 0..opts.nodes {
            let name = node_name(&opts.name_prefix, index, opts.nodes);
            let ip = node_ip(index);
            let endpoint = if opts.kubelet_endpoints {
                let serving = ca.issue_server(&name, &[IpAddr::V4(ip)], &[])?;
                let config = KubeletConfig {
                    status_update_frequency: opts.status_update_frequency,
                    status_report_frequency: opts.status_report_frequency,
                    lease_duration: opts.lease_duration,
                };
                Some(KubeletEndpoint::start(IpAddr::V4(ip), &serving, &config).await?)
            } else {
                None
            };
            let kubelet_port = endpoint.as_ref().map_or(DEFAULT_KUBELET_PORT, |e| e.addr().port());
            let zone = zone_name(index, opts.zones);
            identities.push(NodeIdentity { name, index, ip, zone, kubelet_port, uid: String::new() });
            endpoints.push(endpoint);
        }

        let mut registered: Vec<Registered> = futures::stream::iter(identities.into_iter().map(|identity| register_node(&ctx, identity)))
            .buffer_unordered(REGISTRATION_CONCURRENCY)
            .try_collect()
            .await?;
        registered.sort_by_key(|r| r.identity.index);

        let total = opts.nodes as u32;
        let started = Instant::now();
        let mut nodes = Vec::with_capacity(opts.nodes);
        let mut tasks = JoinSet::new();
        for (registered, endpoint) in registered.into_iter().zip(endpoints) {
            let identity = Arc::new(registered.identity);
            let (faults, faults_rx) = watch::channel(NodeFaults::default());
            let (report_frequency, frequency_rx) = watch::channel(ctx.status_report_frequency);
            // Spread first ticks evenly over each period: a thousand nodes never tick together.
            let slot = identity.index as u32;
            let first_renew = started + ctx.renew_interval * slot / total;
            let first_status = started + ctx.status_update_frequency * slot / total;
            let mut schedule = ReportSchedule::new(ctx.status_report_frequency);
            schedule.record(registered.reported_at, true, rand::random());
            tasks.spawn(lease_loop(ctx.clone(), identity.clone(), faults_rx.clone(), first_renew));
            tasks.spawn(status_loop(ctx.clone(), identity.clone(), faults_rx, frequency_rx, first_status, schedule, registered.transition));
            nodes.push(SimulatedNode { name: identity.name.clone(), faults, report_frequency, endpoint });
        }
        let by_name = nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let fleet = Fleet { nodes, by_name, kubelet_ca_pem: ca.cert_pem(), stop: ctx.stop.clone(), tasks };
        fleet.verify_ready(&ctx.nodes).await?;
        tracing::info!(nodes = fleet.nodes.len(), "simulated fleet is up");
        Ok(fleet)
    }

    /// The names of every node, in index order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Restarts `node`'s kubelet with another `nodeStatusReportFrequency`, as a configuration
    /// rollout does: from now on its endpoint's `/configz` says so, and its status loop reports
    /// at once (a kubelet reports when it starts) and then at the new frequency, with the one-off
    /// random delay of a start.
    pub fn restart_kubelet(&self, node: &str, status_report_frequency: Duration) -> Result<()> {
        if status_report_frequency.is_zero() {
            return Err(Error::InvalidOptions("status report frequency must be greater than zero".into()));
        }
        let sim = self.node(node)?;
        if let Some(endpoint) = &sim.endpoint {
            let mut config = endpoint.config();
            config.status_report_frequency = status_report_frequency;
            endpoint.set_config(&config);
        }
        sim.report_frequency.send_replace(status_report_frequency);
        Ok(())
    }

    /// Gives `node` one more fault (or clears all with [`Fault::Recover`]); takes effect at once.
    pub fn set_fault(&self, node: &str, fault: Fault) -> Result<()> {
        let sim = self.node(node)?;
        sim.faults.send_if_modified(|faults| {
            let next = faults.with(fault);
            let changed = next != *faults;
            *faults = next;
            changed
        });
        let faults = *sim.faults.borrow();
        if let Some(endpoint) = &sim.endpoint {
            endpoint.set_faults(faults.endpoint());
            if faults.dead || faults.probe_refuse {
                endpoint.close();
            } else {
                endpoint.reopen()?;
            }
        }
        tracing::info!(node, %fault, "fault set on simulated node");
        Ok(())
    }

    /// The faults `node` has now.
    pub fn faults(&self, node: &str) -> Result<NodeFaults> {
        Ok(*self.node(node)?.faults.borrow())
    }

    /// The CA (PEM) that signed every kubelet endpoint's serving certificate.
    pub fn kubelet_ca_pem(&self) -> String {
        self.kubelet_ca_pem.clone()
    }

    /// Every request `node`'s kubelet endpoint received (empty for an unknown node or without endpoints).
    pub fn kubelet_requests(&self, node: &str) -> Vec<KubeletRequest> {
        self.node(node).ok().and_then(|n| n.endpoint.as_ref()).map(|e| e.requests()).unwrap_or_default()
    }

    /// Where `node`'s kubelet endpoint listens (also written to its Node), if it has one.
    pub fn kubelet_endpoint(&self, node: &str) -> Option<SocketAddr> {
        self.node(node).ok().and_then(|n| n.endpoint.as_ref()).map(|e| e.addr())
    }

    /// Stops renewing, reporting and serving; leaves the Nodes and Leases in the cluster.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        for node in &self.nodes {
            if let Some(endpoint) = &node.endpoint {
                endpoint.close();
            }
        }
    }

    fn node(&self, name: &str) -> Result<&SimulatedNode> {
        self.by_name.get(name).map(|&i| &self.nodes[i]).ok_or_else(|| Error::UnknownNode(name.to_string()))
    }

    async fn verify_ready(&self, nodes: &Api<Node>) -> Result<()> {
        let action = "listing the simulated nodes";
        let list = with_timeout(action, nodes.list(&ListParams::default().labels(&format!("{FLEET_LABEL}=true")))).await?;
        let ready = list
            .items
            .iter()
            .filter(|n| n.metadata.name.as_ref().is_some_and(|name| self.by_name.contains_key(name)))
            .filter(|n| is_ready(n.status.as_ref()))
            .count();
        if ready < self.nodes.len() {
            return Err(Error::NotReady { ready, expected: self.nodes.len() });
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("nodes", &self.nodes.len()).finish_non_exhaustive()
    }
}

/// Every kubelet endpoint holds a listening socket plus its connections: the usual soft limit of
/// 1024 open files runs out near a thousand nodes (and then a prober's connections would fail
/// for a reason no real kubelet has). Raise the soft limit towards the hard one when needed.
fn raise_open_file_limit(nodes: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = (nodes as u64).saturating_mul(4).saturating_add(256);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft >= wanted {
        return;
    }
    let raised = wanted.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
        Ok(()) => tracing::info!(from = soft, to = raised, "raised the open-file limit for the kubelet endpoints"),
        Err(error) => tracing::warn!(soft, %error, "could not raise the open-file limit; large fleets may run out"),
    }
    if raised < wanted {
        tracing::warn!(limit = raised, nodes, "open-file hard limit is low for this many kubelet endpoints");
    }
}

fn is_ready(status: Option<&NodeStatus>) -> bool {
    status.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn refuse_foreign_nodes(nodes: &Api<Node>) -> Result<()> {
    let action = "listing the cluster's nodes";
    let foreign = with_timeout(action, nodes.list_metadata(&ListParams::default().labels(&format!("{FLEET_LABEL}!=true")))).await?;
    if let Some(first) = foreign.items.first() {
        return Err(Error::ForeignNodes { count: foreign.items.len(), example: first.metadata.name.clone().unwrap_or_default() });
    }
    Ok(())
}

/// Runs one apiserver call with the fleet's timeout.
async fn with_timeout<T>(action: &str, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::Kube { action: action.to_string(), source }),
        Err(_) => Err(Error::Timeout { action: action.to_string() }),
    }
}

fn api_code(error: &Error) -> Option<u16> {
    match error {
        Error::Kube { source: kube::Error::Api(status), .. } => Some(status.code),
        _ => None,
    }
}

/// Worth retrying: a timeout, a broken connection, throttling or a server error.
fn is_transient(error: &Error) -> bool {
    match error {
        Error::Timeout { .. } => true,
        Error::Kube { source: kube::Error::Api(status), .. } => status.code == 429 || status.code >= 500,
        Error::Kube { .. } => true,
        _ => false,
    }
}

/// Retries a registration step on transient errors with a short doubling backoff.
async fn retrying<T, F, Fut>(mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match step().await {
            Err(error) if attempt < REGISTRATION_ATTEMPTS && is_transient(&error) => {
                tracing::debug!(%error, attempt, "retrying a registration step");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Registers one node like kubelet does: the Node, its status through `nodes/status`, the
/// not-ready taint removed (kube-controller-manager's job, absent in a bare lab), its Lease.
async fn register_node(ctx: &FleetContext, mut identity: NodeIdentity) -> Result<Registered> {
    let name = identity.name.clone();
    identity.uid = retrying(|| create_or_adopt_node(ctx, &identity)).await?;
    let transition = Timestamp::now();
    let heartbeat = transition;
    let patch = status_patch(&identity, StatusView { os_image: OS_IMAGE }, heartbeat, &[transition; 4], true);
    let action = format!("reporting the status of node {name}");
    let patch = Patch::Strategic(&patch);
    let node = retrying(|| with_timeout(&action, ctx.nodes.patch_status(&name, &ctx.patch_params, &patch))).await?;
    let reported_at = Instant::now();
    remove_not_ready_taint(ctx, &node).await;
    retrying(|| create_or_adopt_lease(ctx, &identity, heartbeat)).await?;
    Ok(Registered { identity, reported_at, transition })
}

/// A node after registration.
struct Registered {
    /// With the Node's uid filled in.
    identity: NodeIdentity,
    /// When its first status was reported.
    reported_at: Instant,
    /// The conditions' lastTransitionTime.
    transition: Timestamp,
}

async fn create_or_adopt_node(ctx: &FleetContext, identity: &NodeIdentity) -> Result<String> {
    let name = &identity.name;
    let spec = ctx.no_pods.then(|| k8s_openapi::api::core::v1::NodeSpec {
        taints: Some(vec![k8s_openapi::api::core::v1::Taint {
            key: SIMULATED_TAINT.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let node =
        Node { metadata: ObjectMeta { name: Some(name.clone()), labels: Some(node_labels(identity)), ..ObjectMeta::default() }, spec, ..Node::default() };
    let created = with_timeout(&format!("creating node {name}"), ctx.nodes.create(&PostParams::default(), &node)).await;
    let existing = match created {
        Ok(node) => node,
        Err(error) if api_code(&error) == Some(409) => {
            let existing = with_timeout(&format!("reading node {name}"), ctx.nodes.get(name)).await?;
            let ours = existing.metadata.labels.as_ref().and_then(|l| l.get(FLEET_LABEL)).is_some_and(|v| v == "true");
            if !ours {
                return Err(Error::NotOurs { node: name.clone() });
            }
            let labels = json!({ "metadata": { "labels": node_labels(identity) } });
            with_timeout(&format!("labelling node {name}"), ctx.nodes.patch(name, &ctx.patch_params, &Patch::Merge(&labels))).await?
        }
        Err(error) => return Err(error),
    };
    Ok(existing.metadata.uid.unwrap_or_default())
}

/// Removes the `node.kubernetes.io/not-ready` taint the admission plugin added, guarded by the
/// resourceVersion so that a concurrent taint edit (kube-controller-manager, pulsecheck) wins.
async fn remove_not_ready_taint(ctx: &FleetContext, node: &Node) {
    let Some(taints) = node.spec.as_ref().and_then(|s| s.taints.as_ref()) else { return };
    if !taints.iter().any(|t| t.key == NOT_READY_TAINT) {
        return;
    }
    let kept: Vec<_> = taints.iter().filter(|t| t.key != NOT_READY_TAINT).collect();
    let name = node.metadata.name.clone().unwrap_or_default();
    let patch = json!({
        "metadata": { "resourceVersion": node.metadata.resource_version },
        "spec": { "taints": kept },
    });
    let action = format!("removing the {NOT_READY_TAINT} taint from node {name}");
    if let Err(error) = with_timeout(&action, ctx.nodes.patch(&name, &ctx.patch_params, &Patch::Merge(&patch))).await {
        tracing::debug!(node = %name, %error, "left the not-ready taint in place");
    }
}

async fn create_or_adopt_lease(ctx: &FleetContext, identity: &NodeIdentity, renew: Timestamp) -> Result<()> {
    let name = &identity.name;
    let lease = lease_for(identity, ctx.lease_duration, renew);
    match with_timeout(&format!("creating the lease of node {name}"), ctx.leases.create(&PostParams::default(), &lease)).await {
        Ok(_) => Ok(()),
        Err(error) if api_code(&error) == Some(409) => {
            let patch = json!({
                "metadata": { "ownerReferences": lease.metadata.owner_references },
                "spec": lease.spec,
            });
            let action = format!("taking over the lease of node {name}");
            with_timeout(&action, ctx.leases.patch(name, &ctx.patch_params, &Patch::Merge(&patch))).await.map(drop)
        }
        Err(error) => Err(error),
    }
}

fn lease_for(identity: &NodeIdentity, duration: Duration, renew: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(identity.name.clone()),
            namespace: Some(NODE_LEASE_NAMESPACE.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_string(),
                kind: "Node".to_string(),
                name: identity.name.clone(),
                uid: identity.uid.clone(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.name.clone()),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(renew)),
            ..LeaseSpec::default()
        }),
    }
}

fn node_labels(identity: &NodeIdentity) -> std::collections::BTreeMap<String, String> {
    [
        (FLEET_LABEL, "true"),
        ("kubernetes.io/hostname", identity.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("topology.kubernetes.io/region", "lab"),
        ("topology.kubernetes.io/zone", identity.zone.as_str()),
        ("node.kubernetes.io/instance-type", "sim.2xlarge"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A kubelet-owned condition type and its healthy value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConditionKind {
    MemoryPressure,
    DiskPressure,
    PidPressure,
    Ready,
}

impl ConditionKind {
    fn type_(self) -> &'static str {
        match self {
            ConditionKind::MemoryPressure => "MemoryPressure",
            ConditionKind::DiskPressure => "DiskPressure",
            ConditionKind::PidPressure => "PIDPressure",
            ConditionKind::Ready => "Ready",
        }
    }

    /// (status, reason, message) of a healthy kubelet, as kubelet words them.
    fn healthy(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ConditionKind::MemoryPressure => ("False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ConditionKind::DiskPressure => ("False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ConditionKind::PidPressure => ("False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ConditionKind::Ready => ("True", "KubeletReady", "kubelet is posting ready status"),
        }
    }
}

/// The parts of a node's status that can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusView {
    os_image: &'static str,
}

impl StatusView {
    fn for_faults(faults: &NodeFaults) -> StatusView {
        StatusView { os_image: if faults.os_image_unknown { OS_IMAGE_UNKNOWN } else { OS_IMAGE } }
    }
}

/// The strategic-merge patch of `nodes/status`. Conditions merge by type, so conditions other
/// writers own (pulsecheck's, node-problem-detector's) stay untouched. `full` adds what only
/// registration writes (addresses, capacity, endpoint, the rest of nodeInfo).
fn status_patch(identity: &NodeIdentity, view: StatusView, heartbeat: Timestamp, transitions: &[Timestamp; 4], full: bool) -> Value {
    let conditions: Vec<Value> = CONDITIONS
        .iter()
        .zip(transitions)
        .map(|(kind, transition)| {
            let (status, reason, message) = kind.healthy();
            json!({
                "type": kind.type_(),
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": Time(heartbeat),
                "lastTransitionTime": Time(*transition),
            })
        })
        .collect();
    if !full {
        return json!({ "status": { "conditions": conditions, "nodeInfo": { "osImage": view.os_image } } });
    }
    let id = machine_id(&identity.name);
    json!({
        "status": {
            "conditions": conditions,
            "addresses": [
                { "type": "InternalIP", "address": identity.ip.to_string() },
                { "type": "Hostname", "address": identity.name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": identity.kubelet_port } },
            "nodeInfo": {
                "machineID": id,
                "systemUUID": format!("{}-{}-{}-{}-{}", &id[0..8], &id[8..12], &id[12..16], &id[16..20], &id[20..32]),
                "bootID": machine_id(&format!("boot/{}", identity.name)),
                "osImage": view.os_image,
                "kernelVersion": KERNEL_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": CONTAINER_RUNTIME_VERSION,
                "architecture": "amd64",
                "operatingSystem": "linux",
            },
            "capacity": {
                "cpu": "8", "memory": "32863084Ki", "pods": "110",
                "ephemeral-storage": "101430960Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
            },
            "allocatable": {
                "cpu": "8", "memory": "32760684Ki", "pods": "110",
                "ephemeral-storage": "93478772582", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
            },
        }
    })
}

/// A stable 32-hex-digit id derived from `seed` (FNV-1a, twice), like a machine-id.
fn machine_id(seed: &str) -> String {
    let fnv = |salt: u64| seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64 ^ salt, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:016x}{:016x}", fnv(0), fnv(0x9e37_79b9_7f4a_7c15))
}

/// When kubelet posts an unchanged status: `status_report_frequency` after the last report,
/// plus a one-off random delay in [-0.5, +0.5) × frequency after a start or a change
/// (kubelet's `delayAfterNodeStatusChange`). A changed status is posted at once. Pure: time
/// and randomness come in as arguments.
#[derive(Debug, Clone, Copy)]
pub struct ReportSchedule {
    frequency: Duration,
    last_report: Option<Instant>,
    /// The one-off delay as a fraction of `frequency`, in [-0.5, 0.5).
    delay_fraction: f64,
}

impl ReportSchedule {
    /// Nothing reported yet: the first status is due at once.
    pub fn new(frequency: Duration) -> ReportSchedule {
        ReportSchedule { frequency, last_report: None, delay_fraction: 0.0 }
    }

    /// When an unchanged status is due next (`None` before the first report).
    pub fn next_due(&self) -> Option<Instant> {
        let last = self.last_report?;
        Some(last + self.frequency.mul_f64(1.0 + self.delay_fraction))
    }

    /// Whether to PATCH now.
    pub fn is_due(&self, now: Instant, changed: bool) -> bool {
        changed || self.next_due().is_none_or(|due| now >= due)
    }

    /// Records a report at `now`; `changed` (or a first report) draws a new one-off delay from
    /// `unit_random` in [0, 1), an unchanged one clears it.
    pub fn record(&mut self, now: Instant, changed: bool, unit_random: f64) {
        let first = self.last_report.is_none();
        self.last_report = Some(now);
        self.delay_fraction = if changed || first { unit_random.clamp(0.0, 1.0) - 0.5 } else { 0.0 };
    }
}

/// Renews the node's Lease every `renew_interval` while its faults allow it.
async fn lease_loop(ctx: Arc<FleetContext>, node: Arc<NodeIdentity>, mut faults_rx: watch::Receiver<NodeFaults>, first_renew: Instant) {
    let mut faults = *faults_rx.borrow_and_update();
    let mut next_renew = first_renew;
    let mut backoff: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            changed = faults_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let now_faults = *faults_rx.borrow_and_update();
                if now_faults.no_lease && !faults.no_lease {
                    delete_lease(&ctx, &node.name).await;
                }
                if now_faults.renews_lease() && !faults.renews_lease() {
                    next_renew = Instant::now();
                    backoff = None;
                }
                faults = now_faults;
            }
            _ = sleep_until(next_renew), if faults.renews_lease() => {
                match renew_lease(&ctx, &node, faults.clock()).await {
                    Ok(()) => {
                        if backoff.take().is_some() {
                            tracing::info!(node = %node.name, "lease renewals succeed again");
                        }
                        next_renew = Instant::now() + ctx.renew_interval;
                    }
                    Err(error) => {
                        let wait = backoff.map_or(RENEW_BACKOFF_FIRST, |b| (b * 2).min(RENEW_BACKOFF_MAX));
                        if backoff.is_none() {
                            tracing::warn!(node = %node.name, %error, "lease renewal failed; retrying with backoff");
                        }
                        backoff = Some(wait);
                        next_renew = Instant::now() + wait;
                    }
                }
            }
        }
    }
}

/// One renewal: a merge patch of `spec.renewTime`; a missing Lease is created again.
async fn renew_lease(ctx: &FleetContext, node: &NodeIdentity, renew: Timestamp) -> Result<()> {
    let patch = json!({ "spec": { "renewTime": MicroTime(renew) } });
    let renewed = with_timeout("renewing a lease", ctx.leases.patch(&node.name, &ctx.patch_params, &Patch::Merge(&patch))).await;
    match renewed {
        Err(error) if api_code(&error) == Some(404) => create_or_adopt_lease(ctx, node, renew).await,
        other => other.map(drop),
    }
}

async fn delete_lease(ctx: &FleetContext, name: &str) {
    let action = format!("deleting the lease of node {name}");
    match with_timeout(&action, ctx.leases.delete(name, &Default::default())).await {
        Ok(_) => {}
        Err(error) if api_code(&error) == Some(404) => {}
        Err(error) => tracing::warn!(node = %name, %error, "could not delete the lease (fault no-lease)"),
    }
}

/// Recomputes the node's status every `status_update_frequency` and posts it like kubelet.
async fn status_loop(
    ctx: Arc<FleetContext>,
    node: Arc<NodeIdentity>,
    mut faults_rx: watch::Receiver<NodeFaults>,
    mut frequency_rx: watch::Receiver<Duration>,
    first_update: Instant,
    mut schedule: ReportSchedule,
    registered_transition: Timestamp,
) {
    let mut faults = *faults_rx.borrow_and_update();
    let mut report_frequency = *frequency_rx.borrow_and_update();
    let mut flapping_since: Option<Instant> = None;
    let mut next_update = first_update;
    // What the apiserver holds, as far as this node knows.
    let mut posted = StatusView { os_image: OS_IMAGE };
    let mut transitions = [registered_transition; 4];
    // After a silence (zombie, dead, flapping), re-read the Node: another writer may have
    // marked it Unknown meanwhile.
    let mut silent = false;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            changed = faults_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let now_faults = *faults_rx.borrow_and_update();
                flapping_since = match (now_faults.flapping, flapping_since) {
                    (true, None) => Some(Instant::now()),
                    (true, since) => since,
                    (false, _) => None,
                };
                faults = now_faults;
                // A fault change is acted on at once (an osImage change is posted at once).
                next_update = Instant::now();
            }
            changed = frequency_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                // A restart with another configuration: nothing reported yet by this kubelet, so
                // the next update reports at once and draws a start's one-off delay.
                report_frequency = *frequency_rx.borrow_and_update();
                schedule = ReportSchedule::new(report_frequency);
                next_update = Instant::now();
            }
            _ = sleep_until(next_update) => {
                let now = Instant::now();
                let jitter = 1.0 + STATUS_UPDATE_JITTER * rand::random::<f64>();
                next_update = now + ctx.status_update_frequency.mul_f64(jitter);
                let flapping_for = flapping_since.map(|since| now.duration_since(since));
                if !faults.posts_status(flapping_for, report_frequency) {
                    silent = true;
                    continue;
                }
                let mut changed = false;
                if silent {
                    match resync(&ctx, &node.name, &mut transitions, &faults).await {
                        Ok(differs) => {
                            changed = differs;
                            silent = false;
                        }
                        Err(error) => {
                            tracing::debug!(node = %node.name, %error, "could not re-read the node; trying next update");
                            continue;
                        }
                    }
                }
                let view = StatusView::for_faults(&faults);
                changed |= view != posted;
                if !schedule.is_due(now, changed) {
                    continue;
                }
                let patch = status_patch(&node, view, faults.clock(), &transitions, false);
                let action = "reporting node status";
                match with_timeout(action, ctx.nodes.patch_status(&node.name, &ctx.patch_params, &Patch::Strategic(&patch))).await {
                    Ok(_) => {
                        posted = view;
                        schedule.record(Instant::now(), changed, rand::random());
                    }
                    Err(error) => {
                        tracing::warn!(node = %node.name, %error, "status report failed; retrying at the next update");
                    }
                }
            }
        }
    }
}

/// Re-reads the Node after a silence: a condition whose status differs from the healthy one
/// (kube-controller-manager set it Unknown) transitions now. Returns whether anything differs.
async fn resync(ctx: &FleetContext, name: &str, transitions: &mut [Timestamp; 4], faults: &NodeFaults) -> Result<bool> {
    let node = with_timeout("re-reading a node after a silence", ctx.nodes.get_status(name)).await?;
    let status = node.status.unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let now = faults.clock();
    let mut differs = false;
    for (kind, transition) in CONDITIONS.iter().zip(transitions.iter_mut()) {
        let (healthy, _, _) = kind.healthy();
        let current = conditions.iter().find(|c| c.type_ == kind.type_()).map(|c| c.status.as_str());
        if current != Some(healthy) {
            *transition = now;
            differs = true;
        }
    }
    let os_image = status.node_info.map(|i| i.os_image).unwrap_or_default();
    Ok(differs || os_image != StatusView::for_faults(faults).os_image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        for text in [
            "zombie",
            "dead",
            "os-image-unknown",
            "probe-hang",
            "probe-fail",
            "probe-refuse",
            "unauthorized",
            "flapping",
            "no-lease",
            "recover",
            "clock-skew=+1h",
            "clock-skew=-1m 30s",
        ] {
            let fault: Fault = text.parse().unwrap();
            assert_eq!(fault.to_string(), text);
        }
        assert_eq!("clock-skew=2m".parse::<Fault>().unwrap(), Fault::ClockSkew(SignedDuration::from_secs(120)));
        assert_eq!("clock-skew=-90s".parse::<Fault>().unwrap(), Fault::ClockSkew(SignedDuration::from_secs(-90)));
    }

    #[test]
    fn bad_faults_say_what_is_accepted() {
        for text in ["zombi", "clock-skew", "clock-skew=soon", ""] {
            let err = text.parse::<Fault>().unwrap_err().to_string();
            assert!(err.contains("not a fault"), "{err}");
        }
        assert!("nope".parse::<Fault>().unwrap_err().to_string().contains("os-image-unknown"));
    }

    #[test]
    fn faults_combine_and_recover_clears_all() {
        let f = NodeFaults::default().with(Fault::Zombie).with(Fault::ProbeFail).with(Fault::ClockSkew(SignedDuration::from_hours(1)));
        assert!(f.zombie && f.probe_fail);
        assert_eq!(f.clock_skew, SignedDuration::from_hours(1));
        assert!(f.renews_lease());
        assert!(!f.posts_status(None, Duration::from_secs(300)));
        assert_eq!(f.endpoint(), EndpointFaults { hang: false, fail: true, unauthorized: false });
        assert_eq!(f.with(Fault::Recover), NodeFaults::default());
    }

    #[test]
    fn which_heartbeats_each_fault_stops() {
        let report = Duration::from_secs(300);
        let table: &[(Fault, bool, bool)] = &[
            // fault, renews lease, posts status
            (Fault::Zombie, true, false),
            (Fault::Dead, false, false),
            (Fault::NoLease, false, true),
            (Fault::OsImageUnknown, true, true),
            (Fault::ProbeHang, true, true),
            (Fault::ClockSkew(SignedDuration::from_secs(60)), true, true),
        ];
        for (fault, lease, status) in table {
            let f = NodeFaults::default().with(*fault);
            assert_eq!(f.renews_lease(), *lease, "{fault}");
            assert_eq!(f.posts_status(None, report), *status, "{fault}");
        }
    }

    #[test]
    fn flapping_starts_as_zombie_and_alternates() {
        let report = Duration::from_secs(10);
        let f = NodeFaults::default().with(Fault::Flapping);
        let posts = |secs| f.posts_status(Some(Duration::from_secs(secs)), report);
        assert!(!posts(0));
        assert!(!posts(29));
        assert!(posts(30));
        assert!(posts(59));
        assert!(!posts(60));
        assert!(posts(95));
    }

    #[test]
    fn unchanged_status_waits_for_report_frequency_plus_one_off_jitter() {
        let freq = Duration::from_secs(300);
        let t0 = Instant::now();
        let mut s = ReportSchedule::new(freq);
        assert!(s.is_due(t0, false), "first status is always posted");
        // Start counts as a change: delay fraction = 0.9 - 0.5 = +0.4 → due at 420 s.
        s.record(t0, true, 0.9);
        assert!(!s.is_due(t0 + Duration::from_secs(419), false));
        assert!(s.is_due(t0 + Duration::from_secs(420), false));
        assert!(s.is_due(t0 + Duration::from_secs(1), true), "a change is posted at once");
        // A periodic report clears the one-off delay: the next is due exactly 300 s later.
        let t1 = t0 + Duration::from_secs(420);
        s.record(t1, false, 0.0);
        assert!(!s.is_due(t1 + Duration::from_secs(299), false));
        assert!(s.is_due(t1 + Duration::from_secs(300), false));
        // After a change the delay can be negative: 0.0 - 0.5 → due after 150 s.
        s.record(t1, true, 0.0);
        assert_eq!(s.next_due(), Some(t1 + Duration::from_secs(150)));
    }

    #[test]
    fn report_delay_stays_within_half_a_period() {
        let freq = Duration::from_secs(300);
        let t0 = Instant::now();
        for r in [0.0, 0.25, 0.5, 0.999_999] {
            let mut s = ReportSchedule::new(freq);
            s.record(t0, true, r);
            let due = s.next_due().unwrap() - t0;
            assert!(due >= Duration::from_secs(150) && due < Duration::from_secs(450), "{r}: {due:?}");
        }
    }

    #[test]
    fn names_ips_and_zones_are_distinct_and_stable() {
        assert_eq!(node_name("sim-", 7, 1000), "sim-0007");
        assert_eq!(node_name("sim-", 12345, 20000), "sim-12345");
        assert_eq!(node_ip(0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(node_ip(253), Ipv4Addr::new(127, 0, 1, 254));
        assert_eq!(node_ip(254), Ipv4Addr::new(127, 0, 2, 1));
        let ips: std::collections::HashSet<_> = (0..MAX_NODES).map(node_ip).collect();
        assert_eq!(ips.len(), MAX_NODES);
        assert!(!ips.contains(&Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(zone_name(0, 3), "zone-a");
        assert_eq!(zone_name(4, 3), "zone-b");
        assert_eq!(zone_name(26, 30), "zone-27");
    }

    #[test]
    fn options_name_what_is_wrong() {
        let ok = FleetOptions::default();
        assert!(ok.validate().is_ok());
        let cases = [
            (FleetOptions { nodes: 0, ..ok.clone() }, "nodes"),
            (FleetOptions { zones: 0, ..ok.clone() }, "zones"),
            (FleetOptions { name_prefix: "Sim_".into(), ..ok.clone() }, "prefix"),
            (FleetOptions { lease_duration: Duration::from_millis(500), ..ok.clone() }, "lease duration"),
            (FleetOptions { status_report_frequency: Duration::ZERO, ..ok.clone() }, "frequencies"),
        ];
        for (opts, want) in cases {
            let err = opts.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn status_patch_writes_every_kubelet_condition_with_heartbeats() {
        let identity = NodeIdentity { name: "sim-0001".into(), index: 1, ip: node_ip(1), zone: "zone-b".into(), kubelet_port: 43210, uid: "u".into() };
        let t: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let patch = status_patch(&identity, StatusView { os_image: OS_IMAGE_UNKNOWN }, t, &[t; 4], false);
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        let types: Vec<_> = conditions.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]);
        assert!(conditions.iter().all(|c| c["lastHeartbeatTime"] == "2026-01-02T03:04:05Z"));
        assert_eq!(patch["status"]["nodeInfo"]["osImage"], "Unknown");
        assert!(patch["status"].get("addresses").is_none(), "a heartbeat patch stays small");

        let full = status_patch(&identity, StatusView { os_image: OS_IMAGE }, t, &[t; 4], true);
        let node: NodeStatus = serde_json::from_value(full["status"].clone()).unwrap();
        assert_eq!(node.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 43210);
        let addresses = node.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "127.0.1.2");
        let info = node.node_info.unwrap();
        assert_eq!(info.os_image, OS_IMAGE);
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "containerd://2.1.4");
        assert_eq!(info.system_uuid.len(), 36);
    }
}
