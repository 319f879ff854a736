//! The executor and reconciler against real PostgreSQL (`#[sqlx::test]`) and Redis: every
//! step is idempotent, because bindings and Job events may arrive more than once.

use std::sync::Arc;
use std::time::Duration;

use berth_core::config::{ClusterConfig, ExecutorConfig, RetryConfig};
use berth_core::{Resources, SchedulingSpec};
use berth_queue::{Binding, Queue, ReserveOutcome};
use berth_workers::executor::Executor;
use berth_workers::{Cluster, JobEvent, JobPhase, SimCluster};
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

mod common;

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Fixture {
    pool: PgPool,
    queue: Queue,
    sim: Arc<SimCluster>,
    executor: Executor,
    user: Uuid,
    tenant: Uuid,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        Queue::purge_blocking(&redis_url(), self.queue.partition());
    }
}

async fn fixture(pool: PgPool) -> Fixture {
    let queue = Queue::connect(&redis_url(), &format!("test-{}", Uuid::new_v4().simple()))
        .await
        .expect("Redis (make services)");
    let sim =
        Arc::new(SimCluster::new(&ClusterConfig { start_delay: Duration::from_millis(5), ..ClusterConfig::default() }));
    berth_workers::nodes::publish_once(sim.as_ref(), &queue).await.unwrap();
    queue.ensure_binding_group().await.unwrap();
    let tenant = common::tenant(&pool, "acme").await;
    let user = common::user(&pool, tenant).await;
    let config = ExecutorConfig {
        retry: RetryConfig { base: Duration::from_millis(50), cap: Duration::from_millis(50), jitter: 0.0 },
        ..ExecutorConfig::default()
    };
    let executor = Executor::new(config, pool.clone(), queue.clone(), sim.clone(), "test-executor".into());
    Fixture { pool, queue, sim, executor, user, tenant }
}

impl Fixture {
    /// A pending task in PostgreSQL and Redis, claimed and bound to `sim-1`; returns its binding.
    async fn bound_task(&self, max_retries: i32, sim_duration: &str) -> (Uuid, Binding) {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into tasks (id, tenant_id, user_id, name, image, resource_requests, labels, max_retry_count)
             values ($1, $2, $3, 't', 'busybox', $4, $5, $6)",
        )
        .bind(id)
        .bind(self.tenant)
        .bind(self.user)
        .bind(json!({"cpu": "2", "memory": "1Gi"}))
        .bind(json!({"berth.io/sim-duration": sim_duration}))
        .bind(max_retries)
        .execute(&self.pool)
        .await
        .unwrap();
        self.queue.enqueue(&spec(id), Duration::ZERO).await.unwrap();
        (id, self.bind(id).await)
    }

    async fn bind(&self, id: Uuid) -> Binding {
        let claimed = self.queue.claim("sched", 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(self.queue.reserve(&claimed[0].spec, "sched", "sim-1").await.unwrap(), ReserveOutcome::Bound);
        let b = self.queue.read_bindings("test", 10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].task_id, id);
        b[0].clone()
    }

    async fn status(&self, id: Uuid) -> (String, i32, bool, bool) {
        sqlx::query_as("select status, current_retry_count, started_at is not null, completed_at is not null from tasks where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn executions(&self, id: Uuid) -> Vec<(i32, String)> {
        sqlx::query_as("select attempt, status from task_executions where task_id = $1 order by attempt")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn reserved(&self) -> Resources {
        self.queue.snapshot().await.unwrap().nodes.iter().fold(Resources::ZERO, |a, n| a.saturating_add(&n.requested))
    }
}

fn spec(id: Uuid) -> SchedulingSpec {
    SchedulingSpec {
        task_id: id,
        tenant: "acme".into(),
        requests: Resources::new(2000, 1 << 30, 0),
        priority: 0,
        node_selector: Default::default(),
        tolerations: vec![],
        attempt: 0,
        seq: 0,
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_binding_and_its_events_delivered_twice_make_one_job_one_execution_one_release(pool: PgPool) {
    let f = fixture(pool).await;
    let mut events = f.sim.take_events().unwrap();
    let (id, b) = f.bound_task(3, "50ms").await;
    f.executor.handle_binding(&b).await.unwrap();
    f.executor.handle_binding(&b).await.unwrap();
    assert_eq!(f.sim.live_jobs(), 1, "a repeated binding created a second Job");
    assert_eq!(f.executions(id).await, vec![(0, "scheduled".to_string())]);
    assert_eq!(f.status(id).await.0, "scheduled");

    let running = events.recv().await.unwrap();
    assert!(matches!(running.phase, JobPhase::Running { .. }));
    // Output lines are copied to the task's log, in order, however often they arrive.
    f.executor.handle_event(&running).await.unwrap();
    f.executor.handle_event(&running).await.unwrap();
    assert_eq!(f.status(id).await, ("running".into(), 0, true, false));

    let done = loop {
        let e = events.recv().await.unwrap();
        match e.phase {
            JobPhase::Output { .. } => f.executor.handle_event(&e).await.unwrap(),
            _ => break e,
        }
    };
    assert!(matches!(done.phase, JobPhase::Succeeded { .. }), "{done:?}");
    assert_eq!(f.reserved().await.cpu_millis, 2000);
    f.executor.handle_event(&done).await.unwrap();
    f.executor.handle_event(&done).await.unwrap();
    assert_eq!(f.status(id).await, ("succeeded".into(), 0, true, true));
    assert_eq!(f.executions(id).await, vec![(0, "succeeded".to_string())]);
    assert_eq!(f.reserved().await, Resources::ZERO);
    assert_eq!(f.queue.tenant_usage("acme").await.unwrap(), Resources::ZERO);
    let log = f.queue.tail_log(id, 100).await.unwrap();
    let lines: Vec<String> = log.iter().filter_map(|e| e.line.clone()).collect();
    assert!(lines.first().is_some_and(|l| l.contains("started on sim-1")), "{lines:?}");
    assert_eq!(lines.last().unwrap(), "[berth-sim] exiting with code 0");
    assert!(log.last().unwrap().end, "a finished task's log is closed");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failed_attempt_is_retried_once_per_failure_then_the_task_fails(pool: PgPool) {
    let f = fixture(pool).await;
    // Long sim runs: the failures are injected, and no Job should end by itself meanwhile.
    let (id, b) = f.bound_task(1, "1h").await;
    f.executor.handle_binding(&b).await.unwrap();
    let failed = |attempt| JobEvent {
        task_id: id,
        attempt,
        phase: JobPhase::Failed {
            exit_code: Some(1),
            reason: "Error".into(),
            message: "exit 1".into(),
            at: Utc::now(),
        },
    };
    f.executor.handle_event(&failed(0)).await.unwrap();
    f.executor.handle_event(&failed(0)).await.unwrap();
    assert_eq!(f.status(id).await.0, "pending");
    assert_eq!(f.status(id).await.1, 1, "the same failure twice counted once");
    assert_eq!(f.reserved().await, Resources::ZERO);
    let q = f.queue.task_state(id).await.unwrap().unwrap();
    assert_eq!((q.state.as_str(), q.attempt), ("delayed", 1));

    tokio::time::sleep(Duration::from_millis(80)).await;
    let b1 = f.bind(id).await;
    assert_eq!(b1.attempt, 1);
    // Attempt 0's Job reporting success late must not release attempt 1's reservation.
    let late = JobEvent { task_id: id, attempt: 0, phase: JobPhase::Succeeded { at: Utc::now() } };
    f.executor.handle_event(&late).await.unwrap();
    assert_eq!(f.reserved().await.cpu_millis, 2000, "a stale attempt released the live one");
    assert_eq!(f.status(id).await.0, "pending");
    // The old binding, redelivered late, is recognised as stale.
    f.executor.handle_binding(&b).await.unwrap();
    f.executor.handle_binding(&b1).await.unwrap();
    assert_eq!(f.sim.live_jobs(), 2, "one Job per attempt, none for the stale binding");
    f.executor.handle_event(&failed(1)).await.unwrap();
    let (status, retries, _, completed) = f.status(id).await;
    assert_eq!((status.as_str(), retries, completed), ("failed", 1, true));
    assert_eq!(f.executions(id).await, vec![(0, "failed".to_string()), (1, "failed".to_string())]);
    assert_eq!(f.queue.task_state(id).await.unwrap(), None);
    assert_eq!(f.reserved().await, Resources::ZERO);
}

/// PostgreSQL committed the retry of attempt 0 but Redis never heard of it (a blip between
/// the two): Redis still holds attempt 0's reservation.
async fn lose_the_redis_half_of_a_retry(f: &Fixture, id: Uuid) {
    sqlx::query("update tasks set status = 'pending', current_retry_count = 1, not_before = now() where id = $1")
        .bind(id)
        .execute(&f.pool)
        .await
        .unwrap();
    assert_eq!(f.queue.task_state(id).await.unwrap().unwrap().state, "bound");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_repeated_failure_reapplies_a_retry_that_redis_missed(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, b) = f.bound_task(1, "1h").await;
    f.executor.handle_binding(&b).await.unwrap();
    lose_the_redis_half_of_a_retry(&f, id).await;
    let failed = JobEvent {
        task_id: id,
        attempt: 0,
        phase: JobPhase::Failed {
            exit_code: Some(1),
            reason: "Error".into(),
            message: "exit 1".into(),
            at: Utc::now(),
        },
    };
    f.executor.handle_event(&failed).await.unwrap();
    let q = f.queue.task_state(id).await.unwrap().unwrap();
    assert_eq!((q.state.as_str(), q.attempt), ("delayed", 1));
    assert_eq!(f.reserved().await, Resources::ZERO);
    assert_eq!(f.status(id).await.1, 1, "PostgreSQL is not retried twice");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_reconciler_reapplies_a_retry_that_redis_missed(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, _) = f.bound_task(1, "1h").await;
    lose_the_redis_half_of_a_retry(&f, id).await;
    sqlx::query("update tasks set updated_at = now() - interval '1 minute' where id = $1")
        .bind(id)
        .execute(&f.pool)
        .await
        .unwrap();
    assert_eq!(berth_workers::reconciler::reconcile_once(&f.pool, &f.queue, Duration::from_secs(1)).await.unwrap(), 1);
    assert_eq!(f.queue.task_state(id).await.unwrap().unwrap().attempt, 1);
    assert_eq!(f.reserved().await, Resources::ZERO);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_reconciler_reaches_every_pending_task_however_many_wait(pool: PgPool) {
    let f = fixture(pool).await;
    // 2,500 pending tasks that Redis knows, then one it lost: it is found past the first pages.
    sqlx::query(
        "insert into tasks (tenant_id, user_id, name, image, resource_requests, created_at, updated_at)
         select $1, $2, 'old-' || g, 'busybox', '{}', now() - interval '1 hour' + g * interval '1 ms', now() - interval '1 hour'
         from generate_series(1, 2500) g",
    )
    .bind(f.tenant)
    .bind(f.user)
    .execute(&f.pool)
    .await
    .unwrap();
    assert_eq!(berth_workers::reconciler::reconcile_once(&f.pool, &f.queue, Duration::ZERO).await.unwrap(), 2500);
    let lost = Uuid::now_v7();
    sqlx::query("insert into tasks (id, tenant_id, user_id, name, image, resource_requests) values ($1, $2, $3, 'new', 'busybox', '{}')")
        .bind(lost)
        .bind(f.tenant)
        .bind(f.user)
        .execute(&f.pool)
        .await
        .unwrap();
    assert_eq!(berth_workers::reconciler::reconcile_once(&f.pool, &f.queue, Duration::ZERO).await.unwrap(), 1);
    assert!(f.queue.task_state(lost).await.unwrap().is_some());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_binding_for_a_deleted_task_gives_its_reservation_back(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, b) = f.bound_task(0, "50ms").await;
    sqlx::query("delete from tasks where id = $1").bind(id).execute(&f.pool).await.unwrap();
    f.executor.handle_binding(&b).await.unwrap();
    assert_eq!(f.sim.live_jobs(), 0);
    assert_eq!(f.reserved().await, Resources::ZERO);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_reconciler_requeues_pending_tasks_that_redis_lost(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, _) = f.bound_task(0, "50ms").await;
    let later = Uuid::now_v7();
    sqlx::query(
        "insert into tasks (id, tenant_id, user_id, name, image, resource_requests, not_before)
         values ($1, $2, $3, 'later', 'busybox', '{}', now() + interval '1 hour')",
    )
    .bind(later)
    .bind(f.tenant)
    .bind(f.user)
    .execute(&f.pool)
    .await
    .unwrap();
    // Redis loses everything.
    f.queue.purge().await.unwrap();
    assert_eq!(berth_workers::reconciler::reconcile_once(&f.pool, &f.queue, Duration::ZERO).await.unwrap(), 2);
    assert_eq!(
        berth_workers::reconciler::reconcile_once(&f.pool, &f.queue, Duration::ZERO).await.unwrap(),
        0,
        "a second pass adds nothing"
    );
    assert_eq!(f.queue.task_state(id).await.unwrap().unwrap().state, "ready");
    assert_eq!(f.queue.task_state(later).await.unwrap().unwrap().state, "delayed", "a retry waits out its not_before");
    // Fresh tasks are left to the admission path.
    assert_eq!(
        berth_workers::reconciler::reconcile_once(&f.pool, &f.queue, Duration::from_secs(3600)).await.unwrap(),
        0
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_volume_syncer_binds_pending_volumes_once(pool: PgPool) {
    let f = fixture(pool).await;
    sqlx::query(
        "insert into volumes (tenant_id, user_id, name, size, pvc_name) values ($1, $2, 'data', '1Gi', 'data')",
    )
    .bind(f.tenant)
    .bind(f.user)
    .execute(&f.pool)
    .await
    .unwrap();
    assert_eq!(berth_workers::volumes::sync_once(&f.pool, f.sim.as_ref()).await.unwrap(), 1);
    assert_eq!(berth_workers::volumes::sync_once(&f.pool, f.sim.as_ref()).await.unwrap(), 0);
    let (status,): (String,) = sqlx::query_as("select status from volumes").fetch_one(&f.pool).await.unwrap();
    assert_eq!(status, "bound");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_cancellation_event_deletes_the_running_job(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, b) = f.bound_task(0, "1h").await;
    f.executor.handle_binding(&b).await.unwrap();
    assert_eq!(f.sim.live_jobs(), 1);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(berth_workers::executor::run(
        ExecutorConfig::default(),
        f.pool.clone(),
        f.queue.clone(),
        f.sim.clone(),
        "runner".into(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What the API's stop does: PostgreSQL first, then the event.
    sqlx::query("update tasks set status = 'cancelled', completed_at = now() where id = $1")
        .bind(id)
        .execute(&f.pool)
        .await
        .unwrap();
    let ev = berth_queue::TaskEvent {
        task_id: id,
        tenant_id: f.tenant,
        status: berth_core::TaskStatus::Cancelled,
        attempt: 0,
        node: None,
        message: None,
        namespace: Some("tenant-acme".into()),
    };
    // DELETE cancels and removes the row at once: the Job must go all the same.
    sqlx::query("delete from tasks where id = $1").bind(id).execute(&f.pool).await.unwrap();
    f.queue.publish_event(&ev).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.sim.live_jobs() > 0 {
        assert!(std::time::Instant::now() < deadline, "the cancelled task's Job still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    runner.await.unwrap().unwrap();
}

fn failure(id: Uuid, attempt: u32, reason: &str) -> JobEvent {
    JobEvent {
        task_id: id,
        attempt,
        phase: JobPhase::Failed { exit_code: None, reason: reason.into(), message: "m".into(), at: Utc::now() },
    }
}

/// An OOM kill is not retried by default, however many retries the task has left.
#[sqlx::test(migrations = "../migrations")]
async fn an_oom_kill_fails_the_task_at_once(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, b) = f.bound_task(3, "1h").await;
    f.executor.handle_binding(&b).await.unwrap();
    f.executor.handle_event(&failure(id, 0, "OOMKilled")).await.unwrap();
    let (status, retries, _, completed) = f.status(id).await;
    assert_eq!((status.as_str(), retries, completed), ("failed", 0, true));
    let (error,): (String,) =
        sqlx::query_as("select error_message from tasks where id = $1").bind(id).fetch_one(&f.pool).await.unwrap();
    assert!(error.contains("oom_killed: not retried"), "{error}");
    let (class,): (Option<String>,) = sqlx::query_as("select failure_class from task_executions where task_id = $1")
        .bind(id)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(class.as_deref(), Some("oom_killed"));
    assert_eq!(f.reserved().await, Resources::ZERO);
}

/// Evictions are the cluster's doing: retried without counting against max_retry_count (here
/// 0), up to the class's limit (5 by default), then the task fails.
#[sqlx::test(migrations = "../migrations")]
async fn evictions_are_retried_uncounted_up_to_their_limit(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, mut b) = f.bound_task(0, "1h").await;
    for attempt in 0..=5u32 {
        assert_eq!(b.attempt, attempt);
        f.executor.handle_binding(&b).await.unwrap();
        f.executor.handle_event(&failure(id, attempt, "Evicted")).await.unwrap();
        let (status, retries, _, _) = f.status(id).await;
        if attempt < 5 {
            assert_eq!((status.as_str(), retries), ("pending", attempt as i32 + 1), "eviction {attempt}");
            tokio::time::sleep(Duration::from_millis(80)).await;
            b = f.bind(id).await;
        } else {
            assert_eq!(status, "failed", "the sixth eviction is past the limit");
        }
    }
    let (free, error): (i32, String) = sqlx::query_as("select free_retries, error_message from tasks where id = $1")
        .bind(id)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(free, 5);
    assert!(error.contains("evicted: 5 uncounted retries exhausted"), "{error}");
    // And a counted failure after free retries still sees the task's own budget: covered by
    // the counted path, which subtracts free retries from the attempt number.
}

/// Free retries do not use up the task's own budget: after two evictions, a task with
/// max_retry_count 1 still gets its one counted retry of an exit code.
#[sqlx::test(migrations = "../migrations")]
async fn free_retries_leave_the_counted_budget_alone(pool: PgPool) {
    let f = fixture(pool).await;
    let (id, mut b) = f.bound_task(1, "1h").await;
    for (attempt, reason) in [(0u32, "Evicted"), (1, "NodeLost"), (2, "Error")] {
        f.executor.handle_binding(&b).await.unwrap();
        f.executor.handle_event(&failure(id, attempt, reason)).await.unwrap();
        assert_eq!(f.status(id).await.0, "pending", "{reason} at attempt {attempt}");
        tokio::time::sleep(Duration::from_millis(80)).await;
        b = f.bind(id).await;
    }
    f.executor.handle_binding(&b).await.unwrap();
    f.executor.handle_event(&failure(id, 3, "Error")).await.unwrap();
    let (status, retries, _, _) = f.status(id).await;
    assert_eq!((status.as_str(), retries), ("failed", 3));
}
