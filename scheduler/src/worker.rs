//! One scheduler replica's loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_core::config::SchedulerConfig;
use berth_core::{ClusterSnapshot, SchedulingSpec};
use berth_policies::Profile;
use berth_queue::{Queue, QueueError, ReserveOutcome};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::decide::{Decision, decide};

#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error("invalid scheduler profile")]
    Profile(#[from] berth_policies::ProfileError),
}

/// Counters of one replica, shared with whoever wants to watch (tests, metrics).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub cycles: AtomicU64,
    pub bound: AtomicU64,
    /// Reservations refused because another replica took the room first.
    pub conflicts: AtomicU64,
    pub unschedulable: AtomicU64,
    pub lease_lost: AtomicU64,
}

/// Delay before retrying after Redis failed, so an outage does not become a hot loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

struct Replica {
    queue: Queue,
    config: SchedulerConfig,
    profile: Profile,
    owner: String,
    snapshot: ClusterSnapshot,
    stats: Arc<SchedulerStats>,
}

/// Runs one replica until `shutdown` resolves. `owner` names this replica in leases; it must
/// be unique among live replicas.
pub async fn run(
    config: SchedulerConfig,
    queue: Queue,
    owner: String,
    stats: Arc<SchedulerStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let profile = Profile::build(&config.profile)?;
    info!(%owner, ?profile, "scheduler started");
    let mut replica = Replica { queue, config, profile, owner, snapshot: ClusterSnapshot::default(), stats };
    tokio::pin!(shutdown);
    loop {
        let idle = tokio::select! {
            _ = &mut shutdown => break,
            r = replica.cycle() => match r {
                Ok(n) => n == 0,
                Err(e) => {
                    warn!(error = %e, source = ?std::error::Error::source(&e), "scheduling cycle failed");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    false
                }
            },
        };
        if idle {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(replica.config.idle_wait) => {}
            }
        }
    }
    let st = &replica.stats;
    info!(
        owner = %replica.owner,
        cycles = st.cycles.load(Ordering::Relaxed),
        bound = st.bound.load(Ordering::Relaxed),
        conflicts = st.conflicts.load(Ordering::Relaxed),
        unschedulable = st.unschedulable.load(Ordering::Relaxed),
        lease_lost = st.lease_lost.load(Ordering::Relaxed),
        "scheduler stopped"
    );
    Ok(())
}

impl Replica {
    /// One cycle; returns how many tasks it claimed.
    async fn cycle(&mut self) -> Result<usize, QueueError> {
        let claimed = self
            .queue
            .claim_ordered(&self.owner, self.config.batch_size, self.config.lease_ttl, self.profile.claim_order())
            .await?;
        self.stats.cycles.fetch_add(1, Ordering::Relaxed);
        if claimed.is_empty() {
            return Ok(0);
        }
        let specs: Vec<SchedulingSpec> = claimed.into_iter().map(|c| c.spec).collect();
        if let Err(e) = self.refresh().await {
            self.hand_back(&specs).await;
            return Err(e);
        }
        let decisions = decide(&self.snapshot, &specs, &self.profile);
        for (i, decision) in decisions.iter().enumerate() {
            let spec = specs.iter().find(|s| s.task_id == decision.task_id()).expect("decision for a claimed task");
            if let Err(e) = self.apply(spec, decision.clone()).await {
                let rest: Vec<SchedulingSpec> = decisions[i..]
                    .iter()
                    .filter_map(|d| specs.iter().find(|s| s.task_id == d.task_id()).cloned())
                    .collect();
                self.hand_back(&rest).await;
                return Err(e);
            }
        }
        Ok(specs.len())
    }

    /// After a failed step, gives the batch's unhandled claims back to ready instead of leaving
    /// them leased until `lease_ttl`. Best effort: Redis may be what failed, and then the leases
    /// expire as usual.
    async fn hand_back(&self, specs: &[SchedulingSpec]) {
        for s in specs {
            if self.queue.unlease(s.task_id, &self.owner, Duration::ZERO, "").await.is_err() {
                return;
            }
        }
    }

    async fn refresh(&mut self) -> Result<(), QueueError> {
        let version = self.queue.nodes_version().await?;
        if version != self.snapshot.version || self.snapshot.nodes.is_empty() {
            self.snapshot = self.queue.snapshot().await?;
        }
        Ok(())
    }

    async fn apply(&mut self, spec: &SchedulingSpec, mut decision: Decision) -> Result<(), QueueError> {
        for _ in 0..=self.config.max_conflict_retries {
            let node = match &decision {
                Decision::Unschedulable { reason, .. } => {
                    self.stats.unschedulable.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("berth_scheduler_unschedulable_total").increment(1);
                    debug!(task = %spec.task_id, %reason, "unschedulable");
                    self.queue.unlease(spec.task_id, &self.owner, self.config.unschedulable_backoff, reason).await?;
                    return Ok(());
                }
                Decision::Place { node, .. } => node.clone(),
            };
            match self.queue.reserve(spec, &self.owner, &node).await? {
                ReserveOutcome::Bound => {
                    self.stats.bound.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("berth_scheduler_bound_total").increment(1);
                    if let Some(n) = self.snapshot.node_mut(&node) {
                        n.requested = n.requested.saturating_add(&spec.reservation());
                    }
                    debug!(task = %spec.task_id, %node, "bound");
                    return Ok(());
                }
                ReserveOutcome::LeaseLost => {
                    self.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("berth_scheduler_lease_lost_total").increment(1);
                    return Ok(());
                }
                ReserveOutcome::NoRoom { allocatable, reserved } => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("berth_scheduler_conflicts_total").increment(1);
                    if let Some(n) = self.snapshot.node_mut(&node) {
                        n.allocatable = allocatable;
                        n.requested = reserved;
                    }
                }
                ReserveOutcome::NodeUnavailable => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("berth_scheduler_conflicts_total").increment(1);
                    if let Some(n) = self.snapshot.node_mut(&node) {
                        n.schedulable = false;
                    }
                }
            }
            // Re-score against what we now know of the node that was taken.
            decision = decide(&self.snapshot, std::slice::from_ref(spec), &self.profile).remove(0);
        }
        // Lost every race this cycle: back to ready, to be tried with a fresh snapshot.
        self.queue.unlease(spec.task_id, &self.owner, Duration::ZERO, "").await?;
        Ok(())
    }
}
