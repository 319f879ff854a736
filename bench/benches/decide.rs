//! One placement decision at 1,000 and 10,000 nodes: berth's decide() with the default
//! profile (every filter, resource_fit most_allocated) beside an exact best-fit scan, in the
//! same group so that their ratio, not the absolute times, is what a run reports.

use berth_bench::{best_fit, cluster, tasks};
use berth_core::config::Config;
use berth_policies::Profile;
use berth_scheduler::decide;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn decide_one(c: &mut Criterion) {
    let profile = Profile::build(&Config::default().scheduler.profile).unwrap();
    let work = tasks(256, 11);
    let mut group = c.benchmark_group("decide_one_task");
    group.sample_size(20);
    for nodes in [1_000usize, 10_000] {
        let snap = cluster(nodes, 7);
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("berth_default_profile", nodes), &snap, |b, snap| {
            b.iter(|| {
                i = (i + 1) % work.len();
                decide(snap, std::slice::from_ref(&work[i]), &profile)
            })
        });
        let mut j = 0;
        group.bench_with_input(BenchmarkId::new("reference_best_fit_scan", nodes), &snap, |b, snap| {
            b.iter(|| {
                j = (j + 1) % work.len();
                best_fit(snap, &work[j]).map(|n| n.name.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decide_one);
criterion_main!(benches);
