//! A profile: the configured filters, weighted scorers and queue orders.

use std::cmp::Ordering;

use berth_core::config::{CandidateOrder, ClaimOrder, FilterConfig, OrderConfig, ProfileConfig, ScorerConfig};
use berth_core::{NodeView, SchedulingSpec};
use thiserror::Error;

use crate::filter::{NodeFilter, NodeSchedulable, NodeSelector, ResourcesFit, Taints, Unfit};
use crate::order::{self, Fifo, Priority, QueueOrder};
use crate::score::{BalancedAllocation, MAX_NODE_SCORE, NodeScorer, ResourceFit};

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("invalid profile: {0}")]
    Invalid(String),
}

/// One scorer's result on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreEntry {
    pub scorer: &'static str,
    pub score: u64,
}

pub struct Profile {
    filters: Vec<Box<dyn NodeFilter>>,
    scorers: Vec<(Box<dyn NodeScorer>, u64)>,
    orders: Vec<Box<dyn QueueOrder>>,
    claim_order: ClaimOrder,
    candidates: Option<(CandidateOrder, usize)>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("filters", &self.filters.iter().map(|x| x.name()).collect::<Vec<_>>())
            .field("scorers", &self.scorers.iter().map(|(s, w)| (s.name(), *w)).collect::<Vec<_>>())
            .field("orders", &self.orders.iter().map(|o| o.name()).collect::<Vec<_>>())
            .field("candidates", &self.candidates)
            .finish()
    }
}

impl Profile {
    /// The registry: one exhaustive `match` per policy kind.
    pub fn build(config: &ProfileConfig) -> Result<Profile, ProfileError> {
        if let Some(e) = config.validate().into_iter().next() {
            return Err(ProfileError::Invalid(format!("{}: {}", e.path, e.message)));
        }
        let filters = config
            .filters
            .iter()
            .map(|f| -> Box<dyn NodeFilter> {
                match f {
                    FilterConfig::NodeSchedulable => Box::new(NodeSchedulable),
                    FilterConfig::ResourcesFit => Box::new(ResourcesFit),
                    FilterConfig::NodeSelector => Box::new(NodeSelector),
                    FilterConfig::Taints => Box::new(Taints),
                }
            })
            .collect();
        let scorers = config
            .scorers
            .iter()
            .map(|s| -> (Box<dyn NodeScorer>, u64) {
                match s {
                    ScorerConfig::ResourceFit { weight, strategy, resources, shape } => {
                        (Box::new(ResourceFit::new(*strategy, resources, shape)), u64::from(*weight))
                    }
                    ScorerConfig::BalancedAllocation { weight, resources } => {
                        (Box::new(BalancedAllocation::new(resources)), u64::from(*weight))
                    }
                }
            })
            .collect();
        let orders = config
            .order
            .iter()
            .filter_map(|o| -> Option<Box<dyn QueueOrder>> {
                match o {
                    OrderConfig::Priority => Some(Box::new(Priority)),
                    OrderConfig::Fifo => Some(Box::new(Fifo)),
                    // Fair share needs every tenant's usage: the claim script orders by it,
                    // atomically in Redis, and the batch keeps that order (see
                    // `keeps_claim_order`).
                    OrderConfig::Drf => None,
                }
            })
            .collect();
        let candidates = match config.candidate_limit {
            0 => None,
            n => config.candidate_order().map(|o| (o, n as usize)),
        };
        Ok(Profile { filters, scorers, orders, claim_order: config.claim_order(), candidates })
    }

    /// The candidate search (direction, limit) when the profile bounds its decisions with a
    /// `candidate_limit`; None when every node is scored.
    pub fn candidates(&self) -> Option<(CandidateOrder, usize)> {
        self.candidates
    }

    /// How the claim script orders work across tenants.
    pub fn claim_order(&self) -> ClaimOrder {
        self.claim_order
    }

    /// Whether a claimed batch is placed in the order it was claimed (fair share decided it)
    /// rather than re-sorted by [`Profile::compare`].
    pub fn keeps_claim_order(&self) -> bool {
        self.claim_order != ClaimOrder::Priority
    }

    /// The first filter that rejects `node`, if any.
    pub fn filter(&self, task: &SchedulingSpec, node: &NodeView) -> Result<(), Unfit> {
        self.filters.iter().try_for_each(|f| f.check(task, node))
    }

    /// Every filter that rejects `node`, in profile order (for explanations; the hot path
    /// stops at the first).
    pub fn unfit_all(&self, task: &SchedulingSpec, node: &NodeView) -> Vec<Unfit> {
        self.filters.iter().filter_map(|f| f.check(task, node).err()).collect()
    }

    /// The weighted total alone, without allocating: the hot path of ranking nodes.
    pub fn total(&self, task: &SchedulingSpec, node: &NodeView) -> u64 {
        self.scorers.iter().map(|(s, w)| s.score(task, node).min(MAX_NODE_SCORE) * w).sum()
    }

    /// Each scorer's score and the weighted total. A scorer out of range is clamped (and is a
    /// bug, caught by debug assertions), as kube-scheduler's framework rejects such scores.
    pub fn score(&self, task: &SchedulingSpec, node: &NodeView) -> (u64, Vec<ScoreEntry>) {
        let mut total = 0;
        let mut entries = Vec::with_capacity(self.scorers.len());
        for (scorer, weight) in &self.scorers {
            let raw = scorer.score(task, node);
            debug_assert!(raw <= MAX_NODE_SCORE, "{} returned {raw}", scorer.name());
            let score = raw.min(MAX_NODE_SCORE);
            total += score * weight;
            entries.push(ScoreEntry { scorer: scorer.name(), score });
        }
        (total, entries)
    }

    /// Compares two candidates with the configured chain, then the fallback.
    pub fn compare(&self, a: &SchedulingSpec, b: &SchedulingSpec) -> Ordering {
        self.orders.iter().map(|o| o.compare(a, b)).find(|o| o.is_ne()).unwrap_or_else(|| order::fallback(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::Resources;
    use berth_core::config::Config;

    fn spec(priority: u8, seq: u64) -> SchedulingSpec {
        SchedulingSpec {
            task_id: uuid::Uuid::from_u128(seq as u128),
            tenant: "t".into(),
            requests: Resources::new(100, 1 << 20, 0),
            priority,
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq,
        }
    }

    #[test]
    fn the_default_profile_orders_by_priority_then_submission() {
        let p = Profile::build(&Config::default().scheduler.profile).unwrap();
        let mut v = [spec(0, 1), spec(50, 3), spec(50, 2), spec(100, 9)];
        v.sort_by(|a, b| p.compare(a, b));
        assert_eq!(v.iter().map(|s| (s.priority, s.seq)).collect::<Vec<_>>(), vec![(100, 9), (50, 2), (50, 3), (0, 1)]);
    }

    #[test]
    fn invalid_profiles_are_refused() {
        let mut c = Config::default().scheduler.profile;
        c.scorers = vec![ScorerConfig::ResourceFit {
            weight: 1,
            strategy: berth_core::config::FitStrategy::LeastAllocated,
            resources: [("disk".to_string(), 1)].into(),
            shape: vec![],
        }];
        assert!(Profile::build(&c).is_err());
    }

    #[test]
    fn weighted_total_is_the_sum_of_weighted_scores() {
        let p = Profile::build(&Config::default().scheduler.profile).unwrap();
        let node = NodeView {
            name: "n".into(),
            allocatable: Resources::new(4000, 4 << 30, 0),
            requested: Resources::new(1900, 0, 0),
            labels: Default::default(),
            taints: vec![],
            schedulable: true,
        };
        let (total, entries) = p.score(&spec(0, 0), &node);
        assert_eq!(entries.len(), 1);
        assert_eq!(total, entries[0].score);
        assert!(total <= 100);
    }
}
