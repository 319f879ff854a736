//! `/metrics`: Prometheus text exposition of the process's metrics (DESIGN.md §10).
//!
//! The recorder is process-wide, so under `berth dev` the scheduler's and executor's
//! counters appear here too. Queue depth per tenant is read from Redis at scrape time.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from a cache hit to a slow batch admission.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Installs the process's recorder once; later calls return the same handle. `None` if
/// another recorder was installed first (then this endpoint reports nothing).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().set_buckets(&BUCKETS).ok().and_then(|b| b.install_recorder().ok()))
        .as_ref()
}

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

#[utoipa::path(get, path = "/metrics", tag = "Operations", summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
async fn render(State(s): State<AppState>) -> Response {
    // Best effort: a Redis hiccup leaves the last depths in place rather than failing the scrape.
    if let Ok(depths) = s.queue.ready_depths().await {
        for (tenant, n) in depths {
            metrics::gauge!("berth_queue_ready_tasks", "tenant" => tenant).set(n as f64);
        }
    }
    let body = install().map(|h| h.render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Serves `/metrics` and `/healthz` for a role without the API (`berth scheduler`,
/// `berth executor`), until `shutdown` resolves.
pub async fn serve_standalone(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    install();
    let app: Router = Router::new()
        .route(
            "/metrics",
            get(|| async {
                let body = install().map(|h| h.render()).unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Counts every routed request by method, route template and status, and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("berth_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("berth_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
