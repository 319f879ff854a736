//! The API's one error type. Every failure a handler can meet maps to a status and a
//! `{"error": ..., "details": ...}` body (the seed's shape). Internal errors are logged with
//! the request's span and answered without internals.

use std::any::Any;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a field is invalid: 400, naming every bad field.
    #[error("invalid request: {error}")]
    BadRequest { error: String, fields: Vec<FieldError> },
    /// Missing, malformed, expired or forged credentials: 401.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden")]
    Forbidden,
    /// Absent, or another tenant's (which must look the same): 404.
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Admitting the task would exceed its tenant's quota: 409 with what was asked and what
    /// is left, as the seed's QuotaExceeded response.
    #[error("quota exceeded")]
    QuotaExceeded { requested: Value, available: Value },
    /// The caller's tenant or account is suspended: 403.
    #[error("suspended: {0}")]
    Suspended(String),
    /// Too many attempts (logins): 429 with Retry-After.
    #[error("rate limited")]
    TooManyRequests { what: &'static str, retry_after: std::time::Duration },
    /// The request contradicts the current state (a duplicate name, a live dependant): 409.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The body is larger than `api.body_limit_bytes`: 413.
    #[error("payload too large")]
    TooLarge(String),
    /// A dependency is down: 503, so clients retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("queue error")]
    Queue(#[from] berth_queue::QueueError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::invalid(vec![FieldError::new(field, message)])
    }

    pub fn invalid(fields: Vec<FieldError>) -> ApiError {
        ApiError::BadRequest { error: "Invalid request body".into(), fields }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) | ApiError::QuotaExceeded { .. } => StatusCode::CONFLICT,
            ApiError::Suspended(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(sqlx::Error::PoolTimedOut) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Queue(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        match self {
            ApiError::BadRequest { error, fields } => {
                let details =
                    fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ");
                json!({ "error": error, "details": details, "fields": fields })
            }
            ApiError::Unauthorized(why) => {
                json!({ "error": "Unauthorized access", "details": why })
            }
            ApiError::Forbidden => json!({ "error": "Insufficient permissions" }),
            ApiError::NotFound(what) => json!({ "error": what }),
            ApiError::MethodNotAllowed => json!({ "error": "Method not allowed" }),
            ApiError::Conflict(why) => json!({ "error": why }),
            ApiError::QuotaExceeded { requested, available } => {
                json!({ "error": "Resource quota exceeded", "details": { "requested": requested, "available": available } })
            }
            ApiError::TooManyRequests { what, retry_after } => {
                json!({ "error": format!("Too many {what}"), "details": format!("retry in {}s", retry_after.as_secs().max(1)) })
            }
            ApiError::Suspended(why) => json!({ "error": "Insufficient permissions", "details": why }),
            ApiError::TooLarge(why) => json!({ "error": "Request body too large", "details": why }),
            ApiError::Unavailable(why) => json!({ "error": "Service unavailable", "details": why }),
            ApiError::Database(sqlx::Error::PoolTimedOut) => {
                json!({ "error": "Service unavailable", "details": "database busy, retry later" })
            }
            ApiError::Database(_) | ApiError::Queue(_) | ApiError::Internal(_) => {
                json!({ "error": "Internal server error" })
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            // Whole seconds, rounded up: a client that waits this long is let in.
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// A handler panicked: answer 500 without internals (the panic is logged by the hook).
pub fn panic_response(_err: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal("panic".into()).into_response()
}
