//! One behavioural suite, run on every implementation of the Cluster seam: the simulated
//! cluster, the Kubernetes implementation on the API emulator (a test kubelet runs the pods),
//! and, when `BERTH_TEST_KUBECONFIG` names a kubeconfig, a real cluster.
//!
//! Each case is a real executor (`executor::run`: bindings, Job events, cancellations) fed
//! by a minimal scheduler loop, over real PostgreSQL and Redis. Tasks are `sh -c` scripts of
//! echo/sleep/exit on busybox, which the simulated cluster and the test kubelet run as a real
//! container would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::config::{ClusterConfig, ExecutorConfig, RetryConfig};
use berth_core::{Resources, SchedulingSpec, TaskStatus};
use berth_queue::{Queue, ReserveOutcome, TaskEvent};
use berth_workers::k8s::KubeCluster;
use berth_workers::{Cluster, SimCluster};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

mod common;
use common::Emulator;

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sim,
    /// The cluster of `BERTH_TEST_KUBECONFIG` when set, else the emulator.
    Kube,
}

/// What runs the Jobs.
enum Backend {
    Sim(Arc<SimCluster>),
    /// The emulator and its test kubelet; the client is the executor's.
    Emulated {
        _emulator: Emulator,
        kubelet: tokio::task::JoinHandle<()>,
        client: kube::Client,
    },
    Real(kube::Client),
}

struct Suite {
    pool: PgPool,
    queue: Queue,
    backend: Backend,
    tenant: Uuid,
    tenant_name: String,
    user: Uuid,
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// The executor, stopped and started on its own (a restart).
    executor: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

/// The real cluster's client when `BERTH_TEST_KUBECONFIG` is set.
async fn real_client() -> Option<kube::Client> {
    let path = std::env::var_os("BERTH_TEST_KUBECONFIG")?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("BERTH_TEST_KUBECONFIG: a readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("its context");
    Some(kube::Client::try_from(config).expect("a client for BERTH_TEST_KUBECONFIG"))
}

impl Suite {
    async fn start(pool: PgPool, kind: Kind) -> Suite {
        let queue = Queue::connect(&redis_url(), &format!("test-{}", Uuid::new_v4().simple()))
            .await
            .expect("Redis (make services)");
        let backend = match kind {
            Kind::Sim => Backend::Sim(Arc::new(SimCluster::new(&ClusterConfig {
                start_delay: Duration::from_millis(20),
                ..ClusterConfig::default()
            }))),
            Kind::Kube => match real_client().await {
                Some(client) => Backend::Real(client),
                None => {
                    let emu = Emulator::start();
                    emu.add_node("node-1", "8", "16Gi").await;
                    let kubelet = tokio::spawn(common::kubelet(emu.client()));
                    let client = emu.client();
                    Backend::Emulated { _emulator: emu, kubelet, client }
                }
            },
        };
        // A tenant name of its own on a real cluster, whose namespaces outlive the test.
        let tenant_name = match backend {
            Backend::Real(_) => format!("berth-test-{}", &Uuid::new_v4().simple().to_string()[..8]),
            _ => "acme".to_string(),
        };
        let tenant = common::tenant(&pool, &tenant_name).await;
        let user = common::user(&pool, tenant).await;
        let (stop, stop_rx) = watch::channel(false);
        let mut suite =
            Suite { pool, queue, backend, tenant, tenant_name, user, stop, workers: Vec::new(), executor: None };
        berth_workers::nodes::publish_once(suite.cluster().as_ref(), &suite.queue).await.unwrap();
        suite.start_executor();
        suite.workers.push(tokio::spawn(schedule(suite.queue.clone(), stop_rx)));
        suite
    }

    /// Starts an executor with a cluster client of its own, as a new process would.
    fn start_executor(&mut self) {
        let config = ExecutorConfig {
            retry: RetryConfig { base: Duration::from_millis(50), cap: Duration::from_millis(50), jitter: 0.0 },
            ..ExecutorConfig::default()
        };
        let (stop, mut stop_rx) = watch::channel(false);
        let run = berth_workers::executor::run(
            config,
            self.pool.clone(),
            self.queue.clone(),
            self.cluster(),
            format!("suite-executor-{}", Uuid::new_v4().simple()),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        );
        self.executor = Some((stop, tokio::spawn(async move { run.await.unwrap() })));
    }

    async fn stop_executor(&mut self) {
        if let Some((stop, handle)) = self.executor.take() {
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(10), handle).await.expect("the executor stops").unwrap();
        }
    }

    /// How long a task may take to get somewhere: a real cluster pulls busybox and starts
    /// pods; the others are quick.
    fn within(&self) -> Duration {
        match self.backend {
            Backend::Real(_) => Duration::from_secs(180),
            _ => Duration::from_secs(20),
        }
    }

    fn cluster(&self) -> Arc<dyn Cluster> {
        match &self.backend {
            Backend::Sim(sim) => sim.clone(),
            Backend::Emulated { client, .. } | Backend::Real(client) => Arc::new(KubeCluster::new(client.clone())),
        }
    }

    fn namespace(&self) -> String {
        format!("tenant-{}", self.tenant_name)
    }

    /// Submits a busybox task running `script`, as the API would: PostgreSQL, then Redis.
    async fn submit(&self, script: &str, max_retries: i32) -> Uuid {
        self.submit_with(script, max_retries, None, "busybox:1.36").await
    }

    async fn submit_with(&self, script: &str, max_retries: i32, timeout: Option<i32>, image: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into tasks (id, tenant_id, user_id, name, image, command, resource_requests, max_retry_count,
                                timeout_seconds)
             values ($1, $2, $3, 'suite', $7, $4, $5, $6, $8)",
        )
        .bind(id)
        .bind(self.tenant)
        .bind(self.user)
        .bind(vec!["sh".to_string(), "-c".into(), script.into()])
        .bind(json!({"cpu": "100m", "memory": "64Mi"}))
        .bind(max_retries)
        .bind(image)
        .bind(timeout)
        .execute(&self.pool)
        .await
        .unwrap();
        let spec = SchedulingSpec {
            task_id: id,
            tenant: self.tenant_name.clone(),
            requests: Resources::new(100, 64 << 20, 0),
            priority: 0,
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: 0,
        };
        self.queue.enqueue(&spec, Duration::ZERO).await.unwrap();
        id
    }

    async fn status(&self, id: Uuid) -> String {
        let (s,): (String,) =
            sqlx::query_as("select status from tasks where id = $1").bind(id).fetch_one(&self.pool).await.unwrap();
        s
    }

    /// Waits until the task reaches `want`; panics with what it is after `within`.
    async fn wait_for(&self, id: Uuid, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status(id).await;
            if s == want {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} is {s}, not {want}, after {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every attempt: (attempt, status, exit code, failure class).
    async fn executions(&self, id: Uuid) -> Vec<(i32, String, Option<i32>, Option<String>)> {
        sqlx::query_as(
            "select attempt, status, exit_code, failure_class from task_executions where task_id = $1 order by attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The task's log lines, and whether the log was closed.
    async fn log(&self, id: Uuid) -> (Vec<String>, bool) {
        let entries = self.queue.tail_log(id, 1000).await.unwrap();
        let ended = entries.last().is_some_and(|e| e.end);
        (entries.into_iter().filter_map(|e| e.line).collect(), ended)
    }

    /// What berth holds reserved on the nodes.
    async fn reserved(&self) -> Resources {
        self.queue.snapshot().await.unwrap().nodes.iter().fold(Resources::ZERO, |a, n| a.saturating_add(&n.requested))
    }

    /// What the API's stop does: PostgreSQL first, then Redis and the event.
    async fn stop_task(&self, id: Uuid) {
        let (attempt,): (Option<i32>,) = sqlx::query_as(
            "update tasks set status = 'cancelled', completed_at = now() where id = $1 returning current_retry_count",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        sqlx::query(
            "update task_executions set status = 'cancelled', finished_at = now()
             where task_id = $1 and status in ('scheduled', 'running')",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .unwrap();
        self.queue.finish(id).await.unwrap();
        self.queue.end_log(id).await.unwrap();
        let event = TaskEvent {
            task_id: id,
            tenant_id: self.tenant,
            status: TaskStatus::Cancelled,
            attempt: attempt.unwrap_or(0) as u32,
            node: None,
            message: None,
            namespace: Some(self.namespace()),
        };
        self.queue.publish_event(&event).await.unwrap();
    }

    /// Jobs of the task still live on the cluster.
    async fn live_jobs(&self, id: Uuid) -> usize {
        match &self.backend {
            Backend::Sim(sim) => sim.live_jobs(),
            Backend::Emulated { client, .. } | Backend::Real(client) => {
                let jobs: Api<Job> = Api::namespaced(client.clone(), &self.namespace());
                let params = kube::api::ListParams::default().labels(&format!("compute-platform/task-id={id}"));
                jobs.list(&params)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .filter(|j| j.metadata.deletion_timestamp.is_none())
                    .count()
            }
        }
    }

    async fn finish(mut self) {
        self.stop_executor().await;
        let _ = self.stop.send(true);
        for w in std::mem::take(&mut self.workers) {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
        if let Backend::Emulated { kubelet, .. } = &self.backend {
            kubelet.abort();
        }
        if let Backend::Real(client) = &self.backend {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let _ = namespaces.delete(&self.namespace(), &Default::default()).await;
        }
        Queue::purge_blocking(&redis_url(), self.queue.partition());
    }
}

/// The scheduler, reduced to what the suite needs: every ready task goes to the first
/// schedulable node.
async fn schedule(queue: Queue, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let node = queue.snapshot().await.ok().and_then(|s| s.nodes.into_iter().find(|n| n.schedulable));
        if let (Some(node), Ok(claimed)) = (node, queue.claim("suite-scheduler", 16, Duration::from_secs(30)).await) {
            for c in claimed {
                let outcome = queue.reserve(&c.spec, "suite-scheduler", &node.name).await;
                assert!(matches!(outcome, Ok(ReserveOutcome::Bound)), "{outcome:?}");
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

async fn happy_path(pool: PgPool, kind: Kind) {
    let s = Suite::start(pool, kind).await;
    let id = s.submit("echo hello; sleep 0.2; echo world", 0).await;
    s.wait_for(id, "succeeded", s.within()).await;
    let runs = s.executions(id).await;
    assert_eq!(runs, [(0, "succeeded".into(), Some(0), None)], "{kind:?}");
    let (started, node): (bool, Option<String>) =
        sqlx::query_as("select started_at is not null, node_name from tasks where id = $1")
            .bind(id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert!(started && node.is_some(), "{kind:?}");
    // The container's output, in order, and the log closed with the task.
    let (lines, ended) = s.log(id).await;
    let ours: Vec<&str> = lines.iter().map(String::as_str).filter(|l| !l.starts_with("[berth-sim]")).collect();
    assert_eq!(ours, ["hello", "world"], "{kind:?}: {lines:?}");
    assert!(ended, "{kind:?}");
    assert_eq!(s.reserved().await, Resources::ZERO, "{kind:?}: the reservation is released");
    s.finish().await;
}

async fn failures_are_retried_then_dead_lettered(pool: PgPool, kind: Kind) {
    let s = Suite::start(pool, kind).await;
    let id = s.submit("echo trying; exit 3", 1).await;
    s.wait_for(id, "failed", s.within() * 2).await;
    let runs = s.executions(id).await;
    let failed = |a| (a, "failed".to_string(), Some(3), Some("exit_code".to_string()));
    assert_eq!(runs, [failed(0), failed(1)], "{kind:?}: one retry, then no more");
    let (dead, error): (bool, Option<String>) =
        sqlx::query_as("select dead_lettered_at is not null, error_message from tasks where id = $1")
            .bind(id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert!(dead, "{kind:?}: a dead letter");
    assert!(error.as_deref().is_some_and(|e| e.contains("retries exhausted")), "{kind:?}: {error:?}");
    let (lines, _) = s.log(id).await;
    assert_eq!(lines.iter().filter(|l| *l == "trying").count(), 2, "{kind:?}: each attempt's output: {lines:?}");
    assert_eq!(s.reserved().await, Resources::ZERO, "{kind:?}");
    s.finish().await;
}

async fn a_stopped_task_leaves_nothing_running(pool: PgPool, kind: Kind) {
    let s = Suite::start(pool, kind).await;
    let id = s.submit("echo started; sleep 600", 3).await;
    s.wait_for(id, "running", s.within()).await;
    s.stop_task(id).await;
    // Stopping again is harmless.
    s.stop_task(id).await;
    let deadline = Instant::now() + s.within();
    while s.live_jobs(id).await > 0 {
        assert!(Instant::now() < deadline, "{kind:?}: the stopped task's Job still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The Job and pod going away is not a lost attempt to retry: the task stays stopped.
    tokio::time::sleep(berth_workers::k8s::LOST_GRACE + Duration::from_millis(500)).await;
    assert_eq!(s.status(id).await, "cancelled", "{kind:?}");
    assert_eq!(s.executions(id).await.len(), 1, "{kind:?}: no new attempt");
    assert_eq!(s.reserved().await, Resources::ZERO, "{kind:?}");
    s.finish().await;
}

async fn an_attempt_past_its_timeout_fails_as_deadline_exceeded(pool: PgPool, kind: Kind) {
    let s = Suite::start(pool, kind).await;
    let id = s.submit_with("echo started; sleep 600", 0, Some(1), "busybox:1.36").await;
    s.wait_for(id, "failed", s.within()).await;
    let runs = s.executions(id).await;
    assert_eq!(runs.len(), 1, "{kind:?}: {runs:?}");
    assert_eq!(runs[0].3.as_deref(), Some("deadline_exceeded"), "{kind:?}: {runs:?}");
    let (error,): (Option<String>,) =
        sqlx::query_as("select error_message from tasks where id = $1").bind(id).fetch_one(&s.pool).await.unwrap();
    assert!(error.as_deref().is_some_and(|e| e.starts_with("DeadlineExceeded")), "{kind:?}: {error:?}");
    assert_eq!(s.reserved().await, Resources::ZERO, "{kind:?}");
    s.finish().await;
}

macro_rules! suite {
    ($($case:ident),*) => {
        mod sim {
            $(#[sqlx::test(migrations = "../migrations")]
            async fn $case(pool: sqlx::PgPool) { super::$case(pool, super::Kind::Sim).await })*
        }
        /// On the emulator, or on the cluster of `BERTH_TEST_KUBECONFIG` when set.
        mod kubernetes {
            $(#[sqlx::test(migrations = "../migrations")]
            async fn $case(pool: sqlx::PgPool) { super::$case(pool, super::Kind::Kube).await })*
        }
    };
}

suite!(
    happy_path,
    failures_are_retried_then_dead_lettered,
    a_stopped_task_leaves_nothing_running,
    an_attempt_past_its_timeout_fails_as_deadline_exceeded
);

/// An executor stopped while its task runs, and another started after the task ended: the
/// new one finds the outcome from the cluster (the watch's initial list) and the rest of the
/// log, creates no second Job, and records one attempt. Kubernetes only: the simulated
/// cluster lives in the executor's process and ends with it.
#[sqlx::test(migrations = "../migrations")]
async fn an_executor_restarted_mid_run_catches_up_without_a_second_job(pool: PgPool) {
    let mut s = Suite::start(pool, Kind::Kube).await;
    let id = s.submit("echo one; sleep 4; echo two", 2).await;
    s.wait_for(id, "running", s.within()).await;
    // The first line is in before the executor stops: the next one reads the log again.
    let deadline = Instant::now() + s.within();
    while s.log(id).await.0.is_empty() {
        assert!(Instant::now() < deadline, "the first line never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop_executor().await;
    // The task ends while no executor watches.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(s.status(id).await, "running", "nobody recorded the end yet");
    s.start_executor();
    s.wait_for(id, "succeeded", s.within()).await;
    assert_eq!(s.executions(id).await, [(0, "succeeded".into(), Some(0), None)]);
    let (Backend::Emulated { client, .. } | Backend::Real(client)) = &s.backend else { unreachable!() };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &s.namespace());
    let params = kube::api::ListParams::default().labels(&format!("compute-platform/task-id={id}"));
    assert_eq!(jobs.list(&params).await.unwrap().items.len(), 1, "one Job");
    let (lines, ended) = s.log(id).await;
    assert_eq!(lines, ["one", "two"], "each line once, though the log was read twice");
    assert!(ended);
    s.finish().await;
}

/// A Job deleted while no executor watched: the next executor's sweep finds the attempt
/// live in PostgreSQL with no Job, and fails it as lost (retried without counting).
#[sqlx::test(migrations = "../migrations")]
async fn a_job_deleted_while_no_executor_watched_is_found_and_its_attempt_lost(pool: PgPool) {
    let mut s = Suite::start(pool, Kind::Kube).await;
    let id = s.submit("echo one; sleep 600", 0).await;
    s.wait_for(id, "running", s.within()).await;
    s.stop_executor().await;
    let (Backend::Emulated { client, .. } | Backend::Real(client)) = &s.backend else { unreachable!() };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &s.namespace());
    jobs.delete(&format!("task-{id}-0"), &kube::api::DeleteParams::foreground()).await.unwrap();
    // As if it had been running a while (the sweep leaves young attempts to the watch).
    sqlx::query("update tasks set updated_at = now() - interval '10 minutes' where id = $1")
        .bind(id)
        .execute(&s.pool)
        .await
        .unwrap();
    let cluster = Arc::new(KubeCluster::new(client.clone()));
    let _events = cluster.take_events().unwrap();
    let executor = berth_workers::executor::Executor::new(
        ExecutorConfig::default(),
        s.pool.clone(),
        s.queue.clone(),
        cluster.clone(),
        "sweeper".into(),
    );
    let deadline = Instant::now() + s.within();
    while cluster.job_exists(id, 0).is_none() {
        assert!(Instant::now() < deadline, "the Job watcher never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(executor.sweep_orphans().await.unwrap(), 1);
    assert_eq!(executor.sweep_orphans().await.unwrap(), 0, "once");
    let runs = s.executions(id).await;
    assert_eq!(runs[0].3.as_deref(), Some("node_lost"), "{runs:?}");
    // Retried although max_retry_count is 0: a lost attempt does not count.
    assert_eq!(runs.len(), 1);
    assert!(["pending", "scheduled", "running"].contains(&s.status(id).await.as_str()));
    s.finish().await;
}
