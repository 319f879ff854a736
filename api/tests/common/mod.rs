//! The API test fixture: a router over a fresh PostgreSQL database (`#[sqlx::test]`) and a
//! Redis partition of its own, with tenants acme (alice, bob) and globex (gina), all users
//! whose password is `<name>-pw`, and the platform admin (admin/admin).
#![allow(dead_code)] // each test file uses its own part of the fixture

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_api::{AppState, bootstrap};
use berth_core::config::Config;
use berth_queue::Queue;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

pub struct Api {
    pub router: Router,
    pub queue: Queue,
    pub pool: PgPool,
    pub state: AppState,
}

impl Drop for Api {
    fn drop(&mut self) {
        Queue::purge_blocking(&redis_url(), self.queue.partition());
    }
}

pub fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub async fn api(pool: PgPool) -> Api {
    api_with(pool, |_| {}).await
}

/// The fixture with `tweak` applied to its configuration.
pub async fn api_with(pool: PgPool, tweak: impl FnOnce(&mut Config)) -> Api {
    let mut config = Config::default();
    config.redis.partition = format!("test-{}", Uuid::new_v4().simple());
    config.api.body_limit_bytes = 64 * 1024;
    tweak(&mut config);
    let queue = Queue::connect(&redis_url(), &config.redis.partition)
        .await
        .expect("Redis must be running (run `make services`)");
    bootstrap::ensure_platform_admin(&pool, &config.bootstrap).await.unwrap();
    for (tenant, user) in [("acme", "alice"), ("acme", "bob"), ("globex", "gina")] {
        let tid = bootstrap::ensure_tenant(&pool, tenant, tenant, "").await.unwrap();
        bootstrap::ensure_user(&pool, tid, user, &format!("{user}@{tenant}.test"), &format!("{user}-pw"), "user")
            .await
            .unwrap();
    }
    let state = AppState::new(pool.clone(), queue.clone(), config).unwrap();
    Api { router: berth_api::router(state.clone()), queue, pool, state }
}

impl Api {
    pub async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }))
        };
        (status, v)
    }

    /// Only the status: for streaming routes (SSE), whose body never ends.
    pub async fn status_of(&self, method: &str, uri: &str, token: Option<&str>) -> StatusCode {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap().status()
    }

    pub async fn login(&self, user: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/v1/auth/login",
                None,
                Some(&json!({"username": user, "password": format!("{user}-pw")}).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn submit(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", "/v1/tasks", Some(token), Some(&body.to_string())).await
    }

    pub async fn task_count(&self) -> i64 {
        sqlx::query_as::<_, (i64,)>("select count(*) from tasks").fetch_one(&self.pool).await.unwrap().0
    }
}

pub fn task(name: &str) -> Value {
    json!({
        "name": name,
        "image": "tensorflow/tensorflow:2.13.0-gpu",
        "command": ["python", "train.py"],
        "args": ["--epochs", "100"],
        "env_vars": {"PYTHONPATH": "/app"},
        "resource_requests": {"cpu": "500m", "memory": "1Gi", "gpu": 1},
        "resource_limits": {"cpu": "1", "memory": "2Gi", "gpu": 1},
        "labels": {"project": "ml-research", "team": "data-science"},
        "node_selector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "compute-platform/dedicated", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "priority": 50
    })
}
