//! Several scheduler replicas against one Redis: no node is ever over-committed, every task
//! is bound at most once, and racing replicas count conflicts instead of double-booking.
//!
//! Nothing is released during the run (the executor is a sink), so each node's reservation
//! only grows: a final reservation within allocatable proves it never exceeded it. A monitor
//! also checks the ledger continuously while the replicas run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_core::config::SchedulerConfig;
use berth_core::{NodeView, Resources, SchedulingSpec};
use berth_queue::Queue;
use berth_scheduler::SchedulerStats;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_overcommit_and_bind_each_task_once() {
    three_replicas(0).await;
}

/// The same with the candidate index: each decision scores at most 4 feasible nodes, and the
/// index follows refreshes, bindings and conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_with_a_candidate_limit_never_overcommit_and_bind_each_task_once() {
    three_replicas(4).await;
}

async fn three_replicas(candidate_limit: u32) {
    let partition = format!("test-{}", Uuid::new_v4().simple());
    let _cleanup = Cleanup(partition.clone());
    let queue = Queue::connect(&redis_url(), &partition).await.expect("Redis must be running (run `make services`)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    let mut allocatable = HashMap::new();
    for i in 0..50 {
        let n = NodeView {
            name: format!("n{i:02}"),
            // Some nodes offer an extended resource by name too, so it is checked like the rest.
            allocatable: Resources::new(
                rng.random_range(2..=16) * 1000,
                rng.random_range(4..=64) << 30,
                rng.random_range(0..=4),
            )
            .with_extended("amd.com/gpu", rng.random_range(0..=2)),
            requested: Resources::ZERO,
            labels: Default::default(),
            taints: vec![],
            schedulable: true,
        };
        allocatable.insert(n.name.clone(), n.allocatable.clone());
        queue.upsert_node(&n).await.unwrap();
    }
    let mut reservations = HashMap::new();
    let tenants = ["a", "b", "c", "d"];
    for i in 0..2000 {
        let s = SchedulingSpec {
            task_id: Uuid::new_v4(),
            tenant: tenants[i % tenants.len()].into(),
            requests: Resources::new(
                rng.random_range(1..=10) * 100,
                rng.random_range(1..=8) << 29,
                u64::from(rng.random_range(0..10) == 0),
            )
            .with_extended("amd.com/gpu", u64::from(rng.random_range(0..8) == 0)),
            priority: rng.random_range(0..=100),
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: 0,
        };
        reservations.insert(s.task_id, s.reservation());
        queue.enqueue(&s, Duration::ZERO).await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (queue, stop, checks, allocatable) = (queue.clone(), stop.clone(), checks.clone(), allocatable.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for n in queue.snapshot().await.unwrap().nodes {
                    assert!(
                        n.requested.fits_in(&allocatable[&n.name]),
                        "node {} over-committed: {:?}",
                        n.name,
                        n.requested
                    );
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut config =
        SchedulerConfig { batch_size: 32, idle_wait: Duration::from_millis(10), ..SchedulerConfig::default() };
    config.profile.candidate_limit = candidate_limit;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stats: Vec<Arc<SchedulerStats>> = (0..3).map(|_| Arc::new(SchedulerStats::default())).collect();
    let replicas: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let mut rx = shutdown_rx.clone();
            tokio::spawn(berth_scheduler::run(
                config.clone(),
                queue.clone(),
                format!("replica-{i}"),
                st.clone(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ))
        })
        .collect();

    // Run until the number of bound tasks has not moved for a while.
    let bound = || stats.iter().map(|s| s.bound.load(Ordering::Relaxed)).sum::<u64>();
    let started = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    while since.elapsed() < Duration::from_millis(1500) && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = bound();
        if b != last {
            (last, since) = (b, Instant::now());
        }
    }
    shutdown_tx.send(true).unwrap();
    for r in replicas {
        r.await.unwrap().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();

    // Every binding names a distinct task, and the ledger equals the sum of the bindings.
    queue.ensure_binding_group().await.unwrap();
    let mut seen = HashSet::new();
    let mut per_node: HashMap<String, Resources> = HashMap::new();
    loop {
        let batch = queue.read_bindings("checker", 500, Duration::from_millis(10)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for b in batch {
            assert!(seen.insert(b.task_id), "task {} bound twice", b.task_id);
            let e = per_node.entry(b.node).or_default();
            *e = e.saturating_add(&reservations[&b.task_id]);
        }
    }
    assert_eq!(seen.len() as u64, bound(), "every bound task has exactly one binding");
    let snap = queue.snapshot().await.unwrap();
    for n in &snap.nodes {
        assert!(n.requested.fits_in(&n.allocatable), "node {} over-committed", n.name);
        assert_eq!(
            n.requested,
            per_node.get(&n.name).cloned().unwrap_or_default(),
            "ledger of {} disagrees with its bindings",
            n.name
        );
    }
    let conflicts: u64 = stats.iter().map(|s| s.conflicts.load(Ordering::Relaxed)).sum();
    let unschedulable: u64 = stats.iter().map(|s| s.unschedulable.load(Ordering::Relaxed)).sum();
    eprintln!(
        "bound {} of 2000, conflicts {conflicts}, unschedulable verdicts {unschedulable}, monitor checks {}",
        bound(),
        checks.load(Ordering::Relaxed)
    );
    assert!(bound() > 500, "the cluster should hold a good part of the work");
    assert!(bound() < 2000, "the test needs more demand than capacity to mean anything");
    assert!(checks.load(Ordering::Relaxed) > 0);
}

/// Removes the test's partition however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        Queue::purge_blocking(&redis_url(), &self.0);
    }
}
