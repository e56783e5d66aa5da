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
//! it ships: a disk round every 5 s from a random phase (the first one after the wedge hangs), a
//! hang reported once it outlasts the 10 s deadline — the agent renews at once when its disk
//! state changes — and its Lease renewed every 10 s otherwise, with `--agent-disk-after` 30 s.
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
    /// Judged a zombie while healthy.
    falsely_judged: bool,
    /// Offsets of its agent's disk rounds (every 5 s) and Lease renewals (every 10 s).
    agent_phase: i64,
    agent_renew_phase: i64,
    /// When the agent's first disk operation after the wedge began (it never returns).
    hung_since: Option<i64>,
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

fn agent_lease_json(name: &str, renew: i64, disk: DiskHealth) -> SlimAgentLease {
    let report = Report { disk, terminating: false }.to_annotation();
    let json = serde_json::json!({
        "metadata": {"name": format!("pulsecheck-agent-{name}"), "annotations": {"pulsecheck.dev/agent-report": report}},
        "spec": {"renewTime": at(renew).to_string(), "leaseDurationSeconds": 40, "holderIdentity": format!("agent-{name}")},
    });
    serde_json::from_value(json).expect("valid agent lease json")
}

/// The result of one row.
struct Row {
    false_zombies: usize,
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
        .map(|_| {
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
                agent_phase: rng.random_range(0..AGENT_ROUND),
                agent_renew_phase: rng.random_range(0..AGENT_RENEW),
                hung_since: None,
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
            if agent && t >= 0 {
                if t >= k.wedged_at && k.hung_since.is_none() && (t - k.agent_phase).rem_euclid(AGENT_ROUND) == 0 {
                    k.hung_since = Some(t);
                }
                let hung_for = k.hung_since.map(|since| t - since).filter(|d| *d >= AGENT_DEADLINE);
                if t == 0 || (t - k.agent_renew_phase).rem_euclid(AGENT_RENEW) == 0 || hung_for == Some(AGENT_DEADLINE) {
                    let disk = match hung_for {
                        Some(d) => DiskHealth::Hung { path: "/etc/os-release".into(), operation: "read".into(), for_seconds: d as u64 },
                        None => DiskHealth::Ok,
                    };
                    facts.apply_agent_lease(&agent_lease_json(name, t, disk), at(t));
                }
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
            verdict::note_cadence_rereads(at(t), &mut facts, &th);
            for (i, k) in kubelets.iter_mut().enumerate() {
                let zombie = evaluation.assessments.get(names[i].as_str()).is_some_and(|a| a.verdict == Verdict::Zombie);
                if zombie && t < k.wedged_at {
                    k.falsely_judged = true;
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
    Row { false_zombies: kubelets.iter().filter(|k| k.falsely_judged).count(), detection, undetected }
}

fn human(secs: i64) -> String {
    verdict::human(secs)
}

fn main() {
    // Criterion's flags (`--bench`) are accepted and ignored: this harness prints a table.
    println!(
        "status cadence | /configz | healthy nodes falsely judged zombie (of {NODES}, 3 h) | wedge caught after: median / max | wedged before start, caught after start: median / max | with the agent: falsely judged / caught after: median / max"
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
                "{label} | {} | {} | {} | {} | {} / {}",
                if configz { "read" } else { "not read" },
                running.false_zombies,
                stat(&running),
                stat(&before),
                with_agent.false_zombies,
                stat(&with_agent)
            );
        }
    }
}
