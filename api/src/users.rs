//! Users: tenant admins manage their tenant's users; platform admins any tenant's (they name
//! the tenant with `tenant_id`). Usernames are unique per tenant, emails globally.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, UserView, hash_password};
use crate::error::{ApiError, FieldError};
use crate::extract::{Query, QueryCheck, ValidJson, path_id};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{id}", get(get_one).patch(update).delete(delete))
}

/// Shortest password accepted through the API (NIST SP 800-63B's minimum for chosen
/// passwords); the longest keeps argon2's work per login bounded.
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;
const MAX_NAME: usize = 255;
const ROLES: [&str; 3] = ["admin", "user", "viewer"];

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(example = "jane.doe", pattern = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$")]
    pub username: String,
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// The tenant to create the user in; only platform admins may name another tenant.
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn check_username(v: &str, errs: &mut Vec<FieldError>) {
    let ok = !v.is_empty()
        && v.len() <= MAX_NAME
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        errs.push(FieldError::new(
            "username",
            format!("must be 1-{MAX_NAME} letters, digits, '.', '_', '-' or '@', starting with a letter or digit"),
        ));
    }
}

fn check_email(v: &str, errs: &mut Vec<FieldError>) {
    let ok = v.len() <= MAX_NAME
        && !v.contains(char::is_whitespace)
        && !v.contains('\0')
        && v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if !ok {
        errs.push(FieldError::new("email", "must be an email address such as name@example.com"));
    }
}

fn check_password(v: &str, errs: &mut Vec<FieldError>) {
    if v.chars().count() < MIN_PASSWORD || v.len() > MAX_PASSWORD || v.contains('\0') {
        errs.push(FieldError::new(
            "password",
            format!("must be {MIN_PASSWORD} to {MAX_PASSWORD} characters, without NUL"),
        ));
    }
}

fn check_choice(field: &str, v: Option<&String>, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(v) = v
        && !allowed.contains(&v.as_str())
    {
        errs.push(FieldError::new(field, format!("must be one of {}", allowed.join(", "))));
    }
}

fn check_full_name(v: Option<&String>, errs: &mut Vec<FieldError>) {
    if v.is_some_and(|v| v.chars().count() > MAX_NAME || v.contains('\0')) {
        errs.push(FieldError::new("full_name", format!("must be at most {MAX_NAME} characters, without NUL")));
    }
}

fn unique_violation(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.constraint() == Some("users_email_unique") => {
            ApiError::Conflict("that email is already in use".into())
        }
        sqlx::Error::Database(d) if d.constraint() == Some("users_username_tenant_unique") => {
            ApiError::Conflict("that username already exists in the tenant".into())
        }
        _ => ApiError::Database(e),
    }
}

const USER_COLUMNS: &str =
    "u.id, u.tenant_id, t.name as tenant_name, u.username, u.email, u.password_hash, u.full_name,
    u.role, u.status, t.status as tenant_status, u.created_at";

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing: {e}")))?
}

#[utoipa::path(post, path = "/v1/users", tag = "Users", summary = "Create a user", request_body = CreateUser,
    responses((status = 201, description = "User created", body = crate::openapi::UserResponse), (status = 409, description = "The username (in the tenant) or the email is taken", body = crate::openapi::Error), (status = 404, description = "The named tenant does not exist", body = crate::openapi::Error)))]
async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<CreateUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut errs = Vec::new();
    check_username(&req.username, &mut errs);
    check_email(&req.email, &mut errs);
    check_password(&req.password, &mut errs);
    check_full_name(req.full_name.as_ref(), &mut errs);
    check_choice("role", req.role.as_ref(), &ROLES, &mut errs);
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let tenant = req.tenant_id.unwrap_or(caller.tenant_id);
    if !caller.may_manage_users_of(tenant) {
        // Another tenant is none of a tenant admin's business: it does not exist for them.
        return Err(ApiError::NotFound("Tenant not found".into()));
    }
    let exists: Option<(Uuid,)> =
        sqlx::query_as("select id from tenants where id = $1").bind(tenant).fetch_optional(&s.pool).await?;
    if exists.is_none() {
        return Err(ApiError::NotFound("Tenant not found".into()));
    }
    let hashed = hash(req.password).await?;
    let (id,): (Uuid,) = sqlx::query_as(
        "insert into users (tenant_id, username, email, password_hash, full_name, role) values ($1, $2, $3, $4, $5, $6) returning id",
    )
    .bind(tenant)
    .bind(&req.username)
    .bind(&req.email)
    .bind(hashed)
    .bind(&req.full_name)
    .bind(req.role.as_deref().unwrap_or("user"))
    .fetch_one(&s.pool)
    .await
    .map_err(unique_violation)?;
    let user = fetch(&s, &caller, id).await?;
    Ok((StatusCode::CREATED, Json(json!({ "data": user, "message": "User created successfully" }))))
}

/// The user if the caller may see it: its own tenant's, or any for a platform admin.
async fn fetch(s: &AppState, caller: &Caller, id: Uuid) -> Result<UserView, ApiError> {
    let row: Option<crate::auth::UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {USER_COLUMNS} from users u join tenants t on t.id = u.tenant_id where u.id = $1 and ($2 or u.tenant_id = $3)"
    )))
    .bind(id)
    .bind(caller.platform_admin)
    .bind(caller.tenant_id)
    .fetch_optional(&s.pool)
    .await?;
    row.as_ref().map(UserView::from).ok_or_else(|| ApiError::NotFound("User not found".into()))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(value_type = Option<i64>, minimum = 1)]
    pub page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    /// Another tenant's users (platform admins only).
    #[param(value_type = Option<Uuid>)]
    pub tenant_id: Option<String>,
    pub role: Option<String>,
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/v1/users", tag = "Users", summary = "List a tenant's users", params(ListParams),
    responses((status = 200, description = "A page of users", body = crate::openapi::UserList), (status = 404, description = "The named tenant does not exist", body = crate::openapi::Error)))]
async fn list(State(s): State<AppState>, caller: Caller, Query(p): Query<ListParams>) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    let tenant = q.uuid("tenant_id", p.tenant_id.as_deref()).unwrap_or(caller.tenant_id);
    let role = q.one_of("role", p.role.as_deref(), &ROLES);
    let status = q.one_of("status", p.status.as_deref(), &["active", "suspended"]);
    q.finish()?;
    if !caller.may_manage_users_of(tenant) {
        return Err(ApiError::NotFound("Tenant not found".into()));
    }
    let filter = "u.tenant_id = $1 and ($2::text is null or u.role = $2) and ($3::text is null or u.status = $3)";
    let (total,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from users u where {filter}")))
        .bind(tenant)
        .bind(&role)
        .bind(&status)
        .fetch_one(&s.pool)
        .await?;
    let rows: Vec<crate::auth::UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {USER_COLUMNS} from users u join tenants t on t.id = u.tenant_id where {filter}
         order by u.username limit $4 offset $5"
    )))
    .bind(tenant)
    .bind(&role)
    .bind(&status)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    let users: Vec<UserView> = rows.iter().map(UserView::from).collect();
    Ok(Json(json!({ "data": users, "pagination": page.json(total) })))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "Users", summary = "Get a user", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "The user", body = crate::openapi::UserResponse)))]
async fn get_one(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": fetch(&s, &caller, path_id(&raw, "user")?).await? })))
}

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "Users", summary = "Update a user", params(("id" = uuid::Uuid, Path, description = "The object's id")), request_body = UpdateUser,
    responses((status = 200, description = "Updated", body = crate::openapi::UserResponse), (status = 409, description = "An admin cannot demote or suspend themselves; the email is taken", body = crate::openapi::Error)))]
async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    ValidJson(req): ValidJson<UpdateUser>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "user")?;
    let mut errs = Vec::new();
    if let Some(e) = &req.email {
        check_email(e, &mut errs);
    }
    if let Some(p) = &req.password {
        check_password(p, &mut errs);
    }
    check_full_name(req.full_name.as_ref(), &mut errs);
    check_choice("role", req.role.as_ref(), &ROLES, &mut errs);
    check_choice("status", req.status.as_ref(), &["active", "suspended"], &mut errs);
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    fetch(&s, &caller, id).await?;
    if id == caller.user_id && (req.role.is_some() || req.status.is_some()) {
        // Otherwise the last admin could lock everyone out by demoting themselves.
        return Err(ApiError::Conflict("you cannot change your own role or status".into()));
    }
    let hashed = match req.password {
        Some(p) => Some(hash(p).await?),
        None => None,
    };
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "update users set email = coalesce($2, email), full_name = coalesce($3, full_name), role = coalesce($4, role),
                status = coalesce($5, status), password_hash = coalesce($6, password_hash), updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(&req.email)
    .bind(&req.full_name)
    .bind(&req.role)
    .bind(&req.status)
    .bind(&hashed)
    .execute(&mut *tx)
    .await
    .map_err(unique_violation)?;
    if hashed.is_some() || req.status.as_deref() == Some("suspended") {
        // A new password or a suspension ends the user's sessions.
        sqlx::query("update refresh_tokens set revoked_at = now() where user_id = $1 and revoked_at is null")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "data": fetch(&s, &caller, id).await?, "message": "User updated successfully" })))
}

#[utoipa::path(delete, path = "/v1/users/{id}", tag = "Users", summary = "Delete a user", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Deleted", body = crate::openapi::Message), (status = 409, description = "An admin cannot delete themselves", body = crate::openapi::Error)))]
async fn delete(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "user")?;
    fetch(&s, &caller, id).await?;
    if id == caller.user_id {
        return Err(ApiError::Conflict("you cannot delete yourself".into()));
    }
    let mut tx = s.pool.begin().await?;
    // Locks the user against admissions in flight (they hold it FOR SHARE).
    sqlx::query("select id from users where id = $1 for update").bind(id).execute(&mut *tx).await?;
    let (live,): (i64,) = sqlx::query_as(
        "select count(*) from tasks where user_id = $1 and status in ('pending', 'scheduled', 'running')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        return Err(ApiError::Conflict(format!("the user has {live} live tasks; stop them first")));
    }
    // The user's finished tasks go with it (the seed's schema cascades).
    sqlx::query("delete from users where id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Json(json!({ "message": "User deleted successfully" })))
}
