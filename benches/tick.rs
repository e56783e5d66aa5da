//! What one controller tick costs before it writes: [`Judge::decide`], the very call the
//! controller's tick makes — probe results folded in, sight checked, every node judged, metrics
//! published (per-node series on, as by default), verdict changes and holds reported, the
//! leader's steps planned — on a fleet seen by synced watches. `evaluate` measures the verdict
//! pass alone; the difference between the two is what the tick adds around it.
//!
//! Run: `cargo bench --bench tick`. Results go into docs/performance.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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
use common::{NOW, at, fleet};

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
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("decide", n), &view, |b, view| b.iter(|| black_box(judge.decide(at(NOW), true, view, Vec::new()))));
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
