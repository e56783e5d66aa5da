//! The write edge: taints, cordons, pulsecheck's node condition, and Events.
//!
//! Rules this module keeps, because a node is shared with people and other controllers:
//! * Every write is a patch with field manager `pulsecheck` and a timeout; nothing is ever PUT
//!   from a cache.
//! * `spec.taints` is an atomic list: a taint edit starts from a fresh GET and carries that
//!   GET's `resourceVersion`, so a concurrent change by anyone else yields 409 Conflict and the
//!   edit is redone from a new GET. A remediation goes further: it patches the very read that
//!   confirmed the verdict, and on a conflict the controller reads and judges again before
//!   retrying. Only the taint with pulsecheck's key is ever added or removed.
//! * What pulsecheck did is written in the same patch as the action (annotation
//!   `pulsecheck.dev/remediation`), so a restarted controller knows its own actions, and a
//!   cordon is undone only when the record says pulsecheck set it.
//! * The `HeartbeatConsistent` condition is written with a strategic-merge patch on
//!   `nodes/status` that names only that condition: the kubelet's conditions are untouched.
//!
//! This module decides nothing; it is handed decisions by [`crate::controller`].

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
use tracing::instrument;

use clap::ArgAction;

use crate::{
    facts::{SlimLease, SlimNode, remediation_from_annotations},
    names,
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

/// The patch that drops the cordon from pulsecheck's record once somebody else has uncordoned the
/// node, or `None` when the record does not claim a cordon the node no longer has. From then on
/// `spec.unschedulable` is theirs: a later cordon by a person is never undone at release. Pure.
pub fn disown_cordon_patch(node: &SlimNode) -> Option<(Value, Change)> {
    let mut record = remediation_from_annotations(node.metadata.annotations.as_ref());
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    if !record.cordoned || unschedulable {
        return None;
    }
    record.cordoned = false;
    let patch = json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": { names::REMEDIATION_ANNOTATION: serde_json::to_string(&record).unwrap_or_default() },
        },
    });
    Some((patch, Change::default()))
}

/// The patch that undoes pulsecheck's own actions on `node`, or `None` when there is nothing of
/// ours on it. Pure.
pub fn release_patch(node: &SlimNode, taint_key: &str) -> Option<(Value, Change)> {
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
    if record.cordoned && spec.unschedulable.unwrap_or(false) {
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

/// Writes to Nodes and publishes Events.
#[derive(Clone)]
pub struct Actuator {
    nodes: Api<SlimNode>,
    leases: Api<SlimLease>,
    recorder: Recorder,
    actions: Actions,
    timeout: Duration,
}

impl Actuator {
    /// An actuator writing through `client`; `instance` names this replica in Events.
    pub fn new(client: kube::Client, actions: Actions, timeout: Duration, instance: Option<String>) -> Actuator {
        let reporter = kube::runtime::events::Reporter { controller: names::FIELD_MANAGER.into(), instance };
        Actuator {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client.clone(), names::NODE_LEASE_NAMESPACE),
            recorder: Recorder::new(client, reporter),
            actions,
            timeout,
        }
    }

    async fn bounded<T>(&self, what: &'static str, node: &str, fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Api { what, node: node.into(), source }),
            Err(_) => Err(Error::Timeout { what, node: node.into(), timeout: self.timeout }),
        }
    }

    fn params() -> PatchParams {
        PatchParams { field_manager: Some(names::FIELD_MANAGER.into()), ..Default::default() }
    }

    /// A fresh read of the Node and its Lease (the Lease may be missing), bypassing every cache:
    /// the view is confirmed before pulsecheck acts on it.
    #[instrument(skip(self), fields(node = %name))]
    pub async fn fresh(&self, name: &str) -> Result<(SlimNode, Option<SlimLease>)> {
        let node = self.bounded("read", name, self.nodes.get(name)).await?;
        let lease = self.bounded("read lease of", name, self.leases.get_opt(name)).await?;
        Ok((node, lease))
    }

    /// Remediates from `confirmed`, the fresh read that confirmed the verdict: one patch carrying
    /// that read's `resourceVersion`. A change to the Node since that read (the kubelet posting
    /// status again, a person adding the exclude label) yields [`Error::Conflict`], and the
    /// caller re-reads and re-judges before trying again — never a patch computed from a read
    /// nobody judged.
    #[instrument(skip(self, confirmed), fields(node = %name))]
    pub async fn remediate_confirmed(&self, name: &str, confirmed: &SlimNode, now: Timestamp) -> Result<(SlimNode, Change)> {
        let Some((patch, change)) = remediation_patch(confirmed, &self.actions, now) else { return Ok((confirmed.clone(), Change::default())) };
        match self.bounded("remediate", name, self.nodes.patch(name, &Self::params(), &Patch::Merge(&patch))).await {
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
            match self.bounded(what, name, self.nodes.patch(name, &Self::params(), &Patch::Merge(&patch))).await {
                Ok(updated) => return Ok((updated, change)),
                Err(Error::Api { source: kube::Error::Api(s), .. }) if s.code == 409 => {
                    tracing::debug!(node = name, "conflict; re-reading the node");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict { what, node: name.into(), attempts: CONFLICT_ATTEMPTS })
    }

    /// Forgets pulsecheck's cordon in its record after somebody else uncordoned the node.
    #[instrument(skip(self), fields(node = %name))]
    pub async fn disown_cordon(&self, name: &str) -> Result<(SlimNode, Change)> {
        self.edit("record", name, disown_cordon_patch).await
    }

    /// Removes pulsecheck's taint, undoes its cordon, and deletes its record.
    #[instrument(skip(self), fields(node = %name))]
    pub async fn release(&self, name: &str) -> Result<(SlimNode, Change)> {
        self.edit("release", name, |n| release_patch(n, &self.actions.taint_key)).await
    }

    /// Sets the `HeartbeatConsistent` condition.
    #[instrument(skip(self, message), fields(node = %name))]
    pub async fn set_condition(
        &self,
        name: &str,
        status: &str,
        reason: &str,
        message: &str,
        previous_status: Option<&str>,
        now: Timestamp,
    ) -> Result<SlimNode> {
        let patch = condition_patch(status, reason, message, previous_status, now);
        self.bounded("set condition on", name, self.nodes.patch_status(name, &Self::params(), &Patch::Strategic(&patch))).await
    }

    /// Removes the `HeartbeatConsistent` condition (used by `cleanup`).
    pub async fn remove_condition(&self, name: &str) -> Result<SlimNode> {
        let patch = json!({ "status": { "conditions": [{ "type": names::CONDITION_TYPE, "$patch": "delete" }] } });
        self.bounded("remove condition from", name, self.nodes.patch_status(name, &Self::params(), &Patch::Strategic(&patch))).await
    }

    /// Publishes an Event on the node. Failures are logged, never fatal: an Event is a report,
    /// not an action.
    pub async fn event(&self, name: &str, uid: Option<&str>, warning: bool, reason: &str, action: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        let reference = node_reference(name, uid);
        match tokio::time::timeout(self.timeout, self.recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(node = name, reason, error = %e, "could not publish event"),
            Err(_) => tracing::warn!(node = name, reason, "publishing event timed out"),
        }
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
    use crate::facts::{Remediation, fixtures::*};

    fn actions(taint: bool, cordon: bool) -> Actions {
        Actions { taint, cordon, taint_key: names::TAINT_KEY.into(), taint_effect: TaintEffect::NoSchedule }
    }

    fn with_rv(mut n: SlimNode, rv: &str) -> SlimNode {
        n.metadata.resource_version = Some(rv.into());
        n
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
        let (release, change) = release_patch(&after, names::TAINT_KEY).unwrap();
        assert!(!change.cordon);
        assert!(release["spec"].get("unschedulable").is_none());
    }

    #[test]
    fn release_removes_only_our_taint_and_our_record() {
        let mut n = with_rv(node("n").ready_at(t(0)).taint("example.com/other").taint(names::TAINT_KEY).build(), "9");
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        n.metadata.annotations = Some([(names::REMEDIATION_ANNOTATION.to_string(), r#"{"tainted":true,"cordoned":true}"#.to_string())].into());
        let (patch, change) = release_patch(&n, names::TAINT_KEY).unwrap();
        assert_eq!(change, Change { taint: true, cordon: true });
        assert_eq!(patch["spec"]["taints"].as_array().unwrap().len(), 1);
        assert_eq!(patch["spec"]["taints"][0]["key"], "example.com/other");
        assert_eq!(patch["spec"]["unschedulable"], false);
        assert!(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].is_null());
        assert_eq!(patch["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn an_uncordon_by_somebody_else_is_written_into_the_record_and_nothing_else() {
        let record = |json: &str| Some([(names::REMEDIATION_ANNOTATION.to_string(), json.to_string())].into());
        let mut n = with_rv(node("n").ready_at(t(0)).taint(names::TAINT_KEY).build(), "7");
        n.metadata.annotations = record(r#"{"tainted":true,"cordoned":true,"since":"2026-11-28T10:00:00Z"}"#);
        let (patch, change) = disown_cordon_patch(&n).unwrap();
        assert_eq!(change, Change::default());
        assert!(patch.get("spec").is_none(), "{patch}");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let written: serde_json::Value = serde_json::from_str(patch["metadata"]["annotations"][names::REMEDIATION_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(written, serde_json::json!({"tainted": true, "cordoned": false, "since": "2026-11-28T10:00:00Z"}));
        // Still cordoned (ours), or never ours: nothing to write.
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        assert_eq!(disown_cordon_patch(&n), None);
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(false);
        n.metadata.annotations = record(r#"{"tainted":true,"cordoned":false}"#);
        assert_eq!(disown_cordon_patch(&n), None);
    }

    #[test]
    fn release_of_an_untouched_node_is_nothing() {
        let n = node("n").ready_at(t(0)).taint("example.com/other").build();
        assert_eq!(release_patch(&n, names::TAINT_KEY), None);
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
