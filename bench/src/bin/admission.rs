//! The admission harness (issue 3's performance target): `POST /v1/tasks` sustained rate and
//! latency percentiles, and `POST /v1/tasks:batch` tasks per second, against the real API on
//! a throwaway database and Redis partition on this machine. The load generator runs in the
//! same process as the API, so both share the machine's cores with PostgreSQL and Redis.
//!
//! `cargo run --release -p berth-bench --bin admission [-- SECONDS CLIENTS TENANTS]`
//! (`make bench-admission`). Environment: `DATABASE_URL` (a server where databases can be
//! created; default the local one) and `BERTH_TEST_REDIS_URL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::config::Config;
use berth_queue::Queue;
use serde_json::{Value, json};
use sqlx::Connection;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

fn task(i: usize) -> Value {
    json!({
        "name": format!("bench-{i}"),
        "image": "busybox:1.36",
        "command": ["sh", "-c", "true"],
        "resource_requests": {"cpu": "100m", "memory": "64Mi"},
        "labels": {"bench": "admission"},
        "priority": i % 101,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The API's own warnings and errors (a 500's cause) go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);
    let tenants: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis = std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let db = format!("berth_bench_{tag}");
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {db}"))).execute(&mut admin).await?;
    let db_url = format!("{}/{db}", base.rsplit_once('/').map_or(base.as_str(), |b| b.0));
    let result = run(&db_url, &redis, &tag, seconds, clients, tenants).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {db} with (force)"))).execute(&mut admin).await?;
    result
}

async fn run(
    db_url: &str,
    redis: &str,
    tag: &str,
    seconds: u64,
    clients: usize,
    tenants: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(db_url).await?;
    MIGRATOR.run(&pool).await?;
    let mut config = Config::default();
    config.redis.partition = format!("bench-{tag}");
    config.api.body_limit_bytes = 8 << 20;
    let queue = Queue::connect(redis, &config.redis.partition).await?;
    // One user per tenant: a tenant's admissions serialize on its quota rows (the conditional
    // update holds them to the commit), so one tenant and several measure different things.
    for t in 0..tenants {
        let tenant = berth_api::bootstrap::ensure_tenant(&pool, &format!("bench-{t}"), "Bench", "").await?;
        let email = format!("bench{t}@bench.local");
        berth_api::bootstrap::ensure_user(&pool, tenant, &format!("bench{t}"), &email, "bench-password", "user")
            .await?;
    }
    let state = berth_api::AppState::new(pool.clone(), queue.clone(), config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(berth_api::serve(listener, state, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let mut tokens = Vec::new();
    for t in 0..tenants {
        let login: Value = http
            .post(format!("{url}/v1/auth/login"))
            .json(&json!({"username": format!("bench{t}"), "password": "bench-password"}))
            .send()
            .await?
            .json()
            .await?;
        tokens.push(Arc::new(login["access_token"].as_str().ok_or("login failed")?.to_owned()));
    }
    let token = tokens[0].clone();

    // 1. Single admissions: `clients` concurrent clients for `seconds`.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for c in 0..clients {
        let (http, url, token) = (http.clone(), url.clone(), tokens[c % tenants].clone());
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::new(), 0usize, c * 1_000_000);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = http.post(format!("{url}/v1/tasks")).bearer_auth(token.as_str()).json(&task(i)).send().await;
                match r {
                    Ok(r) if r.status() == 201 => lat.push(t0.elapsed()),
                    Ok(r) => {
                        if errors == 0 {
                            eprintln!("first error: {} {}", r.status(), r.text().await.unwrap_or_default());
                        }
                        errors += 1
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("first error: {e}");
                        }
                        errors += 1
                    }
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let rate = lat.len() as f64 / elapsed;
    println!(
        "POST /v1/tasks        {:>8.0} admissions/s  p50 {:>6.1} ms  p99 {:>6.1} ms  ({} admitted, {errors} errors, {clients} clients, {tenants} tenants, {seconds}s)",
        rate,
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.len()
    );

    // 2. Batches of 1,000, two clients at a time, 20 batches.
    let body = json!({"tasks": (0..1000).map(task).collect::<Vec<_>>()}).to_string();
    let started = Instant::now();
    let mut batches = Vec::new();
    for _ in 0..2 {
        let (http, url, token, body) = (http.clone(), url.clone(), token.clone(), body.clone());
        batches.push(tokio::spawn(async move {
            let mut ok = 0usize;
            for _ in 0..10 {
                let r = http
                    .post(format!("{url}/v1/tasks:batch"))
                    .bearer_auth(token.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 201) {
                    ok += 1000;
                }
            }
            ok
        }));
    }
    let mut admitted = 0;
    for b in batches {
        admitted += b.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "POST /v1/tasks:batch  {:>8.0} tasks/s       ({admitted} tasks in 20 batches of 1,000, 2 clients, {elapsed:.2}s)",
        admitted as f64 / elapsed
    );

    let _ = stop_tx.send(true);
    let _ = server.await;
    queue.purge().await?;
    Ok(())
}
