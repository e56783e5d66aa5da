//! The watch edge: Nodes and node Leases in, facts and "can I see?" out.
//!
//! Two kube-runtime watchers feed one [`View`]: every object is distilled into
//! [`crate::facts`] at once (the objects themselves are dropped), and [`Sight`] records whether
//! each watch has finished its initial list, when it last delivered, and whether it is failing.
//!
//! pulsecheck must never act on a view it cannot trust. [`Sight::blindness`] says why it is
//! blind, if it is: a watch not (re)synced, a watch erroring, the Lease watch silent for longer
//! than a live fleet allows (kubelets renew every 10 s, so a silent Lease watch means a broken
//! watch or a dead fleet — either way no time to act), the Node watch silent for a whole
//! `--status-stale-after` while Leases renew (every live kubelet reports its status at least every
//! 7.5 min, so a Node watch that long silent is far likelier broken than every node's status loop
//! stuck at once — and if it is the latter, that is a mass event no single taint answers), or sight
//! regained too recently for kubelets to have caught up. This module never decides or writes anything.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    facts::{FleetFacts, Scope, SlimLease, SlimNode},
    metrics::Metrics,
};

/// The state of one watch.
#[derive(Debug, Clone, Default)]
pub struct WatchSight {
    /// The initial list (or the latest re-list) completed.
    pub synced: bool,
    /// When the watch last delivered an object or finished a list (pulsecheck's clock).
    pub last_event: Option<Timestamp>,
    /// The latest error and when it happened, until the watch delivers again.
    pub error: Option<(String, Timestamp)>,
}

/// Why pulsecheck cannot trust its view right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blindness {
    /// A watch has not finished its (re-)list.
    NotSynced(&'static str),
    /// A watch failed recently and has delivered nothing since.
    WatchFailing(&'static str, String),
    /// The Lease watch delivered nothing for this many seconds while Leases exist.
    LeasesSilent(i64),
    /// The Node watch delivered nothing for this many seconds while Leases renew.
    NodesSilent(i64),
    /// Sight came back this many seconds ago; kubelets get time to catch up first.
    Settling(i64),
}

impl std::fmt::Display for Blindness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blindness::NotSynced(r) => write!(f, "the {r} watch has not finished listing"),
            Blindness::WatchFailing(r, e) => write!(f, "the {r} watch is failing: {e}"),
            Blindness::LeasesSilent(s) => write!(f, "the Lease watch delivered nothing for {s}s"),
            Blindness::NodesSilent(s) => write!(f, "the Node watch delivered nothing for {s}s while Leases renew"),
            Blindness::Settling(s) => write!(f, "sight regained {s}s ago; waiting for kubelets to catch up"),
        }
    }
}

/// What pulsecheck can see: both watches.
#[derive(Debug, Clone, Default)]
pub struct Sight {
    /// The Node watch.
    pub nodes: WatchSight,
    /// The Lease watch (namespace kube-node-lease).
    pub leases: WatchSight,
    /// When both watches last became synced after a blind spell.
    pub regained_at: Option<Timestamp>,
    /// The first sync after start-up counts as regained too, but needs no settling: there was no gap.
    pub ever_synced: bool,
}

impl Sight {
    /// Why pulsecheck is blind at `now`, if it is. `silence` is how long the Lease watch may be
    /// quiet while Leases exist, `node_silence` how long the Node watch may be quiet while they
    /// renew, `settle` how long after regained sight it waits.
    pub fn blindness(&self, now: Timestamp, facts: &FleetFacts, silence: Duration, node_silence: Duration, settle: Duration) -> Option<Blindness> {
        let silence = SignedDuration::try_from(silence).unwrap_or(SignedDuration::MAX);
        let node_silence = SignedDuration::try_from(node_silence).unwrap_or(SignedDuration::MAX);
        for (name, w) in [("Node", &self.nodes), ("Lease", &self.leases)] {
            if !w.synced {
                return Some(Blindness::NotSynced(name));
            }
            if let Some((e, at)) = &w.error {
                // An error followed by silence for a whole grace period is treated as recovered:
                // a watch that keeps failing reports a new error on every retry (back-off ≤ 30 s).
                if now.duration_since(*at) < silence {
                    return Some(Blindness::WatchFailing(name, e.clone()));
                }
            }
        }
        if !facts.leases.is_empty() {
            let quiet = self.leases.last_event.map_or(SignedDuration::MAX, |t| now.duration_since(t));
            if quiet >= silence {
                return Some(Blindness::LeasesSilent(quiet.as_secs()));
            }
            let nodes_quiet = self.nodes.last_event.map_or(SignedDuration::MAX, |t| now.duration_since(t));
            if !facts.nodes.is_empty() && nodes_quiet >= node_silence {
                return Some(Blindness::NodesSilent(nodes_quiet.as_secs()));
            }
        }
        if let Some(at) = self.regained_at {
            let since = now.duration_since(at);
            if SignedDuration::try_from(settle).is_ok_and(|s| since < s) {
                return Some(Blindness::Settling(since.as_secs()));
            }
        }
        None
    }

    fn synced_now(&mut self, now: Timestamp) {
        if self.nodes.synced && self.leases.synced {
            if self.ever_synced {
                self.regained_at = Some(now);
            }
            self.ever_synced = true;
        }
    }
}

/// Facts and sight, shared by the watchers, the prober results and the decision loop.
#[derive(Debug, Default)]
pub struct View {
    /// What is known about every node.
    pub facts: FleetFacts,
    /// Whether it can be trusted.
    pub sight: Sight,
}

/// The view shared between tasks. Locked briefly: one object applied, or one evaluation pass.
pub type SharedView = Arc<Mutex<View>>;

/// Locks the view; a panic in another task while holding the lock leaves consistent data (every
/// update is a single insert), so a poisoned lock is recovered rather than propagated.
pub fn lock(view: &SharedView) -> std::sync::MutexGuard<'_, View> {
    view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watcher_config() -> watcher::Config {
    // Page large lists so 100k-node clusters do not produce one giant response.
    watcher::Config::default().page_size(500)
}

/// What differs between the Node and the Lease watch, besides how an object becomes facts.
trait Watched: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static {
    /// `nodes` or `leases`, for logs and metrics.
    const RESOURCE: &'static str;
    /// This watch's sight.
    fn sight(view: &mut View) -> &mut WatchSight;
    /// Forgets a deleted object.
    fn forget(name: &str, view: &mut View, metrics: &Metrics);
    /// Names the view holds, for pruning after a re-list.
    fn known(view: &View) -> Vec<String>;
}

impl Watched for SlimLease {
    const RESOURCE: &'static str = "leases";
    fn sight(view: &mut View) -> &mut WatchSight {
        &mut view.sight.leases
    }
    fn forget(name: &str, view: &mut View, _: &Metrics) {
        view.facts.delete_lease(name);
    }
    fn known(view: &View) -> Vec<String> {
        view.facts.leases.keys().map(|n| n.to_string()).collect()
    }
}

/// Runs one watch until `shutdown`: every event updates the view and the watch's sight.
/// `apply` turns an object into facts (nodes need their scope, leases do not). A re-list
/// re-applies every object (unchanged values keep their observation times) and then forgets
/// the objects it no longer contains.
async fn run_watch<K: Watched>(api: Api<K>, view: SharedView, metrics: Metrics, shutdown: CancellationToken, apply: impl Fn(&K, &mut View, Timestamp)) {
    let stream = watcher(api, watcher_config()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut relisted: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = stream.next() => match e { Some(e) => e, None => return },
        };
        let now = Timestamp::now();
        let mut v = lock(&view);
        match event {
            Ok(watcher::Event::Init) => {
                K::sight(&mut v).synced = false;
                relisted = Some(HashSet::new());
            }
            Ok(watcher::Event::InitApply(obj)) => {
                metrics.watch_event(K::RESOURCE);
                if let (Some(set), Some(name)) = (relisted.as_mut(), obj.meta().name.clone()) {
                    set.insert(name);
                }
                apply(&obj, &mut v, now);
            }
            Ok(watcher::Event::InitDone) => {
                let listed = relisted.as_ref().map_or(0, HashSet::len);
                if let Some(set) = relisted.take() {
                    for gone in K::known(&v).into_iter().filter(|n| !set.contains(n)) {
                        K::forget(&gone, &mut v, &metrics);
                    }
                }
                let sight = K::sight(&mut v);
                sight.synced = true;
                sight.error = None;
                v.sight.synced_now(now);
                info!(resource = K::RESOURCE, objects = listed, "watch synced");
            }
            Ok(watcher::Event::Apply(obj)) => {
                metrics.watch_event(K::RESOURCE);
                apply(&obj, &mut v, now);
                K::sight(&mut v).error = None;
            }
            Ok(watcher::Event::Delete(obj)) => {
                metrics.watch_event(K::RESOURCE);
                if let Some(name) = obj.meta().name.as_deref() {
                    K::forget(name, &mut v, &metrics);
                }
                K::sight(&mut v).error = None;
            }
            Err(e) => {
                warn!(resource = K::RESOURCE, error = %e, "watch failed; retrying");
                K::sight(&mut v).error = Some((e.to_string(), now));
                continue;
            }
        }
        K::sight(&mut v).last_event = Some(now);
    }
}

impl Watched for SlimNode {
    const RESOURCE: &'static str = "nodes";
    fn sight(view: &mut View) -> &mut WatchSight {
        &mut view.sight.nodes
    }
    fn forget(name: &str, view: &mut View, metrics: &Metrics) {
        view.facts.delete_node(name);
        metrics.forget_node(name);
    }
    fn known(view: &View) -> Vec<String> {
        view.facts.nodes.keys().map(|n| n.to_string()).collect()
    }
}

/// Watches every Node until `shutdown`, applying each to the view.
pub async fn watch_nodes(api: Api<SlimNode>, view: SharedView, scope: Scope, metrics: Metrics, shutdown: CancellationToken) {
    run_watch(api, view, metrics, shutdown, move |node: &SlimNode, v: &mut View, now| v.facts.apply_node(node, &scope, now)).await
}

/// Watches the Leases in kube-node-lease until `shutdown`, applying each to the view.
pub async fn watch_leases(api: Api<SlimLease>, view: SharedView, metrics: Metrics, shutdown: CancellationToken) {
    run_watch(api, view, metrics, shutdown, |lease: &SlimLease, v: &mut View, now| v.facts.apply_lease(lease, now)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::fixtures::*;

    const SILENCE: Duration = Duration::from_secs(50);
    const SETTLE: Duration = Duration::from_secs(50);
    const NODE_SILENCE: Duration = Duration::from_secs(600);

    fn synced(at: i64) -> Sight {
        let w = WatchSight { synced: true, last_event: Some(t(at)), error: None };
        Sight { nodes: w.clone(), leases: w, regained_at: None, ever_synced: true }
    }

    fn fleet_with_lease() -> FleetFacts {
        let mut f = FleetFacts::default();
        f.apply_lease(&lease("n", t(0)), t(0));
        f
    }

    #[test]
    fn unsynced_watch_is_blind() {
        let mut s = synced(0);
        s.nodes.synced = false;
        assert_eq!(s.blindness(t(1), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::NotSynced("Node")));
    }

    #[test]
    fn silent_lease_watch_is_blind_only_when_leases_exist() {
        let s = synced(0);
        assert_eq!(s.blindness(t(49), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), None);
        assert_eq!(s.blindness(t(50), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::LeasesSilent(50)));
        assert_eq!(s.blindness(t(500), &FleetFacts::default(), SILENCE, NODE_SILENCE, SETTLE), None);
    }

    #[test]
    fn silent_node_watch_is_blind_while_leases_renew() {
        let mut f = fleet_with_lease();
        f.apply_node(&node("n").ready_at(t(0)).build(), &Scope::default(), t(0));
        let mut s = synced(0);
        s.leases.last_event = Some(t(599));
        assert_eq!(s.blindness(t(599), &f, SILENCE, NODE_SILENCE, SETTLE), None);
        s.leases.last_event = Some(t(600));
        assert_eq!(s.blindness(t(600), &f, SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::NodesSilent(600)));
        // One Node event is sight again.
        s.nodes.last_event = Some(t(601));
        assert_eq!(s.blindness(t(601), &f, SILENCE, NODE_SILENCE, SETTLE), None);
    }

    #[test]
    fn watch_error_blinds_until_delivery_or_a_quiet_grace() {
        let mut s = synced(0);
        s.nodes.error = Some(("connection reset".into(), t(10)));
        s.leases.last_event = Some(t(40));
        assert!(matches!(s.blindness(t(40), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::WatchFailing("Node", _))));
        s.leases.last_event = Some(t(60));
        assert_eq!(s.blindness(t(60), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), None);
    }

    #[test]
    fn regained_sight_settles_before_decisions_but_first_sync_does_not() {
        let mut s = Sight::default();
        s.nodes.synced = true;
        s.leases.synced = true;
        s.synced_now(t(0));
        assert_eq!(s.regained_at, None);
        s.leases.synced = false;
        s.leases.synced = true;
        s.synced_now(t(100));
        s.leases.last_event = Some(t(120));
        assert_eq!(s.blindness(t(120), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(20)));
        s.leases.last_event = Some(t(150));
        assert_eq!(s.blindness(t(150), &fleet_with_lease(), SILENCE, NODE_SILENCE, SETTLE), None);
    }
}
