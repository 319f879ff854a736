//! berth's queue beside apalis-redis on the same Redis, in the same run (issue 4).
//!
//! Both move `N` tasks through push → consume → acknowledge with a producer and a consumer
//! running at once, timed from the first push to the last acknowledgement:
//!
//! - berth: `enqueue_many` in chunks of 1,000; a consumer claiming 100 at a time and
//!   finishing each claimed task (the `release` script: what an executor does at the end of
//!   a task), the finishes of one claim in flight together.
//! - apalis-redis 1.0: `push_bulk` in chunks of 1,000, one worker (batch 100, concurrency
//!   128, `lock_tasks` off, results persisted: its fastest sound setup), a no-op handler. Its
//!   fetch script fails for good once more than about 8,000 tasks are due at once, so the
//!   producer waits while 4,000 are waiting.
//!
//! berth does more per task (priority and per-tenant order, leases, usage and fair-share
//! accounting); the comparison is of cost, not features.
//!
//! `cargo run --release -p berth-bench --bin queue_vs_apalis [-- N ROUNDS]`
//! (`make bench-queue`). Environment: `BERTH_TEST_REDIS_URL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use berth_core::{Resources, SchedulingSpec};
use berth_queue::Queue;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn spec(i: usize) -> SchedulingSpec {
    SchedulingSpec {
        task_id: Uuid::new_v4(),
        tenant: format!("tenant-{}", i % 8),
        requests: Resources::new(100, 1 << 27, 0),
        priority: (i % 100) as u8,
        node_selector: Default::default(),
        tolerations: vec![],
        attempt: 0,
        seq: 0,
    }
}

/// berth: push + claim + finish of `n` tasks; tasks/s.
async fn berth(n: usize) -> Result<f64, BoxErr> {
    let partition = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let queue = Queue::connect(&url(), &partition).await?;
    let work: Vec<SchedulingSpec> = (0..n).map(spec).collect();
    let started = Instant::now();
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for chunk in work.chunks(1000) {
                queue.enqueue_many(chunk).await?;
            }
            Ok::<_, berth_queue::QueueError>(())
        })
    };
    let mut done = 0;
    while done < n {
        let claimed = queue.claim("bench-consumer", 100, Duration::from_secs(30)).await?;
        if claimed.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        let finishes = claimed.iter().map(|c| queue.finish(c.spec.task_id));
        for r in futures::future::join_all(finishes).await {
            r?;
        }
        done += claimed.len();
    }
    let elapsed = started.elapsed();
    producer.await??;
    queue.purge().await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u64,
}

#[derive(Clone)]
struct Counter {
    seen: Arc<AtomicUsize>,
    target: usize,
    done: Arc<Notify>,
}

async fn count(_job: Job, c: Data<Counter>) -> Result<(), BoxDynError> {
    if c.seen.fetch_add(1, Ordering::Relaxed) + 1 == c.target {
        c.done.notify_one();
    }
    Ok(())
}

async fn connect() -> Result<ConnectionManager, BoxErr> {
    // redis-rs' default 500 ms response timeout would stop the worker on one slow reply.
    let cfg = ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    Ok(redis::Client::open(url())?.get_connection_manager_with_config(cfg).await?)
}

/// Removes every key of apalis queue `ns`.
async fn cleanup(conn: &mut ConnectionManager, ns: &str) -> Result<(), BoxErr> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(conn).await?;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let _: () =
        redis::cmd("ZREM").arg("core:apalis:queues:list").arg(format!("{ns}:workers")).query_async(conn).await?;
    Ok(())
}

/// apalis-redis: push + consume + ack of `n` jobs; jobs/s.
async fn apalis(n: usize) -> Result<f64, BoxErr> {
    let mut conn = connect().await?;
    let ns = format!("bench-apalis-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let config = Config::default()
        .queue(&ns)
        .batch_size(100)
        .heartbeat_interval(Duration::from_secs(5))
        .missed_heartbeats(3)
        .lock_tasks(false)
        .persist_results(true)
        .emit_events(false)
        .idempotency_ttl(Some(Duration::from_secs(3600)));
    let storage: RedisStorage<Job> = RedisStorage::new(conn.clone()).with_config(config);
    let counter = Counter { seen: Arc::new(AtomicUsize::new(0)), target: n, done: Arc::new(Notify::new()) };
    let done = counter.done.clone();
    let (worker_storage, name) = (storage.clone(), format!("{ns}-{}", std::process::id()));
    let monitor = Monitor::new()
        .register(move |run| {
            WorkerBuilder::new(format!("{name}-{run}"))
                .backend(worker_storage.clone().poll_with_interval(Duration::from_millis(5)))
                .data(counter.clone())
                .concurrency(128)
                .build(count)
        })
        .should_restart(|_, _| false);
    let ctx = monitor.context();
    let stopper = tokio::spawn(async move {
        done.notified().await;
        let _ = ctx.shutdown();
    });
    let running = tokio::spawn(tokio::time::timeout(Duration::from_secs(120), monitor.run()));
    tokio::time::sleep(Duration::from_millis(300)).await; // the worker registers
    let started = Instant::now();
    let mut st = storage.clone();
    let scheduled = format!("{ns}:scheduled");
    let ids: Vec<u64> = (0..n as u64).collect();
    for chunk in ids.chunks(1000) {
        st.push_bulk(chunk.iter().map(|&id| Job { id }).collect()).await?;
        loop {
            let due: usize = redis::cmd("ZCARD").arg(&scheduled).query_async(&mut conn).await?;
            if due < 4000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let outcome = running.await?;
    let elapsed = started.elapsed();
    stopper.abort();
    let acked: usize = redis::cmd("SCARD").arg(format!("{ns}:done")).query_async(&mut conn).await?;
    cleanup(&mut conn, &ns).await?;
    match outcome {
        Ok(Ok(())) if acked == n => Ok(n as f64 / elapsed.as_secs_f64()),
        Ok(Ok(())) => Err(format!("apalis acknowledged {acked} of {n}").into()),
        Ok(Err(e)) => Err(format!("apalis monitor: {e}").into()),
        Err(_) => Err("apalis did not finish in 120 s".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxErr> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    println!("Queue throughput, push → consume → ack of {n} tasks, producer and consumer at once, same Redis:\n");
    println!("| round | berth (enqueue + claim + finish) | apalis-redis 1.0 (push + consume + ack) | ratio |");
    println!("|-------|---------------------------------|-----------------------------------------|-------|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // Alternate which goes first, so neither always meets a warmer Redis.
        let (b, a) = if round % 2 == 1 {
            let b = berth(n).await?;
            (b, apalis(n).await?)
        } else {
            let a = apalis(n).await?;
            (berth(n).await?, a)
        };
        println!("| {round:>5} | {b:>25.0} tasks/s | {a:>34.0} jobs/s | {:>5.2} |", b / a);
        ratios.push((b, a));
    }
    ratios.sort_by(|x, y| (x.0 / x.1).total_cmp(&(y.0 / y.1)));
    let (b, a) = ratios[ratios.len() / 2];
    berth_bench::summary(
        "queue push + claim + ack beside apalis-redis push + consume",
        "-",
        &format!("{b:.0} vs {a:.0} per s ({:.2}×)", b / a),
        None,
    );
    Ok(())
}
