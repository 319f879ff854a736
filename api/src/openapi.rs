//! `/openapi.json` and Swagger UI at `/docs`, generated from the handlers' annotations.
//!
//! Each handler carries its own `#[utoipa::path]`: its parameters, body and success
//! responses, and the errors only it can return (a quota's 409, login's 429). What every
//! route shares is added here by [`Conventions`], from the same [`crate::rbac::ROUTES`] table
//! the middleware enforces: the bearer requirement of every non-public route, and the error
//! responses that route can meet (401/403 behind a token, 404 for an id, 400 for a body or
//! a query, 413 for a body, 500/503 everywhere). A test checks that the document and the
//! table list the same routes, so a route cannot be served undocumented or documented
//! unserved.
//!
//! The response envelopes below (`{data, message}`, `{data, pagination}`) are the seed's
//! shapes; handlers build them with `json!`, and the fuzz run (`tests/fuzz.rs`) checks every
//! response against these schemas.

use std::collections::BTreeMap;

use crate::rbac::{Access, access_of};
use crate::{admin, auth, events, health, metrics, tasks, tenants, users, volumes, webhooks};
use serde_json::Value;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth",
        description = "A multi-tenant compute platform on Kubernetes: submit container tasks, berth queues them \
                       by priority and tenant fair share, places them on nodes and runs them as Jobs.",
        license(name = "Apache-2.0"),
    ),
    paths(
        health::healthz, health::readyz, metrics::render,
        auth::login, auth::refresh, auth::logout, auth::me,
        tasks::create, tasks::create_batch, tasks::list, tasks::get_one, tasks::delete, tasks::stop, tasks::retry,
        tasks::dead_letters,
        tasks::executions, tasks::logs,
        events::events,
        volumes::create, volumes::list, volumes::get_one, volumes::delete,
        tenants::create, tenants::list, tenants::get_one, tenants::update, tenants::delete,
        tenants::get_quotas, tenants::put_quotas,
        users::create, users::list, users::get_one, users::update, users::delete,
        webhooks::create, webhooks::list, webhooks::remove, webhooks::deliveries,
        admin::policy,
    ),
    components(schemas(
        Error, crate::error::FieldError, Pagination, Message,
        berth_core::TaskStatus, berth_core::Toleration, berth_core::TolerationOperator, berth_core::TaintEffect,
    )),
    modifiers(&Conventions),
    tags(
        (name = "Authentication", description = "Sessions: login, refresh, logout."),
        (name = "Tasks", description = "Container tasks: submit, watch, stop."),
        (name = "Volumes", description = "A tenant's persistent volumes."),
        (name = "Tenants", description = "Tenants and their quotas (platform admins)."),
        (name = "Users", description = "A tenant's users (tenant admins)."),
        (name = "Webhooks", description = "A tenant's webhooks: signed task events POSTed to its URLs (tenant admins)."),
        (name = "Operations", description = "Health, readiness, metrics."),
    ),
)]
pub struct ApiDoc;

/// The document, built once per process.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `/openapi.json` and the Swagger UI at `/docs`, both served from the binary. Public, like
/// the document they show, and outside the RBAC table (they are not API routes).
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", document().clone()).into()
}

/// Every error body: the seed's `{error, details}`; `fields` names each invalid field.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Error {
    /// What went wrong, for a person.
    #[schema(example = "Invalid request body")]
    error: String,
    /// More about it: a string, or for a quota refusal `{requested, available}`.
    details: Option<Value>,
    /// On 400, each invalid field and why.
    fields: Option<Vec<crate::error::FieldError>>,
}

/// The seed's Pagination.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Pagination {
    page: i64,
    page_size: i64,
    total: i64,
    total_pages: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Message {
    #[schema(example = "Task deleted successfully")]
    message: String,
}

/// Declares response envelopes: `{data: T, message?}` and `{data: [T], pagination}`.
macro_rules! envelopes {
    ($($one:ident, $list:ident => $t:ty;)*) => {$(
        #[derive(ToSchema)]
        #[allow(dead_code)]
        pub struct $one {
            data: $t,
            message: Option<String>,
        }
        #[derive(ToSchema)]
        #[allow(dead_code)]
        pub struct $list {
            data: Vec<$t>,
            pagination: Pagination,
        }
    )*};
}

envelopes! {
    TaskResponse, TaskList => TaskDoc;
    TenantResponse, TenantList => tenants::Tenant;
    UserResponse, UserList => auth::UserView;
    VolumeResponse, VolumeList => volumes::Volume;
    DeadLetterResponse, DeadLetterList => tasks::DeadLetter;
    WebhookResponse, WebhookList => webhooks::Webhook;
    CreatedWebhookResponse, CreatedWebhookList => webhooks::CreatedWebhook;
    DeliveryResponse, DeliveryList => webhooks::Delivery;
}

/// A task as the API returns it: the seed's Task, and for a pending task its place in the
/// queue.
#[derive(ToSchema, serde::Serialize)]
#[allow(dead_code)]
pub struct TaskDoc {
    #[serde(flatten)]
    task: tasks::Task,
    /// Present on `GET /v1/tasks/{id}` of a pending task: its state in the queue.
    scheduling: Option<Scheduling>,
}

#[derive(ToSchema, serde::Serialize)]
#[allow(dead_code)]
pub struct Scheduling {
    /// `ready`, `leased`, `parked` (no node fitted: see `reason`), `delayed` (a retry's
    /// backoff) or `bound`.
    queue_state: String,
    /// Why it is not placed yet, from its last evaluation: "0/12 nodes fit: 9 insufficient
    /// nvidia.com/gpu, 3 node selector mismatch".
    reason: Option<String>,
    attempt: u32,
    /// 1-based place among the tenant's ready tasks, when ready.
    position: Option<u64>,
    /// How many of the tenant's tasks are ready.
    ready_in_tenant: u64,
    /// When a delayed task is due again (end of its backoff, or its next evaluation).
    due_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Under fair share: `{tenant_share, lowest_other_share}` (weighted dominant shares).
    #[schema(value_type = Option<Object>)]
    fair_share: Option<Value>,
    /// One sentence: "waiting in the tenant's queue: 3 of 12", "tenant at fair share: ...",
    /// "in backoff until T", ...
    why: String,
}

/// `POST /v1/tasks:batch`'s answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskBatchResponse {
    data: Vec<tasks::Task>,
    message: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ExecutionList {
    data: Vec<tasks::Execution>,
}

/// `GET /v1/tasks/{id}/logs` without `follow`: the last lines.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LogLines {
    data: Vec<String>,
}

/// `GET /v1/me`: the caller's account.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MeResponse {
    data: Me,
}

#[derive(ToSchema, serde::Serialize)]
#[allow(dead_code)]
pub struct Me {
    #[serde(flatten)]
    user: auth::UserView,
    tenant_name: String,
    /// An admin of the system tenant.
    platform_admin: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LogoutResponse {
    message: String,
    /// How many refresh tokens were revoked.
    revoked_tokens: u64,
}

/// One quota: `hard` null when unlimited; quantities for cpu and memory, counts otherwise.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct QuotaLine {
    #[schema(value_type = Option<tasks::QuantityInput>)]
    hard: Option<Value>,
    #[schema(value_type = tasks::QuantityInput)]
    used: Value,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct QuotaResponse {
    data: BTreeMap<String, QuotaLine>,
    message: Option<String>,
}

/// `GET /v1/admin/policy`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PolicyResponse {
    data: Policy,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Policy {
    /// The scheduler section this API process was configured with.
    configured: PolicyVersion,
    /// Each live scheduler replica's report.
    schedulers: Vec<ReplicaPolicy>,
    /// Whether every replica runs the configured version.
    consistent: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PolicyVersion {
    version: String,
    #[schema(value_type = Object)]
    config: Value,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReplicaPolicy {
    replica: String,
    version: String,
    loaded_at: Option<chrono::DateTime<chrono::Utc>>,
    seen_at: Option<chrono::DateTime<chrono::Utc>>,
    #[schema(value_type = Object)]
    config: Value,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Ready {
    /// `ok` when both are reachable, else `unreachable`.
    status: String,
    postgres: String,
    redis: String,
}

/// What every route shares, derived from [`crate::rbac::ROUTES`].
struct Conventions;

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build())
            .build(),
    )
}

/// A path item's operations with their methods.
fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    let PathItem { get, put, post, delete, options, head, patch, trace, query, .. } = item;
    [("GET", get), ("PUT", put), ("POST", post), ("DELETE", delete), ("OPTIONS", options), ("HEAD", head)]
        .into_iter()
        .chain([("PATCH", patch), ("TRACE", trace), ("QUERY", query)])
        .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
        .collect()
}

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "BearerAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                // Unique by construction: `get_tasks_id_logs`, `post_tasks_batch`.
                let words = path.trim_start_matches("/v1").split(['/', ':']).filter(|w| !w.is_empty());
                let words: Vec<&str> = words.map(|w| w.trim_matches(['{', '}'])).collect();
                op.operation_id = Some(format!("{}_{}", method.to_lowercase(), words.join("_")));
                // A route absent from the table is refused by the middleware; the test that
                // compares the two catches it, and here it is documented as refused.
                let access = access_of(method, path).unwrap_or(Access::PlatformAdmin);
                let mut add = |code: &str, why: &str| {
                    op.responses.responses.entry(code.to_owned()).or_insert_with(|| error_response(why));
                };
                if access != Access::Public {
                    op.security = Some(vec![SecurityRequirement::new("BearerAuth", Vec::<String>::new())]);
                    add("401", "Missing, malformed, forged or expired token");
                    add("403", "The caller's role does not reach this route, or its tenant or account is suspended");
                }
                let has_body = op.request_body.is_some();
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if has_body || has_params {
                    add("400", "An invalid field, named in `fields`");
                }
                if has_body {
                    add("413", "The body exceeds `api.body_limit_bytes`");
                }
                if path.contains('{') {
                    add("404", "No such object in the caller's tenant");
                }
                if !matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
                    add("503", "PostgreSQL or Redis is unavailable; retry");
                    add("500", "An internal error (logged with the request id)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document and the RBAC table list exactly the same routes.
    #[test]
    fn documents_every_route_and_only_routes() {
        let doc = document();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, _) in operations(&mut item.clone()) {
                documented.push((method.to_owned(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> =
            crate::rbac::ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
        routes.sort();
        assert_eq!(documented, routes);
    }

    /// Public routes need no token in the document; every other route requires one.
    #[test]
    fn security_follows_the_rbac_table() {
        let v = serde_json::to_value(document()).unwrap();
        for (m, p, access) in crate::rbac::ROUTES {
            let op = &v["paths"][p][m.to_lowercase()];
            assert!(op.is_object(), "{m} {p} is documented");
            assert_eq!(op["security"].is_array(), *access != Access::Public, "{m} {p} security");
            if *access != Access::Public {
                assert!(op["responses"]["401"].is_object(), "{m} {p} documents 401");
            }
        }
        assert_eq!(v["components"]["securitySchemes"]["BearerAuth"]["scheme"], "bearer");
    }

    /// The seed's schemas are there by their seed names.
    #[test]
    fn seed_schema_names() {
        let v = serde_json::to_value(document()).unwrap();
        for name in
            ["Task", "CreateTaskRequest", "ResourceRequirements", "VolumeMount", "Toleration", "TaskStatus", "User"]
        {
            assert!(v["components"]["schemas"][name].is_object(), "schema {name}");
        }
    }
}
