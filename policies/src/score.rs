//! Node scorers: how good is this node for this task, in 0..=[`MAX_NODE_SCORE`].
//!
//! [`ResourceFit`] is kube-scheduler's NodeResourcesFit score (LeastAllocated and
//! MostAllocated strategies) with its integer maths: per resource
//! `(allocatable − requested) × 100 / allocatable` (least) or `requested × 100 / allocatable`
//! (most), truncated; then `Σ score×weight / Σ weight`, truncated. `requested` is what the node
//! already holds plus the task's request with the non-zero defaults (100m, 200Mi). A resource
//! the node has none of is skipped, and so is an extended resource (gpu) the task does not
//! request, as upstream does.

use std::collections::BTreeMap;

use berth_core::config::FitStrategy;
use berth_core::{NodeView, SchedulingSpec};

/// kube-scheduler's `framework.MaxNodeScore`.
pub const MAX_NODE_SCORE: u64 = 100;

pub trait NodeScorer: Send + Sync {
    fn name(&self) -> &'static str;
    /// A score in `0..=MAX_NODE_SCORE`; the profile checks the range.
    fn score(&self, task: &SchedulingSpec, node: &NodeView) -> u64;
}

/// The resources a fit scorer can weigh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceName {
    Cpu,
    Memory,
    Gpu,
}

impl ResourceName {
    pub fn parse(name: &str) -> Option<ResourceName> {
        match name {
            "cpu" => Some(ResourceName::Cpu),
            "memory" => Some(ResourceName::Memory),
            berth_core::resources::GPU_RESOURCE => Some(ResourceName::Gpu),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResourceFit {
    strategy: FitStrategy,
    weights: Vec<(ResourceName, i64)>,
}

impl ResourceFit {
    pub const NAME: &'static str = "resource_fit";

    /// Weights must already be validated (names known, 1..=100).
    pub fn new(strategy: FitStrategy, weights: &BTreeMap<String, i64>) -> Self {
        let weights = weights.iter().filter_map(|(k, w)| ResourceName::parse(k).map(|r| (r, *w))).collect();
        ResourceFit { strategy, weights }
    }
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE as i64 / capacity
}

fn most_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 {
        return 0;
    }
    // Requests with defaults may exceed capacity; upstream clamps.
    requested.min(capacity) * MAX_NODE_SCORE as i64 / capacity
}

impl NodeScorer for ResourceFit {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn score(&self, task: &SchedulingSpec, node: &NodeView) -> u64 {
        let req = task.requests.with_defaults();
        let (mut total, mut weight_sum) = (0i64, 0i64);
        for &(res, weight) in &self.weights {
            let (alloc, held, asked) = match res {
                ResourceName::Cpu => (node.allocatable.cpu_millis, node.requested.cpu_millis, req.cpu_millis),
                ResourceName::Memory => (node.allocatable.memory_bytes, node.requested.memory_bytes, req.memory_bytes),
                ResourceName::Gpu => {
                    if req.gpu == 0 {
                        continue;
                    }
                    (node.allocatable.gpu, node.requested.gpu, req.gpu)
                }
            };
            if alloc == 0 {
                continue;
            }
            let requested = held.saturating_add(asked) as i64;
            let alloc = alloc as i64;
            let s = match self.strategy {
                FitStrategy::LeastAllocated => least_requested(requested, alloc),
                FitStrategy::MostAllocated => most_requested(requested, alloc),
            };
            total += s * weight;
            weight_sum += weight;
        }
        if weight_sum == 0 { 0 } else { (total / weight_sum) as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::Resources;

    fn node(cpu: u64, mem: u64, held_cpu: u64, held_mem: u64) -> NodeView {
        NodeView {
            name: "n".into(),
            allocatable: Resources::new(cpu, mem, 0),
            requested: Resources::new(held_cpu, held_mem, 0),
            labels: Default::default(),
            taints: vec![],
            schedulable: true,
        }
    }

    fn task(cpu: u64, mem: u64) -> SchedulingSpec {
        SchedulingSpec {
            task_id: uuid::Uuid::nil(),
            tenant: "t".into(),
            requests: Resources::new(cpu, mem, 0),
            priority: 0,
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: 0,
        }
    }

    fn cpu_mem() -> BTreeMap<String, i64> {
        BTreeMap::from([("cpu".into(), 1), ("memory".into(), 1)])
    }

    // Cases from kube-scheduler's least_allocated_test.go ("nothing scheduled, resources
    // requested, differently sized nodes"): node1 4000m/10000, node2 6000m/10000, pod 3000m/5000.
    #[test]
    fn least_allocated_matches_upstream_differently_sized_nodes() {
        let s = ResourceFit::new(FitStrategy::LeastAllocated, &cpu_mem());
        // cpu (4000-3000)*100/4000 = 25, mem (10000-5000)*100/10000 = 50 → 37
        assert_eq!(s.score(&task(3000, 5000), &node(4000, 10000, 0, 0)), 37);
        // cpu 50, mem 50 → 50
        assert_eq!(s.score(&task(3000, 5000), &node(6000, 10000, 0, 0)), 50);
    }

    // most_allocated_test.go: node 4000/10000 with 0 held, pod 3000/5000 → cpu 75, mem 50 → 62.
    #[test]
    fn most_allocated_matches_upstream() {
        let s = ResourceFit::new(FitStrategy::MostAllocated, &cpu_mem());
        assert_eq!(s.score(&task(3000, 5000), &node(4000, 10000, 0, 0)), 62);
        assert_eq!(s.score(&task(3000, 5000), &node(6000, 10000, 0, 0)), 50);
    }

    #[test]
    fn defaults_apply_to_requestless_tasks() {
        let s = ResourceFit::new(FitStrategy::MostAllocated, &BTreeMap::from([("cpu".into(), 1)]));
        // 100m default on a 1000m node → 10
        assert_eq!(s.score(&task(0, 0), &node(1000, 1 << 30, 0, 0)), 10);
    }

    #[test]
    fn unrequested_gpu_is_skipped_and_requested_gpu_counts() {
        let w = BTreeMap::from([("cpu".into(), 1), ("nvidia.com/gpu".into(), 3)]);
        let s = ResourceFit::new(FitStrategy::MostAllocated, &w);
        let mut n = node(4000, 1 << 30, 0, 0);
        n.allocatable.gpu = 4;
        assert_eq!(s.score(&task(2000, 0), &n), 50);
        let mut t = task(2000, 0);
        t.requests.gpu = 4;
        // (50×1 + 100×3) / 4 = 87
        assert_eq!(s.score(&t, &n), 87);
    }

    #[test]
    fn over_capacity_scores_zero_for_least_and_clamps_for_most() {
        let least = ResourceFit::new(FitStrategy::LeastAllocated, &BTreeMap::from([("cpu".into(), 1)]));
        let most = ResourceFit::new(FitStrategy::MostAllocated, &BTreeMap::from([("cpu".into(), 1)]));
        assert_eq!(least.score(&task(5000, 0), &node(4000, 1, 0, 0)), 0);
        assert_eq!(most.score(&task(5000, 0), &node(4000, 1, 0, 0)), 100);
    }
}
