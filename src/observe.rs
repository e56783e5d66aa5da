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
    facts::{FleetFacts, NodeFacts, Scope, SlimAgentLease, SlimLease, SlimNode},
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
    /// The longest wait between two deliveries since [`View::see`] last looked: `(the delivery
    /// before, the delivery after)`. A stall of the apiserver shorter than the silence rule shows
    /// only here.
    pub longest_gap: Option<(Timestamp, Timestamp)>,
}

impl WatchSight {
    /// Records a delivery at `now`.
    pub fn delivered(&mut self, now: Timestamp) {
        if let Some(before) = self.last_event {
            let longer = self.longest_gap.is_none_or(|(from, to)| now.duration_since(before) > to.duration_since(from));
            if longer && now > before {
                self.longest_gap = Some((before, now));
            }
        }
        self.last_event = Some(now);
    }
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
    /// A fresh read of `node` showed a status the Node watch had not delivered, posted about
    /// `behind` seconds before: the watch lags or stalls without an error (an etcd watch that
    /// starves, a stream the apiserver stopped feeding), which its silence rule cannot see on a
    /// small or quiet fleet. Blind until the watch delivers that status or re-lists.
    NodeWatchLags {
        /// The node whose fresh read showed it.
        node: String,
        /// How far behind the watch was, in seconds.
        behind: i64,
    },
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
            Blindness::NodeWatchLags { node, behind } => {
                write!(f, "the Node watch lags: a fresh read of node {node} showed a status posted about {behind}s earlier that the watch never delivered")
            }
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
    /// The agent Lease watch (pulsecheck's namespace). Not part of blindness: the agents are
    /// opt-in extra evidence, and while their watch cannot be relied on their reports simply
    /// count for nothing ([`Sight::agents_hidden`]).
    pub agents: WatchSight,
    /// When both watches last became synced after a blind spell.
    pub regained_at: Option<Timestamp>,
    /// Signalled each time both watches become synced: the decision loop judges at once instead
    /// of at its next tick, so `/readyz` follows the sync within moments, not up to
    /// `--evaluation-interval` later.
    pub both_synced: Arc<tokio::sync::Notify>,
    /// The first sync after start-up counts as regained too, but needs no settling: there was no gap.
    pub ever_synced: bool,
    /// The current blind spell, while one lasts: see [`View::see`].
    pub spell: Option<Spell>,
    /// The Node watch was caught lagging behind a fresh read ([`node_watch_lag`]), until it
    /// delivers what the read showed or re-lists.
    pub node_lag: Option<NodeLag>,
}

/// The Node watch caught behind: a fresh read of `node` showed a status heartbeat the watch had
/// not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLag {
    /// The node read.
    pub node: String,
    /// The heartbeat (`Ready`'s `lastHeartbeatTime`, the node's clock) the read showed.
    pub heartbeat: Timestamp,
    /// About when that status reached the apiserver, on pulsecheck's clock.
    pub posted_at: Timestamp,
}

/// Whether a fresh read of a node (`fresh`) shows the Node watch lagging: a status heartbeat newer
/// than the one the watch delivered (`cached`), posted `allowance` or longer ago. When it was
/// posted is worked out without trusting the node's clock: the two heartbeats come from the same
/// clock, so their difference, added to when pulsecheck saw the older one arrive, is when the newer
/// one did (or later, if the watch was late already then — so the estimate errs on the side of
/// "not lagging"). A status posted a moment ago may simply be on its way.
pub fn node_watch_lag(cached: &NodeFacts, fresh: &SlimNode, now: Timestamp, allowance: Duration) -> Option<NodeLag> {
    if fresh.metadata.uid.as_deref().unwrap_or_default() != cached.uid {
        return None;
    }
    let heartbeat = fresh.condition("Ready")?.last_heartbeat_time.as_ref()?.0;
    let delivered = cached.status.value?;
    if heartbeat <= delivered {
        return None;
    }
    let posted_at = cached.status.observed_at.checked_add(heartbeat.duration_since(delivered)).ok()?;
    let allowance = SignedDuration::try_from(allowance).unwrap_or(SignedDuration::MAX);
    (now.duration_since(posted_at) >= allowance).then(|| NodeLag { node: fresh.metadata.name.clone().unwrap_or_default(), heartbeat, posted_at })
}

/// A blind spell: when it began (pulsecheck's clock), and whether the Lease watch was blind too
/// (a Node watch silent on its own hides status changes, not renewals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spell {
    /// When pulsecheck stopped seeing.
    pub since: Timestamp,
    /// Leases were not seen either.
    pub leases: bool,
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
        if let Some(lag) = &self.node_lag {
            return Some(Blindness::NodeWatchLags { node: lag.node.clone(), behind: now.duration_since(lag.posted_at).as_secs() });
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

    /// Why the agents' reports cannot be relied on at `now`, if they cannot: their watch has not
    /// listed them, failed within `silence`, or delivered nothing for `silence` while agents
    /// exist (every agent renews several times within its Lease's duration). The reason stays
    /// the same while the cause does (no running count of seconds in it): it is a fleet-wide
    /// input of every verdict, and a new one has the whole fleet judged again.
    pub fn agents_hidden(&self, now: Timestamp, facts: &FleetFacts, silence: Duration) -> Option<String> {
        let silence = SignedDuration::try_from(silence).unwrap_or(SignedDuration::MAX);
        let w = &self.agents;
        if !w.synced {
            return Some("the agent Lease watch has not listed them yet".into());
        }
        if let Some((e, at)) = &w.error
            && now.duration_since(*at) < silence
        {
            return Some(format!("the agent Lease watch fails: {e}"));
        }
        let quiet = w.last_event.map_or(SignedDuration::MAX, |t| now.duration_since(t));
        (!facts.agents.is_empty() && quiet >= silence).then(|| match w.last_event {
            Some(t) => format!("the agent Lease watch has delivered nothing since {t} (over {}s)", silence.as_secs()),
            None => format!("the agent Lease watch has delivered nothing (over {}s)", silence.as_secs()),
        })
    }

    /// The instant up to which pulsecheck knows it saw everything: the Lease watch's latest
    /// delivery (never later than `now`). Every kubelet renews its Lease every few seconds, so a
    /// working Lease watch delivers all the time, and nothing the watch has not had the chance
    /// to deliver can count as silence: judged at the horizon, no node's Lease or status can
    /// cross a threshold before the fleet-wide silence rule sees the watch itself go quiet.
    pub fn horizon(&self, now: Timestamp, facts: &FleetFacts) -> Timestamp {
        match self.leases.last_event {
            Some(at) if !facts.leases.is_empty() => at.min(now),
            _ => now,
        }
    }

    /// When a blind spell that is `blindness` at `now` began: when the silent watch last
    /// delivered, when the failing watch failed, or now.
    fn spell_start(&self, now: Timestamp, blindness: &Blindness) -> Timestamp {
        let ago = |s: i64| now.checked_sub(SignedDuration::from_secs(s)).unwrap_or(now);
        let watch = |name: &str| if name == "Node" { &self.nodes } else { &self.leases };
        match blindness {
            Blindness::LeasesSilent(s) | Blindness::NodesSilent(s) => ago(*s),
            // Since the status the watch never delivered was posted.
            Blindness::NodeWatchLags { .. } => self.node_lag.as_ref().map_or(now, |lag| lag.posted_at.min(now)),
            // Only the failing watch's own (recent: `blindness` checked that) error.
            Blindness::WatchFailing(name, _) => watch(name).error.as_ref().map_or(now, |(_, at)| *at).min(now),
            Blindness::NotSynced(_) | Blindness::Settling(_) => now,
        }
    }

    /// The Node watch delivered `node`: if it is the status a fresh read caught it lagging
    /// behind (or a later one), the watch has caught up.
    fn node_delivered(&mut self, node: &SlimNode) {
        let caught_up = self.node_lag.as_ref().is_some_and(|lag| {
            node.metadata.name.as_deref() == Some(lag.node.as_str())
                && node.condition("Ready").and_then(|c| c.last_heartbeat_time.as_ref()).is_some_and(|h| h.0 >= lag.heartbeat)
        });
        if caught_up && let Some(lag) = self.node_lag.take() {
            info!(node = lag.node, "the Node watch delivered the status it lagged behind");
        }
    }

    fn synced_now(&mut self, now: Timestamp) {
        if self.nodes.synced && self.leases.synced {
            if self.ever_synced {
                self.regained_at = Some(now);
            }
            self.ever_synced = true;
            self.both_synced.notify_one();
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

impl View {
    /// Why pulsecheck is blind at `now`, if it is ([`Sight::blindness`]), and the bookkeeping of
    /// blind spells: however a spell ends — a re-list, or the watches simply delivering again
    /// after an etcd stall or a stopped apiserver — the time it lasted is taken off every
    /// heartbeat's age ([`FleetFacts::discount`]), and sight settles for `settle` before anything
    /// is decided, so kubelets can post the status they could not post while the apiserver was
    /// away. A stall too short for the silence rule to catch at a tick shows as a gap between two
    /// Lease deliveries; what exceeds half of `silence` (kubelets renew several times within it)
    /// is taken off too. Time pulsecheck could not see never counts as staleness.
    pub fn see(&mut self, now: Timestamp, silence: Duration, node_silence: Duration, settle: Duration) -> Option<Blindness> {
        let gap = self.sight.leases.longest_gap.take();
        self.sight.nodes.longest_gap = None;
        let blindness = self.sight.blindness(now, &self.facts, silence, node_silence, settle);
        if !self.sight.ever_synced {
            // Start-up: nothing was seen before, so there is no gap to take off.
            return blindness;
        }
        match &blindness {
            Some(Blindness::Settling(_)) | None => {
                let Some(spell) = self.sight.spell.take() else {
                    self.discount_gap(gap, now, silence);
                    return self.sight.blindness(now, &self.facts, silence, node_silence, settle);
                };
                match self.sight.regained_at.filter(|at| *at >= spell.since) {
                    // Ended by a re-list: sight came back when it completed.
                    Some(at) => {
                        self.discount(spell, at);
                        blindness
                    }
                    // Ended without a re-list: the watches deliver again. Settle from now.
                    None => {
                        info!(blind_for = %now.duration_since(spell.since), "watches deliver again without a re-list; settling before deciding");
                        self.discount(spell, now);
                        self.sight.regained_at = Some(now);
                        self.sight.blindness(now, &self.facts, silence, node_silence, settle)
                    }
                }
            }
            Some(other) => {
                let since = self.sight.spell_start(now, other);
                let leases = !matches!(other, Blindness::NodesSilent(_) | Blindness::NodeWatchLags { .. });
                let spell = self.sight.spell.get_or_insert(Spell { since, leases });
                spell.leases |= leases;
                blindness
            }
        }
    }

    fn discount(&mut self, spell: Spell, until: Timestamp) {
        if spell.leases {
            self.facts.discount(spell.since, until);
        } else {
            self.facts.discount_status(spell.since, until);
        }
    }

    /// Takes off the part of a gap between two Lease deliveries beyond half of `silence`, and
    /// settles after a gap the silence rule should have caught but no tick saw.
    fn discount_gap(&mut self, gap: Option<(Timestamp, Timestamp)>, now: Timestamp, silence: Duration) {
        let Some((before, after)) = gap else { return };
        let allowance = SignedDuration::try_from(silence / 2).unwrap_or(SignedDuration::MAX);
        let Some(from) = before.checked_add(allowance).ok().filter(|from| *from < after) else { return };
        self.facts.discount(from, after);
        if SignedDuration::try_from(silence).is_ok_and(|s| after.duration_since(before) >= s) {
            info!(gap = %after.duration_since(before), "the Lease watch was silent for a whole silence threshold between two ticks; settling before deciding");
            self.sight.regained_at = Some(now);
        }
    }
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

impl Watched for SlimAgentLease {
    const RESOURCE: &'static str = "agent_leases";
    const PART_OF_SIGHT: bool = false;
    fn sight(view: &mut View) -> &mut WatchSight {
        &mut view.sight.agents
    }
    fn forget(name: &str, view: &mut View, _: &Metrics) {
        view.facts.delete_agent_lease(name);
    }
    fn known(view: &View) -> Vec<String> {
        view.facts.agent_lease_names()
    }
}

/// What differs between the Node and the Lease watch, besides how an object becomes facts.
trait Watched: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static {
    /// `nodes` or `leases`, for logs and metrics.
    const RESOURCE: &'static str;
    /// Whether this watch is part of pulsecheck's sight: its (re-)list ends a blind spell. The
    /// agents' watch is not: they are extra evidence, and their re-list is no regained sight to
    /// settle after.
    const PART_OF_SIGHT: bool = true;
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
async fn run_watch<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    view: SharedView,
    metrics: Metrics,
    shutdown: CancellationToken,
    apply: impl Fn(&K, &mut View, Timestamp),
) {
    let stream = watcher(api, config).default_backoff();
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
                if K::RESOURCE == SlimNode::RESOURCE {
                    // A complete re-list is the truth as of now: whatever the watch lagged behind is in it.
                    v.sight.node_lag = None;
                }
                let sight = K::sight(&mut v);
                sight.synced = true;
                sight.error = None;
                if K::PART_OF_SIGHT {
                    v.sight.synced_now(now);
                }
                info!(resource = K::RESOURCE, objects = listed, "watch synced");
            }
        }
        K::sight(&mut v).delivered(now);
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
        // The watch delivers in order: the deletion comes after any status of the node it lagged
        // behind, and a deleted node's status will never arrive.
        if view.sight.node_lag.as_ref().is_some_and(|lag| lag.node == name) {
            view.sight.node_lag = None;
        }
    }
    fn known(view: &View) -> Vec<String> {
        view.facts.nodes.keys().map(|n| n.to_string()).collect()
    }
}

/// Watches every Node until `shutdown`, applying each to the view.
pub async fn watch_nodes(api: Api<SlimNode>, view: SharedView, scope: Scope, metrics: Metrics, shutdown: CancellationToken) {
    run_watch(api, watcher_config(), view, metrics, shutdown, move |node: &SlimNode, v: &mut View, now| {
        v.facts.apply_node(node, &scope, now);
        v.sight.node_delivered(node);
    })
    .await
}

/// Watches the Leases in kube-node-lease until `shutdown`, applying each to the view.
pub async fn watch_leases(api: Api<SlimLease>, view: SharedView, metrics: Metrics, shutdown: CancellationToken) {
    run_watch(api, watcher_config(), view, metrics, shutdown, |lease: &SlimLease, v: &mut View, now| v.facts.apply_lease(lease, now)).await
}

/// Watches the node agents' Leases (labelled `app.kubernetes.io/component=agent`) in pulsecheck's
/// own namespace until `shutdown`, applying each to the view.
pub async fn watch_agent_leases(api: Api<SlimAgentLease>, view: SharedView, metrics: Metrics, shutdown: CancellationToken) {
    let config = watcher_config().labels(&format!("{}={}", crate::agent::COMPONENT_LABEL, crate::agent::COMPONENT));
    run_watch(api, config, view, metrics, shutdown, |lease: &SlimAgentLease, v: &mut View, now| v.facts.apply_agent_lease(lease, now)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::fixtures::*;

    const SILENCE: Duration = Duration::from_secs(50);
    const SETTLE: Duration = Duration::from_secs(50);
    const NODE_SILENCE: Duration = Duration::from_secs(600);

    fn synced(at: i64) -> Sight {
        let w = WatchSight { synced: true, last_event: Some(t(at)), error: None, longest_gap: None };
        Sight {
            nodes: w.clone(),
            leases: w.clone(),
            agents: w,
            regained_at: None,
            ever_synced: true,
            spell: None,
            node_lag: None,
            both_synced: Default::default(),
        }
    }

    #[test]
    fn agent_reports_are_hidden_while_their_watch_is_unsynced_failing_or_silent_but_never_blind_pulsecheck() {
        let mut facts = fleet_with_lease();
        let ok = crate::agent::Report { disk: crate::agent::DiskHealth::Ok, terminating: false };
        facts.apply_agent_lease(&agent_lease("n", t(0), &ok), t(0));
        let mut s = synced(0);
        assert_eq!(s.agents_hidden(t(10), &facts, SILENCE), None);
        let silent = s.agents_hidden(t(60), &facts, SILENCE).unwrap();
        assert!(silent.contains("delivered nothing since") && silent.contains("over"), "{silent}");
        // The same reason while the silence lasts: a new one would have every node judged again.
        assert_eq!(s.agents_hidden(t(90), &facts, SILENCE).as_ref(), Some(&silent));
        s.agents.error = Some(("leases is forbidden".into(), t(5)));
        assert!(s.agents_hidden(t(10), &facts, SILENCE).unwrap().contains("forbidden"));
        s.agents.synced = false;
        assert!(s.agents_hidden(t(10), &facts, SILENCE).is_some());
        // Its failure is no reason for pulsecheck to stop seeing nodes.
        s.leases.last_event = Some(t(10));
        s.nodes.last_event = Some(t(10));
        assert_eq!(s.blindness(t(10), &facts, SILENCE, NODE_SILENCE, SETTLE), None);
        // With no agents at all, a quiet agent watch hides nothing.
        s.agents = WatchSight { synced: true, last_event: Some(t(0)), error: None, longest_gap: None };
        assert_eq!(s.agents_hidden(t(600), &fleet_with_lease(), SILENCE), None);
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

    /// A view of one node renewing its Lease and posting status at t(0), both watches synced.
    fn seen_view() -> View {
        let mut v = View { facts: fleet_with_lease(), sight: synced(0) };
        v.facts.apply_node(&node("n").ready_at(t(0)).build(), &Scope::default(), t(0));
        v
    }

    #[test]
    fn a_stopped_apiserver_is_blindness_before_any_lease_is_stale_and_its_time_is_not_staleness() {
        let mut v = seen_view();
        // The apiserver stops at t(0): nothing more arrives. Judged at the horizon, the Lease
        // never looks older than the silence that the fleet-wide rule catches.
        assert_eq!(v.sight.horizon(t(49), &v.facts), t(0));
        assert_eq!(v.see(t(49), SILENCE, NODE_SILENCE, SETTLE), None);
        assert_eq!(v.see(t(50), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::LeasesSilent(50)));
        assert_eq!(v.sight.spell, Some(Spell { since: t(0), leases: true }));
        // It comes back at t(900) without a 410: the watches simply deliver again.
        v.sight.leases.last_event = Some(t(900));
        v.sight.nodes.last_event = Some(t(900));
        assert_eq!(v.see(t(900), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(0)));
        assert_eq!(v.sight.spell, None);
        // The 900 s pulsecheck could not see are not the node's silence.
        assert_eq!(v.facts.nodes["n"].status.observed_at, t(900));
        assert_eq!(v.facts.leases["n"].renew.observed_at, t(900));
        assert_eq!(v.see(t(949), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(49)));
        v.sight.leases.last_event = Some(t(950));
        assert_eq!(v.see(t(950), SILENCE, NODE_SILENCE, SETTLE), None);
    }

    #[test]
    fn a_spell_ended_by_a_relist_is_discounted_up_to_the_relist_and_settles_once() {
        let mut v = seen_view();
        v.sight.nodes.error = Some(("410 Gone".into(), t(100)));
        v.sight.leases.last_event = Some(t(100));
        assert!(matches!(v.see(t(100), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::WatchFailing("Node", _))));
        v.sight.nodes.synced = false;
        assert_eq!(v.see(t(110), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::NotSynced("Node")));
        // The re-list completes at t(130).
        v.sight.nodes.synced = true;
        v.sight.nodes.error = None;
        v.sight.synced_now(t(130));
        v.sight.leases.last_event = Some(t(131));
        assert_eq!(v.see(t(131), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(1)));
        assert_eq!(v.facts.nodes["n"].status.observed_at, t(30), "the 30 s blind spell is taken off");
        v.sight.leases.last_event = Some(t(180));
        assert_eq!(v.see(t(180), SILENCE, NODE_SILENCE, SETTLE), None, "settled once, from the re-list");
    }

    #[test]
    fn the_first_sync_after_start_is_no_blind_spell() {
        let mut v = seen_view();
        v.sight = Sight::default();
        assert_eq!(v.see(t(5), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::NotSynced("Node")));
        v.sight.nodes.synced = true;
        v.sight.leases.synced = true;
        v.sight.synced_now(t(6));
        v.sight.nodes.last_event = Some(t(6));
        v.sight.leases.last_event = Some(t(6));
        assert_eq!(v.see(t(6), SILENCE, NODE_SILENCE, SETTLE), None);
        assert_eq!(v.facts.nodes["n"].status.observed_at, t(0));
    }

    #[test]
    fn a_stall_shorter_than_the_silence_rule_is_taken_off_beyond_half_the_grace() {
        let mut v = seen_view();
        v.sight.leases.delivered(t(0));
        // A 40 s stall (the silence rule needs 50 s): no tick saw it, the gap between two
        // deliveries did. 15 s of it (beyond 25 s) are taken off: the Lease seen at 0 is 25 s
        // old at 40, not 40.
        v.sight.leases.delivered(t(40));
        assert_eq!(v.see(t(40), SILENCE, NODE_SILENCE, SETTLE), None);
        assert_eq!(v.facts.leases["n"].renew.observed_at, t(15));
        assert_eq!(v.facts.nodes["n"].status.observed_at, t(15));
        // Normal gaps (kubelets renew every 10 s) take nothing off.
        v.sight.leases.delivered(t(50));
        assert_eq!(v.see(t(50), SILENCE, NODE_SILENCE, SETTLE), None);
        assert_eq!(v.facts.leases["n"].renew.observed_at, t(15));
        // A gap as long as the grace that fell between two ticks also settles.
        v.sight.leases.delivered(t(110));
        assert_eq!(v.see(t(110), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(0)));
    }

    #[test]
    fn a_node_watch_silent_on_its_own_discounts_status_but_not_renewals() {
        let mut v = seen_view();
        v.sight.leases.last_event = Some(t(600));
        assert_eq!(v.see(t(600), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::NodesSilent(600)));
        v.sight.nodes.last_event = Some(t(700));
        v.sight.leases.last_event = Some(t(700));
        assert_eq!(v.see(t(700), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(0)));
        assert_eq!(v.facts.nodes["n"].status.observed_at, t(700));
        assert_eq!(v.facts.leases["n"].renew.observed_at, t(0), "the Lease watch saw no renewal: its age stands");
    }

    #[test]
    fn a_watch_error_starts_the_spell_when_that_watch_failed_not_at_an_older_error_of_the_other() {
        let mut v = seen_view();
        v.sight.nodes.error = Some(("old".into(), t(10)));
        v.sight.leases.error = Some(("reset".into(), t(100)));
        v.sight.leases.last_event = Some(t(100));
        v.sight.nodes.last_event = Some(t(100));
        assert!(matches!(v.see(t(100), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::WatchFailing("Lease", _))));
        assert_eq!(v.sight.spell.map(|s| s.since), Some(t(100)));
    }

    #[test]
    fn a_fresh_read_newer_than_the_watch_shows_the_watch_lagging_whatever_the_node_s_clock_says() {
        // The watch delivered heartbeat H at 100 (pulsecheck's clock); a fresh read shows H + 60 s.
        for skew in [0, 3600, -3600] {
            let mut f = FleetFacts::default();
            f.apply_node(&node("n").ready_at(t(skew)).build(), &Scope::default(), t(100));
            let cached = &f.nodes["n"];
            let fresh = node("n").ready_at(t(skew + 60)).build();
            let allowance = Duration::from_secs(25);
            // Posted at about 160: still on its way at 180, lagging at 185.
            assert_eq!(node_watch_lag(cached, &fresh, t(184), allowance), None, "skew {skew}");
            let lag = node_watch_lag(cached, &fresh, t(185), allowance).unwrap_or_else(|| panic!("skew {skew}: not seen lagging"));
            assert_eq!((lag.node.as_str(), lag.heartbeat, lag.posted_at), ("n", t(skew + 60), t(160)), "skew {skew}");
            // The same status, an older one, or another node under that name: no lag.
            assert_eq!(node_watch_lag(cached, &node("n").ready_at(t(skew)).build(), t(1000), allowance), None);
            assert_eq!(node_watch_lag(cached, &node("n").ready_at(t(skew - 10)).build(), t(1000), allowance), None);
            assert_eq!(node_watch_lag(cached, &node("n").uid("other").ready_at(t(skew + 60)).build(), t(1000), allowance), None);
        }
    }

    #[test]
    fn a_lagging_node_watch_catches_up_when_it_delivers_the_node_s_deletion() {
        let mut v = seen_view();
        v.sight.node_lag = Some(NodeLag { node: "n".into(), heartbeat: t(200), posted_at: t(200) });
        let metrics = Metrics::new(crate::metrics::PerNodeMetrics::None);
        <SlimNode as Watched>::forget("m", &mut v, &metrics);
        assert!(v.sight.node_lag.is_some(), "another node's deletion");
        <SlimNode as Watched>::forget("n", &mut v, &metrics);
        assert_eq!(v.sight.node_lag, None, "a deleted node's lagged status never arrives: it would keep pulsecheck blind until a re-list");
    }

    #[test]
    fn a_lagging_node_watch_is_blindness_until_it_delivers_what_the_read_showed_and_its_time_is_not_staleness() {
        let mut v = seen_view();
        v.sight.leases.last_event = Some(t(300));
        v.sight.nodes.last_event = Some(t(300));
        v.sight.node_lag = Some(NodeLag { node: "n".into(), heartbeat: t(200), posted_at: t(200) });
        assert_eq!(v.see(t(300), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::NodeWatchLags { node: "n".into(), behind: 100 }));
        assert_eq!(v.sight.spell, Some(Spell { since: t(200), leases: false }));
        // Another node, or an older status of this one: still behind.
        v.sight.node_delivered(&node("m").ready_at(t(250)).build());
        v.sight.node_delivered(&node("n").ready_at(t(150)).build());
        assert!(v.sight.node_lag.is_some());
        // The status the read showed arrives through the watch: caught up; the time behind is
        // taken off the statuses (not the renewals, which the Lease watch saw), and sight settles.
        v.sight.node_delivered(&node("n").ready_at(t(200)).build());
        assert_eq!(v.sight.node_lag, None);
        v.facts.apply_node(&node("m").ready_at(t(0)).build(), &Scope::default(), t(0));
        assert_eq!(v.see(t(310), SILENCE, NODE_SILENCE, SETTLE), Some(Blindness::Settling(0)));
        assert_eq!(v.facts.nodes["m"].status.observed_at, t(110), "the 110 s behind were taken off the status age");
        assert_eq!(v.facts.leases["n"].renew.observed_at, t(0), "the Lease watch was not behind: renewal ages stand");
    }
}
