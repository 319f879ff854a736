//! Fixtures and reference schedulers for berth's benchmarks.
//!
//! - [`cluster`] and [`tasks`]: seeded synthetic clusters and workloads, so every run of a
//!   bench measures the same thing.
//! - [`best_fit`]: the reference the decision core is measured against: one exact scan over
//!   every node for the fitting node with the least CPU left, no scoring framework.
//!
//! The benches themselves are in `benches/`; `make bench` runs them.

use berth_core::{ClusterSnapshot, NodeView, Resources, SchedulingSpec};
use uuid::Uuid;

/// A small, fast, seedable generator (SplitMix64): the benches need repeatable inputs, not
/// statistical quality, and this keeps the crate free of extra dependencies.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// `n` nodes of 8–64 CPU, 32–256Gi, 0–8 GPUs, each already a random part full.
pub fn cluster(n: usize, seed: u64) -> ClusterSnapshot {
    let mut r = SplitMix::new(seed);
    let nodes = (0..n)
        .map(|i| {
            let alloc = Resources::new(r.range(8, 64) * 1000, r.range(32, 256) << 30, r.range(0, 8));
            let used = Resources::new(
                alloc.cpu_millis * r.range(0, 80) / 100,
                alloc.memory_bytes * r.range(0, 80) / 100,
                alloc.gpu * r.range(0, 80) / 100,
            );
            NodeView {
                name: format!("node-{i:06}"),
                allocatable: alloc,
                requested: used,
                labels: Default::default(),
                taints: vec![],
                schedulable: true,
            }
        })
        .collect();
    ClusterSnapshot { version: 1, nodes }
}

/// `n` tasks of 0.1–4 CPU, 128Mi–8Gi, a GPU for one in eight.
pub fn tasks(n: usize, seed: u64) -> Vec<SchedulingSpec> {
    let mut r = SplitMix::new(seed);
    (0..n)
        .map(|i| SchedulingSpec {
            task_id: Uuid::from_u64_pair(seed, i as u64),
            tenant: format!("t{}", i % 8),
            requests: Resources::new(r.range(1, 40) * 100, r.range(1, 64) << 27, u64::from(r.range(0, 7) == 0)),
            priority: r.range(0, 100) as u8,
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: i as u64,
        })
        .collect()
}

/// The fitting node with the least CPU left after placing `task`: an exact scan with no
/// framework around it, the speed limit of a scheduler that looks at every node.
pub fn best_fit<'a>(snapshot: &'a ClusterSnapshot, task: &SchedulingSpec) -> Option<&'a NodeView> {
    let need = task.reservation();
    snapshot
        .nodes
        .iter()
        .filter(|n| !need.shortfalls(&n.allocatable, &n.requested).any())
        .min_by_key(|n| n.allocatable.cpu_millis - n.requested.cpu_millis - need.cpu_millis)
}

/// Appends one row to the summary table `make bench` prints at the end: the file named by
/// `BERTH_BENCH_SUMMARY`, if set. `met` is None for a figure with no target.
pub fn summary(what: &str, target: &str, measured: &str, met: Option<bool>) {
    let Ok(path) = std::env::var("BERTH_BENCH_SUMMARY") else { return };
    let mark = match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "-",
    };
    let row = format!("| {what} | {target} | {measured} | {mark} |\n");
    use std::io::Write;
    if let Err(e) =
        std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(row.as_bytes()))
    {
        eprintln!("could not append to {path}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_repeatable() {
        assert_eq!(cluster(10, 1), cluster(10, 1));
        assert_eq!(tasks(10, 1), tasks(10, 1));
        assert_ne!(cluster(10, 1), cluster(10, 2));
    }

    #[test]
    fn best_fit_picks_a_fitting_node_with_the_least_cpu_left() {
        let snap = cluster(200, 3);
        let t = &tasks(1, 4)[0];
        let chosen = best_fit(&snap, t).expect("some node fits");
        assert!(t.reservation().fits_in(&chosen.free()));
        let left = chosen.free().cpu_millis - t.reservation().cpu_millis;
        for n in &snap.nodes {
            if t.reservation().fits_in(&n.free()) {
                assert!(n.free().cpu_millis - t.reservation().cpu_millis >= left);
            }
        }
    }
}
