//! Node scorers: how good is this node for this task, in 0..=[`MAX_NODE_SCORE`].
//!
//! Both are kube-scheduler's, with its integer maths (see `pkg/scheduler/framework/plugins/
//! noderesources/` upstream; the tests below port its tables):
//!
//! - [`ResourceFit`] is NodeResourcesFit's score. Per resource, LeastAllocated scores
//!   `(allocatable − requested) × 100 / allocatable` (0 when over), MostAllocated
//!   `min(requested, allocatable) × 100 / allocatable`, both truncated, then
//!   `Σ score×weight / Σ weight`, truncated. RequestedToCapacityRatio maps the utilization
//!   `requested × 100 / allocatable` (truncated) through a broken-linear shape whose 0–10
//!   scores are scaled to 0–100, drops resources scoring 0, and *rounds* the weighted mean.
//!   `requested` is what the node already holds plus the task's request with the non-zero
//!   defaults (100m CPU, 200Mi memory).
//! - [`BalancedAllocation`] is NodeResourcesBalancedAllocation: per resource the fraction
//!   `requested / allocatable` capped at 1, and the score `(1 − std) × 100` truncated, where std
//!   is half the difference for two resources and the population standard deviation for more.
//!   It uses the task's actual requests (no defaults), and a task requesting none of its
//!   resources is not scored (0 on every node, as upstream's skipped PreScore). One
//!   difference: the node side is berth's reservations, which include the defaults of
//!   requestless tasks, where upstream sums the pods' actual requests.
//!
//! A resource the node has none of is skipped (neither score nor weight), and so is an
//! extended resource (gpu, or any other by name) the task does not request, as upstream does.

use std::collections::BTreeMap;

use berth_core::config::{FitStrategy, ShapePoint};
use berth_core::resources::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES};
use berth_core::{NodeView, Resources, SchedulingSpec};

/// kube-scheduler's `framework.MaxNodeScore`.
pub const MAX_NODE_SCORE: u64 = 100;
/// kube-scheduler's `config.MaxCustomPriorityScore`: shape scores are 0..=10.
const MAX_SHAPE_SCORE: i64 = 10;
const MAX: i64 = MAX_NODE_SCORE as i64;

pub trait NodeScorer: Send + Sync {
    fn name(&self) -> &'static str;
    /// A score in `0..=MAX_NODE_SCORE`; the profile checks the range.
    fn score(&self, task: &SchedulingSpec, node: &NodeView) -> u64;
}

/// The resources a scorer can weigh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceName {
    Cpu,
    Memory,
    Gpu,
    /// Any other extended resource, by its Kubernetes name.
    Extended(String),
}

impl ResourceName {
    /// A validated resource name (see `check_scorer` in the config).
    pub fn parse(name: &str) -> ResourceName {
        match name {
            "cpu" => ResourceName::Cpu,
            "memory" => ResourceName::Memory,
            berth_core::resources::GPU_RESOURCE => ResourceName::Gpu,
            other => ResourceName::Extended(other.to_owned()),
        }
    }

    #[inline(always)]
    fn of(&self, r: &Resources) -> u64 {
        match self {
            ResourceName::Cpu => r.cpu_millis,
            ResourceName::Memory => r.memory_bytes,
            ResourceName::Gpu => r.gpu,
            ResourceName::Extended(name) => extended_amount(r, name),
        }
    }

    /// Upstream's "scalar" resources: skipped when the task does not request them.
    fn is_extended(&self) -> bool {
        matches!(self, ResourceName::Gpu | ResourceName::Extended(_))
    }
}

/// Out of line, so that the per-node paths for cpu, memory and gpu stay small enough to inline.
#[inline(never)]
fn extended_amount(r: &Resources, name: &str) -> u64 {
    r.extended.get(name)
}

/// (allocatable, node's requested + `asked`) of `res`, or None when upstream skips the
/// resource: the node has none of it, or it is extended and the task asks for none.
#[inline(always)]
fn amounts(res: &ResourceName, node: &NodeView, asked: u64) -> Option<(i64, i64)> {
    let alloc = res.of(&node.allocatable);
    if alloc == 0 || (res.is_extended() && asked == 0) {
        return None;
    }
    let requested = res.of(&node.requested).saturating_add(asked).min(i64::MAX as u64) as i64;
    Some((alloc.min(i64::MAX as u64) as i64, requested))
}

/// The task's request of `res` with kube-scheduler's non-zero defaults (cpu, memory), read
/// without building a defaulted copy of the request.
#[inline(always)]
fn with_default(res: &ResourceName, r: &Resources) -> u64 {
    match (res, res.of(r)) {
        (ResourceName::Cpu, 0) => DEFAULT_CPU_MILLIS,
        (ResourceName::Memory, 0) => DEFAULT_MEMORY_BYTES,
        (_, v) => v,
    }
}

/// kube-scheduler's `helper.BuildBrokenLinearFunction`, over already scaled points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLinear {
    points: Vec<(i64, i64)>,
}

impl BrokenLinear {
    pub fn new(points: Vec<(i64, i64)>) -> Self {
        BrokenLinear { points }
    }

    pub fn eval(&self, p: i64) -> i64 {
        for (i, &(u, s)) in self.points.iter().enumerate() {
            if p <= u {
                if i == 0 {
                    return s;
                }
                let (u0, s0) = self.points[i - 1];
                // Multiply first, then divide; i64 division truncates toward zero, as Go's.
                return s0 + (s - s0) * (p - u0) / (u - u0);
            }
        }
        self.points.last().map_or(0, |p| p.1)
    }
}

/// `a × 100 / c` truncated, for `0 <= a`, `0 < c`: in i64 when `a × 100` fits (every real
/// amount), in i128 otherwise, where upstream's int64 would overflow.
#[inline]
fn percent(a: i64, c: i64) -> i64 {
    if a <= i64::MAX / MAX { a * MAX / c } else { (i128::from(a) * i128::from(MAX) / i128::from(c)) as i64 }
}

/// Upstream's `scaledUtilization`: `requested × 100 / capacity`, truncated, without overflow.
fn scaled_utilization(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested <= 0 {
        return 0;
    }
    if requested >= capacity {
        return MAX;
    }
    percent(requested, capacity)
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    percent(capacity - requested, capacity)
}

fn most_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 {
        return 0;
    }
    // Requests with defaults may exceed capacity; upstream clamps.
    percent(requested.min(capacity), capacity)
}

fn weights_of(weights: &BTreeMap<String, i64>) -> Vec<(ResourceName, i64)> {
    weights.iter().map(|(k, w)| (ResourceName::parse(k), *w)).collect()
}

#[derive(Debug, Clone)]
pub struct ResourceFit {
    strategy: FitStrategy,
    weights: Vec<(ResourceName, i64)>,
    /// For RequestedToCapacityRatio: the shape, scores scaled to 0..=100.
    shape: BrokenLinear,
}

impl ResourceFit {
    pub const NAME: &'static str = "resource_fit";

    /// Weights and shape must already be validated (names known, weights 1..=100, points
    /// increasing and in range).
    pub fn new(strategy: FitStrategy, weights: &BTreeMap<String, i64>, shape: &[ShapePoint]) -> Self {
        let shape = shape.iter().map(|p| (p.utilization, p.score * (MAX / MAX_SHAPE_SCORE))).collect();
        ResourceFit { strategy, weights: weights_of(weights), shape: BrokenLinear::new(shape) }
    }
}

impl NodeScorer for ResourceFit {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn score(&self, task: &SchedulingSpec, node: &NodeView) -> u64 {
        let (mut total, mut weight_sum) = (0i64, 0i64);
        for (res, weight) in &self.weights {
            let weight = *weight;
            let Some((alloc, requested)) = amounts(res, node, with_default(res, &task.requests)) else { continue };
            let s = match self.strategy {
                FitStrategy::LeastAllocated => least_requested(requested, alloc),
                FitStrategy::MostAllocated => most_requested(requested, alloc),
                FitStrategy::RequestedToCapacityRatio => {
                    let s = if requested > alloc {
                        self.shape.eval(MAX)
                    } else {
                        self.shape.eval(scaled_utilization(requested, alloc))
                    };
                    // Upstream leaves resources scoring 0 out of the mean altogether.
                    if s <= 0 {
                        continue;
                    }
                    s
                }
            };
            total += s * weight;
            weight_sum += weight;
        }
        if weight_sum == 0 {
            return 0;
        }
        let mean = match self.strategy {
            FitStrategy::RequestedToCapacityRatio => (total as f64 / weight_sum as f64).round() as i64,
            _ => total / weight_sum,
        };
        mean.clamp(0, MAX) as u64
    }
}

/// kube-scheduler's NodeResourcesBalancedAllocation.
#[derive(Debug, Clone)]
pub struct BalancedAllocation {
    resources: Vec<ResourceName>,
}

impl BalancedAllocation {
    pub const NAME: &'static str = "balanced_allocation";

    /// Resource names must already be validated (weights are all 1 and play no part).
    pub fn new(resources: &BTreeMap<String, i64>) -> Self {
        BalancedAllocation { resources: weights_of(resources).into_iter().map(|r| r.0).collect() }
    }
}

impl NodeScorer for BalancedAllocation {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn score(&self, task: &SchedulingSpec, node: &NodeView) -> u64 {
        // Actual requests, no defaults; a task asking for none of these is not scored.
        let ask = &task.requests;
        if self.resources.iter().all(|r| r.of(ask) == 0) {
            return 0;
        }
        let fractions: Vec<f64> = self
            .resources
            .iter()
            .filter_map(|r| amounts(r, node, r.of(ask)))
            .map(|(alloc, requested)| (requested as f64 / alloc as f64).min(1.0))
            .collect();
        let std = match fractions.len() {
            2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
            n if n > 2 => {
                let mean = fractions.iter().sum::<f64>() / n as f64;
                (fractions.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / n as f64).sqrt()
            }
            _ => 0.0,
        };
        (((1.0 - std) * MAX as f64) as i64).clamp(0, MAX) as u64
    }
}

#[cfg(test)]
mod tests {
    //! Ported from kube-scheduler's `noderesources` test tables (least_allocated_test.go,
    //! most_allocated_test.go, requested_to_capacity_ratio_test.go, balanced_allocation_test.go;
    //! case ids L*, M*, Q*, S*, B* follow the order of the upstream tables). Upstream writes
    //! cpu "4000" (cores); here it is millicores, which only the ratios see.
    //!
    //! Consciously not ported: cases whose pod has *no containers* (L1, L4, L5, L9, M1, M4, Q1,
    //! Q3, S1), because a berth task always has one container, so a request it leaves out
    //! gets the default as upstream's requestless container does (M8 checks exactly that);
    //! L8, whose pod sets memory to an explicit "0" (berth, like a request it leaves out,
    //! charges that the default); B9
    //! and B10, which need DRA; and the "resources not set" errors (L3, M3), which config
    //! defaulting makes impossible, as it does upstream for v1 configs.
    use super::*;

    const GPU: &str = "nvidia.com/gpu";

    fn node(cpu: u64, mem: u64, gpu: u64) -> NodeView {
        NodeView {
            name: "n".into(),
            allocatable: Resources::new(cpu, mem, gpu),
            requested: Resources::ZERO,
            labels: Default::default(),
            taints: vec![],
            schedulable: true,
        }
    }

    fn holding(mut n: NodeView, cpu: u64, mem: u64, gpu: u64) -> NodeView {
        n.requested = Resources::new(cpu, mem, gpu);
        n
    }

    fn task(cpu: u64, mem: u64, gpu: u64) -> SchedulingSpec {
        SchedulingSpec {
            task_id: uuid::Uuid::nil(),
            tenant: "t".into(),
            requests: Resources::new(cpu, mem, gpu),
            priority: 0,
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: 0,
        }
    }

    fn weights(w: &[(&str, i64)]) -> BTreeMap<String, i64> {
        w.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn cpu_mem() -> BTreeMap<String, i64> {
        weights(&[("cpu", 1), ("memory", 1)])
    }

    fn cpu_mem_gpu() -> BTreeMap<String, i64> {
        weights(&[("cpu", 1), ("memory", 1), (GPU, 1)])
    }

    fn fit(strategy: FitStrategy, w: BTreeMap<String, i64>) -> ResourceFit {
        ResourceFit::new(strategy, &w, &[])
    }

    fn ratio(w: BTreeMap<String, i64>, shape: &[(i64, i64)]) -> ResourceFit {
        let shape: Vec<ShapePoint> =
            shape.iter().map(|&(utilization, score)| ShapePoint { utilization, score }).collect();
        ResourceFit::new(FitStrategy::RequestedToCapacityRatio, &w, &shape)
    }

    /// Upstream's `R`: two containers, (1000, 2000) + (2000, 3000) → 3000 "cpu", 5000 memory.
    const R: (u64, u64) = (3_000_000, 5000);

    #[test]
    fn least_allocated_matches_upstream() {
        let least = |w| fit(FitStrategy::LeastAllocated, w);
        let r = task(R.0, R.1, 0);
        // L2: nothing scheduled, differently sized nodes.
        assert_eq!(least(cpu_mem()).score(&r, &node(4_000_000, 10000, 0)), 37);
        assert_eq!(least(cpu_mem()).score(&r, &node(6_000_000, 10000, 0)), 50);
        // L6, L7: pods scheduled with resources.
        let big = node(10_000_000, 20000, 0);
        assert_eq!(least(cpu_mem()).score(&r, &holding(big.clone(), 3_000_000, 0, 0)), 57);
        assert_eq!(least(cpu_mem()).score(&r, &holding(big, 3_000_000, 5000, 0)), 45);
        assert_eq!(least(cpu_mem()).score(&r, &holding(node(10_000_000, 50000, 0), 3_000_000, 5000, 0)), 60);
        // L10: different weights.
        let w = || weights(&[("memory", 2), ("cpu", 1)]);
        assert_eq!(least(w()).score(&r, &node(4_000_000, 10000, 0)), 41);
        assert_eq!(least(w()).score(&r, &node(6_000_000, 10000, 0)), 50);
        // L14: an extended resource the task does not request is bypassed.
        assert_eq!(least(cpu_mem_gpu()).score(&r, &node(6_000_000, 10000, 0)), 50);
        assert_eq!(least(cpu_mem_gpu()).score(&r, &node(6_000_000, 10000, 4)), 50);
        // L15: and honoured when it does.
        let rg = task(R.0, R.1, 2);
        assert_eq!(least(cpu_mem_gpu()).score(&rg, &node(6_000_000, 10000, 4)), 50);
        assert_eq!(least(cpu_mem_gpu()).score(&rg, &node(6_000_000, 10000, 10)), 60);
        // L16: a node without the resource.
        let w = || weights(&[(GPU, 2), ("cpu", 1), ("memory", 1)]);
        assert_eq!(least(w()).score(&task(3_000_000, 4000, 0), &node(6_000_000, 10000, 0)), 55);
        assert_eq!(least(w()).score(&task(3_000_000, 4000, 0), &node(6_000_000, 10000, 4)), 55);
    }

    #[test]
    fn most_allocated_matches_upstream() {
        let most = |w| fit(FitStrategy::MostAllocated, w);
        let r = task(R.0, R.1, 0);
        // M2.
        assert_eq!(most(cpu_mem()).score(&r, &node(4_000_000, 10000, 0)), 62);
        assert_eq!(most(cpu_mem()).score(&r, &node(6_000_000, 10000, 0)), 50);
        // M5.
        let big = node(10_000_000, 20000, 0);
        assert_eq!(most(cpu_mem()).score(&r, &holding(big.clone(), 3_000_000, 0, 0)), 42);
        assert_eq!(most(cpu_mem()).score(&r, &holding(big, 3_000_000, 5000, 0)), 55);
        // M6: requests equal to node capacity.
        let full = task(5_000_000, 9000, 0);
        assert_eq!(most(cpu_mem()).score(&full, &node(5_000_000, 10000, 0)), 95);
        assert_eq!(most(cpu_mem()).score(&full, &node(10_000_000, 9000, 0)), 75);
        // M7: different weights.
        let w = || weights(&[("memory", 2), ("cpu", 1)]);
        assert_eq!(most(w()).score(&r, &node(4_000_000, 10000, 0)), 58);
        assert_eq!(most(w()).score(&r, &node(6_000_000, 10000, 0)), 50);
        // M8: the non-zero defaults. 250m and 1000Mi nodes; n1 holds two requestless
        // containers (2 × 100m, 2 × 200Mi); the task is requestless too.
        let mi = 1 << 20;
        let n = node(250, 1000 * mi, 0);
        assert_eq!(most(cpu_mem()).score(&task(0, 0, 0), &holding(n.clone(), 200, 400 * mi, 0)), 80);
        assert_eq!(most(cpu_mem()).score(&task(0, 0, 0), &n), 30);
        // M12–M14: extended resources.
        assert_eq!(most(cpu_mem_gpu()).score(&r, &node(6_000_000, 10000, 4)), 50);
        let rg = task(R.0, R.1, 2);
        assert_eq!(most(cpu_mem_gpu()).score(&rg, &node(6_000_000, 10000, 4)), 50);
        assert_eq!(most(cpu_mem_gpu()).score(&rg, &node(6_000_000, 10000, 10)), 40);
        let w = || weights(&[(GPU, 2), ("cpu", 1), ("memory", 1)]);
        assert_eq!(most(w()).score(&task(3_000_000, 4000, 0), &node(6_000_000, 10000, 0)), 45);
        assert_eq!(most(w()).score(&task(3_000_000, 4000, 0), &node(6_000_000, 10000, 4)), 45);
    }

    #[test]
    fn requested_to_capacity_ratio_matches_upstream() {
        // Q2: shape [(0, 10), (100, 0)]; n1 cpu 75% → 25, memory 50% → 50: round(37.5) = 38
        // (this strategy rounds; least/most truncate).
        let spread = ratio(cpu_mem(), &[(0, 10), (100, 0)]);
        let r = task(R.0, R.1, 0);
        assert_eq!(spread.score(&r, &node(4_000_000, 10000, 0)), 38);
        assert_eq!(spread.score(&r, &node(6_000_000, 10000, 0)), 50);
        // S2–S4 (single extended resource; gpu for upstream's intel.com/foo), bin-packing
        // shape [(0, 0), (100, 1)] scaled to [(0, 0), (100, 10)].
        let pack = ratio(weights(&[(GPU, 1)]), &[(0, 0), (100, 1)]);
        let (n1, n2) = (node(4000, 10000 << 20, 8), node(4000, 10000 << 20, 4));
        assert_eq!(pack.score(&task(0, 0, 2), &n1), 2);
        assert_eq!(pack.score(&task(0, 0, 2), &n2), 5);
        assert_eq!(pack.score(&task(0, 0, 2), &holding(n2.clone(), 0, 0, 2)), 10);
        assert_eq!(pack.score(&task(0, 0, 4), &n1), 5);
        assert_eq!(pack.score(&task(0, 0, 4), &n2), 10);
    }

    #[test]
    fn multiple_extended_resources_match_upstream() {
        // X1–X4 (TestResourceBinPackingMultipleExtended): weights intel.com/foo 3, intel.com/bar
        // 5, shape [(0, 0), (100, 1)]; node1 offers foo 8 / bar 4, node2 foo 4 / bar 8.
        let (foo, bar) = ("intel.com/foo", "intel.com/bar");
        let pack = ratio(weights(&[(foo, 3), (bar, 5)]), &[(0, 0), (100, 1)]);
        let offer = |f, b| {
            let mut n = node(4000, 10000 << 20, 0);
            n.allocatable = n.allocatable.with_extended(foo, f).with_extended(bar, b);
            n
        };
        let (n1, n2) = (offer(8, 4), offer(4, 8));
        let asking = |f, b| {
            let mut t = task(0, 0, 0);
            t.requests = t.requests.with_extended(foo, f).with_extended(bar, b);
            t
        };
        // X1: nothing requested: every resource skipped.
        assert_eq!((pack.score(&task(0, 0, 0), &n1), pack.score(&task(0, 0, 0), &n2)), (0, 0));
        // X2: foo 2, bar 2: node1 round((2×3 + 5×5) / 8) = 4, node2 round((5×3 + 2×5) / 8) = 3.
        assert_eq!((pack.score(&asking(2, 2), &n1), pack.score(&asking(2, 2), &n2)), (4, 3));
        // X3: node2 already holds foo 4, bar 2: foo over capacity scores the shape's 100.
        let mut held = n2.clone();
        held.requested = Resources::ZERO.with_extended(foo, 4).with_extended(bar, 2);
        assert_eq!((pack.score(&asking(2, 2), &n1), pack.score(&asking(2, 2), &held)), (4, 7));
        // X4: foo 4, bar 2.
        assert_eq!((pack.score(&asking(4, 2), &n1), pack.score(&asking(4, 2), &n2)), (5, 5));
    }

    #[test]
    fn broken_linear_matches_upstream() {
        let f = BrokenLinear::new(vec![(10, 1), (90, 9)]);
        for (p, want) in [
            (-10, 1),
            (0, 1),
            (9, 1),
            (10, 1),
            (15, 1),
            (19, 1),
            (20, 2),
            (89, 8),
            (90, 9),
            (99, 9),
            (100, 9),
            (110, 9),
        ] {
            assert_eq!(f.eval(p), want, "p = {p}");
        }
        let f = BrokenLinear::new(vec![(0, 2), (40, 10), (100, 0)]);
        for (p, want) in [(-10, 2), (0, 2), (20, 6), (30, 8), (40, 10), (70, 5), (100, 0), (110, 0)] {
            assert_eq!(f.eval(p), want, "p = {p}");
        }
        let f = BrokenLinear::new(vec![(0, 2), (40, 2), (100, 2)]);
        assert!([-10, 0, 40, 70, 100, 110].iter().all(|&p| f.eval(p) == 2));
        // Truncation toward zero on a decreasing segment: 10 + (−150 / 100 = −1) = 9.
        assert_eq!(BrokenLinear::new(vec![(0, 10), (100, 0)]).eval(15), 9);
    }

    #[test]
    fn scaled_utilization_matches_upstream() {
        for (req, cap, want) in [
            (-1, 1000, 0),
            (0, 1000, 0),
            (500, 0, 0),
            (500, -1000, 0),
            (1000, 1000, 100),
            (2000, 1000, 100),
            (i64::MAX, 1, 100),
            (250, 1000, 25),
            (999_999_999_999_999_999, 1_000_000_000_000_000_000, 99),
            (i64::MAX - 1, i64::MAX, 99),
            (i64::MAX / 100 + 1, i64::MAX, 1),
        ] {
            assert_eq!(scaled_utilization(req, cap), want, "{req}/{cap}");
        }
    }

    #[test]
    fn balanced_allocation_matches_upstream() {
        let ba = BalancedAllocation::new(&cpu_mem());
        let cpu_and_memory = task(3000, 5000, 0);
        // B1: a task requesting nothing is not scored.
        assert_eq!(ba.score(&task(0, 0, 0), &node(4000, 10000, 0)), 0);
        // B2: fractions 0.75 / 0.5 → std 0.125 → 87; 0.5 / 0.5 → 100.
        assert_eq!(ba.score(&cpu_and_memory, &node(4000, 10000, 0)), 87);
        assert_eq!(ba.score(&cpu_and_memory, &node(6000, 10000, 0)), 100);
        // B3, B4: pods scheduled with resources (cpuOnly = 3000m, 0 on n1; cpuAndMemory on n2).
        let n = node(10000, 20000, 0);
        assert_eq!(ba.score(&cpu_and_memory, &holding(n.clone(), 3000, 0, 0)), 82);
        assert_eq!(ba.score(&cpu_and_memory, &holding(n, 3000, 5000, 0)), 95);
        assert_eq!(ba.score(&cpu_and_memory, &holding(node(10000, 50000, 0), 3000, 5000, 0)), 80);
        // B5: requests at node capacity.
        let n = node(6000, 10000, 0);
        assert_eq!(ba.score(&task(3000, 0, 0), &holding(n.clone(), 3000, 0, 0)), 50);
        assert_eq!(ba.score(&task(3000, 0, 0), &holding(n, 3000, 5000, 0)), 75);
        // B6: a scalar resource on the node, three fractions, population std.
        let ba3 = BalancedAllocation::new(&cpu_mem_gpu());
        let n = node(3500, 40000, 8);
        assert_eq!(ba3.score(&task(0, 0, 1), &holding(n.clone(), 3000, 5000, 3)), 70);
        assert_eq!(ba3.score(&task(0, 0, 1), &holding(n, 3000, 5000, 0)), 65);
        // B7: a node without the scalar resource, or a task not requesting it, skips it.
        assert_eq!(ba3.score(&cpu_and_memory, &node(3500, 40000, 8)), 63);
        assert_eq!(ba3.score(&cpu_and_memory, &node(3500, 40000, 0)), 63);
    }

    #[test]
    fn over_capacity_scores_zero_for_least_and_clamps_for_most() {
        let least = fit(FitStrategy::LeastAllocated, weights(&[("cpu", 1)]));
        let most = fit(FitStrategy::MostAllocated, weights(&[("cpu", 1)]));
        assert_eq!(least.score(&task(5000, 0, 0), &node(4000, 1, 0)), 0);
        assert_eq!(most.score(&task(5000, 0, 0), &node(4000, 1, 0)), 100);
        // Huge memory does not overflow: (capacity − requested) × 100 in i128.
        let least = fit(FitStrategy::LeastAllocated, weights(&[("memory", 1)]));
        // (2^63 − 1 − 2^62) × 100 / (2^63 − 1) = 49.99…, truncated.
        assert_eq!(least.score(&task(0, 1 << 62, 0), &node(1, u64::MAX >> 1, 0)), 49);
    }
}
