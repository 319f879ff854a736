//! berth's REST API (DESIGN.md §8): axum routers over PostgreSQL and the Redis queue.
//!
//! - [`error`]: [`ApiError`], the one HTTP error type: status codes and `{error, details}`.
//! - [`extract`]: [`extract::ValidJson`], JSON bodies whose errors name the field.
//! - [`auth`]: passwords (argon2id), JWTs, the [`auth::Caller`] extractor, `POST /v1/auth/login`.
//! - [`rbac`]: who may call what, in one table, enforced by one middleware.
//! - [`tasks`]: `POST /v1/tasks`, `GET /v1/tasks`, `GET /v1/tasks/{id}`.
//! - [`admission`]: concurrent admissions of a tenant merged into shared transactions.
//! - [`tenants`]: tenants and their quotas (platform admins).
//! - [`admin`]: `GET /v1/admin/policy`, the scheduling policy each scheduler replica runs.
//! - [`users`]: a tenant's users (tenant admins; platform admins for any tenant).
//! - [`volumes`]: a tenant's persistent volumes.
//! - [`events`]: `GET /v1/events`, Server-Sent Events of the tenant's task changes.
//! - [`webhooks`]: a tenant's webhooks (tenant admins); delivery is the executors' notifier.
//! - [`metrics`]: `/metrics` for Prometheus, and the request counter every route passes.
//! - [`health`]: `/healthz`, `/readyz`.
//! - [`openapi`]: `/openapi.json` from the handlers' annotations, Swagger UI at `/docs`.
//! - [`bootstrap`]: the platform admin (every start) and the dev accounts (`berth dev`).
//!
//! Start at [`router`]; [`serve`] runs it on a listener until shutdown.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod bootstrap;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod rbac;
pub mod tasks;
pub mod tenants;
pub mod users;
pub mod volumes;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use berth_core::config::Config;
use berth_queue::Queue;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub queue: Queue,
    pub auth: Arc<auth::AuthKeys>,
    pub config: Arc<Config>,
    /// The process's one follower of the Redis event stream, shared by SSE clients.
    pub fanout: Arc<events::Fanout>,
    /// Merges a tenant's concurrent single-task admissions.
    pub admissions: Arc<admission::Admissions>,
    /// Permits for log followers (`api.max_log_followers`), each holding a Redis connection.
    pub log_followers: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(pool: PgPool, queue: Queue, config: Config) -> Result<AppState, jsonwebtoken::errors::Error> {
        let auth = Arc::new(auth::AuthKeys::new(&config.auth)?);
        metrics::install();
        let log_followers = Arc::new(tokio::sync::Semaphore::new(config.api.max_log_followers));
        Ok(AppState {
            pool,
            queue,
            auth,
            config: Arc::new(config),
            fanout: Arc::default(),
            admissions: Arc::default(),
            log_followers,
        })
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.api.body_limit_bytes;
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .nest(
            "/v1",
            auth::router()
                .merge(tasks::router())
                .merge(tenants::router())
                .merge(users::router())
                .merge(volumes::router())
                .merge(events::router())
                .merge(webhooks::router())
                .merge(admin::router()),
        )
        // After routing, so the middleware sees which route matched.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), rbac::enforce))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(|| async { ApiError::NotFound("Resource not found".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // After the RBAC layer: the document and its viewer are public, and not API routes.
        .merge(openapi::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then drains open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Connect info gives handlers the client's address (login rate limits).
    axum::serve(listener, router(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
