//! How `check` reads the cluster: one snapshot, or an observation of `--observe`, and one probe
//! of each kubelet with `--probe`.
//!
//! It exists because `check` runs as a person, not as pulsecheck's ServiceAccount: the most
//! likely failure is a missing permission, and "403 Forbidden" alone does not say which one.
//! Every request is described as RBAC names it ([`Error::Forbidden`] says the verb, the resource,
//! its API group and where), every call is bounded by `--request-timeout`, and `--observe`
//! checks its permissions before it watches for minutes. The observation folds watch events with
//! the controller's own [`Relist`], so it sees the same objects the controller would.
//!
//! It only reads (`get`/`list`/`watch` on nodes and on leases in kube-node-lease); it never
//! writes anything, and it never judges: the facts it returns go to [`super::report`].

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};

use crate::{
    facts::{FleetFacts, ProbeOutcome, Scope, SlimLease, SlimNode},
    names,
    observe::{Folded, Relist, RelistStore},
    probe::{ProbeMode, ProbeSettings, ProbeTarget, Prober},
};

/// Page size of the node and lease lists.
const PAGE_SIZE: u32 = 500;
/// Probes in flight at most with `--probe`.
pub const PROBE_CONCURRENCY: usize = 32;

/// What can go wrong reading the cluster. Every one exits 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The identity lacks a permission.
    #[error("cannot {action}: forbidden — the identity needs {needs}{}", detail.as_ref().map(|d| format!(" (apiserver: {d})")).unwrap_or_default())]
    Forbidden {
        /// What was attempted, e.g. "list leases in namespace kube-node-lease".
        action: String,
        /// The permission that is missing, e.g. "`list` on `leases` (coordination.k8s.io) there".
        needs: String,
        /// The apiserver's own message, naming the user.
        detail: Option<String>,
    },
    /// The credentials were rejected.
    #[error("cannot {action}: the apiserver rejected the credentials (401 Unauthorized); check the user of the kubeconfig context (--kubeconfig, --context)")]
    Unauthorized {
        /// What was attempted.
        action: String,
    },
    /// The apiserver could not be reached.
    #[error("cannot {action}: cannot reach the apiserver ({detail}); check --kubeconfig/--context and that the cluster is up")]
    Unreachable {
        /// What was attempted.
        action: String,
        /// Why, from the client.
        detail: String,
    },
    /// The apiserver did not answer in time.
    #[error("cannot {action}: no answer from the apiserver within {timeout} (--request-timeout)")]
    Timeout {
        /// What was attempted.
        action: String,
        /// The timeout.
        timeout: String,
    },
    /// Another apiserver error.
    #[error("cannot {action}: {code} {reason}: {message}")]
    Api {
        /// What was attempted.
        action: String,
        /// HTTP status.
        code: u16,
        /// The apiserver's reason.
        reason: String,
        /// The apiserver's message.
        message: String,
    },
    /// `--node` names a node that does not exist.
    #[error("node {0:?} not found in the cluster (--node)")]
    NodeNotFound(String),
    /// A watch never delivered its initial list during `--observe`.
    #[error("the {what} watch never finished its initial list during --observe{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NotSynced {
        /// "Node" or "Lease".
        what: &'static str,
        /// The last error the watch reported.
        last_error: Option<String>,
    },
    /// The kubelet prober cannot be set up.
    #[error(transparent)]
    Probe(#[from] crate::probe::Error),
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The object kinds `check` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nodes,
    Leases,
}

/// One request, described the way an RBAC error must name it.
#[derive(Debug, Clone)]
struct Request {
    verb: &'static str,
    kind: Kind,
    name: Option<String>,
}

impl Request {
    fn new(verb: &'static str, kind: Kind, name: Option<&str>) -> Request {
        Request { verb, kind, name: name.map(str::to_string) }
    }

    /// "list leases in namespace kube-node-lease", "get node n1".
    fn action(&self) -> String {
        let what = match (self.kind, &self.name) {
            (Kind::Nodes, None) => "nodes".to_string(),
            (Kind::Nodes, Some(n)) => format!("node {n}"),
            (Kind::Leases, None) => format!("leases in namespace {}", names::NODE_LEASE_NAMESPACE),
            (Kind::Leases, Some(n)) => format!("lease {n} in namespace {}", names::NODE_LEASE_NAMESPACE),
        };
        format!("{} {what}", self.verb)
    }

    /// "`list` on `leases` (coordination.k8s.io) there".
    fn needs(&self) -> String {
        match self.kind {
            Kind::Nodes => format!("`{}` on `nodes` (core API group, cluster-wide)", self.verb),
            Kind::Leases => format!("`{}` on `leases` (coordination.k8s.io) there", self.verb),
        }
    }

    fn error(&self, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(status) => self.status_error(status.code, status.reason, status.message),
            other => Error::Unreachable { action: self.action(), detail: error_chain(&other) },
        }
    }

    fn status_error(&self, code: u16, reason: String, message: String) -> Error {
        match code {
            403 => Error::Forbidden { action: self.action(), needs: self.needs(), detail: Some(message).filter(|m| !m.is_empty()) },
            401 => Error::Unauthorized { action: self.action() },
            _ => Error::Api { action: self.action(), code, reason, message },
        }
    }
}

/// An error and its sources as one line, without repeating a source its parent already quotes.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Reads Nodes and Leases, every call bounded by `--request-timeout`.
pub(super) struct Reader {
    client: kube::Client,
    timeout: Duration,
}

impl Reader {
    /// A reader through `client`, each non-watch call bounded by `timeout`.
    pub(super) fn new(client: kube::Client, timeout: Duration) -> Reader {
        Reader { client, timeout }
    }

    fn nodes(&self) -> Api<SlimNode> {
        Api::all(self.client.clone())
    }

    fn leases(&self) -> Api<SlimLease> {
        Api::namespaced(self.client.clone(), names::NODE_LEASE_NAMESPACE)
    }

    async fn call<T>(&self, request: &Request, call: impl Future<Output = kube::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(request.error(e)),
            Err(_) => Err(Error::Timeout { action: request.action(), timeout: humantime::format_duration(self.timeout).to_string() }),
        }
    }

    /// Every object of `api`, page by page.
    async fn list_all<K>(&self, api: &Api<K>, request: &Request) -> Result<Vec<K>>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(PAGE_SIZE);
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let page = self.call(request, api.list(&params)).await?;
            items.extend(page.items);
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    /// One node by name: not found is [`Error::NodeNotFound`].
    async fn node(&self, name: &str) -> Result<SlimNode> {
        let request = Request::new("get", Kind::Nodes, Some(name));
        self.call(&request, self.nodes().get_opt(name)).await?.ok_or_else(|| Error::NodeNotFound(name.to_string()))
    }

    /// The Nodes and Leases now: all of them, or the one `--node` names.
    pub(super) async fn snapshot(&self, node: Option<&str>) -> Result<(Vec<SlimNode>, Vec<SlimLease>)> {
        match node {
            Some(name) => {
                let node = self.node(name).await?;
                let request = Request::new("get", Kind::Leases, Some(name));
                let lease = self.call(&request, self.leases().get_opt(name)).await?;
                Ok((vec![node], lease.into_iter().collect()))
            }
            None => {
                let nodes = self.list_all(&self.nodes(), &Request::new("list", Kind::Nodes, None)).await?;
                let leases = self.list_all(&self.leases(), &Request::new("list", Kind::Leases, None)).await?;
                Ok((nodes, leases))
            }
        }
    }

    /// Before watching for a long time: fails at once on a missing permission or node.
    pub(super) async fn preflight(&self, node: Option<&str>) -> Result<()> {
        let one = ListParams::default().limit(1);
        match node {
            Some(name) => {
                self.node(name).await?;
            }
            None => {
                self.call(&Request::new("list", Kind::Nodes, None), self.nodes().list_metadata(&one)).await?;
            }
        }
        self.call(&Request::new("list", Kind::Leases, None), self.leases().list_metadata(&one)).await?;
        Ok(())
    }

    /// Watches Nodes and Leases for `duration`, applying every change at the time it is seen.
    pub(super) async fn observe(&self, node: Option<&str>, scope: &Scope, duration: Duration) -> Result<Observation> {
        let config = match node {
            Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
            None => watcher::Config::default().page_size(PAGE_SIZE),
        };
        let mut node_events = std::pin::pin!(watcher(self.nodes(), config.clone()).default_backoff());
        let mut lease_events = std::pin::pin!(watcher(self.leases(), config).default_backoff());
        let deadline = tokio::time::Instant::now() + duration;
        let mut facts = FleetFacts::default();
        let (mut nodes, mut leases) = (WatchProgress::default(), WatchProgress::default());
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                Some(event) = node_events.next() => {
                    let now = Timestamp::now();
                    nodes.fold(event, Kind::Nodes, now, &mut Observing { facts: &mut facts, scope, now })?;
                }
                Some(event) = lease_events.next() => {
                    let now = Timestamp::now();
                    leases.fold(event, Kind::Leases, now, &mut Observing { facts: &mut facts, scope, now })?;
                }
            }
        }
        if nodes.synced_at.is_none() {
            return Err(Error::NotSynced { what: "Node", last_error: nodes.last_error });
        }
        let Some(leases_synced_at) = leases.synced_at else {
            return Err(Error::NotSynced { what: "Lease", last_error: leases.last_error });
        };
        if let Some(name) = node
            && !facts.nodes.contains_key(name)
        {
            return Err(Error::NodeNotFound(name.to_string()));
        }
        Ok(Observation { facts, leases_synced_at })
    }
}

/// What `--observe` saw.
pub(super) struct Observation {
    /// Every Node and Lease, each change applied at the time it was seen.
    pub(super) facts: FleetFacts,
    /// When the Lease watch finished its first list: renewals not seen since are lower bounds.
    pub(super) leases_synced_at: Timestamp,
}

/// The facts being observed, as [`Relist`] folds Node and Lease events into them at `now`.
struct Observing<'a> {
    facts: &'a mut FleetFacts,
    scope: &'a Scope,
    now: Timestamp,
}

impl RelistStore<SlimNode> for Observing<'_> {
    fn apply(&mut self, node: &SlimNode) {
        self.facts.apply_node(node, self.scope, self.now);
    }
    fn forget(&mut self, name: &str) {
        self.facts.delete_node(name);
    }
    fn names(&self) -> Vec<String> {
        self.facts.nodes.keys().map(|n| n.to_string()).collect()
    }
}

impl RelistStore<SlimLease> for Observing<'_> {
    fn apply(&mut self, lease: &SlimLease) {
        self.facts.apply_lease(lease, self.now);
    }
    fn forget(&mut self, name: &str) {
        self.facts.delete_lease(name);
    }
    fn names(&self) -> Vec<String> {
        self.facts.leases.keys().map(|n| n.to_string()).collect()
    }
}

/// The progress of one watch during `--observe`.
#[derive(Default)]
struct WatchProgress {
    relist: Relist,
    synced_at: Option<Timestamp>,
    last_error: Option<String>,
}

impl WatchProgress {
    /// Folds one watch event seen at `now` into `store`; returns a forbidden error at once
    /// (waiting would only repeat it).
    fn fold<K: kube::Resource>(
        &mut self,
        event: std::result::Result<watcher::Event<K>, watcher::Error>,
        kind: Kind,
        now: Timestamp,
        store: &mut impl RelistStore<K>,
    ) -> Result<()> {
        match event {
            Ok(event) => {
                if let Folded::Synced { .. } = self.relist.fold(event, store) {
                    self.synced_at.get_or_insert(now);
                    self.last_error = None;
                }
            }
            Err(e) => {
                let forbidden = |verb, status: &kube::core::Status| {
                    (status.code == 403).then(|| Request::new(verb, kind, None).status_error(status.code, status.reason.clone(), status.message.clone()))
                };
                let fatal = match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) => forbidden("list", s),
                    watcher::Error::WatchStartFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s)) => forbidden("watch", s),
                    watcher::Error::WatchError(s) => forbidden("watch", s),
                    _ => None,
                };
                if let Some(fatal) = fatal {
                    return Err(fatal);
                }
                self.last_error = Some(error_chain(&e));
            }
        }
        Ok(())
    }
}

/// Probes one kubelet; `check --probe` is wired to [`crate::probe`] through this.
pub type KubeletProbe = Box<dyn Fn(ProbeTarget) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send>> + Send + Sync>;

/// The kubelet prober for `--probe`, if asked for (`mode` is not `none`): the controller's own
/// prober, probing once, with a note when it had to fall back to another mode.
///
/// `check` runs as the person at the terminal, not as a ServiceAccount, so it has no token file
/// and no kubelet CA: `kubelet-healthz` falls back to `tcp` (a note says so), and
/// `apiserver-proxy` (what `--probe` alone means) uses the kubeconfig's own credentials.
pub(super) fn kubelet_prober(mode: ProbeMode, timeout: Duration, client: &kube::Client) -> Result<Option<(KubeletProbe, Option<String>)>> {
    if mode == ProbeMode::None {
        return Ok(None);
    }
    let settings = ProbeSettings {
        mode,
        timeout,
        interval: timeout,
        concurrency: PROBE_CONCURRENCY,
        preferred_address_types: ["InternalIP", "ExternalIP", "Hostname"].map(String::from).to_vec(),
        ca: None,
        insecure_tls: false,
        token_file: PathBuf::new(),
        configz: false,
        kubeconfig_credential: Err("check sends no credentials to kubelets".into()),
    };
    let prober = Prober::new(settings, client.clone())?;
    let note = prober.fallback_reason().map(str::to_string);
    let probe: KubeletProbe = Box::new(move |target| {
        let prober = prober.clone();
        Box::pin(async move { prober.probe(&target).await })
    });
    Ok(Some((probe, note)))
}

/// Probes every node once, at most `concurrency` at a time, and records the outcomes.
pub async fn probe_all(facts: &mut FleetFacts, probe: &KubeletProbe, concurrency: usize) {
    let targets: Vec<ProbeTarget> =
        facts.nodes.iter().map(|(n, f)| ProbeTarget { node: n.to_string(), endpoint: f.kubelet.clone(), recheck_cadence: false }).collect();
    let outcomes: Vec<(String, ProbeOutcome, Timestamp)> = futures::stream::iter(targets)
        .map(|t| {
            let node = t.node.clone();
            let outcome = probe(t);
            async move { (node, outcome.await, Timestamp::now()) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (node, outcome, at) in outcomes {
        // One round: no earlier result to be separated from by a gap.
        facts.record_probe(&node, outcome, at, std::time::Duration::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        check::report::{Clock, build_report},
        facts::fixtures::*,
        verdict::Thresholds,
    };

    fn scope() -> Scope {
        Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() }
    }

    #[test]
    fn forbidden_names_the_missing_permission() {
        let e = Request::new("list", Kind::Leases, None).status_error(403, "Forbidden".into(), "leases is forbidden: User \"x\" cannot list".into());
        assert_eq!(
            e.to_string(),
            "cannot list leases in namespace kube-node-lease: forbidden — the identity needs `list` on `leases` (coordination.k8s.io) there (apiserver: leases is forbidden: User \"x\" cannot list)"
        );
        let e = Request::new("get", Kind::Nodes, Some("n1")).status_error(403, String::new(), String::new());
        assert_eq!(e.to_string(), "cannot get node n1: forbidden — the identity needs `get` on `nodes` (core API group, cluster-wide)");
        assert!(Request::new("list", Kind::Nodes, None).status_error(401, String::new(), String::new()).to_string().contains("401 Unauthorized"));
    }

    #[test]
    fn observation_syncs_at_the_first_list_and_drops_nodes_a_relist_no_longer_holds() {
        use watcher::Event;
        let (scope, mut facts, mut progress) = (scope(), FleetFacts::default(), WatchProgress::default());
        let mut fold = |event: Event<SlimNode>, at: i64, facts: &mut FleetFacts| {
            progress.fold(Ok(event), Kind::Nodes, t(at), &mut Observing { facts, scope: &scope, now: t(at) }).unwrap();
            progress.synced_at
        };
        assert_eq!(fold(Event::Init, 1, &mut facts), None);
        assert_eq!(fold(Event::InitApply(node("a").ready_at(t(0)).build()), 1, &mut facts), None);
        assert_eq!(fold(Event::InitApply(node("b").ready_at(t(0)).build()), 1, &mut facts), None);
        assert_eq!(fold(Event::InitDone, 2, &mut facts), Some(t(2)));
        // A re-list that no longer holds b: b is forgotten, and the first sync time stays.
        fold(Event::Init, 5, &mut facts);
        fold(Event::InitApply(node("a").ready_at(t(4)).build()), 5, &mut facts);
        assert_eq!(fold(Event::InitDone, 6, &mut facts), Some(t(2)));
        let mut held: Vec<&str> = facts.nodes.keys().map(|n| &**n).collect();
        held.sort();
        assert_eq!(held, ["a"]);
    }

    #[test]
    fn a_forbidden_watch_stops_the_observation_naming_the_permission() {
        let status = kube::core::Status::failure("leases is forbidden", "Forbidden").with_code(403);
        let mut progress = WatchProgress::default();
        let (scope, mut facts) = (scope(), FleetFacts::default());
        let e = progress
            .fold::<SlimLease>(
                Err(watcher::Error::WatchError(Box::new(status))),
                Kind::Leases,
                t(0),
                &mut Observing { facts: &mut facts, scope: &scope, now: t(0) },
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot watch leases in namespace kube-node-lease: forbidden — the identity needs `watch`"), "{e}");
    }

    #[tokio::test]
    async fn probes_are_recorded_for_every_node() {
        let mut facts = FleetFacts::default();
        for n in ["a", "b"] {
            facts.apply_node(&node(n).ready_at(t(0)).build(), &scope(), t(0));
        }
        let probe: KubeletProbe = Box::new(|target: ProbeTarget| {
            Box::pin(async move { if target.node == "a" { ProbeOutcome::Success } else { ProbeOutcome::Failure("500 syncloop".into()) } })
        });
        probe_all(&mut facts, &probe, 4).await;
        let report = build_report(t(1), &facts, &Thresholds::default(), Clock::Observed, Some(t(0)));
        let probes: Vec<_> = report.nodes.iter().map(|n| (n.name.as_str(), n.probe.as_ref().map(|p| p.result))).collect();
        assert_eq!(probes, [("a", Some("ok")), ("b", Some("fail"))]);
    }
}
