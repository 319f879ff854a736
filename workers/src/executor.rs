//! The executor: bindings in, Jobs out, outcomes recorded.
//!
//! Two loops share one [`Executor`]: the binding loop reads the Redis binding stream (and
//! takes over bindings a dead executor left unacknowledged), records the attempt and creates
//! its Job; the event loop turns Job events into task states. Every step is idempotent, so a
//! binding delivered twice creates one Job and one execution row.
//!
//! PostgreSQL is written before Redis: a crash or Redis error between the two leaves a task
//! whose Redis state is behind, never ahead. The step's repeat (the event is retried, the
//! binding redelivered) or the reconciler's next pass brings Redis up to date
//! ([`Executor::repair`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_core::config::ExecutorConfig;
use berth_core::{Resources, TaskStatus, Toleration};
use berth_queue::{Binding, Queue, QueueError, TaskEvent};
use chrono::{DateTime, Utc};
use rand::RngExt;
use sqlx::PgPool;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use uuid::Uuid;

use berth_core::failure::FailureClass;

use crate::cluster::{Cluster, ClusterError, JobEvent, JobPhase, JobRequest, JobVolume, NamespaceRequest};

#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error("queue operation failed")]
    Queue(#[from] QueueError),
    #[error("database operation failed")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("task {task} has malformed {field}: {message}")]
    MalformedTask { task: Uuid, field: &'static str, message: String },
}

/// Bindings read per call.
const READ_BATCH: usize = 64;
/// How long one blocking read waits for new bindings; bounds how fast shutdown is noticed.
const READ_BLOCK: Duration = Duration::from_secs(1);
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// How long an ensured namespace is taken as up to date: a tenant change whose notice was
/// lost reaches the cluster within this.
const NAMESPACE_RESYNC: Duration = Duration::from_secs(600);
/// How often live attempts are checked against the cluster's Jobs.
const ORPHAN_SWEEP: Duration = Duration::from_secs(30);
/// An attempt this recent is the watch's business: its Job may not be listed yet, or its
/// binding may still be redelivered to another executor (`claim_idle`, 60 s by default).
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(180);

pub struct Executor {
    pool: PgPool,
    queue: Queue,
    cluster: Arc<dyn Cluster>,
    config: ExecutorConfig,
    consumer: String,
    /// Tenant namespaces this process has ensured, and when: ensured again before a Job
    /// once [`NAMESPACE_RESYNC`] has passed, and at once on a tenant change.
    namespaces: std::sync::Mutex<std::collections::HashMap<Uuid, tokio::time::Instant>>,
}

/// The task fields an attempt needs.
#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    tenant_name: String,
    image: String,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env_vars: Option<serde_json::Value>,
    labels: Option<serde_json::Value>,
    resource_requests: serde_json::Value,
    resource_limits: serde_json::Value,
    node_selector: Option<serde_json::Value>,
    tolerations: Option<serde_json::Value>,
    status: String,
    current_retry_count: Option<i32>,
    name: String,
    priority: Option<i32>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    timeout_seconds: Option<i32>,
    /// The tenant volumes it mounts: `[{name, claim, mount_path, read_only}]`.
    mounts: serde_json::Value,
}

#[derive(serde::Deserialize)]
struct Mount {
    name: String,
    claim: String,
    mount_path: String,
    read_only: bool,
}

/// Decodes an optional JSON column of a task (labels, selectors, tolerations); absent or null
/// is the empty value.
pub(crate) fn stored<T: serde::de::DeserializeOwned + Default>(
    task: Uuid,
    field: &'static str,
    v: Option<serde_json::Value>,
) -> Result<T, ExecutorError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(v) => {
            serde_json::from_value(v).map_err(|e| ExecutorError::MalformedTask { task, field, message: e.to_string() })
        }
    }
}

impl TaskRow {
    fn job(self, binding: &Binding, config: &ExecutorConfig) -> Result<JobRequest, ExecutorError> {
        let id = self.id;
        let malformed = |field, message: String| ExecutorError::MalformedTask { task: id, field, message };
        let tolerations: Vec<Toleration> = stored(id, "tolerations", self.tolerations)?;
        Ok(JobRequest {
            name: JobRequest::job_name(id, binding.attempt),
            namespace: JobRequest::namespace_for(&self.tenant_name),
            task_id: id,
            tenant_id: self.tenant_id,
            user_id: self.user_id,
            attempt: binding.attempt,
            node: binding.node.clone(),
            image: self.image,
            command: self.command.unwrap_or_default(),
            args: self.args.unwrap_or_default(),
            env: stored(id, "env_vars", self.env_vars)?,
            labels: stored(id, "labels", self.labels)?,
            requests: Resources::from_requirements_json(&self.resource_requests)
                .map_err(|e| malformed("resource_requests", e))?,
            limits: Resources::from_requirements_json(&self.resource_limits)
                .map_err(|e| malformed("resource_limits", e))?,
            node_selector: stored(id, "node_selector", self.node_selector)?,
            tolerations,
            task_name: self.name,
            priority: self.priority.unwrap_or(0),
            created_at: self.created_at.unwrap_or_else(chrono::Utc::now),
            active_deadline_seconds: config.deadline_seconds(self.timeout_seconds),
            volumes: stored::<Vec<Mount>>(id, "volumes", Some(self.mounts))?
                .into_iter()
                .map(|m| JobVolume { name: m.name, claim: m.claim, mount_path: m.mount_path, read_only: m.read_only })
                .collect(),
        })
    }
}

/// Runs the executor until `shutdown` resolves.
pub async fn run(
    config: ExecutorConfig,
    pool: PgPool,
    queue: Queue,
    cluster: Arc<dyn Cluster>,
    consumer: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ExecutorError> {
    queue.ensure_binding_group().await?;
    let events = cluster.take_events()?;
    let executor = Arc::new(Executor::new(config, pool, queue, cluster, consumer));
    let (stop_tx, stop_rx) = watch::channel(false);
    let bindings = tokio::spawn(executor.clone().binding_loop(stop_rx.clone()));
    let outcomes = tokio::spawn(executor.clone().event_loop(events, stop_rx.clone()));
    let cancels = tokio::spawn(executor.clone().cancel_loop(stop_rx.clone()));
    let tenants = tokio::spawn(executor.clone().tenant_loop(stop_rx.clone()));
    let orphans = tokio::spawn(executor.clone().orphan_loop(stop_rx));
    info!(consumer = %executor.consumer, "executor started");
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = bindings.await;
    let _ = outcomes.await;
    let _ = cancels.await;
    let _ = tenants.await;
    let _ = orphans.await;
    info!(consumer = %executor.consumer, "executor stopped");
    Ok(())
}

impl Executor {
    /// An executor for driving by hand (tests, tools); [`run`] builds its own.
    pub fn new(
        config: ExecutorConfig,
        pool: PgPool,
        queue: Queue,
        cluster: Arc<dyn Cluster>,
        consumer: String,
    ) -> Executor {
        Executor { pool, queue, cluster, config, consumer, namespaces: Default::default() }
    }

    /// A connection of its own for a blocking reader, retried until it opens or `stop`.
    async fn dedicated_connection(&self, stop: &mut watch::Receiver<bool>) -> Option<Queue> {
        loop {
            match self.queue.dedicated(READ_BLOCK).await {
                Ok(q) => return Some(q),
                Err(e) => {
                    warn!(error = %e, "executor cannot open a Redis connection for reading");
                    tokio::select! {
                        _ = stop.changed() => return None,
                        _ = tokio::time::sleep(ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }

    async fn binding_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(reader) = self.dedicated_connection(&mut stop).await else { return };
        let mut next_reclaim = tokio::time::Instant::now();
        // XAUTOCLAIM scans the pending list in pages; keep its cursor so a long list is
        // walked to the end rather than its first page re-read forever.
        let mut cursor = "0-0".to_string();
        while !*stop.borrow() {
            let batch = if tokio::time::Instant::now() >= next_reclaim {
                next_reclaim = tokio::time::Instant::now() + self.config.claim_idle / 2;
                reader.reclaim_bindings(&self.consumer, self.config.claim_idle, READ_BATCH, &cursor).await.map(
                    |(b, next)| {
                        cursor = next;
                        b
                    },
                )
            } else {
                // Not raced against `stop`: a read dropped midway could lose delivered entries
                // to the pending list until another executor reclaims them.
                reader.read_bindings(&self.consumer, READ_BATCH, READ_BLOCK).await
            };
            match batch {
                Ok(bindings) => {
                    for b in bindings {
                        match self.handle_binding(&b).await {
                            Ok(()) => {
                                if let Err(e) = self.queue.ack_binding(&b.entry_id).await {
                                    warn!(error = %e, task = %b.task_id, "acknowledging binding failed");
                                }
                            }
                            // Left unacknowledged: reclaimed and retried after claim_idle.
                            Err(e) => {
                                warn!(error = %e, source = ?std::error::Error::source(&e), task = %b.task_id, "handling binding failed")
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading bindings failed");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }

    async fn event_loop(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                e = events.recv() => match e { Some(e) => e, None => return },
            };
            // An outcome is retried until recorded: dropping it would strand the task.
            let mut delay = ERROR_BACKOFF;
            while let Err(e) = self.handle_event(&event).await {
                warn!(error = %e, source = ?std::error::Error::source(&e), task = %event.task_id, "recording job event failed; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }

    /// Follows the task event stream for cancellations (the API cannot reach the cluster) and
    /// deletes the cancelled attempt's Job. Every executor sees every cancellation; deleting a
    /// Job that is not there is a no-op, so it does not matter which one owns it.
    async fn cancel_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(reader) = self.dedicated_connection(&mut stop).await else { return };
        let mut last = match reader.last_event_id().await {
            Ok(id) => id,
            Err(_) => "$".into(),
        };
        while !*stop.borrow() {
            match reader.read_events(&last, 256, READ_BLOCK).await {
                Ok(batch) => {
                    for (id, _, body) in batch {
                        last = id;
                        let Ok(ev) = serde_json::from_str::<TaskEvent>(&body) else { continue };
                        if ev.status == TaskStatus::Cancelled
                            && let Err(e) = self.delete_cancelled(&ev).await
                        {
                            warn!(task = %ev.task_id, error = %e, "deleting a cancelled task's Job failed");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading task events failed");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }

    /// Follows tenant changes (created, quota changed) and ensures the tenant's namespace at
    /// once, so that its ResourceQuota follows the tenant's quota.
    async fn tenant_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(reader) = self.dedicated_connection(&mut stop).await else { return };
        let mut last = "$".to_string();
        while !*stop.borrow() {
            match reader.read_tenant_changes(&last, READ_BLOCK).await {
                Ok(batch) => {
                    for (id, tenant) in batch {
                        last = id;
                        self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
                        if let Err(e) = self.ensure_namespace(tenant).await {
                            warn!(%tenant, error = %e, "ensuring a changed tenant's namespace failed; its next task retries");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading tenant changes failed");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }

    /// Finds live attempts whose Job is gone though no watch said so (deleted while this
    /// executor was down, or during a watch gap) and fails them as lost, every
    /// [`ORPHAN_SWEEP`]. Only clusters that know their Jobs take part; attempts younger than
    /// [`ORPHAN_MIN_AGE`] are left to the watch.
    async fn orphan_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(ORPHAN_SWEEP) => {}
            }
            match self.sweep_orphans().await {
                Ok(0) => {}
                Ok(n) => info!(lost = n, "attempts whose Job vanished unseen were failed as lost"),
                Err(e) => warn!(error = %e, "sweeping for vanished Jobs failed"),
            }
        }
    }

    /// One sweep of [`Executor::orphan_loop`]; returns how many attempts it failed.
    pub async fn sweep_orphans(&self) -> Result<usize, ExecutorError> {
        let mut after = Uuid::nil();
        let mut lost = 0;
        loop {
            let rows: Vec<(Uuid, Option<i32>)> = sqlx::query_as(
                "select id, current_retry_count from tasks
                 where status in ('scheduled', 'running') and updated_at < now() - $2::interval and id > $1
                 order by id limit 1000",
            )
            .bind(after)
            .bind(format!("{} seconds", ORPHAN_MIN_AGE.as_secs()))
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else { return Ok(lost) };
            after = last.0;
            for (id, attempt) in rows {
                let attempt = attempt.unwrap_or(0).max(0) as u32;
                if self.cluster.job_exists(id, attempt) == Some(false) {
                    let message = "its Job is gone, and no watch saw it go (deleted while no executor watched)";
                    self.attempt_failed(id, attempt, None, "Deleted", message, Utc::now()).await?;
                    lost += 1;
                }
            }
        }
    }

    /// Records the attempt, creates its Job. Safe to repeat.
    pub async fn handle_binding(&self, b: &Binding) -> Result<(), ExecutorError> {
        let row: Option<TaskRow> = sqlx::query_as(
            "select t.id, t.tenant_id, t.user_id, n.name as tenant_name, t.image, t.command, t.args, t.env_vars,
                    t.labels, t.resource_requests, t.resource_limits, t.node_selector, t.tolerations, t.status,
                    t.current_retry_count, t.name, t.priority, t.created_at, t.timeout_seconds,
                    (select coalesce(jsonb_agg(jsonb_build_object('name', v.name,
                                'claim', coalesce(v.pvc_name, v.id::text), 'mount_path', tv.mount_path,
                                'read_only', coalesce(tv.read_only, false)) order by v.name), '[]')
                     from task_volumes tv join volumes v on v.id = tv.volume_id where tv.task_id = t.id) as mounts
             from tasks t join tenants n on n.id = t.tenant_id
             where t.id = $1",
        )
        .bind(b.task_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Deleted while queued: give back what the binding reserved.
            self.queue.finish(b.task_id).await?;
            return Ok(());
        };
        let status: TaskStatus = row.status.parse().map_err(|e: berth_core::task::UnknownStatus| {
            ExecutorError::MalformedTask { task: b.task_id, field: "status", message: e.to_string() }
        })?;
        let current = row.current_retry_count.unwrap_or(0).max(0) as u32;
        if status.is_terminal() {
            self.queue.finish(b.task_id).await?;
            return Ok(());
        }
        if b.attempt != current {
            debug!(task = %b.task_id, attempt = b.attempt, current, "stale binding");
            return self.repair(b.task_id, b.attempt).await;
        }
        let tenant_id = row.tenant_id;
        let job = row.job(b, &self.config)?;
        let moved = sqlx::query(
            "update tasks set status = 'scheduled', node_name = $2, k8s_job_name = $3, k8s_namespace = $4,
                    not_before = null, updated_at = now()
             where id = $1 and status = any($5) and coalesce(current_retry_count, 0) = $6",
        )
        .bind(b.task_id)
        .bind(&b.node)
        .bind(&job.name)
        .bind(&job.namespace)
        .bind(TaskStatus::sources_of(TaskStatus::Scheduled))
        .bind(b.attempt as i32)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(
            "insert into task_executions (task_id, execution_id, status, node_name, attempt)
             values ($1, $2, 'scheduled', $3, $4)
             on conflict (task_id, attempt) do nothing",
        )
        .bind(b.task_id)
        .bind(&job.name)
        .bind(&b.node)
        .bind(b.attempt as i32)
        .execute(&self.pool)
        .await?;
        if moved == 1 {
            self.publish(b.task_id, tenant_id, TaskStatus::Scheduled, b.attempt, Some(b.node.clone()), None).await;
        }
        // A redelivered binding of an attempt that already runs has its Job.
        if status == TaskStatus::Running {
            return Ok(());
        }
        match self.ensure_namespace(tenant_id).await {
            Ok(()) => {}
            // The cluster refused: the attempt fails (and is retried with backoff). A database
            // error is this process's problem: the binding stays unacknowledged.
            Err(ExecutorError::Cluster(e)) => {
                warn!(error = %e, task = %b.task_id, "ensuring the tenant's namespace failed; failing the attempt");
                let now = Utc::now();
                self.attempt_failed(b.task_id, b.attempt, None, "NamespaceFailed", &e.to_string(), now).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = self.cluster.create_job(&job).await {
            warn!(error = %e, task = %b.task_id, "job creation failed; failing the attempt");
            let now = Utc::now();
            self.attempt_failed(b.task_id, b.attempt, None, "JobCreateFailed", &e.to_string(), now).await?;
        }
        Ok(())
    }

    /// The tenant's namespace, with its quota, unless this process ensured it within
    /// [`NAMESPACE_RESYNC`]. A tenant that no longer exists is left alone.
    async fn ensure_namespace(&self, tenant_id: Uuid) -> Result<(), ExecutorError> {
        let fresh = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant_id)
            .is_some_and(|at| at.elapsed() < NAMESPACE_RESYNC);
        if fresh {
            return Ok(());
        }
        let rows: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
            "select n.name, q.resource_type, q.hard_limit from tenants n
             left join resource_quotas q on q.tenant_id = n.id where n.id = $1",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        let Some(name) = rows.first().map(|r| r.0.clone()) else { return Ok(()) };
        // The largest bigint is "unlimited" (migration 0003).
        let limit = |kind: &str| {
            rows.iter()
                .find(|r| r.1.as_deref() == Some(kind))
                .and_then(|r| r.2)
                .filter(|v| *v != i64::MAX)
                .map(|v| v.max(0) as u64)
        };
        let request = NamespaceRequest {
            namespace: JobRequest::namespace_for(&name),
            tenant: name,
            tenant_id,
            cpu_millis: limit("cpu"),
            memory_bytes: limit("memory"),
            gpu: limit("gpu"),
        };
        self.cluster.ensure_namespace(&request).await?;
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant_id, tokio::time::Instant::now());
        Ok(())
    }

    /// Records one Job event. Safe to repeat.
    pub async fn handle_event(&self, e: &JobEvent) -> Result<(), ExecutorError> {
        match &e.phase {
            JobPhase::Running { node, at } => {
                let r: Option<(Uuid,)> = sqlx::query_as(
                    "update tasks set status = 'running', started_at = coalesce(started_at, $3), node_name = $4, updated_at = now()
                     where id = $1 and status = any($5) and coalesce(current_retry_count, 0) = $2
                     returning tenant_id",
                )
                .bind(e.task_id)
                .bind(e.attempt as i32)
                .bind(at)
                .bind(node)
                .bind(TaskStatus::sources_of(TaskStatus::Running))
                .fetch_optional(&self.pool)
                .await?;
                sqlx::query(
                    "update task_executions set status = 'running', started_at = coalesce(started_at, $3), node_name = $4
                     where task_id = $1 and attempt = $2 and status = 'scheduled'",
                )
                .bind(e.task_id)
                .bind(e.attempt as i32)
                .bind(at)
                .bind(node)
                .execute(&self.pool)
                .await?;
                match r {
                    Some((tenant,)) => {
                        self.publish(e.task_id, tenant, TaskStatus::Running, e.attempt, Some(node.clone()), None).await
                    }
                    None => self.stop_if_cancelled(e.task_id, e.attempt).await?,
                }
            }
            JobPhase::Succeeded { at } => {
                let mut tx = self.pool.begin().await?;
                let r: Option<(Uuid,)> = sqlx::query_as(
                    "update tasks set status = 'succeeded', completed_at = $3, started_at = coalesce(started_at, $3),
                            error_message = null, updated_at = now()
                     where id = $1 and status = any($4) and coalesce(current_retry_count, 0) = $2
                     returning tenant_id",
                )
                .bind(e.task_id)
                .bind(e.attempt as i32)
                .bind(at)
                .bind(TaskStatus::sources_of(TaskStatus::Succeeded))
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query(
                    "update task_executions set status = 'succeeded', exit_code = 0, finished_at = $3,
                            started_at = coalesce(started_at, $3)
                     where task_id = $1 and attempt = $2 and status in ('scheduled', 'running')",
                )
                .bind(e.task_id)
                .bind(e.attempt as i32)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(berth_core::store::RELEASE_QUOTA).bind(e.task_id).execute(&mut *tx).await?;
                tx.commit().await?;
                match r {
                    Some((tenant,)) => {
                        self.queue.finish(e.task_id).await?;
                        self.queue.end_log(e.task_id).await?;
                        self.publish(e.task_id, tenant, TaskStatus::Succeeded, e.attempt, None, None).await;
                    }
                    // A repeat, or an old attempt's late word.
                    None => self.repair(e.task_id, e.attempt).await?,
                }
            }
            JobPhase::Failed { exit_code, reason, message, at } => {
                self.attempt_failed(e.task_id, e.attempt, *exit_code, reason, message, *at).await?;
            }
            JobPhase::Output { first, lines } => {
                self.queue.append_log(e.task_id, e.attempt, *first, lines).await?;
            }
        }
        Ok(())
    }

    /// An attempt failed: retry it with backoff while retries remain, else fail the task.
    async fn attempt_failed(
        &self,
        task_id: Uuid,
        attempt: u32,
        exit_code: Option<i32>,
        reason: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), ExecutorError> {
        let class = FailureClass::classify(reason);
        let policy = self.config.failures.policy(class, &self.config.retry);
        let mut error = format!("{reason}: {message}");
        let mut tx = self.pool.begin().await?;
        let row: Option<(Uuid, Option<i32>, Option<i32>, i32)> = sqlx::query_as(
            "select tenant_id, current_retry_count, max_retry_count, free_retries from tasks
             where id = $1 and status in ('scheduled', 'running') and coalesce(current_retry_count, 0) = $2
             for update",
        )
        .bind(task_id)
        .bind(attempt as i32)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "update task_executions set status = 'failed', exit_code = $3, error_message = $4, finished_at = $5,
                    started_at = coalesce(started_at, $5), failure_class = $6
             where task_id = $1 and attempt = $2 and status in ('scheduled', 'running')",
        )
        .bind(task_id)
        .bind(attempt as i32)
        .bind(exit_code)
        .bind(&error)
        .bind(at)
        .bind(class.as_str())
        .execute(&mut *tx)
        .await?;
        let Some((tenant, current, max, free)) = row else {
            // Already recorded (a repeated event) or the task moved on: only make sure Redis
            // does not keep the reservation of a task that is no longer live.
            tx.commit().await?;
            return self.repair(task_id, attempt).await;
        };
        let (current, max, free) =
            (current.unwrap_or(0).max(0) as u32, max.unwrap_or(0).max(0) as u32, free.max(0) as u32);
        // current_retry_count is the attempt number; the counted retries are those that were
        // not free. A counted class is bounded by the task's max_retry_count (and its own
        // limit, if set); an uncounted one by its limit on the task's free retries.
        let retry = match (policy.retry, policy.counted) {
            (false, _) => {
                error = format!("{error} ({class}: not retried)");
                None
            }
            (true, true) => {
                let used = current.saturating_sub(free);
                let bound = policy.limit.map_or(max, |l| l.min(max));
                if used < bound {
                    Some((used, 0))
                } else {
                    error = format!("{error} ({class}: retries exhausted, {used} of {bound})");
                    None
                }
            }
            (true, false) => {
                let limit = policy.limit.unwrap_or(0);
                if free < limit {
                    Some((free, 1))
                } else {
                    error = format!("{error} ({class}: {limit} uncounted retries exhausted)");
                    None
                }
            }
        };
        if let Some((n, free_step)) = retry {
            let delay = policy.backoff.delay(n, rand::rng().random::<f64>());
            let not_before = at + chrono::Duration::from_std(delay).unwrap_or_default();
            sqlx::query(
                "update tasks set status = 'pending', current_retry_count = $2, not_before = $3, error_message = $4,
                        node_name = null, free_retries = free_retries + $5, updated_at = now()
                 where id = $1",
            )
            .bind(task_id)
            .bind(current as i32 + 1)
            .bind(not_before)
            .bind(&error)
            .bind(free_step)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            self.queue.retry(task_id, attempt, delay).await?;
            info!(task = %task_id, attempt, %class, counted = free_step == 0, retry_in = ?delay, %error, "attempt failed; retrying");
            self.publish(task_id, tenant, TaskStatus::Pending, attempt + 1, None, Some(error)).await;
        } else {
            sqlx::query(
                "update tasks set status = 'failed', completed_at = $2, error_message = $3, dead_lettered_at = $2,
                        updated_at = now()
                 where id = $1",
            )
            .bind(task_id)
            .bind(at)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            sqlx::query(berth_core::store::RELEASE_QUOTA).bind(task_id).execute(&mut *tx).await?;
            tx.commit().await?;
            self.queue.finish(task_id).await?;
            self.queue.end_log(task_id).await?;
            info!(task = %task_id, attempt, %class, %error, "task failed");
            self.publish(task_id, tenant, TaskStatus::Failed, attempt, None, Some(error)).await;
        }
        Ok(())
    }

    /// Makes Redis agree with PostgreSQL when a binding or event of `attempt` finds the task
    /// moved on. The PostgreSQL half of a step may have committed and its Redis half failed
    /// (a blip, a crash), and the repeat that follows lands here:
    /// - a task that is over (terminal or deleted) is released;
    /// - a task that PostgreSQL already sent to attempt `attempt + 1` gets its Redis retry
    ///   again, which is idempotent per attempt (a no-op if it was done).
    ///
    /// A newer attempt's reservation is never touched.
    pub async fn repair(&self, task_id: Uuid, attempt: u32) -> Result<(), ExecutorError> {
        let row: Option<(String, Option<i32>, Option<DateTime<Utc>>)> =
            sqlx::query_as("select status, current_retry_count, not_before from tasks where id = $1")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => {
                self.queue.finish(task_id).await?;
            }
            Some((status, _, _)) if status.parse::<TaskStatus>().is_ok_and(TaskStatus::is_terminal) => {
                self.queue.finish(task_id).await?;
            }
            Some((status, Some(current), not_before))
                if status == "pending" && current as i64 == i64::from(attempt) + 1 =>
            {
                let delay = not_before.and_then(|t| (t - Utc::now()).to_std().ok()).unwrap_or(Duration::ZERO);
                if self.queue.retry(task_id, attempt, delay).await? {
                    info!(task = %task_id, attempt, "re-applied a retry that Redis had missed");
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// On a cancellation event: deletes the attempt's Job, unless the task is (again) live.
    async fn delete_cancelled(&self, ev: &TaskEvent) -> Result<(), ExecutorError> {
        let row: Option<(String,)> = sqlx::query_as("select status from tasks where id = $1")
            .bind(ev.task_id)
            .fetch_optional(&self.pool)
            .await?;
        if row.is_some_and(|(s,)| s != TaskStatus::Cancelled.as_str()) {
            return Ok(());
        }
        let name = JobRequest::job_name(ev.task_id, ev.attempt);
        self.cluster.delete_job(ev.namespace.as_deref().unwrap_or_default(), &name).await?;
        debug!(task = %ev.task_id, job = %name, "deleted the Job of a cancelled task");
        Ok(())
    }

    /// Deletes the Job of a cancelled task's attempt when a Job of a task cancelled meanwhile
    /// starts.
    async fn stop_if_cancelled(&self, task_id: Uuid, attempt: u32) -> Result<(), ExecutorError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("select status, k8s_namespace from tasks where id = $1")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        if let Some((status, namespace)) = row
            && status == TaskStatus::Cancelled.as_str()
        {
            let name = JobRequest::job_name(task_id, attempt);
            self.cluster.delete_job(namespace.as_deref().unwrap_or_default(), &name).await?;
            info!(task = %task_id, job = %name, "deleted the Job of a cancelled task");
        }
        Ok(())
    }

    /// Events are best effort: a lost event never loses a task, PostgreSQL has the state.
    async fn publish(
        &self,
        task_id: Uuid,
        tenant_id: Uuid,
        status: TaskStatus,
        attempt: u32,
        node: Option<String>,
        message: Option<String>,
    ) {
        metrics::counter!("berth_task_transitions_total", "status" => status.as_str()).increment(1);
        let ev = TaskEvent { task_id, tenant_id, status, attempt, node, message, namespace: None };
        if let Err(e) = self.queue.publish_event(&ev).await {
            warn!(error = %e, task = %task_id, "publishing task event failed");
        }
    }
}
