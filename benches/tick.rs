//! What one controller tick costs before it writes: [`Judge::decide`], the very call the
//! controller's tick makes — probe results folded in, sight checked, the nodes judged, metrics
//! published (per-node series on, as by default), verdict changes and holds reported, the
//! leader's steps planned — on a fleet seen by synced watches.
//!
//! `one_percent_changed` is the controller's steady state: 1 % of the nodes renewed since the
//! last tick, everything else judged by the docket's due dates; `whole_fleet`, measured in the
//! same run, is the same tick judging every node (the first tick, and every tick before the
//! docket). `evaluate` measures the verdict pass alone.
//!
//! Run: `cargo bench --bench tick`. Results go into docs/performance.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use pulsecheck::{
    admin::Readiness,
    config::Settings,
    controller::Judge,
    metrics::Metrics,
    observe::{SharedView, View, WatchSight},
    verdict::Verdict,
};

#[path = "common/fleet.rs"]
mod common;
use common::{NOW, at, fleet, name};

/// The bench fleet of `n` nodes in a view whose watches are synced and delivered at NOW.
fn view(n: usize) -> SharedView {
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
        let view = view(n);
        let mut judge = Judge::new(Settings::default(), Metrics::new(true), Readiness::default());
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
        // only when a deadline of theirs comes due.
        let mut clock_ms = NOW * 1000;
        let mut next = 0usize;
        let mut judged = Vec::new();
        group.bench_with_input(BenchmarkId::new("one_percent_changed", n), &view, |b, view| {
            b.iter(|| {
                clock_ms += 100;
                let now = Timestamp::from_millisecond(1_800_000_000_000 + clock_ms).expect("valid");
                {
                    let mut v = view.lock().expect("not poisoned");
                    for i in (next..next + n / 100).map(|i| i % n).filter(|i| i % 200 != 17) {
                        v.facts.apply_lease_renewal(&name(i), Some(now), now);
                    }
                    v.sight.leases.last_event = Some(now);
                    v.sight.nodes.last_event = Some(now);
                }
                next = (next + n / 100) % n;
                let d = judge.decide(now, true, view, Vec::new());
                judged.push(d.judged().len());
                black_box(d)
            })
        });
        judged.sort_unstable();
        eprintln!("one_percent_changed at {n}: nodes judged per tick, median {}", judged.get(judged.len() / 2).copied().unwrap_or(0));
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
