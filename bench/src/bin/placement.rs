//! The placement harness (issue 4's benchmarks): one decision at a time through the real
//! `decide()`, for each scorer, at 1,000, 10,000 and 100,000 nodes, beside two references in
//! the same run: an exact best-fit scan over every node (the speed limit of looking at every
//! node) and random sampling of 64 nodes (the cheap peer). Then bin-packing quality: nodes in
//! use after placing a stream of tasks on an empty cluster, every node scored vs sampling.
//!
//! `cargo run --release -p berth-bench --bin placement [-- DECISIONS QUALITY_TASKS QUALITY_NODES]`
//! (`make bench-placement`). Prints one table; single-threaded; ratios within one run are
//! what to compare on a shared machine.

use std::time::{Duration, Instant};

use berth_bench::{SplitMix, best_fit, cluster, summary, tasks};
use berth_core::config::{Config, FitStrategy, ProfileConfig, ScorerConfig, ShapePoint};
use berth_core::{ClusterSnapshot, NodeView, SchedulingSpec};
use berth_policies::Profile;
use berth_scheduler::{CandidateIndex, Decision, decide_with};

fn profiles() -> Vec<(&'static str, ProfileConfig)> {
    let base = Config::default().scheduler.profile;
    let with = |scorer: ScorerConfig| ProfileConfig { scorers: vec![scorer], ..base.clone() };
    let cpu_mem = || [("cpu".to_string(), 1), ("memory".to_string(), 1)].into();
    vec![
        ("default (most_allocated)", base.clone()),
        (
            "least_allocated",
            with(ScorerConfig::ResourceFit {
                weight: 1,
                strategy: FitStrategy::LeastAllocated,
                resources: cpu_mem(),
                shape: vec![],
            }),
        ),
        (
            "requested_to_capacity_ratio",
            with(ScorerConfig::ResourceFit {
                weight: 1,
                strategy: FitStrategy::RequestedToCapacityRatio,
                resources: cpu_mem(),
                shape: vec![ShapePoint { utilization: 0, score: 0 }, ShapePoint { utilization: 100, score: 10 }],
            }),
        ),
        ("balanced_allocation", with(ScorerConfig::BalancedAllocation { weight: 1, resources: cpu_mem() })),
        (INDEXED, ProfileConfig { candidate_limit: CANDIDATES, ..base.clone() }),
    ]
}

/// The default profile with a candidate limit: the candidate index's rows.
const INDEXED: &str = "default, candidate_limit 128";
const CANDIDATES: u32 = 128;

/// One decision through `decide_with`, with the profile's candidate index when it has one
/// (kept in step with the placements, as the scheduler keeps it).
fn decide_one(
    snap: &ClusterSnapshot,
    index: Option<&mut CandidateIndex>,
    task: &SchedulingSpec,
    profile: &Profile,
) -> Decision {
    decide_with(snap, index, std::slice::from_ref(task), profile).remove(0)
}

fn index_for(profile: &Profile, snap: &ClusterSnapshot) -> Option<CandidateIndex> {
    profile.candidates().map(|(order, limit)| CandidateIndex::new(order, limit, snap))
}

/// Random sampling: the best-scoring fitting node among 64 drawn at random (the cheap peer).
fn sample_64<'a>(
    snap: &'a ClusterSnapshot,
    task: &SchedulingSpec,
    profile: &Profile,
    r: &mut SplitMix,
) -> Option<&'a NodeView> {
    let n = snap.nodes.len() as u64;
    let mut best: Option<(u64, &NodeView)> = None;
    for _ in 0..64 {
        let node = &snap.nodes[r.range(0, n - 1) as usize];
        if profile.filter(task, node).is_ok() {
            let s = profile.total(task, node);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, node));
            }
        }
    }
    best.map(|b| b.1)
}

struct Timing {
    mean: Duration,
    p99: Duration,
}

fn time(n: usize, mut f: impl FnMut(usize)) -> Timing {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        lat.push(t.elapsed());
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / n as u32;
    Timing { mean, p99: lat[(n * 99 / 100).min(n - 1)] }
}

fn row(what: &str, nodes: usize, t: &Timing) {
    let rate = 1.0 / t.mean.as_secs_f64();
    println!(
        "| {what:<36} | {nodes:>7} | {:>10.1} µs | {:>10.1} µs | {:>12.0} |",
        t.mean.as_secs_f64() * 1e6,
        t.p99.as_secs_f64() * 1e6,
        rate
    );
}

/// Places `work` one by one on an empty copy of `snap` with `choose`, and counts nodes in use.
fn nodes_in_use(
    snap: &ClusterSnapshot,
    work: &[SchedulingSpec],
    mut choose: impl FnMut(&ClusterSnapshot, &SchedulingSpec) -> Option<usize>,
) -> (usize, usize) {
    let mut s = snap.clone();
    for n in &mut s.nodes {
        n.requested = Default::default();
    }
    let mut placed = 0;
    for t in work {
        if let Some(i) = choose(&s, t) {
            s.nodes[i].requested = s.nodes[i].requested.saturating_add(&t.reservation());
            placed += 1;
        }
    }
    (s.nodes.iter().filter(|n| !n.requested.is_zero()).count(), placed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let decisions: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let quality_tasks: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let work = tasks(4096, 11);
    println!("Single decisions (one task against the whole cluster, nodes 0-80% full), {decisions} per row:\n");
    println!(
        "| {:<36} | {:>7} | {:>13} | {:>13} | {:>12} |",
        "profile / reference", "nodes", "mean", "p99", "decisions/s"
    );
    println!("|{:-<38}|{:->9}|{:->15}|{:->15}|{:->14}|", "", "", "", "", "");
    for nodes in [1_000usize, 10_000, 100_000] {
        let snap = cluster(nodes, 7);
        // Fewer decisions at 100k nodes: each looks at every node.
        let n = if nodes >= 100_000 { (decisions / 10).max(50) } else { decisions };
        for (name, config) in profiles() {
            let profile = Profile::build(&config).unwrap();
            // The index is built once per snapshot, as a scheduler replica builds it once and
            // then keeps it in step; these decisions do not change the snapshot.
            let mut index = index_for(&profile, &snap);
            let n = if index.is_some() { decisions } else { n };
            let t = time(n, |i| {
                std::hint::black_box(decide_one(&snap, index.as_mut(), &work[i % work.len()], &profile));
            });
            row(name, nodes, &t);
            let rate = 1.0 / t.mean.as_secs_f64();
            let p99 = t.p99.as_secs_f64() * 1e6;
            if nodes == 10_000 && name == profiles()[0].0 {
                summary(
                    "decide, 10k nodes, every node scored",
                    "≥ 200,000/s",
                    &format!("{rate:.0}/s, p99 {p99:.0} µs"),
                    Some(rate >= 200_000.0),
                );
            }
            if nodes >= 10_000 && name == INDEXED {
                summary(
                    &format!("decide, {}k nodes, {INDEXED}", nodes / 1000),
                    if nodes == 100_000 { "≥ 100,000/s" } else { "-" },
                    &format!("{rate:.0}/s, p99 {p99:.1} µs"),
                    (nodes == 100_000).then_some(rate >= 100_000.0),
                );
            }
        }
        let t = time(n, |i| {
            std::hint::black_box(best_fit(&snap, &work[i % work.len()]));
        });
        row("reference: exact best-fit scan", nodes, &t);
        let profile = Profile::build(&Config::default().scheduler.profile).unwrap();
        let mut r = SplitMix::new(5);
        let t = time(n, |i| {
            std::hint::black_box(sample_64(&snap, &work[i % work.len()], &profile, &mut r));
        });
        row("reference: random 64 nodes", nodes, &t);
    }

    let quality_nodes: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    println!(
        "\nBin-packing quality: {quality_tasks} tasks placed one by one on an empty {quality_nodes}-node cluster (fewer nodes in use is better):\n"
    );
    let snap = cluster(quality_nodes, 7);
    let stream = tasks(quality_tasks, 23);
    let profile = Profile::build(&Config::default().scheduler.profile).unwrap();
    let by_name: std::collections::HashMap<String, usize> =
        snap.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
    let index_of = |name: &str| by_name.get(name).copied();
    let placed_on = |d: Decision| match d {
        Decision::Place { node, .. } => index_of(&node),
        Decision::Unschedulable { .. } => None,
    };
    let started = Instant::now();
    let (full, placed_full) = nodes_in_use(&snap, &stream, |s, t| placed_on(decide_one(s, None, t, &profile)));
    let full_time = started.elapsed();
    let limited =
        Profile::build(&ProfileConfig { candidate_limit: CANDIDATES, ..Config::default().scheduler.profile }).unwrap();
    let mut index: Option<CandidateIndex> = None;
    let started = Instant::now();
    let (indexed, placed_indexed) = nodes_in_use(&snap, &stream, |s, t| {
        // Built on the emptied cluster at the first decision, then kept in step.
        let index = index.get_or_insert_with(|| index_for(&limited, s).unwrap());
        let i = placed_on(decide_one(s, Some(index), t, &limited));
        if let Some(i) = i {
            let mut after = s.nodes[i].clone();
            after.requested = after.requested.saturating_add(&t.reservation());
            index.update(i, &after);
        }
        i
    });
    let indexed_time = started.elapsed();
    let mut r = SplitMix::new(9);
    let (sampled, placed_sampled) =
        nodes_in_use(&snap, &stream, |s, t| sample_64(s, t, &profile, &mut r).and_then(|n| index_of(&n.name)));
    let (bf, placed_bf) = nodes_in_use(&snap, &stream, |s, t| best_fit(s, t).and_then(|n| index_of(&n.name)));
    println!("| {:<36} | {:>13} | {:>9} |", "placement", "nodes in use", "placed");
    println!("|{:-<38}|{:->15}|{:->11}|", "", "", "");
    println!("| {:<36} | {full:>13} | {placed_full:>9} |", "berth, every node scored");
    println!("| {:<36} | {indexed:>13} | {placed_indexed:>9} |", format!("berth, {INDEXED}"));
    println!("| {:<36} | {sampled:>13} | {placed_sampled:>9} |", "random 64 nodes, same scorer");
    println!("| {:<36} | {bf:>13} | {placed_bf:>9} |", "exact best-fit (least CPU left)");
    let vs = |x: usize| (x as f64 / full as f64 - 1.0) * 100.0;
    summary(
        &format!("bin-packing, {quality_tasks} tasks on {quality_nodes} nodes, {INDEXED}"),
        "within 2% of every node scored",
        &format!("{indexed} vs {full} nodes in use ({:+.1}%)", vs(indexed)),
        Some(vs(indexed) <= 2.0),
    );
    println!(
        "\nvs scoring every node: candidate index {:+.1}% nodes, random sampling {:+.1}%, best-fit {:+.1}%; \
         placing took {:.1} s scoring every node, {:.2} s with the index",
        vs(indexed),
        vs(sampled),
        vs(bf),
        full_time.as_secs_f64(),
        indexed_time.as_secs_f64()
    );
}
