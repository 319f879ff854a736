//! Webhook delivery end to end: task events on a real Redis stream, hooks in a real
//! PostgreSQL (`#[sqlx::test]`), the notifier with its apalis-redis worker, and a real HTTP
//! listener on 127.0.0.1 that records every call and answers as each test tells it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use berth_core::TaskStatus;
use berth_core::config::WebhooksConfig;
use berth_queue::{Queue, TaskEvent};
use berth_workers::webhooks::{self, FanOut};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

mod common;

fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One call as the listener saw it.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    headers: HeaderMap,
    body: String,
}

/// The listener: `POST /{name}` records the call; hook `name` answers 500 for its first
/// `fail_first[name]` calls (forever if `u32::MAX`) and 200 after.
#[derive(Clone, Default)]
struct Listener {
    calls: Arc<Mutex<HashMap<String, Vec<Call>>>>,
    fail_first: Arc<HashMap<String, u32>>,
}

impl Listener {
    fn calls(&self, name: &str) -> Vec<Call> {
        self.calls.lock().unwrap().get(name).cloned().unwrap_or_default()
    }
}

async fn receive(State(l): State<Listener>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = {
        let mut calls = l.calls.lock().unwrap();
        let list = calls.entry(name.clone()).or_default();
        list.push(Call { at: Instant::now(), headers, body: String::from_utf8_lossy(&body).into_owned() });
        list.len() as u32
    };
    if n <= l.fail_first.get(&name).copied().unwrap_or(0) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
}

/// Starts the listener; returns its base URL.
async fn listen(l: Listener) -> String {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    let app = Router::new().route("/{name}", post(receive)).with_state(l);
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    url
}

struct Fixture {
    pool: PgPool,
    queue: Queue,
    tenant: Uuid,
    other_tenant: Uuid,
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
    let mut ids = Vec::new();
    for name in ["acme", "globex"] {
        ids.push(common::tenant(&pool, name).await);
    }
    // The group exists before the first event, as it does once a notifier has ever run.
    queue.ensure_event_group().await.unwrap();
    Fixture { pool, queue, tenant: ids[0], other_tenant: ids[1] }
}

impl Fixture {
    async fn hook(&self, tenant: Uuid, url: &str, events: Option<&[&str]>) -> (Uuid, String) {
        let secret = format!("whsec_{}", Uuid::new_v4().simple());
        let events: Option<Vec<String>> = events.map(|e| e.iter().map(|s| s.to_string()).collect());
        let (id,): (Uuid,) = sqlx::query_as(
            "insert into webhooks (tenant_id, url, secret, events) values ($1, $2, $3, $4) returning id",
        )
        .bind(tenant)
        .bind(url)
        .bind(&secret)
        .bind(events)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        (id, secret)
    }

    /// Publishes a task event of the fixture's tenant; returns its stream id.
    async fn publish(&self, status: TaskStatus) -> (String, TaskEvent) {
        let event = TaskEvent {
            task_id: Uuid::new_v4(),
            tenant_id: self.tenant,
            status,
            attempt: 0,
            node: Some("sim-1".into()),
            message: None,
            namespace: None,
        };
        self.queue.publish_event(&event).await.unwrap();
        (self.queue.last_event_id().await.unwrap(), event)
    }

    async fn delivery(&self, hook: Uuid) -> Option<(String, i32, Option<i32>, Option<String>)> {
        sqlx::query_as(
            "select status, attempts, last_status_code, last_error from webhook_deliveries where webhook_id = $1",
        )
        .bind(hook)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }

    /// Waits up to `within` until hook `hook`'s delivery has `status`.
    async fn wait_for(&self, hook: Uuid, status: &str, within: Duration) {
        let start = Instant::now();
        loop {
            let d = self.delivery(hook).await;
            if d.as_ref().is_some_and(|d| d.0 == status) {
                return;
            }
            assert!(start.elapsed() < within, "delivery of {hook} not {status} after {within:?}: {d:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the notifier until the returned sender fires (or is dropped).
    fn notifier(&self, config: WebhooksConfig) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let name = format!("test-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let handle = tokio::spawn(webhooks::run(config, self.pool.clone(), self.queue.clone(), name, async move {
            let _ = rx.await;
        }));
        let handle = tokio::spawn(async move { handle.await.unwrap().unwrap() });
        (tx, handle)
    }
}

/// Small backoffs: 1 s after the first failure, 2 s after the second and later.
fn fast(max_attempts: u32) -> WebhooksConfig {
    WebhooksConfig {
        max_attempts,
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        concurrency: 4,
        // The test's listener is on 127.0.0.1.
        allow_private_networks: true,
        ..WebhooksConfig::default()
    }
}

/// Checks `X-Berth-Signature` as a receiver would: HMAC-SHA256 of `"<t>.<body>"` under the
/// secret, and `t` within five minutes of now.
fn verify(secret: &str, call: &Call) {
    let header = call.headers["x-berth-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t: u64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", call.body).as_bytes());
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, want, "signature of {header}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t) < 300, "timestamp {t} vs now {now}");
    // A wrong secret does not verify.
    let mut other = Hmac::<Sha256>::new_from_slice(b"whsec_wrong").unwrap();
    other.update(format!("{t}.{}", call.body).as_bytes());
    assert_ne!(v1, other.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_flaky_hook_is_retried_with_backoff_and_delivered_once(pool: PgPool) {
    let f = fixture(pool).await;
    let listener = Listener { fail_first: Arc::new(HashMap::from([("flaky".to_string(), 2)])), ..Listener::default() };
    let base = listen(listener.clone()).await;
    let (flaky, flaky_secret) = f.hook(f.tenant, &format!("{base}/flaky"), None).await;
    let (ok, ok_secret) = f.hook(f.tenant, &format!("{base}/ok"), Some(&["succeeded"])).await;
    // Filtered out by status, and another tenant's: neither may be called.
    f.hook(f.tenant, &format!("{base}/failures-only"), Some(&["failed"])).await;
    f.hook(f.other_tenant, &format!("{base}/globex"), None).await;
    let (stop, handle) = f.notifier(fast(5));

    let (event_id, event) = f.publish(TaskStatus::Succeeded).await;
    f.wait_for(ok, "delivered", Duration::from_secs(10)).await;
    f.wait_for(flaky, "delivered", Duration::from_secs(15)).await;
    // Long enough for a wrongly scheduled extra attempt (the cap is 2 s) to arrive.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let calls = listener.calls("flaky");
    assert_eq!(calls.len(), 3, "two failures, then one success, then nothing: {calls:?}");
    let attempts: Vec<&str> = calls.iter().map(|c| c.headers["x-berth-delivery-attempt"].to_str().unwrap()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    // Exponential backoff: at least 1 s, then at least 2 s, between the calls.
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(950), "first wait {gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1950), "second wait {gaps:?}");
    assert!(gaps[1] > gaps[0], "the wait grows: {gaps:?}");
    let delivery_id = calls[0].headers["x-berth-delivery-id"].to_str().unwrap().to_owned();
    for c in &calls {
        verify(&flaky_secret, c);
        assert_eq!(c.body, calls[0].body, "every attempt sends the same bytes");
        assert_eq!(c.headers["x-berth-delivery-id"].to_str().unwrap(), delivery_id);
        assert_eq!(c.headers["x-berth-event-id"].to_str().unwrap(), event_id);
        assert_eq!(c.headers["content-type"], "application/json");
    }
    let body: Value = serde_json::from_str(&calls[0].body).unwrap();
    assert_eq!(body["type"], "task.succeeded");
    assert_eq!(body["event_id"], event_id.as_str());
    assert_eq!(body["data"]["task_id"], event.task_id.to_string());
    assert_eq!(body["data"]["tenant_id"], f.tenant.to_string());
    assert_eq!(body["data"]["node"], "sim-1");

    let ok_calls = listener.calls("ok");
    assert_eq!(ok_calls.len(), 1);
    verify(&ok_secret, &ok_calls[0]);
    assert_ne!(ok_calls[0].headers["x-berth-delivery-id"].to_str().unwrap(), delivery_id, "one delivery per hook");
    assert!(listener.calls("failures-only").is_empty(), "the status filter");
    assert!(listener.calls("globex").is_empty(), "another tenant's hook");

    let (status, attempts, code, error) = f.delivery(flaky).await.unwrap();
    assert_eq!((status.as_str(), attempts, code, error), ("delivered", 3, Some(200), None));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), handle).await.expect("the notifier stops").unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn a_hook_that_always_fails_gets_exactly_max_attempts_calls(pool: PgPool) {
    let f = fixture(pool).await;
    let listener =
        Listener { fail_first: Arc::new(HashMap::from([("down".to_string(), u32::MAX)])), ..Listener::default() };
    let base = listen(listener.clone()).await;
    let (down, _) = f.hook(f.tenant, &format!("{base}/down"), None).await;
    let (stop, handle) = f.notifier(fast(3));
    f.publish(TaskStatus::Failed).await;
    f.wait_for(down, "failed", Duration::from_secs(15)).await;
    // apalis-redis would retry a failed job after 1 s, 2 s, … on its own: wait past that.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(listener.calls("down").len(), 3, "max_attempts calls and no more");
    let (status, attempts, code, error) = f.delivery(down).await.unwrap();
    assert_eq!((status.as_str(), attempts, code), ("failed", 3, Some(500)));
    assert!(error.as_deref().unwrap_or_default().starts_with("HTTP 500"), "{error:?}");
    // The last job ended with AbortError: apalis-redis holds it as dead, not scheduled.
    let storage = webhooks::storage(&f.queue, &fast(3)).await.unwrap();
    let mut conn = f.queue.connection();
    let (dead, scheduled): (u64, u64) = redis::pipe()
        .cmd("SCARD")
        .arg(storage.get_config().dead_jobs_set())
        .cmd("ZCARD")
        .arg(storage.get_config().scheduled_jobs_set())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((dead, scheduled), (1, 0));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), handle).await.expect("the notifier stops").unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn an_event_handled_twice_makes_one_delivery_and_one_job(pool: PgPool) {
    let f = fixture(pool).await;
    let (hook, _) = f.hook(f.tenant, "http://127.0.0.1:9/never", None).await;
    let config = fast(3);
    let storage = webhooks::storage(&f.queue, &config).await.unwrap();
    let fanout = FanOut::new(f.pool.clone(), f.queue.clone(), storage.clone(), config, "test-fanout".into());
    let (id, event) = f.publish(TaskStatus::Running).await;
    // As after a notifier died between pushing and acknowledging: the event comes again.
    assert_eq!(fanout.handle_event(&id, &event).await.unwrap(), 1);
    assert_eq!(fanout.handle_event(&id, &event).await.unwrap(), 1);
    let (n,): (i64,) = sqlx::query_as("select count(*) from webhook_deliveries where webhook_id = $1")
        .bind(hook)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "one delivery row");
    assert_eq!(fanout.backlog().await.unwrap(), 1, "the second push was dropped by its idempotency key");
    // A later event is a delivery of its own.
    let (id2, event2) = f.publish(TaskStatus::Succeeded).await;
    assert_eq!(fanout.handle_event(&id2, &event2).await.unwrap(), 1);
    assert_eq!(fanout.backlog().await.unwrap(), 2);
}

/// With `allow_private_networks` off (the default), a hook on a loopback address, given
/// literally or by a name that resolves to it, is never called: each attempt fails as
/// blocked, and the failure says nothing about what listens there.
#[sqlx::test(migrations = "../migrations")]
async fn a_hook_on_a_private_address_is_never_called_by_default(pool: PgPool) {
    let f = fixture(pool).await;
    let listener = Listener::default();
    let base = listen(listener.clone()).await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let (literal, _) = f.hook(f.tenant, &format!("{base}/literal"), None).await;
    let (named, _) = f.hook(f.tenant, &format!("http://localhost:{port}/named"), None).await;
    let config = WebhooksConfig { allow_private_networks: false, ..fast(2) };
    let (stop, handle) = f.notifier(config);
    f.publish(TaskStatus::Failed).await;
    for hook in [literal, named] {
        f.wait_for(hook, "failed", Duration::from_secs(15)).await;
        let (_, attempts, code, error) = f.delivery(hook).await.unwrap();
        assert_eq!((attempts, code), (2, None));
        assert_eq!(error.as_deref(), Some(webhooks::BLOCKED));
    }
    assert!(listener.calls("literal").is_empty() && listener.calls("named").is_empty(), "nothing reached it");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), handle).await.expect("the notifier stops").unwrap();
}

/// Redis loses its data (a flush, a failover without persistence): the next event still
/// reaches the hook, because the notifier makes its consumer group again.
#[sqlx::test(migrations = "../migrations")]
async fn deliveries_go_on_after_redis_lost_the_event_stream(pool: PgPool) {
    let f = fixture(pool).await;
    let listener = Listener::default();
    let base = listen(listener.clone()).await;
    let (hook, _) = f.hook(f.tenant, &format!("{base}/ok"), None).await;
    let (stop, handle) = f.notifier(fast(3));
    f.publish(TaskStatus::Running).await;
    f.wait_for(hook, "delivered", Duration::from_secs(10)).await;
    let _: () = redis::cmd("DEL").arg(f.queue.keys().events()).query_async(&mut f.queue.connection()).await.unwrap();
    f.publish(TaskStatus::Succeeded).await;
    let start = Instant::now();
    while listener.calls("ok").len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(15), "the event after the loss never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(40), handle).await.expect("the notifier stops").unwrap();
}
