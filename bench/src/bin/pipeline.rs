//! The pipeline harness (issue 4's end-to-end and memory benchmarks), through the local
//! Redis on a throwaway partition:
//!
//! 1. enqueue → bound: 10,000 nodes, 8 tenants, every task enqueued up front, two scheduler
//!    replicas in this process (the machine's two cores), the executor replaced by nothing
//!    (bindings are left in the stream). Tasks/s until every task is bound, and Redis round
//!    trips per task (from Redis's own command counters).
//! 2. Redis memory per pending task, at `PENDING` pending tasks.
//! 3. The resident memory of a scheduler holding 100,000 nodes (snapshot and index).
//!
//! `cargo run --release -p berth-bench --bin pipeline [-- TASKS PENDING]`
//! (`make bench-pipeline`). Environment: `BERTH_TEST_REDIS_URL`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_bench::{SplitMix, cluster, summary};
use berth_core::config::SchedulerConfig;
use berth_core::{Resources, SchedulingSpec};
use berth_queue::Queue;
use berth_scheduler::SchedulerStats;
use uuid::Uuid;

fn spec(r: &mut SplitMix, i: usize) -> SchedulingSpec {
    SchedulingSpec {
        task_id: Uuid::new_v4(),
        tenant: format!("tenant-{}", i % 8),
        requests: Resources::new(r.range(1, 10) * 100, r.range(1, 8) << 27, 0),
        priority: r.range(0, 100) as u8,
        node_selector: Default::default(),
        tolerations: vec![],
        attempt: 0,
        seq: 0,
    }
}

async fn info_field(conn: &mut redis::aio::ConnectionManager, section: &str, field: &str) -> u64 {
    let text: String = redis::cmd("INFO").arg(section).query_async(conn).await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Commands Redis has processed so far (INFO stats).
async fn commands(conn: &mut redis::aio::ConnectionManager) -> u64 {
    info_field(conn, "stats", "total_commands_processed").await
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().to_owned()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Two scheduler replicas in this process (the machine's two cores), stopped by `stop`.
struct Replicas {
    stop: tokio::sync::watch::Sender<bool>,
    stats: Vec<Arc<SchedulerStats>>,
    handles: Vec<tokio::task::JoinHandle<Result<(), berth_scheduler::worker::SchedulerError>>>,
}

fn replicas(queue: &Queue, config: &SchedulerConfig, name: &str) -> Replicas {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let stats: Vec<Arc<SchedulerStats>> = (0..2).map(|_| Arc::new(SchedulerStats::default())).collect();
    let handles = stats
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let mut rx = rx.clone();
            tokio::spawn(berth_scheduler::run(
                config.clone(),
                queue.clone(),
                format!("{name}-{i}"),
                st.clone(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ))
        })
        .collect();
    Replicas { stop, stats, handles }
}

struct Run {
    bound: u64,
    elapsed: Duration,
    enqueued: Duration,
    commands: u64,
    round_trips: u64,
    conflicts: u64,
}

/// Enqueues `work` (chunks of 1,000, one pipelined round trip each) and runs two replicas
/// until every task is bound. Round trips are counted from the replicas' own steps (see
/// below).
async fn through(
    queue: &Queue,
    work: &[SchedulingSpec],
    config: &SchedulerConfig,
) -> Result<Run, Box<dyn std::error::Error>> {
    let mut conn = queue.connection();
    let before = commands(&mut conn).await;
    let started = Instant::now();
    for chunk in work.chunks(1000) {
        queue.enqueue_many(chunk).await?;
    }
    let enqueued = started.elapsed();
    let Replicas { stop: tx, stats, handles: replicas } = replicas(queue, config, "bench");
    let sum = |f: fn(&SchedulerStats) -> &std::sync::atomic::AtomicU64| {
        stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum::<u64>()
    };
    while sum(|s| &s.bound) < work.len() as u64 && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    tx.send(true)?;
    for h in replicas {
        h.await??;
    }
    let after = commands(&mut conn).await;
    let (cycles, bound, conflicts) = (sum(|s| &s.cycles), sum(|s| &s.bound), sum(|s| &s.conflicts));
    let (parked, lost) = (sum(|s| &s.unschedulable), sum(|s| &s.lease_lost));
    // Every cycle counted at its most: claim + a two-step refresh + the batch's pipelined
    // reservations (an empty claim is one round trip, an unchanged ledger one); then one per
    // conflict (a retried reservation, or the hand-back after the last) and one per park. A
    // script's first use after a Redis restart adds a load, not counted.
    let _ = (bound, lost);
    let round_trips = work.len().div_ceil(1000) as u64 + cycles * 4 + conflicts + parked;
    Ok(Run { bound, elapsed, enqueued, commands: after - before, round_trips, conflicts })
}

/// Enqueues at `rate` tasks/s for `length` (a chunk every 10 ms) while two replicas run;
/// each task's latency is from its enqueue to its binding's stream entry (whose id is Redis's
/// clock in ms). Returns (p50, p99, max) in ms and the task count.
async fn paced(
    queue: &Queue,
    r: &mut SplitMix,
    rate: f64,
    length: Duration,
    config: &SchedulerConfig,
) -> Result<(f64, f64, f64, usize), Box<dyn std::error::Error>> {
    queue.ensure_binding_group().await?;
    let Replicas { stop: tx, stats, handles: replicas } = replicas(queue, config, "paced");
    // Steady state: the replicas read the cluster and build their index before work arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut enqueued_at: std::collections::HashMap<Uuid, i64> = std::collections::HashMap::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0usize;
    while started.elapsed() < length {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        let chunk: Vec<SchedulingSpec> = (sent..due).map(|i| spec(r, i)).collect();
        if chunk.is_empty() {
            continue;
        }
        let at = chrono_ms();
        queue.enqueue_many(&chunk).await?;
        for s in &chunk {
            enqueued_at.insert(s.task_id, at);
        }
        sent = due;
    }
    let bound = || stats.iter().map(|s| s.bound.load(Ordering::Relaxed)).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bound() < sent as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(true)?;
    for h in replicas {
        h.await??;
    }
    let mut lat = Vec::with_capacity(sent);
    loop {
        let batch = queue.read_bindings("latency", 1000, Duration::from_millis(10)).await?;
        if batch.is_empty() {
            break;
        }
        for b in batch {
            let ms: i64 = b.entry_id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            if let Some(at) = enqueued_at.get(&b.task_id) {
                lat.push((ms - at).max(0) as f64);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Ok((q(0.5), q(0.99), lat.last().copied().unwrap_or(0.0), lat.len()))
}

/// Wall-clock ms, comparable with Redis stream ids on the same machine.
fn chrono_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let tasks: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let pending: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let url = std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let partition = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let queue = Queue::connect(&url, &partition).await?;
    let mut conn = queue.connection();
    let mut r = SplitMix::new(3);

    // 1. enqueue → bound, scoring every node and with the candidate index.
    let snap = cluster(10_000, 7);
    let mut best_rate: f64 = 0.0;
    for limit in [0, 128] {
        for n in &snap.nodes {
            let mut n = n.clone();
            n.requested = Resources::ZERO;
            queue.upsert_node(&n).await?;
        }
        let work: Vec<SchedulingSpec> = (0..tasks).map(|i| spec(&mut r, i)).collect();
        let mut config =
            SchedulerConfig { batch_size: 64, idle_wait: Duration::from_millis(5), ..SchedulerConfig::default() };
        config.profile.candidate_limit = limit;
        let run = through(&queue, &work, &config).await?;
        println!(
            "enqueue → bound, 10,000 nodes, 8 tenants, 2 replicas, {}: {} tasks bound in {:.2} s = {:.0} tasks/s \
             (enqueue alone {:.0} tasks/s); {:.2} Redis round trips per task ({:.1} commands counting those \
             inside scripts); {} conflicts",
            if limit == 0 { "every node scored".to_string() } else { format!("candidate_limit {limit}") },
            run.bound,
            run.elapsed.as_secs_f64(),
            run.bound as f64 / run.elapsed.as_secs_f64(),
            tasks as f64 / run.enqueued.as_secs_f64(),
            run.round_trips as f64 / tasks as f64,
            run.commands as f64 / tasks as f64,
            run.conflicts,
        );
        let rate = run.bound as f64 / run.elapsed.as_secs_f64();
        if limit > 0 {
            let rt = run.round_trips as f64 / tasks as f64;
            summary(
                "enqueue → bound, 10k nodes, 8 tenants, 2 replicas",
                "≥ 30,000 tasks/s",
                &format!("{rate:.0} tasks/s (candidate_limit {limit})"),
                Some(rate >= 30_000.0),
            );
            summary(
                "Redis round trips per task",
                "≤ 2",
                &format!("{rt:.2} (every cycle at its most)"),
                Some(rt <= 2.0),
            );
        } else {
            summary("enqueue → bound, every node scored", "-", &format!("{rate:.0} tasks/s"), None);
        }
        best_rate = best_rate.max(rate);
        queue.purge().await?;
    }

    // 1a. Latency at half the saturation rate just measured, with the candidate index.
    {
        for n in &snap.nodes {
            let mut n = n.clone();
            n.requested = Resources::ZERO;
            queue.upsert_node(&n).await?;
        }
        let rate = (best_rate / 2.0).max(100.0);
        let mut config =
            SchedulerConfig { batch_size: 64, idle_wait: Duration::from_millis(1), ..SchedulerConfig::default() };
        config.profile.candidate_limit = 128;
        let (p50, p99, max, n) = paced(&queue, &mut r, rate, Duration::from_secs(5), &config).await?;
        println!(
            "enqueue → bound latency at half that rate ({rate:.0} tasks/s for 5 s, {n} tasks, candidate_limit 128): \
             p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
        );
        summary(
            "p99 enqueue → bound at half saturation",
            "≤ 10 ms",
            &format!("{p99:.1} ms at {rate:.0} tasks/s (p50 {p50:.1} ms)"),
            Some(p99 <= 10.0),
        );
        queue.purge().await?;
    }

    // 1b. The ceiling: the reservation script alone, as fast as Redis runs it. redis-benchmark
    // cannot give each call a distinct leased task, so this client does what it would: every
    // task claimed beforehand, then reservations pipelined 1,000 per round trip.
    for n in &snap.nodes {
        let mut n = n.clone();
        n.requested = Resources::ZERO;
        queue.upsert_node(&n).await?;
    }
    let work: Vec<SchedulingSpec> = (0..tasks).map(|i| spec(&mut r, i)).collect();
    for chunk in work.chunks(1000) {
        queue.enqueue_many(chunk).await?;
    }
    let mut claimed = 0;
    while claimed < tasks {
        claimed += queue.claim("ceiling", 1000, Duration::from_secs(600)).await?.len();
    }
    let before = commands(&mut conn).await;
    let started = Instant::now();
    for (c, chunk) in work.chunks(1000).enumerate() {
        let pairs: Vec<(&SchedulingSpec, &str)> = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| (t, snap.nodes[(c * 1000 + i) % snap.nodes.len()].name.as_str()))
            .collect();
        queue.reserve_many("ceiling", &pairs).await?;
    }
    let ceiling = tasks as f64 / started.elapsed().as_secs_f64();
    let per_script = (commands(&mut conn).await - before) as f64 / tasks as f64;
    let share = best_rate / ceiling * 100.0;
    summary(
        "pipeline vs the reservation script alone",
        "≥ 40%",
        &format!("{share:.0}% of {ceiling:.0}/s"),
        Some(share >= 40.0),
    );
    println!(
        "the reservation script alone, pipelined 1,000 per round trip: {ceiling:.0} reservations/s \
         ({per_script:.1} commands each); the pipeline above reaches {:.0}% of it",
        best_rate / ceiling * 100.0
    );
    queue.purge().await?;

    // 2. Redis memory per pending task.
    let base = info_field(&mut conn, "memory", "used_memory").await;
    let mut left = pending;
    let mut i = 0;
    while left > 0 {
        let n = left.min(2000);
        let chunk: Vec<SchedulingSpec> = (0..n)
            .map(|_| {
                i += 1;
                spec(&mut r, i)
            })
            .collect();
        queue.enqueue_many(&chunk).await?;
        left -= n;
    }
    let used = info_field(&mut conn, "memory", "used_memory").await;
    let per = used.saturating_sub(base) as f64 / pending as f64;
    summary(
        &format!("Redis memory per pending task at {pending}"),
        "≤ 1,024 bytes",
        &format!("{per:.0} bytes"),
        Some(per <= 1024.0),
    );
    println!(
        "Redis memory: {pending} pending tasks take {:.0} MiB, {:.0} bytes per task",
        used.saturating_sub(base) as f64 / (1 << 20) as f64,
        used.saturating_sub(base) as f64 / pending as f64
    );
    queue.purge().await?;

    // 3. What a scheduler replica holds for 100,000 nodes: the snapshot read from the ledger
    // and the candidate index over it.
    let big = cluster(100_000, 9);
    for chunk in big.nodes.chunks(1000) {
        for r in futures::future::join_all(chunk.iter().map(|n| queue.upsert_node(n))).await {
            r?;
        }
    }
    drop(big);
    let rss0 = rss_kib();
    let held = queue.snapshot().await?;
    let index = berth_scheduler::CandidateIndex::new(berth_core::config::CandidateOrder::Tightest, 128, &held);
    let rss1 = rss_kib();
    println!(
        "a scheduler holding {} nodes read from Redis, with its candidate index: {:.0} MiB resident for them, \
         {:.0} MiB for the process",
        held.nodes.len(),
        (rss1.saturating_sub(rss0)) as f64 / 1024.0,
        rss1 as f64 / 1024.0
    );
    std::hint::black_box(&index);
    let mib = rss1 as f64 / 1024.0;
    summary(
        "scheduler process holding 100k nodes",
        "< 300 MB resident",
        &format!("{mib:.0} MiB"),
        Some(mib * 1.048_576 < 300.0),
    );
    queue.purge().await?;
    Ok(())
}
