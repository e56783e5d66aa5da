//! The write edge: taints, cordons, pulsecheck's node condition, and Events.
//!
//! The controller decides; this module carries out. A decision arrives as data — one [`Step`]
//! for one node ([`Planned`]) — and [`Actuator::carry_out`] takes it the whole way: the confirming
//! fresh read, the patch, the retries, the log line and the Event that report it. It hands back an
//! [`Outcome`] (what changed, the freshest Node it saw, the error if it failed) and keeps no state:
//! the controller folds the outcome into its view, the guard's memory, the back-off and the
//! metrics. So a write has one shape whatever it is, and every write to a Node passes the
//! controller as a planned step before it happens.
//!
//! Rules this module keeps, because a node is shared with people and other controllers:
//! * Every write is a patch with field manager `pulsecheck` and a timeout; nothing is ever PUT
//!   from a cache.
//! * `spec.taints` is an atomic list: a taint edit starts from a fresh GET and carries that
//!   GET's `resourceVersion`, so a concurrent change by anyone else yields 409 Conflict and the
//!   edit is redone from a new GET. A remediation goes further: it patches the very read that
//!   confirmed the verdict, and on a conflict it reads and has the controller judge again before
//!   retrying. Only the taint with pulsecheck's key is ever added or removed.
//! * What pulsecheck did is written in the same patch as the action (annotation
//!   `pulsecheck.dev/remediation`), so a restarted controller knows its own actions, and a
//!   cordon is undone only when the record says pulsecheck set it.
//! * The `HeartbeatConsistent` condition is written with a strategic-merge patch on
//!   `nodes/status` that names only that condition: the kubelet's conditions are untouched.
//!
//! This module decides nothing: whether a fresh read still calls for a remediation is asked of
//! the judge the controller passes in, and what to write comes from [`crate::controller`].

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{ObjectReference, Taint},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde_json::{Value, json};
use tracing::{debug, error, info, instrument, warn};

use clap::ArgAction;

use crate::{
    facts::{SlimAgentLease, SlimLease, SlimNode, remediation_from_annotations},
    leader::LeaderCheck,
    metrics::{Metrics, WriteKind, WriteResult},
    names,
    verdict::Assessment,
};

/// What pulsecheck does to a zombie node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Action {
    /// Add the pulsecheck taint.
    Taint,
    /// Set `spec.unschedulable` (recorded so only our cordons are undone).
    Cordon,
}

/// Effect of the pulsecheck taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaintEffect {
    /// New pods are not scheduled on the node; running pods stay.
    #[value(name = "NoSchedule")]
    NoSchedule,
    /// Like NoSchedule, and pods without a matching toleration are evicted.
    #[value(name = "NoExecute")]
    NoExecute,
}

impl TaintEffect {
    /// The effect as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// Which nodes pulsecheck looks after and what it does to zombies.
#[derive(Debug, Clone, clap::Args)]
pub struct ActionArgs {
    /// Only nodes matching this label selector are eligible (the rest are Excluded).
    #[arg(long, env = "PULSECHECK_NODE_SELECTOR", value_name = "SELECTOR", default_value = "")]
    pub node_selector: String,
    /// What to do to a zombie: taint, cordon, or both (comma-separated).
    #[arg(long, env = "PULSECHECK_ACTION", value_enum, value_delimiter = ',', default_value = "taint")]
    pub action: Vec<Action>,
    /// Key of the taint pulsecheck adds.
    #[arg(long, env = "PULSECHECK_TAINT_KEY", value_name = "KEY", default_value = crate::names::TAINT_KEY, value_parser = crate::parse::taint_key)]
    pub taint_key: String,
    /// Effect of the taint.
    #[arg(long, env = "PULSECHECK_TAINT_EFFECT", value_enum, default_value = "NoSchedule")]
    pub taint_effect: TaintEffect,
    /// Decide and report everything, write nothing to any Node.
    #[arg(long, env = "PULSECHECK_DRY_RUN", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
}

/// What pulsecheck does to a zombie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actions {
    /// Add the taint.
    pub taint: bool,
    /// Cordon.
    pub cordon: bool,
    /// Taint key.
    pub taint_key: String,
    /// Taint effect.
    pub taint_effect: TaintEffect,
}

impl Default for Actions {
    /// `--action=taint`, pulsecheck's own taint key, `NoSchedule`: the flags' defaults.
    fn default() -> Self {
        Actions { taint: true, cordon: false, taint_key: names::TAINT_KEY.into(), taint_effect: TaintEffect::NoSchedule }
    }
}

impl Actions {
    /// What `args` ask for; `None` when `--action` names nothing.
    pub fn from_args(args: &ActionArgs) -> Option<Actions> {
        (!args.action.is_empty()).then(|| Actions {
            taint: args.action.contains(&Action::Taint),
            cordon: args.action.contains(&Action::Cordon),
            taint_key: args.taint_key.clone(),
            taint_effect: args.taint_effect,
        })
    }

    /// The actions in words, for Events: `taint pulsecheck.dev/zombie:NoSchedule and cordon`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.taint {
            parts.push(format!("taint {}:{}", self.taint_key, self.taint_effect.as_str()));
        }
        if self.cordon {
            parts.push("cordon".into());
        }
        parts.join(" and ")
    }
}

/// Errors writing to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or failed the request.
    #[error("{what} node {node}: {source}")]
    Api { what: &'static str, node: String, source: kube::Error },
    /// The request did not finish within the request timeout.
    #[error("{what} node {node}: no answer within {timeout:?}")]
    Timeout { what: &'static str, node: String, timeout: Duration },
    /// This instance is no longer the leader: nothing was sent.
    #[error("{what} node {node}: not sent, this instance is no longer the leader")]
    NotLeader { what: &'static str, node: String },
    /// The node kept changing under us.
    #[error("{what} node {node}: still conflicting after {attempts} fresh reads")]
    Conflict { what: &'static str, node: String, attempts: u32 },
}

impl Error {
    /// A small fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Api { source: kube::Error::Api(s), .. } if s.code == 403 => "forbidden",
            Error::Api { source: kube::Error::Api(s), .. } if s.code == 404 => "not_found",
            Error::Api { .. } => "api",
            Error::Timeout { .. } => "timeout",
            Error::NotLeader { .. } => "not_leader",
            Error::Conflict { .. } => "conflict",
        }
    }

    /// True when the node no longer exists.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a remediation or release changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The taint was added (remediate) or removed (release).
    pub taint: bool,
    /// The node was cordoned (remediate) or uncordoned (release).
    pub cordon: bool,
}

/// Attempts at a conflicting taint edit before giving up until the next tick.
pub const CONFLICT_ATTEMPTS: u32 = 5;

/// One step the controller planned for one node: what [`Actuator::carry_out`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The node's name.
    pub node: String,
    /// The node's `metadata.uid`, so its Events name this node and not a namesake created later.
    pub uid: Option<String>,
    /// What to do.
    pub step: Step,
}

/// A write to a Node, or an Event about it, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Taint and/or cordon the node (`--action`) once a fresh read confirms the verdict: the
    /// patch carries that read's `resourceVersion`, and a conflict means read and judge again.
    /// With `dry_run`, confirm and only report what would be done.
    Remediate {
        /// `--dry-run`: write nothing.
        dry_run: bool,
    },
    /// Undo pulsecheck's taint, its cordon and its record. With `dry_run`, only report it.
    Release {
        /// Why the node is released (its verdict, explained), for the log and the Event.
        why: String,
        /// Whether the cordon the record claims is still pulsecheck's to undo: not once somebody
        /// else uncordoned the node since — a cordon there now is theirs, even while the record
        /// (not yet disowned: a follower saw it, or the disowning write failed) still claims it.
        undo_cordon: bool,
        /// `--dry-run`: write nothing.
        dry_run: bool,
    },
    /// Drop the cordon from pulsecheck's record after somebody else uncordoned the node: from
    /// then on `spec.unschedulable` is theirs.
    DisownCordon,
    /// Write back pulsecheck's record of its cordon after somebody deleted it while the cordon
    /// stayed (`since`: the record's start), so that the cordon is undone on recovery.
    RestoreRecord {
        /// When the remediation started, as the deleted record said.
        since: Option<Timestamp>,
    },
    /// Set pulsecheck's `HeartbeatConsistent` condition.
    SetCondition {
        /// `True` or `False`.
        status: &'static str,
        /// The condition's reason.
        reason: &'static str,
        /// The condition's message.
        message: String,
        /// The status the node has now, if the condition is there (`lastTransitionTime` moves
        /// only when the status changes).
        previous_status: Option<String>,
    },
    /// Publish an Event on the node.
    Report {
        /// A Warning Event (else Normal).
        warning: bool,
        /// The Event's reason.
        reason: &'static str,
        /// The Event's action.
        action: &'static str,
        /// The Event's note.
        note: String,
    },
}

/// What carrying out one step did.
#[derive(Debug)]
pub struct Outcome {
    /// What changed.
    pub effect: Effect,
    /// The Node as the step last read or wrote it — fresher than any watch, for the view.
    pub node: Option<SlimNode>,
}

/// What changed on the cluster (or would have, in a dry run).
#[derive(Debug)]
pub enum Effect {
    /// The node was remediated: the taint and/or cordon written (or, when nothing needed to
    /// change, only the record).
    Remediated(Change),
    /// Dry run: the verdict was confirmed on a fresh read; nothing was written.
    WouldRemediate,
    /// The fresh read did not confirm the verdict: nothing was written.
    Unconfirmed,
    /// pulsecheck's taint, cordon and record were removed (the change says which were there).
    Released(Change),
    /// Dry run: the release was reported; nothing was written.
    WouldRelease,
    /// pulsecheck's record no longer claims the cordon.
    CordonDisowned,
    /// The node was cordoned again before the record could be changed: nothing was disowned.
    CordonKept,
    /// pulsecheck's record of its cordon was written back.
    RecordRestored,
    /// The condition was set.
    ConditionSet,
    /// The Event was published.
    Reported,
    /// The node no longer exists.
    Gone,
    /// The write failed (logged, and for a remediation reported in an Event).
    Failed(Error),
}

impl Outcome {
    fn of(effect: Effect, node: Option<SlimNode>) -> Outcome {
        Outcome { effect, node }
    }
}

/// The patch that remediates `node`, or `None` when nothing needs to change. Pure: unit-tested
/// for its shape.
pub fn remediation_patch(node: &SlimNode, actions: &Actions, now: Timestamp) -> Option<(Value, Change)> {
    let spec = node.spec.clone().unwrap_or_default();
    let mut taints = spec.taints.unwrap_or_default();
    let mut record = remediation_from_annotations(node.metadata.annotations.as_ref());
    let mut change = Change::default();
    let mut spec_patch = serde_json::Map::new();
    if actions.taint {
        if !taints.iter().any(|t| t.key == actions.taint_key) {
            taints.push(Taint {
                key: actions.taint_key.clone(),
                value: Some("true".into()),
                effect: actions.taint_effect.as_str().into(),
                time_added: Some(Time(now)),
            });
            change.taint = true;
            spec_patch.insert("taints".into(), json!(taints));
        }
        record.tainted = true;
    }
    if actions.cordon && !spec.unschedulable.unwrap_or(false) {
        // Cordon only a schedulable node, and remember that it was us: a node someone else
        // cordoned is never recorded, so it is never uncordoned by pulsecheck.
        spec_patch.insert("unschedulable".into(), json!(true));
        change.cordon = true;
        record.cordoned = true;
    }
    let previous = remediation_from_annotations(node.metadata.annotations.as_ref());
    record.since = previous.since.or(Some(now));
    if spec_patch.is_empty() && record == previous {
        return None;
    }
    let mut patch = json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": { names::REMEDIATION_ANNOTATION: serde_json::to_string(&record).unwrap_or_default() },
        },
    });
    if !spec_patch.is_empty() {
        patch["spec"] = Value::Object(spec_patch);
    }
    Some((patch, change))
}

/// The patch that writes back pulsecheck's record of its cordon (started `since`), or `None`
/// when the fresh read shows no cordon or a record already there. The change says `cordon`
/// when the record's claim of the cordon is written. Pure.
pub fn restore_record_patch(node: &SlimNode, since: Timestamp, taint_key: &str) -> Option<(Value, Change)> {
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    if !unschedulable || remediation_from_annotations(node.metadata.annotations.as_ref()).is_active() {
        return None;
    }
    let tainted = node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == taint_key));
    let record = crate::facts::Remediation { tainted, cordoned: true, since: Some(since) };
    let patch = json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": { names::REMEDIATION_ANNOTATION: serde_json::to_string(&record).unwrap_or_default() },
        },
    });
    // `cordon`: the record's claim of the cordon is what was written.
    Some((patch, Change { taint: false, cordon: true }))
}

/// What a written (or found already written) remediation is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemediationReport {
    /// The taint and/or cordon were written: one Event each.
    Changed,
    /// Nothing to change because somebody else's cordon already keeps pods off the node (and
    /// pulsecheck was asked to cordon): an `AlreadyCordoned` Event, as that cordon stays theirs.
    AlreadyCordoned,
    /// Nothing to change because pulsecheck's own remediation is already there (the watch had not
    /// delivered it yet): only a log line — nobody else did anything.
    AlreadyDone,
}

/// How to report the remediation `change` that left `node` as it is. Pure.
pub fn remediation_report(change: &Change, node: &SlimNode, actions: &Actions) -> RemediationReport {
    if change.taint || change.cordon {
        return RemediationReport::Changed;
    }
    // Unschedulable, and not by pulsecheck's own cordon on record: somebody else's.
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let ours = remediation_from_annotations(node.metadata.annotations.as_ref()).cordoned;
    if actions.cordon && unschedulable && !ours { RemediationReport::AlreadyCordoned } else { RemediationReport::AlreadyDone }
}

/// The patch that drops the cordon from pulsecheck's record once somebody else has uncordoned the
/// node (the change says `cordon`), or `None` when the record does not claim the cordon. From then on
/// `spec.unschedulable` is theirs: a later cordon by a person is never undone at release. Pure.
pub fn disown_cordon_patch(node: &SlimNode) -> Option<(Value, Change)> {
    let mut record = remediation_from_annotations(node.metadata.annotations.as_ref());
    // Planned only after an uncordon was seen on a node whose record claims the cordon: a cordon
    // there now came after it, and is somebody else's.
    if !record.cordoned {
        return None;
    }
    record.cordoned = false;
    let patch = json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": { names::REMEDIATION_ANNOTATION: serde_json::to_string(&record).unwrap_or_default() },
        },
    });
    // `cordon`: the record's claim of the cordon is what was dropped.
    Some((patch, Change { taint: false, cordon: true }))
}

/// The patch that undoes pulsecheck's own actions on `node`, or `None` when there is nothing of
/// ours on it; the cordon only with `undo_cordon` (see [`Step::Release`]). Pure.
pub fn release_patch(node: &SlimNode, taint_key: &str, undo_cordon: bool) -> Option<(Value, Change)> {
    let spec = node.spec.clone().unwrap_or_default();
    let taints = spec.taints.unwrap_or_default();
    let annotations = node.metadata.annotations.as_ref();
    let record = remediation_from_annotations(annotations);
    let has_record = annotations.is_some_and(|a| a.contains_key(names::REMEDIATION_ANNOTATION));
    let kept: Vec<&Taint> = taints.iter().filter(|t| t.key != taint_key).collect();
    let mut change = Change::default();
    let mut spec_patch = serde_json::Map::new();
    if kept.len() != taints.len() {
        spec_patch.insert("taints".into(), json!(kept));
        change.taint = true;
    }
    if undo_cordon && record.cordoned && spec.unschedulable.unwrap_or(false) {
        spec_patch.insert("unschedulable".into(), json!(false));
        change.cordon = true;
    }
    if spec_patch.is_empty() && !has_record {
        return None;
    }
    let mut patch = json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": { names::REMEDIATION_ANNOTATION: null },
        },
    });
    if !spec_patch.is_empty() {
        patch["spec"] = Value::Object(spec_patch);
    }
    Some((patch, change))
}

/// The strategic-merge patch that sets pulsecheck's condition (and only it) on `nodes/status`.
/// `lastTransitionTime` is sent only when the status changes, so it keeps its meaning.
pub fn condition_patch(status: &str, reason: &str, message: &str, previous_status: Option<&str>, now: Timestamp) -> Value {
    let mut condition = json!({
        "type": names::CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": Time(now),
    });
    if previous_status != Some(status) {
        condition["lastTransitionTime"] = json!(Time(now));
    }
    json!({ "status": { "conditions": [condition] } })
}

/// A reference to a Node for Events (cluster-scoped: Events land in namespace `default`).
pub fn node_reference(name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference { api_version: Some("v1".into()), kind: Some("Node".into()), name: Some(name.into()), uid: uid.map(Into::into), ..Default::default() }
}

/// What the confirming read before a remediation found ([`Actuator::carry_out`]).
#[derive(Debug, Clone)]
pub struct FreshRead {
    /// The Node.
    pub node: SlimNode,
    /// Its Lease in `kube-node-lease`, `None` when there is none.
    pub lease: Option<SlimLease>,
    /// Its agent's Lease: `None` when not read (no agent evidence), `Some(None)` when there is none.
    pub agent: Option<Option<SlimAgentLease>>,
}

/// Writes to Nodes and publishes Events.
#[derive(Clone)]
pub struct Actuator {
    nodes: Api<SlimNode>,
    leases: Api<SlimLease>,
    /// The node agents' Leases, read in the confirming read when agent reports are evidence
    /// (`--agent-evidence`); `None` otherwise.
    agents: Option<Api<SlimAgentLease>>,
    recorder: Recorder,
    actions: Actions,
    timeout: Duration,
    /// Leadership, checked right before every write (a step that started as leader must not
    /// finish as a follower); `None` without leader election.
    leading: Option<LeaderCheck>,
    /// Where Events are counted; `None` in `cleanup` and unit tests.
    metrics: Option<Metrics>,
}

impl Actuator {
    /// An actuator writing through `client`; `instance` names this replica in Events.
    pub fn new(client: kube::Client, actions: Actions, timeout: Duration, instance: Option<String>) -> Actuator {
        let reporter = kube::runtime::events::Reporter { controller: names::FIELD_MANAGER.into(), instance };
        Actuator {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client.clone(), names::NODE_LEASE_NAMESPACE),
            agents: None,
            recorder: Recorder::new(client, reporter),
            actions,
            timeout,
            leading: None,
            metrics: None,
        }
    }

    /// Reads the node's agent Lease from `agents` too in every confirming read: a remediation
    /// resting on an agent's report rests on a read of that report, not on a watch that may lag.
    pub fn with_agent_leases(mut self, agents: Api<SlimAgentLease>) -> Actuator {
        self.agents = Some(agents);
        self
    }

    /// Counts every Event it publishes (or fails to) in `pulsecheck_writes_total{kind="event"}`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Actuator {
        self.metrics = Some(metrics);
        self
    }

    /// Writes only while `leading` says this instance leads, each write bounded by the
    /// leadership left.
    pub fn with_leadership(mut self, leading: LeaderCheck) -> Actuator {
        self.leading = Some(leading);
        self
    }

    /// Like `bounded`, for a write: refused without sending when leadership has ended, and
    /// bounded by the leadership left.
    async fn write<T>(&self, what: &'static str, node: &str, fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
        let timeout = match self.leading.as_ref().and_then(LeaderCheck::remaining) {
            Some(left) if left.is_zero() => return Err(Error::NotLeader { what, node: node.into() }),
            Some(left) => self.timeout.min(left),
            None => self.timeout,
        };
        within(timeout, what, node, fut).await
    }

    async fn bounded<T>(&self, what: &'static str, node: &str, fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
        within(self.timeout, what, node, fut).await
    }

    fn params() -> PatchParams {
        PatchParams { field_manager: Some(names::FIELD_MANAGER.into()), ..Default::default() }
    }

    /// Carries out one planned step from its first read to the Event that reports it.
    ///
    /// `confirm` is the controller's judgement of a fresh read of the Node, its Lease and its
    /// agent's Lease ([`FreshRead`]): `Some(assessment)` when the read still calls for the
    /// remediation planned. It is asked before every remediation patch, again after each 409,
    /// and never for any other step.
    #[instrument(skip_all, fields(node = %planned.node))]
    pub async fn carry_out(&self, planned: &Planned, now: Timestamp, confirm: impl Fn(&FreshRead) -> Option<Assessment>) -> Outcome {
        let (name, uid) = (planned.node.as_str(), planned.uid.as_deref());
        match &planned.step {
            Step::Remediate { dry_run } => self.remediate(name, uid, *dry_run, now, confirm).await,
            Step::Release { why, dry_run: true, .. } => {
                info!(node = name, "dry run: would release");
                let _ = self.event(name, uid, false, "WouldRelease", "Release", format!("dry run: would release ({why})")).await;
                Outcome::of(Effect::WouldRelease, None)
            }
            Step::Release { why, undo_cordon, dry_run: false } => self.release_reported(name, uid, why, *undo_cordon).await,
            Step::DisownCordon => self.disown_reported(name, uid).await,
            Step::RestoreRecord { since } => self.restore_reported(name, uid, *since, now).await,
            Step::SetCondition { status, reason, message, previous_status } => {
                match self.set_condition(name, status, reason, message, previous_status.as_deref(), now).await {
                    Ok(node) => Outcome::of(Effect::ConditionSet, Some(node)),
                    Err(e) if e.is_not_found() => Outcome::of(Effect::Gone, None),
                    Err(e) => {
                        warn!(node = name, error = %e, "could not set the HeartbeatConsistent condition");
                        Outcome::of(Effect::Failed(e), None)
                    }
                }
            }
            Step::Report { warning, reason, action, note } => match self.event(name, uid, *warning, reason, action, note.clone()).await {
                Ok(()) => Outcome::of(Effect::Reported, None),
                Err(e) => Outcome::of(Effect::Failed(e), None),
            },
        }
    }

    /// Remediates on a read `confirm` has judged, and on a 409 reads and asks again: a patch is
    /// only ever computed from a read that was judged.
    async fn remediate(&self, name: &str, uid: Option<&str>, dry_run: bool, now: Timestamp, confirm: impl Fn(&FreshRead) -> Option<Assessment>) -> Outcome {
        let mut attempt = 1;
        loop {
            // A cached view may be stale (a missed watch event, a lagging cache), and acting on
            // it could condemn a live node: only a read of the cluster itself is judged here.
            let read = match self.fresh(name).await {
                Ok(read) => read,
                Err(e) => {
                    // Not "unconfirmed": the read failed. As a failure it backs off and counts
                    // as an error, so a node whose reads keep timing out cannot take every
                    // tick's time for writes first.
                    warn!(node = name, error = %e, "could not confirm the verdict with a fresh read; not acting");
                    return Outcome::of(Effect::Failed(e), None);
                }
            };
            let Some(confirmed) = confirm(&read) else { return Outcome::of(Effect::Unconfirmed, Some(read.node)) };
            let node = read.node;
            let why = confirmed.explain(now);
            if dry_run {
                let actions = self.actions.describe();
                info!(node = name, actions, why, "dry run: would remediate");
                let _ = self.event(name, uid, true, "WouldRemediate", "Remediate", format!("dry run: would {actions} ({why})")).await;
                return Outcome::of(Effect::WouldRemediate, Some(node));
            }
            match self.remediate_confirmed(name, &node, now).await {
                Ok((updated, change)) => {
                    self.report_remediation(name, uid, &change, &why, &updated).await;
                    return Outcome::of(Effect::Remediated(change), Some(updated));
                }
                Err(Error::Conflict { .. }) if attempt < CONFLICT_ATTEMPTS => {
                    debug!(node = name, "the node changed since the confirming read; judging it again");
                    attempt += 1;
                }
                Err(e) => {
                    let e = match e {
                        Error::Conflict { what, node, .. } => Error::Conflict { what, node, attempts: CONFLICT_ATTEMPTS },
                        e => e,
                    };
                    error!(node = name, error = %e, kind = e.label(), "remediation failed");
                    let _ = self.event(name, uid, true, "RemediationFailed", "Remediate", e.to_string()).await;
                    return Outcome::of(Effect::Failed(e), Some(node));
                }
            }
        }
    }

    /// The log line and Events of a remediation that was written.
    async fn report_remediation(&self, name: &str, uid: Option<&str>, change: &Change, why: &str, node: &SlimNode) {
        match remediation_report(change, node, &self.actions) {
            RemediationReport::AlreadyCordoned => {
                info!(
                    node = name,
                    why, "remediation recorded; nothing to change: the node is already unschedulable (cordoned by someone else, who keeps that cordon)"
                );
                let msg = format!("already cordoned by someone else; pulsecheck records the remediation and will not uncordon it ({why})");
                let _ = self.event(name, uid, true, "AlreadyCordoned", "Remediate", msg).await;
            }
            RemediationReport::AlreadyDone => {
                info!(node = name, why, "already remediated: the fresh read shows pulsecheck's remediation, which the watch had not delivered yet");
            }
            RemediationReport::Changed => {
                info!(node = name, tainted = change.taint, cordoned = change.cordon, why, "remediated");
                if change.taint {
                    let msg = format!("added taint {}:{} ({why})", self.actions.taint_key, self.actions.taint_effect.as_str());
                    let _ = self.event(name, uid, true, "Tainted", "Taint", msg).await;
                }
                if change.cordon {
                    let _ = self.event(name, uid, true, "Cordoned", "Cordon", format!("cordoned ({why})")).await;
                }
            }
        }
    }

    /// Releases the node and reports what was undone.
    async fn release_reported(&self, name: &str, uid: Option<&str>, why: &str, undo_cordon: bool) -> Outcome {
        match self.release(name, undo_cordon).await {
            Ok((node, change)) => {
                info!(node = name, untainted = change.taint, uncordoned = change.cordon, why, "released");
                let mut done = Vec::new();
                if change.taint {
                    done.push(format!("removed taint {}", self.actions.taint_key));
                }
                if change.cordon {
                    done.push("uncordoned".to_string());
                }
                if !undo_cordon && node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
                    done.push("left the cordon, somebody else's since they uncordoned the node".to_string());
                }
                if done.is_empty() {
                    done.push("cleared pulsecheck's record".into());
                }
                let _ = self.event(name, uid, false, "Released", "Release", format!("{} ({why})", done.join(", "))).await;
                Outcome::of(Effect::Released(change), Some(node))
            }
            Err(e) if e.is_not_found() => Outcome::of(Effect::Gone, None),
            Err(e) => {
                error!(node = name, error = %e, why, "release failed");
                Outcome::of(Effect::Failed(e), None)
            }
        }
    }

    /// Records that somebody else uncordoned a node pulsecheck had cordoned, so that a later
    /// cordon of theirs is never undone when pulsecheck releases the node.
    async fn disown_reported(&self, name: &str, uid: Option<&str>) -> Outcome {
        match self.disown_cordon(name).await {
            // The fresh read's record no longer claims the cordon: nothing to disown.
            Ok((node, change)) if !change.cordon => Outcome::of(Effect::CordonKept, Some(node)),
            Ok((node, _)) => {
                info!(node = name, "somebody else uncordoned the node; pulsecheck no longer owns spec.unschedulable");
                let message =
                    "spec.unschedulable was cleared by somebody else: pulsecheck will not cordon or uncordon this node again for this remediation".to_string();
                let _ = self.event(name, uid, false, "CordonTakenOver", "Record", message).await;
                Outcome::of(Effect::CordonDisowned, Some(node))
            }
            Err(e) if e.is_not_found() => Outcome::of(Effect::Gone, None),
            Err(e) => {
                warn!(node = name, error = %e, "could not update the remediation record after an uncordon by somebody else");
                Outcome::of(Effect::Failed(e), None)
            }
        }
    }

    /// Writes back the record of pulsecheck's cordon that somebody deleted.
    async fn restore_reported(&self, name: &str, uid: Option<&str>, since: Option<Timestamp>, now: Timestamp) -> Outcome {
        match self.edit("record", name, |node| restore_record_patch(node, since.unwrap_or(now), &self.actions.taint_key)).await {
            Ok((node, change)) if change.cordon => {
                info!(node = name, "pulsecheck's record of its cordon was deleted; written back so the cordon is undone on recovery");
                let message = "pulsecheck's record of its own cordon was removed while the cordon stayed; it is written back so that pulsecheck uncordons the node once it is healthy. To keep the node cordoned yourself, uncordon and cordon it again".to_string();
                let _ = self.event(name, uid, false, "RecordRestored", "Record", message).await;
                Outcome::of(Effect::RecordRestored, Some(node))
            }
            // Uncordoned, or a record already there, by the fresh read: nothing to restore.
            Ok((node, _)) => Outcome::of(Effect::CordonKept, Some(node)),
            Err(e) if e.is_not_found() => Outcome::of(Effect::Gone, None),
            Err(e) => {
                warn!(node = name, error = %e, "could not update the remediation record (writing back a deleted record)");
                Outcome::of(Effect::Failed(e), None)
            }
        }
    }

    /// A fresh read of the Node, its Lease and (with agent evidence) its agent's Lease, each
    /// possibly missing but the Node, bypassing every cache: the view is confirmed before
    /// pulsecheck acts on it.
    #[instrument(skip(self), fields(node = %name))]
    async fn fresh(&self, name: &str) -> Result<FreshRead> {
        let node = self.bounded("read", name, self.nodes.get(name)).await?;
        let lease = self.bounded("read lease of", name, self.leases.get_opt(name)).await?;
        let agent = match (&self.agents, crate::agent::lease_name(name)) {
            (Some(agents), Some(lease_name)) => Some(self.bounded("read agent lease of", name, agents.get_opt(&lease_name)).await?),
            _ => None,
        };
        Ok(FreshRead { node, lease, agent })
    }

    /// Remediates from `confirmed`, the fresh read that confirmed the verdict: one patch carrying
    /// that read's `resourceVersion`. A change to the Node since that read (the kubelet posting
    /// status again, a person adding the exclude label) yields [`Error::Conflict`], and
    /// [`Actuator::remediate`] re-reads and re-judges before trying again — never a patch
    /// computed from a read nobody judged.
    #[instrument(skip(self, confirmed), fields(node = %name))]
    async fn remediate_confirmed(&self, name: &str, confirmed: &SlimNode, now: Timestamp) -> Result<(SlimNode, Change)> {
        let Some((patch, change)) = remediation_patch(confirmed, &self.actions, now) else { return Ok((confirmed.clone(), Change::default())) };
        match self.write("remediate", name, self.nodes.patch(name, &Self::params(), &Patch::Merge(&patch))).await {
            Ok(updated) => Ok((updated, change)),
            Err(Error::Api { source: kube::Error::Api(s), .. }) if s.code == 409 => Err(Error::Conflict { what: "remediate", node: name.into(), attempts: 1 }),
            Err(e) => Err(e),
        }
    }

    /// Applies an edit computed from a fresh GET, retrying on conflict.
    async fn edit(&self, what: &'static str, name: &str, compute: impl Fn(&SlimNode) -> Option<(Value, Change)>) -> Result<(SlimNode, Change)> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let node = self.bounded("read", name, self.nodes.get(name)).await?;
            let Some((patch, change)) = compute(&node) else { return Ok((node, Change::default())) };
            match self.write(what, name, self.nodes.patch(name, &Self::params(), &Patch::Merge(&patch))).await {
                Ok(updated) => return Ok((updated, change)),
                Err(Error::Api { source: kube::Error::Api(s), .. }) if s.code == 409 => {
                    debug!(node = name, "conflict; re-reading the node");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict { what, node: name.into(), attempts: CONFLICT_ATTEMPTS })
    }

    /// Forgets pulsecheck's cordon in its record after somebody else uncordoned the node.
    #[instrument(skip(self), fields(node = %name))]
    async fn disown_cordon(&self, name: &str) -> Result<(SlimNode, Change)> {
        self.edit("record", name, disown_cordon_patch).await
    }

    /// Removes pulsecheck's taint, undoes its cordon (with `undo_cordon`), and deletes its record.
    #[instrument(skip(self), fields(node = %name))]
    pub async fn release(&self, name: &str, undo_cordon: bool) -> Result<(SlimNode, Change)> {
        self.edit("release", name, |n| release_patch(n, &self.actions.taint_key, undo_cordon)).await
    }

    /// Sets the `HeartbeatConsistent` condition.
    #[instrument(skip(self, message), fields(node = %name))]
    async fn set_condition(&self, name: &str, status: &str, reason: &str, message: &str, previous_status: Option<&str>, now: Timestamp) -> Result<SlimNode> {
        let patch = condition_patch(status, reason, message, previous_status, now);
        self.write("set condition on", name, self.nodes.patch_status(name, &Self::params(), &Patch::Strategic(&patch))).await
    }

    /// Removes the `HeartbeatConsistent` condition (used by `cleanup`).
    pub async fn remove_condition(&self, name: &str) -> Result<SlimNode> {
        let patch = json!({ "status": { "conditions": [{ "type": names::CONDITION_TYPE, "$patch": "delete" }] } });
        self.bounded("remove condition from", name, self.nodes.patch_status(name, &Self::params(), &Patch::Strategic(&patch))).await
    }

    /// Publishes an Event on the node. Failures are logged, never fatal: an Event is a report,
    /// not an action.
    async fn event(&self, name: &str, uid: Option<&str>, warning: bool, reason: &str, action: &str, note: String) -> Result<()> {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        let reference = node_reference(name, uid);
        let published = self.write("publish an Event about", name, self.recorder.publish(&event, &reference)).await;
        match &published {
            Ok(()) => self.count(WriteKind::Event, WriteResult::Success),
            Err(Error::NotLeader { .. }) => {
                tracing::debug!(node = name, reason, "no longer the leader: Event not published");
                self.count(WriteKind::Event, WriteResult::Error);
            }
            Err(e) => {
                warn!(node = name, reason, error = %e, "could not publish event");
                self.count(WriteKind::Event, WriteResult::Error);
            }
        }
        published
    }

    /// Counts a write in `pulsecheck_writes_total`, when metrics were given.
    fn count(&self, kind: WriteKind, result: WriteResult) {
        if let Some(m) = &self.metrics {
            m.write(kind, result);
        }
    }
}

/// `fut` bounded by `timeout`, its errors naming what was done to which node.
async fn within<T>(timeout: Duration, what: &'static str, node: &str, fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Api { what, node: node.into(), source }),
        Err(_) => Err(Error::Timeout { what, node: node.into(), timeout }),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deposed_leader_sends_no_write_and_publishes_no_event() {
        // Leadership ended a moment ago; the client points nowhere, so any request sent would
        // fail with a connection error instead of NotLeader.
        let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
        let ended = crate::leader::LeaderCheck::leading_until(tokio::time::Instant::now());
        let actuator = Actuator::new(client, Actions::default(), Duration::from_secs(5), None).with_leadership(ended);
        let written = actuator.write("set condition on", "n", std::future::pending::<kube::Result<()>>()).await;
        assert!(matches!(written, Err(Error::NotLeader { .. })), "{written:?}");
        assert_eq!(written.unwrap_err().label(), "not_leader");
    }
    use crate::facts::{Remediation, fixtures::*};

    fn actions(taint: bool, cordon: bool) -> Actions {
        Actions { taint, cordon, taint_key: names::TAINT_KEY.into(), taint_effect: TaintEffect::NoSchedule }
    }

    fn with_rv(mut n: SlimNode, rv: &str) -> SlimNode {
        n.metadata.resource_version = Some(rv.into());
        n
    }

    #[test]
    fn a_deleted_record_is_written_back_only_over_a_cordon_without_one() {
        let mut cordoned = with_rv(node("n").ready_at(t(0)).build(), "9");
        cordoned.spec.get_or_insert_default().unschedulable = Some(true);
        let (patch, change) = restore_record_patch(&cordoned, t(3), names::TAINT_KEY).unwrap();
        assert!(change.cordon && !change.taint);
        assert_eq!(patch["metadata"]["resourceVersion"], "9");
        let record: Remediation = serde_json::from_str(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(record, Remediation { tainted: false, cordoned: true, since: Some(t(3)) });
        assert!(patch.get("spec").is_none(), "only the record is written");
        // Uncordoned meanwhile, or a record there already: nothing to write back.
        assert_eq!(restore_record_patch(&node("n").ready_at(t(0)).build(), t(3), names::TAINT_KEY), None);
        let (with_record, _) = remediation_patch(&cordoned, &actions(false, true), t(1)).unwrap();
        let mut recorded = cordoned.clone();
        recorded.metadata.annotations = Some(
            [(names::REMEDIATION_ANNOTATION.to_string(), with_record["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].as_str().unwrap().to_string())]
                .into(),
        );
        assert_eq!(restore_record_patch(&recorded, t(3), names::TAINT_KEY), None);
    }

    #[test]
    fn already_cordoned_is_reported_only_for_a_cordon_somebody_else_made() {
        // Taint only, and the fresh read shows pulsecheck's own taint (the watch lagged).
        let ours = node("n").ready_at(t(0)).taint(names::TAINT_KEY).build();
        assert_eq!(remediation_report(&Change::default(), &ours, &actions(true, false)), RemediationReport::AlreadyDone);
        // Cordon asked for, and a person's cordon is there.
        let mut cordoned = node("n").ready_at(t(0)).build();
        cordoned.spec.get_or_insert_default().unschedulable = Some(true);
        assert_eq!(remediation_report(&Change::default(), &cordoned, &actions(false, true)), RemediationReport::AlreadyCordoned);
        // Both asked for, our taint there, somebody's cordon: still theirs, still said.
        let mut both = ours.clone();
        both.spec.get_or_insert_default().unschedulable = Some(true);
        assert_eq!(remediation_report(&Change::default(), &both, &actions(true, true)), RemediationReport::AlreadyCordoned);
        // Our own cordon on record: nothing new to say.
        let mut own = cordoned.clone();
        own.metadata.annotations =
            Some([(names::REMEDIATION_ANNOTATION.to_string(), r#"{"tainted":false,"cordoned":true,"since":"2026-01-01T00:00:00Z"}"#.to_string())].into());
        assert_eq!(remediation_report(&Change::default(), &own, &actions(false, true)), RemediationReport::AlreadyDone);
        assert_eq!(remediation_report(&Change { taint: true, cordon: false }, &ours, &actions(true, false)), RemediationReport::Changed);
    }

    #[test]
    fn taint_patch_keeps_foreign_taints_and_carries_the_resource_version() {
        let n = with_rv(node("n").ready_at(t(0)).taint("example.com/other").build(), "7");
        let (patch, change) = remediation_patch(&n, &actions(true, false), t(5)).unwrap();
        assert_eq!(change, Change { taint: true, cordon: false });
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let keys: Vec<&str> = patch["spec"]["taints"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap()).collect();
        assert_eq!(keys, vec!["example.com/other", names::TAINT_KEY]);
        assert!(patch["spec"].get("unschedulable").is_none());
        let record: Remediation = serde_json::from_str(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].as_str().unwrap()).unwrap();
        assert!(record.tainted && !record.cordoned);
    }

    #[test]
    fn already_remediated_node_needs_no_patch() {
        let n = node("n").ready_at(t(0)).build();
        let (patch, _) = remediation_patch(&n, &actions(true, true), t(5)).unwrap();
        // Apply the patch by hand: the taint, the cordon and the record are now there.
        let mut json = serde_json::json!({"metadata": {"name": "n", "annotations": patch["metadata"]["annotations"]}, "spec": patch["spec"]});
        json["metadata"]["resourceVersion"] = "8".into();
        let after: SlimNode = serde_json::from_value(json).unwrap();
        assert_eq!(remediation_patch(&after, &actions(true, true), t(10)), None);
    }

    #[test]
    fn a_node_someone_else_cordoned_is_not_recorded_as_ours() {
        let mut n = node("n").ready_at(t(0)).build();
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        let (patch, change) = remediation_patch(&n, &actions(true, true), t(5)).unwrap();
        assert!(!change.cordon);
        let record: Remediation = serde_json::from_str(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].as_str().unwrap()).unwrap();
        assert!(!record.cordoned);
        // And release leaves that cordon alone.
        let mut after = n.clone();
        after.metadata.annotations = Some([(names::REMEDIATION_ANNOTATION.to_string(), serde_json::to_string(&record).unwrap())].into());
        let (release, change) = release_patch(&after, names::TAINT_KEY, true).unwrap();
        assert!(!change.cordon);
        assert!(release["spec"].get("unschedulable").is_none());
    }

    #[test]
    fn release_removes_only_our_taint_and_our_record() {
        let mut n = with_rv(node("n").ready_at(t(0)).taint("example.com/other").taint(names::TAINT_KEY).build(), "9");
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        n.metadata.annotations = Some([(names::REMEDIATION_ANNOTATION.to_string(), r#"{"tainted":true,"cordoned":true}"#.to_string())].into());
        let (patch, change) = release_patch(&n, names::TAINT_KEY, true).unwrap();
        assert_eq!(change, Change { taint: true, cordon: true });
        assert_eq!(patch["spec"]["taints"].as_array().unwrap().len(), 1);
        assert_eq!(patch["spec"]["taints"][0]["key"], "example.com/other");
        assert_eq!(patch["spec"]["unschedulable"], false);
        assert!(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].is_null());
        assert_eq!(patch["metadata"]["resourceVersion"], "9");
        // A cordon taken over (uncordoned by somebody since, and cordoned again) stays, though
        // the record still claims it: the taint and the record go.
        let (patch, change) = release_patch(&n, names::TAINT_KEY, false).unwrap();
        assert_eq!(change, Change { taint: true, cordon: false });
        assert!(patch["spec"].get("unschedulable").is_none(), "{patch}");
        assert!(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].is_null());
    }

    #[test]
    fn an_uncordon_by_somebody_else_is_written_into_the_record_and_nothing_else() {
        let record = |json: &str| Some([(names::REMEDIATION_ANNOTATION.to_string(), json.to_string())].into());
        let mut n = with_rv(node("n").ready_at(t(0)).taint(names::TAINT_KEY).build(), "7");
        n.metadata.annotations = record(r#"{"tainted":true,"cordoned":true,"since":"2026-11-28T10:00:00Z"}"#);
        let (patch, change) = disown_cordon_patch(&n).unwrap();
        assert_eq!(change, Change { taint: false, cordon: true }, "the claim of the cordon is what changes");
        assert!(patch.get("spec").is_none(), "{patch}");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let written: serde_json::Value = serde_json::from_str(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(written, serde_json::json!({"tainted": true, "cordoned": false, "since": "2026-11-28T10:00:00Z"}));
        // Cordoned again after the uncordon that was seen: that cordon is somebody else's too.
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        assert_eq!(disown_cordon_patch(&n).map(|(p, _)| p["metadata"]["annotations"].clone()), Some(patch["metadata"]["annotations"].clone()));
        // Never ours: nothing to write.
        n.metadata.annotations = record(r#"{"tainted":true,"cordoned":false}"#);
        assert_eq!(disown_cordon_patch(&n), None);
    }

    #[test]
    fn release_of_an_untouched_node_is_nothing() {
        let n = node("n").ready_at(t(0)).taint("example.com/other").build();
        assert_eq!(release_patch(&n, names::TAINT_KEY, true), None);
    }

    #[test]
    fn condition_patch_touches_only_our_condition_and_keeps_transition_time() {
        let p = condition_patch("False", "ZombieDetected", "why", Some("True"), t(0));
        let conds = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0]["type"], names::CONDITION_TYPE);
        assert!(conds[0].get("lastTransitionTime").is_some());
        let p = condition_patch("False", "ZombieDetected", "why", Some("False"), t(0));
        assert!(p["status"]["conditions"][0].get("lastTransitionTime").is_none());
    }
}
