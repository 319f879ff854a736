//! API tests: real PostgreSQL (a fresh migrated database per test, from `#[sqlx::test]`),
//! real Redis (a partition per test), requests through the router with `oneshot`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_api::bootstrap;
use berth_core::config::Config;
use common::{api, task};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

#[sqlx::test(migrations = "../migrations")]
async fn login_answers_the_seed_shape_and_never_the_hash(pool: PgPool) {
    let a = api(pool).await;
    let (s, v) = a
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(r#"{"username":"alice","password":"alice-pw","tenant_name":"acme"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["access_token"].as_str().unwrap().split('.').count() == 3);
    assert!(!v["refresh_token"].as_str().unwrap().is_empty());
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["user"]["username"], "alice");
    assert_eq!(v["user"]["role"], "user");
    assert!(!v.to_string().contains("argon2"), "the password hash leaked: {v}");
    let (n,): (i64,) = sqlx::query_as("select count(*) from refresh_tokens").fetch_one(&a.pool).await.unwrap();
    assert_eq!(n, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn wrong_credentials_are_401_and_malformed_logins_are_400(pool: PgPool) {
    let a = api(pool).await;
    for body in [
        r#"{"username":"alice","password":"wrong"}"#,
        r#"{"username":"nobody","password":"x"}"#,
        r#"{"username":"alice","password":"alice-pw","tenant_name":"globex"}"#,
    ] {
        let (s, v) = a.call("POST", "/v1/auth/login", None, Some(body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}: {v}");
        assert_eq!(v["error"], "Unauthorized access");
    }
    for body in [
        r#"{"username":"alice"}"#,
        "{",
        r#"{"username":"","password":""}"#,
        r#"[1]"#,
        r#"{"username":"al\u0000ice","password":"x"}"#,
        r#"{"username":"alice","password":"x","tenant_name":"a\u0000"}"#,
        r#"{"username":"alice","password":"x","extra":1}"#,
    ] {
        let (s, v) = a.call("POST", "/v1/auth/login", None, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["details"].is_string(), "{v}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn suspended_users_cannot_log_in(pool: PgPool) {
    let a = api(pool).await;
    sqlx::query("update users set status = 'suspended' where username = 'bob'").execute(&a.pool).await.unwrap();
    let (s, _) = a.call("POST", "/v1/auth/login", None, Some(r#"{"username":"bob","password":"bob-pw"}"#)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_password_picks_the_account_when_a_username_exists_in_two_tenants(pool: PgPool) {
    let a = api(pool).await;
    let globex = bootstrap::ensure_tenant(&a.pool, "globex", "", "").await.unwrap();
    bootstrap::ensure_user(&a.pool, globex, "alice", "alice2@globex.test", "other-pw", "viewer").await.unwrap();
    let (s, v) = a.call("POST", "/v1/auth/login", None, Some(r#"{"username":"alice","password":"other-pw"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["user"]["role"], "viewer");
    let (s, v) = a.call("POST", "/v1/auth/login", None, Some(r#"{"username":"alice","password":"alice-pw"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["user"]["role"], "user");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_admitted_task_is_stored_and_queued(pool: PgPool) {
    let a = api(pool).await;
    let t = a.login("alice").await;
    let (s, v) = a.submit(&t, task("ml-training-job")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["message"], "Task created successfully");
    let d = &v["data"];
    assert_eq!(d["status"], "pending");
    assert_eq!(d["priority"], 50);
    assert_eq!(d["max_retry_count"], 3);
    assert_eq!(d["timeout_seconds"], json!(null), "the executor's default");
    assert_eq!(d["current_retry_count"], 0);
    assert_eq!(d["resource_requests"], json!({"cpu": "500m", "memory": "1Gi", "gpu": 1}));
    assert_eq!(d["k8s_namespace"], "tenant-acme");
    assert_eq!(d["tolerations"][0]["operator"], "Equal");
    let id: Uuid = d["id"].as_str().unwrap().parse().unwrap();
    let q = a.queue.task_state(id).await.unwrap().expect("queued in Redis");
    assert_eq!(q.state, "ready");
    let (s, v) = a.call("GET", &format!("/v1/tasks/{id}"), Some(&t), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"]["name"], "ml-training-job");
    assert_eq!(v["data"]["scheduling"]["queue_state"], "ready");

    // A timeout of its own is kept, and shown.
    let mut timed = task("timed");
    timed["timeout_seconds"] = json!(120);
    let (s, v) = a.submit(&t, timed).await;
    assert_eq!((s, v["data"]["timeout_seconds"].clone()), (StatusCode::CREATED, json!(120)), "{v}");
    let id = v["data"]["id"].as_str().unwrap();
    let (_, v) = a.call("GET", &format!("/v1/tasks/{id}"), Some(&t), None).await;
    assert_eq!(v["data"]["timeout_seconds"], 120);
}

/// An extended resource by name is stored as submitted and queued with the task's
/// reservation, so the scheduler filters and the ledger reserves it.
#[sqlx::test(migrations = "../migrations")]
async fn extended_resources_are_stored_and_queued_by_name(pool: PgPool) {
    let a = api(pool).await;
    let t = a.login("alice").await;
    let mut body = task("amd-job");
    body["resource_requests"]["extended"] = json!({"amd.com/gpu": "2", "example.com/fpga": 1});
    body["resource_limits"] = json!({"extended": {"amd.com/gpu": "2"}});
    let (s, v) = a.submit(&t, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["resource_requests"]["extended"], json!({"amd.com/gpu": "2", "example.com/fpga": "1"}));
    let claimed = a.queue.claim("check", 1, Duration::from_secs(30)).await.unwrap();
    let r = &claimed[0].spec.requests;
    assert_eq!((r.amount("amd.com/gpu"), r.amount("example.com/fpga"), r.gpu), (2, 1, 1));
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_input_is_400_naming_the_field_and_writes_nothing(pool: PgPool) {
    let a = api(pool).await;
    let t = a.login("alice").await;
    let with = |patch: Value| {
        let mut v = task("ok");
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        v.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{\"name\": ".into(), "(body)"),
        ("".into(), "(body)"),
        ("[]".into(), "(body)"),
        ("\"task\"".into(), "(body)"),
        (with(json!({"name": null})), "name"),
        (with(json!({"image": null})), "image"),
        (with(json!({"resource_requests": null})), "resource_requests"),
        (with(json!({"resource_requests": {"cpu": "12x"}})), "resource_requests.cpu"),
        (with(json!({"resource_requests": {"memory": "lots"}})), "resource_requests.memory"),
        (with(json!({"resource_requests": {"gpu": -1}})), "resource_requests.gpu"),
        (with(json!({"resource_requests": {"gpu": "one"}})), "resource_requests.gpu"),
        (with(json!({"resource_requests": {"cpus": "1"}})), "resource_requests.cpus"),
        (with(json!({"resource_limits": {"cpu": "100m"}})), "resource_limits.cpu"),
        (with(json!({"resource_requests": {"extended": {"fpga": "1"}}})), "resource_requests.extended.fpga"),
        (
            with(json!({"resource_requests": {"extended": {"amd.com/gpu": "0.5"}}})),
            "resource_requests.extended.amd.com/gpu",
        ),
        (
            with(json!({"resource_requests": {"extended": {"amd.com/gpu": "-1"}}})),
            "resource_requests.extended.amd.com/gpu",
        ),
        (
            with(json!({"resource_requests": {"extended": {"nvidia.com/gpu": "1"}}})),
            "resource_requests.extended.nvidia.com/gpu",
        ),
        (
            with(json!({"resource_requests": {"extended": {"kubernetes.io/x": "1"}}})),
            "resource_requests.extended.kubernetes.io/x",
        ),
        (
            with(json!({"resource_requests": {"cpu": "1", "extended": {"amd.com/gpu": "1"}},
                        "resource_limits": {"extended": {"amd.com/gpu": "2"}}})),
            "resource_limits.extended.amd.com/gpu",
        ),
        (
            with(json!({"resource_requests": {"extended":
                (0..9).map(|i| (format!("x{i}.io/r"), json!("1"))).collect::<serde_json::Map<_, _>>()}})),
            "resource_requests.extended",
        ),
        (with(json!({"priority": 101})), "priority"),
        (with(json!({"priority": -1})), "priority"),
        (with(json!({"priority": "high"})), "priority"),
        (with(json!({"prority": 5})), "prority"),
        (with(json!({"name": "Has Spaces"})), "name"),
        (with(json!({"name": "x".repeat(300)})), "name"),
        (with(json!({"image": "Not An Image"})), "image"),
        (with(json!({"labels": {"bad key!": "v"}})), "labels.bad key!"),
        (with(json!({"labels": {"berth.io/sim-duration": "forever"}})), "labels.berth.io/sim-duration"),
        (with(json!({"env_vars": {"1BAD": "v"}})), "env_vars.1BAD"),
        (with(json!({"tolerations": [{"key": "k", "operator": "Maybe"}]})), "tolerations[0].operator"),
        (with(json!({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]})), "tolerations[0].value"),
        (with(json!({"tolerations": [{"key": "k", "effect": "Sometimes"}]})), "tolerations[0].effect"),
        (with(json!({"volumes": [{"name": "data", "mount_path": "relative"}]})), "volumes[0].mount_path"),
        (with(json!({"volumes": [{"name": "data", "mount_path": "/data"}]})), "volumes[0].name"),
        (with(json!({"max_retry_count": 99})), "max_retry_count"),
        (with(json!({"timeout_seconds": 0})), "timeout_seconds"),
        (with(json!({"timeout_seconds": 604801})), "timeout_seconds"),
        (with(json!({"command": "python train.py"})), "command"),
    ];
    for (body, field) in &cases {
        let (s, v) = a.call("POST", "/v1/tasks", Some(&t), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
        let details = v["details"].as_str().unwrap_or_default();
        assert!(
            details.starts_with(&format!("{field}:")) || details.contains(&format!("; {field}:")),
            "{body}: expected {field} in {details:?}"
        );
    }
    assert_eq!(a.task_count().await, 0, "a rejected request wrote a task");
    assert!(
        a.queue.claim("check", 100, Duration::from_secs(1)).await.unwrap().is_empty(),
        "a rejected request queued a task"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn viewers_cannot_submit(pool: PgPool) {
    let a = api(pool).await;
    let acme = bootstrap::ensure_tenant(&a.pool, "acme", "", "").await.unwrap();
    bootstrap::ensure_user(&a.pool, acme, "vera", "vera@acme.test", "vera-pw", "viewer").await.unwrap();
    let t = a.login("vera").await;
    let (s, v) = a.submit(&t, task("nope")).await;
    assert_eq!((s, v["error"].clone()), (StatusCode::FORBIDDEN, json!("Insufficient permissions")));
    assert_eq!(a.task_count().await, 0);
    let (s, _) = a.call("GET", "/v1/tasks", Some(&t), None).await;
    assert_eq!(s, StatusCode::OK, "viewers read");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_oversized_body_is_413(pool: PgPool) {
    let a = api(pool).await;
    let t = a.login("alice").await;
    let big = json!({"name": "x", "image": "busybox", "resource_requests": {}, "description": "d".repeat(100_000)})
        .to_string();
    let (s, v) = a.call("POST", "/v1/tasks", Some(&t), Some(&big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(a.task_count().await, 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn missing_malformed_forged_and_expired_tokens_are_401(pool: PgPool) {
    let a = api(pool).await;
    let forged = {
        let other = berth_api::auth::AuthKeys::new(&berth_core::config::AuthConfig {
            jwt_secret: "attacker-secret-0123456789".into(),
            ..Default::default()
        })
        .unwrap();
        let (s, v) =
            a.call("POST", "/v1/auth/login", None, Some(r#"{"username":"alice","password":"alice-pw"}"#)).await;
        assert_eq!(s, StatusCode::OK);
        let user: Value = v["user"].clone();
        let row = berth_api::auth::UserRow {
            id: user["id"].as_str().unwrap().parse().unwrap(),
            tenant_id: user["tenant_id"].as_str().unwrap().parse().unwrap(),
            tenant_name: "acme".into(),
            username: "alice".into(),
            email: String::new(),
            password_hash: String::new(),
            full_name: None,
            role: "admin".into(),
            status: "active".into(),
            tenant_status: "active".into(),
            created_at: None,
        };
        other.issue(&row).unwrap()
    };
    let expired = {
        let mut c = Config::default().auth;
        c.access_token_ttl = Duration::from_secs(0);
        let keys = berth_api::auth::AuthKeys::new(&c).unwrap();
        let row = berth_api::auth::UserRow {
            id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            tenant_name: "acme".into(),
            username: "alice".into(),
            email: String::new(),
            password_hash: String::new(),
            full_name: None,
            role: "user".into(),
            status: "active".into(),
            tenant_status: "active".into(),
            created_at: None,
        };
        // Issued with a zero lifetime and checked past the 5s leeway.
        let t = keys.issue(&row).unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        t
    };
    for (header, why) in [
        (None, "missing Authorization header"),
        (Some("Basic YWxpY2U6eA==".to_string()), "expected 'Authorization: Bearer <token>'"),
        (Some("Bearer not-a-jwt".to_string()), "token malformed"),
        (Some(format!("Bearer {forged}")), "token signature invalid"),
        (Some(format!("Bearer {expired}")), "token expired"),
    ] {
        let mut req = Request::builder().method("POST").uri("/v1/tasks");
        if let Some(h) = &header {
            req = req.header("authorization", h);
        }
        let resp = a.router.clone().oneshot(req.body(Body::from(task("x").to_string())).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["details"], why);
    }
    assert_eq!(a.task_count().await, 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn another_tenants_task_is_404_and_never_listed(pool: PgPool) {
    let a = api(pool).await;
    let alice = a.login("alice").await;
    let gina = a.login("gina").await;
    let (_, v) = a.submit(&alice, task("secret")).await;
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let (s, v) = a.call("GET", &format!("/v1/tasks/{id}"), Some(&gina), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "Task not found");
    let (s, v) = a.call("GET", &format!("/v1/tasks/{}", Uuid::new_v4()), Some(&gina), None).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::NOT_FOUND, json!("Task not found")),
        "a missing task looks the same"
    );
    let (_, v) = a.call("GET", "/v1/tasks", Some(&gina), None).await;
    assert_eq!(v["pagination"]["total"], 0);
    let (s, _) = a.call("GET", "/v1/tasks/not-a-uuid", Some(&gina), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrations = "../migrations")]
async fn listing_paginates_and_filters(pool: PgPool) {
    let a = api(pool).await;
    let alice = a.login("alice").await;
    let bob = a.login("bob").await;
    for i in 0..23 {
        let (s, v) = a.submit(&alice, task(&format!("a-{i}"))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (_, v) = a.submit(&bob, task("b-0")).await;
    let bob_id = v["data"]["user_id"].as_str().unwrap().to_owned();
    sqlx::query("update tasks set status = 'succeeded' where name in ('a-0', 'a-1')").execute(&a.pool).await.unwrap();

    let (s, v) = a.call("GET", "/v1/tasks?page=3&page_size=10", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["pagination"], json!({"page": 3, "page_size": 10, "total": 24, "total_pages": 3}));
    assert_eq!(v["data"].as_array().unwrap().len(), 4);
    let (_, v) = a.call("GET", "/v1/tasks", Some(&alice), None).await;
    assert_eq!(v["pagination"]["page_size"], 20);
    assert_eq!(v["data"][0]["name"], "b-0", "newest first");
    let (_, v) = a.call("GET", "/v1/tasks?status=succeeded", Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 2);
    let (_, v) = a.call("GET", &format!("/v1/tasks?user_id={bob_id}"), Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 1);
    sqlx::query("update tasks set labels = labels || '{\"tier\": \"gold\"}' where name in ('a-3', 'a-4')")
        .execute(&a.pool)
        .await
        .unwrap();
    let (_, v) = a.call("GET", "/v1/tasks?labels=team=data-science,tier=gold", Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 2, "{v}");
    let (_, v) = a.call("GET", "/v1/tasks?labels=team==data-science", Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 24);
    let (_, v) = a.call("GET", "/v1/tasks?labels=team=nobody", Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 0);
    for q in [
        "page=0",
        "page=abc",
        "page_size=0",
        "page_size=101",
        "status=done",
        "user_id=bob",
        "labels=team",
        "labels=Bad%20Key=x",
    ] {
        let (s, v) = a.call("GET", &format!("/v1/tasks?{q}"), Some(&alice), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(v["details"].as_str().unwrap().starts_with(q.split('=').next().unwrap()), "{q}: {v}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn health_readiness_and_unknown_routes_answer_json(pool: PgPool) {
    let a = api(pool).await;
    assert_eq!(a.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
    let (s, v) = a.call("GET", "/readyz", None, None).await;
    assert_eq!((s, v["postgres"].clone(), v["redis"].clone()), (StatusCode::OK, json!("ok"), json!("ok")));
    let t = a.login("alice").await;
    a.submit(&t, task("counted")).await;
    let (s, v) = a.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v["raw"].as_str().unwrap_or_default();
    assert!(text.contains(r#"berth_http_requests_total{method="POST",route="/v1/tasks",status="201"} 1"#), "{text}");
    assert!(text.contains("berth_tasks_admitted_total 1"), "{text}");
    assert!(text.contains(r#"berth_queue_ready_tasks{tenant="acme"} 1"#), "{text}");
    assert!(text.contains("berth_http_request_duration_seconds_bucket"), "{text}");
    let (s, v) = a.call("GET", "/v1/nope", None, None).await;
    assert_eq!((s, v["error"].clone()), (StatusCode::NOT_FOUND, json!("Resource not found")));
    let (s, _) = a.call("DELETE", "/v1/auth/login", None, None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

/// The served document is the generated one, public, and Swagger UI is served from the binary.
#[sqlx::test(migrations = "../migrations")]
async fn openapi_document_and_swagger_ui_are_served(pool: PgPool) {
    let a = api(pool).await;
    let (s, v) = a.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, serde_json::to_value(berth_api::openapi::document()).unwrap());
    assert!(v["paths"]["/v1/tasks"]["post"]["responses"]["409"].is_object(), "quota refusal documented");
    let (s, v) = a.call("GET", "/docs/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let html = v["raw"].as_str().unwrap_or_default();
    assert!(html.contains("swagger-ui"), "{html:.200}");
    let (s, v) = a.call("GET", "/docs/swagger-initializer.js", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["raw"].as_str().unwrap_or_default().contains("/openapi.json"), "the UI loads our document");
}
