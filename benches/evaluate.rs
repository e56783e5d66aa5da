//! Speed of the decision core: one evaluation pass over a large fleet, and applying one Lease
//! renewal to the facts (the hot path of the Lease watch).
//!
//! Run: `cargo bench --bench evaluate`. Results go into docs/performance.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pulsecheck::{
    guard::{self, GuardConfig, Memory},
    verdict::{self, Thresholds, Verdict},
};

#[path = "common/fleet.rs"]
mod common;
use common::{NOW, at, fleet, name};

fn evaluation_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluation_pass");
    group.sample_size(20);
    for n in [10_000usize, 100_000] {
        let facts = fleet(n);
        let th = Thresholds::default();
        // The pass must judge a realistic mix, not take a shortcut (every node unjudged, say).
        let mix = verdict::evaluate(at(NOW), &facts, &th, 50.0);
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
                let e = verdict::evaluate(at(NOW), facts, &th, 50.0);
                let plan = guard::plan(at(NOW), &e.assessments, facts, &mut memory, &cfg, guard::Stance::Act);
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
    let names: Vec<String> = (0..n).map(name).collect();
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
