//! Accounts that must exist: the platform admin (every role's first start) and, in dev mode
//! only, the demo tenant and user. Existing accounts are never modified.

use berth_core::config::{BootstrapConfig, DevConfig};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::hash_password;
use crate::error::ApiError;

/// Creates the tenant if missing; returns its id.
pub async fn ensure_tenant(pool: &PgPool, name: &str, display_name: &str, description: &str) -> Result<Uuid, ApiError> {
    sqlx::query(
        "insert into tenants (name, display_name, description) values ($1, $2, $3) on conflict (name) do nothing",
    )
    .bind(name)
    .bind(display_name)
    .bind(description)
    .execute(pool)
    .await?;
    let (id,): (Uuid,) = sqlx::query_as("select id from tenants where name = $1").bind(name).fetch_one(pool).await?;
    sqlx::query(berth_core::store::ENSURE_QUOTA_ROWS).bind(id).execute(pool).await?;
    Ok(id)
}

/// Creates the user if no user of that name exists in the tenant. Returns whether it did.
pub async fn ensure_user(
    pool: &PgPool,
    tenant_id: Uuid,
    username: &str,
    email: &str,
    password: &str,
    role: &str,
) -> Result<bool, ApiError> {
    let exists: Option<(Uuid,)> = sqlx::query_as("select id from users where tenant_id = $1 and username = $2")
        .bind(tenant_id)
        .bind(username)
        .fetch_optional(pool)
        .await?;
    if exists.is_some() {
        return Ok(false);
    }
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing: {e}")))??;
    sqlx::query(
        "insert into users (tenant_id, username, email, password_hash, role) values ($1, $2, $3, $4, $5)
         on conflict (tenant_id, username) do nothing",
    )
    .bind(tenant_id)
    .bind(username)
    .bind(email)
    .bind(hash)
    .bind(role)
    .execute(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::Internal(format!("cannot create user {username:?}: email {email:?} is taken by another user"))
        }
        _ => ApiError::Database(e),
    })?;
    Ok(true)
}

/// The built-in `system` tenant and its admin, whose admin role administers the platform.
pub async fn ensure_platform_admin(pool: &PgPool, b: &BootstrapConfig) -> Result<(), ApiError> {
    let tenant = ensure_tenant(pool, &b.system_tenant, "System", "Platform administration").await?;
    if ensure_user(pool, tenant, &b.admin_username, &b.admin_email, &b.admin_password, "admin").await? {
        tracing::info!(tenant = %b.system_tenant, user = %b.admin_username, "created the platform admin");
    }
    Ok(())
}

/// The demo tenant and user of `berth dev`.
pub async fn ensure_dev_accounts(pool: &PgPool, d: &DevConfig) -> Result<(), ApiError> {
    let tenant = ensure_tenant(pool, &d.demo_tenant, "Demo", "Created by berth dev").await?;
    if ensure_user(pool, tenant, &d.demo_username, &d.demo_email, &d.demo_password, "user").await? {
        tracing::info!(tenant = %d.demo_tenant, user = %d.demo_username, "created the demo user");
    }
    Ok(())
}
