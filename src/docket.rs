//! Which nodes a tick must judge again, so that a tick costs what changed, not the fleet's size.
//!
//! Death is silence, so the verdicts must move with time, not only with events: that is why the
//! loop ticks. But a node's verdict can only turn for three reasons — its facts changed (a
//! renewal, a status report, a probe result, an agent's report), a clock rule of
//! [`verdict::assess`] came due (the Lease's grace ran out, the status threshold was reached, a
//! probe result expired: [`verdict::turns_at`]), or a fleet-wide input changed (the probe or
//! agent partition, the agents' reports hidden). The docket keeps every node's last assessment,
//! the names whose facts changed since (noted by [`FleetFacts`] itself), and a queue of due
//! dates; a pass judges only those nodes. An unhealthy node is no exception: its evidence holds
//! the instants its trouble started, not ages ([`verdict::Evidence`]), so "NodeStatus not
//! refreshed for 12m" is told from the assessment at whatever instant it is told, and the
//! assessment itself stays true until its facts change or its next deadline.
//!
//! The fleet-wide figures a tick needs — the probe and agent partitions, how long the watches
//! may stay silent, the agents' reports, the probes that are pulsecheck's own problem — are kept
//! the same way: each name's share of them ([`Standing`]) is worked out again only when the name
//! is, and the totals move by the difference. Anything the docket cannot carry over (the first
//! pass, a fleet-wide input that changed, a clock that went backwards, a blind spell discounted
//! from every age) makes it look at the whole fleet once.
//!
//! A pass therefore gives exactly what [`verdict::evaluate`] and the whole-fleet functions give
//! at the same instant — the tests check that over simulated timelines — at the cost of the
//! names that changed or came due.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;

use crate::{
    facts::{FleetFacts, NodeMap, NodeName, NodeSet},
    verdict::{self, AGENT_REPORTS, AgentSight, Assessments, Thresholds, Verdict},
};

/// The fleet-wide inputs of a pass: when any of them changes, every verdict may change.
#[derive(Debug, Clone, PartialEq)]
struct FleetInputs {
    probes_trusted: bool,
    agent_silence_counts: bool,
    agents_hidden: Option<String>,
}

/// One name's place in the due-date queue.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// When the name must be looked at again.
    at: Timestamp,
    /// The earliest entry the queue holds for the name; an entry at another time is stale.
    queued: Timestamp,
}

/// What the docket keeps of one name: its share of the fleet-wide figures and its place in the
/// due-date queue, in one record — a tick looks both up for every name it looks at, and at
/// 100,000 nodes each lookup in a map that size is a cache miss or two.
#[derive(Debug, Clone, Default)]
struct Entry {
    standing: Standing,
    due: Option<Due>,
}

/// What one name (a node, its Lease, its probe record, its agent: any of them may be there
/// without the others) adds to the fleet-wide figures as of the instant it was last looked at.
#[derive(Debug, Clone, Default, PartialEq)]
struct Standing {
    /// Its Lease's grace, when it has a Lease.
    lease_grace: Option<Duration>,
    /// Its Lease is alive.
    alive: bool,
    /// Its node's status threshold, while the node's Lease is alive.
    status_stale_after: Option<Duration>,
    /// Its probe record counts towards the probe partition: `Some(failing)`.
    probe: Option<bool>,
    /// Why its probes are pulsecheck's own problem, if they are.
    misconfigured: Option<String>,
    /// Its agent's grace, report, and whether it counts towards the agent partition:
    /// `Some(silent)` while the node's Lease is alive.
    agent: Option<(Duration, &'static str, Option<bool>)>,
}

/// A multiset of durations (few distinct values: the cadences in use).
#[derive(Debug, Clone, Default)]
struct Durations(BTreeMap<Duration, usize>);

impl Durations {
    fn add(&mut self, d: Duration, up: bool) {
        if up {
            *self.0.entry(d).or_default() += 1;
        } else if let Some(n) = self.0.get_mut(&d) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&d);
            }
        }
    }
    fn len(&self) -> usize {
        self.0.values().sum()
    }
    fn min(&self) -> Option<Duration> {
        self.0.keys().next().copied()
    }
    fn max(&self) -> Option<Duration> {
        self.0.keys().next_back().copied()
    }
    /// The `k`-th smallest (from 1).
    fn nth(&self, k: usize) -> Option<Duration> {
        let mut seen = 0;
        self.0
            .iter()
            .find(|(_, n)| {
                seen += **n;
                seen >= k
            })
            .map(|(d, _)| *d)
    }
}

/// The fleet-wide figures: the sums of every name's [`Standing`].
#[derive(Debug, Clone, Default)]
struct Tallies {
    lease_graces: Durations,
    alive_graces: Durations,
    alive_status_thresholds: Durations,
    probed: usize,
    probes_failing: usize,
    misconfigured: BTreeMap<NodeName, String>,
    agent_graces: Durations,
    agents_on_live_nodes: usize,
    agents_silent: usize,
    agent_reports: BTreeMap<&'static str, usize>,
}

impl Tallies {
    fn count(&mut self, name: &NodeName, s: &Standing, up: bool) {
        if let Some(g) = s.lease_grace {
            self.lease_graces.add(g, up);
            if s.alive {
                self.alive_graces.add(g, up);
            }
        }
        if let Some(t) = s.status_stale_after {
            self.alive_status_thresholds.add(t, up);
        }
        let step = |n: &mut usize, by: bool| *n = if up { *n + usize::from(by) } else { *n - usize::from(by) };
        if let Some(failing) = s.probe {
            step(&mut self.probed, true);
            step(&mut self.probes_failing, failing);
        }
        if let Some(why) = &s.misconfigured {
            if up {
                self.misconfigured.insert(name.clone(), why.clone());
            } else {
                self.misconfigured.remove(name);
            }
        }
        if let Some((grace, report, counted)) = s.agent {
            self.agent_graces.add(grace, up);
            let n = self.agent_reports.entry(report).or_default();
            step(n, true);
            if let Some(silent) = counted {
                step(&mut self.agents_on_live_nodes, true);
                step(&mut self.agents_silent, silent);
            }
        }
    }
}

/// The last assessment of every node, the fleet-wide figures, and when each name must be looked
/// at again.
#[derive(Debug, Default)]
pub struct Docket {
    assessments: Arc<Assessments>,
    /// By name: every name with a standing or a due date.
    entries: NodeMap<Entry>,
    tallies: Tallies,
    /// Due dates by the second they fall in ([`enqueue`]): a name's entry there is the date
    /// its [`Due::queued`] names, or stale.
    queue: BTreeMap<i64, Vec<(Timestamp, NodeName)>>,
    /// Names to judge at the next pass.
    pending: NodeSet,
    /// The next pass judges the whole fleet.
    whole: bool,
    /// The instant the standings are as of.
    observed_at: Option<Timestamp>,
    /// The fleet-wide inputs of the last pass.
    inputs: Option<FleetInputs>,
    /// How many nodes have each verdict, in [`Verdict::ALL`] order.
    verdict_counts: [usize; Verdict::ALL.len()],
    /// Renewals let wait since the last pass ([`Docket::renewal_can_wait`]), for [`Pass::renewed`].
    waiting: NodeSet,
    /// Tests: every pass looks at the whole fleet (the reference the docket is compared with).
    #[cfg(test)]
    pub(crate) forgetful: bool,
}

/// What one pass concluded.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Every node's verdict (shared with the docket: a pass copies nothing).
    pub assessments: Arc<Assessments>,
    /// The names judged in this pass, sorted (the rest kept their verdict); a name whose node is
    /// gone has no verdict any more.
    pub judged: Vec<NodeName>,
    /// The whole fleet was judged.
    pub whole_fleet: bool,
    /// Nodes whose Lease renewed since the last pass and were not judged for it (a quietly
    /// healthy node's renewal waits for its deadline), sorted: nothing of their verdict changed,
    /// but a series showing when each Lease was last renewed must be told.
    pub renewed: Vec<NodeName>,
    /// False during a probe partition (probe evidence ignored).
    pub probes_trusted: bool,
    /// Live nodes whose latest probe failed.
    pub probes_failing: usize,
    /// Live nodes with a recent probe result.
    pub probes_recent: usize,
    /// False during an agent partition.
    pub agent_silence_counts: bool,
}

/// Name `name`'s share of the fleet-wide figures at `at`.
fn standing(at: Timestamp, facts: &FleetFacts, name: &str, th: &Thresholds) -> Standing {
    let lease = facts.leases.get(name);
    let alive = lease.is_some_and(|l| th.lease_alive(at, l));
    let node = facts.nodes.get(name);
    let probe = facts.probes.get(name);
    Standing {
        lease_grace: lease.map(|l| th.lease_grace_for(l)),
        alive,
        status_stale_after: node.filter(|_| alive).map(|n| th.status_threshold_for(n, lease).stale_after()),
        probe: probe.and_then(|p| verdict::probe_counts(at, p, alive, th)),
        misconfigured: probe.and_then(|p| p.misconfiguration()).map(str::to_string),
        agent: facts.agents.get(name).map(|a| (verdict::agent_grace(a, th), verdict::agent_report(at, a, th), alive.then(|| verdict::agent_silent(at, a, th)))),
    }
}

/// Queues name `name` at `when`, in the bucket of its second (monotonic in `when`, so every
/// entry due by an instant is in a bucket at or before that instant's).
fn enqueue(queue: &mut BTreeMap<i64, Vec<(Timestamp, NodeName)>>, when: Timestamp, name: NodeName) {
    queue.entry(when.as_second()).or_default().push((when, name));
}

impl Docket {
    /// An empty docket: its first pass judges the whole fleet.
    pub fn new() -> Docket {
        Docket::default()
    }

    /// Carries nothing over to the next pass: it looks at the whole fleet (after a blind tick,
    /// whose plan reset what every node's health counts for).
    pub fn forget(&mut self) {
        self.observed_at = None;
    }

    /// How many nodes have each verdict, as of the last pass.
    pub fn verdict_counts(&self) -> Vec<(Verdict, usize)> {
        Verdict::ALL.iter().copied().zip(self.verdict_counts).collect()
    }

    /// Folds into the standings, as of `at`, every name of `facts` that changed since the last
    /// call (taking the facts' record of changes) or came due, and queues them for the next
    /// [`Docket::pass`]. Called before reading the
    /// fleet-wide figures of a tick; [`Docket::pass`] calls it again for what changed since.
    pub fn observe(&mut self, at: Timestamp, facts: &mut FleetFacts, th: &Thresholds) {
        let changed = facts.take_changed();
        let forget = changed.all || self.observed_at.is_none_or(|last| at < last);
        #[cfg(test)]
        let forget = forget || self.forgetful;
        self.observed_at = Some(at);
        let facts = &*facts;
        if forget {
            self.whole = true;
            self.pending.clear();
            self.waiting.clear();
            self.queue.clear();
            self.entries.clear();
            self.tallies = Tallies::default();
            let mut names: NodeSet = facts.nodes.keys().cloned().collect();
            names.extend(facts.leases.keys().cloned());
            names.extend(facts.agents.keys().cloned());
            names.extend(facts.probes.keys().cloned());
            for name in &names {
                self.stand(at, facts, name, th);
            }
            return;
        }
        let mut names: Vec<NodeName> = changed.nodes.iter().cloned().collect();
        for name in changed.renewed {
            if changed.nodes.contains(&name) {
                continue;
            }
            if self.renewal_can_wait(&name) {
                self.waiting.insert(name);
            } else {
                names.push(name);
            }
        }
        self.take_due(at, &mut names);
        for name in &names {
            self.stand(at, facts, name, th);
        }
        self.pending.extend(names);
    }

    /// Whether a renewal of node `name`'s Lease may wait for the deadline already filed for it:
    /// the node was judged healthy on evidence with nothing held against it, its Lease alive and
    /// a due date filed (the Lease's grace running out, at the latest). A renewal then only moves
    /// that deadline later — no verdict, standing or fleet-wide figure changes with it — so the
    /// node is judged, with the facts of that moment, when the old deadline comes up, and filed
    /// anew. Anything else a renewal may change (a node in trouble, one not yet judged) is judged
    /// at once.
    fn renewal_can_wait(&self, name: &NodeName) -> bool {
        self.entries.get(name).is_some_and(|e| e.due.is_some() && e.standing.alive)
            && self.assessments.get(name).is_some_and(|a| a.evidence.is_empty() && a.healthy_on_evidence())
    }

    /// Works out name `name`'s standing at `at` anew and files its due date.
    fn stand(&mut self, at: Timestamp, facts: &FleetFacts, name: &NodeName, th: &Thresholds) {
        let now = standing(at, facts, name, th);
        let when = verdict::turns_at(at, facts.nodes.get(name), facts.leases.get(name), facts.probes.get(name), facts.agents.get(name), th);
        let entry = match self.entries.get_mut(name) {
            Some(entry) => entry,
            // A name with no standing (a default one counts for nothing) and no due date.
            None if now == Standing::default() && when.is_none() => return,
            None => self.entries.entry(name.clone()).or_default(),
        };
        if entry.standing != now {
            self.tallies.count(name, &entry.standing, false);
            self.tallies.count(name, &now, true);
            entry.standing = now;
        }
        // Queued now only when it is earlier than what the queue holds for the name (a later
        // date is queued when the earlier entry comes up).
        match (&mut entry.due, when) {
            (Some(due), Some(when)) if due.queued <= when => due.at = when,
            (due, Some(when)) => {
                *due = Some(Due { at: when, queued: when });
                enqueue(&mut self.queue, when, name.clone());
            }
            (due, None) => *due = None,
        }
        if entry.due.is_none() && entry.standing == Standing::default() {
            self.entries.remove(name);
        }
    }

    /// Judges, as of `at`, the nodes [`Docket::observe`] queued (after folding in what changed
    /// since) — or the whole fleet when the last pass's conclusions cannot be carried over.
    pub fn pass(&mut self, at: Timestamp, facts: &mut FleetFacts, th: &Thresholds, partition_threshold_percent: f64) -> Pass {
        self.observe(at, facts, th);
        let t = &self.tallies;
        let probes_trusted = !verdict::partitioned(t.probes_failing, t.probed, partition_threshold_percent);
        let agent_silence_counts = verdict::silence_counts(t.agents_silent, t.agents_on_live_nodes, partition_threshold_percent);
        let (probes_failing, probes_recent) = (t.probes_failing, t.probed);
        let inputs = FleetInputs { probes_trusted, agent_silence_counts, agents_hidden: facts.agents_hidden.clone() };
        let whole_fleet = self.whole || self.inputs.as_ref() != Some(&inputs);
        self.inputs = Some(inputs);
        self.whole = false;
        let facts = &*facts;
        let judged: Vec<NodeName> = if whole_fleet {
            // Every node, and every name judged before or changed since: a node gone in between
            // must be reported gone to what the caller keeps per node.
            let mut all: Vec<NodeName> = facts.nodes.keys().chain(self.assessments.keys()).chain(self.pending.iter()).cloned().collect();
            all.sort_unstable();
            all.dedup();
            self.pending.clear();
            self.verdict_counts = Default::default();
            Arc::make_mut(&mut self.assessments).clear();
            all
        } else {
            let mut names: Vec<NodeName> = self.pending.drain().collect();
            names.sort_unstable();
            names
        };
        for name in &judged {
            self.judge(at, facts, name, th, probes_trusted, agent_silence_counts);
        }
        let mut renewed: Vec<NodeName> = self.waiting.drain().filter(|n| !whole_fleet && judged.binary_search(n).is_err()).collect();
        renewed.sort_unstable();
        Pass { assessments: self.assessments.clone(), judged, whole_fleet, renewed, probes_trusted, probes_failing, probes_recent, agent_silence_counts }
    }

    /// How long the Lease watch may deliver nothing before pulsecheck calls itself blind: the
    /// shortest grace among the Leases alive (the watch delivers at least that often while they
    /// live), else the longest grace of any Lease, else `--lease-grace`.
    pub fn lease_silence(&self, th: &Thresholds) -> Duration {
        self.tallies.alive_graces.min().or_else(|| self.tallies.lease_graces.max()).unwrap_or(th.lease_grace)
    }

    /// How long the Node watch may deliver nothing before pulsecheck counts itself blind: until
    /// half of the nodes with a live Lease (at least two) are overdue by their own status
    /// thresholds. A watch that stops delivering makes every node overdue; one node going quiet,
    /// or a few, is those nodes' business (a fleet of 20-minute reporters is legitimately quiet
    /// for minutes, and a wedged node must not blind pulsecheck to itself). With fewer than two
    /// such nodes, silence of the Node watch alone never counts as blindness (watch errors and
    /// the Lease watch still do).
    pub fn status_silence(&self) -> Duration {
        let thresholds = &self.tallies.alive_status_thresholds;
        let n = thresholds.len();
        if n < 2 {
            return Duration::MAX;
        }
        thresholds.nth(n.div_ceil(2).max(2)).unwrap_or(Duration::MAX)
    }

    /// How long the agent Lease watch may deliver nothing while agents exist: the shortest agent
    /// grace ([`verdict::agent_watch_silence`]).
    pub fn agent_watch_silence(&self, th: &Thresholds) -> Duration {
        self.tallies.agent_graces.min().unwrap_or(th.lease_grace)
    }

    /// How many agents report what ([`verdict::agent_reports`]); all "hidden" while their reports
    /// cannot be seen.
    pub fn agent_reports(&self, hidden: bool) -> Vec<(&'static str, usize)> {
        let total: usize = self.tallies.agent_reports.values().sum();
        AGENT_REPORTS
            .iter()
            .map(|r| match (hidden, *r) {
                (true, "hidden") => (*r, total),
                (true, _) => (*r, 0),
                (false, r) => (r, self.tallies.agent_reports.get(r).copied().unwrap_or(0)),
            })
            .collect()
    }

    /// The nodes whose probes are pulsecheck's own problem, with why, by name.
    pub fn misconfigured(&self) -> &BTreeMap<NodeName, String> {
        &self.tallies.misconfigured
    }

    /// Moves the names due by `at` into `names`; an entry whose name's due date moved later is
    /// queued again at that date, one that is stale is dropped.
    ///
    /// A renewal that moves a due date later queues nothing (see [`Docket::stand`]): the entry
    /// already queued is moved when it comes up. After a pass over the whole fleet every name
    /// comes up at once — 100,000 of them some 40 s later — so the queue holds whole seconds
    /// (a bucket taken is a vector moved), not a heap of single entries each popped and
    /// pushed again (~150 ms at 100,000 names, for that one tick).
    fn take_due(&mut self, at: Timestamp, names: &mut Vec<NodeName>) {
        let mut later = Vec::new();
        while let Some(bucket) = self.queue.first_entry()
            && *bucket.key() <= at.as_second()
        {
            for (when, name) in bucket.remove() {
                if when > at {
                    // The second of `at`, later in it.
                    later.push((when, name));
                    continue;
                }
                let Some(entry) = self.entries.get_mut(&name) else { continue };
                let Some(due) = &mut entry.due else { continue };
                if due.queued != when {
                    continue;
                }
                if due.at <= at {
                    // Its standing and next date are worked out when it is looked at.
                    entry.due = None;
                    names.push(name);
                } else {
                    due.queued = due.at;
                    later.push((due.at, name));
                }
            }
        }
        for (when, name) in later {
            enqueue(&mut self.queue, when, name);
        }
    }

    /// Judges node `name` as of `at`, or forgets it when the node is gone.
    fn judge(&mut self, at: Timestamp, facts: &FleetFacts, name: &NodeName, th: &Thresholds, probes_trusted: bool, agent_silence_counts: bool) {
        let assessments = Arc::make_mut(&mut self.assessments);
        let index = |v: Verdict| Verdict::ALL.iter().position(|x| *x == v).unwrap_or(0);
        let Some(node) = facts.nodes.get(name) else {
            if let Some(was) = assessments.remove(name) {
                self.verdict_counts[index(was.verdict)] -= 1;
            }
            return;
        };
        let agent = AgentSight::of(facts, name, agent_silence_counts);
        let a = verdict::assess(at, node, facts.leases.get(name), facts.probes.get(name), agent, th, probes_trusted);
        self.verdict_counts[index(a.verdict)] += 1;
        match assessments.get_mut(name) {
            Some(known) => {
                self.verdict_counts[index(known.verdict)] -= 1;
                *known = a;
            }
            None => {
                assessments.insert(name.clone(), a);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod timeline {
    //! A simulated fleet for the tests that compare a tick judging what changed with one
    //! judging the whole fleet: kubelets reporting and renewing at several cadences (and saying
    //! so, truly or not, in `/configz`), Lease durations changing, wedges, deaths, recoveries,
    //! probes that succeed, fail or cannot get through (pulsecheck's misconfiguration), agents,
    //! exclusions, cordons by people, deletions and re-creations, the agents' watch breaking for
    //! everyone at once, and pulsecheck's own writes coming back through the watch
    //! ([`Timeline::written`]). Deterministic: the same timeline every run.

    use k8s_openapi::jiff::Timestamp;

    use std::time::Duration;

    use crate::{
        agent::{DiskHealth, Report},
        cadence::KubeletCadence,
        facts::{FleetFacts, ProbeOutcome, Remediation, Scope, SlimAgentLease, SlimLease, SlimNode, fixtures::*},
        verdict::Thresholds,
    };

    /// A small deterministic generator (xorshift64*).
    pub struct Dice(pub u64);

    impl Dice {
        pub fn roll(&mut self, sides: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % sides
        }
        pub fn chance(&mut self, percent: u64) -> bool {
            self.roll(100) < percent
        }
    }

    /// What one simulated node does; its habits change at random.
    #[derive(Clone)]
    struct Habit {
        report_every: i64,
        renew_every: i64,
        lease_seconds: Option<i32>,
        status_frozen: bool,
        lease_stopped: bool,
        os_unknown: bool,
        problem: bool,
        excluded: bool,
        unschedulable: bool,
        tainted: bool,
        probed: bool,
        /// 0 answers, 1 fails (a hang or a 5xx), 2 refuses pulsecheck's token, 3 cannot be
        /// reached.
        probes: u64,
        /// What `/configz` says the report period is: the true one, or a wrong one.
        configz_truthful: bool,
        /// pulsecheck's record, as its last write left it.
        record: Option<Remediation>,
        agent: Option<DiskHealth>,
        agent_silent: bool,
        uid: u32,
        heartbeat: i64,
    }

    fn habit(d: &mut Dice) -> Habit {
        Habit {
            report_every: [10, 60, 300][d.roll(3) as usize],
            renew_every: [10, 10, 50][d.roll(3) as usize],
            lease_seconds: [None, Some(40), Some(200)][d.roll(3) as usize],
            status_frozen: false,
            lease_stopped: false,
            os_unknown: false,
            problem: false,
            excluded: false,
            unschedulable: false,
            tainted: false,
            probed: d.chance(50),
            probes: 0,
            configz_truthful: d.chance(80),
            record: None,
            agent: d.chance(40).then_some(DiskHealth::Ok),
            agent_silent: false,
            uid: 0,
            heartbeat: 0,
        }
    }

    /// One thing the watches or the prober deliver (test data: its size does not matter).
    #[allow(clippy::large_enum_variant)]
    pub enum Event {
        Node(SlimNode),
        Lease(SlimLease),
        Probe(String, ProbeOutcome),
        Cadence(String, KubeletCadence),
        Agent(SlimAgentLease),
        Deleted(String),
        AgentsHidden(Option<String>),
    }

    impl Event {
        /// Applies the event, delivered at `now`, to `facts`.
        pub fn apply(&self, facts: &mut FleetFacts, scope: &Scope, th: &Thresholds, now: Timestamp) {
            match self {
                Event::Node(n) => facts.apply_node(n, scope, now),
                Event::Lease(l) => facts.apply_lease(l, now),
                Event::Probe(name, outcome) => facts.record_probe(name, outcome.clone(), now, th.probe_result_ttl),
                Event::Cadence(name, cadence) => facts.record_kubelet_cadence(name, *cadence, now),
                Event::Agent(a) => facts.apply_agent_lease(a, now),
                Event::Deleted(name) => {
                    facts.delete_node(name);
                    facts.delete_lease(name);
                    facts.delete_agent_node(name);
                }
                Event::AgentsHidden(why) => facts.agents_hidden = why.clone(),
            }
        }
    }

    /// The simulated fleet.
    pub struct Timeline {
        pub dice: Dice,
        pub names: Vec<String>,
        habits: Vec<Option<Habit>>,
        /// Nodes whose object the Node watch delivers again next second (a write of pulsecheck's).
        written: Vec<usize>,
        pub scope: Scope,
    }

    impl Timeline {
        /// `n` nodes, all healthy at first.
        pub fn new(n: usize, seed: u64) -> Timeline {
            let mut dice = Dice(seed);
            let names: Vec<String> = (0..n).map(|i| format!("n{i:02}")).collect();
            let habits = names.iter().map(|_| Some(habit(&mut dice))).collect();
            let scope = Scope { taint_key: crate::names::TAINT_KEY.into(), problem_conditions: vec!["ReadonlyFilesystem".into()], ..Default::default() };
            Timeline { dice, names, habits, written: Vec::new(), scope }
        }

        /// pulsecheck wrote to node `name` at `now`: `taint` and `cordon` say what it put on
        /// (true), took off (false) or left alone (None), `record` its record afterwards. The Node
        /// watch delivers the result next second, unless the node is gone.
        pub fn written(&mut self, name: &str, taint: Option<bool>, cordon: Option<bool>, record: impl FnOnce(Option<Remediation>) -> Option<Remediation>) {
            let Some(i) = self.names.iter().position(|n| n == name) else { return };
            let Some(h) = self.habits[i].as_mut() else { return };
            h.tainted = taint.unwrap_or(h.tainted);
            h.unschedulable = cordon.unwrap_or(h.unschedulable);
            h.record = record(h.record.take());
            self.written.push(i);
        }

        /// Node `name`'s record, as pulsecheck's writes left it.
        pub fn record(&self, name: &str) -> Option<Remediation> {
            let i = self.names.iter().position(|n| n == name)?;
            self.habits[i].as_ref()?.record.clone()
        }

        fn object(&self, i: usize) -> Option<SlimNode> {
            let h = self.habits[i].as_ref()?;
            let name = &self.names[i];
            let mut b = node(name).ready_at(t(h.heartbeat)).uid(&format!("{name}-{}", h.uid));
            if h.os_unknown {
                b = b.os_image("Unknown");
            }
            if h.problem {
                b = b.problem("ReadonlyFilesystem", "FilesystemIsReadOnly");
            }
            if h.excluded {
                b = b.label(crate::names::EXCLUDE_LABEL, "true");
            }
            if h.tainted {
                b = b.taint(crate::names::TAINT_KEY);
            }
            if let Some(record) = &h.record {
                b = b.record(record);
            }
            Some(b.unschedulable(h.unschedulable).build())
        }

        /// What happens in second `now`, given which nodes the facts know.
        pub fn second(&mut self, now: i64, known: impl Fn(&str) -> bool) -> Vec<Event> {
            let mut events = Vec::new();
            let written = std::mem::take(&mut self.written);
            for i in 0..self.names.len() {
                let name = self.names[i].clone();
                let d = &mut self.dice;
                let mut resend = written.contains(&i);
                // Habits change now and then: a wedge, a death, a recovery, a deletion.
                if d.roll(2000) < 1 {
                    match (d.roll(16), self.habits[i].as_mut()) {
                        (0, Some(h)) => h.status_frozen = !h.status_frozen,
                        (1, Some(h)) => h.lease_stopped = !h.lease_stopped,
                        (2, Some(h)) => (h.os_unknown, resend) = (!h.os_unknown, true),
                        (3, Some(h)) => (h.problem, resend) = (!h.problem, true),
                        (4, Some(h)) => (h.excluded, resend) = (!h.excluded, true),
                        (5, Some(h)) => h.probes = d.roll(4),
                        (6, Some(h)) => {
                            h.agent = match d.roll(5) {
                                0 => Some(DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: d.roll(90) }),
                                1 => Some(DiskHealth::Failing {
                                    path: "/var/lib/kubelet/x".into(),
                                    operation: "write".into(),
                                    error: "Input/output error (os error 5)".into(),
                                    for_seconds: d.roll(90),
                                }),
                                2 => Some(DiskHealth::Starting),
                                3 => None,
                                _ => Some(DiskHealth::Ok),
                            }
                        }
                        (7, Some(h)) => h.agent_silent = !h.agent_silent,
                        (8, Some(_)) => {
                            self.habits[i] = None;
                            events.push(Event::Deleted(name));
                            continue;
                        }
                        (9, None) => {
                            let mut h = habit(d);
                            h.uid = d.roll(1000) as u32 + 1;
                            self.habits[i] = Some(h);
                        }
                        (10, Some(h)) => h.report_every = [10, 60, 300][d.roll(3) as usize],
                        (11, Some(h)) => (h.unschedulable, resend) = (!h.unschedulable, true),
                        (12, Some(h)) => (h.tainted, resend) = (!h.tainted, true),
                        (13, Some(h)) => h.lease_seconds = [None, Some(40), Some(200)][d.roll(3) as usize],
                        (14, Some(h)) => h.configz_truthful = !h.configz_truthful,
                        // Somebody deletes pulsecheck's record.
                        (15, Some(h)) => (h.record, resend) = (None, true),
                        _ => {}
                    }
                }
                let Some(h) = self.habits[i].as_mut() else { continue };
                // A person undoes pulsecheck's cordon now and then, and sometimes cordons the
                // node again before pulsecheck has disowned it.
                if h.record.as_ref().is_some_and(|r| r.cordoned) && d.roll(300) == 0 {
                    (h.unschedulable, resend) = (!h.unschedulable, true);
                }
                let offset = i as i64 * 7;
                if !h.status_frozen && (now + offset) % h.report_every == 0 {
                    h.heartbeat = now;
                    resend = true;
                }
                if resend || !known(&name) {
                    events.extend(self.object(i).map(Event::Node));
                }
                let Some(h) = self.habits[i].as_mut() else { continue };
                if !h.lease_stopped && (now + offset) % h.renew_every == 0 {
                    events.push(Event::Lease(match h.lease_seconds {
                        Some(s) => lease_lasting(&name, t(now), s),
                        None => lease(&name, t(now)),
                    }));
                }
                let d = &mut self.dice;
                if h.probed && (now + offset) % 15 == 0 {
                    let outcome = match h.probes {
                        0 => ProbeOutcome::Success,
                        1 => [ProbeOutcome::Timeout, ProbeOutcome::Failure("[-]syncloop failed".into())][d.roll(2) as usize].clone(),
                        2 => ProbeOutcome::Unauthorized("401 Unauthorized".into()),
                        _ => ProbeOutcome::Unreachable("connection refused".into()),
                    };
                    events.push(Event::Probe(name.clone(), outcome));
                }
                if h.probed && h.probes == 0 && (now + offset) % 120 == 5 {
                    let said = if h.configz_truthful { h.report_every } else { 300 };
                    let cadence = KubeletCadence { report: Duration::from_secs(said as u64), update: Duration::from_secs(10) };
                    events.push(Event::Cadence(name.clone(), cadence));
                }
                if let Some(disk) = &h.agent
                    && !h.agent_silent
                    && (now + offset) % 10 == 3
                {
                    let report = Report { disk: disk.clone(), terminating: d.chance(2) };
                    events.push(Event::Agent(agent_lease(&name, t(now), &report)));
                }
            }
            // The agents' watch breaks now and then, for everyone at once.
            if now % 1800 == 900 {
                events.push(Event::AgentsHidden(Some("the agent Lease watch fails".into())));
            } else if now % 1800 == 960 {
                events.push(Event::AgentsHidden(None));
            }
            events
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{timeline::Timeline, *};
    use crate::facts::{Scope, fixtures::*};

    /// The whole-fleet reference for [`Docket::status_silence`].
    fn status_silence(at: Timestamp, facts: &FleetFacts, th: &Thresholds) -> Duration {
        let mut thresholds: Vec<Duration> = facts
            .nodes
            .iter()
            .filter_map(|(name, n)| facts.leases.get(name).filter(|l| th.lease_alive(at, l)).map(|l| th.status_threshold_for(n, Some(l)).stale_after()))
            .collect();
        if thresholds.len() < 2 {
            return Duration::MAX;
        }
        thresholds.sort_unstable();
        let overdue = thresholds.len().div_ceil(2).max(2);
        thresholds[overdue - 1]
    }

    /// Lets a fleet of 80 nodes live for two hours (see [`Timeline`]) and judges it at irregular
    /// instants, with the docket and with a whole-fleet `verdict::evaluate` of the same facts:
    /// every pass must give exactly the same assessments, and most passes must judge a fraction
    /// of the fleet.
    #[test]
    fn a_pass_judges_what_changed_or_came_due_and_agrees_with_judging_the_whole_fleet() {
        let th = Thresholds::default();
        let mut fleet = Timeline::new(80, 0x5eed_cafe_f00d_d00d);
        let mut facts = FleetFacts::default();
        let mut docket = Docket::new();
        let (mut passes, mut partial, mut judged_in_partial, mut next_pass) = (0, 0, 0, 5);
        let mut verdicts_seen = std::collections::BTreeSet::new();
        for now in 0..7200i64 {
            for event in fleet.second(now, |n| facts.nodes.contains_key(n)) {
                event.apply(&mut facts, &fleet.scope, &th, t(now));
            }
            if now < next_pass {
                continue;
            }
            next_pass = now + [1, 5, 5, 5, 7, 13][fleet.dice.roll(6) as usize];
            docket.observe(t(now), &mut facts, &th);
            // The whole-fleet reference: the controller's own, used for the confirming read.
            assert_eq!(docket.lease_silence(&th), crate::controller::lease_silence(t(now), &facts, &th), "at {now}");
            assert_eq!(docket.status_silence(), status_silence(t(now), &facts, &th), "at {now}");
            let pass = docket.pass(t(now), &mut facts, &th, 50.0);
            let whole = verdict::evaluate(t(now), &facts, &th, 50.0);
            assert_eq!(docket.agent_watch_silence(&th), verdict::agent_watch_silence(&facts, &th), "at {now}");
            assert_eq!(docket.agent_reports(facts.agents_hidden.is_some()), verdict::agent_reports(t(now), &facts, &th), "at {now}");
            let misconfigured: BTreeMap<NodeName, String> =
                facts.probes.iter().filter_map(|(n, p)| Some((n.clone(), p.misconfiguration()?.to_string()))).collect();
            assert_eq!(*docket.misconfigured(), misconfigured, "at {now}");
            assert_eq!(*pass.assessments, whole.assessments, "at {now}: the docket's verdicts differ from the whole fleet's");
            assert_eq!(
                (pass.probes_trusted, pass.probes_failing, pass.probes_recent, pass.agent_silence_counts),
                (whole.probes_trusted, whole.probes_failing, whole.probes_recent, whole.agent_silence_counts)
            );
            verdicts_seen.extend(pass.assessments.values().map(|a| a.verdict));
            passes += 1;
            if !pass.whole_fleet {
                partial += 1;
                judged_in_partial += pass.judged.len();
            }
        }
        assert!(verdicts_seen.len() >= 5, "the timeline must reach most verdicts: {verdicts_seen:?}");
        assert!(partial * 10 > passes * 8, "most passes judge only what changed: {partial} of {passes}");
        let mean = judged_in_partial as f64 / partial as f64;
        assert!(mean < 0.8 * fleet.names.len() as f64, "a pass judged {mean:.1} nodes of {} on average", fleet.names.len());
    }

    /// The queue holds whole seconds; a date is due at its instant, not at its second's start,
    /// and one later in the second a pass falls in is not lost by that pass.
    #[test]
    fn a_due_date_comes_due_at_its_instant_not_at_its_second() {
        let th = Thresholds::default();
        let scope = Scope::default();
        let ms = |millis: i64| Timestamp::from_millisecond(t(0).as_millisecond() + millis).expect("valid");
        let mut facts = FleetFacts::default();
        for (n, renewed) in [("early", 10_200), ("late", 10_800)] {
            facts.apply_node(&node(n).ready_at(t(0)).build(), &scope, t(0));
            facts.apply_node(&node(n).ready_at(t(10)).build(), &scope, t(10));
            facts.apply_lease(&lease(n, ms(renewed)), ms(renewed));
        }
        let mut docket = Docket::new();
        assert!(docket.pass(ms(10_900), &mut facts, &th, 50.0).whole_fleet);
        // Both graces (50 s) run out in second 60: at 60.2 and 60.8.
        assert!(docket.pass(ms(60_100), &mut facts, &th, 50.0).judged.is_empty());
        assert_eq!(docket.pass(ms(60_500), &mut facts, &th, 50.0).judged, [NodeName::from("early")]);
        assert!(docket.pass(ms(60_700), &mut facts, &th, 50.0).judged.is_empty());
        let late = docket.pass(ms(60_800), &mut facts, &th, 50.0);
        assert_eq!(late.judged, [NodeName::from("late")]);
        assert_eq!(*late.assessments, verdict::evaluate(ms(60_800), &facts, &th, 50.0).assessments);
        assert!(late.assessments.values().all(|a| a.verdict == Verdict::Suspect), "{:?}", late.assessments);
    }

    /// A fleet with nothing new and nothing due costs nothing: a pass judges no node; a renewal
    /// makes one pass judge that node alone; the end of a Lease's grace comes due by itself.
    #[test]
    fn a_quiet_fleet_is_not_judged_again_until_something_changes_or_comes_due() {
        let th = Thresholds::default();
        let scope = Scope::default();
        let mut facts = FleetFacts::default();
        for n in ["a", "b", "c"] {
            facts.apply_node(&node(n).ready_at(t(0)).build(), &scope, t(0));
            facts.apply_node(&node(n).ready_at(t(10)).build(), &scope, t(10));
            facts.apply_lease(&lease(n, t(0)), t(0));
            facts.apply_lease(&lease(n, t(10)), t(10));
        }
        let mut docket = Docket::new();
        let first = docket.pass(t(10), &mut facts, &th, 50.0);
        assert!(first.whole_fleet && first.judged.len() == 3);
        assert!(first.assessments.values().all(|a| a.verdict == Verdict::Healthy), "{:?}", first.assessments);
        let quiet = docket.pass(t(15), &mut facts, &th, 50.0);
        assert!(!quiet.whole_fleet && quiet.judged.is_empty(), "judged {:?}", quiet.judged);
        facts.apply_lease(&lease("b", t(20)), t(20));
        // Quietly healthy: b's renewal only moves its deadline, and waits for the old one; the
        // pass says it renewed (for the series that show each renewal), once.
        let renewed = docket.pass(t(20), &mut facts, &th, 50.0);
        assert!(renewed.judged.is_empty(), "judged {:?}", renewed.judged);
        assert_eq!(renewed.renewed, [NodeName::from("b")]);
        assert!(docket.pass(t(21), &mut facts, &th, 50.0).renewed.is_empty());
        // All three were due at 60 (renewed at 10, a grace of 50 s): a and c are Suspect now,
        // b is judged with its renewal at 20 and stays Healthy, filed again for 70.
        assert!(docket.pass(t(59), &mut facts, &th, 50.0).judged.is_empty());
        let due = docket.pass(t(60), &mut facts, &th, 50.0);
        assert_eq!(due.judged, [NodeName::from("a"), NodeName::from("b"), NodeName::from("c")]);
        assert_eq!(due.assessments["a"].verdict, Verdict::Suspect, "{:?}", due.assessments["a"]);
        assert_eq!(due.assessments["b"].verdict, Verdict::Healthy);
        // A renewal of a node in trouble is judged at once.
        facts.apply_lease(&lease("c", t(62)), t(62));
        let back = docket.pass(t(62), &mut facts, &th, 50.0);
        assert_eq!(back.judged, [NodeName::from("c")]);
        assert!(back.renewed.is_empty(), "{:?}", back.renewed);
        assert_eq!(back.assessments["c"].verdict, Verdict::Healthy);
        // Suspect now, and not judged again before something changes or comes due: its
        // evidence holds when its Lease stopped, and is told at any later instant as a whole
        // pass would tell it then.
        let later = docket.pass(t(65), &mut facts, &th, 50.0);
        assert!(later.judged.is_empty(), "judged {:?}", later.judged);
        let whole = verdict::evaluate(t(65), &facts, &th, 50.0);
        assert_eq!(later.assessments["a"], whole.assessments["a"]);
        assert_eq!(later.assessments["a"].explain(t(65)), "Lease not renewed for 55s");
        // A clock that went backwards: the whole fleet again.
        assert!(docket.pass(t(64), &mut facts, &th, 50.0).whole_fleet);
    }
}
