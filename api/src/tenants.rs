//! Tenants and their quotas (platform admins only; see [`crate::rbac`]).
//!
//! A tenant's `name` is immutable: it names the tenant's Kubernetes namespace
//! (`tenant-<name>`) and its Redis queues. Suspending a tenant refuses its users' logins and
//! submissions and holds its queued tasks in the queue until it is reactivated.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use berth_core::{quantity, validate};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, FieldError};
use crate::extract::{Query, QueryCheck, ValidJson, path_id};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tenants", get(list).post(create))
        .route("/tenants/{id}", get(get_one).patch(update).delete(delete))
        .route("/tenants/{id}/quotas", get(get_quotas).put(put_quotas))
}

/// Longest tenant name: its namespace `tenant-<name>` must stay a 63-character DNS label.
pub const MAX_TENANT_NAME: usize = 63 - "tenant-".len();
const MAX_DISPLAY_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 1000;
const MAX_WEIGHT: i64 = 1000;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: Option<String>,
    pub status: String,
    pub weight: i32,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

const TENANT_COLUMNS: &str = "id, name, display_name, description, status, weight, created_at, updated_at";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(example = "acme", pattern = r"^[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?$")]
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub quotas: Option<Quotas>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
}

fn check_text(field: &str, v: Option<&String>, max: usize, errs: &mut Vec<FieldError>) {
    if let Some(v) = v
        && (v.chars().count() > max || v.contains('\0'))
    {
        errs.push(FieldError::new(field, format!("must be at most {max} characters, without NUL")));
    }
}

fn check_weight(w: Option<i64>, errs: &mut Vec<FieldError>) {
    if w.is_some_and(|w| !(1..=MAX_WEIGHT).contains(&w)) {
        errs.push(FieldError::new("weight", format!("must be between 1 and {MAX_WEIGHT}")));
    }
}

#[utoipa::path(post, path = "/v1/tenants", tag = "Tenants", summary = "Create a tenant", request_body = CreateTenant,
    responses((status = 201, description = "Tenant created", body = crate::openapi::TenantResponse), (status = 409, description = "A tenant of that name exists", body = crate::openapi::Error)))]
async fn create(
    State(s): State<AppState>,
    ValidJson(req): ValidJson<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut errs = Vec::new();
    if let Err(e) = validate::dns_label(&req.name) {
        errs.push(FieldError::new("name", e));
    } else if req.name.len() > MAX_TENANT_NAME {
        errs.push(FieldError::new(
            "name",
            format!("must be at most {MAX_TENANT_NAME} characters (it names the namespace tenant-<name>)"),
        ));
    }
    check_text("display_name", req.display_name.as_ref(), MAX_DISPLAY_NAME, &mut errs);
    check_text("description", req.description.as_ref(), MAX_DESCRIPTION, &mut errs);
    check_weight(req.weight, &mut errs);
    let limits = req.quotas.as_ref().map(|q| q.limits("quotas", &mut errs)).unwrap_or_default();
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let mut tx = s.pool.begin().await?;
    let tenant: Tenant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into tenants (name, display_name, description, weight) values ($1, $2, $3, $4) returning {TENANT_COLUMNS}"
    )))
    .bind(&req.name)
    .bind(req.display_name.as_deref().unwrap_or(&req.name))
    .bind(&req.description)
    .bind(req.weight.unwrap_or(1) as i32)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::Conflict(format!("a tenant named {:?} already exists", req.name)),
        _ => ApiError::Database(e),
    })?;
    write_limits(&mut tx, tenant.id, &limits).await?;
    tx.commit().await?;
    tracing::info!(tenant = %tenant.name, "tenant created");
    announce(&s, tenant.id).await;
    // The reconciler copies weights from PostgreSQL on its next pass should this fail.
    if let Err(e) = s.queue.set_weight(&tenant.name, tenant.weight.max(1) as u32).await {
        tracing::warn!(tenant = %tenant.name, error = %e, "could not publish the fair-share weight; the reconciler will");
    }
    Ok((StatusCode::CREATED, Json(json!({ "data": tenant, "message": "Tenant created successfully" }))))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(value_type = Option<i64>, minimum = 1)]
    pub page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    /// `active` or `suspended`.
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/v1/tenants", tag = "Tenants", summary = "List tenants", params(ListParams),
    responses((status = 200, description = "A page of tenants", body = crate::openapi::TenantList)))]
async fn list(State(s): State<AppState>, Query(p): Query<ListParams>) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    let status = q.one_of("status", p.status.as_deref(), &["active", "suspended"]);
    q.finish()?;
    let (total,): (i64,) = sqlx::query_as("select count(*) from tenants where ($1::text is null or status = $1)")
        .bind(&status)
        .fetch_one(&s.pool)
        .await?;
    let tenants: Vec<Tenant> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {TENANT_COLUMNS} from tenants where ($1::text is null or status = $1) order by name limit $2 offset $3"
    )))
    .bind(&status)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": tenants, "pagination": page.json(total) })))
}

async fn fetch(s: &AppState, id: Uuid) -> Result<Tenant, ApiError> {
    let t: Option<Tenant> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("select {TENANT_COLUMNS} from tenants where id = $1")))
            .bind(id)
            .fetch_optional(&s.pool)
            .await?;
    t.ok_or_else(|| ApiError::NotFound("Tenant not found".into()))
}

#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "Tenants", summary = "Get a tenant", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "The tenant", body = crate::openapi::TenantResponse)))]
async fn get_one(State(s): State<AppState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = fetch(&s, path_id(&raw, "tenant")?).await?;
    Ok(Json(json!({ "data": t })))
}

#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "Tenants", summary = "Update a tenant", params(("id" = uuid::Uuid, Path, description = "The object's id")), request_body = UpdateTenant,
    responses((status = 200, description = "Updated", body = crate::openapi::TenantResponse), (status = 409, description = "The system tenant cannot be suspended", body = crate::openapi::Error)))]
async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    ValidJson(req): ValidJson<UpdateTenant>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "tenant")?;
    let mut errs = Vec::new();
    check_text("display_name", req.display_name.as_ref(), MAX_DISPLAY_NAME, &mut errs);
    check_text("description", req.description.as_ref(), MAX_DESCRIPTION, &mut errs);
    check_weight(req.weight, &mut errs);
    if let Some(st) = &req.status
        && !["active", "suspended"].contains(&st.as_str())
    {
        errs.push(FieldError::new("status", "must be active or suspended"));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let current = fetch(&s, id).await?;
    if req.status.as_deref() == Some("suspended") && current.id == caller.tenant_id {
        return Err(ApiError::Conflict("the platform's own tenant cannot be suspended".into()));
    }
    let t: Tenant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update tenants set display_name = coalesce($2, display_name), description = coalesce($3, description),
                weight = coalesce($4, weight), status = coalesce($5, status), updated_at = now()
         where id = $1 returning {TENANT_COLUMNS}"
    )))
    .bind(id)
    .bind(&req.display_name)
    .bind(&req.description)
    .bind(req.weight.map(|w| w as i32))
    .bind(&req.status)
    .fetch_one(&s.pool)
    .await?;
    if req.weight.is_some()
        && let Err(e) = s.queue.set_weight(&t.name, t.weight.max(1) as u32).await
    {
        tracing::warn!(tenant = %t.name, error = %e, "could not publish the fair-share weight; the reconciler will");
    }
    if req.status.is_some() {
        // The reconciler copies this from PostgreSQL on its next pass should this fail.
        if let Err(e) = s.queue.set_suspended(&t.name, t.status == "suspended").await {
            tracing::warn!(tenant = %t.name, error = %e, "could not update the suspended set; the reconciler will");
        }
    }
    Ok(Json(json!({ "data": t, "message": "Tenant updated successfully" })))
}

#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "Tenants", summary = "Delete a tenant", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Deleted", body = crate::openapi::Message), (status = 409, description = "The system tenant, or one with live tasks", body = crate::openapi::Error)))]
async fn delete(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "tenant")?;
    let t = fetch(&s, id).await?;
    if t.id == caller.tenant_id || t.name == s.config.bootstrap.system_tenant {
        return Err(ApiError::Conflict("the system tenant cannot be deleted".into()));
    }
    let mut tx = s.pool.begin().await?;
    // Locks the tenant against admissions in flight (they hold it FOR SHARE).
    sqlx::query("select id from tenants where id = $1 for update").bind(id).execute(&mut *tx).await?;
    let (live,): (i64,) = sqlx::query_as(
        "select count(*) from tasks where tenant_id = $1 and status in ('pending', 'scheduled', 'running')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        return Err(ApiError::Conflict(format!("the tenant has {live} live tasks; stop them first")));
    }
    sqlx::query("delete from tenants where id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, "tenant deleted");
    Ok(Json(json!({ "message": "Tenant deleted successfully" })))
}

/// A quota document: each limit a quantity (`cpu`, `memory`) or a count (`gpu`, `tasks`);
/// absent or null means unlimited.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default)]
    pub cpu: Option<crate::tasks::QuantityInput>,
    #[serde(default)]
    pub memory: Option<crate::tasks::QuantityInput>,
    #[serde(default)]
    pub gpu: Option<i64>,
    #[serde(default)]
    pub tasks: Option<i64>,
}

/// The quota kinds, as stored in `resource_quotas.resource_type`, in display order.
pub const QUOTA_KINDS: [&str; 4] = ["cpu", "memory", "gpu", "tasks"];

impl Quotas {
    /// Each limit in base units (millicores, bytes, count), by kind.
    fn limits(&self, at: &str, errs: &mut Vec<FieldError>) -> Vec<(&'static str, i64)> {
        let mut out = Vec::new();
        if let Some(q) = &self.cpu {
            match quantity::parse_cpu_millis(&q.text()) {
                Ok(v) => out.push(("cpu", v as i64)),
                Err(e) => errs.push(FieldError::new(format!("{at}.cpu"), e.to_string())),
            }
        }
        if let Some(q) = &self.memory {
            match quantity::parse_bytes(&q.text()) {
                Ok(v) => out.push(("memory", v as i64)),
                Err(e) => errs.push(FieldError::new(format!("{at}.memory"), e.to_string())),
            }
        }
        for (kind, v) in [("gpu", self.gpu), ("tasks", self.tasks)] {
            match v {
                Some(n) if n < 0 || n > i64::from(u32::MAX) => {
                    errs.push(FieldError::new(format!("{at}.{kind}"), format!("must be between 0 and {}", u32::MAX)))
                }
                Some(n) => out.push((kind, n)),
                None => {}
            }
        }
        out
    }
}

/// Replaces the tenant's limits; kinds not given become unlimited. Usage is kept.
async fn write_limits(tx: &mut sqlx::PgConnection, tenant: Uuid, limits: &[(&str, i64)]) -> Result<(), ApiError> {
    // An unlimited kind keeps counting usage (hard_limit null is not allowed by the seed's
    // schema, so "unlimited" is i64::MAX).
    for kind in QUOTA_KINDS {
        let hard = limits.iter().find(|l| l.0 == kind).map_or(i64::MAX, |l| l.1);
        sqlx::query(
            "insert into resource_quotas (tenant_id, resource_type, hard_limit, used_amount) values ($1, $2, $3, 0)
             on conflict (tenant_id, resource_type) do update set hard_limit = excluded.hard_limit, updated_at = now()",
        )
        .bind(tenant)
        .bind(kind)
        .bind(hard)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// A quota amount in the units people write: a quantity for cpu and memory, a count else.
pub(crate) fn show(kind: &str, v: i64) -> Value {
    match kind {
        "cpu" => json!(quantity::format_cpu_millis(v.max(0) as u64)),
        "memory" => json!(quantity::format_bytes(v.max(0) as u64)),
        _ => json!(v.max(0)),
    }
}

/// The tenant's quotas: `{kind: {hard, used}}`, `hard` null when unlimited.
pub async fn quota_view(pool: &sqlx::PgPool, tenant: Uuid) -> Result<Value, ApiError> {
    let rows: Vec<(String, i64, Option<i64>)> =
        sqlx::query_as("select resource_type, hard_limit, used_amount from resource_quotas where tenant_id = $1")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    let mut out = serde_json::Map::new();
    for kind in QUOTA_KINDS {
        let (hard, used) = rows.iter().find(|r| r.0 == kind).map_or((i64::MAX, 0), |r| (r.1, r.2.unwrap_or(0)));
        out.insert(
            kind.into(),
            json!({ "hard": if hard == i64::MAX { Value::Null } else { show(kind, hard) }, "used": show(kind, used) }),
        );
    }
    Ok(Value::Object(out))
}

#[utoipa::path(get, path = "/v1/tenants/{id}/quotas", tag = "Tenants", summary = "A tenant's quotas and usage", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Limits and usage by kind", body = crate::openapi::QuotaResponse)))]
async fn get_quotas(State(s): State<AppState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = fetch(&s, path_id(&raw, "tenant")?).await?;
    Ok(Json(json!({ "data": quota_view(&s.pool, t.id).await? })))
}

#[utoipa::path(put, path = "/v1/tenants/{id}/quotas", tag = "Tenants", summary = "Replace a tenant's quotas", params(("id" = uuid::Uuid, Path, description = "The object's id")), request_body = Quotas,
    responses((status = 200, description = "Limits and usage by kind", body = crate::openapi::QuotaResponse)))]
async fn put_quotas(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    ValidJson(req): ValidJson<Quotas>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "tenant")?;
    let mut errs = Vec::new();
    let limits = req.limits("", &mut errs);
    let errs: Vec<FieldError> =
        errs.into_iter().map(|e| FieldError::new(e.field.trim_start_matches('.'), e.message)).collect();
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let t = fetch(&s, id).await?;
    let mut tx = s.pool.begin().await?;
    write_limits(&mut tx, t.id, &limits).await?;
    tx.commit().await?;
    announce(&s, t.id).await;
    Ok(Json(json!({ "data": quota_view(&s.pool, t.id).await?, "message": "Quotas updated successfully" })))
}

/// Tells the executors a tenant's namespace needs ensuring (created, or its ResourceQuota
/// changed). Should it fail, the namespace is still ensured before the tenant's next task
/// reaches an executor that has not ensured it yet.
async fn announce(s: &AppState, tenant: Uuid) {
    if let Err(e) = s.queue.publish_tenant_change(tenant).await {
        tracing::warn!(%tenant, error = %e, "could not tell the executors about a tenant change");
    }
}
