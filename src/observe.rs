//! The watch edge: Nodes and node Leases in, facts and "can I see?" out.
//!
//! Two kube-runtime watchers feed one [`View`]: every object is distilled into
//! [`crate::facts`] at once (the objects themselves are dropped), and [`Sight`] records whether
//! each watch has finished its initial list, when it last delivered, and whether it is failing.
//! [`Relist`] is the one fold of watch events into a store — apply, delete, and after a
//! (re-)list forget what it no longer contains — shared with `pulsecheck check --observe`, so the
//! command and the controller cannot disagree about which objects exist.
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

/// The "re-list and prune" fold of one watch, shared by the controller's watches and by
/// `pulsecheck check --observe`.
///
/// kube-runtime's watcher announces a (re-)list with `Init`, delivers every listed object as
/// `InitApply` and ends with `InitDone`; between lists it delivers `Apply` and `Delete`. A
/// re-list after a broken watch is the only way to learn of objects deleted during the gap, so
/// whatever the store holds that the re-list did not contain must be forgotten at `InitDone` —
/// and only then: until the list is complete, a missing object may simply not have arrived yet.
/// `Relist` remembers the names seen since `Init` and prunes the rest; it decides nothing else
/// and reads no clock (the store applies objects at the time its owner gives it).
#[derive(Debug, Default)]
pub struct Relist {
    /// Names delivered since the current (re-)list began; `None` outside a (re-)list.
    seen: Option<HashSet<String>>,
}

/// What a watch's objects are folded into: the facts of a view, or a test's map.
pub trait RelistStore<K> {
    /// Applies an object that was listed, added or changed.
    fn apply(&mut self, object: &K);
    /// Forgets the object `name`: deleted, or missing from a completed re-list.
    fn forget(&mut self, name: &str);
    /// The names held now, for pruning after a re-list.
    fn names(&self) -> Vec<String>;
}

/// What one event did, for the watch's own bookkeeping (sight, metrics, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// `Init`: a (re-)list began; the watch is not in sync until it is done.
    ListStarted,
    /// `InitApply`: an object of the (re-)list was applied.
    Listed,
    /// `Apply`: an added or changed object was applied.
    Applied,
    /// `Delete`: a deleted object was forgotten.
    Deleted,
    /// `InitDone`: the (re-)list is complete with `listed` objects, and what it did not contain
    /// was forgotten.
    Synced {
        /// Objects the (re-)list delivered.
        listed: usize,
    },
}

impl Relist {
    /// Folds one watch event into `store`.
    pub fn fold<K: kube::Resource>(&mut self, event: watcher::Event<K>, store: &mut impl RelistStore<K>) -> Folded {
        match event {
            watcher::Event::Init => {
                self.seen = Some(HashSet::new());
                Folded::ListStarted
            }
            watcher::Event::InitApply(object) => {
                if let (Some(seen), Some(name)) = (self.seen.as_mut(), object.meta().name.clone()) {
                    seen.insert(name);
                }
                store.apply(&object);
                Folded::Listed
            }
            watcher::Event::InitDone => {
                let listed = self.seen.as_ref().map_or(0, HashSet::len);
                if let Some(seen) = self.seen.take() {
                    for gone in store.names().into_iter().filter(|n| !seen.contains(n)) {
                        store.forget(&gone);
                    }
                }
                Folded::Synced { listed }
            }
            watcher::Event::Apply(object) => {
                store.apply(&object);
                Folded::Applied
            }
            watcher::Event::Delete(object) => {
                if let Some(name) = object.meta().name.as_deref() {
                    store.forget(name);
                }
                Folded::Deleted
            }
        }
    }
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

/// One watch's objects in the shared view, as [`Relist`] folds events into them.
struct InView<'a, F> {
    view: &'a mut View,
    metrics: &'a Metrics,
    apply: &'a F,
    now: Timestamp,
}

impl<K: Watched, F: Fn(&K, &mut View, Timestamp)> RelistStore<K> for InView<'_, F> {
    fn apply(&mut self, object: &K) {
        (self.apply)(object, self.view, self.now)
    }
    fn forget(&mut self, name: &str) {
        K::forget(name, self.view, self.metrics)
    }
    fn names(&self) -> Vec<String> {
        K::known(self.view)
    }
}

/// Runs one watch until `shutdown`: every event updates the view (through [`Relist`]) and the
/// watch's sight. `apply` turns an object into facts (nodes need their scope, leases do not). A
/// re-list re-applies every object (unchanged values keep their observation times) and then
/// forgets the objects it no longer contains.
async fn run_watch<K: Watched>(api: Api<K>, view: SharedView, metrics: Metrics, shutdown: CancellationToken, apply: impl Fn(&K, &mut View, Timestamp)) {
    let stream = watcher(api, watcher_config()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut relist = Relist::default();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = stream.next() => match e { Some(e) => e, None => return },
        };
        let now = Timestamp::now();
        let mut v = lock(&view);
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!(resource = K::RESOURCE, error = %e, "watch failed; retrying");
                K::sight(&mut v).error = Some((e.to_string(), now));
                continue;
            }
        };
        match relist.fold(event, &mut InView { view: &mut v, metrics: &metrics, apply: &apply, now }) {
            Folded::ListStarted => K::sight(&mut v).synced = false,
            Folded::Listed => metrics.watch_event(K::RESOURCE),
            Folded::Applied | Folded::Deleted => {
                metrics.watch_event(K::RESOURCE);
                K::sight(&mut v).error = None;
            }
            Folded::Synced { listed } => {
                let sight = K::sight(&mut v);
                sight.synced = true;
                sight.error = None;
                v.sight.synced_now(now);
                info!(resource = K::RESOURCE, objects = listed, "watch synced");
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

    /// A test store: Lease name → renewTime, as last applied.
    #[derive(Default)]
    struct Renewals(std::collections::BTreeMap<String, Option<Timestamp>>);

    impl RelistStore<SlimLease> for Renewals {
        fn apply(&mut self, lease: &SlimLease) {
            if let Some(name) = lease.metadata.name.clone() {
                self.0.insert(name, lease.renew_time());
            }
        }
        fn forget(&mut self, name: &str) {
            self.0.remove(name);
        }
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    impl Renewals {
        fn held(&self) -> Vec<(&str, Option<Timestamp>)> {
            self.0.iter().map(|(n, r)| (n.as_str(), *r)).collect()
        }
    }

    #[test]
    fn relist_prunes_at_init_done_what_the_relist_did_not_deliver() {
        use watcher::Event;
        let (mut relist, mut store) = (Relist::default(), Renewals::default());
        // The initial list.
        assert_eq!(relist.fold(Event::Init, &mut store), Folded::ListStarted);
        for name in ["a", "b", "c"] {
            assert_eq!(relist.fold(Event::InitApply(lease(name, t(1))), &mut store), Folded::Listed);
        }
        assert_eq!(relist.fold(Event::InitDone, &mut store), Folded::Synced { listed: 3 });
        assert_eq!(store.held(), [("a", Some(t(1))), ("b", Some(t(1))), ("c", Some(t(1)))]);
        // Between lists: changes and deletions apply at once.
        assert_eq!(relist.fold(Event::Apply(lease("b", t(2))), &mut store), Folded::Applied);
        assert_eq!(relist.fold(Event::Apply(lease("d", t(2))), &mut store), Folded::Applied);
        assert_eq!(relist.fold(Event::Delete(lease("a", t(1))), &mut store), Folded::Deleted);
        assert_eq!(relist.fold(Event::Delete(lease("never-seen", t(1))), &mut store), Folded::Deleted);
        assert_eq!(store.held(), [("b", Some(t(2))), ("c", Some(t(1))), ("d", Some(t(2)))]);
        // A re-list after a broken watch: c and d were deleted during the gap. Nothing is
        // forgotten before the list is complete…
        assert_eq!(relist.fold(Event::Init, &mut store), Folded::ListStarted);
        assert_eq!(relist.fold(Event::InitApply(lease("b", t(3))), &mut store), Folded::Listed);
        assert_eq!(relist.fold(Event::InitApply(lease("e", t(3))), &mut store), Folded::Listed);
        assert_eq!(store.held(), [("b", Some(t(3))), ("c", Some(t(1))), ("d", Some(t(2))), ("e", Some(t(3)))]);
        // …and at InitDone exactly what it did not deliver is.
        assert_eq!(relist.fold(Event::InitDone, &mut store), Folded::Synced { listed: 2 });
        assert_eq!(store.held(), [("b", Some(t(3))), ("e", Some(t(3)))]);
        // The seen set does not outlive its list: a later Apply is not pruned by a stray InitDone.
        assert_eq!(relist.fold(Event::Apply(lease("f", t(4))), &mut store), Folded::Applied);
        assert_eq!(relist.fold(Event::InitDone, &mut store), Folded::Synced { listed: 0 });
        assert_eq!(store.held(), [("b", Some(t(3))), ("e", Some(t(3))), ("f", Some(t(4)))]);
    }

    #[test]
    fn an_empty_relist_forgets_everything() {
        use watcher::Event;
        let (mut relist, mut store) = (Relist::default(), Renewals::default());
        relist.fold(Event::Apply(lease("a", t(1))), &mut store);
        relist.fold(Event::Init, &mut store);
        assert_eq!(relist.fold(Event::InitDone, &mut store), Folded::Synced { listed: 0 });
        assert!(store.held().is_empty());
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
