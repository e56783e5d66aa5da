//! The fleet guard: turns verdicts into a plan of what to remediate and release, and refuses
//! to let pulsecheck cause a remediation storm.
//!
//! Rules, in order:
//! * Nothing new is planned while pulsecheck is blind (a watch unsynced or silent, or sight
//!   regained too recently): it never acts on a view it cannot trust. Releases wait too.
//! * At most `limit = max(1, max_unhealthy% × eligible nodes)` nodes are remediated at once. When
//!   the nodes that need remediation (held plus new) exceed the limit, the circuit opens and
//!   nothing new is remediated — many nodes failing together points at a shared cause
//!   (pulsecheck, the apiserver, the network) more than at many dead disks. This is Cluster
//!   API's `maxUnhealthy` short-circuit and medik8s' `minHealthy`.
//!   The nodes counted are every unavailable eligible node, not only pulsecheck's: Dead and
//!   not-ready nodes, nodes a person cordoned, nodes kube-controller-manager tainted — after a
//!   zone outage took a third of the fleet out, pulsecheck takes no more.
//! * A remediation never leaves fewer than `min_available` schedulable nodes in the pool
//!   (`--min-available-nodes`, default 1): a one-node cluster keeps its only node.
//! * At most `max_per_minute` new remediations start in any 60 s window.
//! * A remediated node is released only after it has been Healthy continuously for
//!   `recover_after` (hysteresis) — health the probes can confirm, with a status refresh seen
//!   after health returned, counted from the first status change this instance saw (a restarted
//!   instance starts counting anew) — or at once when a person excludes it.
//!
//! Like [`crate::verdict`], this is pure: `now` is passed in, and [`Memory`] is the only state.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{
    facts::{FleetFacts, NodeFacts, NodeMap, NodeName},
    parse::{percentage, positive_duration},
    verdict::{Assessment, Assessments, Verdict},
};

/// Limits that keep pulsecheck from ever causing a remediation storm.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    /// At most this percentage of eligible nodes (at least one) may be unavailable — dead, not ready, cordoned, out-of-service or remediated by pulsecheck; beyond it the circuit opens.
    #[arg(long, env = "PULSECHECK_MAX_UNHEALTHY", value_name = "PERCENT", default_value = "20", value_parser = percentage)]
    pub max_unhealthy: f64,
    /// At most this many new remediations start per minute.
    #[arg(long, env = "PULSECHECK_MAX_REMEDIATIONS_PER_MINUTE", value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_remediations_per_minute: u32,
    /// Never remediate a node if that leaves fewer schedulable nodes than this in the pool (0 allows taking the last one).
    #[arg(long, env = "PULSECHECK_MIN_AVAILABLE_NODES", value_name = "N", default_value_t = 1)]
    pub min_available_nodes: usize,
    /// Also remediate Dead nodes (Lease and status both stale), which kube-controller-manager already taints.
    #[arg(long, env = "PULSECHECK_ACT_ON_DEAD", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub act_on_dead: bool,
    /// A zombie must be healthy continuously this long before pulsecheck releases it.
    #[arg(long, env = "PULSECHECK_RECOVER_AFTER", value_name = "DURATION", default_value = "2m", value_parser = positive_duration)]
    pub recover_after: Duration,
}

impl GuardConfig {
    /// The guard `args` ask for.
    pub fn from_args(args: &GuardArgs) -> GuardConfig {
        GuardConfig {
            max_unhealthy_percent: args.max_unhealthy,
            max_per_minute: args.max_remediations_per_minute,
            act_on_dead: args.act_on_dead,
            recover_after: args.recover_after,
            min_available: args.min_available_nodes,
        }
    }
}

/// Guard settings (validated by [`crate::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Percentage of eligible nodes that may be remediated at once.
    pub max_unhealthy_percent: f64,
    /// New remediations per 60 s window.
    pub max_per_minute: u32,
    /// Remediate Dead nodes as well as Zombies.
    pub act_on_dead: bool,
    /// A zombie must be Healthy this long before release.
    pub recover_after: Duration,
    /// Schedulable nodes a remediation must leave (in the `--node-selector` pool).
    pub min_available: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { max_unhealthy_percent: 20.0, max_per_minute: 2, act_on_dead: false, recover_after: Duration::from_secs(120), min_available: 1 }
    }
}

/// Why a node that needs remediation is not remediated now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// The circuit is open: too many nodes need remediation at once.
    CircuitOpen,
    /// The per-minute rate is used up; it will be tried again.
    RateLimited,
    /// Remediating it would leave fewer schedulable nodes than `--min-available-nodes`.
    LastCapacity,
}

/// What to do this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Nodes to remediate now.
    pub remediate: Vec<String>,
    /// Nodes to release now (pulsecheck's own actions undone).
    pub release: Vec<String>,
    /// Nodes that need remediation but are held back, and why, sorted by name (in a mass
    /// failure most of the fleet's trouble, at every tick: shared names, no copies).
    pub held: Vec<(NodeName, Hold)>,
    /// Nodes that need remediation and are not remediated by pulsecheck yet (held or not).
    pub wanting: usize,
    /// More nodes need remediation than the limit allows.
    pub circuit_open: bool,
    /// Nodes that may be remediated at once.
    pub limit: usize,
    /// Nodes pulsecheck currently holds a remediation on.
    pub active: usize,
    /// Nodes not excluded.
    pub eligible: usize,
    /// Eligible nodes that are unavailable for any reason: pulsecheck's own remediations, nodes
    /// kube-controller-manager or people took out, dead and not-ready nodes.
    pub unavailable: usize,
}

/// The guard's memory between ticks.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Since when each node has been Healthy without interruption.
    healthy_since: NodeMap<Timestamp>,
    /// Start times of recent remediations (for the per-minute rate).
    recent_starts: VecDeque<Timestamp>,
    /// Nodes remediated in dry-run mode (nothing was written, so the Node cannot tell us).
    simulated: HashMap<String, Timestamp>,
    /// Nodes released in dry-run mode whose real remediation (from an earlier run) stays on the
    /// Node: the simulation counts them released, so the release is not planned on every tick.
    simulated_released: HashSet<String>,
    /// The last plan was made as the acting leader.
    acting: bool,
    /// Nodes whose record claimed pulsecheck's cordon when last seen, with the record's start:
    /// `spec.unschedulable` is a bare flag, so if the record is deleted while the cordon stays,
    /// this is what still knows the cordon is pulsecheck's (see [`Memory::lost_records`]).
    cordoned: HashMap<String, (String, Option<Timestamp>)>,
}

impl Memory {
    /// Records that a remediation of `node` started at `now` (call after the actuator
    /// succeeded, or after a dry-run remediation with `simulated`).
    pub fn remediation_started(&mut self, node: &str, now: Timestamp, simulated: bool) {
        self.recent_starts.push_back(now);
        if simulated {
            self.simulated.insert(node.to_string(), now);
            self.simulated_released.remove(node);
        }
    }

    /// Records that `node` was released (`simulated` in dry-run mode: nothing was written).
    pub fn released(&mut self, node: &str, simulated: bool) {
        self.simulated.remove(node);
        if !simulated {
            self.cordoned.remove(node);
        }
        if simulated {
            self.simulated_released.insert(node.to_string());
        }
    }

    /// Notes that pulsecheck has just cordoned `node` (the Node `uid`; its record says so from
    /// `since`), before any watch event shows it.
    pub fn cordoned_now(&mut self, node: &str, uid: &str, since: Timestamp) {
        self.cordoned.insert(node.to_string(), (uid.to_string(), Some(since)));
    }

    /// Notes which cordons are pulsecheck's by their records, and forgets those any observation
    /// since the last tick showed undone (`uncordoned`, by anyone: a cordon after that is
    /// somebody else's) or whose Node was re-created.
    pub fn note_cordons(&mut self, facts: &FleetFacts, uncordoned: &[NodeName]) {
        let names: Vec<NodeName> = facts.nodes.keys().cloned().collect();
        self.note_cordons_of(facts, uncordoned, &names);
    }

    /// [`Memory::note_cordons`] looking at the nodes in `changed` only: those whose facts changed
    /// or that a step was carried out on since the last call (a cordon's record does not appear
    /// by itself).
    pub fn note_cordons_of(&mut self, facts: &FleetFacts, uncordoned: &[NodeName], changed: &[NodeName]) {
        self.cordoned.retain(|n, (uid, _)| {
            !uncordoned.iter().any(|u| **u == **n) && facts.nodes.get(n.as_str()).is_some_and(|f| f.unschedulable && f.uid == *uid && !f.cordon_taken_over)
        });
        for (name, f) in changed.iter().filter_map(|n| facts.nodes.get_key_value(n)) {
            if f.remediation.cordoned && f.unschedulable && !f.cordon_taken_over && !uncordoned.contains(name) {
                self.cordoned.insert(name.to_string(), (f.uid.clone(), f.remediation.since));
            }
        }
    }

    /// Nodes still cordoned by pulsecheck whose record somebody deleted, with the record's start:
    /// the record is written back, or the cordon would never be undone.
    pub fn lost_records(&self, facts: &FleetFacts) -> Vec<(String, Option<Timestamp>)> {
        let mut lost: Vec<(String, Option<Timestamp>)> = self
            .cordoned
            .iter()
            .filter(|(n, (uid, _))| facts.nodes.get(n.as_str()).is_some_and(|f| f.unschedulable && f.uid == *uid && !f.remediation.is_active()))
            .map(|(n, (_, since))| (n.clone(), *since))
            .collect();
        lost.sort_unstable();
        lost
    }

    /// The nodes remediated in a dry run (nothing on the Node says so).
    pub fn simulated_nodes(&self) -> impl Iterator<Item = &str> {
        self.simulated.keys().map(String::as_str)
    }

    /// Forgets nodes that no longer exist: all of them with `all`, else those of the records
    /// kept for remediated nodes only (few) — the hysteresis clock of a deleted node is dropped
    /// by the plan that sees it gone ([`plan_changed`]).
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool, all: bool) {
        self.cordoned.retain(|n, _| exists(n));
        if all {
            self.healthy_since.retain(|n, _| exists(n));
        }
        self.simulated.retain(|n, _| exists(n));
        self.simulated_released.retain(|n| exists(n));
    }

    /// True when pulsecheck holds (or, in dry-run, pretends to hold) a remediation on `node`.
    pub fn holds(&self, facts: &FleetFacts, node: &str) -> bool {
        facts.nodes.get(node).map_or_else(|| self.simulated.contains_key(node), |n| self.holds_node(node, n))
    }

    /// [`Memory::holds`] for a node whose facts are at hand (a pass over the fleet): no lookup
    /// beyond the dry-run and cordon records, and none while those are empty.
    pub fn holds_node(&self, node: &str, n: &NodeFacts) -> bool {
        (!self.simulated.is_empty() && self.simulated.contains_key(node))
            || ((self.simulated_released.is_empty() || !self.simulated_released.contains(node))
                && (n.remediation.is_active() || n.has_our_taint || (n.unschedulable && self.cordoned.get(node).is_some_and(|(uid, _)| *uid == n.uid))))
    }
}

/// The remediation limit for `eligible` nodes.
pub fn limit(eligible: usize, max_unhealthy_percent: f64) -> usize {
    let allowed = (eligible as f64 * max_unhealthy_percent / 100.0).floor();
    (allowed as usize).max(1)
}

/// True when a node with `verdict` is to be remediated: a Zombie, or a Dead node with `--act-on-dead`.
pub fn needs_remediation(verdict: Verdict, cfg: &GuardConfig) -> bool {
    verdict == Verdict::Zombie || (cfg.act_on_dead && verdict == Verdict::Dead)
}

/// How this tick may use its view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stance {
    /// The leader, seeing: plans actions.
    Act,
    /// A follower, seeing: keeps the hysteresis clocks current (so a relapse it watched counts
    /// when it becomes leader) but plans nothing.
    Watch,
    /// Cannot trust its view: plans nothing, and no node's health counts as continuous across it.
    Blind,
}

/// What each node counts for in the guard's plan, kept between ticks so that a plan costs what
/// changed ([`plan_changed`]): whether it is eligible, held by pulsecheck, unavailable, and
/// wants a remediation (and whether that would cost capacity).
#[derive(Debug, Default, Clone)]
pub struct Roster {
    entries: NodeMap<Counted>,
    eligible: usize,
    active: usize,
    unavailable: usize,
    /// The nodes pulsecheck holds, by name.
    holding: BTreeSet<NodeName>,
    /// The nodes that need a remediation pulsecheck does not hold, by name (the same nodes are
    /// chosen first on every tick), with whether marking it costs capacity.
    wanting: BTreeMap<NodeName, bool>,
    costly_wanting: usize,
}

/// One node's part in the [`Roster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    eligible: bool,
    holds: bool,
    unavailable: bool,
    wants: Option<bool>,
}

impl Roster {
    /// Counts node `name` anew from its assessment (none: it is gone), facts and memory.
    fn recount(&mut self, name: &NodeName, a: Option<&Assessment>, facts: &FleetFacts, memory: &Memory, cfg: &GuardConfig) {
        // The budget bounds every unavailable node, not only pulsecheck's: after a zone outage
        // took a third of the fleet out, taking more would make the outage worse.
        let now = a.map(|a| {
            let node = facts.nodes.get(name);
            let holds = node.map_or_else(|| memory.holds(facts, name), |f| memory.holds_node(name, f));
            let unavailable = holds || a.verdict == Verdict::Dead || node.is_none_or(|f| !f.schedulable());
            // A zombie someone else already took out costs no capacity when pulsecheck marks it too.
            let wants = (needs_remediation(a.verdict, cfg) && !holds).then_some(!unavailable);
            Counted { eligible: a.verdict != Verdict::Excluded, holds, unavailable, wants }
        });
        let was = match now {
            Some(c) => self.entries.insert(name.clone(), c),
            None => self.entries.remove(name),
        };
        if was == now {
            return;
        }
        for (c, up) in [(was, false), (now, true)] {
            let Some(c) = c else { continue };
            let step = |n: &mut usize, by: bool| *n = if up { *n + usize::from(by) } else { *n - usize::from(by) };
            step(&mut self.eligible, c.eligible);
            step(&mut self.active, c.holds);
            step(&mut self.unavailable, c.eligible && c.unavailable);
            if c.holds {
                if up {
                    self.holding.insert(name.clone());
                } else {
                    self.holding.remove(name);
                }
            }
            if let Some(costly) = c.wants {
                step(&mut self.costly_wanting, costly);
                if up {
                    self.wanting.insert(name.clone(), costly);
                } else {
                    self.wanting.remove(name);
                }
            }
        }
    }
}

/// Plans this tick from every node's assessment. Updates `memory`'s hysteresis clocks; the
/// caller reports starts and releases back via [`Memory`].
pub fn plan(now: Timestamp, assessments: &Assessments, facts: &FleetFacts, memory: &mut Memory, cfg: &GuardConfig, stance: Stance) -> Plan {
    let names: Vec<NodeName> = assessments.keys().cloned().collect();
    plan_changed(now, &mut Roster::default(), &names, assessments, facts, memory, cfg, stance)
}

/// [`plan`] from `roster`, the nodes' counts as of the last plan made from it, looking again only
/// at the nodes in `changed`: those whose assessment, facts or place in `memory` may have changed
/// since (all of them the first time). After a blind plan the next must look at every node: a
/// blind view resets the hysteresis clocks of all.
#[allow(clippy::too_many_arguments)]
pub fn plan_changed(
    now: Timestamp,
    roster: &mut Roster,
    changed: &[NodeName],
    assessments: &Assessments,
    facts: &FleetFacts,
    memory: &mut Memory,
    cfg: &GuardConfig,
    stance: Stance,
) -> Plan {
    if stance == Stance::Blind {
        // A blind view proves nothing: health must be seen again for a whole --recover-after.
        memory.healthy_since.clear();
    } else {
        for name in changed {
            let Some(a) = assessments.get(name) else {
                memory.healthy_since.remove(name);
                continue;
            };
            // Health counts towards a release only where the evidence that would catch the
            // failure again is there: health the probes cannot confirm (a partition, an expired
            // result) is the absence of evidence, not evidence — and so is a status this instance
            // has not yet seen change (after a restart, a frozen status looks fresh for a while).
            if a.healthy_on_evidence() {
                if !memory.healthy_since.contains_key(name) {
                    memory.healthy_since.insert(name.clone(), now);
                }
            } else {
                memory.healthy_since.remove(name);
            }
        }
    }
    let window = SignedDuration::from_secs(60);
    if stance == Stance::Act && !memory.acting {
        // Taking over (start, restart, failover): remediations another instance (or this one
        // before a restart) started within the window are on the Nodes' records and count too.
        let mut starts: Vec<Timestamp> = memory.recent_starts.iter().copied().collect();
        for since in facts.nodes.values().filter_map(|n| n.remediation.since) {
            // A `since` in the future (a leader with a fast clock, a hand edit) is no start
            // within the window: it would eat the budget for as long as it stays ahead.
            let age = now.duration_since(since);
            if age >= SignedDuration::ZERO && age < window && !starts.contains(&since) {
                starts.push(since);
            }
        }
        starts.sort_unstable();
        memory.recent_starts = starts.into();
    }
    memory.acting = stance == Stance::Act;
    while memory.recent_starts.front().is_some_and(|t| now.duration_since(*t) >= window) {
        memory.recent_starts.pop_front();
    }

    for name in changed {
        roster.recount(name, assessments.get(name), facts, memory, cfg);
    }
    let (eligible, active, unavailable) = (roster.eligible, roster.active, roster.unavailable);
    let limit = limit(eligible, cfg.max_unhealthy_percent);
    let circuit_open = unavailable + roster.costly_wanting > limit;
    let mut plan = Plan { circuit_open, limit, active, eligible, unavailable, wanting: roster.wanting.len(), ..Default::default() };
    if stance != Stance::Act {
        return plan;
    }

    let recover = SignedDuration::try_from(cfg.recover_after).unwrap_or(SignedDuration::MAX);
    for (name, a) in roster.holding.iter().filter_map(|n| Some((n, assessments.get(n)?))) {
        // Recovery needs proof that the status loop works again: a status refresh seen by
        // pulsecheck after health returned (the refresh that ended the staleness is not enough:
        // a zombie whose loop completes a write every 15 minutes looks fresh after each), and
        // continuous health for --recover-after.
        let recovered = memory.healthy_since.get(name).is_some_and(|since| {
            let refreshed_since = facts.nodes.get(name).is_some_and(|n| n.status.seen_changing && n.status.observed_at > *since);
            refreshed_since && now.duration_since(*since) >= recover
        });
        if recovered || a.verdict == Verdict::Excluded {
            plan.release.push(name.to_string());
        }
    }
    plan.release.sort_unstable();

    let mut budget = (cfg.max_per_minute as usize).saturating_sub(memory.recent_starts.len());
    // Schedulable capacity left in the pool: never take the last of it unless told to.
    let mut available = eligible.saturating_sub(unavailable);
    for (name, costly) in &roster.wanting {
        let cost = usize::from(*costly);
        if circuit_open {
            plan.held.push((name.clone(), Hold::CircuitOpen));
        } else if budget == 0 {
            plan.held.push((name.clone(), Hold::RateLimited));
        } else if available.saturating_sub(cost) < cfg.min_available && cost > 0 {
            plan.held.push((name.clone(), Hold::LastCapacity));
        } else {
            budget -= 1;
            available -= cost;
            plan.remediate.push(name.to_string());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Remediation, Scope, fixtures::*};
    use crate::names;

    fn assessments(verdicts: &[(&str, Verdict)]) -> Assessments {
        verdicts.iter().map(|(n, v)| (NodeName::from(*n), Assessment::new(*v, vec![]))).collect()
    }

    fn fleet(names: &[&str]) -> FleetFacts {
        let mut f = FleetFacts::default();
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        for n in names {
            f.apply_node(&node(n).ready_at(t(0)).build(), &scope, t(0));
            // A status refresh seen by pulsecheck: proof the status loop works.
            f.apply_node(&node(n).ready_at(t(1)).build(), &scope, t(1));
        }
        f
    }

    fn mark_remediated(f: &mut FleetFacts, n: &str) {
        let node = f.nodes.get_mut(n).unwrap();
        node.remediation = Remediation { tainted: true, cordoned: false, since: Some(t(0)) };
        node.has_our_taint = true;
    }

    /// The kubelet of remediated node `n` posts its status at `at` (pulsecheck's clock).
    fn refresh(f: &mut FleetFacts, n: &str, at: i64) {
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        f.apply_node(&node(n).ready_at(t(at)).build(), &scope, t(at));
        mark_remediated(f, n);
    }

    fn healthy_fleet(n: usize) -> Vec<(String, Verdict)> {
        (0..n).map(|i| (format!("n{i}"), Verdict::Healthy)).collect()
    }

    #[test]
    fn limit_is_at_least_one() {
        assert_eq!(limit(3, 20.0), 1);
        assert_eq!(limit(10, 20.0), 2);
        assert_eq!(limit(0, 20.0), 1);
        assert_eq!(limit(100, 0.0), 1);
    }

    #[test]
    fn one_zombie_is_remediated() {
        let mut v = healthy_fleet(10);
        v[3].1 = Verdict::Zombie;
        let v: Vec<(&str, Verdict)> = v.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let names: Vec<&str> = v.iter().map(|(n, _)| *n).collect();
        let p = plan(t(0), &assessments(&v), &fleet(&names), &mut Memory::default(), &GuardConfig::default(), Stance::Act);
        assert_eq!(p.remediate, vec!["n3".to_string()]);
        assert!(!p.circuit_open);
    }

    #[test]
    fn mass_zombies_open_the_circuit_and_nothing_new_is_remediated() {
        let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let v: Vec<(&str, Verdict)> = names.iter().enumerate().map(|(i, n)| (n.as_str(), if i < 5 { Verdict::Zombie } else { Verdict::Healthy })).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut f = fleet(&refs);
        mark_remediated(&mut f, "n0");
        let p = plan(t(0), &assessments(&v), &f, &mut Memory::default(), &GuardConfig::default(), Stance::Act);
        assert!(p.circuit_open);
        assert!(p.remediate.is_empty());
        assert_eq!(p.held.len(), 4);
        assert!(p.held.iter().all(|(_, h)| *h == Hold::CircuitOpen));
        // Sorted by name: the controller finds a held node's reason by binary search.
        assert!(p.held.is_sorted_by(|a, b| a.0 < b.0), "{:?}", p.held);
        assert_eq!((p.limit, p.active), (2, 1));
    }

    fn named(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn nodes_a_zone_outage_took_out_count_against_the_budget() {
        // 10 nodes; a zone outage left 3 Dead (kube-controller-manager's case); then one zombie.
        // At most 20 % (2 nodes) may be unavailable: 3 already are, so pulsecheck takes none.
        let names = named(10);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let v: Vec<(&str, Verdict)> = refs
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, [Verdict::Dead, Verdict::Dead, Verdict::Dead, Verdict::Zombie].get(i).copied().unwrap_or(Verdict::Healthy)))
            .collect();
        let p = plan(t(0), &assessments(&v), &fleet(&refs), &mut Memory::default(), &GuardConfig::default(), Stance::Act);
        assert!(p.remediate.is_empty(), "{p:?}");
        assert_eq!(p.held, vec![("n3".into(), Hold::CircuitOpen)]);
        assert_eq!((p.unavailable, p.limit), (3, 2));
    }

    #[test]
    fn cordons_by_people_and_kube_controller_manager_taints_count_against_the_budget() {
        let names = named(10);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let mut f = fleet(&refs);
        let mut cordoned = node("n0").ready_at(t(1)).build();
        cordoned.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        f.apply_node(&cordoned, &scope, t(1));
        f.apply_node(&node("n1").ready_at(t(1)).taint("node.kubernetes.io/unreachable").build(), &scope, t(1));
        // Another actor's own taint with a key of its own does not make the node unavailable.
        f.apply_node(&node("n2").ready_at(t(1)).taint("example.com/gpu").build(), &scope, t(1));
        let v: Vec<(&str, Verdict)> = refs.iter().map(|n| (*n, if *n == "n5" { Verdict::Zombie } else { Verdict::Healthy })).collect();
        let p = plan(t(2), &assessments(&v), &f, &mut Memory::default(), &GuardConfig::default(), Stance::Act);
        assert_eq!((p.unavailable, p.limit), (2, 2));
        assert!(p.circuit_open && p.remediate.is_empty(), "{p:?}");
    }

    #[test]
    fn the_last_schedulable_node_is_never_taken_unless_allowed() {
        let cfg = GuardConfig { max_unhealthy_percent: 100.0, ..GuardConfig::default() };
        // One node, a zombie: tainting it leaves the cluster no node to schedule on.
        let p = plan(t(0), &assessments(&[("a", Verdict::Zombie)]), &fleet(&["a"]), &mut Memory::default(), &cfg, Stance::Act);
        assert!(p.remediate.is_empty(), "{p:?}");
        assert_eq!(p.held, vec![("a".into(), Hold::LastCapacity)]);
        // Three nodes, one Dead, two zombies: one may go, the other is the last schedulable node.
        let v = [("a", Verdict::Dead), ("b", Verdict::Zombie), ("c", Verdict::Zombie)];
        let p = plan(t(0), &assessments(&v), &fleet(&["a", "b", "c"]), &mut Memory::default(), &cfg, Stance::Act);
        assert_eq!(p.remediate, vec!["b".to_string()]);
        assert_eq!(p.held, vec![("c".into(), Hold::LastCapacity)]);
        // Told to (--min-available-nodes=0), it may take the last one too.
        let told = GuardConfig { min_available: 0, ..cfg };
        let p = plan(t(0), &assessments(&[("a", Verdict::Zombie)]), &fleet(&["a"]), &mut Memory::default(), &told, Stance::Act);
        assert_eq!(p.remediate, vec!["a".to_string()]);
    }

    #[test]
    fn rate_limit_spreads_remediations_over_minutes() {
        let names: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        let v: Vec<(&str, Verdict)> = names.iter().enumerate().map(|(i, n)| (n.as_str(), if i < 5 { Verdict::Zombie } else { Verdict::Healthy })).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let f = fleet(&refs);
        let mut m = Memory::default();
        let cfg = GuardConfig::default();
        let p = plan(t(0), &assessments(&v), &f, &mut m, &cfg, Stance::Act);
        assert_eq!(p.remediate.len(), 2);
        assert_eq!(p.held.iter().filter(|(_, h)| *h == Hold::RateLimited).count(), 3);
        for n in &p.remediate {
            m.remediation_started(n, t(0), true);
        }
        let p = plan(t(30), &assessments(&v), &f, &mut m, &cfg, Stance::Act);
        assert!(p.remediate.is_empty());
        let p = plan(t(60), &assessments(&v), &f, &mut m, &cfg, Stance::Act);
        assert_eq!(p.remediate.len(), 2);
    }

    #[test]
    fn a_record_without_taint_or_cordon_holds_the_node_so_it_is_not_remediated_every_tick() {
        // Cordon-only, on a node somebody else had cordoned: pulsecheck wrote only its record.
        let v = [("a", Verdict::Zombie), ("b", Verdict::Zombie), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)];
        let mut f = fleet(&["a", "b", "c", "d", "e"]);
        f.nodes.get_mut("a").unwrap().remediation = Remediation { tainted: false, cordoned: false, since: Some(t(0)) };
        let mut m = Memory::default();
        let cfg = GuardConfig { max_unhealthy_percent: 40.0, ..GuardConfig::default() };
        let p = plan(t(10), &assessments(&v), &f, &mut m, &cfg, Stance::Act);
        assert_eq!(p.remediate, vec!["b".to_string()], "a is held already; only b is new");
        assert_eq!(p.active, 1);
    }

    #[test]
    fn blind_plans_nothing() {
        let v = [("a", Verdict::Zombie), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)];
        let mut f = fleet(&["a", "b", "c", "d", "e"]);
        mark_remediated(&mut f, "b");
        let mut m = Memory::default();
        let p = plan(t(1000), &assessments(&v), &f, &mut m, &GuardConfig::default(), Stance::Blind);
        assert!(p.remediate.is_empty() && p.release.is_empty());
    }

    #[test]
    fn hysteresis_follows_what_a_follower_sees_and_restarts_after_blindness() {
        let mut f = fleet(&["a", "b", "c", "d", "e"]);
        mark_remediated(&mut f, "a");
        f.nodes.get_mut("a").unwrap().status.seen_changing = true;
        let cfg = GuardConfig { recover_after: std::time::Duration::from_secs(120), ..GuardConfig::default() };
        let healthy = assessments(&[("a", Verdict::Healthy)]);
        let zombie = assessments(&[("a", Verdict::Zombie)]);
        let mut m = Memory::default();
        // Healthy from 0 as leader; leadership lost; as a follower it sees a relapse at 200 and
        // health again from 300; leader again at 310: 10 s of health is not 2 minutes.
        plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act);
        assert!(plan(t(200), &zombie, &f, &mut m, &cfg, Stance::Watch).release.is_empty());
        assert!(plan(t(300), &healthy, &f, &mut m, &cfg, Stance::Watch).release.is_empty(), "a follower releases nothing");
        assert!(plan(t(310), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        refresh(&mut f, "a", 350);
        assert_eq!(plan(t(420), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
        // Blindness breaks continuity: after it, health must be seen for the whole period again.
        let mut m = Memory::default();
        plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act);
        plan(t(100), &healthy, &f, &mut m, &cfg, Stance::Blind);
        assert!(plan(t(130), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        refresh(&mut f, "a", 140);
        assert_eq!(plan(t(250), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
    }

    #[test]
    fn a_new_leader_counts_the_remediations_its_predecessor_started_within_the_minute() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut f = fleet(&names);
        for (node, since) in [("a", 950), ("b", 990)] {
            mark_remediated(&mut f, node);
            f.nodes.get_mut(node).unwrap().remediation.since = Some(t(since));
        }
        let v: Vec<(&str, Verdict)> = names.iter().map(|n| (*n, if ["c", "d"].contains(n) { Verdict::Zombie } else { Verdict::Healthy })).collect();
        let cfg = GuardConfig { max_unhealthy_percent: 50.0, ..GuardConfig::default() };
        let mut m = Memory::default();
        // Two starts within the last minute by the previous leader: the budget of 2 is spent.
        let p = plan(t(1000), &assessments(&v), &f, &mut m, &cfg, Stance::Act);
        assert!(p.remediate.is_empty(), "{p:?}");
        assert_eq!(p.held.len(), 2);
        // Once the first start is a minute old, one more may start.
        assert_eq!(plan(t(1010), &assessments(&v), &f, &mut m, &cfg, Stance::Act).remediate, vec!["c".to_string()]);
    }

    #[test]
    fn a_record_from_the_future_does_not_eat_the_per_minute_budget() {
        // A leader with a fast clock, or a hand edit, left `since` an hour ahead of now.
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut f = fleet(&names);
        for (node, ahead) in [("a", 3600), ("b", 3601)] {
            mark_remediated(&mut f, node);
            f.nodes.get_mut(node).unwrap().remediation.since = Some(t(1000 + ahead));
        }
        let v: Vec<(&str, Verdict)> = names.iter().map(|n| (*n, if *n == "c" { Verdict::Zombie } else { Verdict::Healthy })).collect();
        let cfg = GuardConfig { max_unhealthy_percent: 50.0, ..GuardConfig::default() };
        let p = plan(t(1000), &assessments(&v), &f, &mut Memory::default(), &cfg, Stance::Act);
        assert_eq!(p.remediate, vec!["c".to_string()], "{p:?}");
    }

    #[test]
    fn one_status_write_of_a_zombie_whose_loop_writes_now_and_then_does_not_release_it() {
        // The zombie's status loop completes a write every 15 minutes: each write makes it look
        // fresh for --status-stale-after. One write is no proof the loop works again.
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let mut f = fleet(&["a", "b", "c", "d", "e"]);
        mark_remediated(&mut f, "a");
        let cfg = GuardConfig::default();
        let healthy =
            assessments(&[("a", Verdict::Healthy), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        let mut m = Memory::default();
        // The write at 1000 ends the staleness: healthy from then on, but only that one write.
        f.apply_node(&node("a").ready_at(t(1000)).build(), &scope, t(1000));
        mark_remediated(&mut f, "a");
        plan(t(1000), &healthy, &f, &mut m, &cfg, Stance::Act);
        assert!(plan(t(1300), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty(), "released on one status write");
        // A second write while it stays healthy: the status loop works.
        f.apply_node(&node("a").ready_at(t(1310)).build(), &scope, t(1310));
        mark_remediated(&mut f, "a");
        assert_eq!(plan(t(1310), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
    }

    #[test]
    fn health_the_probes_cannot_confirm_releases_nothing() {
        let mut f = fleet(&["a", "b"]);
        mark_remediated(&mut f, "a");
        f.nodes.get_mut("a").unwrap().status.seen_changing = true;
        let cfg = GuardConfig { recover_after: std::time::Duration::from_secs(10), ..GuardConfig::default() };
        let mut healthy = assessments(&[("a", Verdict::Healthy), ("b", Verdict::Healthy)]);
        healthy.get_mut("a").unwrap().unconfirmed = Some("probe evidence is ignored (probe partition)");
        let mut m = Memory::default();
        plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act);
        assert!(plan(t(100), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty(), "released on the absence of evidence");
        healthy.get_mut("a").unwrap().unconfirmed = None;
        // Confirmed health starts the recovery clock only now.
        assert!(plan(t(101), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        refresh(&mut f, "a", 105);
        assert_eq!(plan(t(111), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
    }

    #[test]
    fn release_only_after_recover_after_of_continuous_health() {
        let mut f = fleet(&["a", "b", "c", "d", "e"]);
        mark_remediated(&mut f, "a");
        let mut m = Memory::default();
        let cfg = GuardConfig::default();
        let healthy =
            assessments(&[("a", Verdict::Healthy), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        let zombie = assessments(&[("a", Verdict::Zombie), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        assert!(plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        assert!(plan(t(100), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        // Relapse restarts the clock.
        plan(t(110), &zombie, &f, &mut m, &cfg, Stance::Act);
        assert!(plan(t(200), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        refresh(&mut f, "a", 250);
        assert!(plan(t(319), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        assert_eq!(plan(t(320), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
    }

    #[test]
    fn a_restarted_guard_does_not_release_before_it_saw_the_status_refresh() {
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        let mut f = FleetFacts::default();
        for n in ["a", "b", "c", "d", "e"] {
            f.apply_node(&node(n).ready_at(t(-5000)).build(), &scope, t(0));
        }
        mark_remediated(&mut f, "a");
        let mut m = Memory::default();
        let cfg = GuardConfig::default();
        let healthy =
            assessments(&[("a", Verdict::Healthy), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        assert!(plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
        assert!(plan(t(300), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty(), "released without proof");
        // The kubelet posts status: now the node has earned its release.
        f.apply_node(&node("a").ready_at(t(-4000)).build(), &scope, t(310));
        mark_remediated(&mut f, "a");
        assert_eq!(plan(t(310), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
    }

    #[test]
    fn provisional_health_does_not_start_the_recovery_clock() {
        let mut f = fleet(&["a", "b", "c", "d", "e"]);
        mark_remediated(&mut f, "a");
        f.nodes.get_mut("a").unwrap().status.seen_changing = true;
        let cfg = GuardConfig::default();
        let mut healthy =
            assessments(&[("a", Verdict::Healthy), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        healthy.get_mut("a").unwrap().provisional = true;
        let mut m = Memory::default();
        plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act);
        refresh(&mut f, "a", 200);
        assert!(plan(t(300), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty(), "provisional health counted towards a release");
        healthy.get_mut("a").unwrap().provisional = false;
        plan(t(300), &healthy, &f, &mut m, &cfg, Stance::Act);
        refresh(&mut f, "a", 400);
        assert_eq!(plan(t(420), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
    }

    #[test]
    fn a_cordon_whose_record_was_deleted_is_still_ours_until_it_is_undone() {
        let mut f = fleet(&["a", "b"]);
        let record = Remediation { tainted: false, cordoned: true, since: Some(t(0)) };
        f.nodes.get_mut("a").unwrap().remediation = record;
        f.nodes.get_mut("a").unwrap().unschedulable = true;
        let mut m = Memory::default();
        m.note_cordons(&f, &[]);
        assert!(m.lost_records(&f).is_empty());
        // Somebody deletes the record; the cordon stays.
        f.nodes.get_mut("a").unwrap().remediation = Remediation::default();
        m.note_cordons(&f, &[]);
        assert!(m.holds(&f, "a"), "the cordon is still pulsecheck's");
        assert_eq!(m.lost_records(&f), vec![("a".to_string(), Some(t(0)))]);
        // A Node re-created under the same name is another machine.
        let mut recreated = f.clone();
        recreated.nodes.get_mut("a").unwrap().uid = "another".into();
        assert!(!m.holds(&recreated, "a") && m.lost_records(&recreated).is_empty());
        // Uncordoned by anyone, even if cordoned again before the tick: nothing of it is
        // pulsecheck's any more.
        m.note_cordons(&f, &[NodeName::from("a")]);
        assert!(!m.holds(&f, "a") && m.lost_records(&f).is_empty(), "a later cordon is somebody else's");
    }

    #[test]
    fn our_taint_without_a_record_still_counts_as_held() {
        let mut f = FleetFacts::default();
        let scope = Scope { taint_key: names::TAINT_KEY.into(), ..Default::default() };
        f.apply_node(&node("a").ready_at(t(0)).taint(names::TAINT_KEY).build(), &scope, t(0));
        f.apply_node(&node("b").ready_at(t(0)).taint("example.com/other").build(), &scope, t(0));
        let m = Memory::default();
        assert!(m.holds(&f, "a"));
        assert!(!m.holds(&f, "b"));
    }

    #[test]
    fn a_dry_run_release_of_a_real_remediation_is_planned_once() {
        let mut f = fleet(&["a", "b"]);
        mark_remediated(&mut f, "a");
        f.nodes.get_mut("a").unwrap().status.seen_changing = true;
        let cfg = GuardConfig { recover_after: std::time::Duration::from_secs(10), ..GuardConfig::default() };
        let healthy = assessments(&[("a", Verdict::Healthy), ("b", Verdict::Healthy)]);
        let mut m = Memory::default();
        plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act);
        assert_eq!(plan(t(10), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
        m.released("a", true);
        // The taint is still on the Node (nothing was written), but the simulation released it.
        let p = plan(t(20), &healthy, &f, &mut m, &cfg, Stance::Act);
        assert!(p.release.is_empty() && p.active == 0, "{p:?}");
        // Were it to relapse, the dry run would remediate it again.
        let zombie = assessments(&[("a", Verdict::Zombie), ("b", Verdict::Healthy)]);
        assert_eq!(plan(t(30), &zombie, &f, &mut m, &cfg, Stance::Act).remediate, vec!["a".to_string()]);
    }

    #[test]
    fn excluding_a_remediated_node_releases_it() {
        let mut f = fleet(&["a", "b"]);
        mark_remediated(&mut f, "a");
        let p =
            plan(t(0), &assessments(&[("a", Verdict::Excluded), ("b", Verdict::Healthy)]), &f, &mut Memory::default(), &GuardConfig::default(), Stance::Act);
        assert_eq!(p.release, vec!["a".to_string()]);
    }

    #[test]
    fn dead_nodes_are_left_to_kubernetes_unless_asked() {
        let v = assessments(&[("a", Verdict::Dead), ("b", Verdict::Healthy), ("c", Verdict::Healthy), ("d", Verdict::Healthy), ("e", Verdict::Healthy)]);
        let f = fleet(&["a", "b", "c", "d", "e"]);
        assert!(plan(t(0), &v, &f, &mut Memory::default(), &GuardConfig::default(), Stance::Act).remediate.is_empty());
        let cfg = GuardConfig { act_on_dead: true, ..Default::default() };
        assert_eq!(plan(t(0), &v, &f, &mut Memory::default(), &cfg, Stance::Act).remediate, vec!["a".to_string()]);
    }
}
