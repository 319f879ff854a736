//! The candidate index: nodes ordered by free CPU, so that a decision under a profile with a
//! `candidate_limit` scores the few best-placed feasible nodes instead of every node.
//!
//! kube-scheduler bounds its work with `percentageOfNodesToScore`: it stops filtering once
//! enough feasible nodes are found, starting from a rotating offset, so the nodes it scores
//! are an arbitrary slice of the cluster. berth's candidates are instead the nodes the
//! profile's own direction favours: for a packing profile, those with the least free CPU
//! that still hold the task (best fit); for a spreading one, those with the most. Every
//! candidate is then filtered and scored exactly, so the index only decides which nodes are
//! looked at, never how they score.

use std::collections::BTreeSet;

use berth_core::config::CandidateOrder;
use berth_core::{ClusterSnapshot, NodeView};

/// The index over one snapshot's nodes, by position in `snapshot.nodes`.
#[derive(Debug, Clone)]
pub struct CandidateIndex {
    order: CandidateOrder,
    limit: usize,
    /// (free CPU millis, position).
    by_free: BTreeSet<(u64, u32)>,
    /// The key each position is indexed under, to find its entry again.
    keys: Vec<u64>,
}

fn free_cpu(n: &NodeView) -> u64 {
    n.allocatable.cpu_millis.saturating_sub(n.requested.cpu_millis)
}

impl CandidateIndex {
    /// An index returning up to `limit` feasible candidates in `order`.
    pub fn new(order: CandidateOrder, limit: usize, snapshot: &ClusterSnapshot) -> Self {
        let mut index = CandidateIndex { order, limit: limit.max(1), by_free: BTreeSet::new(), keys: Vec::new() };
        index.rebuild(snapshot);
        index
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn rebuild(&mut self, snapshot: &ClusterSnapshot) {
        self.keys = snapshot.nodes.iter().map(free_cpu).collect();
        self.by_free = self.keys.iter().enumerate().map(|(i, k)| (*k, i as u32)).collect();
    }

    /// Brings the index in line with `snapshot` after it changed (a refresh, a binding): one
    /// pass over the nodes, re-indexing only those whose free CPU moved; rebuilt when nodes
    /// came or went.
    pub fn sync(&mut self, snapshot: &ClusterSnapshot) {
        if snapshot.nodes.len() != self.keys.len() {
            self.rebuild(snapshot);
            return;
        }
        for (i, n) in snapshot.nodes.iter().enumerate() {
            let key = free_cpu(n);
            if key != self.keys[i] {
                self.move_to(i, key);
            }
        }
    }

    /// Re-indexes position `i` after its node changed.
    pub fn update(&mut self, i: usize, node: &NodeView) {
        let key = free_cpu(node);
        if self.keys.get(i).is_some_and(|k| *k != key) {
            self.move_to(i, key);
        }
    }

    fn move_to(&mut self, i: usize, key: u64) {
        self.by_free.remove(&(self.keys[i], i as u32));
        self.by_free.insert((key, i as u32));
        self.keys[i] = key;
    }

    /// Positions with at least `cpu` free, in the index's direction.
    pub fn candidates(&self, cpu: u64) -> Box<dyn Iterator<Item = usize> + '_> {
        let range = self.by_free.range((cpu, 0)..);
        match self.order {
            CandidateOrder::Tightest => Box::new(range.map(|e| e.1 as usize)),
            CandidateOrder::Emptiest => Box::new(range.rev().map(|e| e.1 as usize)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::Resources;

    fn snap(free: &[u64]) -> ClusterSnapshot {
        let nodes = free
            .iter()
            .enumerate()
            .map(|(i, f)| NodeView {
                name: format!("n{i}"),
                allocatable: Resources::new(10_000, 1 << 30, 0),
                requested: Resources::new(10_000 - f, 0, 0),
                labels: Default::default(),
                taints: vec![],
                schedulable: true,
            })
            .collect();
        ClusterSnapshot { version: 1, nodes }
    }

    #[test]
    fn candidates_come_tightest_or_emptiest_first_and_only_with_room() {
        let s = snap(&[5000, 1000, 8000, 3000]);
        let tight = CandidateIndex::new(CandidateOrder::Tightest, 8, &s);
        assert_eq!(tight.candidates(2000).collect::<Vec<_>>(), vec![3, 0, 2]);
        let empty = CandidateIndex::new(CandidateOrder::Emptiest, 8, &s);
        assert_eq!(empty.candidates(2000).collect::<Vec<_>>(), vec![2, 0, 3]);
        assert_eq!(empty.candidates(9000).count(), 0);
    }

    #[test]
    fn sync_and_update_follow_the_snapshot() {
        let mut s = snap(&[5000, 1000, 8000]);
        let mut index = CandidateIndex::new(CandidateOrder::Tightest, 8, &s);
        s.nodes[2].requested.cpu_millis = 9500;
        index.update(2, &s.nodes[2]);
        assert_eq!(index.candidates(0).collect::<Vec<_>>(), vec![2, 1, 0]);
        s.nodes[0].requested.cpu_millis = 0;
        s.nodes[1].requested.cpu_millis = 10_000;
        index.sync(&s);
        assert_eq!(index.candidates(0).collect::<Vec<_>>(), vec![1, 2, 0]);
        let fresh = CandidateIndex::new(CandidateOrder::Tightest, 8, &s);
        assert_eq!(index.by_free, fresh.by_free);
        // A node added: rebuilt.
        s.nodes.push(snap(&[4000]).nodes.remove(0));
        index.sync(&s);
        assert_eq!(index.candidates(0).count(), 4);
    }
}
