//! How soon a wedged node is caught, and whether a healthy one is ever called a zombie, per
//! kubelet status cadence — measured in virtual time through the decision core itself
//! (`FleetFacts` + `verdict::evaluate` + `verdict::note_uncadenced_gaps`, as the controller
//! calls them every `--evaluation-interval`), with the default flags.
//!
//! Each row is a fleet of simulated kubelets with one cadence and random phases: each kubelet
//! started at a random time before pulsecheck did (so some are still in their start's one-off
//! jitter of ±½ report), renews a 40 s Lease every 10 s, reports its status every
//! `nodeStatusReportFrequency` (checked every `nodeStatusUpdateFrequency`), and has status
//! changes at random (about one an hour, each a report at once and a new jitter). pulsecheck
//! starts at 0; with `/configz` it learns the cadence at its first probe of the node (within 30 s),
//! reads it again every 10 minutes, and — as the prober does — at the next probe when asked
//! (`StatusCadence::recheck`: an early report, or a status quiet for a shorter threshold than a
//! read from before the latest report may confirm), at most every 30 s.
//! Healthy for three hours — every Zombie verdict there is a false alarm — then every node's disk
//! hangs at a random moment (status reports stop, the Lease goes on) and the time to its Zombie
//! verdict is recorded. A second fleet is wedged before pulsecheck starts.
//!
//! With the node agent (`pulsecheck-agent`, opt-in), each node also runs the agent's two loops as
//! it ships ([`Agent`]): a disk round every 5 s from a random phase (the first one after the wedge
//! hangs), a hang reported once it outlasts the 10 s deadline — the agent renews at once when its
//! disk state changes, and every 10 s from then on — with `--agent-disk-after` 30 s; and while
//! the node is healthy, short disk stalls, lost renewals, restarts and deaths of the agent.
//!
//! Run: `cargo bench --bench detection`. Results go into docs/performance.md.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use pulsecheck::{
    agent::{DiskHealth, Report},
    cadence::KubeletCadence,
    facts::{FleetFacts, Scope, SlimAgentLease, SlimLease, SlimNode},
    verdict::{self, Thresholds, Verdict},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Nodes per row.
const NODES: usize = 200;
/// pulsecheck's tick.
const TICK: i64 = 5;
/// Healthy time watched before the wedges.
const HEALTHY_FOR: i64 = 3 * 3600;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid")
}

/// One simulated kubelet's status loop.
struct Kubelet {
    report: i64,
    update: i64,
    /// When it last reported (kubelet clock = virtual time here).
    last_report: i64,
    /// The one-off delay after its start or a change.
    delay: i64,
    /// Offset of its status loop ticks.
    phase: i64,
    /// Offset of its Lease renewals.
    lease_phase: i64,
    /// Next random status change.
    next_change: i64,
    /// Reports stop at this time.
    wedged_at: i64,
    /// First Zombie verdict after the wedge.
    caught_at: Option<i64>,
    /// Judged a zombie while healthy; and so on the agent's evidence.
    falsely_judged: bool,
    falsely_judged_by_agent: bool,
    /// Its node agent, when the row has one.
    agent: Agent,
}

/// One simulated `pulsecheck-agent`, as it ships: a disk round every 5 s, an operation counted
/// hung once it outlasts the 10 s deadline, the Lease renewed at once when the disk state changes
/// and every 10 s from that renewal on. While its node is healthy it meets what agents meet in a
/// real fleet — each a chance for a false alarm:
/// - disk stalls shorter than `--agent-disk-after` (10–29 s, about one an hour): reported hung;
/// - renewals lost (one in five of those made at a change of disk state: the apiserver busy),
///   sent again at the next tick;
/// - restarts (a rollout, about one in six hours): terminating, gone 5–60 s, a new Pod starting;
/// - deaths (an OOM kill, a node's memory pressure, about one in twelve hours): silent 1–5 min,
///   then a new Pod.
struct Agent {
    /// Its own randomness: the kubelets of a row are the same with and without agents.
    rng: StdRng,
    /// Offset of its disk rounds.
    phase: i64,
    /// Next renewal, unless the disk state changes first.
    next_renewal: i64,
    /// The health last sent (renewed or lost).
    sent: DiskHealth,
    /// The disk operation in flight since, and when it returns (`None`: never, the wedge).
    stuck: Option<(i64, Option<i64>)>,
    /// Next stall, restart and death.
    next_stall: i64,
    next_restart: i64,
    next_death: i64,
    /// Not running until then (dead or between Pods), and whether it said it was terminating.
    away_until: Option<i64>,
    /// Its latest round failed: an operation came back after its deadline (until the next round).
    late: Option<i64>,
    /// Its Pod's generation: a new Pod is a new holder.
    pod: u32,
    /// The disk state since its (re)start: starting until its first round.
    started: bool,
}

impl Agent {
    fn new(seed: u64) -> Agent {
        let mut rng = StdRng::seed_from_u64(seed);
        Agent {
            phase: rng.random_range(0..AGENT_ROUND),
            next_renewal: rng.random_range(0..AGENT_RENEW),
            sent: DiskHealth::Ok,
            stuck: None,
            next_stall: rng.random_range(0..2 * 3600),
            next_restart: rng.random_range(0..12 * 3600),
            next_death: rng.random_range(0..24 * 3600),
            away_until: None,
            late: None,
            pod: 0,
            started: true,
            rng,
        }
    }

    /// The agent's health at `t` (what its network loop would read).
    fn health(&self, t: i64) -> DiskHealth {
        match self.stuck {
            _ if !self.started => DiskHealth::Starting,
            Some((since, _)) if t - since >= AGENT_DEADLINE => {
                DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: (t - since) as u64 }
            }
            _ => match self.late {
                Some(took) => DiskHealth::Failing {
                    path: "/etc/os-release".into(),
                    operation: "read".into(),
                    error: format!("returned after {took}s, over the 10s deadline"),
                    for_seconds: 0,
                },
                None => DiskHealth::Ok,
            },
        }
    }

    /// One second of the agent; the Lease it writes at `t`, if any. `wedged`: the node's disk
    /// hangs for good from now on (no more healthy-time disruptions).
    fn step(&mut self, t: i64, wedged: bool, name: &str) -> Option<SlimAgentLease> {
        if let Some(until) = self.away_until {
            if t < until {
                return None;
            }
            // A new Pod: starting until its first round.
            self.away_until = None;
            self.pod += 1;
            self.started = false;
            self.stuck = None;
            self.next_renewal = t;
        }
        if !wedged {
            if t >= self.next_death {
                self.next_death = t + self.rng.random_range(6 * 3600..18 * 3600);
                self.away_until = Some(t + self.rng.random_range(60..=300));
                return None;
            }
            if t >= self.next_restart {
                self.next_restart = t + self.rng.random_range(3 * 3600..9 * 3600);
                self.away_until = Some(t + self.rng.random_range(5..=60));
                return Some(agent_lease_json(name, self.pod, t, self.health(t), true));
            }
        }
        // The disk loop: a round every 5 s, unless an operation is stuck.
        if let Some((since, Some(back))) = self.stuck
            && t >= back
        {
            // Back after its deadline: that round failed (reported until the next round).
            self.stuck = None;
            self.late = Some(back - since);
        } else if self.stuck.is_none() && (t - self.phase).rem_euclid(AGENT_ROUND) == 0 {
            self.late = None;
            if wedged {
                self.stuck = Some((t, None));
            } else if t >= self.next_stall {
                self.next_stall = t + self.rng.random_range(1800..5400);
                self.stuck = Some((t, Some(t + self.rng.random_range(10..30))));
            }
            self.started = true;
        }
        // The network loop: looks every second, renews at a change and every 10 s from then.
        let health = self.health(t);
        let kind = |h: &DiskHealth| std::mem::discriminant(h);
        let change = kind(&health) != kind(&self.sent);
        if !change && t < self.next_renewal {
            return None;
        }
        self.sent = health.clone();
        self.next_renewal = t + AGENT_RENEW;
        // One renewal in five made at a change is lost (in the healthy time); the next tick sends
        // the state again.
        (wedged || !change || self.rng.random_range(0..5) != 0).then(|| agent_lease_json(name, self.pod, t, health, false))
    }
}

/// The agent's disk deadline and rounds, as `pulsecheck-agent` ships.
const AGENT_DEADLINE: i64 = 10;
const AGENT_ROUND: i64 = 5;
const AGENT_RENEW: i64 = 10;

fn node_json(name: &str, heartbeat: i64) -> SlimNode {
    let json = format!(
        r#"{{"metadata":{{"name":"{name}","uid":"u-{name}"}},"spec":{{}},
           "status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{}"}}],
                      "nodeInfo":{{"osImage":"Ubuntu 24.04.1 LTS","kubeletVersion":"v1.36.3"}}}}}}"#,
        at(heartbeat)
    );
    serde_json::from_str(&json).expect("valid node json")
}

fn lease_json(name: &str, renew: i64) -> SlimLease {
    let json = format!(r#"{{"metadata":{{"name":"{name}"}},"spec":{{"renewTime":"{}","leaseDurationSeconds":40}}}}"#, at(renew));
    serde_json::from_str(&json).expect("valid lease json")
}

fn agent_lease_json(name: &str, pod: u32, renew: i64, disk: DiskHealth, terminating: bool) -> SlimAgentLease {
    let report = Report { disk, terminating }.to_annotation();
    let json = serde_json::json!({
        "metadata": {"name": format!("pulsecheck-agent-{name}"), "annotations": {"pulsecheck.dev/agent-report": report}},
        "spec": {"renewTime": at(renew).to_string(), "leaseDurationSeconds": 40, "holderIdentity": format!("agent-{name}-{pod}")},
    });
    serde_json::from_value(json).expect("valid agent lease json")
}

/// The result of one row.
struct Row {
    false_zombies: usize,
    /// Of those, judged on the agent's evidence.
    agent_false_zombies: usize,
    detection: Vec<i64>,
    undetected: usize,
}

/// Runs one fleet: `configz` says whether pulsecheck reads the kubelets' cadence; `wedged_before`
/// wedges every node before pulsecheck starts (detection then counts from pulsecheck's start).
fn run(report: i64, update: i64, configz: bool, wedged_before: bool, agent: bool, seed: u64) -> Row {
    let mut rng = StdRng::seed_from_u64(seed);
    let th = Thresholds::default();
    let scope = Scope::default();
    let mut facts = FleetFacts::default();
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i:04}")).collect();
    let jitter = |rng: &mut StdRng| ((rng.random::<f64>() - 0.5) * report as f64) as i64;
    let start_window = 3 * report + 60;
    let mut kubelets: Vec<Kubelet> = (0..NODES)
        .map(|i| {
            let started = -rng.random_range(1..=start_window);
            let wedged_at = if wedged_before { -rng.random_range(1..=report.max(2)) } else { HEALTHY_FOR + rng.random_range(0..report.max(1)) };
            Kubelet {
                report,
                update,
                last_report: started,
                delay: jitter(&mut rng),
                phase: rng.random_range(0..update),
                lease_phase: rng.random_range(0..10),
                next_change: started + rng.random_range(60..7200),
                wedged_at: wedged_at.max(started + 1),
                caught_at: None,
                falsely_judged: false,
                falsely_judged_by_agent: false,
                agent: Agent::new(seed ^ 0xa6e7 ^ (i as u64) << 20),
            }
        })
        .collect();
    // Replay each kubelet from its start until pulsecheck's: only its latest report is visible.
    let first_probe: Vec<i64> = (0..NODES).map(|_| rng.random_range(0..30)).collect();
    let mut configz_read: Vec<Option<i64>> = vec![None; NODES];
    let end = if wedged_before { 3 * 3600 } else { HEALTHY_FOR + 2 * 3600 };
    let begin = -start_window - 1;
    let mut t = begin;
    while t <= end {
        for (i, k) in kubelets.iter_mut().enumerate() {
            let name = &names[i];
            if t < k.wedged_at && (t - k.phase).rem_euclid(k.update) == 0 {
                let changed = t >= k.next_change;
                if changed {
                    k.next_change = t + rng.random_range(60..7200);
                }
                if changed || t - k.last_report >= k.report + k.delay {
                    k.delay = if changed { jitter(&mut rng) } else { 0 };
                    k.last_report = t;
                    if t >= 0 {
                        facts.apply_node(&node_json(name, t), &scope, at(t));
                    }
                }
            }
            if (t - k.lease_phase).rem_euclid(10) == 0 && t >= 0 {
                facts.apply_lease(&lease_json(name, t), at(t));
            }
            if agent
                && t >= 0
                && let Some(lease) = k.agent.step(t, t >= k.wedged_at, name)
            {
                facts.apply_agent_lease(&lease, at(t));
            }
            if t == 0 {
                // pulsecheck's first list: the latest report and renewal as they stand.
                facts.apply_node(&node_json(name, k.last_report), &scope, at(0));
                facts.apply_lease(&lease_json(name, t - (t - k.lease_phase).rem_euclid(10)), at(0));
            }
            // Probed every 30 s from its first probe; /configz read with a probe, as the scheduler does.
            if configz && t >= first_probe[i] && (t - first_probe[i]) % 30 == 0 {
                let recheck = facts.nodes.get(name.as_str()).is_some_and(|n| n.cadence.recheck);
                let due = configz_read[i].is_none_or(|read| t - read >= 600 || (recheck && t - read >= 30));
                // A wedged kubelet still answers /healthz and /configz (both from memory).
                if due {
                    facts.record_kubelet_cadence(
                        name,
                        KubeletCadence { report: Duration::from_secs(report as u64), update: Duration::from_secs(update as u64) },
                        at(t),
                    );
                    configz_read[i] = Some(t);
                }
            }
        }
        if t >= 0 && t % TICK == 0 {
            let evaluation = verdict::evaluate(at(t), &facts, &th, 50.0);
            verdict::note_uncadenced_gaps(&mut facts, &evaluation.assessments);
            let names: Vec<_> = facts.nodes.keys().cloned().collect();
            verdict::note_cadence_rereads(at(t), &mut facts, &th, &names);
            for (i, k) in kubelets.iter_mut().enumerate() {
                let assessment = evaluation.assessments.get(&*names[i]);
                let zombie = assessment.is_some_and(|a| a.verdict == Verdict::Zombie);
                if zombie && t < k.wedged_at {
                    k.falsely_judged = true;
                    k.falsely_judged_by_agent |= assessment.is_some_and(|a| a.evidence.iter().any(|e| e.kind().starts_with("agent")));
                } else if zombie && k.caught_at.is_none() {
                    k.caught_at = Some(t);
                }
            }
        }
        t += 1;
    }
    let mut detection: Vec<i64> = kubelets.iter().filter_map(|k| k.caught_at.map(|c| if wedged_before { c } else { c - k.wedged_at })).collect();
    detection.sort_unstable();
    let undetected = NODES - detection.len();
    Row {
        false_zombies: kubelets.iter().filter(|k| k.falsely_judged).count(),
        agent_false_zombies: kubelets.iter().filter(|k| k.falsely_judged_by_agent).count(),
        detection,
        undetected,
    }
}

fn human(secs: i64) -> String {
    verdict::human(secs)
}

fn main() {
    // Criterion's flags (`--bench`) are accepted and ignored: this harness prints a table.
    println!(
        "status cadence | /configz | healthy nodes falsely judged zombie (of {NODES}, 3 h) | wedge caught after: median / max | wedged before start, caught after start: median / max | with the agent: falsely judged (on the agent's evidence) / caught after: median / max"
    );
    println!("---|---|---|---|---|---");
    let cadences: &[(i64, i64, &str)] = &[
        (4, 4, "report 4s, update 4s"),
        (60, 10, "report 1m, update 10s"),
        (300, 10, "report 5m, update 10s (default)"),
        (600, 10, "report 10m, update 10s"),
        (1200, 10, "report 20m, update 10s"),
    ];
    for (seed, (report, update, label)) in cadences.iter().enumerate() {
        for configz in [true, false] {
            let running = run(*report, *update, configz, false, false, seed as u64 * 2 + u64::from(configz));
            let before = run(*report, *update, configz, true, false, 100 + seed as u64 * 2 + u64::from(configz));
            // The same kubelets as `running` (same seed), each with an agent.
            let with_agent = run(*report, *update, configz, false, true, seed as u64 * 2 + u64::from(configz));
            let stat = |row: &Row| {
                let median = row.detection.get(row.detection.len() / 2).copied();
                let max = row.detection.last().copied();
                let missed = if row.undetected > 0 { format!(" ({} not caught)", row.undetected) } else { String::new() };
                match (median, max) {
                    (Some(m), Some(x)) => format!("{} / {}{missed}", human(m), human(x)),
                    _ => format!("none caught{missed}"),
                }
            };
            println!(
                "{label} | {} | {} | {} | {} | {} ({}) / {}",
                if configz { "read" } else { "not read" },
                running.false_zombies,
                stat(&running),
                stat(&before),
                with_agent.false_zombies,
                with_agent.agent_false_zombies,
                stat(&with_agent)
            );
        }
    }
}
