//! One scheduler replica's loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_core::config::SchedulerConfig;
use berth_core::{ClusterSnapshot, NodeView, SchedulingSpec};
use berth_policies::Profile;
use berth_queue::{PolicyReport, Queue, QueueError, ReserveOutcome};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::candidates::CandidateIndex;
use crate::decide::{Decision, decide_with};

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
    /// The capacity epoch read with the snapshot: what parked tasks were judged at.
    epoch: u64,
    /// The free-CPU index over `snapshot`, for a profile with a `candidate_limit`.
    index: Option<CandidateIndex>,
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
    let (_keep, rx) = watch::channel(config);
    run_reloading(rx, queue, owner, stats, shutdown).await
}

/// [`run`], taking each new scheduler section sent on `configs` between two cycles: the
/// profile is rebuilt first, and a section that does not build is refused (logged) while the
/// last good one keeps running. The replica reports the version it runs to Redis (read by
/// `GET /v1/admin/policy`) and as the `berth_scheduler_policy_info` metric.
pub async fn run_reloading(
    mut configs: watch::Receiver<SchedulerConfig>,
    queue: Queue,
    owner: String,
    stats: Arc<SchedulerStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let config = configs.borrow_and_update().clone();
    let profile = Profile::build(&config.profile)?;
    info!(%owner, version = %config.version(), ?profile, "scheduler started");
    let mut replica =
        Replica { queue, config, profile, owner, snapshot: ClusterSnapshot::default(), epoch: 0, index: None, stats };
    let mut loaded_at = chrono::Utc::now().timestamp_millis();
    let mut reported: Option<Instant> = None;
    // Read the cluster (and build the index) before the first task arrives, not after: on a
    // large cluster that read is what the first tasks would otherwise wait for.
    if let Err(e) = replica.refresh().await {
        warn!(error = %e, "could not read the cluster at start; reading it at the first cycle");
    }
    tokio::pin!(shutdown);
    loop {
        if configs.has_changed().unwrap_or(false) {
            let next = configs.borrow_and_update().clone();
            match Profile::build(&next.profile) {
                Ok(profile) => {
                    let (old, new) = (replica.config.version(), next.version());
                    metrics::gauge!("berth_scheduler_policy_info", "replica" => replica.owner.clone(), "version" => old.clone()).set(0.0);
                    replica.profile = profile;
                    replica.config = next;
                    // The candidate search may have changed direction or limit.
                    replica.index = None;
                    loaded_at = chrono::Utc::now().timestamp_millis();
                    reported = None;
                    info!(owner = %replica.owner, from = %old, to = %new, profile = ?replica.profile, "scheduling policy reloaded");
                }
                Err(e) => {
                    warn!(owner = %replica.owner, error = %e, "new scheduling policy refused; keeping the running one")
                }
            }
        }
        if reported.is_none_or(|t| t.elapsed() >= berth_queue::POLICY_REPORT_EVERY) {
            replica.report(loaded_at).await;
            reported = Some(Instant::now());
        }
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
    let _ = replica.queue.withdraw_policy(&replica.owner).await;
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
    /// Tells Redis and the metrics which policy this replica runs. Best effort: a Redis
    /// hiccup must not stop scheduling.
    async fn report(&self, loaded_at_ms: i64) {
        let version = self.config.version();
        metrics::gauge!("berth_scheduler_policy_info", "replica" => self.owner.clone(), "version" => version.clone())
            .set(1.0);
        let report = PolicyReport {
            replica: self.owner.clone(),
            version,
            loaded_at_ms,
            seen_at_ms: chrono::Utc::now().timestamp_millis(),
            config: serde_json::to_value(&self.config).unwrap_or_default(),
        };
        if let Err(e) = self.queue.report_policy(&report).await {
            warn!(owner = %self.owner, error = %e, "could not report the scheduling policy");
        }
    }

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
        let decisions = decide_with(&self.snapshot, self.index.as_mut(), &specs, &self.profile);
        let spec_of = |id: uuid::Uuid| specs.iter().find(|s| s.task_id == id).expect("decision for a claimed task");
        // Every placement of the batch in one pipelined round trip (each reservation still
        // atomic on its own); what lost a race is re-decided one by one below.
        let places: Vec<(&SchedulingSpec, &str)> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Place { task_id, node, .. } => Some((spec_of(*task_id), node.as_str())),
                Decision::Unschedulable { .. } => None,
            })
            .collect();
        let outcomes = match self.queue.reserve_many(&self.owner, &places).await {
            Ok(o) => o,
            Err(e) => {
                self.hand_back(&specs).await;
                return Err(e);
            }
        };
        let mut again: Vec<&SchedulingSpec> = Vec::new();
        for ((spec, node), outcome) in places.iter().zip(outcomes) {
            if !self.record(spec, node, outcome) {
                again.push(spec);
            }
        }
        let parks = decisions.iter().filter(|d| matches!(d, Decision::Unschedulable { .. })).cloned();
        let rest: Vec<(&SchedulingSpec, Option<Decision>)> =
            parks.map(|d| (spec_of(d.task_id()), Some(d))).chain(again.into_iter().map(|s| (s, None))).collect();
        for (i, (spec, decision)) in rest.iter().enumerate() {
            // A conflict's first retry: re-scored against what the refused reservation told us.
            let decision = decision.clone().unwrap_or_else(|| {
                decide_with(&self.snapshot, self.index.as_mut(), std::slice::from_ref(*spec), &self.profile).remove(0)
            });
            if let Err(e) = self.apply(spec, decision).await {
                let unhandled: Vec<SchedulingSpec> = rest[i..].iter().map(|(s, _)| (*s).clone()).collect();
                self.hand_back(&unhandled).await;
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

    /// Changes what this replica knows of node `name`, keeping the index in step.
    fn update_node(&mut self, name: &str, f: impl FnOnce(&mut NodeView)) {
        if let Some(i) = self.snapshot.position(name) {
            f(&mut self.snapshot.nodes[i]);
            if let Some(index) = &mut self.index {
                index.update(i, &self.snapshot.nodes[i]);
            }
        }
    }

    async fn refresh(&mut self) -> Result<(), QueueError> {
        // Only the nodes that changed since the last look: a full read of a large cluster on
        // every reservation would cost more than the decisions. The epoch comes with it, read
        // first: capacity freed after that read but seen by the snapshot only makes a parked
        // task look again sooner, never later.
        self.epoch = self.queue.refresh_snapshot(&mut self.snapshot).await?;
        match (&mut self.index, self.profile.candidates()) {
            (Some(index), Some(_)) => index.sync(&self.snapshot),
            (slot, Some((order, limit))) => *slot = Some(CandidateIndex::new(order, limit, &self.snapshot)),
            (slot, None) => *slot = None,
        }
        Ok(())
    }

    /// Counts a reservation's outcome and updates what this replica knows of the node.
    /// True when the task is done with (bound, or no longer ours); false when it lost a race
    /// and should be placed again.
    fn record(&mut self, spec: &SchedulingSpec, node: &str, outcome: ReserveOutcome) -> bool {
        match outcome {
            ReserveOutcome::Bound => {
                self.stats.bound.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("berth_scheduler_bound_total").increment(1);
                self.update_node(node, |n| n.requested = n.requested.saturating_add(&spec.reservation()));
                debug!(task = %spec.task_id, %node, "bound");
                true
            }
            ReserveOutcome::LeaseLost => {
                self.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("berth_scheduler_lease_lost_total").increment(1);
                true
            }
            ReserveOutcome::NoRoom { allocatable, reserved } => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("berth_scheduler_conflicts_total").increment(1);
                self.update_node(node, |n| {
                    n.allocatable = allocatable;
                    n.requested = reserved;
                });
                false
            }
            ReserveOutcome::NodeUnavailable => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("berth_scheduler_conflicts_total").increment(1);
                self.update_node(node, |n| n.schedulable = false);
                false
            }
        }
    }

    /// Parks an unschedulable task, or retries a placement that lost its first race (in the
    /// batch's reservation), re-deciding after each, up to `max_conflict_retries` times; then
    /// hands the task back to ready.
    async fn apply(&mut self, spec: &SchedulingSpec, mut decision: Decision) -> Result<(), QueueError> {
        let mut retries = self.config.max_conflict_retries;
        loop {
            let node = match &decision {
                Decision::Unschedulable { reason, .. } => {
                    self.stats.unschedulable.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("berth_scheduler_unschedulable_total").increment(1);
                    debug!(task = %spec.task_id, %reason, "unschedulable");
                    let max = self.config.unschedulable_max_wait;
                    self.queue.park(spec.task_id, &self.owner, reason, max, self.epoch).await?;
                    return Ok(());
                }
                Decision::Place { .. } if retries == 0 => break,
                Decision::Place { node, .. } => node.clone(),
            };
            retries -= 1;
            let outcome = self.queue.reserve(spec, &self.owner, &node).await?;
            if self.record(spec, &node, outcome) {
                return Ok(());
            }
            // Re-score against what we now know of the node that was taken.
            decision =
                decide_with(&self.snapshot, self.index.as_mut(), std::slice::from_ref(spec), &self.profile).remove(0);
        }
        // Lost every race this cycle: back to ready, to be tried with a fresh snapshot.
        self.queue.unlease(spec.task_id, &self.owner, Duration::ZERO, "").await?;
        Ok(())
    }
}
