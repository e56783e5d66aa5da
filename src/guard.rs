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
//! * At most `max_per_minute` new remediations start in any 60 s window.
//! * A remediated node is released only after it has been Healthy continuously for
//!   `recover_after` (hysteresis), or at once when a person excludes it.
//!
//! Like [`crate::verdict`], this is pure: `now` is passed in, and [`Memory`] is the only state.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{
    facts::{FleetFacts, NodeName},
    parse::{percentage, positive_duration},
    verdict::{Assessments, Verdict},
};

/// Limits that keep pulsecheck from ever causing a remediation storm.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    /// At most this percentage of eligible nodes (at least one) is remediated at once; beyond it the circuit opens.
    #[arg(long, env = "PULSECHECK_MAX_UNHEALTHY", value_name = "PERCENT", default_value = "20", value_parser = percentage)]
    pub max_unhealthy: f64,
    /// At most this many new remediations start per minute.
    #[arg(long, env = "PULSECHECK_MAX_REMEDIATIONS_PER_MINUTE", value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_remediations_per_minute: u32,
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
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { max_unhealthy_percent: 20.0, max_per_minute: 2, act_on_dead: false, recover_after: Duration::from_secs(120) }
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
}

/// What to do this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Nodes to remediate now.
    pub remediate: Vec<String>,
    /// Nodes to release now (pulsecheck's own actions undone).
    pub release: Vec<String>,
    /// Nodes that need remediation but are held back, and why.
    pub held: Vec<(String, Hold)>,
    /// More nodes need remediation than the limit allows.
    pub circuit_open: bool,
    /// Nodes that may be remediated at once.
    pub limit: usize,
    /// Nodes pulsecheck currently holds a remediation on.
    pub active: usize,
    /// Nodes not excluded.
    pub eligible: usize,
}

/// The guard's memory between ticks.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Since when each node has been Healthy without interruption.
    healthy_since: HashMap<NodeName, Timestamp>,
    /// Start times of recent remediations (for the per-minute rate).
    recent_starts: VecDeque<Timestamp>,
    /// Nodes remediated in dry-run mode (nothing was written, so the Node cannot tell us).
    simulated: HashMap<String, Timestamp>,
    /// Nodes released in dry-run mode whose real remediation (from an earlier run) stays on the
    /// Node: the simulation counts them released, so the release is not planned on every tick.
    simulated_released: HashSet<String>,
    /// The last plan was made as the acting leader.
    acting: bool,
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
        if simulated {
            self.simulated_released.insert(node.to_string());
        }
    }

    /// Forgets nodes that no longer exist.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.healthy_since.retain(|n, _| exists(n));
        self.simulated.retain(|n, _| exists(n));
        self.simulated_released.retain(|n| exists(n));
    }

    /// True when pulsecheck holds (or, in dry-run, pretends to hold) a remediation on `node`.
    pub fn holds(&self, facts: &FleetFacts, node: &str) -> bool {
        self.simulated.contains_key(node)
            || (!self.simulated_released.contains(node) && facts.nodes.get(node).is_some_and(|n| n.remediation.is_active() || n.has_our_taint))
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

/// Plans this tick. Updates `memory`'s hysteresis clocks; the caller reports starts and
/// releases back via [`Memory`].
pub fn plan(now: Timestamp, assessments: &Assessments, facts: &FleetFacts, memory: &mut Memory, cfg: &GuardConfig, stance: Stance) -> Plan {
    if stance == Stance::Blind {
        // A blind view proves nothing: health must be seen again for a whole --recover-after.
        memory.healthy_since.clear();
    } else {
        for (name, a) in assessments {
            if a.verdict == Verdict::Healthy {
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
            if now.duration_since(since) < window && !starts.contains(&since) {
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

    let eligible = assessments.values().filter(|a| a.verdict != Verdict::Excluded).count();
    let limit = limit(eligible, cfg.max_unhealthy_percent);
    let active = assessments.keys().filter(|n| memory.holds(facts, n)).count();
    let mut wanting: Vec<&NodeName> =
        assessments.iter().filter(|(n, a)| needs_remediation(a.verdict, cfg) && !memory.holds(facts, n)).map(|(n, _)| n).collect();
    // Deterministic order: the same nodes are chosen first on every tick.
    wanting.sort_unstable();
    let circuit_open = active + wanting.len() > limit;
    let mut plan = Plan { circuit_open, limit, active, eligible, ..Default::default() };
    if stance != Stance::Act {
        return plan;
    }

    let recover = SignedDuration::try_from(cfg.recover_after).unwrap_or(SignedDuration::MAX);
    for (name, a) in assessments {
        if !memory.holds(facts, name) {
            continue;
        }
        // Recovery needs proof: a status refresh seen by pulsecheck, and continuous health since.
        let proven = facts.nodes.get(name).is_some_and(|n| n.status.seen_changing);
        let recovered = proven && memory.healthy_since.get(name).is_some_and(|since| now.duration_since(*since) >= recover);
        if recovered || a.verdict == Verdict::Excluded {
            plan.release.push(name.to_string());
        }
    }
    plan.release.sort_unstable();

    let mut budget = (cfg.max_per_minute as usize).saturating_sub(memory.recent_starts.len());
    for name in wanting {
        if circuit_open {
            plan.held.push((name.to_string(), Hold::CircuitOpen));
        } else if budget == 0 {
            plan.held.push((name.to_string(), Hold::RateLimited));
        } else {
            budget -= 1;
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

    use crate::verdict::Assessment;

    fn assessments(verdicts: &[(&str, Verdict)]) -> Assessments {
        verdicts.iter().map(|(n, v)| (NodeName::from(*n), Assessment { verdict: *v, evidence: vec![] })).collect()
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
        assert_eq!((p.limit, p.active), (2, 1));
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
        assert_eq!(plan(t(420), &healthy, &f, &mut m, &cfg, Stance::Act).release, vec!["a".to_string()]);
        // Blindness breaks continuity: after it, health must be seen for the whole period again.
        let mut m = Memory::default();
        plan(t(0), &healthy, &f, &mut m, &cfg, Stance::Act);
        plan(t(100), &healthy, &f, &mut m, &cfg, Stance::Blind);
        assert!(plan(t(130), &healthy, &f, &mut m, &cfg, Stance::Act).release.is_empty());
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
