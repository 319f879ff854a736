//! The notifier: task events from the Redis stream to the tenants' webhooks, through apalis.
//!
//! Two halves, both run by [`run`] in every executor process:
//!
//! 1. **Fan-out.** A loop reads the task event stream through the consumer group
//!    [`berth_queue::queue::NOTIFIER_GROUP`], so the executors share it and each event is
//!    handled by one of them. For each event it finds the tenant's active hooks whose
//!    `events` filter matches, records one `webhook_deliveries` row per hook (unique on hook
//!    and stream id, so a redelivered event finds its rows instead of doubling them), pushes
//!    one apalis job per new delivery, and only then acknowledges the event. A notifier that
//!    dies between the push and the acknowledgement leaves the event pending; another takes
//!    it over after [`CLAIM_IDLE`] and pushes again, which apalis-redis drops by the job's
//!    idempotency key (`<delivery id>:<attempt>`).
//! 2. **Delivery.** An apalis worker (apalis-redis storage under the partition's
//!    `…:webhooks` namespace) runs one job per call: POST the stored body, signed.
//!
//! # Retries and apalis-redis
//!
//! apalis-redis 1.0 retries a failed job itself, after `attempt` seconds, up to a hard-coded
//! 25 times, whatever `max_attempts` says; it does not honour `RetryAfterError`. Neither is
//! the backoff we want, so a job is one call and never fails for an HTTP reason:
//!
//! - 2xx: the delivery is `delivered`; the job returns `Ok`.
//! - anything else (non-2xx, timeout, refused, redirect) before attempt `max_attempts`: the
//!   job pushes the next attempt's job scheduled `min(cap, base × 2^(n−1))` later (rounded up
//!   to whole seconds, the unit apalis-redis schedules in), records the failure on the row
//!   and returns `Ok`.
//! - a failure at attempt `max_attempts`: the row is `failed` and the job returns
//!   [`AbortError`], so apalis-redis moves it to its dead set instead of retrying it.
//!
//! Only an infrastructure error (PostgreSQL or Redis down mid-job) returns a plain error,
//! which apalis-redis retries on its own schedule; its attempt counter is checked first, so
//! past `max_attempts` runs of one job it is aborted too. Such a rerun may repeat a call that
//! was made: delivery is at least once, and receivers deduplicate by `X-Berth-Delivery-Id`.
//!
//! The other apalis-redis defects are configured around in [`storage`] and [`run`]: explicit
//! heartbeat and orphan timeouts (a dead process's jobs go back to the queue after 15 s), a
//! worker name unique per process and per monitor restart, an explicit idempotency TTL,
//! `poll_with_interval` (it would otherwise poll only on heartbeats), batch size at most the
//! concurrency, a 10 s response timeout on its connection (redis-rs's 500 ms default stops the
//! worker on one slow reply), and a bounded backlog: its fetch script fails for good once
//! more than about 8,000 jobs are due at once, so the fan-out stops reading events while
//! `webhooks.max_backlog` jobs wait.
//!
//! # What a receiver gets
//!
//! `POST <url>` with `Content-Type: application/json`, the body
//! `{"event_id", "type": "task.<status>", "created_at", "data": {task_id, tenant_id, status,
//! attempt, node?, message?}}` (the same bytes on every attempt), and the headers
//! `X-Berth-Event-Id` (the stream id), `X-Berth-Delivery-Id` (one per hook and event, the
//! same on every attempt), `X-Berth-Delivery-Attempt` (1, 2, …) and
//! `X-Berth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` (Stripe's scheme): the MAC,
//! keyed by the hook's secret string as given at creation, of `"<t>.<body>"`. `t` is the time
//! of this attempt, so a receiver may refuse old signatures (replays) as well as wrong ones.
//! Redirects are not followed (a 3xx is a failed attempt).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_redis::{Config as ApalisConfig, RedisStorage};
use berth_core::config::WebhooksConfig;
use berth_queue::{Queue, QueueError, TaskEvent};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

/// How long an event may stay unacknowledged with one notifier before another takes it over.
pub const CLAIM_IDLE: Duration = Duration::from_secs(60);
/// Events read per round trip.
const READ_BATCH: usize = 100;
/// How long a read waits for new events; also how often shutdown and the backlog are checked.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// apalis-redis worker heartbeat, and how many may be missed before the worker's in-flight
/// jobs count as orphans and go back to the queue: 5 s × 3 = 15 s.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 3;
/// How often the worker looks for due jobs (apalis-redis would otherwise look only on its
/// heartbeat).
const POLL: Duration = Duration::from_millis(200);
/// How often finished deliveries past their retention, and finished apalis jobs, are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Bytes of a failed answer's body kept as its error, for the operator.
const ERROR_BODY_BYTES: usize = 256;

/// One apalis job: one call of one delivery. The body and target live in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub delivery_id: Uuid,
    /// 1-based: the call this job makes.
    pub attempt: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("apalis: {0}")]
    Apalis(String),
}

/// The apalis-redis storage of deliveries, in `queue`'s partition, configured around its
/// defects (module docs).
pub async fn storage(queue: &Queue, config: &WebhooksConfig) -> Result<RedisStorage<DeliveryJob>, NotifierError> {
    // A connection of its own with a 5 s + 5 s = 10 s response timeout.
    let conn = queue.dedicated(Duration::from_secs(5)).await?.connection();
    let apalis = ApalisConfig::default()
        .queue(queue.keys().webhook_jobs())
        .batch_size(config.concurrency.min(16))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .lock_tasks(false)
        .persist_results(true)
        .emit_events(false)
        .idempotency_ttl(Some(idempotency_ttl(config)));
    Ok(RedisStorage::new(conn).with_config(apalis))
}

/// How long a job's idempotency key is kept: longer than a delivery can take from its first
/// push to its last attempt (every backoff and every call's timeout), and at least a day, so
/// a re-push of the same attempt is always recognised.
pub fn idempotency_ttl(config: &WebhooksConfig) -> Duration {
    let waits: Duration = (1..config.max_attempts).map(|a| config.backoff(a)).sum();
    let calls = config.timeout * config.max_attempts;
    (2 * (waits + calls)).max(Duration::from_secs(24 * 3600))
}

/// The signature header's value for `body` at Unix time `t`.
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The body sent for `event`, stream id `event_id`.
pub fn payload(event_id: &str, event: &TaskEvent) -> String {
    // The stream id's first part is the event's time in milliseconds.
    let created_at = event_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<i64>().ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    let mut data = serde_json::json!({
        "task_id": event.task_id,
        "tenant_id": event.tenant_id,
        "status": event.status,
        "attempt": event.attempt,
    });
    if let Some(n) = &event.node {
        data["node"] = n.clone().into();
    }
    if let Some(m) = &event.message {
        data["message"] = m.clone().into();
    }
    serde_json::json!({
        "event_id": event_id,
        "type": format!("task.{}", event.status.as_str()),
        "created_at": created_at,
        "data": data,
    })
    .to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The Unix second at which a job `wait` from now is due: rounded up, because apalis-redis
/// runs a job once the current whole second reaches its score, so it never runs early.
fn due_after(wait: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (now + wait).as_secs_f64().ceil() as u64
}

/// The HTTP client of webhook calls.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// The system resolver, keeping only the addresses a hook may reach
/// ([`berth_core::validate::is_public_ip`], unless `webhooks.allow_private_networks`). The
/// check is made on the addresses the call connects to, so a name that resolves to a private
/// address (or changes to one after registration) is refused too.
#[derive(Clone)]
pub struct GuardedResolver {
    inner: GaiResolver,
    allow_private: bool,
}

/// The error of a call refused by the address guard; recorded as is, and says nothing about
/// what is at the address.
pub const BLOCKED: &str =
    "the hook's address is not public (loopback, private or link-local), and webhooks.allow_private_networks is false";

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.inner.call(name);
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                resolving.await?.filter(|a| allow_private || berth_core::validate::is_public_ip(a.ip())).collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, BLOCKED));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Whether a call failed because the address guard refused every address.
fn blocked(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains(BLOCKED) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether a call to `uri` may go out: a literal address is judged here (the connector
/// does not resolve it); a name is judged by [`GuardedResolver`].
fn literal_allowed(uri: &http::Uri, allow_private: bool) -> bool {
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    allow_private || host.parse::<std::net::IpAddr>().ok().is_none_or(berth_core::validate::is_public_ip)
}

/// The HTTP client: HTTP/1.1, rustls on ring with the system's root certificates (none if
/// the system has none: https hooks then fail their calls, http ones still work). It never
/// follows redirects; the call's timeout is applied around each call.
pub fn http_client(config: &WebhooksConfig) -> HttpClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        inner: GaiResolver::new(),
        allow_private: config.allow_private_networks,
    });
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.timeout.min(Duration::from_secs(5))));
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates; https webhooks cannot be verified and will fail");
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
        }
    };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// What a job needs, shared by the worker's concurrent jobs.
#[derive(Clone)]
pub struct Deliverer {
    pool: PgPool,
    storage: RedisStorage<DeliveryJob>,
    client: HttpClient,
    config: WebhooksConfig,
}

/// How one call went.
enum Outcome {
    Delivered(u16),
    Failed { code: Option<u16>, error: String },
}

impl Deliverer {
    pub fn new(pool: PgPool, storage: RedisStorage<DeliveryJob>, config: WebhooksConfig) -> Self {
        Deliverer { pool, storage, client: http_client(&config), config }
    }

    async fn call(&self, url: &str, secret: &str, body: &str, event_id: &str, id: Uuid, attempt: u32) -> Outcome {
        match tokio::time::timeout(self.config.timeout, self.try_call(url, secret, body, event_id, id, attempt)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed { code: None, error: format!("timed out after {:?}", self.config.timeout) },
        }
    }

    async fn try_call(&self, url: &str, secret: &str, body: &str, event_id: &str, id: Uuid, attempt: u32) -> Outcome {
        let failed = |error: String| Outcome::Failed { code: None, error };
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => return failed(format!("invalid URL: {e}")),
        };
        if !literal_allowed(&uri, self.config.allow_private_networks) {
            return failed(BLOCKED.into());
        }
        let req = http::Request::post(uri)
            .header("content-type", "application/json")
            .header("user-agent", concat!("berth-webhooks/", env!("CARGO_PKG_VERSION")))
            .header("x-berth-event-id", event_id)
            .header("x-berth-delivery-id", id.to_string())
            .header("x-berth-delivery-attempt", attempt.to_string())
            .header("x-berth-signature", signature(secret, unix_now(), body))
            .body(Full::new(Bytes::from(body.to_owned())));
        let req = match req {
            Ok(r) => r,
            Err(e) => return failed(format!("invalid request: {e}")),
        };
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            // The guard's refusal alone, not the connector's wording around it.
            Err(e) if blocked(&e) => return failed(BLOCKED.into()),
            Err(e) => return failed(format!("request failed: {e:#}")),
        };
        let code = resp.status().as_u16();
        if resp.status().is_success() {
            return Outcome::Delivered(code);
        }
        // The start of the answer, for the operator; never more, whatever the server sends.
        let mut body = resp.into_body();
        let mut start = Vec::new();
        while start.len() < ERROR_BODY_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        start.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        start.truncate(ERROR_BODY_BYTES);
        let text = String::from_utf8_lossy(&start);
        let error =
            if text.trim().is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {}", text.trim()) };
        Outcome::Failed { code: Some(code), error }
    }

    /// One job (module docs). `runs` is apalis's count of runs of this very job.
    async fn handle(&self, job: DeliveryJob, runs: usize) -> Result<(), BoxDynError> {
        if runs > self.config.max_attempts as usize {
            // Recorded as failed (best effort: the database may be why it kept failing), so
            // the delivery is not shown as still being tried.
            let error = format!("gave up after {runs} runs of attempt {} that could not finish", job.attempt);
            let _ = self.finish(job.delivery_id, "failed", None, &error).await;
            return Err(AbortError::new(format!("job of {job:?} ran {runs} times; giving up")).into());
        }
        let row: Option<(String, String, i32, String, String, String, bool)> = sqlx::query_as(
            "select d.payload, d.status, d.attempts, d.event_id, w.url, w.secret, w.active
             from webhook_deliveries d join webhooks w on w.id = d.webhook_id where d.id = $1",
        )
        .bind(job.delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        // A deleted hook takes its deliveries with it: nothing more to call.
        let Some((body, status, attempts, event_id, url, secret, active)) = row else { return Ok(()) };
        let n = job.attempt as i32;
        // A finished delivery, or a stale job of an earlier attempt: already handled. The
        // same attempt again (its first run died before finishing) is allowed.
        if status != "pending" || !(attempts == n - 1 || attempts == n) {
            return Ok(());
        }
        if !active {
            self.finish(job.delivery_id, "failed", None, "the webhook is inactive").await?;
            return Ok(());
        }
        sqlx::query("update webhook_deliveries set attempts = $2, updated_at = now() where id = $1")
            .bind(job.delivery_id)
            .bind(n)
            .execute(&self.pool)
            .await?;
        match self.call(&url, &secret, &body, &event_id, job.delivery_id, job.attempt).await {
            Outcome::Delivered(code) => {
                sqlx::query(
                    "update webhook_deliveries set status = 'delivered', last_status_code = $2, last_error = null,
                            next_attempt_at = null, delivered_at = now(), updated_at = now() where id = $1",
                )
                .bind(job.delivery_id)
                .bind(i32::from(code))
                .execute(&self.pool)
                .await?;
                metrics::counter!("berth_webhook_deliveries_total", "outcome" => "delivered").increment(1);
                Ok(())
            }
            Outcome::Failed { code, error } if job.attempt >= self.config.max_attempts => {
                self.finish(job.delivery_id, "failed", code, &error).await?;
                metrics::counter!("berth_webhook_deliveries_total", "outcome" => "failed").increment(1);
                tracing::warn!(delivery = %job.delivery_id, attempts = job.attempt, %error, "webhook delivery failed for good");
                Err(AbortError::new(format!("delivery {} failed {} times: {error}", job.delivery_id, job.attempt))
                    .into())
            }
            Outcome::Failed { code, error } => {
                let wait = self.config.backoff(job.attempt);
                let due = due_after(wait);
                let next = DeliveryJob { delivery_id: job.delivery_id, attempt: job.attempt + 1 };
                push(&mut self.storage.clone(), next, Some(due)).await?;
                sqlx::query(
                    "update webhook_deliveries set last_status_code = $2, last_error = $3,
                            next_attempt_at = to_timestamp($4), updated_at = now() where id = $1",
                )
                .bind(job.delivery_id)
                .bind(code.map(i32::from))
                .bind(&error)
                .bind(due as f64)
                .execute(&self.pool)
                .await?;
                metrics::counter!("berth_webhook_attempts_failed_total").increment(1);
                tracing::info!(delivery = %job.delivery_id, attempt = job.attempt, %error, retry_in = ?wait, "webhook call failed; retrying");
                Ok(())
            }
        }
    }

    async fn finish(&self, id: Uuid, status: &str, code: Option<u16>, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update webhook_deliveries set status = $2, last_status_code = coalesce($3, last_status_code),
                    last_error = $4, next_attempt_at = null, updated_at = now() where id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(code.map(i32::from))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Pushes one attempt's job, due at Unix second `due` (now if `None`), keyed so that pushing
/// the same attempt twice makes one job.
async fn push(storage: &mut RedisStorage<DeliveryJob>, job: DeliveryJob, due: Option<u64>) -> Result<(), BoxDynError> {
    let key = format!("{}:{}", job.delivery_id, job.attempt);
    let mut task = TaskBuilder::new(job).idempotency_key(key);
    if let Some(t) = due {
        task = task.run_at_timestamp(t);
    }
    storage.push_task(task.build()).await.map_err(|e| format!("pushing a webhook job: {e}"))?;
    Ok(())
}

/// The apalis handler: one job, with the shared [`Deliverer`] and apalis's run count.
async fn deliver(job: DeliveryJob, d: Data<Arc<Deliverer>>, runs: Attempt) -> Result<(), BoxDynError> {
    d.handle(job, runs.current()).await
}

/// Where [`FanOut::run`]'s loop is.
struct LoopState {
    /// Read this consumer's unacknowledged entries before new ones.
    own_pending: bool,
    last_reclaim: tokio::time::Instant,
    last_prune: Option<tokio::time::Instant>,
}

/// The fan-out half: event stream → delivery rows → apalis jobs.
pub struct FanOut {
    pool: PgPool,
    queue: Queue,
    storage: RedisStorage<DeliveryJob>,
    config: WebhooksConfig,
    consumer: String,
}

impl FanOut {
    pub fn new(
        pool: PgPool,
        queue: Queue,
        storage: RedisStorage<DeliveryJob>,
        config: WebhooksConfig,
        consumer: String,
    ) -> Self {
        FanOut { pool, queue, storage, config, consumer }
    }

    /// Jobs waiting in apalis-redis: queued now plus scheduled for later (all of which will
    /// be due at once if the worker falls behind).
    pub async fn backlog(&self) -> Result<usize, NotifierError> {
        let c = self.storage.get_config();
        let (active, scheduled): (usize, usize) = redis::pipe()
            .cmd("LLEN")
            .arg(c.active_jobs_list())
            .cmd("ZCARD")
            .arg(c.scheduled_jobs_set())
            .query_async(&mut self.queue.connection())
            .await
            .map_err(QueueError::from)?;
        Ok(active + scheduled)
    }

    /// Records the deliveries of one event and pushes their first attempts; returns how many
    /// jobs it pushed. Idempotent: a second call for the same event pushes nothing new.
    pub async fn handle_event(&self, event_id: &str, event: &TaskEvent) -> Result<usize, NotifierError> {
        let body = payload(event_id, event);
        // The no-op update makes `returning` give back rows that already existed, so a
        // redelivered event re-pushes its not-yet-started deliveries (deduplicated by key).
        let rows: Vec<(Uuid, i32, String)> = sqlx::query_as(
            "insert into webhook_deliveries (webhook_id, tenant_id, event_id, task_id, event_status, payload)
             select w.id, w.tenant_id, $2, $3, $4, $5 from webhooks w
             where w.tenant_id = $1 and w.active and (w.events is null or $4 = any(w.events))
             on conflict (webhook_id, event_id) do update set updated_at = webhook_deliveries.updated_at
             returning id, attempts, status",
        )
        .bind(event.tenant_id)
        .bind(event_id)
        .bind(event.task_id)
        .bind(event.status.as_str())
        .bind(&body)
        .fetch_all(&self.pool)
        .await?;
        let mut pushed = 0;
        let mut storage = self.storage.clone();
        for (id, attempts, status) in rows {
            if status == "pending" && attempts == 0 {
                push(&mut storage, DeliveryJob { delivery_id: id, attempt: 1 }, None)
                    .await
                    .map_err(|e| NotifierError::Apalis(e.to_string()))?;
                pushed += 1;
            }
        }
        Ok(pushed)
    }

    /// Handles a batch of stream entries and acknowledges them. An entry that is not a task
    /// event is logged and acknowledged (it would fail the same way forever).
    async fn handle_entries(&self, entries: &[(String, String, String)]) -> Result<(), NotifierError> {
        let mut done = Vec::with_capacity(entries.len());
        for (id, _tenant, json) in entries {
            match serde_json::from_str::<TaskEvent>(json) {
                Ok(event) => {
                    self.handle_event(id, &event).await?;
                }
                Err(e) => tracing::warn!(entry = %id, error = %e, "skipping an event that is not a task event"),
            }
            done.push(id.clone());
        }
        self.queue.ack_events(&done).await?;
        Ok(())
    }

    /// Runs until `shutdown`: reads, fans out, acknowledges; takes over dead notifiers'
    /// events; prunes old deliveries. Errors are logged and retried after a pause.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), NotifierError> {
        self.queue.ensure_event_group().await?;
        let reader = self.queue.dedicated(READ_BLOCK).await?;
        tokio::pin!(shutdown);
        let now = tokio::time::Instant::now();
        let mut st = LoopState { own_pending: true, last_reclaim: now, last_prune: None };
        loop {
            let r = tokio::select! {
                () = &mut shutdown => return Ok(()),
                r = self.step(&reader, &mut st) => r,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "webhook fan-out failed; retrying");
                st.own_pending = true;
                // Redis may have lost the group with its data (a flush, a failover without
                // persistence): make it again, or every read would fail with NOGROUP.
                if let Err(e) = self.queue.ensure_event_group_at("0").await {
                    tracing::warn!(error = %e, "re-creating the notifiers' consumer group failed");
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// One turn of [`FanOut::run`]'s loop.
    async fn step(&self, reader: &Queue, st: &mut LoopState) -> Result<(), NotifierError> {
        if st.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.prune().await?;
            st.last_prune = Some(tokio::time::Instant::now());
        }
        if self.backlog().await? >= self.config.max_backlog {
            tokio::time::sleep(READ_BLOCK).await;
            return Ok(());
        }
        if st.last_reclaim.elapsed() >= CLAIM_IDLE / 2 {
            let mut cursor = "0-0".to_string();
            loop {
                let (taken, next) = self.queue.reclaim_events(&self.consumer, CLAIM_IDLE, READ_BATCH, &cursor).await?;
                self.handle_entries(&taken).await?;
                if next == "0-0" || taken.is_empty() {
                    break;
                }
                cursor = next;
            }
            st.last_reclaim = tokio::time::Instant::now();
        }
        // Our own unacknowledged entries first (after an error), then new ones.
        let from = if st.own_pending { "0" } else { ">" };
        let entries = reader.read_event_group(&self.consumer, from, READ_BATCH, READ_BLOCK).await?;
        if st.own_pending && entries.is_empty() {
            st.own_pending = false;
        }
        self.handle_entries(&entries).await
    }

    /// Deletes finished deliveries past `webhooks.retention` and finished apalis jobs (their
    /// outcome is in PostgreSQL).
    async fn prune(&self) -> Result<(), NotifierError> {
        let old = sqlx::query(
            "delete from webhook_deliveries where status <> 'pending' and created_at < now() - make_interval(secs => $1)",
        )
        .bind(self.config.retention.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        let jobs = apalis_core::backend::Vacuum::vacuum(&mut self.storage.clone())
            .await
            .map_err(|e| NotifierError::Apalis(e.to_string()))?;
        if old > 0 || jobs > 0 {
            tracing::debug!(deliveries = old, jobs, "pruned finished webhook deliveries");
        }
        Ok(())
    }
}

/// Runs the notifier until `shutdown`: the fan-out loop and an apalis monitor with one
/// delivery worker. `name` is unique per process (`executor-<host>-<pid>-<tag>`); each
/// (re)start of the worker appends its run number, since apalis-redis refuses a name in use.
pub async fn run(
    config: WebhooksConfig,
    pool: PgPool,
    queue: Queue,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NotifierError> {
    let storage = storage(&queue, &config).await?;
    let deliverer = Arc::new(Deliverer::new(pool.clone(), storage.clone(), config.clone()));
    let fanout = FanOut::new(pool, queue, storage.clone(), config.clone(), format!("webhooks-{name}"));
    let concurrency = config.concurrency;
    let worker_name = format!("webhooks-{name}");
    let monitor = Monitor::new()
        .register(move |run| {
            WorkerBuilder::new(format!("{worker_name}-{run}"))
                .backend(storage.clone().poll_with_interval(POLL))
                .data(deliverer.clone())
                .concurrency(concurrency)
                .build(deliver)
        })
        // A worker that stops on an error (Redis away too long) comes back under a new name.
        .should_restart(|_, e| {
            tracing::warn!(error = %e, "webhook worker stopped; restarting");
            true
        })
        .shutdown_timeout(Duration::from_secs(30));
    let ctx = monitor.context();
    let monitor = tokio::spawn(monitor.run());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fanout = tokio::spawn(fanout.run(async move {
        let _ = stop_rx.await;
    }));
    shutdown.await;
    let _ = stop_tx.send(());
    let fanned = fanout.await.map_err(|e| NotifierError::Apalis(e.to_string()))?;
    let _ = ctx.shutdown();
    match monitor.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "webhook worker stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "webhook worker panicked"),
    }
    fanned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature("whsec_test", 1_700_000_000, r#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn the_payload_names_the_event_and_keeps_internals_out() {
        let event = TaskEvent {
            task_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            status: berth_core::TaskStatus::Cancelled,
            attempt: 2,
            node: None,
            message: Some("stopped".into()),
            namespace: Some("tenant-acme".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&payload("1700000000123-0", &event)).unwrap();
        assert_eq!(v["type"], "task.cancelled");
        assert_eq!(v["event_id"], "1700000000123-0");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["data"]["message"], "stopped");
        assert!(v["data"].get("namespace").is_none(), "{v}");
        assert!(v["data"].get("node").is_none(), "{v}");
    }

    #[test]
    fn a_due_time_is_never_early() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let due = due_after(Duration::from_secs(1)) as f64;
        assert!(due >= before + 1.0 && due < before + 2.1, "{due} vs {before}");
    }

    #[test]
    fn idempotency_keys_outlive_the_longest_delivery() {
        let c = WebhooksConfig::default();
        let span: Duration = (1..c.max_attempts).map(|a| c.backoff(a)).sum::<Duration>() + c.timeout * c.max_attempts;
        assert!(idempotency_ttl(&c) > span);
        assert!(idempotency_ttl(&c) >= Duration::from_secs(86_400));
    }
}
