//! Liveness and readiness.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// The process is alive and serving.
#[utoipa::path(get, path = "/healthz", tag = "Operations", summary = "The process is alive",
    responses((status = 200, description = "Alive", body = crate::openapi::Health)))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// PostgreSQL and Redis are both reachable.
#[utoipa::path(get, path = "/readyz", tag = "Operations", summary = "PostgreSQL and Redis are reachable",
    responses((status = 200, description = "Ready", body = crate::openapi::Ready), (status = 503, description = "A dependency is unreachable", body = crate::openapi::Ready)))]
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let pg = sqlx::query("select 1").execute(&s.pool).await.is_ok();
    let redis = s.queue.ping().await.is_ok();
    let status = if pg && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (status, Json(json!({ "status": word(pg && redis), "postgres": word(pg), "redis": word(redis) })))
}
