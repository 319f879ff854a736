//! The REST API beyond the seed: RBAC on every route, tenants, quotas, users, sessions,
//! stop/delete. Real PostgreSQL and Redis, as in `api.rs`.

mod common;

use axum::http::StatusCode;
use berth_api::bootstrap;
use berth_api::rbac::{Access, ROUTES};
use common::{Api, api, api_with, task};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

async fn login(a: &Api, user: &str, password: &str) -> (StatusCode, Value) {
    a.call("POST", "/v1/auth/login", None, Some(&json!({"username": user, "password": password}).to_string())).await
}

async fn token(a: &Api, user: &str, password: &str) -> String {
    let (s, v) = login(a, user, password).await;
    assert_eq!(s, StatusCode::OK, "{user}: {v}");
    v["access_token"].as_str().unwrap().to_owned()
}

/// acme gets an admin (ada) and a viewer (vic) beside its users alice and bob.
async fn with_roles(a: &Api) {
    let acme = bootstrap::ensure_tenant(&a.pool, "acme", "", "").await.unwrap();
    bootstrap::ensure_user(&a.pool, acme, "ada", "ada@acme.test", "ada-pw", "admin").await.unwrap();
    bootstrap::ensure_user(&a.pool, acme, "vic", "vic@acme.test", "vic-pw", "viewer").await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn every_route_allows_exactly_the_roles_its_level_names(pool: PgPool) {
    let a = api(pool).await;
    with_roles(&a).await;
    let callers: Vec<(&str, Option<String>, Access)> = vec![
        ("anonymous", None, Access::Public),
        ("viewer", Some(token(&a, "vic", "vic-pw").await), Access::Read),
        ("user", Some(token(&a, "alice", "alice-pw").await), Access::Write),
        ("tenant admin", Some(token(&a, "ada", "ada-pw").await), Access::TenantAdmin),
        ("platform admin", Some(token(&a, "admin", "admin").await), Access::PlatformAdmin),
    ];
    let mut checked = 0;
    for (method, path, required) in ROUTES {
        // Logout would end the sessions the other rows still need; it is checked last.
        if *path == "/v1/auth/logout" {
            continue;
        }
        let uri = path.replace("{id}", &Uuid::new_v4().to_string());
        for (who, tok, level) in &callers {
            let body = matches!(*method, "POST" | "PUT" | "PATCH").then_some("{}");
            let (status, v) = if *path == "/v1/events" {
                (a.status_of(method, &uri, tok.as_deref()).await, Value::Null)
            } else {
                a.call(method, &uri, tok.as_deref(), body).await
            };
            let allowed = level >= required;
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{who} should reach {method} {path}, got {status} {v}"
                );
            } else if tok.is_none() {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{who} on {method} {path}: {v}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{who} on {method} {path}: {v}");
            }
            assert!(!status.is_server_error(), "{who} {method} {path}: {status} {v}");
            checked += 1;
        }
    }
    for (_, tok, level) in &callers {
        let (status, _) = a.call("POST", "/v1/auth/logout", tok.as_deref(), None).await;
        let want = if *level == Access::Public { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
        assert_eq!(status, want);
        checked += 1;
    }
    assert_eq!(checked, ROUTES.len() * callers.len());
}

#[sqlx::test(migrations = "../migrations")]
async fn tenants_are_created_listed_updated_and_deleted_by_the_platform_admin(pool: PgPool) {
    let a = api(pool).await;
    let root = token(&a, "admin", "admin").await;
    let body = json!({"name": "initech", "display_name": "Initech", "weight": 3, "quotas": {"cpu": "8", "tasks": 10}});
    let (s, v) = a.call("POST", "/v1/tenants", Some(&root), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!((v["data"]["weight"].clone(), v["data"]["status"].clone()), (json!(3), json!("active")));
    let (s, v) = a.call("POST", "/v1/tenants", Some(&root), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    for (bad, field) in [
        (json!({"name": "Not Valid"}), "name"),
        (json!({"name": "x".repeat(57)}), "name"),
        (json!({"name": "ok", "weight": 0}), "weight"),
        (json!({"name": "ok", "quotas": {"cpu": "12x"}}), "quotas.cpu"),
        (json!({"name": "ok", "surprise": 1}), "surprise"),
    ] {
        let (s, v) = a.call("POST", "/v1/tenants", Some(&root), Some(&bad.to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["details"].as_str().unwrap().starts_with(field), "{bad}: {v}");
    }
    let (_, v) = a.call("GET", &format!("/v1/tenants/{id}/quotas"), Some(&root), None).await;
    assert_eq!(v["data"]["cpu"], json!({"hard": "8", "used": "0"}));
    assert_eq!(v["data"]["memory"]["hard"], Value::Null, "unnamed kinds are unlimited");
    let (s, v) =
        a.call("PUT", &format!("/v1/tenants/{id}/quotas"), Some(&root), Some(r#"{"memory": "64Gi", "gpu": 2}"#)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["memory"]["hard"], "64Gi");
    assert_eq!(v["data"]["cpu"]["hard"], Value::Null, "PUT replaces the whole document");
    // The executors hear of the creation and of the quota change (to ensure the namespace and
    // its ResourceQuota); the refused requests said nothing.
    let changes = a.queue.read_tenant_changes("0", std::time::Duration::from_millis(10)).await.unwrap();
    let tenant: Uuid = id.parse().unwrap();
    assert_eq!(changes.iter().map(|c| c.1).collect::<Vec<_>>(), [tenant, tenant]);
    let (s, v) =
        a.call("PATCH", &format!("/v1/tenants/{id}"), Some(&root), Some(r#"{"weight": 5, "description": "d"}"#)).await;
    assert_eq!((s, v["data"]["weight"].clone()), (StatusCode::OK, json!(5)));
    let (s, _) = a.call("PATCH", &format!("/v1/tenants/{id}"), Some(&root), Some(r#"{"name": "renamed"}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "names are immutable");
    let (_, v) = a.call("GET", "/v1/tenants?page_size=2", Some(&root), None).await;
    assert_eq!(v["pagination"]["total"], 4);
    let (_, all) = a.call("GET", "/v1/tenants?page_size=100", Some(&root), None).await;
    let system_id = all["data"].as_array().unwrap().iter().find(|t| t["name"] == "system").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = a.call("DELETE", &format!("/v1/tenants/{system_id}"), Some(&root), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = a.call("DELETE", &format!("/v1/tenants/{id}"), Some(&root), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = a.call("GET", &format!("/v1/tenants/{id}"), Some(&root), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_suspended_tenant_cannot_log_in_or_submit_and_its_queue_waits(pool: PgPool) {
    let a = api(pool).await;
    let root = token(&a, "admin", "admin").await;
    let alice = token(&a, "alice", "alice-pw").await;
    let (_, v) = a.submit(&alice, task("queued")).await;
    let queued: Uuid = v["data"]["id"].as_str().unwrap().parse().unwrap();
    let (acme,): (Uuid,) =
        sqlx::query_as("select id from tenants where name = 'acme'").fetch_one(&a.pool).await.unwrap();
    let (s, _) = a.call("PATCH", &format!("/v1/tenants/{acme}"), Some(&root), Some(r#"{"status": "suspended"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(login(&a, "bob", "bob-pw").await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = a.submit(&alice, task("refused")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a token issued before the suspension: {v}");
    assert!(a.queue.claim("s", 10, std::time::Duration::from_secs(5)).await.unwrap().is_empty(), "its queue is held");
    assert_eq!(a.queue.task_state(queued).await.unwrap().unwrap().state, "ready");
    let (s, _) = a.call("PATCH", &format!("/v1/tenants/{acme}"), Some(&root), Some(r#"{"status": "active"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    let claimed = a.queue.claim("s", 10, std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].spec.task_id, queued);
}

async fn set_quota(a: &Api, tenant: &str, doc: Value) {
    let root = token(a, "admin", "admin").await;
    let (id,): (Uuid,) =
        sqlx::query_as("select id from tenants where name = $1").bind(tenant).fetch_one(&a.pool).await.unwrap();
    let (s, v) = a.call("PUT", &format!("/v1/tenants/{id}/quotas"), Some(&root), Some(&doc.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn used(a: &Api, tenant: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select q.resource_type, q.used_amount from resource_quotas q join tenants t on t.id = q.tenant_id
         where t.name = $1 order by q.resource_type",
    )
    .bind(tenant)
    .fetch_all(&a.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn exceeding_the_quota_is_409_with_what_was_asked_and_what_is_left(pool: PgPool) {
    let a = api(pool).await;
    set_quota(&a, "acme", json!({"cpu": "1", "gpu": 1})).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let (s, v) = a.submit(&alice, task("fits")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = a.submit(&alice, task("too-much")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"], "Resource quota exceeded");
    assert_eq!(v["details"]["requested"], json!({"cpu": "500m", "memory": "1Gi", "gpu": 1, "tasks": 1}));
    assert_eq!(v["details"]["available"], json!({"cpu": "500m", "memory": null, "gpu": 0, "tasks": null}));
    assert_eq!(a.task_count().await, 1, "the refused task was not written");
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_submissions_never_exceed_the_quota_and_usage_returns_to_zero(pool: PgPool) {
    let a = std::sync::Arc::new(api(pool).await);
    set_quota(&a, "acme", json!({"tasks": 7, "cpu": "100"})).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let bob = token(&a, "bob", "bob-pw").await;
    let mut handles = Vec::new();
    for i in 0..40 {
        let (a, t) = (a.clone(), if i % 2 == 0 { alice.clone() } else { bob.clone() });
        handles.push(tokio::spawn(async move { a.submit(&t, task(&format!("c-{i}"))).await }));
    }
    let mut admitted = Vec::new();
    for h in handles {
        let (s, v) = h.await.unwrap();
        match s {
            StatusCode::CREATED => admitted.push(v["data"]["id"].as_str().unwrap().to_owned()),
            StatusCode::CONFLICT => assert_eq!(v["error"], "Resource quota exceeded"),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(admitted.len(), 7, "exactly the quota is admitted");
    assert!(used(&a, "acme").await.contains(&("tasks".into(), 7)));
    // Ending the tasks (stop here; the executor's terminal writes use the same release)
    // gives everything back, and a repeat releases nothing twice.
    let ada_tok = {
        let acme = bootstrap::ensure_tenant(&a.pool, "acme", "", "").await.unwrap();
        bootstrap::ensure_user(&a.pool, acme, "ada", "ada@acme.test", "ada-pw", "admin").await.unwrap();
        token(&a, "ada", "ada-pw").await
    };
    for id in &admitted {
        for _ in 0..2 {
            let (s, v) = a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&ada_tok), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    }
    assert!(used(&a, "acme").await.iter().all(|(_, n)| *n == 0), "{:?}", used(&a, "acme").await);
    let (s, _) = a.submit(&alice, task("after")).await;
    assert_eq!(s, StatusCode::CREATED, "room again");
}

#[sqlx::test(migrations = "../migrations")]
async fn stop_cancels_once_and_only_the_owner_or_an_admin_may(pool: PgPool) {
    let a = api(pool).await;
    with_roles(&a).await;
    let (alice, bob, ada) =
        (token(&a, "alice", "alice-pw").await, token(&a, "bob", "bob-pw").await, token(&a, "ada", "ada-pw").await);
    let (_, v) = a.submit(&alice, task("mine")).await;
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    // As if an executor had started its first attempt.
    sqlx::query(
        "insert into task_executions (task_id, execution_id, status, node_name, attempt)
         values ($1, 'task-x-0', 'running', 'sim-1', 0)",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .execute(&a.pool)
    .await
    .unwrap();
    let (s, _) = a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another user's task");
    let gina = token(&a, "gina", "gina-pw").await;
    let (s, _) = a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&gina), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's task");
    let (s, v) = a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&alice), None).await;
    assert_eq!((s, v["message"].clone()), (StatusCode::OK, json!("Task stopped successfully")));
    let (_, v) = a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&ada), None).await;
    assert_eq!(v["message"], "Task had already finished");
    let (_, v) = a.call("GET", &format!("/v1/tasks/{id}"), Some(&alice), None).await;
    assert_eq!(v["data"]["status"], "cancelled");
    assert!(v["data"]["completed_at"].is_string());
    assert_eq!(a.queue.task_state(id.parse().unwrap()).await.unwrap(), None, "withdrawn from the queue");
    let (s, v) = a.call("GET", &format!("/v1/tasks/{id}/executions"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let runs = v["data"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    assert_eq!((runs[0]["status"].clone(), runs[0]["failure_class"].clone()), (json!("cancelled"), json!("cancelled")));
    assert!(runs[0]["finished_at"].is_string());
    // Delete cancels a live task first, then removes it.
    let (_, v) = a.submit(&alice, task("doomed")).await;
    let doomed = v["data"]["id"].as_str().unwrap().to_owned();
    let (s, _) = a.call("DELETE", &format!("/v1/tasks/{doomed}"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = a.call("GET", &format!("/v1/tasks/{doomed}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(used(&a, "acme").await.iter().all(|(_, n)| *n == 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn tenant_admins_manage_their_own_users_only(pool: PgPool) {
    let a = api(pool).await;
    with_roles(&a).await;
    let ada = token(&a, "ada", "ada-pw").await;
    let new = json!({"username": "carol", "email": "carol@acme.test", "password": "carol-password", "role": "viewer"});
    let (s, v) = a.call("POST", "/v1/users", Some(&ada), Some(&new.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(!v.to_string().contains("argon2"));
    let carol = v["data"]["id"].as_str().unwrap().to_owned();
    assert!(!token(&a, "carol", "carol-password").await.is_empty());
    let (s, v) = a.call("POST", "/v1/users", Some(&ada), Some(&new.to_string())).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = a
        .call(
            "POST",
            "/v1/users",
            Some(&ada),
            Some(r#"{"username":"dup","email":"alice@acme.test","password":"longenough"}"#),
        )
        .await;
    assert_eq!((s, v["error"].clone()), (StatusCode::CONFLICT, json!("that email is already in use")));
    for (bad, field) in [
        (json!({"username": "x y", "email": "x@y.z", "password": "longenough"}), "username"),
        (json!({"username": "x", "email": "nope", "password": "longenough"}), "email"),
        (json!({"username": "x", "email": "x@y.z", "password": "short"}), "password"),
        (json!({"username": "x", "email": "x@y.z", "password": "longenough", "role": "god"}), "role"),
    ] {
        let (s, v) = a.call("POST", "/v1/users", Some(&ada), Some(&bad.to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["details"].as_str().unwrap().starts_with(field), "{v}");
    }
    // Another tenant's users do not exist for a tenant admin.
    let (gina,): (Uuid,) =
        sqlx::query_as("select id from users where username = 'gina'").fetch_one(&a.pool).await.unwrap();
    let (s, _) = a.call("GET", &format!("/v1/users/{gina}"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (globex,): (Uuid,) =
        sqlx::query_as("select id from tenants where name = 'globex'").fetch_one(&a.pool).await.unwrap();
    let (s, _) = a.call("GET", &format!("/v1/users?tenant_id={globex}"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = a.call("GET", "/v1/users?role=viewer", Some(&ada), None).await;
    assert_eq!(v["pagination"]["total"], 2, "vic and carol");
    // A password change ends the user's sessions; a suspension refuses the next login.
    let (_, carol_login) = login(&a, "carol", "carol-password").await;
    let (s, _) = a
        .call(
            "PATCH",
            &format!("/v1/users/{carol}"),
            Some(&ada),
            Some(r#"{"password": "another-password", "role": "user"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = a
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": carol_login["refresh_token"]}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&a, "carol", "carol-password").await.0, StatusCode::UNAUTHORIZED);
    token(&a, "carol", "another-password").await;
    let (ada_id,): (Uuid,) =
        sqlx::query_as("select id from users where username = 'ada'").fetch_one(&a.pool).await.unwrap();
    let (s, _) = a.call("PATCH", &format!("/v1/users/{ada_id}"), Some(&ada), Some(r#"{"role": "viewer"}"#)).await;
    assert_eq!(s, StatusCode::CONFLICT, "no self-demotion");
    let (s, _) = a.call("DELETE", &format!("/v1/users/{carol}"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::OK);
    // The platform admin may act in any tenant.
    let root = token(&a, "admin", "admin").await;
    let body = json!({"username": "gus", "email": "gus@globex.test", "password": "gus-password", "tenant_id": globex});
    let (s, v) = a.call("POST", "/v1/users", Some(&root), Some(&body.to_string())).await;
    assert_eq!((s, v["data"]["tenant_id"].clone()), (StatusCode::CREATED, json!(globex)));
}

#[sqlx::test(migrations = "../migrations")]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family(pool: PgPool) {
    let a = api(pool).await;
    let (_, first) = login(&a, "alice", "alice-pw").await;
    let refresh = |t: &Value| json!({"refresh_token": t["refresh_token"]}).to_string();
    let (s, second) = a.call("POST", "/v1/auth/refresh", None, Some(&refresh(&first))).await;
    assert_eq!(s, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let (s, v) = a.call("GET", "/v1/me", second["access_token"].as_str(), None).await;
    assert_eq!(
        (s, v["data"]["username"].clone(), v["data"]["tenant_name"].clone()),
        (StatusCode::OK, json!("alice"), json!("acme"))
    );
    // Presenting the spent token again: refused, and its whole family with it.
    let (s, v) = a.call("POST", "/v1/auth/refresh", None, Some(&refresh(&first))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = a.call("POST", "/v1/auth/refresh", None, Some(&refresh(&second))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the family is revoked");
    // Another session of the same user is untouched, until logout.
    let (_, other) = login(&a, "alice", "alice-pw").await;
    let (s, v) = a.call("POST", "/v1/auth/logout", other["access_token"].as_str(), Some(&refresh(&other))).await;
    assert_eq!((s, v["revoked_tokens"].clone()), (StatusCode::OK, json!(1)));
    let (s, _) = a.call("POST", "/v1/auth/refresh", None, Some(&refresh(&other))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for bad in [r#"{"refresh_token": ""}"#, r#"{"refresh_token": "nope"}"#, r#"{}"#, "{"] {
        let (s, _) = a.call("POST", "/v1/auth/refresh", None, Some(bad)).await;
        assert!(s == StatusCode::UNAUTHORIZED || s == StatusCode::BAD_REQUEST, "{bad}: {s}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn repeated_login_failures_are_429_with_retry_after(pool: PgPool) {
    let a = api(pool).await;
    for _ in 0..5 {
        assert_eq!(login(&a, "alice", "wrong").await.0, StatusCode::UNAUTHORIZED);
    }
    // The limit holds even for the right password: a guesser cannot tell when it hit.
    let resp = {
        use tower::ServiceExt;
        let req = axum::http::Request::post("/v1/auth/login")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"username":"alice","password":"alice-pw"}"#))
            .unwrap();
        a.router.clone().oneshot(req).await.unwrap()
    };
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(login(&a, "bob", "bob-pw").await.0, StatusCode::OK, "other users are not affected");
}

#[sqlx::test(migrations = "../migrations")]
async fn one_address_cannot_spray_logins(pool: PgPool) {
    use tower::ServiceExt;
    let a = api(pool).await;
    let from = |ip: [u8; 4], user: &str| {
        let mut req = axum::http::Request::post("/v1/auth/login")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(json!({"username": user, "password": "x"}).to_string()))
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((ip, 4000))));
        req
    };
    for i in 0..60 {
        let s = a.router.clone().oneshot(from([127, 0, 0, 11], &format!("user{i}"))).await.unwrap().status();
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let s = a.router.clone().oneshot(from([127, 0, 0, 11], "another")).await.unwrap().status();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let s = a.router.clone().oneshot(from([127, 0, 0, 12], "another")).await.unwrap().status();
    assert_eq!(s, StatusCode::UNAUTHORIZED, "another address is not affected");
}

#[sqlx::test(migrations = "../migrations")]
async fn volumes_are_the_tenants_own_and_tasks_mount_only_those(pool: PgPool) {
    let a = api(pool).await;
    let (alice, gina) = (token(&a, "alice", "alice-pw").await, token(&a, "gina", "gina-pw").await);
    let body = json!({"name": "data", "size": "10Gi", "storage_class": "fast-ssd", "access_mode": "ReadWriteMany"});
    let (s, v) = a.call("POST", "/v1/volumes", Some(&alice), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["data"]["status"].clone(), v["data"]["pvc_name"].clone()), (json!("pending"), json!("data")));
    let vol = v["data"]["id"].as_str().unwrap().to_owned();
    let (s, _) = a.call("POST", "/v1/volumes", Some(&alice), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CONFLICT);
    for (bad, field) in [
        (json!({"name": "Data", "size": "1Gi"}), "name"),
        (json!({"name": "d", "size": "12x"}), "size"),
        (json!({"name": "d", "size": "0"}), "size"),
        (json!({"name": "d", "size": "1Gi", "access_mode": "Sometimes"}), "access_mode"),
        (json!({"name": "d"}), "size"),
    ] {
        let (s, v) = a.call("POST", "/v1/volumes", Some(&alice), Some(&bad.to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["details"].as_str().unwrap().starts_with(field), "{v}");
    }
    // Same name in another tenant is another volume; neither sees the other's.
    let (s, _) = a.call("POST", "/v1/volumes", Some(&gina), Some(r#"{"name": "data", "size": "1Gi"}"#)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = a.call("GET", &format!("/v1/volumes/{vol}"), Some(&gina), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = a.call("GET", "/v1/volumes", Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 1);

    let mut t = task("mounts");
    t["volumes"] = json!([{"name": "data", "mount_path": "/data", "read_only": true}]);
    let (s, v) = a.submit(&alice, t).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id: Uuid = v["data"]["id"].as_str().unwrap().parse().unwrap();
    let (n,): (i64,) =
        sqlx::query_as("select count(*) from task_volumes where task_id = $1 and read_only and mount_path = '/data'")
            .bind(id)
            .fetch_one(&a.pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
    let mut t = task("mounts-missing");
    t["volumes"] = json!([{"name": "elsewhere", "mount_path": "/x"}]);
    let (s, v) = a.submit(&alice, t).await;
    assert_eq!(
        (s, v["details"].clone()),
        (StatusCode::BAD_REQUEST, json!("volumes[0].name: volume \"elsewhere\" not found"))
    );
    let (s, _) = a.call("DELETE", &format!("/v1/volumes/{vol}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "mounted by a live task");
    a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&alice), None).await;
    let (s, _) = a.call("DELETE", &format!("/v1/volumes/{vol}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_is_admitted_all_or_nothing(pool: PgPool) {
    let a = api(pool).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let batch = |n: usize| json!({"tasks": (0..n).map(|i| task(&format!("b-{i}"))).collect::<Vec<_>>()}).to_string();
    let (s, v) = a.call("POST", "/v1/tasks:batch", Some(&alice), Some(&batch(3))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    for t in v["data"].as_array().unwrap() {
        let id: Uuid = t["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(a.queue.task_state(id).await.unwrap().unwrap().state, "ready");
    }
    // One bad task refuses the batch, naming it.
    let mut bad: Value = serde_json::from_str(&batch(3)).unwrap();
    bad["tasks"][1]["priority"] = json!(500);
    bad["tasks"][2]["resource_requests"]["cpu"] = json!("12x");
    let (s, v) = a.call("POST", "/v1/tasks:batch", Some(&alice), Some(&bad.to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["details"],
        "tasks[1].priority: must be between 0 and 100; tasks[2].resource_requests.cpu: invalid quantity \"12x\": unknown suffix (expected one of n u m k M G T P E Ki Mi Gi Ti Pi Ei or an exponent)"
    );
    // A batch the quota cannot hold whole is refused whole.
    set_quota(&a, "acme", json!({"tasks": 5})).await;
    let (s, v) = a.call("POST", "/v1/tasks:batch", Some(&alice), Some(&batch(3))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["details"]["requested"]["tasks"], 3);
    assert_eq!(v["details"]["available"]["tasks"], 2);
    assert_eq!(a.task_count().await, 3);
    // (Minimal tasks, so that 1,001 of them stay under the fixture's body limit.)
    let small = |n: usize| {
        json!({"tasks": vec![json!({"name": "s", "image": "busybox", "resource_requests": {}}); n]}).to_string()
    };
    for n in [0, 1001] {
        let (s, v) = a.call("POST", "/v1/tasks:batch", Some(&alice), Some(&small(n))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{n}: {v}");
    }
    assert_eq!(a.task_count().await, 3);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_event_stream_carries_only_the_callers_tenant_and_resumes_after_last_event_id(pool: PgPool) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let a = api(pool).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let (acme,): (Uuid,) =
        sqlx::query_as("select id from tenants where name = 'acme'").fetch_one(&a.pool).await.unwrap();
    let (globex,): (Uuid,) =
        sqlx::query_as("select id from tenants where name = 'globex'").fetch_one(&a.pool).await.unwrap();
    let open = |last: Option<String>| {
        let mut req = axum::http::Request::get("/v1/events").header("authorization", format!("Bearer {alice}"));
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        a.router.clone().oneshot(req.body(axum::body::Body::empty()).unwrap())
    };
    let resp = open(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let publish = |tenant: Uuid, status: berth_core::TaskStatus| {
        let q = a.queue.clone();
        async move {
            let e = berth_queue::TaskEvent {
                task_id: Uuid::new_v4(),
                tenant_id: tenant,
                status,
                attempt: 0,
                node: None,
                message: None,
                namespace: None,
            };
            q.publish_event(&e).await.unwrap();
        }
    };
    publish(globex, berth_core::TaskStatus::Running).await;
    publish(acme, berth_core::TaskStatus::Succeeded).await;
    let mut body = resp.into_body();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame =
            tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.expect("an event within 5s");
        if let Some(Ok(f)) = frame
            && let Some(d) = f.data_ref()
        {
            text.push_str(&String::from_utf8_lossy(d));
        }
    }
    assert!(text.contains("event: task"), "{text}");
    assert!(text.contains("\"succeeded\"") && !text.contains("\"running\""), "only acme's event: {text}");
    let id = text.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_owned();
    // Reconnecting after that id replays what came later, and nothing before it.
    publish(acme, berth_core::TaskStatus::Failed).await;
    let mut body = open(Some(id)).await.unwrap().into_body();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame =
            tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.expect("a replayed event");
        if let Some(Ok(f)) = frame
            && let Some(d) = f.data_ref()
        {
            text.push_str(&String::from_utf8_lossy(d));
        }
    }
    assert!(text.contains("\"failed\"") && !text.contains("\"succeeded\""), "{text}");
}

#[sqlx::test(migrations = "../migrations")]
async fn logs_tail_and_follow_until_the_task_ends(pool: PgPool) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let a = api_with(pool, |c| c.api.max_log_followers = 1).await;
    let (alice, gina) = (token(&a, "alice", "alice-pw").await, token(&a, "gina", "gina-pw").await);
    let (_, v) = a.submit(&alice, task("chatty")).await;
    let id: Uuid = v["data"]["id"].as_str().unwrap().parse().unwrap();
    let lines: Vec<String> = (1..=5).map(|i| format!("line {i}")).collect();
    a.queue.append_log(id, 0, 0, &lines).await.unwrap();
    let (s, v) = a.call("GET", &format!("/v1/tasks/{id}/logs?tail=2"), Some(&alice), None).await;
    assert_eq!((s, v["data"].clone()), (StatusCode::OK, json!(["line 4", "line 5"])));
    let (_, v) = a.call("GET", &format!("/v1/tasks/{id}/logs"), Some(&alice), None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 5);
    for bad in ["tail=0", "tail=x", "follow=maybe"] {
        let (s, _) = a.call("GET", &format!("/v1/tasks/{id}/logs?{bad}"), Some(&alice), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (s, _) = a.call("GET", &format!("/v1/tasks/{id}/logs"), Some(&gina), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Follow: the tail first, then new lines, and the stream ends with the task.
    let req = axum::http::Request::get(format!("/v1/tasks/{id}/logs?tail=1&follow=true"))
        .header("authorization", format!("Bearer {alice}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    // One follower at a time here (api.max_log_followers = 1): a second is refused while the
    // first streams; reading without follow still works.
    let (s, v) = a.call("GET", &format!("/v1/tasks/{id}/logs?follow=true"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, _) = a.call("GET", &format!("/v1/tasks/{id}/logs"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let q = a.queue.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Lines 5 and 6 again, as a restarted follower would give them: line 5 is kept once.
        q.append_log(id, 0, 4, &["line 5".to_string(), "line 6".to_string()]).await.unwrap();
        q.end_log(id).await.unwrap();
    });
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream ends");
    let text = String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(text, "line 5\nline 6\n");
    writer.await.unwrap();
    // The ended stream gave its permit back.
    let (s, _) = a.call("GET", &format!("/v1/tasks/{id}/logs?follow=true"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
}

/// A follow of a task that goes on ends after api.max_log_follow, its slot given back.
#[sqlx::test(migrations = "../migrations")]
async fn a_log_follow_ends_after_its_longest_time(pool: PgPool) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let a = api_with(pool, |c| {
        c.api.max_log_follow = std::time::Duration::from_secs(1);
        c.api.max_log_followers = 1;
    })
    .await;
    let alice = token(&a, "alice", "alice-pw").await;
    let (_, v) = a.submit(&alice, task("forever")).await;
    let id: Uuid = v["data"]["id"].as_str().unwrap().parse().unwrap();
    a.queue.append_log(id, 0, 0, &["only line".to_string()]).await.unwrap();
    let req = axum::http::Request::get(format!("/v1/tasks/{id}/logs?follow=true"))
        .header("authorization", format!("Bearer {alice}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the follow ends though the task is still pending");
    assert_eq!(String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap(), "only line\n");
    let (s, _) = a.call("GET", &format!("/v1/tasks/{id}/logs?follow=true"), Some(&alice), None).await;
    assert_ne!(s, StatusCode::SERVICE_UNAVAILABLE, "its follower slot is free again");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_demotion_or_suspension_takes_effect_on_tokens_already_issued(pool: PgPool) {
    let a = api(pool).await;
    with_roles(&a).await;
    let ada = token(&a, "ada", "ada-pw").await;
    let (s, _) = a.call("GET", "/v1/users", Some(&ada), None).await;
    assert_eq!(s, StatusCode::OK);
    sqlx::query("update users set role = 'viewer' where username = 'ada'").execute(&a.pool).await.unwrap();
    let (s, _) = a.call("GET", "/v1/users", Some(&ada), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the token still says admin; the database does not");
    sqlx::query("update users set status = 'suspended' where username = 'ada'").execute(&a.pool).await.unwrap();
    let (s, _) = a.call("GET", "/v1/tasks", Some(&ada), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_whose_requests_overflow_is_refused_not_wrapped(pool: PgPool) {
    let a = api(pool).await;
    set_quota(&a, "acme", json!({"memory": "64Gi"})).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let mut t = task("huge");
    t["resource_requests"]["memory"] = json!("5E");
    t["resource_limits"] = json!({});
    let (s, v) =
        a.call("POST", "/v1/tasks:batch", Some(&alice), Some(&json!({"tasks": [t.clone(), t]}).to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(a.task_count().await, 0);
    assert!(used(&a, "acme").await.iter().all(|(_, n)| *n == 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_admissions_and_releases_never_deadlock(pool: PgPool) {
    let a = std::sync::Arc::new(api(pool).await);
    with_roles(&a).await;
    set_quota(&a, "acme", json!({"cpu": "1000", "memory": "10Ti", "tasks": 10000})).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let ada = token(&a, "ada", "ada-pw").await;
    // Admissions lock the tenant's quota rows; stops release them. Mixed, concurrently,
    // they must all succeed: a lock-order deadlock shows up as a 500 here.
    let mut handles = Vec::new();
    for i in 0..60 {
        let (a, alice, ada) = (a.clone(), alice.clone(), ada.clone());
        handles.push(tokio::spawn(async move {
            let (s, v) = a.submit(&alice, task(&format!("d-{i}"))).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            let id = v["data"]["id"].as_str().unwrap().to_owned();
            let (s, v) = a.call("POST", &format!("/v1/tasks/{id}/stop"), Some(&ada), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(used(&a, "acme").await.iter().all(|(_, n)| *n == 0));
}

/// Concurrent single admissions of a tenant share transactions (crate::admission), and the
/// merge changes no answer: a request that fails alone fails in a merged batch too, with its
/// own error, and the others are admitted under their own users.
#[sqlx::test(migrations = "../migrations")]
async fn merged_admissions_give_each_request_its_own_answer(pool: PgPool) {
    let a = std::sync::Arc::new(api(pool).await);
    let alice = token(&a, "alice", "alice-pw").await;
    let bob = token(&a, "bob", "bob-pw").await;
    let ids: std::collections::HashMap<String, Uuid> =
        sqlx::query_as::<_, (String, Uuid)>("select username, id from users")
            .fetch_all(&a.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for wave in 0..2 {
        let mut handles = Vec::new();
        for i in 0..30 {
            let who = if i % 2 == 0 { ("alice", alice.clone()) } else { ("bob", bob.clone()) };
            let mut body = task(&format!("w{wave}-{i}"));
            // In the first wave every third request mounts a volume that does not exist.
            let bad = wave == 0 && i % 3 == 0;
            if bad {
                body["volumes"] = json!([{"name": "nope", "mount_path": "/data"}]);
            }
            let a = a.clone();
            handles.push(tokio::spawn(async move { (who.0, bad, a.submit(&who.1, body).await) }));
        }
        for h in handles {
            let (user, bad, (s, v)) = h.await.unwrap();
            if bad {
                assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
                assert_eq!(v["fields"][0]["field"], "volumes[0].name", "its own error: {v}");
            } else {
                assert_eq!(s, StatusCode::CREATED, "{v}");
                assert_eq!(v["data"]["user_id"], json!(ids[user]), "admitted as its own user");
            }
        }
    }
    assert_eq!(a.task_count().await, 20 + 30);
    assert!(used(&a, "acme").await.contains(&("tasks".into(), 50)), "{:?}", used(&a, "acme").await);
    let per_user: Vec<(Uuid, i64)> = sqlx::query_as("select user_id, count(*) from tasks group by user_id order by 2")
        .fetch_all(&a.pool)
        .await
        .unwrap();
    assert_eq!(per_user.iter().map(|r| r.1).collect::<Vec<_>>(), vec![25, 25], "{per_user:?}");
    assert!(a.state.admissions.merged_transactions() > 0, "30 concurrent requests were merged at least once");
}

/// "Why pending": a ready task's place in its tenant's queue, an unschedulable one's reasons
/// and next evaluation, a suspended tenant's hold.
#[sqlx::test(migrations = "../migrations")]
async fn a_pending_task_says_why_it_waits(pool: PgPool) {
    let a = api(pool).await;
    let alice = token(&a, "alice", "alice-pw").await;
    let mut ids = Vec::new();
    for (name, priority) in [("low", 10), ("high", 90), ("mid", 50)] {
        let mut body = task(name);
        body["priority"] = json!(priority);
        let (s, v) = a.submit(&alice, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["data"]["id"].as_str().unwrap().to_owned());
    }
    let scheduling = |id: String| {
        let a = &a;
        let alice = alice.clone();
        async move { a.call("GET", &format!("/v1/tasks/{id}"), Some(&alice), None).await.1["data"]["scheduling"].clone() }
    };
    let low = scheduling(ids[0].clone()).await;
    assert_eq!((low["position"].clone(), low["ready_in_tenant"].clone()), (json!(3), json!(3)), "{low}");
    assert_eq!(low["why"], "waiting in the tenant's queue: 3 of 3");
    assert_eq!(scheduling(ids[1].clone()).await["position"], 1, "priority first");

    // A scheduler claims the high one and finds no node for it.
    let claimed = a.queue.claim("test-scheduler", 1, std::time::Duration::from_secs(30)).await.unwrap();
    assert_eq!(claimed[0].spec.task_id.to_string(), ids[1]);
    assert_eq!(scheduling(ids[1].clone()).await["why"], "being placed by a scheduler");
    let reason = "0/4 nodes fit: 4 insufficient nvidia.com/gpu";
    let id: Uuid = ids[1].parse().unwrap();
    let epoch = a.queue.capacity_epoch().await.unwrap();
    a.queue.park(id, "test-scheduler", reason, std::time::Duration::from_secs(60), epoch).await.unwrap();
    let high = scheduling(ids[1].clone()).await;
    assert_eq!(high["queue_state"], "parked");
    let want = format!("{reason}; evaluated again when capacity changes, at the latest ");
    assert!(high["why"].as_str().unwrap().starts_with(&want), "{high}");
    assert!(high["due_at"].is_string(), "{high}");
    assert_eq!(scheduling(ids[0].clone()).await["why"], "waiting in the tenant's queue: 2 of 2");

    a.queue.set_suspended("acme", true).await.unwrap();
    assert!(scheduling(ids[2].clone()).await["why"].as_str().unwrap().starts_with("tenant suspended"));
}

/// `GET /v1/admin/policy`: the live scheduler replicas' reported versions beside the
/// configured one; a report not refreshed in time (a dead replica) is dropped.
#[sqlx::test(migrations = "../migrations")]
async fn the_admin_policy_lists_each_live_replicas_version(pool: PgPool) {
    let a = api(pool).await;
    let admin = token(&a, "admin", "admin").await;
    let configured = a.state.config.scheduler.version();
    let now = chrono::Utc::now().timestamp_millis();
    let report = |replica: &str, version: &str, seen: i64| berth_queue::PolicyReport {
        replica: replica.into(),
        version: version.into(),
        loaded_at_ms: now - 60_000,
        seen_at_ms: seen,
        config: json!({}),
    };
    a.queue.report_policy(&report("s-1", &configured, now)).await.unwrap();
    a.queue.report_policy(&report("s-dead", "0123456789abcdef", now - 600_000)).await.unwrap();
    let (s, v) = a.call("GET", "/v1/admin/policy", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["configured"]["version"], configured.as_str());
    assert_eq!(v["data"]["configured"]["config"]["batch_size"], 64);
    let replicas = v["data"]["schedulers"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "the stale report is dropped: {v}");
    assert_eq!(replicas[0]["replica"], "s-1");
    assert_eq!(v["data"]["consistent"], true);
    a.queue.report_policy(&report("s-2", "fedcba9876543210", now)).await.unwrap();
    let (_, v) = a.call("GET", "/v1/admin/policy", Some(&admin), None).await;
    assert_eq!(v["data"]["consistent"], false, "one replica runs another version: {v}");
    let alice = token(&a, "alice", "alice-pw").await;
    assert_eq!(a.call("GET", "/v1/admin/policy", Some(&alice), None).await.0, StatusCode::FORBIDDEN);
}

/// Under fair share, a ready task of a tenant ahead of another says so.
#[sqlx::test(migrations = "../migrations")]
async fn a_task_behind_fair_share_says_its_tenant_is_at_fair_share(pool: PgPool) {
    use berth_core::config::OrderConfig;
    let a = api_with(pool, |c| c.scheduler.profile.order = vec![OrderConfig::Drf, OrderConfig::Priority]).await;
    let node = berth_core::NodeView {
        name: "n".into(),
        allocatable: berth_core::Resources::new(2000, 64 << 30, 4),
        requested: berth_core::Resources::ZERO,
        labels: Default::default(),
        taints: vec![],
        schedulable: true,
    };
    a.queue.upsert_node(&node).await.unwrap();
    let (alice, gina) = (token(&a, "alice", "alice-pw").await, token(&a, "gina", "gina-pw").await);
    // acme runs one task: 500m of 2 CPU and 1 of 4 GPUs, a dominant share of 0.25.
    let (_, v) = a.submit(&alice, task("running")).await;
    let running: Uuid = v["data"]["id"].as_str().unwrap().parse().unwrap();
    let c = a.queue.claim("s", 1, std::time::Duration::from_secs(30)).await.unwrap();
    assert_eq!(c[0].spec.task_id, running);
    assert_eq!(a.queue.reserve(&c[0].spec, "s", "n").await.unwrap(), berth_queue::ReserveOutcome::Bound);
    let (_, v) = a.submit(&alice, task("behind")).await;
    let behind = v["data"]["id"].as_str().unwrap().to_owned();
    let (_, v) = a.submit(&gina, task("first")).await;
    let first = v["data"]["id"].as_str().unwrap().to_owned();
    let (_, v) = a.call("GET", &format!("/v1/tasks/{behind}"), Some(&alice), None).await;
    let why = v["data"]["scheduling"]["why"].as_str().unwrap_or_default().to_owned();
    assert!(why.starts_with("tenant at fair share: its weighted dominant share 0.25"), "{v}");
    assert_eq!(v["data"]["scheduling"]["fair_share"]["lowest_other_share"], 0.0);
    let (_, v) = a.call("GET", &format!("/v1/tasks/{first}"), Some(&gina), None).await;
    assert_eq!(v["data"]["scheduling"]["why"], "waiting in the tenant's queue: 1 of 1", "{v}");
}

/// A task that failed for good is in its tenant's dead letters; replaying it admits it again
/// (its quota charged again) as a new attempt, once.
#[sqlx::test(migrations = "../migrations")]
async fn a_dead_letter_is_listed_and_replayed_once(pool: PgPool) {
    let a = api(pool).await;
    with_roles(&a).await;
    let (alice, bob, vic) =
        (token(&a, "alice", "alice-pw").await, token(&a, "bob", "bob-pw").await, token(&a, "vic", "vic-pw").await);
    let (_, v) = a.submit(&alice, task("flaky")).await;
    let id: Uuid = v["data"]["id"].as_str().unwrap().parse().unwrap();
    // Not a dead letter while it is pending.
    let (s, _) = a.call("POST", &format!("/v1/tasks/{id}/retry"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // As the executor leaves a task whose retries ran out.
    sqlx::query(
        "update tasks set status = 'failed', completed_at = now(), dead_lettered_at = now(), current_retry_count = 3,
                error_message = 'OOMKilled: m (oom_killed: not retried)' where id = $1",
    )
    .bind(id)
    .execute(&a.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into task_executions (task_id, execution_id, status, attempt, failure_class)
         values ($1, 'x', 'failed', 3, 'oom_killed')",
    )
    .bind(id)
    .execute(&a.pool)
    .await
    .unwrap();
    sqlx::query(berth_core::store::RELEASE_QUOTA).bind(id).execute(&a.pool).await.unwrap();
    a.queue.finish(id).await.unwrap();
    assert!(used(&a, "acme").await.iter().all(|(_, n)| *n == 0));

    let (s, v) = a.call("GET", "/v1/dead-letters", Some(&vic), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pagination"]["total"], 1);
    assert_eq!(v["data"][0]["id"], id.to_string());
    assert_eq!(v["data"][0]["failure_class"], "oom_killed");
    assert!(v["data"][0]["dead_lettered_at"].is_string());
    let gina = token(&a, "gina", "gina-pw").await;
    let (_, v) = a.call("GET", "/v1/dead-letters", Some(&gina), None).await;
    assert_eq!(v["pagination"]["total"], 0, "another tenant's dead letters are not listed");
    let (s, _) = a.call("POST", &format!("/v1/tasks/{id}/retry"), Some(&gina), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = a.call("POST", &format!("/v1/tasks/{id}/retry"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another user's task");

    let (s, v) = a.call("POST", &format!("/v1/tasks/{id}/retry"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["data"]["status"].clone(), v["data"]["current_retry_count"].clone()), (json!("pending"), json!(4)));
    assert!(v["data"]["error_message"].is_null());
    let q = a.queue.task_state(id).await.unwrap().expect("queued again");
    assert_eq!((q.state.as_str(), q.attempt), ("ready", 4));
    assert!(used(&a, "acme").await.iter().any(|(k, n)| k == "tasks" && *n == 1), "charged again");
    let (s, _) = a.call("POST", &format!("/v1/tasks/{id}/retry"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "replayed once");
    let (_, v) = a.call("GET", "/v1/dead-letters", Some(&alice), None).await;
    assert_eq!(v["pagination"]["total"], 0);
    let (free,): (i32,) =
        sqlx::query_as("select free_retries from tasks where id = $1").bind(id).fetch_one(&a.pool).await.unwrap();
    assert_eq!(free, 4, "a fresh budget: every earlier retry counts as free");
}
