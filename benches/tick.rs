//! What one controller tick costs before it writes: [`Judge::decide`], the very call the
//! controller's tick makes — probe results folded in, sight checked, the nodes judged, metrics
//! published (per-node series for the nodes in trouble, as by default), verdict changes and
//! holds reported, the leader's steps planned — on a fleet seen by synced watches.
//!
//! `one_percent_changed` is the controller's steady state: 1 % of the nodes renewed since the
//! last tick (a healthy node's renewal waiting for its deadline, as by default), everything else
//! judged by the docket's due dates, and the leader's writes landing — carried out on paper
//! ([`Paper`]) and fed back through the facts as the write's response and the Node watch feed
//! them back to the controller, and settled with the judge as the tick settles them (their cost
//! is not measured: it is the apiserver's). `writes_failing` is the
//! same tick for a leader none of whose writes land (every step planned again at every tick);
//! `whole_fleet`, measured in the same run, is the tick judging every node (the first tick, and
//! every tick before the docket).
//!
//! Run: `cargo bench --bench tick`. Results go into docs/performance.md.

use std::{
    collections::HashMap,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use pulsecheck::{
    actuate::{self, Actions, Effect, Planned, Step},
    admin::Readiness,
    config::Settings,
    controller::{Decisions, Judge},
    facts::{FleetFacts, ProbeOutcome, SlimNode},
    metrics::Metrics,
    observe::{SharedView, View, WatchSight},
    verdict::{Thresholds, Verdict},
};
use serde_json::Value;

#[path = "common/fleet.rs"]
mod common;
use common::{NOW, at, fleet, latest_node, name, refreshed, scope};

/// The apiserver on paper: each node a step was written to, as JSON, changed by the patches the
/// actuator would send (a JSON merge patch for a remediation, the condition merged by type as a
/// strategic merge does), and folded back into the facts as the write's response is.
struct Paper {
    nodes: HashMap<String, Value>,
    actions: Actions,
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let object = target.as_object_mut().expect("an object");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

impl Paper {
    fn new(actions: Actions) -> Paper {
        Paper { nodes: HashMap::new(), actions }
    }

    /// Carries out the steps of `decisions` at `now` on paper, and settles them with `judge`.
    fn land(&mut self, now: Timestamp, decisions: &Decisions, judge: &mut Judge, view: &SharedView) {
        for planned in decisions.steps().unwrap_or_default() {
            let effect = self.carry_out(now, planned, view);
            judge.settle(now, planned, &effect);
        }
    }

    /// Node `i`'s kubelet reports its status at `now` (its Ready heartbeat moves).
    fn report(&mut self, i: usize, now: Timestamp, facts: &mut FleetFacts) {
        let mut fresh;
        let node = match self.nodes.get_mut(&name(i)) {
            Some(node) => node,
            None => {
                fresh = latest_node(i);
                &mut fresh
            }
        };
        let conditions = node["status"]["conditions"].as_array_mut().expect("conditions");
        if let Some(ready) = conditions.iter_mut().find(|c| c["type"] == "Ready") {
            ready["lastHeartbeatTime"] = Value::String(now.to_string());
        }
        facts.apply_node(&serde_json::from_value::<SlimNode>(node.clone()).expect("a node"), &scope(), now);
    }

    fn carry_out(&mut self, now: Timestamp, planned: &Planned, view: &SharedView) -> Effect {
        let index: usize = planned.node.trim_start_matches("node-").parse().expect("a bench node name");
        let node = self.nodes.entry(planned.node.clone()).or_insert_with(|| latest_node(index));
        let slim = |v: &Value| serde_json::from_value::<SlimNode>(v.clone()).expect("a node");
        let effect = match &planned.step {
            Step::Remediate { .. } => match actuate::remediation_patch(&slim(node), &self.actions, now) {
                Some((patch, change)) => {
                    merge(node, &patch);
                    Effect::Remediated(change)
                }
                None => Effect::Unconfirmed,
            },
            Step::SetCondition { status, reason, message, previous_status } => {
                let patch = actuate::condition_patch(status, reason, message, previous_status.as_deref(), now);
                let written = &patch["status"]["conditions"][0];
                let conditions = node["status"]["conditions"].as_array_mut().expect("conditions");
                match conditions.iter_mut().find(|c| c["type"] == written["type"]) {
                    Some(c) => merge(c, written),
                    None => conditions.push(written.clone()),
                }
                Effect::ConditionSet
            }
            Step::Report { .. } => return Effect::Reported,
            step => panic!("the bench fleet never calls for {step:?}"),
        };
        view.lock().expect("not poisoned").facts.apply_node(&slim(node), &scope(), now);
        effect
    }
}

/// The bench fleet of `n` nodes in a view whose watches are synced and delivered at NOW.
fn synced_view(n: usize) -> SharedView {
    let mut view = View { facts: fleet(n), ..Default::default() };
    let watching = WatchSight { synced: true, last_event: Some(at(NOW)), error: None, longest_gap: None };
    view.sight.nodes = watching.clone();
    view.sight.leases = watching.clone();
    view.sight.agents = watching;
    view.sight.ever_synced = true;
    SharedView::new(std::sync::Mutex::new(view))
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick");
    group.sample_size(10);
    for n in [10_000usize, 100_000] {
        let view = synced_view(n);
        let mut judge = Judge::new(Settings::default(), Metrics::new(Settings::default().per_node_metrics), Readiness::default());
        // The tick must see and judge a realistic mix, as the controller's does.
        let first = judge.decide(at(NOW), true, &view, Vec::new());
        assert!(first.blindness().is_none(), "the bench view is blind: {:?}", first.blindness());
        let count = |v: Verdict| first.assessments().values().filter(|a| a.verdict == v).count();
        let mix = [Verdict::Healthy, Verdict::Suspect, Verdict::Zombie, Verdict::Dead, Verdict::Unknown].map(count);
        eprintln!("verdict mix at {n}: {mix:?}, steps planned: {}", first.steps().map_or(0, <[_]>::len));
        assert!(count(Verdict::Healthy) > n * 9 / 10 && count(Verdict::Zombie) > 0 && count(Verdict::Dead) > 0, "unexpected verdict mix: {mix:?}");
        drop(first);
        group.throughput(Throughput::Elements(n as u64));
        // The baseline, in the same run: every tick judges the whole fleet (as every tick did
        // before the docket, and as the first tick still does).
        group.bench_with_input(BenchmarkId::new("whole_fleet", n), &view, |b, view| {
            b.iter(|| {
                judge.forget();
                black_box(judge.decide(at(NOW), true, view, Vec::new()))
            })
        });
        // What the controller's tick costs: 1 % of the fleet renewed since the last tick (every
        // node once per 100 ticks; the clock moves 100 ms a tick, so each renews every 10 s as
        // a kubelet does); the rest — the zombies, dead and suspect nodes too — judged again
        // only when a deadline of theirs comes due. Measured twice from the same start: with
        // the writes landing, and with none of them landing.
        for landing in [true, false] {
            let view = synced_view(n);
            let mut judge = Judge::new(Settings::default(), Metrics::new(Settings::default().per_node_metrics), Readiness::default());
            let mut paper = Paper::new(Settings::default().actions);
            let first = judge.decide(at(NOW), true, &view, Vec::new());
            if landing {
                paper.land(at(NOW), &first, &mut judge, &view);
            }
            drop(first);
            let mut clock_ms = NOW * 1000;
            let mut next = 0usize;
            let (mut judged, mut planned, mut took, mut reported, mut sent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let id = if landing { "one_percent_changed" } else { "writes_failing" };
            group.bench_with_input(BenchmarkId::new(id, n), &view, |b, view| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        clock_ms += 100;
                        let now = Timestamp::from_millisecond(1_800_000_000_000 + clock_ms).expect("valid");
                        {
                            let mut v = view.lock().expect("not poisoned");
                            renew(&mut v.facts, next, n, now);
                            // The same nodes' kubelets report their status every 60 s (every
                            // sixth round of renewals) and a tenth of them is probed: the fleet
                            // stays as it was however long criterion runs.
                            let round = clock_ms / 100 / 100;
                            reported.push(round % 6 == 0);
                            for i in (next..next + n / 100).map(|i| i % n).filter(|i| refreshed(*i)) {
                                if round % 6 == 0 {
                                    paper.report(i, now, &mut v.facts);
                                }
                                if i % 10 == 0 {
                                    v.facts.record_probe(&name(i), ProbeOutcome::Success, now, Thresholds::default().probe_result_ttl);
                                }
                            }
                            v.sight.leases.last_event = Some(now);
                            v.sight.nodes.last_event = Some(now);
                        }
                        next = (next + n / 100) % n;
                        let started = Instant::now();
                        let d = judge.decide(now, true, view, Vec::new());
                        let elapsed = started.elapsed();
                        spent += elapsed;
                        took.push(elapsed);
                        judged.push(d.judged().len());
                        sent.push(d.probe_targets().map(<[_]>::len));
                        planned.push(d.steps().map_or(0, <[_]>::len));
                        if landing {
                            paper.land(now, &d, &mut judge, view);
                        }
                        black_box(d);
                    }
                    spent
                })
            });
            let median = |v: &mut Vec<usize>| {
                v.sort_unstable();
                v.get(v.len() / 2).copied().unwrap_or(0)
            };
            // Criterion reports the mean tick of each sample; the spread of single ticks says
            // whether some ticks cost far more than others (a clump of deadlines, a rebuild).
            // The ticks whose 1 % also reported their status (every sixth), and what they cost.
            let mut reporting: Vec<(Duration, usize)> = took.iter().zip(&judged).zip(&reported).filter(|(_, r)| **r).map(|((t, j), _)| (*t, *j)).collect();
            reporting.sort_unstable();
            if let Some((t, j)) = reporting.get(reporting.len() / 2) {
                eprintln!("{id} at {n}: the {} ticks after status reports: median {t:?} ({j} nodes judged)", reporting.len());
            }
            // The slowest tick, and how many nodes it judged: a clump of deadlines shows as many.
            if let Some((i, slowest)) = took.iter().enumerate().max_by_key(|(_, t)| **t) {
                eprintln!(
                    "{id} at {n}: the slowest tick, number {i} of {}: {slowest:?}, {} nodes judged, probe targets sent: {:?}",
                    took.len(),
                    judged[i],
                    sent[i]
                );
            }
            took.sort_unstable();
            let pct = |p: usize| took.get((took.len() * p / 100).min(took.len().saturating_sub(1))).copied().unwrap_or_default();
            eprintln!(
                "{id} at {n}: per tick, median {} nodes judged, {} steps planned; {} ticks: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
                median(&mut judged),
                median(&mut planned),
                took.len(),
                pct(50),
                pct(90),
                pct(99),
                took.last().copied().unwrap_or_default()
            );
        }
    }
    group.finish();
}

/// The Lease renewals of the nodes `from..from + n / 100` (the dead ones stay silent).
fn renew(facts: &mut FleetFacts, from: usize, n: usize, now: Timestamp) {
    for i in (from..from + n / 100).map(|i| i % n).filter(|i| i % 200 != 17) {
        facts.apply_lease_renewal(&name(i), Some(now), now);
    }
}

criterion_group!(benches, decide);
criterion_main!(benches);
