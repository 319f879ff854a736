//! Webhooks: a tenant's HTTP endpoints that receive its task events. Registering one here
//! is all the API does; the executors' notifier (`berth_workers::webhooks`) reads the event
//! stream, POSTs each matching event, signs it with the hook's secret and retries failures.
//!
//! Every route is for tenant admins, listing included: a hook's URL often carries a token
//! or names internal hosts, and a hook is integration configuration, like the tenant's
//! users (whose list is admin-only too). The secret is shown once, in the create's answer,
//! and never again: a lost secret means deleting the hook and registering a new one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use berth_core::TaskStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, FieldError};
use crate::extract::{Query, QueryCheck, ValidJson, path_id};
use crate::tasks::PageParams;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{id}", delete(remove))
        .route("/webhooks/{id}/deliveries", get(deliveries))
}

/// Longest URL accepted (the common limit of browsers and proxies).
pub const MAX_URL_LEN: usize = 2048;
const MAX_DESCRIPTION_LEN: usize = 1000;

/// A registered hook, as listed: never with its secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub tenant_id: Uuid,
    #[schema(example = "https://ci.example.com/berth-hook")]
    pub url: String,
    /// The task statuses delivered; null for every event.
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub active: bool,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

const WEBHOOK_COLUMNS: &str = "id, tenant_id, url, events, description, active, created_by, created_at";

/// The create's answer: the hook and, this once, its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The HMAC-SHA256 key of `X-Berth-Signature`. Shown only in this answer.
    #[schema(example = "whsec_6f1c0e…")]
    pub secret: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An `http` or `https` URL with a host, without credentials or a fragment.
    #[schema(example = "https://ci.example.com/berth-hook")]
    pub url: String,
    /// Task statuses to deliver (`pending`, `scheduled`, `running`, `succeeded`, `failed`,
    /// `cancelled`); omit or null for every event.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Checks a hook's target: what a notifier can call, and nothing it would leak in a list.
/// Unless `allow_private` (`webhooks.allow_private_networks`), a literal address that is not
/// public, and `localhost`, are refused here; names are checked again at every call, after
/// they are resolved.
pub fn check_url(raw: &str, allow_private: bool) -> Result<(), String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    // The parser would drop or escape them, but the URL is stored and called as given (and
    // PostgreSQL's text cannot hold NUL).
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    let u = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("scheme must be http or https, not {:?}", u.scheme()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    // Credentials in a URL end up in logs and in every admin's list; the signature is how a
    // receiver knows the call is berth's.
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain credentials (user:password@); verify X-Berth-Signature instead".into());
    }
    if u.fragment().is_some() {
        return Err("must not have a fragment (#...): it is never sent".into());
    }
    if !allow_private {
        let private = match u.host() {
            Some(url::Host::Ipv4(ip)) => !berth_core::validate::is_public_ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => !berth_core::validate::is_public_ip(ip.into()),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
            None => false,
        };
        if private {
            return Err(
                "must be a public address: loopback, private and link-local ones are refused (webhooks.allow_private_networks)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The statuses, deduplicated in the order given; errors name the bad entry.
fn check_events(events: &[String]) -> Result<Vec<String>, FieldError> {
    if events.is_empty() {
        return Err(FieldError::new("events", "must name at least one status, or be omitted for every event"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.parse::<TaskStatus>().is_err() {
            let known: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            return Err(FieldError::new(
                format!("events[{i}]"),
                format!("unknown status {e:?} (expected one of {})", known.join(", ")),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// `whsec_` and 32 random bytes in hex: 256 bits, the HMAC-SHA256 block's worth of key.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("whsec_{hex}")
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "Webhooks", summary = "Register a webhook", request_body = CreateWebhook,
    responses((status = 201, description = "Registered; the answer carries the secret, shown only this once", body = crate::openapi::CreatedWebhookResponse),
              (status = 409, description = "The tenant has `webhooks.max_per_tenant` hooks already", body = crate::openapi::Error)))]
async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<CreateWebhook>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut errs = Vec::new();
    if let Err(e) = check_url(&req.url, s.config.webhooks.allow_private_networks) {
        errs.push(FieldError::new("url", e));
    }
    let events = match req.events.as_deref().map(check_events).transpose() {
        Ok(e) => e,
        Err(e) => {
            errs.push(e);
            None
        }
    };
    if let Some(d) = &req.description
        && (d.chars().count() > MAX_DESCRIPTION_LEN || d.contains('\0'))
    {
        errs.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters, without NUL"),
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let secret = new_secret();
    let mut tx = s.pool.begin().await?;
    // The tenant's row is the lock that makes count-then-insert safe across API replicas.
    sqlx::query("select id from tenants where id = $1 for update").bind(caller.tenant_id).execute(&mut *tx).await?;
    let (count,): (i64,) = sqlx::query_as("select count(*) from webhooks where tenant_id = $1")
        .bind(caller.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
    let limit = s.config.webhooks.max_per_tenant;
    if count >= i64::from(limit) {
        return Err(ApiError::Conflict(format!(
            "the tenant has {count} webhooks, the most allowed (webhooks.max_per_tenant = {limit}); delete one first"
        )));
    }
    let webhook: Webhook = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into webhooks (tenant_id, url, secret, events, description, created_by)
         values ($1, $2, $3, $4, $5, $6) returning {WEBHOOK_COLUMNS}"
    )))
    .bind(caller.tenant_id)
    .bind(&req.url)
    .bind(&secret)
    .bind(&events)
    .bind(&req.description)
    .bind(caller.user_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let created = CreatedWebhook { webhook, secret };
    Ok((StatusCode::CREATED, Json(json!({ "data": created, "message": "Webhook created successfully" }))))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "Webhooks", summary = "List the tenant's webhooks (without secrets)", params(PageParams),
    responses((status = 200, description = "A page of webhooks, oldest first", body = crate::openapi::WebhookList)))]
async fn list(State(s): State<AppState>, caller: Caller, Query(p): Query<PageParams>) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    q.finish()?;
    let (total,): (i64,) = sqlx::query_as("select count(*) from webhooks where tenant_id = $1")
        .bind(caller.tenant_id)
        .fetch_one(&s.pool)
        .await?;
    let rows: Vec<Webhook> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {WEBHOOK_COLUMNS} from webhooks where tenant_id = $1 order by created_at, id limit $2 offset $3"
    )))
    .bind(caller.tenant_id)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": rows, "pagination": page.json(total) })))
}

/// The hook `id` of the caller's tenant; another tenant's is not found.
async fn owned(s: &AppState, caller: &Caller, raw: &str) -> Result<Uuid, ApiError> {
    let id = path_id(raw, "webhook")?;
    let found: Option<(Uuid,)> = sqlx::query_as("select id from webhooks where id = $1 and tenant_id = $2")
        .bind(id)
        .bind(caller.tenant_id)
        .fetch_optional(&s.pool)
        .await?;
    found.map(|(id,)| id).ok_or_else(|| ApiError::NotFound("Webhook not found".into()))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "Webhooks", summary = "Delete a webhook", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 204, description = "Deleted, with its delivery history; calls already scheduled are not made")))]
async fn remove(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<StatusCode, ApiError> {
    let id = path_id(&raw, "webhook")?;
    let deleted = sqlx::query("delete from webhooks where id = $1 and tenant_id = $2")
        .bind(id)
        .bind(caller.tenant_id)
        .execute(&s.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound("Webhook not found".into()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// One event's delivery to one hook.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Delivery {
    /// Also the `X-Berth-Delivery-Id` header: the same on every attempt.
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The event's id on the stream: the `X-Berth-Event-Id` header and the SSE id.
    pub event_id: String,
    pub task_id: Uuid,
    /// The task status the event reports.
    pub event_status: String,
    /// `pending` (being tried), `delivered` (a 2xx answer) or `failed` (every attempt failed).
    pub status: String,
    /// Calls made so far.
    pub attempts: i32,
    /// The last answer's status code; null if there was no answer (timeout, refused).
    pub last_status_code: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    #[param(value_type = Option<i64>, minimum = 1)]
    pub page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "Webhooks", summary = "A webhook's deliveries, newest first",
    params(("id" = uuid::Uuid, Path, description = "The object's id"), DeliveryParams),
    responses((status = 200, description = "A page of deliveries", body = crate::openapi::DeliveryList)))]
async fn deliveries(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(p): Query<DeliveryParams>,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    let status = q.one_of("status", p.status.as_deref(), &["pending", "delivered", "failed"]);
    q.finish()?;
    let id = owned(&s, &caller, &raw).await?;
    let (total,): (i64,) = sqlx::query_as(
        "select count(*) from webhook_deliveries where webhook_id = $1 and ($2::text is null or status = $2)",
    )
    .bind(id)
    .bind(&status)
    .fetch_one(&s.pool)
    .await?;
    let rows: Vec<Delivery> = sqlx::query_as(
        "select id, webhook_id, event_id, task_id, event_status, status, attempts, last_status_code, last_error,
                next_attempt_at, created_at, updated_at, delivered_at
         from webhook_deliveries where webhook_id = $1 and ($2::text is null or status = $2)
         order by created_at desc, id limit $3 offset $4",
    )
    .bind(id)
    .bind(&status)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": rows, "pagination": page.json(total) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example.com/berth?x=1", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok(), "private networks allowed");
        for internal in [
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/",
            "http://[::1]/",
            "http://[::ffff:192.168.0.1]/",
            "http://localhost:9000/",
            "http://api.localhost./",
        ] {
            let e = check_url(internal, false).unwrap_err();
            assert!(e.contains("public address"), "{internal}: {e}");
        }
        for (bad, why) in [
            ("ftp://example.com/", "scheme"),
            ("hooks.example.com/berth", "not a URL"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://example.com/#frag", "fragment"),
            ("file:///etc/passwd", "scheme"),
            ("http://:80/x", "host"),
            ("https://example.com/a\u{0}b", "control"),
            (" https://example.com/", "spaces"),
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)), false).is_err());
    }

    #[test]
    fn events_are_known_statuses_deduplicated() {
        assert_eq!(
            check_events(&["failed".into(), "succeeded".into(), "failed".into()]).unwrap(),
            ["failed", "succeeded"]
        );
        assert_eq!(check_events(&["done".into()]).unwrap_err().field, "events[0]");
        assert_eq!(check_events(&[]).unwrap_err().field, "events");
    }

    #[test]
    fn secrets_are_random_and_long() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), "whsec_".len() + 64);
    }
}
