//! Speed of the decision core: one evaluation pass over a large fleet, and applying one Lease
//! renewal to the facts (the hot path of the Lease watch).
//!
//! Run: `cargo bench --bench evaluate`. Results go into docs/performance.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use pulsecheck::{
    facts::{FleetFacts, Scope, SlimNode},
    guard::{self, GuardConfig, Memory},
    verdict::{self, Thresholds, Verdict},
};

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid")
}

/// A fleet of `n` nodes observed for a while: most healthy, 1 % zombies, 1 % with osImage
/// "Unknown", 0.5 % dead, a few with problem conditions and probe records.
fn fleet(n: usize) -> FleetFacts {
    let scope = Scope { taint_key: "pulsecheck.dev/zombie".into(), problem_conditions: vec!["ReadonlyFilesystem".into()], ..Default::default() };
    let mut facts = FleetFacts::default();
    for i in 0..n {
        let name = format!("node-{i:06}");
        let os = if i % 100 == 7 { "Unknown" } else { "Ubuntu 24.04.1 LTS" };
        let problem = if i % 250 == 3 { r#",{"type":"ReadonlyFilesystem","status":"True","reason":"FilesystemIsReadOnly"}"# } else { "" };
        let json = format!(
            r#"{{"metadata":{{"name":"{name}","uid":"u{i}","labels":{{"topology.kubernetes.io/zone":"zone-{}"}}}},
               "spec":{{}},
               "status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"2027-01-15T08:00:00Z"}}{problem}],
                          "nodeInfo":{{"osImage":"{os}","kubeletVersion":"v1.36.3"}},
                          "addresses":[{{"type":"InternalIP","address":"10.0.{}.{}"}}],
                          "daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}}}}}}"#,
            i % 3,
            i / 250 % 250,
            i % 250
        );
        let node: SlimNode = serde_json::from_str(&json).expect("valid node json");
        facts.apply_node(&node, &scope, at(0));
        // Zombies' and dead nodes' status stopped at 0; everyone else's was refreshed at 500.
        if i % 100 != 13 && i % 200 != 17 {
            let mut refreshed = node.clone();
            if let Some(c) = refreshed.status.as_mut().and_then(|s| s.conditions.as_mut()).and_then(|c| c.first_mut()) {
                c.last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(500)));
            }
            facts.apply_node(&refreshed, &scope, at(500));
        }
        // Dead nodes stopped renewing at 0; everyone else was seen renewing, last at 690.
        if i % 200 == 17 {
            facts.apply_lease_renewal(&name, Some(at(0)), at(0));
        } else {
            facts.apply_lease_renewal(&name, Some(at(680)), at(680));
            facts.apply_lease_renewal(&name, Some(at(690)), at(690));
        }
        if i % 10 == 0 {
            facts.record_probe(&name, pulsecheck::facts::ProbeOutcome::Success, at(680), Thresholds::default().probe_result_ttl);
        }
    }
    facts
}

fn evaluation_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluation_pass");
    group.sample_size(20);
    for n in [10_000usize, 100_000] {
        let facts = fleet(n);
        let th = Thresholds::default();
        // The pass must judge a realistic mix, not take a shortcut (every node unjudged, say).
        let mix = verdict::evaluate(at(700), &facts, &th, 50.0);
        let count = |v: Verdict| mix.assessments.values().filter(|a| a.verdict == v).count();
        eprintln!("verdict mix at {n}: {:?}", [Verdict::Healthy, Verdict::Suspect, Verdict::Zombie, Verdict::Dead, Verdict::Unknown].map(count));
        assert!(
            count(Verdict::Healthy) > n * 9 / 10 && count(Verdict::Zombie) > 0 && count(Verdict::Dead) > 0,
            "unexpected verdict mix: {:?}",
            [Verdict::Healthy, Verdict::Suspect, Verdict::Zombie, Verdict::Dead, Verdict::Unknown].map(count)
        );
        let cfg = GuardConfig::default();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("evaluate+plan", n), &facts, |b, facts| {
            let mut memory = Memory::default();
            b.iter(|| {
                let e = verdict::evaluate(at(700), facts, &th, 50.0);
                let plan = guard::plan(at(700), &e.assessments, facts, &mut memory, &cfg, guard::Stance::Act);
                black_box((e, plan))
            })
        });
    }
    group.finish();
}

fn lease_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease_update");
    let n = 10_000usize;
    let mut facts = fleet(n);
    let names: Vec<String> = (0..n).map(|i| format!("node-{i:06}")).collect();
    group.throughput(Throughput::Elements(1));
    let mut tick = 1000i64;
    let mut i = 0usize;
    group.bench_function("apply_lease_renewal", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            if i == 0 {
                tick += 10;
            }
            facts.apply_lease_renewal(black_box(&names[i]), Some(at(tick)), at(tick));
        })
    });
    group.finish();
}

criterion_group!(benches, evaluation_pass, lease_update);
criterion_main!(benches);
