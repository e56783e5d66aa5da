//! Compact, clock-safe observations of Nodes and their Leases.
//!
//! The watchers hand every Node and Lease to this module, which keeps only what a verdict
//! needs and immediately drops the rest (managedFields, images, the whole object). Freshness is
//! never read from a node's own timestamps: like the node lifecycle controller's
//! `probeTimestamp`, every heartbeat carries the time *pulsecheck* saw its value change. A node
//! whose clock is hours off therefore looks exactly like a node with a correct clock.
//!
//! Re-lists after a broken watch re-apply objects whose values did not change; those keep their
//! old observation times, so a gap in pulsecheck's sight neither restarts staleness clocks nor
//! punishes nodes. This module does no I/O and never reads a clock: `now` is passed in.

use std::collections::{BTreeMap, HashMap};

use std::{borrow::Cow, time::Duration};

use k8s_openapi::{
    api::core::v1::{NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use serde::Deserialize;

use crate::{
    agent::{self, Report},
    cadence::{KubeletCadence, StatusCadence},
    names,
};

/// A Node as pulsecheck reads it from the apiserver: the fields decisions need and nothing
/// else. Deserializing into this type skips `managedFields`, `status.images`, capacity and the
/// rest while parsing, so they never reach memory; watches, GETs and patch responses all use it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimNode {
    /// Name, uid, resourceVersion, labels, annotations.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The whole spec (small: taints, unschedulable, podCIDR, providerID).
    #[serde(default)]
    pub spec: Option<NodeSpec>,
    /// The parts of the status pulsecheck reads.
    #[serde(default)]
    pub status: Option<SlimNodeStatus>,
}

/// The parts of `NodeStatus` pulsecheck reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimNodeStatus {
    /// All conditions (Ready, pressure conditions, node-problem-detector's, ours).
    #[serde(default)]
    pub conditions: Option<Vec<NodeCondition>>,
    /// osImage and versions.
    #[serde(default)]
    pub node_info: Option<SlimNodeInfo>,
    /// Where the node can be reached.
    #[serde(default)]
    pub addresses: Option<Vec<NodeAddress>>,
    /// The kubelet port.
    #[serde(default)]
    pub daemon_endpoints: Option<NodeDaemonEndpoints>,
}

/// The parts of `NodeSystemInfo` pulsecheck reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimNodeInfo {
    /// `osImage`: "Unknown" when cadvisor cannot read /etc/os-release.
    #[serde(default)]
    pub os_image: String,
    /// `kubeletVersion`.
    #[serde(default)]
    pub kubelet_version: String,
}

/// A node Lease as pulsecheck reads it: its name and `spec.renewTime`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimLease {
    /// Name (the node's), namespace, resourceVersion.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// Renew time and holder.
    #[serde(default)]
    pub spec: Option<SlimLeaseSpec>,
}

/// A node agent's Lease (`pulsecheck-agent-<node>` in pulsecheck's namespace, see
/// [`crate::agent`]) as pulsecheck reads it: name, annotations (the report) and spec.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimAgentLease {
    /// Name, namespace, resourceVersion, labels, annotations.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// Renew time, holder (the agent's Pod) and duration.
    #[serde(default)]
    pub spec: Option<SlimLeaseSpec>,
}

/// The parts of `LeaseSpec` pulsecheck reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimLeaseSpec {
    /// When the holder last renewed, by the holder's clock.
    #[serde(default)]
    pub renew_time: Option<MicroTime>,
    /// The kubelet holding the Lease.
    #[serde(default)]
    pub holder_identity: Option<String>,
    /// How long the holder's claim lasts (the kubelet's `nodeLeaseDurationSeconds`; it renews
    /// every quarter of it).
    #[serde(default)]
    pub lease_duration_seconds: Option<i32>,
}

/// Deserializes the metadata fields pulsecheck uses, skipping `managedFields` and the rest.
fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
    }
    let w = Wire::deserialize(d)?;
    Ok(ObjectMeta {
        name: w.name,
        namespace: w.namespace,
        uid: w.uid,
        resource_version: w.resource_version,
        labels: w.labels,
        annotations: w.annotations,
        ..Default::default()
    })
}

macro_rules! slim_resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
slim_resource!(SlimNode, "Node", "", "v1", "nodes", k8s_openapi::ClusterResourceScope);
slim_resource!(SlimLease, "Lease", "coordination.k8s.io", "v1", "leases", k8s_openapi::NamespaceResourceScope);
slim_resource!(SlimAgentLease, "Lease", "coordination.k8s.io", "v1", "leases", k8s_openapi::NamespaceResourceScope);

impl SlimNode {
    /// The slim view of a full Node (through its JSON form, exactly as from the apiserver).
    pub fn from_node(node: &k8s_openapi::api::core::v1::Node) -> SlimNode {
        serde_json::to_value(node).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }

    /// A condition of the node by type.
    pub fn condition(&self, type_: &str) -> Option<&NodeCondition> {
        self.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
    }
}

impl SlimLease {
    /// The slim view of a full Lease.
    pub fn from_lease(lease: &k8s_openapi::api::coordination::v1::Lease) -> SlimLease {
        serde_json::to_value(lease).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }

    /// `spec.renewTime`.
    pub fn renew_time(&self) -> Option<Timestamp> {
        self.spec.as_ref()?.renew_time.as_ref().map(|t| t.0)
    }

    /// `spec.leaseDurationSeconds` when it is positive, at most an hour (a longer one is taken
    /// as an hour: the safe direction, and the caller caps it further).
    pub fn duration(&self) -> Option<Duration> {
        self.spec.as_ref()?.duration()
    }
}

impl SlimLeaseSpec {
    /// `leaseDurationSeconds` when it is positive, at most an hour (see [`SlimLease::duration`]).
    pub fn duration(&self) -> Option<Duration> {
        u64::try_from(self.lease_duration_seconds?).ok().filter(|s| *s >= 1).map(|s| Duration::from_secs(s.min(3600)))
    }
}

/// The node's own `Ready` condition, as the kubelet (or kube-controller-manager) set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ReadyState {
    /// `Ready=True`: the node claims to be alive.
    True,
    /// `Ready=False`: the kubelet itself says the node is not ready.
    False,
    /// `Ready=Unknown`: kube-controller-manager stopped hearing from the node.
    Unknown,
    /// No Ready condition at all (a node that never posted status).
    Missing,
}

impl ReadyState {
    /// As `kubectl get nodes` would say it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyState::True => "True",
            ReadyState::False => "False",
            ReadyState::Unknown => "Unknown",
            ReadyState::Missing => "Missing",
        }
    }
}

/// A heartbeat value (a timestamp written by the node) and when pulsecheck saw it change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The value as the node wrote it; only compared, never trusted as a time.
    pub value: Option<Timestamp>,
    /// pulsecheck's own clock when this value was first seen.
    pub observed_at: Timestamp,
    /// pulsecheck has seen the value change at least once since it first saw it: positive proof
    /// of a working loop on the node. First sight alone proves nothing — after a restart a dead
    /// heartbeat looks as fresh as a live one until it fails to change.
    pub seen_changing: bool,
}

impl Heartbeat {
    /// A heartbeat after seeing `value` at `now`: the observation time moves only when the value changed.
    pub fn advance(previous: Option<&Heartbeat>, value: Option<Timestamp>, now: Timestamp) -> Heartbeat {
        match previous {
            Some(p) if p.value == value => *p,
            Some(_) => Heartbeat { value, observed_at: now, seen_changing: true },
            None => Heartbeat { value, observed_at: now, seen_changing: false },
        }
    }
}

/// How the node's `status.nodeInfo.osImage` looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsImage {
    /// The current value.
    pub current: String,
    /// pulsecheck's clock when the value became "Unknown" (case-insensitive); `None` while it is not.
    pub unknown_since: Option<Timestamp>,
    /// True when pulsecheck saw a real value turn into "Unknown" (much stronger evidence than a
    /// node that always said so).
    pub turned_unknown: bool,
}

impl OsImage {
    fn advance(previous: Option<&OsImage>, current: &str, now: Timestamp) -> OsImage {
        let unknown = is_unknown(current);
        match previous {
            Some(p) if unknown && p.unknown_since.is_some() => OsImage { current: current.to_string(), ..p.clone() },
            Some(p) if unknown => {
                OsImage { current: current.to_string(), unknown_since: Some(now), turned_unknown: !p.current.is_empty() && !is_unknown(&p.current) }
            }
            _ => OsImage { current: current.to_string(), unknown_since: unknown.then_some(now), turned_unknown: false },
        }
    }
}

/// True for cadvisor's "could not read /etc/os-release" value, compared case-insensitively.
pub fn is_unknown(os_image: &str) -> bool {
    os_image.trim().eq_ignore_ascii_case("unknown")
}

/// A node condition set by another tool (node-problem-detector) that signals a broken node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProblemCondition {
    /// The condition type, e.g. `ReadonlyFilesystem`.
    pub kind: String,
    /// Its reason, as the other tool wrote it.
    pub reason: String,
}

/// Where a kubelet can be reached, from `status.addresses` and `status.daemonEndpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeletEndpoint {
    /// `(type, address)` pairs in the order the node lists them.
    pub addresses: Vec<(String, String)>,
    /// `status.daemonEndpoints.kubeletEndpoint.Port`, when set and valid.
    pub port: Option<u16>,
}

/// What pulsecheck has done to a node, as recorded on the node itself (annotation
/// [`names::REMEDIATION_ANNOTATION`]) so that a restarted controller resumes without
/// duplicating or orphaning actions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remediation {
    /// pulsecheck added its taint.
    #[serde(default)]
    pub tainted: bool,
    /// pulsecheck set `spec.unschedulable` (a cordon by anyone else is never recorded here).
    #[serde(default)]
    pub cordoned: bool,
    /// When the remediation started (pulsecheck's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

impl Remediation {
    /// True when pulsecheck holds a remediation on the node: its taint, its cordon, or only its
    /// record (`since`) when the wanted state was already there — a cordon-only remediation of a
    /// node somebody else had cordoned. Such a node counts as remediated (it is neither
    /// remediated again every tick nor uncordoned later); release clears the record.
    pub fn is_active(&self) -> bool {
        self.tainted || self.cordoned || self.since.is_some()
    }
}

/// Everything pulsecheck keeps about one Node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// `metadata.uid`: a deleted and re-created Node is a new node.
    pub uid: String,
    /// `metadata.resourceVersion` of the last Node seen.
    pub resource_version: Option<String>,
    /// pulsecheck's clock when the node was first seen.
    pub first_seen: Timestamp,
    /// The node's Ready condition.
    pub ready: ReadyState,
    /// Ready `reason`, e.g. `KubeletReady` or `NodeStatusUnknown`.
    pub ready_reason: String,
    /// The status heartbeat: Ready's `lastHeartbeatTime`. `seen_changing` is the proof of a
    /// working status loop a release waits for (a restarted pulsecheck must not release a zombie
    /// because it has not watched it long).
    pub status: Heartbeat,
    /// `status.nodeInfo.osImage`.
    pub os_image: OsImage,
    /// Problem conditions currently True.
    pub problems: Vec<ProblemCondition>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// An observation since [`FleetFacts::take_uncordons`] last looked showed the node go from
    /// cordoned to schedulable: an uncordon followed by a cordon between two ticks is still an
    /// uncordon (the cordon after it is somebody else's).
    pub uncordon_seen: bool,
    /// pulsecheck's record claims the cordon, but somebody else has undone it since (the node
    /// is schedulable now, or was seen so): the schedulability is theirs, even if they cordon it
    /// again. Kept until the record stops claiming the cordon — pulsecheck disowns it in the
    /// record when it can write (leader, not blind, not backing off), however many ticks that
    /// takes — or the Node is re-created.
    pub cordon_taken_over: bool,
    /// The pulsecheck taint is on the node.
    pub has_our_taint: bool,
    /// A taint that takes the node out of service for everyone (kube-controller-manager's
    /// `not-ready`/`unreachable`, `unschedulable`, `out-of-service`), whoever set it.
    pub out_of_service_taint: bool,
    /// What pulsecheck recorded on the node.
    pub remediation: Remediation,
    /// Label `pulsecheck.dev/exclude=true`.
    pub excluded_by_label: bool,
    /// The node matches `--node-selector`.
    pub selected: bool,
    /// `topology.kubernetes.io/zone`, when set.
    pub zone: Option<String>,
    /// Where to probe its kubelet.
    pub kubelet: KubeletEndpoint,
    /// pulsecheck's own condition on the node: `(status, reason)`, when present.
    pub our_condition: Option<(String, String)>,
    /// While that condition's status is `Unknown` (a node pulsecheck does not remediate, or not
    /// yet), why not: its message's first clause ([`why_not_remediated`]). The reason stays
    /// `ZombieNotRemediated` while the why changes (waiting for the confirming read, then the
    /// circuit open, then the rate limit), so the why is compared too.
    pub our_condition_why: Option<String>,
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet_version: String,
    /// What pulsecheck knows of the node's status cadence (its kubelet's `/configz`, the
    /// intervals it saw), from which [`crate::verdict::Thresholds::status_threshold_for`]
    /// derives the node's own status threshold.
    pub cadence: StatusCadence,
    /// The gap since the current status report is not a cadence (pulsecheck judged the status
    /// stale, the Lease stale or the node not Ready, or could not see part of the gap): the
    /// interval the next report ends is not learned. Set by the controller and the discounts,
    /// cleared by the next report.
    pub uncadenced_gap: bool,
}

/// The outcome of one kubelet probe, as the prober reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ProbeOutcome {
    /// The kubelet answered healthy.
    Success,
    /// The kubelet answered unhealthy: a 5xx of its own (`[-]syncloop failed`).
    Failure(String),
    /// The request went to the kubelet over a completed TLS handshake and no answer came within
    /// the probe timeout: the kubelet accepted the connection and hangs.
    Timeout,
    /// The request went to the kubelet over a completed TLS handshake and the connection broke
    /// off without an answer.
    NoAnswer(String),
    /// pulsecheck did not get through to the kubelet: no TCP connection to any of the node's
    /// addresses (refused, no route, dropped), a TLS handshake the other side broke off, the
    /// connection closed before the request went out, or an apiserver proxy that could not reach
    /// the kubelet or did not answer in time. Supporting evidence at most: a firewall or a
    /// NetworkPolicy between pulsecheck and port 10250 looks exactly like this, and a node that is
    /// dead as well stops reporting. Ends a streak of failures that got through.
    Unreachable(String),
    /// The TCP connection was made and the TLS handshake did not complete within its share of the
    /// probe timeout: a path that drops large packets (the certificate never arrives), or a
    /// kubelet too starved (CPU, file descriptors) to finish it. Supporting evidence at most, and
    /// neutral to a streak of failures that got through: it neither starts nor ends one.
    NoHandshake(String),
    /// The kubelet's serving certificate was not accepted (signed by another CA than
    /// `--kubelet-certificate-authority`, a serving certificate still pending under
    /// serverTLSBootstrap, a name or address it does not cover). Never evidence: pulsecheck's
    /// trust configuration is wrong, or the kubelet has no certificate yet.
    Untrusted(String),
    /// 401/403: pulsecheck lacks permission. Never evidence against the node.
    Unauthorized(String),
    /// pulsecheck could not probe at all (no address, no port, an unreadable token file): its own
    /// configuration. Never evidence.
    NotProbed(String),
    /// An answer that says nothing about the kubelet's health: a redirect, a 404 or 429, another
    /// 4xx, a 5xx without a healthz report (an intermediary's), the kubelet unable to authorize
    /// the request (its SubjectAccessReview failed), something that is not HTTP. Neither evidence
    /// nor pulsecheck's misconfiguration — and no confirmation of health either: a node held on
    /// probe evidence is not released on it.
    Inconclusive(String),
}

impl ProbeOutcome {
    /// A failure in which pulsecheck got through to the kubelet: it answered unhealthy, or took
    /// the request over a completed TLS handshake and then hung or broke off.
    pub fn got_through(&self) -> bool {
        matches!(self, ProbeOutcome::Failure(_) | ProbeOutcome::Timeout | ProbeOutcome::NoAnswer(_))
    }

    /// A result that speaks against the node's health (at least as supporting evidence).
    pub fn is_failure(&self) -> bool {
        self.got_through() || matches!(self, ProbeOutcome::Unreachable(_) | ProbeOutcome::NoHandshake(_))
    }
}

/// What the probes have shown about one node so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeFacts {
    /// The latest outcome and when it arrived (pulsecheck's clock).
    pub last: Option<(ProbeOutcome, Timestamp)>,
    /// Failures (including timeouts) in a row.
    pub consecutive_failures: u32,
    /// When the current run of failures began.
    pub failing_since: Option<Timestamp>,
    /// When the current streak of failures in which pulsecheck got through to the kubelet began:
    /// each one answered unhealthy ([`ProbeOutcome::Failure`]) or took the request over a
    /// completed TLS handshake and then hung or broke off ([`ProbeOutcome::Timeout`],
    /// [`ProbeOutcome::NoAnswer`]). An [`ProbeOutcome::Unreachable`] ends the streak: the way to
    /// the kubelet failing — a firewall, a NetworkPolicy — says nothing about the kubelet, and a
    /// stray hang after a long spell of it must not inherit that spell's length. So does any
    /// result that is no failure (an inconclusive answer, a refusal, no probe): the streak is
    /// time pulsecheck saw the kubelet fail. A [`ProbeOutcome::NoHandshake`] is neutral.
    /// `--probe-zombie-after` is measured from here.
    pub connected_since: Option<Timestamp>,
    /// pulsecheck got through to the kubelet at least once: it answered (healthy or not), or took
    /// a request over a completed TLS handshake — with a serving certificate verified against
    /// `--kubelet-certificate-authority`, unless the operator chose `--kubelet-insecure-tls` —
    /// and then hung or broke off. pulsecheck can reach it, so failing later says something about
    /// the node; a port blocked or a certificate refused from the start says nothing.
    pub reached: bool,
}

impl ProbeFacts {
    /// Why pulsecheck itself cannot probe this node usefully, if that is the case: its last
    /// answer was a refusal (401/403) or an untrusted certificate, it could not probe at all (no
    /// address or port, an unreadable `--token-file`), or its kubelet was never reached. Such
    /// nodes are reported as pulsecheck's misconfiguration, and their probes are no evidence
    /// (the node is still judged on everything else).
    pub fn misconfiguration(&self) -> Option<&str> {
        match &self.last {
            Some((ProbeOutcome::Unauthorized(why) | ProbeOutcome::Untrusted(why) | ProbeOutcome::NotProbed(why), _)) => Some(why),
            Some((ProbeOutcome::Unreachable(why) | ProbeOutcome::NoHandshake(why), _)) if !self.reached => Some(why),
            _ => None,
        }
    }
}

impl ProbeFacts {
    /// Folds one probe outcome into the record. A result arriving `expiry` or longer after the
    /// previous one starts a new run: failures from before a gap (the node was not probed while
    /// its Lease was stale, a reboot) must not add up with one failure after it.
    pub fn record(&mut self, outcome: ProbeOutcome, now: Timestamp, expiry: Duration) {
        let gap = self.last.as_ref().is_some_and(|(_, at)| SignedDuration::try_from(expiry).is_ok_and(|e| now.duration_since(*at) >= e));
        if gap {
            self.consecutive_failures = 0;
            self.failing_since = None;
            self.connected_since = None;
        }
        match &outcome {
            ProbeOutcome::Success => {
                self.consecutive_failures = 0;
                self.failing_since = None;
                self.connected_since = None;
                self.reached = true;
            }
            o if o.is_failure() => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.failing_since.get_or_insert(now);
                match o {
                    o if o.got_through() => {
                        self.connected_since.get_or_insert(now);
                    }
                    ProbeOutcome::NoHandshake(_) => {}
                    _ => self.connected_since = None,
                }
                // A timeout or a broken-off request comes only after a completed TLS handshake
                // with the kubelet's certificate: a kubelet that accepts and then hangs is reached,
                // also by a freshly started pulsecheck.
                self.reached |= outcome.got_through();
            }
            // None speaks about the node's health: the failure run stays as it was, but the time
            // since is no time pulsecheck saw the kubelet fail.
            _ => self.connected_since = None,
        }
        self.last = Some((outcome, now));
    }
}

/// Everything pulsecheck keeps about one node Lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseFacts {
    /// `spec.renewTime` and when pulsecheck saw it change. Until it has been seen changing, the
    /// node is not judged: a Lease listed after a restart looks as fresh as a live one for a
    /// whole `--lease-grace`.
    pub renew: Heartbeat,
    /// `spec.leaseDurationSeconds`, when sane: the node's own Lease cadence.
    pub duration: Option<Duration>,
}

/// Everything pulsecheck keeps about one node's agent (its Lease, see [`crate::agent`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFacts {
    /// `spec.renewTime` and when pulsecheck saw it change: the agent's network loop at work.
    pub renew: Heartbeat,
    /// `spec.leaseDurationSeconds`, when sane.
    pub duration: Option<Duration>,
    /// The report as of the latest renewal, or why it could not be read (data from the
    /// cluster: a bad report is no evidence, never a panic).
    pub report: Result<Report, String>,
}

impl AgentFacts {
    /// Distils an agent Lease, carrying the renewal's observation time over from `previous`.
    pub fn observe(lease: &SlimAgentLease, previous: Option<&AgentFacts>, now: Timestamp) -> AgentFacts {
        let spec = lease.spec.as_ref();
        let renew_time = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
        let report = match lease.metadata.annotations.as_ref().and_then(|a| a.get(agent::REPORT_ANNOTATION)) {
            Some(value) => Report::from_annotation(value).map_err(|e| format!("annotation {}: {e}", agent::REPORT_ANNOTATION)),
            None => Err(format!("no annotation {}", agent::REPORT_ANNOTATION)),
        };
        AgentFacts { renew: Heartbeat::advance(previous.map(|p| &p.renew), renew_time, now), duration: spec.and_then(SlimLeaseSpec::duration), report }
    }
}

/// Which nodes are pulsecheck's to judge: the label selector and the taint key it owns.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Parsed `--node-selector`; empty selects every node.
    pub selector: Selector,
    /// The taint key pulsecheck owns.
    pub taint_key: String,
    /// Node condition types that count as problems when True.
    pub problem_conditions: Vec<String>,
}

/// A parsed equality-based label selector (`a=b,c!=d,e,!f`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A label selector pulsecheck cannot parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid label selector '{selector}': {problem}")]
pub struct SelectorError {
    selector: String,
    problem: String,
}

impl Selector {
    /// Parses `a=b,c==d,e!=f,g,!h`. Set-based selectors (`in`, `notin`) are not supported.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let err = |problem: &str| SelectorError { selector: s.to_string(), problem: problem.to_string() };
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains(" in ") || part.contains(" notin ") || part.contains('(') {
                return Err(err("set-based requirements (in, notin) are not supported; use key=value, key!=value, key or !key"));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _) | Requirement::Exists(k) | Requirement::NotExists(k) => k,
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(err(&format!("'{part}' has no valid key")));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// True when the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    /// The selector as the apiserver's `labelSelector` parameter, for a list or watch.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads our remediation record from a node's annotations; a damaged record counts as "we did
/// nothing" rather than failing, and the taint itself is still recognised by key.
pub fn remediation_from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Remediation {
    annotations.and_then(|a| a.get(names::REMEDIATION_ANNOTATION)).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default()
}

impl NodeFacts {
    /// Distils a Node into facts, carrying observation times over from `previous` for values
    /// that did not change.
    pub fn observe(node: &SlimNode, previous: Option<&NodeFacts>, scope: &Scope, now: Timestamp) -> NodeFacts {
        let meta = &node.metadata;
        let uid = meta.uid.clone().unwrap_or_default();
        // A re-created node (new uid) starts from scratch.
        let previous = previous.filter(|p| p.uid == uid);
        let empty = BTreeMap::new();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let status = node.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let ready_condition = conditions.iter().find(|c| c.type_ == "Ready");
        let ready = match ready_condition.map(|c| c.status.as_str()) {
            Some("True") => ReadyState::True,
            Some("False") => ReadyState::False,
            Some(_) => ReadyState::Unknown,
            None => ReadyState::Missing,
        };
        let heartbeat_value = ready_condition.and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| t.0);
        let os_image_value = status.and_then(|s| s.node_info.as_ref()).map(|i| i.os_image.as_str()).unwrap_or("");
        let ours = conditions.iter().find(|c| c.type_ == names::CONDITION_TYPE);
        let our_condition = ours.map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()));
        let our_condition_why = ours.filter(|c| c.status == "Unknown").map(|c| why_not_remediated(c.message.as_deref().unwrap_or("")).to_string());
        let problems = conditions
            .iter()
            .filter(|c| c.status == "True" && scope.problem_conditions.iter().any(|p| p == &c.type_))
            .map(|c| ProblemCondition { kind: c.type_.clone(), reason: c.reason.clone().unwrap_or_default() })
            .collect();
        let spec = node.spec.as_ref();
        let taints = spec.and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
        let has_our_taint = taints.iter().any(|t| t.key == scope.taint_key);
        let out_of_service_taint = taints.iter().any(|t| OUT_OF_SERVICE_TAINTS.contains(&t.key.as_str()) && t.effect != "PreferNoSchedule");
        let kubelet = KubeletEndpoint {
            addresses: status.and_then(|s| s.addresses.as_ref()).map(|a| a.iter().map(|a| (a.type_.clone(), a.address.clone())).collect()).unwrap_or_default(),
            port: status
                .and_then(|s| s.daemon_endpoints.as_ref())
                .and_then(|d| d.kubelet_endpoint.as_ref())
                .and_then(|e| u16::try_from(e.port).ok())
                .filter(|p| *p != 0),
        };
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let uid_for_sticky = uid.clone();
        let remediation = remediation_from_annotations(meta.annotations.as_ref());
        let status_heartbeat = Heartbeat::advance(previous.map(|p| &p.status), heartbeat_value, now);
        let cadence = previous.map_or_else(StatusCadence::default, |p| learn_cadence(p, &status_heartbeat));
        NodeFacts {
            uid,
            resource_version: meta.resource_version.clone(),
            first_seen: previous.map_or(now, |p| p.first_seen),
            ready,
            ready_reason: ready_condition.and_then(|c| c.reason.clone()).unwrap_or_default(),
            status: status_heartbeat,
            os_image: OsImage::advance(previous.map(|p| &p.os_image), os_image_value, now),
            problems,
            unschedulable,
            // Set by an uncordon (cordoned before, schedulable now), kept until taken.
            uncordon_seen: previous.is_some_and(|p| p.uid == uid_for_sticky && (p.uncordon_seen || (p.unschedulable && !unschedulable))),
            cordon_taken_over: remediation.cordoned && (!unschedulable || previous.is_some_and(|p| p.cordon_taken_over)),
            has_our_taint,
            out_of_service_taint,
            remediation,
            excluded_by_label: labels.get(names::EXCLUDE_LABEL).is_some_and(|v| v == "true"),
            selected: scope.selector.matches(labels),
            zone: labels.get("topology.kubernetes.io/zone").cloned(),
            kubelet,
            our_condition,
            our_condition_why,
            kubelet_version: status.and_then(|s| s.node_info.as_ref()).map(|i| i.kubelet_version.clone()).unwrap_or_default(),
            cadence,
            uncadenced_gap: previous.is_some_and(|p| p.uncadenced_gap && p.status.value == heartbeat_value),
        }
    }
}

/// `previous`'s cadence after its status heartbeat became `now_seen`: a new report teaches the
/// interval since the one before it, measured on the kubelet's clock (and bounded by what
/// pulsecheck's clock saw, when it watched the whole interval), unless that gap was not a
/// cadence ([`NodeFacts::uncadenced_gap`]).
fn learn_cadence(previous: &NodeFacts, now_seen: &Heartbeat) -> StatusCadence {
    match (previous.status.value, now_seen.value) {
        (Some(before), Some(after)) if before != after => {
            if previous.uncadenced_gap {
                return previous.cadence.reported();
            }
            let watched = previous.status.seen_changing.then(|| now_seen.observed_at.duration_since(previous.status.observed_at));
            // Learned before it counts as a report since the read: an interval that began after
            // the configuration was read is judged against that configuration.
            previous.cadence.after_report(after.duration_since(before), watched).reported()
        }
        _ => previous.cadence,
    }
}

/// Taint keys that mean "this node takes no work" whoever set them: the node lifecycle
/// controller's, kubectl cordon's, and the non-graceful shutdown one. Taints with other keys
/// (dedicated pools, GPUs, control-plane nodes) restrict who runs there, not whether anyone can.
pub const OUT_OF_SERVICE_TAINTS: &[&str] =
    &["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/unschedulable", "node.kubernetes.io/out-of-service"];

impl NodeFacts {
    /// True while the node can take new pods: Ready, not cordoned, no out-of-service taint and
    /// no pulsecheck taint.
    pub fn schedulable(&self) -> bool {
        self.ready == ReadyState::True && !self.unschedulable && !self.out_of_service_taint && !self.has_our_taint
    }
}

/// The first clause of the message of a condition pulsecheck wrote with status `Unknown`: why
/// it does not remediate the node (yet) — "not remediated: the circuit is open", without the
/// counts in parentheses (they change with every node that fails, and rewriting every held
/// node's condition for each would be a write storm) and without the evidence after the `;`.
pub fn why_not_remediated(message: &str) -> &str {
    let end = [" (", "; "].iter().filter_map(|cut| message.find(cut)).min().unwrap_or(message.len());
    &message[..end]
}

/// A node's name, shared cheaply between the facts, the verdicts and the guard.
///
/// A tick looks each node it judges up in a dozen maps keyed by name, most of them as large as
/// the fleet: at 100,000 nodes each lookup is a cache miss or two, and reading the name's bytes
/// to compare the key found is one more. So two names are compared by address first (which
/// `Arc<str>` itself does not do: its shortcut is only for sized values), and [`FleetFacts`]
/// hands out one allocation per name ([`FleetFacts::name_of`]) that everything else clones.
/// Equal names at different addresses still compare, hash and order as their text does.
#[derive(Clone)]
pub struct NodeName(std::sync::Arc<str>);

impl PartialEq for NodeName {
    fn eq(&self, other: &NodeName) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for NodeName {}

impl std::hash::Hash for NodeName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the text hashes: a map keyed by name is looked up by `&str` too.
        (*self.0).hash(state);
    }
}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &NodeName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeName {
    fn cmp(&self, other: &NodeName) -> std::cmp::Ordering {
        if std::sync::Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        (*self.0).cmp(&*other.0)
    }
}

impl std::ops::Deref for NodeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeName {
    fn from(name: &str) -> NodeName {
        NodeName(name.into())
    }
}

impl From<String> for NodeName {
    fn from(name: String) -> NodeName {
        NodeName(name.into())
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

/// A map keyed by node name. Every tick looks each node up in several of these, so they hash
/// with foldhash (seeded per process) rather than SipHash: node names come from the apiserver,
/// not from an attacker able to choose colliding keys at will.
pub type NodeMap<V> = HashMap<NodeName, V, foldhash::fast::RandomState>;

/// A set of node names, hashed as [`NodeMap`] is.
pub type NodeSet = std::collections::HashSet<NodeName, foldhash::fast::RandomState>;

/// What changed in a [`FleetFacts`] since it was last asked ([`FleetFacts::take_changed`]).
#[derive(Debug, Default, Clone)]
pub struct Changed {
    /// Everything may have changed (a blind spell discounted every age).
    pub all: bool,
    /// The nodes whose node, Lease, probe or agent facts changed.
    pub nodes: NodeSet,
    /// The nodes whose Lease was renewed (and nothing else noted in `nodes`): the hot path, one
    /// per node every ~10 s. A renewal only moves a live Lease's deadline, so the docket may let
    /// it wait for that deadline on a node it judged quietly healthy ([`crate::docket`]).
    pub renewed: NodeSet,
}

/// The fleet as pulsecheck sees it: facts per node name, Leases per node name.
#[derive(Debug, Default, Clone)]
pub struct FleetFacts {
    /// Nodes by name.
    pub nodes: NodeMap<NodeFacts>,
    /// Node Leases (namespace `kube-node-lease`) by name, which is the node's name.
    pub leases: NodeMap<LeaseFacts>,
    /// Kubelet probe records by node name.
    pub probes: NodeMap<ProbeFacts>,
    /// Node agents' reports by node name (empty unless the opt-in agent runs).
    pub agents: NodeMap<AgentFacts>,
    /// Why the agents' reports cannot be relied on right now, if they cannot: their watch has
    /// not listed them, fails, or went silent while agents exist (set by
    /// [`crate::observe::View::see`]). Their reports are then no evidence either way, and health
    /// on a node with an agent is not confirmed.
    pub agents_hidden: Option<String>,
    /// What changed since the decision loop last asked: every method that changes a node's
    /// facts notes it here, so a tick judges again only what changed (see [`crate::docket`]).
    changed: Changed,
    /// The nodes whose `uncordon_seen` mark was set since [`FleetFacts::take_uncordons`].
    uncordoned: NodeSet,
}

impl FleetFacts {
    /// What changed since the last call; the record starts empty again.
    pub fn take_changed(&mut self) -> Changed {
        std::mem::take(&mut self.changed)
    }

    /// The one allocation of name `name` that the facts share with everything keyed by it
    /// (see [`NodeName`]): the key of whichever map holds the name already, else a new one.
    pub fn name_of(&self, name: &str) -> NodeName {
        fn key<V>(map: &NodeMap<V>, name: &str) -> Option<NodeName> {
            map.get_key_value(name).map(|(k, _)| k.clone())
        }
        key(&self.nodes, name)
            .or_else(|| key(&self.leases, name))
            .or_else(|| key(&self.probes, name))
            .or_else(|| key(&self.agents, name))
            .unwrap_or_else(|| NodeName::from(name))
    }

    fn touch(&mut self, name: &str) {
        if !self.changed.all && !self.changed.nodes.contains(name) {
            // The map's own name where it has one: no new allocation per renewal.
            let key = self.name_of(name);
            self.changed.nodes.insert(key);
        }
    }

    /// Applies a Node seen by a watch (added, modified, or re-listed).
    pub fn apply_node(&mut self, node: &SlimNode, scope: &Scope, now: Timestamp) {
        let Some(name) = node.metadata.name.as_deref() else { return };
        let facts = NodeFacts::observe(node, self.nodes.get(name), scope, now);
        let uncordon_seen = facts.uncordon_seen;
        if self.nodes.get(name).is_some_and(|old| old.uid != facts.uid) {
            // Re-created under the same name (a Delete the watch never delivered): the old
            // machine's probe record says nothing about the new one.
            self.probes.remove(name);
        }
        match self.nodes.get_mut(name) {
            Some(existing) => *existing = facts,
            None => {
                let key = self.name_of(name);
                self.nodes.insert(key, facts);
            }
        }
        // After the insert: a node seen for the first time is noted under the map's name.
        self.touch(name);
        if uncordon_seen && !self.uncordoned.contains(name) {
            let key = self.name_of(name);
            self.uncordoned.insert(key);
        }
    }

    /// Records what node `name`'s kubelet says of its status cadence (`/configz`).
    /// A `/configz` read asked for at `asked_at` counts as read after the node's latest report
    /// only if pulsecheck saw no report after it was asked for: a kubelet that restarted (with
    /// another configuration) just after answering reports at once, possibly before the read is
    /// folded in here.
    pub fn record_kubelet_cadence(&mut self, name: &str, cadence: KubeletCadence, asked_at: Timestamp) {
        self.touch(name);
        if let Some(node) = self.nodes.get_mut(name) {
            node.cadence =
                if node.status.observed_at > asked_at { node.cadence.with_kubelet_read_before_report(cadence) } else { node.cadence.with_kubelet(cadence) };
        }
    }

    /// Marks node `name`'s current gap as not a cadence (see [`NodeFacts::uncadenced_gap`]).
    pub fn mark_uncadenced_gap(&mut self, name: &str) {
        if let Some(node) = self.nodes.get_mut(name)
            && !node.uncadenced_gap
        {
            node.uncadenced_gap = true;
            self.touch(name);
        }
    }

    /// Forgets a deleted Node (and its probe record).
    pub fn delete_node(&mut self, name: &str) {
        self.touch(name);
        self.nodes.remove(name);
        self.probes.remove(name);
    }

    /// Records the outcome of a kubelet probe of node `name`; `expiry` is how long a result
    /// counts (a longer gap between results breaks a run of failures).
    pub fn record_probe(&mut self, name: &str, outcome: ProbeOutcome, now: Timestamp, expiry: Duration) {
        if self.nodes.contains_key(name) {
            self.touch(name);
            match self.probes.get_mut(name) {
                Some(p) => p.record(outcome, now, expiry),
                None => {
                    let mut p = ProbeFacts::default();
                    p.record(outcome, now, expiry);
                    let key = self.name_of(name);
                    self.probes.insert(key, p);
                }
            }
        }
    }

    /// Applies a Lease seen by a watch.
    pub fn apply_lease(&mut self, lease: &SlimLease, now: Timestamp) {
        let Some(name) = lease.metadata.name.as_deref() else { return };
        self.apply_lease_renewal(name, lease.renew_time(), now);
        if let Some(l) = self.leases.get_mut(name)
            && l.duration != lease.duration()
        {
            l.duration = lease.duration();
            self.touch(name);
        }
    }

    /// Applies one observed `renewTime` of the Lease `name` (the hot path: one per renewal).
    pub fn apply_lease_renewal(&mut self, name: &str, renew_time: Option<Timestamp>, now: Timestamp) {
        match self.leases.get_mut(name) {
            Some(l) if l.renew.value == renew_time => {}
            Some(l) => {
                l.renew = Heartbeat::advance(Some(&l.renew), renew_time, now);
                if !self.changed.all && !self.changed.nodes.contains(name) && !self.changed.renewed.contains(name) {
                    let key = self.name_of(name);
                    self.changed.renewed.insert(key);
                }
            }
            None => {
                let key = self.name_of(name);
                self.leases.insert(key, LeaseFacts { renew: Heartbeat::advance(None, renew_time, now), duration: None });
                self.touch(name);
            }
        }
    }

    /// The nodes seen uncordoned since the last call (see [`NodeFacts::uncordon_seen`]), whatever
    /// they are now; the marks are cleared.
    pub fn take_uncordons(&mut self) -> Vec<NodeName> {
        let mut seen = Vec::new();
        for name in std::mem::take(&mut self.uncordoned) {
            if let Some(f) = self.nodes.get_mut(&name)
                && std::mem::take(&mut f.uncordon_seen)
            {
                seen.push(name);
            }
        }
        seen
    }

    /// Forgets a deleted Lease.
    pub fn delete_lease(&mut self, name: &str) {
        if self.leases.remove(name).is_some() {
            self.touch(name);
        }
    }

    /// Applies an agent Lease seen by a watch; a Lease whose name is not an agent's is ignored.
    pub fn apply_agent_lease(&mut self, lease: &SlimAgentLease, now: Timestamp) {
        let Some(node) = lease.metadata.name.as_deref().and_then(agent::node_of) else { return };
        let facts = AgentFacts::observe(lease, self.agents.get(node), now);
        self.touch(node);
        match self.agents.get_mut(node) {
            Some(existing) => *existing = facts,
            None => {
                let key = self.name_of(node);
                self.agents.insert(key, facts);
            }
        }
    }

    /// Forgets a deleted agent Lease (named `lease`).
    pub fn delete_agent_lease(&mut self, lease: &str) {
        if let Some(node) = agent::node_of(lease)
            && self.agents.remove(node).is_some()
        {
            self.touch(node);
        }
    }

    /// Forgets the agent of node `node` (its Lease is gone).
    pub fn delete_agent_node(&mut self, node: &str) {
        if self.agents.remove(node).is_some() {
            self.touch(node);
        }
    }

    /// The agent Lease names the view holds, for pruning after a re-list.
    pub fn agent_lease_names(&self) -> Vec<String> {
        self.agents.keys().filter_map(|n| agent::lease_name(n)).collect()
    }

    /// Takes the blind spell `from..until` off every age pulsecheck measures from the
    /// apiserver: time it could not see is no evidence of silence. Each observation moves
    /// forward by the part of the spell that came after it — one made before the spell by the
    /// whole spell, one made during it to `until` — so a status 9 minutes old before a
    /// 15-minute outage is 9 minutes old after it, and no heartbeat ever moves past `until`.
    pub fn discount(&mut self, from: Timestamp, until: Timestamp) {
        self.discount_heartbeats(from, until, true);
    }

    /// [`FleetFacts::discount`] for NodeStatus alone: a Node watch that was silent on its own
    /// hid status changes, while the Lease watch kept seeing renewals (and their absence).
    pub fn discount_status(&mut self, from: Timestamp, until: Timestamp) {
        self.discount_heartbeats(from, until, false);
    }

    fn discount_heartbeats(&mut self, from: Timestamp, until: Timestamp, leases: bool) {
        if until <= from {
            return;
        }
        self.changed.all = true;
        // Part of every current gap went unseen: none of them is a cadence.
        for node in self.nodes.values_mut() {
            node.uncadenced_gap = true;
        }
        let shifted = |at: Timestamp| -> Timestamp {
            if at >= until {
                return at;
            }
            let blind_after_it = until.duration_since(at.max(from));
            at.checked_add(blind_after_it).unwrap_or(until).min(until)
        };
        for node in self.nodes.values_mut() {
            node.status.observed_at = shifted(node.status.observed_at);
            if let Some(since) = node.os_image.unknown_since {
                node.os_image.unknown_since = Some(shifted(since));
            }
        }
        if leases {
            for lease in self.leases.values_mut() {
                lease.renew.observed_at = shifted(lease.renew.observed_at);
            }
            for agent in self.agents.values_mut() {
                agent.renew.observed_at = shifted(agent.renew.observed_at);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders for Nodes and Leases in unit tests.
    use k8s_openapi::{
        api::{
            coordination::v1::{Lease, LeaseSpec},
            core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint},
        },
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
        jiff::Timestamp,
    };

    /// A Node builder: `node("n1").ready().heartbeat(t).os_image("Unknown").build()`.
    pub struct NodeBuilder(Node);

    pub fn node(name: &str) -> NodeBuilder {
        NodeBuilder(Node {
            metadata: ObjectMeta { name: Some(name.into()), uid: Some(format!("uid-{name}")), ..Default::default() },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus { node_info: Some(NodeSystemInfo { os_image: "Ubuntu 24.04.1 LTS".into(), ..Default::default() }), ..Default::default() }),
        })
    }

    impl NodeBuilder {
        fn condition(mut self, type_: &str, status: &str, reason: &str, heartbeat: Option<Timestamp>) -> Self {
            let conds = self.0.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
            conds.retain(|c| c.type_ != type_);
            conds.push(NodeCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                last_heartbeat_time: heartbeat.map(Time),
                ..Default::default()
            });
            self
        }
        pub fn ready_at(self, heartbeat: Timestamp) -> Self {
            self.condition("Ready", "True", "KubeletReady", Some(heartbeat))
        }
        pub fn not_ready_at(self, status: &str, heartbeat: Timestamp) -> Self {
            self.condition("Ready", status, "NodeStatusUnknown", Some(heartbeat))
        }
        /// pulsecheck's own condition, as an earlier tick wrote it.
        pub fn ours(mut self, status: &str, reason: &str, message: &str) -> Self {
            self = self.condition(crate::names::CONDITION_TYPE, status, reason, None);
            let conds = self.0.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
            conds.last_mut().expect("just pushed").message = Some(message.into());
            self
        }
        pub fn problem(self, type_: &str, reason: &str) -> Self {
            self.condition(type_, "True", reason, None)
        }
        pub fn os_image(mut self, image: &str) -> Self {
            self.0.status.get_or_insert_with(Default::default).node_info.get_or_insert_with(Default::default).os_image = image.into();
            self
        }
        pub fn label(mut self, k: &str, v: &str) -> Self {
            self.0.metadata.labels.get_or_insert_with(Default::default).insert(k.into(), v.into());
            self
        }
        pub fn uid(mut self, uid: &str) -> Self {
            self.0.metadata.uid = Some(uid.into());
            self
        }
        pub fn taint(mut self, key: &str) -> Self {
            self.0.spec.get_or_insert_with(Default::default).taints.get_or_insert_with(Vec::new).push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
            self
        }
        pub fn unschedulable(mut self, on: bool) -> Self {
            self.0.spec.get_or_insert_with(Default::default).unschedulable = Some(on);
            self
        }
        /// pulsecheck's record on the node ([`crate::names::REMEDIATION_ANNOTATION`]).
        pub fn record(mut self, record: &super::Remediation) -> Self {
            let value = serde_json::to_string(record).expect("a record serializes");
            self.0.metadata.annotations.get_or_insert_with(Default::default).insert(crate::names::REMEDIATION_ANNOTATION.into(), value);
            self
        }
        pub fn build(self) -> super::SlimNode {
            super::SlimNode::from_node(&self.0)
        }
    }

    pub fn lease(name: &str, renew: Timestamp) -> super::SlimLease {
        super::SlimLease::from_lease(&Lease {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("kube-node-lease".into()), ..Default::default() },
            spec: Some(LeaseSpec { renew_time: Some(MicroTime(renew)), holder_identity: Some(name.into()), ..Default::default() }),
        })
    }

    /// A Lease with `spec.leaseDurationSeconds`.
    pub fn lease_lasting(name: &str, renew: Timestamp, seconds: i32) -> super::SlimLease {
        super::SlimLease::from_lease(&Lease {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("kube-node-lease".into()), ..Default::default() },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renew)),
                holder_identity: Some(name.into()),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        })
    }

    /// Node `node`'s agent Lease, renewed at `renew`, reporting `report` (duration 40 s).
    pub fn agent_lease(node: &str, renew: Timestamp, report: &crate::agent::Report) -> super::SlimAgentLease {
        let lease = Lease {
            metadata: ObjectMeta {
                name: crate::agent::lease_name(node),
                namespace: Some("pulsecheck".into()),
                annotations: Some([(crate::agent::REPORT_ANNOTATION.to_string(), report.to_annotation())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renew)),
                holder_identity: Some(format!("agent-{node}")),
                lease_duration_seconds: Some(40),
                ..Default::default()
            }),
        };
        serde_json::to_value(&lease).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }

    pub fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid test timestamp")
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    /// Names compare, hash and order by their text wherever they were allocated; the facts give
    /// each name one allocation, whichever object was seen first, so the maps keyed by it
    /// compare keys by address.
    #[test]
    fn a_name_is_its_text_and_the_facts_hold_one_allocation_of_it() {
        use std::hash::BuildHasher;
        let (a, b) = (NodeName::from("node-1"), NodeName::from(String::from("node-1")));
        assert!(!std::sync::Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        let s = foldhash::fast::RandomState::default();
        assert_eq!(s.hash_one(&a), s.hash_one("node-1"), "looked up by &str as by name");
        let (two, ten) = (NodeName::from("node-2"), NodeName::from("node-10"));
        assert!(a < two && ten < two && a != two);

        let scope = Scope { taint_key: "t".into(), ..Default::default() };
        let mut fleet = FleetFacts::default();
        // A Node seen first, alone: noted as changed under the map's own name.
        fleet.apply_node(&node("first").ready_at(t(0)).build(), &scope, t(0));
        let noted = fleet.take_changed().nodes.into_iter().next().expect("noted").0;
        assert!(std::sync::Arc::ptr_eq(&noted, &fleet.name_of("first").0));
        // The Lease seen before its Node, a probe and an agent after.
        fleet.apply_lease_renewal("n", Some(t(0)), t(0));
        fleet.apply_node(&node("n").ready_at(t(0)).build(), &scope, t(0));
        fleet.record_probe("n", ProbeOutcome::Success, t(1), Duration::from_secs(60));
        let _ = fleet.take_changed();
        fleet.apply_lease_renewal("n", Some(t(10)), t(10));
        let key = |keys: Option<&NodeName>| keys.expect("held").0.clone();
        let lease = key(fleet.leases.get_key_value("n").map(|(k, _)| k));
        for other in [
            key(fleet.nodes.get_key_value("n").map(|(k, _)| k)),
            key(fleet.probes.get_key_value("n").map(|(k, _)| k)),
            key(fleet.take_changed().renewed.iter().next()),
            fleet.name_of("n").0,
        ] {
            assert!(std::sync::Arc::ptr_eq(&lease, &other), "one allocation of the name");
        }
        assert!(!std::sync::Arc::ptr_eq(&lease, &fleet.name_of("m").0));
    }

    #[test]
    fn an_uncordon_is_remembered_until_taken_even_when_a_cordon_follows_it() {
        let scope = Scope { taint_key: "t".into(), ..Default::default() };
        let cordoned = |c: bool| {
            let mut n = node("n").ready_at(t(0)).build();
            n.spec.get_or_insert_default().unschedulable = Some(c);
            n
        };
        let mut fleet = FleetFacts::default();
        fleet.apply_node(&cordoned(false), &scope, t(0));
        fleet.apply_node(&cordoned(true), &scope, t(1));
        assert!(fleet.take_uncordons().is_empty(), "a cordon is no uncordon");
        fleet.apply_node(&cordoned(false), &scope, t(2));
        fleet.apply_node(&cordoned(true), &scope, t(3));
        assert_eq!(fleet.take_uncordons(), vec![NodeName::from("n")]);
        assert!(fleet.take_uncordons().is_empty(), "taken once");
    }

    #[test]
    fn a_blind_spell_is_taken_off_every_age_but_never_moves_an_observation_past_its_end() {
        let scope = Scope { taint_key: "t".into(), ..Default::default() };
        let mut fleet = FleetFacts::default();
        fleet.apply_node(&node("before").ready_at(t(0)).os_image("Unknown").build(), &scope, t(100));
        fleet.apply_node(&node("during").ready_at(t(0)).build(), &scope, t(1050));
        fleet.apply_node(&node("after").ready_at(t(0)).build(), &scope, t(2000));
        fleet.apply_lease(&lease("before", t(90)), t(900));
        fleet.discount(t(1000), t(1100));
        assert_eq!(fleet.nodes["before"].status.observed_at, t(200));
        assert_eq!(fleet.nodes["before"].os_image.unknown_since, Some(t(200)));
        assert_eq!(fleet.leases["before"].renew.observed_at, t(1000));
        assert_eq!(fleet.nodes["during"].status.observed_at, t(1100));
        assert_eq!(fleet.nodes["after"].status.observed_at, t(2000));
        // No spell, no change.
        fleet.discount(t(3000), t(3000));
        assert_eq!(fleet.nodes["before"].status.observed_at, t(200));
    }

    #[test]
    fn a_node_re_created_with_the_same_name_starts_without_the_old_node_s_probe_record() {
        let scope = Scope::default();
        let mut f = FleetFacts::default();
        f.apply_node(&node("n").uid("old").ready_at(t(0)).build(), &scope, t(0));
        f.record_probe("n", ProbeOutcome::Success, t(1), Duration::from_secs(90));
        f.record_probe("n", ProbeOutcome::Timeout, t(2), Duration::from_secs(90));
        // Deleted and re-created between two watch events (a missed Delete): a new uid.
        f.apply_node(&node("n").uid("new").ready_at(t(3)).build(), &scope, t(3));
        assert_eq!(f.probes.get("n"), None, "the new node inherited the old node's probes");
        // The same node seen again keeps its record.
        f.record_probe("n", ProbeOutcome::Success, t(4), Duration::from_secs(90));
        f.apply_node(&node("n").uid("new").ready_at(t(5)).build(), &scope, t(5));
        assert!(f.probes.get("n").is_some_and(|p| p.reached));
    }

    fn scope() -> Scope {
        Scope {
            selector: Selector::default(),
            taint_key: names::TAINT_KEY.into(),
            problem_conditions: vec!["ReadonlyFilesystem".into(), "KernelDeadlock".into()],
        }
    }

    #[test]
    fn heartbeat_observation_time_moves_only_when_the_value_changes() {
        let mut fleet = FleetFacts::default();
        // The node's clock is an hour ahead: only changes matter, never the value.
        let skewed = t(3600);
        fleet.apply_node(&node("n1").ready_at(skewed).build(), &scope(), t(0));
        fleet.apply_node(&node("n1").ready_at(skewed).build(), &scope(), t(100));
        assert_eq!(fleet.nodes["n1"].status.observed_at, t(0));
        fleet.apply_node(&node("n1").ready_at(t(3610)).build(), &scope(), t(110));
        assert_eq!(fleet.nodes["n1"].status.observed_at, t(110));
    }

    #[test]
    fn relisted_unchanged_lease_keeps_its_observation_time() {
        let mut fleet = FleetFacts::default();
        fleet.apply_lease(&lease("n1", t(-7200)), t(0));
        fleet.apply_lease(&lease("n1", t(-7200)), t(60));
        assert_eq!(fleet.leases["n1"].renew.observed_at, t(0));
        fleet.apply_lease(&lease("n1", t(-7190)), t(70));
        assert_eq!(fleet.leases["n1"].renew.observed_at, t(70));
    }

    #[test]
    fn os_image_turning_unknown_is_told_apart_from_always_unknown() {
        let mut fleet = FleetFacts::default();
        fleet.apply_node(&node("a").ready_at(t(0)).build(), &scope(), t(0));
        fleet.apply_node(&node("a").ready_at(t(0)).os_image("unknown").build(), &scope(), t(10));
        let a = &fleet.nodes["a"].os_image;
        assert!(a.turned_unknown);
        assert_eq!(a.unknown_since, Some(t(10)));

        fleet.apply_node(&node("b").ready_at(t(0)).os_image("Unknown").build(), &scope(), t(0));
        let b = &fleet.nodes["b"].os_image;
        assert!(!b.turned_unknown);
        assert_eq!(b.unknown_since, Some(t(0)));

        // Staying Unknown keeps the first time; recovering clears it.
        fleet.apply_node(&node("a").ready_at(t(20)).os_image("Unknown").build(), &scope(), t(30));
        assert_eq!(fleet.nodes["a"].os_image.unknown_since, Some(t(10)));
        fleet.apply_node(&node("a").ready_at(t(30)).build(), &scope(), t(40));
        assert_eq!(fleet.nodes["a"].os_image.unknown_since, None);
    }

    #[test]
    fn recreated_node_starts_afresh() {
        let mut fleet = FleetFacts::default();
        fleet.apply_node(&node("n").ready_at(t(0)).build(), &scope(), t(0));
        fleet.apply_node(&node("n").uid("other").ready_at(t(0)).build(), &scope(), t(500));
        assert_eq!(fleet.nodes["n"].first_seen, t(500));
        assert_eq!(fleet.nodes["n"].status.observed_at, t(500));
    }

    #[test]
    fn only_listed_problem_conditions_that_are_true_count() {
        let mut fleet = FleetFacts::default();
        let n = node("n").ready_at(t(0)).problem("ReadonlyFilesystem", "FilesystemIsReadOnly").problem("FrequentDockerRestart", "x").build();
        fleet.apply_node(&n, &scope(), t(0));
        assert_eq!(fleet.nodes["n"].problems, vec![ProblemCondition { kind: "ReadonlyFilesystem".into(), reason: "FilesystemIsReadOnly".into() }]);
    }

    #[test]
    fn selector_parses_and_matches() {
        let s = Selector::parse("role=worker, pool!=gpu,ssd,!legacy").unwrap();
        let mut l = BTreeMap::new();
        l.insert("role".to_string(), "worker".to_string());
        l.insert("ssd".to_string(), "".to_string());
        assert!(s.matches(&l));
        l.insert("legacy".into(), "1".into());
        assert!(!s.matches(&l));
        assert!(Selector::parse("env in (a,b)").is_err());
        assert!(Selector::parse("").unwrap().matches(&BTreeMap::new()));
    }

    #[test]
    fn slim_node_parses_what_decisions_need_and_skips_the_rest() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u1", "resourceVersion": "42", "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2026-11-28T04:00:00Z"}],
                "nodeInfo": {"osImage": "Unknown", "kubeletVersion": "v1.36.3", "machineID": "m", "systemUUID": "s", "bootID": "b",
                             "kernelVersion": "6.1", "containerRuntimeVersion": "containerd://2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                "images": [{"names": ["registry.example/huge:1"], "sizeBytes": 123}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
            }
        });
        let node: SlimNode = serde_json::from_value(json).unwrap();
        assert!(node.metadata.managed_fields.is_none());
        let facts = NodeFacts::observe(&node, None, &scope(), t(0));
        assert_eq!(facts.ready, ReadyState::True);
        assert!(is_unknown(&facts.os_image.current));
        assert!(facts.unschedulable);
        assert_eq!(facts.kubelet.port, Some(10250));
        assert_eq!(facts.kubelet.addresses, vec![("InternalIP".to_string(), "10.0.0.1".to_string())]);
        assert_eq!(facts.status.value, Some("2026-11-28T04:00:00Z".parse().unwrap()));
    }

    #[test]
    fn damaged_remediation_annotation_reads_as_nothing_done() {
        let mut a = BTreeMap::new();
        a.insert(names::REMEDIATION_ANNOTATION.to_string(), "{not json".to_string());
        assert_eq!(remediation_from_annotations(Some(&a)), Remediation::default());
        a.insert(names::REMEDIATION_ANNOTATION.to_string(), r#"{"tainted":true}"#.to_string());
        assert!(remediation_from_annotations(Some(&a)).tainted);
    }
}
