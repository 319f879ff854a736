//! Platform administration: which scheduling policy runs where.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/policy", get(policy))
}

#[utoipa::path(get, path = "/v1/admin/policy", tag = "Tenants", summary = "The scheduling policy each scheduler replica runs",
    responses((status = 200, description = "The configured scheduler section's version, and each live scheduler replica's version, load time and section; replicas on different versions are mid-rollout or refused a bad file", body = crate::openapi::PolicyResponse)))]
async fn policy(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let replicas = s.queue.policy_reports(berth_queue::POLICY_REPORT_MAX_AGE).await?;
    let configured = s.config.scheduler.version();
    let agree = replicas.iter().all(|r| r.version == configured);
    let replicas: Vec<Value> = replicas
        .into_iter()
        .map(|r| {
            json!({
                "replica": r.replica,
                "version": r.version,
                "loaded_at": chrono::DateTime::<chrono::Utc>::from_timestamp_millis(r.loaded_at_ms),
                "seen_at": chrono::DateTime::<chrono::Utc>::from_timestamp_millis(r.seen_at_ms),
                "config": r.config,
            })
        })
        .collect();
    Ok(Json(json!({
        "data": {
            "configured": { "version": configured, "config": s.config.scheduler },
            "schedulers": replicas,
            "consistent": agree,
        }
    })))
}
