//! `/v1/webhooks`: registration, listing without secrets, deletion, validation, RBAC and
//! tenant isolation. Real PostgreSQL and Redis, as in `api.rs`; delivery itself is tested in
//! `workers/tests/webhooks.rs`.

mod common;

use axum::http::StatusCode;
use berth_api::bootstrap;
use common::{Api, api, api_with};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// acme's admin ada and viewer vic, globex's admin gus; returns their tokens.
async fn admins(a: &Api) -> (String, String, String) {
    let acme = bootstrap::ensure_tenant(&a.pool, "acme", "", "").await.unwrap();
    let globex = bootstrap::ensure_tenant(&a.pool, "globex", "", "").await.unwrap();
    bootstrap::ensure_user(&a.pool, acme, "ada", "ada@acme.test", "ada-pw", "admin").await.unwrap();
    bootstrap::ensure_user(&a.pool, acme, "vic", "vic@acme.test", "vic-pw", "viewer").await.unwrap();
    bootstrap::ensure_user(&a.pool, globex, "gus", "gus@globex.test", "gus-pw", "admin").await.unwrap();
    (a.login("ada").await, a.login("vic").await, a.login("gus").await)
}

async fn create(a: &Api, token: &str, body: Value) -> (StatusCode, Value) {
    a.call("POST", "/v1/webhooks", Some(token), Some(&body.to_string())).await
}

#[sqlx::test(migrations = "../migrations")]
async fn an_admin_registers_lists_and_deletes_hooks_and_sees_the_secret_once(pool: PgPool) {
    let a = api(pool).await;
    let (ada, _, _) = admins(&a).await;
    let (s, v) = create(
        &a,
        &ada,
        json!({"url": "https://ci.example.com/hook?team=ml", "events": ["failed", "succeeded", "failed"],
               "description": "CI"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let hook = &v["data"];
    let secret = hook["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 70, "{secret}");
    assert_eq!(hook["events"], json!(["failed", "succeeded"]), "deduplicated");
    assert_eq!(hook["url"], "https://ci.example.com/hook?team=ml");
    assert_eq!(hook["active"], true);
    let id = hook["id"].as_str().unwrap().to_owned();
    let (stored,): (String,) = sqlx::query_as("select secret from webhooks where id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(stored, secret, "the notifier signs with the secret the caller got");

    // An internal address is refused by default (webhooks.allow_private_networks)...
    let (s, v) = create(&a, &ada, json!({"url": "http://10.0.0.7:8080/all"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["details"].as_str().unwrap().starts_with("url: must be a public address"), "{v}");
    let (s, v) = create(&a, &ada, json!({"url": "http://hooks.example.net:8080/all"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["events"], Value::Null, "every event");
    assert_ne!(v["data"]["secret"], secret, "each hook has its own secret");

    let (s, v) = a.call("GET", "/v1/webhooks?page_size=1", Some(&ada), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pagination"]["total"], 2);
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["id"], id.as_str(), "oldest first");
    let (_, v) = a.call("GET", "/v1/webhooks", Some(&ada), None).await;
    assert!(!v.to_string().contains("whsec_"), "a list never shows secrets: {v}");
    assert!(v["data"].as_array().unwrap().iter().all(|h| h.get("secret").is_none()));

    let (s, v) = a.call("GET", &format!("/v1/webhooks/{id}/deliveries"), Some(&ada), None).await;
    assert_eq!((s, v["pagination"]["total"].clone()), (StatusCode::OK, json!(0)), "{v}");

    let (s, v) = a.call("DELETE", &format!("/v1/webhooks/{id}"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(v, Value::Null, "no body");
    let (s, _) = a.call("DELETE", &format!("/v1/webhooks/{id}"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "deleting twice");
    let (_, v) = a.call("GET", "/v1/webhooks", Some(&ada), None).await;
    assert_eq!(v["pagination"]["total"], 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_hooks_are_400_naming_the_field_and_write_nothing(pool: PgPool) {
    let a = api(pool).await;
    let (ada, _, _) = admins(&a).await;
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "example.com/hook"}), "url"),
        (json!({"url": "https://user:pw@example.com/"}), "url"),
        (json!({"url": "https://example.com/#x"}), "url"),
        (json!({"url": format!("https://example.com/{}", "a".repeat(2100))}), "url"),
        (json!({"url": "https://example.com/", "events": ["succeeded", "done"]}), "events[1]"),
        (json!({"url": "https://example.com/", "events": []}), "events"),
        (json!({"url": "https://example.com/", "description": "x".repeat(1001)}), "description"),
        (json!({"url": "https://example.com/", "description": "a\u{0}b"}), "description"),
        (json!({"url": "https://example.com/\u{0}"}), "url"),
        (json!({"url": "https://example.com/", "secret": "mine"}), "secret"),
        (json!({"url": 7}), "url"),
        (json!({}), "url"),
    ] {
        let (s, v) = create(&a, &ada, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let fields: Vec<&str> = v["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&field), "{body}: {v}");
    }
    let (n,): (i64,) = sqlx::query_as("select count(*) from webhooks").fetch_one(&a.pool).await.unwrap();
    assert_eq!(n, 0);
    let (s, v) = a.call("DELETE", "/v1/webhooks/not-a-uuid", Some(&ada), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = a.call("GET", "/v1/webhooks?page=0", Some(&ada), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[sqlx::test(migrations = "../migrations")]
async fn only_tenant_admins_manage_hooks_and_only_their_tenants(pool: PgPool) {
    let a = api(pool).await;
    let (ada, vic, gus) = admins(&a).await;
    let alice = a.login("alice").await;
    let (_, v) = create(&a, &ada, json!({"url": "https://acme.example/hook"})).await;
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    // Viewers and users: 403 on every webhook route, the list included.
    for token in [&vic, &alice] {
        let (s, _) = create(&a, token, json!({"url": "https://acme.example/mine"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(a.call("GET", "/v1/webhooks", Some(token), None).await.0, StatusCode::FORBIDDEN);
        assert_eq!(a.call("DELETE", &format!("/v1/webhooks/{id}"), Some(token), None).await.0, StatusCode::FORBIDDEN);
    }
    assert_eq!(a.call("GET", "/v1/webhooks", None, None).await.0, StatusCode::UNAUTHORIZED);
    // Another tenant's admin: the hook does not exist for them.
    let (_, v) = a.call("GET", "/v1/webhooks", Some(&gus), None).await;
    assert_eq!(v["pagination"]["total"], 0, "{v}");
    assert_eq!(a.call("DELETE", &format!("/v1/webhooks/{id}"), Some(&gus), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        a.call("GET", &format!("/v1/webhooks/{id}/deliveries"), Some(&gus), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (n,): (i64,) = sqlx::query_as("select count(*) from webhooks").fetch_one(&a.pool).await.unwrap();
    assert_eq!(n, 1, "still there");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tenant_has_at_most_max_per_tenant_hooks(pool: PgPool) {
    let a = api_with(pool, |c| c.webhooks.max_per_tenant = 2).await;
    let (ada, _, gus) = admins(&a).await;
    for i in 0..2 {
        assert_eq!(create(&a, &ada, json!({"url": format!("https://acme.example/{i}")})).await.0, StatusCode::CREATED);
    }
    let (s, v) = create(&a, &ada, json!({"url": "https://acme.example/3"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("max_per_tenant"), "{v}");
    // The limit is per tenant.
    assert_eq!(create(&a, &gus, json!({"url": "https://globex.example/1"})).await.0, StatusCode::CREATED);
}

#[sqlx::test(migrations = "../migrations")]
async fn deliveries_are_listed_for_the_operator(pool: PgPool) {
    let a = api(pool).await;
    let (ada, _, _) = admins(&a).await;
    let (_, v) = create(&a, &ada, json!({"url": "https://acme.example/hook"})).await;
    let id = Uuid::parse_str(v["data"]["id"].as_str().unwrap()).unwrap();
    let tenant = Uuid::parse_str(v["data"]["tenant_id"].as_str().unwrap()).unwrap();
    for (event, status, attempts, code) in [("1-0", "delivered", 1, Some(200)), ("2-0", "failed", 8, Some(503))] {
        sqlx::query(
            "insert into webhook_deliveries (webhook_id, tenant_id, event_id, task_id, event_status, payload, status,
                                             attempts, last_status_code, last_error)
             values ($1, $2, $3, $4, 'succeeded', '{}', $5, $6, $7, case when $5 = 'failed' then 'HTTP 503' end)",
        )
        .bind(id)
        .bind(tenant)
        .bind(event)
        .bind(Uuid::new_v4())
        .bind(status)
        .bind(attempts)
        .bind(code)
        .execute(&a.pool)
        .await
        .unwrap();
    }
    let (s, v) = a.call("GET", &format!("/v1/webhooks/{id}/deliveries?status=failed"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pagination"]["total"], 1);
    let d = &v["data"][0];
    assert_eq!(
        (d["event_id"].as_str(), d["attempts"].as_i64(), d["last_status_code"].as_i64()),
        (Some("2-0"), Some(8), Some(503))
    );
    assert_eq!(d["last_error"], "HTTP 503");
    assert!(d.get("payload").is_none());
    let (s, v) = a.call("GET", &format!("/v1/webhooks/{id}/deliveries?status=lost"), Some(&ada), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Deleting the hook deletes its history.
    a.call("DELETE", &format!("/v1/webhooks/{id}"), Some(&ada), None).await;
    let (n,): (i64,) = sqlx::query_as("select count(*) from webhook_deliveries").fetch_one(&a.pool).await.unwrap();
    assert_eq!(n, 0);
}
