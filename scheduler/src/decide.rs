//! The decision core: which node each candidate goes to, or why it goes nowhere.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use berth_core::resources::DEFAULT_CPU_MILLIS;
use berth_core::{ClusterSnapshot, NodeView, SchedulingSpec};
use berth_policies::Profile;
use berth_policies::filter::Unfit;
use berth_policies::profile::ScoreEntry;
use uuid::Uuid;

use crate::candidates::CandidateIndex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Place {
        task_id: Uuid,
        node: String,
        scores: Vec<ScoreEntry>,
        total: u64,
    },
    Unschedulable {
        task_id: Uuid,
        /// e.g. "0/12 nodes fit: 9 insufficient nvidia.com/gpu, 3 node selector mismatch".
        reason: String,
        /// Each filter reason with the number of nodes it rejected.
        counts: BTreeMap<String, usize>,
    },
}

impl Decision {
    pub fn task_id(&self) -> Uuid {
        match self {
            Decision::Place { task_id, .. } | Decision::Unschedulable { task_id, .. } => *task_id,
        }
    }
}

/// A stable hash of (task, node), so that among equally good nodes different tasks pick
/// different ones (fewer conflicts between replicas), yet every run picks the same.
fn tie_break(task: &Uuid, node: &str) -> u64 {
    // FNV-1a: tiny, fast, and stable across processes, unlike std's randomised hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.as_bytes().iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The summary line of an unschedulable task's reasons, most frequent first.
pub fn summarize(total_nodes: usize, counts: &BTreeMap<String, usize>) -> String {
    if total_nodes == 0 {
        return "0/0 nodes fit: the cluster has no nodes".into();
    }
    let mut v: Vec<(&String, &usize)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let parts: Vec<String> = v.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("0/{total_nodes} nodes fit: {}", parts.join(", "))
}

/// Places `candidates` on `snapshot` in the profile's queue order, scoring every node. Each
/// placement is assumed for the candidates after it, so one batch never over-commits a node
/// by itself. Decisions come back in queue order.
pub fn decide(snapshot: &ClusterSnapshot, candidates: &[SchedulingSpec], profile: &Profile) -> Vec<Decision> {
    decide_with(snapshot, None, candidates, profile)
}

/// [`decide`], looking only at the index's candidates when there is one (a profile with a
/// `candidate_limit`): the nodes with the task's CPU free, in the index's order, until `limit`
/// of them fit; those are scored. Nodes without the CPU cannot fit, so a task none of the
/// candidates fits fits nowhere; only then is every node visited, to count its reasons over
/// the whole cluster. The index follows the batch's assumed placements.
pub fn decide_with(
    snapshot: &ClusterSnapshot,
    mut index: Option<&mut CandidateIndex>,
    candidates: &[SchedulingSpec],
    profile: &Profile,
) -> Vec<Decision> {
    let mut order: Vec<&SchedulingSpec> = candidates.iter().collect();
    if !profile.keeps_claim_order() {
        order.sort_by(|a, b| profile.compare(a, b));
    }
    // Nodes this batch has placed on, with the placements assumed: a sparse overlay, so a
    // decision never copies the whole cluster.
    let mut assumed: HashMap<usize, NodeView> = HashMap::new();
    let mut out = Vec::with_capacity(order.len());
    for task in order {
        let mut search = Search { snapshot, assumed: &assumed, task, profile, best: None };
        if let Some(index) = index.as_deref() {
            let cpu = if task.requests.cpu_millis == 0 { DEFAULT_CPU_MILLIS } else { task.requests.cpu_millis };
            // Every node with the CPU for the task, in the index's order, until `limit` fit:
            // nodes without that CPU cannot fit, so finding none here means none fits at all.
            let (mut feasible, limit) = (0, index.limit());
            for i in index.candidates(cpu) {
                if search.consider(i).is_ok() {
                    feasible += 1;
                    if feasible == limit {
                        break;
                    }
                }
            }
        }
        if search.best.is_none() {
            // Every node: no index, or (with one) nothing fits and this pass only counts the
            // reasons, so the index's fast path allocates nothing.
            let mut counts: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
            for i in 0..snapshot.nodes.len() {
                if let Err(unfit) = search.consider(i) {
                    *counts.entry(unfit.reason).or_default() += 1;
                }
            }
            if search.best.is_none() {
                let counts: BTreeMap<String, usize> = counts.into_iter().map(|(k, v)| (k.into_owned(), v)).collect();
                out.push(Decision::Unschedulable {
                    task_id: task.task_id,
                    reason: summarize(snapshot.nodes.len(), &counts),
                    counts,
                });
                continue;
            }
        }
        let Some((total, i)) = search.best else { unreachable!("handled above") };
        let node = assumed.entry(i).or_insert_with(|| snapshot.nodes[i].clone());
        let (_, scores) = profile.score(task, node);
        node.requested = node.requested.saturating_add(&task.reservation());
        if let Some(index) = index.as_deref_mut() {
            index.update(i, node);
        }
        out.push(Decision::Place { task_id: task.task_id, node: node.name.clone(), scores, total });
    }
    out
}

/// One task's search for the best node: (total, position) so far; the tie-break is hashed
/// only when totals tie.
struct Search<'a> {
    snapshot: &'a ClusterSnapshot,
    assumed: &'a HashMap<usize, NodeView>,
    task: &'a SchedulingSpec,
    profile: &'a Profile,
    best: Option<(u64, usize)>,
}

impl Search<'_> {
    /// Filters and scores the node at position `i`, keeping it if it is the best so far.
    #[inline]
    fn consider(&mut self, i: usize) -> Result<(), Unfit> {
        let original = &self.snapshot.nodes[i];
        // Most nodes are untouched by the batch: skip hashing for them.
        let node = if self.assumed.is_empty() { original } else { self.assumed.get(&i).unwrap_or(original) };
        self.profile.filter(self.task, node)?;
        let total = self.profile.total(self.task, node);
        let better = match self.best {
            None => true,
            Some((t, _)) if total != t => total > t,
            Some((_, j)) if j == i => false,
            Some((_, j)) => {
                tie_break(&self.task.task_id, &node.name) > tie_break(&self.task.task_id, &self.snapshot.nodes[j].name)
            }
        };
        if better {
            self.best = Some((total, i));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::config::{CandidateOrder, Config};
    use berth_core::{NodeView, Resources};

    fn node(name: &str, cpu: u64, gpu: u64) -> NodeView {
        NodeView {
            name: name.into(),
            allocatable: Resources::new(cpu, 64 << 30, gpu),
            requested: Resources::ZERO,
            labels: Default::default(),
            taints: vec![],
            schedulable: true,
        }
    }

    fn task(n: u128, cpu: u64, gpu: u64, priority: u8) -> SchedulingSpec {
        SchedulingSpec {
            task_id: Uuid::from_u128(n),
            tenant: "t".into(),
            requests: Resources::new(cpu, 1 << 30, gpu),
            priority,
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: n as u64,
        }
    }

    fn profile() -> Profile {
        Profile::build(&Config::default().scheduler.profile).unwrap()
    }

    #[test]
    fn a_batch_never_overcommits_a_node_by_itself() {
        let snap = ClusterSnapshot { version: 1, nodes: vec![node("a", 4000, 0)] };
        let tasks: Vec<_> = (0..6).map(|i| task(i, 1000, 0, 0)).collect();
        let d = decide(&snap, &tasks, &profile());
        let placed = d.iter().filter(|d| matches!(d, Decision::Place { .. })).count();
        assert_eq!(placed, 4);
        let Decision::Unschedulable { reason, .. } = &d[5] else { panic!("{d:?}") };
        assert_eq!(reason, "0/1 nodes fit: 1 insufficient cpu");
    }

    #[test]
    fn most_allocated_packs_onto_the_fuller_node() {
        let mut busy = node("busy", 8000, 0);
        busy.requested = Resources::new(4000, 0, 0);
        let snap = ClusterSnapshot { version: 1, nodes: vec![node("empty", 8000, 0), busy] };
        let d = decide(&snap, &[task(1, 1000, 0, 0)], &profile());
        assert!(matches!(&d[0], Decision::Place { node, .. } if node == "busy"), "{d:?}");
    }

    #[test]
    fn higher_priority_is_placed_first_when_room_is_short() {
        let snap = ClusterSnapshot { version: 1, nodes: vec![node("a", 1000, 0)] };
        let d = decide(&snap, &[task(1, 1000, 0, 0), task(2, 1000, 0, 90)], &profile());
        assert_eq!(d[0].task_id(), Uuid::from_u128(2));
        assert!(matches!(d[0], Decision::Place { .. }));
        assert!(matches!(d[1], Decision::Unschedulable { .. }));
    }

    #[test]
    fn reasons_are_counted_per_filter() {
        let mut labelled = node("l", 16000, 0);
        labelled.labels.insert("zone".into(), "a".into());
        let snap = ClusterSnapshot { version: 1, nodes: vec![node("a", 16000, 2), node("b", 16000, 2), labelled] };
        let mut t = task(1, 1000, 2, 0);
        t.node_selector.insert("zone".into(), "a".into());
        let d = decide(&snap, &[t], &profile());
        let Decision::Unschedulable { reason, .. } = &d[0] else { panic!() };
        assert_eq!(reason, "0/3 nodes fit: 2 node selector mismatch, 1 insufficient nvidia.com/gpu");
    }

    #[test]
    fn decisions_are_deterministic_and_spread_ties() {
        let snap = ClusterSnapshot { version: 1, nodes: (0..8).map(|i| node(&format!("n{i}"), 8000, 0)).collect() };
        let tasks: Vec<_> = (0..8).map(|i| task(i, 100, 0, 0)).collect();
        let a = decide(&snap, &tasks[..1], &profile());
        let b = decide(&snap, &tasks[..1], &profile());
        assert_eq!(a, b);
        // Different tasks on an empty, uniform cluster do not all pick the same node.
        let firsts: std::collections::BTreeSet<String> = tasks
            .iter()
            .map(|t| match &decide(&snap, std::slice::from_ref(t), &profile())[0] {
                Decision::Place { node, .. } => node.clone(),
                d => panic!("{d:?}"),
            })
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    fn indexed(limit: u32) -> Profile {
        let mut c = Config::default().scheduler.profile;
        c.candidate_limit = limit;
        Profile::build(&c).unwrap()
    }

    /// A cluster of differently sized, part-used nodes, some with gpus.
    fn mixed(n: usize, seed: u64) -> ClusterSnapshot {
        let mut x = seed;
        let mut next = move |m: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        let nodes = (0..n)
            .map(|i| {
                let mut v = node(&format!("n{i:03}"), (next(8) + 1) * 2000, next(3));
                v.requested = Resources::new(next(v.allocatable.cpu_millis), next(32 << 30), 0);
                v
            })
            .collect();
        ClusterSnapshot { version: 1, nodes }
    }

    #[test]
    fn with_a_limit_at_least_the_cluster_the_index_decides_as_every_node_scored() {
        for seed in 0..20 {
            let snap = mixed(40, seed);
            let tasks: Vec<_> =
                (0..30).map(|i| task(i, 500 + (i as u64 * 397) % 4000, (i % 5 == 0) as u64, 0)).collect();
            let profile = indexed(1000);
            let mut index = CandidateIndex::new(CandidateOrder::Tightest, 1000, &snap);
            assert_eq!(
                decide_with(&snap, Some(&mut index), &tasks, &profile),
                decide(&snap, &tasks, &profile),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn a_small_limit_still_never_overcommits_and_refuses_only_what_fits_nowhere() {
        for seed in 0..20 {
            let snap = mixed(40, seed);
            let tasks: Vec<_> =
                (0..60).map(|i| task(i, 500 + (i as u64 * 397) % 6000, (i % 4 == 0) as u64, 0)).collect();
            let profile = indexed(2);
            let mut index = CandidateIndex::new(CandidateOrder::Tightest, 2, &snap);
            let mut state = snap.clone();
            for d in decide_with(&snap, Some(&mut index), &tasks, &profile) {
                let t = tasks.iter().find(|t| t.task_id == d.task_id()).unwrap();
                match d {
                    Decision::Place { node, .. } => {
                        let n = state.node_mut(&node).unwrap();
                        assert!(!t.reservation().shortfalls(&n.allocatable, &n.requested).any(), "seed {seed}: {node}");
                        n.requested = n.requested.saturating_add(&t.reservation());
                    }
                    Decision::Unschedulable { reason, .. } => {
                        // Refused only if no node had room at that point of the batch.
                        assert!(
                            state.nodes.iter().all(|n| t.reservation().shortfalls(&n.allocatable, &n.requested).any()),
                            "seed {seed}: {reason}"
                        );
                    }
                }
            }
            // The index ends in step with the assumed placements.
            let fresh = CandidateIndex::new(CandidateOrder::Tightest, 2, &state);
            assert_eq!(index.candidates(0).collect::<Vec<_>>(), fresh.candidates(0).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_index_packs_onto_the_tightest_fitting_node() {
        let mut busy = node("busy", 8000, 0);
        busy.requested = Resources::new(6500, 0, 0);
        let mut half = node("half", 8000, 0);
        half.requested = Resources::new(4000, 0, 0);
        let snap = ClusterSnapshot { version: 1, nodes: vec![busy, half, node("empty", 8000, 0)] };
        let mut index = CandidateIndex::new(CandidateOrder::Tightest, 1, &snap);
        // 1 cpu fits "busy" (1.5 free) first: the only candidate scored with limit 1.
        let d = decide_with(&snap, Some(&mut index), &[task(1, 1000, 0, 0)], &indexed(1));
        assert!(matches!(&d[0], Decision::Place { node, .. } if node == "busy"), "{d:?}");
        // 2 cpu skips it.
        let d = decide_with(&snap, Some(&mut index), &[task(2, 2000, 0, 0)], &indexed(1));
        assert!(matches!(&d[0], Decision::Place { node, .. } if node == "half"), "{d:?}");
    }

    #[test]
    fn an_empty_cluster_says_so() {
        let d = decide(&ClusterSnapshot::default(), &[task(1, 1, 0, 0)], &profile());
        let Decision::Unschedulable { reason, .. } = &d[0] else { panic!() };
        assert_eq!(reason, "0/0 nodes fit: the cluster has no nodes");
    }
}
