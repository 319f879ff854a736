//! Fair share end to end through the real scheduler loop and Redis: the DRF paper's example,
//! and weighted shares under a steady stream of work on a full cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_core::config::{OrderConfig, SchedulerConfig};
use berth_core::{NodeView, Resources, SchedulingSpec};
use berth_queue::Queue;
use berth_scheduler::SchedulerStats;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Removes the test's partition however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        Queue::purge_blocking(&redis_url(), &self.0);
    }
}

async fn partition() -> (Queue, Cleanup) {
    let p = format!("test-{}", Uuid::new_v4().simple());
    let q = Queue::connect(&redis_url(), &p).await.expect("Redis must be running (run `make services`)");
    (q, Cleanup(p))
}

fn node(name: &str, cpu: u64, mem: u64) -> NodeView {
    NodeView {
        name: name.into(),
        allocatable: Resources::new(cpu, mem, 0),
        requested: Resources::ZERO,
        labels: Default::default(),
        taints: vec![],
        schedulable: true,
    }
}

fn task(tenant: &str, cpu: u64, mem: u64) -> SchedulingSpec {
    SchedulingSpec {
        task_id: Uuid::new_v4(),
        tenant: tenant.into(),
        requests: Resources::new(cpu, mem, 0),
        priority: 0,
        node_selector: Default::default(),
        tolerations: vec![],
        attempt: 0,
        seq: 0,
    }
}

fn config(order: Vec<OrderConfig>) -> SchedulerConfig {
    let mut c = SchedulerConfig { batch_size: 8, idle_wait: Duration::from_millis(10), ..SchedulerConfig::default() };
    c.profile.order = order;
    c
}

/// Runs one scheduler replica until `done` says so (or 60 s), then stops it; returns its
/// unschedulable verdicts.
async fn run_scheduler(queue: &Queue, config: SchedulerConfig, done: impl AsyncFn() -> bool) -> u64 {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(SchedulerStats::default());
    let replica = tokio::spawn(berth_scheduler::run(config, queue.clone(), "fair".into(), stats.clone(), async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let started = Instant::now();
    while !done().await && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.send(true).unwrap();
    replica.await.unwrap().unwrap();
    eprintln!(
        "scheduler: {} cycles, {} bound, {} unschedulable verdicts, {} conflicts",
        stats.cycles.load(Ordering::Relaxed),
        stats.bound.load(Ordering::Relaxed),
        stats.unschedulable.load(Ordering::Relaxed),
        stats.conflicts.load(Ordering::Relaxed)
    );
    stats.unschedulable.load(Ordering::Relaxed)
}

/// Tasks bound per tenant, counted from the tenants' usage.
async fn running(queue: &Queue, tenant: &str, per_task_cpu: u64) -> u64 {
    queue.tenant_usage(tenant).await.unwrap().cpu_millis / per_task_cpu
}

/// The DRF paper's example (Ghodsi et al., NSDI 2011): one node of 9 CPU and 18 GiB; A's tasks
/// ask 1 CPU and 4 GiB, B's 3 CPU and 1 GiB, both with plenty queued and none ending. Fair
/// share runs 3 of A and 2 of B (dominant shares 2/3 each); the same queue under
/// priority/FIFO runs 4 of A and 1 of B, because A submitted first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drf_papers_example_runs_three_of_a_and_two_of_b() {
    for (order, expect) in [
        (vec![OrderConfig::Drf, OrderConfig::Priority, OrderConfig::Fifo], (3, 2)),
        (vec![OrderConfig::Priority, OrderConfig::Fifo], (4, 1)),
    ] {
        let (queue, _cleanup) = partition().await;
        queue.upsert_node(&node("n", 9000, 18 << 30)).await.unwrap();
        for _ in 0..10 {
            queue.enqueue(&task("a", 1000, 4 << 30), Duration::ZERO).await.unwrap();
        }
        for _ in 0..10 {
            queue.enqueue(&task("b", 3000, 1 << 30), Duration::ZERO).await.unwrap();
        }
        let settled = Instant::now();
        let verdicts =
            run_scheduler(&queue, config(order.clone()), async || settled.elapsed() > Duration::from_secs(2)).await;
        let got = (running(&queue, "a", 1000).await, running(&queue, "b", 3000).await);
        assert_eq!(got, expect, "order {order:?}: (A, B) running");
        // Once full, nothing changes: each of the 15 tasks that do not fit is judged once and
        // parked, not re-evaluated on a timer for the remaining two seconds.
        assert!(verdicts <= 20, "{verdicts} unschedulable verdicts: a hot loop");
    }
}

/// Weights 2:1, a steady stream of equal tasks from both tenants on a full cluster: over
/// every 10-second window, A holds twice B's share of the cluster, within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_shares_hold_two_to_one_under_a_steady_stream() {
    let (queue, _cleanup) = partition().await;
    // 12 nodes × 4 CPU: 48 slots of 1 CPU.
    for i in 0..12 {
        queue.upsert_node(&node(&format!("n{i}"), 4000, 16 << 30)).await.unwrap();
    }
    queue.set_weight("a", 2).await.unwrap();
    queue.set_weight("b", 1).await.unwrap();
    queue.ensure_binding_group().await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The feeder keeps 80 tasks per tenant outstanding (queued or running); the finisher
    // ends each bound task after 0.8–1.2 s (its "run"), which frees its slot.
    let outstanding = Arc::new(std::sync::Mutex::new(HashMap::<Uuid, &'static str>::new()));
    let feeder = {
        let (queue, stop, outstanding) = (queue.clone(), stop.clone(), outstanding.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for tenant in ["a", "b"] {
                    let have = outstanding.lock().unwrap().values().filter(|t| **t == tenant).count();
                    for _ in have..80 {
                        let t = task(tenant, 1000, 1 << 30);
                        outstanding.lock().unwrap().insert(t.task_id, tenant);
                        queue.enqueue(&t, Duration::ZERO).await.unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let finisher = {
        // Its own connection: a blocking read on the shared one would stall the scheduler's.
        let reader = queue.dedicated(Duration::from_millis(20)).await.unwrap();
        let (queue, stop, outstanding) = (queue.clone(), stop.clone(), outstanding.clone());
        tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                for b in reader.read_bindings("finisher", 100, Duration::from_millis(20)).await.unwrap() {
                    queue.ack_binding(&b.entry_id).await.unwrap();
                    n += 1;
                    let (queue, id, outstanding) = (queue.clone(), b.task_id, outstanding.clone());
                    let run = Duration::from_millis(800 + (n * 37) % 400);
                    tokio::spawn(async move {
                        tokio::time::sleep(run).await;
                        queue.finish(id).await.unwrap();
                        outstanding.lock().unwrap().remove(&id);
                    });
                }
            }
        })
    };
    // Samples of (a, b) running, every 100 ms, after a warm-up that fills the cluster.
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64, u64)>::new()));
    let sampler = {
        let (queue, stop, samples) = (queue.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            while !stop.load(Ordering::Relaxed) {
                let a = queue.tenant_usage("a").await.unwrap().cpu_millis / 1000;
                let b = queue.tenant_usage("b").await.unwrap().cpu_millis / 1000;
                samples.lock().unwrap().push((Instant::now(), a, b));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    run_scheduler(&queue, config(vec![OrderConfig::Drf, OrderConfig::Priority, OrderConfig::Fifo]), async || {
        started.elapsed() > Duration::from_secs(16)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for h in [feeder, finisher, sampler] {
        h.await.unwrap();
    }
    let samples = samples.lock().unwrap().clone();
    eprintln!("samples (a, b): {:?}", samples.iter().step_by(10).map(|s| (s.1, s.2)).collect::<Vec<_>>());
    let (first, last) = (samples[0].0, samples[samples.len() - 1].0);
    assert!(last - first >= Duration::from_secs(12), "sampled only {:?}", last - first);
    let full = samples.iter().filter(|(_, a, b)| a + b >= 44).count();
    assert!(full * 10 >= samples.len() * 9, "the cluster stays (nearly) full: {full} of {} samples", samples.len());
    // Every 10-second window, starting at each sample of the first seconds.
    let mut windows = 0;
    for (i, (t0, _, _)) in samples.iter().enumerate() {
        if *t0 + Duration::from_secs(10) > last {
            break;
        }
        let w: Vec<_> = samples[i..].iter().take_while(|(t, _, _)| *t < *t0 + Duration::from_secs(10)).collect();
        let (a, b) = w.iter().fold((0, 0), |(x, y), (_, a, b)| (x + a, y + b));
        let ratio = a as f64 / b.max(1) as f64;
        assert!(
            (ratio - 2.0).abs() <= 0.1,
            "window at +{:?}: A/B = {ratio:.3} (A {a}, B {b} over {} samples), want 2 ± 5%",
            *t0 - first,
            w.len()
        );
        windows += 1;
    }
    eprintln!("{} samples, {windows} windows of 10 s, all within 5% of 2:1", samples.len());
    assert!(windows > 0);
}

/// An extended resource by name through the real loop: tasks asking `amd.com/gpu` land only
/// on nodes offering it, never more than offered, and the rest park saying why; tasks asking
/// none are not held back by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_resources_place_only_where_offered_and_never_overcommit() {
    const AMD: &str = "amd.com/gpu";
    let (queue, _cleanup) = partition().await;
    for i in 0..2 {
        let mut n = node(&format!("amd-{i}"), 8000, 32 << 30);
        n.allocatable.extended.set(AMD, 2);
        queue.upsert_node(&n).await.unwrap();
    }
    for i in 0..4 {
        queue.upsert_node(&node(&format!("plain-{i}"), 64_000, 256 << 30)).await.unwrap();
    }
    let mut amd_tasks = Vec::new();
    for _ in 0..6 {
        let mut t = task("a", 1000, 1 << 30);
        t.requests.extended.set(AMD, 1);
        queue.enqueue(&t, Duration::ZERO).await.unwrap();
        amd_tasks.push(t.task_id);
    }
    for _ in 0..4 {
        queue.enqueue(&task("a", 1000, 1 << 30), Duration::ZERO).await.unwrap();
    }
    let q = queue.clone();
    let parked_all = async || {
        let states = q.task_states(&amd_tasks).await.unwrap();
        states.iter().flatten().filter(|s| s.state == "parked").count() == 2
            && q.tenant_usage("a").await.unwrap().cpu_millis == 8000
    };
    run_scheduler(&queue, config(vec![OrderConfig::Priority, OrderConfig::Fifo]), parked_all).await;
    let snap = queue.snapshot().await.unwrap();
    for n in &snap.nodes {
        let held = n.requested.amount(AMD);
        if n.name.starts_with("amd") {
            assert_eq!(held, 2, "{}: {:?}", n.name, n.requested);
        } else {
            assert_eq!(held, 0, "{} offers no {AMD}: {:?}", n.name, n.requested);
        }
    }
    assert_eq!(queue.tenant_usage("a").await.unwrap().amount(AMD), 4);
    assert_eq!(queue.tenant_usage("a").await.unwrap().cpu_millis, 8000, "all four cpu-only tasks bound");
    let states = queue.task_states(&amd_tasks).await.unwrap();
    let parked: Vec<_> = states.iter().flatten().filter(|s| s.state == "parked").collect();
    assert_eq!(parked.len(), 2, "{states:?}");
    for s in parked {
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with("0/6 nodes fit:") && reason.contains(&format!("insufficient {AMD}")), "{reason}");
    }
}
