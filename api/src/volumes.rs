//! Volumes: a tenant's persistent storage, mounted by tasks through `volumes` in
//! CreateTaskRequest. Each becomes a PersistentVolumeClaim named after it in the tenant's
//! namespace; its status follows the claim (`pending` → `bound`), which the executor's
//! volume syncer reports.

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
use crate::rbac::Access;

pub fn router() -> Router<AppState> {
    Router::new().route("/volumes", get(list).post(create)).route("/volumes/{id}", get(get_one).delete(delete))
}

pub const ACCESS_MODES: [&str; 3] = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"];
/// Largest volume accepted: 1 PiB, far above any real claim, so a typo (`"10Ei"`) is caught.
const MAX_SIZE: u64 = 1 << 50;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Volume {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub size: String,
    pub storage_class: Option<String>,
    pub access_mode: String,
    pub pvc_name: Option<String>,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

const VOLUME_COLUMNS: &str =
    "id, tenant_id, user_id, name, size, storage_class, access_mode, pvc_name, status, created_at, updated_at";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    #[schema(example = "data", pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    pub name: String,
    pub size: crate::tasks::QuantityInput,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub access_mode: Option<String>,
}

#[utoipa::path(post, path = "/v1/volumes", tag = "Volumes", summary = "Create a volume", request_body = CreateVolume,
    responses((status = 201, description = "Volume created", body = crate::openapi::VolumeResponse), (status = 409, description = "A volume of that name exists", body = crate::openapi::Error)))]
async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<CreateVolume>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut errs = Vec::new();
    // The claim is named after the volume, so the name must be a valid object name.
    if let Err(e) = validate::dns_label(&req.name) {
        errs.push(FieldError::new("name", e));
    }
    let size = req.size.text();
    match quantity::parse_bytes(&size) {
        Ok(0) => errs.push(FieldError::new("size", "must be positive")),
        Ok(b) if b > MAX_SIZE => errs.push(FieldError::new("size", "must be at most 1Pi")),
        Ok(_) => {}
        Err(e) => errs.push(FieldError::new("size", e.to_string())),
    }
    if let Some(c) = &req.storage_class
        && let Err(e) = validate::dns_subdomain(c)
    {
        errs.push(FieldError::new("storage_class", e));
    }
    if let Some(m) = &req.access_mode
        && !ACCESS_MODES.contains(&m.as_str())
    {
        errs.push(FieldError::new("access_mode", format!("must be one of {}", ACCESS_MODES.join(", "))));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let v: Volume = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into volumes (tenant_id, user_id, name, size, storage_class, access_mode, pvc_name)
         values ($1, $2, $3, $4, $5, $6, $3) returning {VOLUME_COLUMNS}"
    )))
    .bind(caller.tenant_id)
    .bind(caller.user_id)
    .bind(&req.name)
    .bind(&size)
    .bind(&req.storage_class)
    .bind(req.access_mode.as_deref().unwrap_or("ReadWriteOnce"))
    .fetch_one(&s.pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::Conflict(format!("a volume named {:?} already exists", req.name))
        }
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            ApiError::Unauthorized("the token's user no longer exists".into())
        }
        _ => ApiError::Database(e),
    })?;
    Ok((StatusCode::CREATED, Json(json!({ "data": v, "message": "Volume created successfully" }))))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(value_type = Option<i64>, minimum = 1)]
    pub page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    /// `pending`, `bound` or `lost`.
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/v1/volumes", tag = "Volumes", summary = "List the tenant's volumes", params(ListParams),
    responses((status = 200, description = "A page of volumes", body = crate::openapi::VolumeList)))]
async fn list(State(s): State<AppState>, caller: Caller, Query(p): Query<ListParams>) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    let status = q.one_of("status", p.status.as_deref(), &["pending", "bound", "lost", "failed"]);
    q.finish()?;
    let (total,): (i64,) =
        sqlx::query_as("select count(*) from volumes where tenant_id = $1 and ($2::text is null or status = $2)")
            .bind(caller.tenant_id)
            .bind(&status)
            .fetch_one(&s.pool)
            .await?;
    let rows: Vec<Volume> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {VOLUME_COLUMNS} from volumes where tenant_id = $1 and ($2::text is null or status = $2)
         order by name limit $3 offset $4"
    )))
    .bind(caller.tenant_id)
    .bind(&status)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": rows, "pagination": page.json(total) })))
}

async fn fetch(s: &AppState, caller: &Caller, id: Uuid) -> Result<Volume, ApiError> {
    let v: Option<Volume> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {VOLUME_COLUMNS} from volumes where id = $1 and tenant_id = $2"
    )))
    .bind(id)
    .bind(caller.tenant_id)
    .fetch_optional(&s.pool)
    .await?;
    v.ok_or_else(|| ApiError::NotFound("Volume not found".into()))
}

#[utoipa::path(get, path = "/v1/volumes/{id}", tag = "Volumes", summary = "Get a volume", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "The volume", body = crate::openapi::VolumeResponse)))]
async fn get_one(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": fetch(&s, &caller, path_id(&raw, "volume")?).await? })))
}

#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "Volumes", summary = "Delete a volume", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Deleted", body = crate::openapi::Message), (status = 409, description = "A live task mounts it", body = crate::openapi::Error)))]
async fn delete(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let v = fetch(&s, &caller, path_id(&raw, "volume")?).await?;
    if !(caller.level() >= Access::TenantAdmin || v.user_id == caller.user_id) {
        return Err(ApiError::Forbidden);
    }
    let mut tx = s.pool.begin().await?;
    let (live,): (i64,) = sqlx::query_as(
        "select count(*) from task_volumes tv join tasks t on t.id = tv.task_id
         where tv.volume_id = $1 and t.status in ('pending', 'scheduled', 'running')",
    )
    .bind(v.id)
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        return Err(ApiError::Conflict(format!("the volume is mounted by {live} live tasks")));
    }
    sqlx::query("delete from volumes where id = $1").bind(v.id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Json(json!({ "message": "Volume deleted successfully" })))
}
