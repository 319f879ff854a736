//! Tasks: admission, reading, listing.
//!
//! Admission validates every field, inserts the task (and its volume mounts) in one
//! transaction, and only then enqueues it in Redis. If the enqueue fails the task is still
//! admitted: PostgreSQL is the system of record, and the reconciler enqueues pending tasks
//! that Redis does not know.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use berth_core::config::ClaimOrder;
use berth_core::resources::{self, MAX_EXTENDED_PER_TASK};
use berth_core::{Resources, SchedulingSpec, TaskStatus, Toleration, TolerationOperator, quantity, sim, validate};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, FieldError};
use crate::extract::{Query, QueryCheck, ValidJson, path_id};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", get(list).post(create))
        .route("/tasks:batch", axum::routing::post(create_batch))
        .route("/tasks/{id}", get(get_one).delete(delete))
        .route("/tasks/{id}/stop", axum::routing::post(stop))
        .route("/tasks/{id}/retry", axum::routing::post(retry))
        .route("/dead-letters", get(dead_letters))
        .route("/tasks/{id}/executions", get(executions))
        .route("/tasks/{id}/logs", get(logs))
}

/// Retries of a failed attempt when the request names none (the seed's default).
pub const DEFAULT_MAX_RETRIES: i64 = 3;
/// Most retries a task may ask for: beyond this a failing task only burns capacity.
pub const MAX_RETRIES: i64 = 20;
/// Longest timeout a task may ask for: a week.
pub const MAX_TIMEOUT_SECONDS: i64 = 7 * 24 * 3600;
const MAX_DESCRIPTION: usize = 1000;
const MAX_LIST_ITEMS: usize = 256;
const MAX_ITEM_BYTES: usize = 4096;
const MAX_MAP_ENTRIES: usize = 64;
const MAX_ENV: usize = 256;
const MAX_ENV_VALUE: usize = 32 * 1024;
const MAX_GPU: i64 = 1024;
const MAX_VOLUMES: usize = 32;
const MAX_MOUNT_PATH: usize = 512;

/// A quantity as a string (`"500m"`) or a bare number (`2`), as Kubernetes accepts both.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum QuantityInput {
    Text(String),
    #[schema(value_type = f64)]
    Number(serde_json::Number),
}

impl QuantityInput {
    pub fn text(&self) -> String {
        match self {
            QuantityInput::Text(s) => s.clone(),
            QuantityInput::Number(n) => n.to_string(),
        }
    }
}

/// The seed's ResourceRequirements.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequirements {
    /// CPU as a quantity: `100m`, `1`, `2.5`.
    #[serde(default)]
    #[schema(example = "500m")]
    pub cpu: Option<QuantityInput>,
    /// Memory as a quantity: `128Mi`, `1Gi`.
    #[serde(default)]
    #[schema(example = "1Gi")]
    pub memory: Option<QuantityInput>,
    /// Whole GPUs (`nvidia.com/gpu`).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1024)]
    pub gpu: Option<i64>,
    /// Other extended resources by their Kubernetes names, in whole units:
    /// `{"amd.com/gpu": "1"}`. Filtered, scored, reserved and counted for fair share like cpu
    /// and memory; not covered by tenant quotas.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>, example = json!({"amd.com/gpu": "1"}))]
    pub extended: Option<BTreeMap<String, QuantityInput>>,
}

/// The seed's VolumeMount.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    #[schema(
        example = "data",
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        max_length = 253
    )]
    pub name: String,
    #[schema(example = "/data", pattern = r"^/")]
    pub mount_path: String,
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// The seed's CreateTaskRequest, plus `max_retry_count`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// A DNS subdomain name (lowercase, at most 253 characters).
    #[schema(
        example = "ml-training-job",
        max_length = 253,
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    )]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[schema(
        example = "busybox:1.36",
        pattern = r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
    )]
    pub image: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    pub resource_requests: ResourceRequirements,
    #[serde(default)]
    pub resource_limits: Option<ResourceRequirements>,
    #[serde(default)]
    pub volumes: Option<Vec<VolumeMount>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    /// 0 (default) to 100; higher runs first within the tenant.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<i64>,
    /// Retries of a failed attempt (default 3, at most 20).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub max_retry_count: Option<i64>,
    /// Seconds one attempt may run before it is stopped and fails as DeadlineExceeded (the
    /// Job's `activeDeadlineSeconds`), at most a week. Default: the executor's
    /// `executor.default_timeout` (1 hour, the seed's).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_seconds: Option<i64>,
}

/// A request that passed validation: parsed amounts, canonical stored forms.
#[derive(Debug, Clone)]
pub struct ValidTask {
    pub req: CreateTaskRequest,
    pub requests: Resources,
    pub requests_json: Value,
    pub limits_json: Value,
    pub priority: i32,
    pub max_retry_count: i32,
    pub timeout_seconds: Option<i32>,
}

fn check_requirements(path: &str, r: &ResourceRequirements, errs: &mut Vec<FieldError>) -> (Resources, Value) {
    let mut out = Resources::ZERO;
    let mut stored = serde_json::Map::new();
    if let Some(q) = &r.cpu {
        let text = q.text();
        match quantity::parse_cpu_millis(&text) {
            Ok(v) => out.cpu_millis = v,
            Err(e) => errs.push(FieldError::new(format!("{path}.cpu"), e.to_string())),
        }
        stored.insert("cpu".into(), Value::String(text));
    }
    if let Some(q) = &r.memory {
        let text = q.text();
        match quantity::parse_bytes(&text) {
            Ok(v) => out.memory_bytes = v,
            Err(e) => errs.push(FieldError::new(format!("{path}.memory"), e.to_string())),
        }
        stored.insert("memory".into(), Value::String(text));
    }
    let gpu = r.gpu.unwrap_or(0);
    if !(0..=MAX_GPU).contains(&gpu) {
        errs.push(FieldError::new(format!("{path}.gpu"), format!("must be between 0 and {MAX_GPU}")));
    } else {
        out.gpu = gpu as u64;
    }
    stored.insert("gpu".into(), json!(gpu.clamp(0, MAX_GPU)));
    if let Some(ext) = r.extended.as_ref().filter(|e| !e.is_empty()) {
        if ext.len() > MAX_EXTENDED_PER_TASK {
            errs.push(FieldError::new(
                format!("{path}.extended"),
                format!("must name at most {MAX_EXTENDED_PER_TASK} resources"),
            ));
        }
        let mut kept = serde_json::Map::new();
        for (name, q) in ext {
            let at = format!("{path}.extended.{name}");
            if let Err(e) = resources::check_extended_name(name) {
                errs.push(FieldError::new(at, format!("name {e}")));
                continue;
            }
            let text = q.text();
            match resources::parse_count(&text) {
                Ok(n) => out.extended.set(name.as_str(), n),
                Err(e) => errs.push(FieldError::new(at, e)),
            }
            kept.insert(name.clone(), Value::String(text));
        }
        stored.insert("extended".into(), Value::Object(kept));
    }
    (out, Value::Object(stored))
}

fn check_map(path: &str, m: &BTreeMap<String, String>, errs: &mut Vec<FieldError>) {
    if m.len() > MAX_MAP_ENTRIES {
        errs.push(FieldError::new(path, format!("must have at most {MAX_MAP_ENTRIES} entries")));
    }
    for (k, v) in m {
        if let Err(e) = validate::label_key(k) {
            errs.push(FieldError::new(format!("{path}.{k}"), format!("key {e}")));
        }
        if let Err(e) = validate::label_value(v) {
            errs.push(FieldError::new(format!("{path}.{k}"), format!("value {e}")));
        }
    }
}

fn check_strings(path: &str, v: &[String], errs: &mut Vec<FieldError>) {
    if v.len() > MAX_LIST_ITEMS {
        errs.push(FieldError::new(path, format!("must have at most {MAX_LIST_ITEMS} items")));
    }
    for (i, s) in v.iter().enumerate() {
        if s.len() > MAX_ITEM_BYTES {
            errs.push(FieldError::new(format!("{path}[{i}]"), format!("must be at most {MAX_ITEM_BYTES} bytes")));
        }
        if s.contains('\0') {
            errs.push(FieldError::new(format!("{path}[{i}]"), "must not contain NUL"));
        }
    }
}

/// Validates every field; all problems are reported at once.
pub fn validate_task(req: CreateTaskRequest) -> Result<ValidTask, ApiError> {
    let mut errs = Vec::new();
    if let Err(e) = validate::dns_subdomain(&req.name) {
        errs.push(FieldError::new("name", e));
    }
    if req.description.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION || d.contains('\0')) {
        errs.push(FieldError::new("description", format!("must be at most {MAX_DESCRIPTION} characters, without NUL")));
    }
    if let Err(e) = validate::image_reference(&req.image) {
        errs.push(FieldError::new("image", e));
    }
    check_strings("command", req.command.as_deref().unwrap_or_default(), &mut errs);
    check_strings("args", req.args.as_deref().unwrap_or_default(), &mut errs);
    if let Some(env) = &req.env_vars {
        if env.len() > MAX_ENV {
            errs.push(FieldError::new("env_vars", format!("must have at most {MAX_ENV} entries")));
        }
        for (k, v) in env {
            if let Err(e) = validate::env_var_name(k) {
                errs.push(FieldError::new(format!("env_vars.{k}"), format!("name {e}")));
            }
            if v.len() > MAX_ENV_VALUE || v.contains('\0') {
                errs.push(FieldError::new(
                    format!("env_vars.{k}"),
                    format!("value must be at most {MAX_ENV_VALUE} bytes, without NUL"),
                ));
            }
        }
    }
    let (requests, requests_json) = check_requirements("resource_requests", &req.resource_requests, &mut errs);
    let (limits, limits_json) = match &req.resource_limits {
        Some(l) => check_requirements("resource_limits", l, &mut errs),
        None => (Resources::ZERO, json!({})),
    };
    if let Some(l) = &req.resource_limits {
        // Kubernetes requires limit ≥ request for each resource that has both.
        if l.cpu.is_some() && req.resource_requests.cpu.is_some() && limits.cpu_millis < requests.cpu_millis {
            errs.push(FieldError::new("resource_limits.cpu", "must not be less than resource_requests.cpu"));
        }
        if l.memory.is_some() && req.resource_requests.memory.is_some() && limits.memory_bytes < requests.memory_bytes {
            errs.push(FieldError::new("resource_limits.memory", "must not be less than resource_requests.memory"));
        }
        if l.gpu.is_some() && limits.gpu != requests.gpu {
            errs.push(FieldError::new(
                "resource_limits.gpu",
                "must equal resource_requests.gpu (GPUs cannot be overcommitted)",
            ));
        }
        // Kubernetes does not overcommit extended resources either: a limit equals the request.
        for name in l.extended.iter().flatten().map(|(k, _)| k) {
            if limits.extended.get(name) != requests.extended.get(name) {
                errs.push(FieldError::new(
                    format!("resource_limits.extended.{name}"),
                    format!(
                        "must equal resource_requests.extended.{name} (extended resources cannot be overcommitted)"
                    ),
                ));
            }
        }
    }
    if let Some(labels) = &req.labels {
        check_map("labels", labels, &mut errs);
        if let Some(v) = labels.get(sim::DURATION_LABEL)
            && let Err(e) = sim::parse_duration(v)
        {
            errs.push(FieldError::new(format!("labels.{}", sim::DURATION_LABEL), e));
        }
        if let Some(v) = labels.get(sim::EXIT_CODE_LABEL)
            && let Err(e) = sim::parse_exit_code(v)
        {
            errs.push(FieldError::new(format!("labels.{}", sim::EXIT_CODE_LABEL), e));
        }
    }
    if let Some(sel) = &req.node_selector {
        check_map("node_selector", sel, &mut errs);
    }
    if let Some(tols) = &req.tolerations {
        if tols.len() > MAX_MAP_ENTRIES {
            errs.push(FieldError::new("tolerations", format!("must have at most {MAX_MAP_ENTRIES} items")));
        }
        for (i, t) in tols.iter().enumerate() {
            if !t.key.is_empty()
                && let Err(e) = validate::label_key(&t.key)
            {
                errs.push(FieldError::new(format!("tolerations[{i}].key"), e));
            }
            match t.operator {
                TolerationOperator::Exists if !t.value.is_empty() => {
                    errs.push(FieldError::new(
                        format!("tolerations[{i}].value"),
                        "must be empty when operator is Exists",
                    ));
                }
                TolerationOperator::Equal if t.key.is_empty() => {
                    errs.push(FieldError::new(format!("tolerations[{i}].key"), "must be set when operator is Equal"));
                }
                TolerationOperator::Equal => {
                    if let Err(e) = validate::label_value(&t.value) {
                        errs.push(FieldError::new(format!("tolerations[{i}].value"), e));
                    }
                }
                TolerationOperator::Exists => {}
            }
        }
    }
    let priority = req.priority.unwrap_or(0);
    if !(0..=100).contains(&priority) {
        errs.push(FieldError::new("priority", "must be between 0 and 100"));
    }
    let max_retry_count = req.max_retry_count.unwrap_or(DEFAULT_MAX_RETRIES);
    if !(0..=MAX_RETRIES).contains(&max_retry_count) {
        errs.push(FieldError::new("max_retry_count", format!("must be between 0 and {MAX_RETRIES}")));
    }
    if let Some(t) = req.timeout_seconds
        && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
    {
        errs.push(FieldError::new("timeout_seconds", format!("must be between 1 and {MAX_TIMEOUT_SECONDS} (a week)")));
    }
    if let Some(vols) = &req.volumes {
        if vols.len() > MAX_VOLUMES {
            errs.push(FieldError::new("volumes", format!("must have at most {MAX_VOLUMES} items")));
        }
        let (mut names, mut paths) = (BTreeSet::new(), BTreeSet::new());
        for (i, v) in vols.iter().enumerate() {
            if let Err(e) = validate::dns_subdomain(&v.name) {
                errs.push(FieldError::new(format!("volumes[{i}].name"), e));
            } else if !names.insert(v.name.as_str()) {
                errs.push(FieldError::new(format!("volumes[{i}].name"), "is mounted twice"));
            }
            let p = &v.mount_path;
            let ok = p.starts_with('/')
                && p.len() <= MAX_MOUNT_PATH
                && !p.split('/').any(|c| c == "..")
                && !p.contains(['\0', ':']);
            if !ok {
                errs.push(FieldError::new(
                    format!("volumes[{i}].mount_path"),
                    format!("must be an absolute path of at most {MAX_MOUNT_PATH} characters without '..' or ':'"),
                ));
            } else if !paths.insert(p.trim_end_matches('/')) {
                errs.push(FieldError::new(format!("volumes[{i}].mount_path"), "is used twice"));
            }
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    Ok(ValidTask {
        requests,
        requests_json,
        limits_json,
        priority: priority as i32,
        max_retry_count: max_retry_count as i32,
        timeout_seconds: req.timeout_seconds.map(|t| t as i32),
        req,
    })
}

/// The seed's Task schema, plus `node_selector`, `tolerations`, `node_name`, `not_before`,
/// `timeout_seconds`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub env_vars: Option<Value>,
    #[schema(value_type = ResourceRequirements)]
    pub resource_requests: Value,
    #[schema(value_type = ResourceRequirements)]
    pub resource_limits: Value,
    #[schema(value_type = Option<Vec<VolumeMount>>)]
    pub volumes: Option<Value>,
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub labels: Option<Value>,
    #[schema(value_type = TaskStatus)]
    pub status: String,
    pub k8s_job_name: Option<String>,
    pub k8s_namespace: Option<String>,
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub node_selector: Option<Value>,
    #[schema(value_type = Option<Vec<Toleration>>)]
    pub tolerations: Option<Value>,
    pub priority: Option<i32>,
    pub max_retry_count: Option<i32>,
    pub current_retry_count: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub error_message: Option<String>,
    pub node_name: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    /// Null: the executor's default (`executor.default_timeout`).
    pub timeout_seconds: Option<i32>,
}

const TASK_COLUMNS: &str =
    "id, tenant_id, user_id, name, description, image, command, args, env_vars, resource_requests,
    resource_limits, volumes, labels, status, k8s_job_name, k8s_namespace, node_selector, tolerations, priority,
    max_retry_count, current_retry_count, created_at, updated_at, started_at, completed_at, error_message,
    node_name, not_before, timeout_seconds";

#[utoipa::path(post, path = "/v1/tasks", tag = "Tasks", summary = "Create a task", request_body = CreateTaskRequest,
    responses((status = 201, description = "Task created", body = crate::openapi::TaskResponse), (status = 409, description = "Resource quota exceeded: details hold `requested` and `available`", body = crate::openapi::Error)))]
async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let v = validate_task(req)?;
    let task = s.admissions.submit(&s, &caller, v).await?;
    Ok((StatusCode::CREATED, Json(json!({ "data": task, "message": "Task created successfully" }))))
}

/// Most tasks one batch may submit.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub tasks: Vec<CreateTaskRequest>,
}

/// `POST /v1/tasks:batch`: up to [`MAX_BATCH`] tasks, admitted all or none. Every invalid
/// field of every task is reported (`tasks[3].priority`), and the quota is charged for the
/// whole batch at once.
#[utoipa::path(post, path = "/v1/tasks:batch", tag = "Tasks", summary = "Create up to 1,000 tasks, all or none", request_body = BatchRequest,
    responses((status = 201, description = "All tasks created", body = crate::openapi::TaskBatchResponse), (status = 409, description = "The batch would exceed the quota; none was created", body = crate::openapi::Error)))]
async fn create_batch(
    State(s): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<BatchRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if req.tasks.is_empty() || req.tasks.len() > MAX_BATCH {
        return Err(ApiError::field("tasks", format!("must hold 1 to {MAX_BATCH} tasks")));
    }
    let mut valid = Vec::with_capacity(req.tasks.len());
    let mut errs = Vec::new();
    for (i, t) in req.tasks.into_iter().enumerate() {
        match validate_task(t) {
            Ok(v) => valid.push(v),
            Err(ApiError::BadRequest { fields, .. }) => {
                errs.extend(fields.into_iter().map(|f| FieldError::new(format!("tasks[{i}].{}", f.field), f.message)))
            }
            Err(e) => return Err(e),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(errs));
    }
    let n = valid.len();
    let tasks = admit(&s, &Submitters::of(&caller, n), valid, "tasks").await?;
    Ok((StatusCode::CREATED, Json(json!({ "data": tasks, "message": format!("{n} tasks created successfully") }))))
}

/// Who submits tasks: a tenant, and for each task the user submitting it (one user for a
/// request; several when [`crate::admission`] merges concurrent requests of a tenant).
#[derive(Debug, Clone)]
pub(crate) struct Submitters {
    pub tenant_id: Uuid,
    pub tenant: String,
    /// One per task, in the tasks' order.
    pub users: Vec<Uuid>,
}

impl Submitters {
    pub fn of(caller: &Caller, n: usize) -> Submitters {
        Submitters { tenant_id: caller.tenant_id, tenant: caller.tenant.clone(), users: vec![caller.user_id; n] }
    }
}

/// Admits validated tasks in one transaction: their users and tenant must still be active,
/// every mount must name a volume of the tenant, and the quota must hold them all; then they
/// are inserted and, after the commit, enqueued. `at` prefixes field paths (`tasks` for a
/// batch).
pub(crate) async fn admit(
    s: &AppState,
    who: &Submitters,
    tasks: Vec<ValidTask>,
    at: &str,
) -> Result<Vec<Task>, ApiError> {
    debug_assert_eq!(who.users.len(), tasks.len());
    let path = |i: usize, rest: String| if at.is_empty() { rest } else { format!("{at}[{i}].{rest}") };
    let mut tx = s.pool.begin().await?;
    // The users and their tenant must still be active: a token outlives a suspension.
    let users: Vec<Uuid> = who.users.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let standing: Vec<(String, String)> = sqlx::query_as(
        // FOR SHARE: a concurrent delete of the user or tenant waits for this admission (and
        // then sees its live task) instead of cascading it away half-charged.
        "select u.status, t.status from users u join tenants t on t.id = u.tenant_id
         where u.id = any($1) and t.id = $2 order by u.id for share of u, t",
    )
    .bind(&users)
    .bind(who.tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    if standing.len() < users.len() {
        return Err(ApiError::Unauthorized("the token's user no longer exists".into()));
    }
    for (u, t) in &standing {
        if t != "active" {
            return Err(ApiError::Suspended(format!("tenant {} is {t}", who.tenant)));
        }
        if u != "active" {
            return Err(ApiError::Suspended(format!("your account is {u}")));
        }
    }
    // Each mounted volume must be the caller's tenant's; another tenant's looks missing.
    let names: Vec<String> = tasks
        .iter()
        .flat_map(|t| t.req.volumes.iter().flatten().map(|m| m.name.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let found: BTreeMap<String, Uuid> = if names.is_empty() {
        BTreeMap::new()
    } else {
        sqlx::query_as::<_, (String, Uuid)>("select name, id from volumes where tenant_id = $1 and name = any($2)")
            .bind(who.tenant_id)
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };
    let mut missing = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        for (j, m) in t.req.volumes.iter().flatten().enumerate() {
            if !found.contains_key(&m.name) {
                missing.push(FieldError::new(
                    path(i, format!("volumes[{j}].name")),
                    format!("volume {:?} not found", m.name),
                ));
            }
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::invalid(missing));
    }
    // Summed without wrapping: a batch asking for more than a bigint holds is refused, not
    // turned negative (which would slip past the quota).
    let sum = |f: fn(&Resources) -> u64| tasks.iter().map(|t| u128::from(f(&t.requests.with_defaults()))).sum::<u128>();
    let (cpu, memory, gpu) = (sum(|r| r.cpu_millis), sum(|r| r.memory_bytes), sum(|r| r.gpu));
    if [cpu, memory, gpu].iter().any(|v| *v > i64::MAX as u128) {
        return Err(ApiError::field(
            if at.is_empty() { "resource_requests" } else { at },
            "the requests add up to more than berth can count",
        ));
    }
    let total = Resources::new(cpu as u64, memory as u64, gpu as u64);

    // One statement for all the tasks (and one for all their mounts), however many: a batch
    // of 1,000 is two round trips, not 2,000. Columns travel as parallel arrays.
    let ids: Vec<Uuid> = tasks.iter().map(|_| Uuid::now_v7()).collect();
    let charges: Vec<Resources> = tasks.iter().map(|v| v.requests.with_defaults()).collect();
    let col = |f: &dyn Fn(&ValidTask) -> Value| tasks.iter().map(f).collect::<Vec<Value>>();
    let mounts_json = |v: &ValidTask| {
        json!(
            v.req
                .volumes
                .iter()
                .flatten()
                .map(
                    |m| json!({ "name": m.name, "mount_path": m.mount_path, "read_only": m.read_only.unwrap_or(false) })
                )
                .collect::<Vec<_>>()
        )
    };
    let rows: Vec<Task> = sqlx::query_as(AssertSqlSafe(format!(
        "insert into tasks (id, tenant_id, user_id, name, description, image, command, args, env_vars,
            resource_requests, resource_limits, volumes, labels, node_selector, tolerations, priority,
            max_retry_count, current_retry_count, status, k8s_namespace, k8s_job_name,
            quota_charged, quota_cpu, quota_memory, quota_gpu, timeout_seconds)
         select u.id, $1, u.user_id, u.name, u.description, u.image,
                array(select jsonb_array_elements_text(u.command)), array(select jsonb_array_elements_text(u.args)),
                u.env_vars, u.requests, u.limits, u.volumes, u.labels, u.node_selector, u.tolerations, u.priority,
                u.max_retry_count, 0, 'pending', $3, 'task-' || u.id || '-0', true, u.qcpu, u.qmem, u.qgpu,
                u.timeout_seconds
         from unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::jsonb[],
                     $12::jsonb[], $13::jsonb[], $14::jsonb[], $15::jsonb[], $16::jsonb[], $17::int[], $18::int[],
                     $19::int8[], $20::int8[], $21::int8[], $2::uuid[], $22::int[])
           as u(id, name, description, image, command, args, env_vars, requests, limits, volumes, labels, node_selector,
                tolerations, priority, max_retry_count, qcpu, qmem, qgpu, user_id, timeout_seconds)
         returning {TASK_COLUMNS}"
    )))
    .bind(who.tenant_id)
    .bind(&who.users)
    .bind(format!("tenant-{}", who.tenant))
    .bind(&ids)
    .bind(tasks.iter().map(|v| v.req.name.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|v| v.req.description.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|v| v.req.image.clone()).collect::<Vec<_>>())
    .bind(col(&|v| json!(v.req.command.clone().unwrap_or_default())))
    .bind(col(&|v| json!(v.req.args.clone().unwrap_or_default())))
    .bind(col(&|v| json!(v.req.env_vars.clone().unwrap_or_default())))
    .bind(col(&|v| v.requests_json.clone()))
    .bind(col(&|v| v.limits_json.clone()))
    .bind(col(&mounts_json))
    .bind(col(&|v| json!(v.req.labels.clone().unwrap_or_default())))
    .bind(col(&|v| json!(v.req.node_selector.clone().unwrap_or_default())))
    .bind(col(&|v| json!(v.req.tolerations.clone().unwrap_or_default())))
    .bind(tasks.iter().map(|v| v.priority).collect::<Vec<_>>())
    .bind(tasks.iter().map(|v| v.max_retry_count).collect::<Vec<_>>())
    .bind(charges.iter().map(|c| c.cpu_millis as i64).collect::<Vec<_>>())
    .bind(charges.iter().map(|c| c.memory_bytes as i64).collect::<Vec<_>>())
    .bind(charges.iter().map(|c| c.gpu as i64).collect::<Vec<_>>())
    .bind(tasks.iter().map(|v| v.timeout_seconds).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    // RETURNING promises no order: put the rows back in the request's.
    let mut by_id: std::collections::HashMap<Uuid, Task> = rows.into_iter().map(|t| (t.id, t)).collect();
    let admitted: Vec<Task> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
    let mut mount_rows: (Vec<Uuid>, Vec<Uuid>, Vec<String>, Vec<bool>) = Default::default();
    for (v, id) in tasks.iter().zip(&ids) {
        for m in v.req.volumes.iter().flatten() {
            mount_rows.0.push(*id);
            mount_rows.1.push(found[&m.name]);
            mount_rows.2.push(m.mount_path.clone());
            mount_rows.3.push(m.read_only.unwrap_or(false));
        }
    }
    if !mount_rows.0.is_empty() {
        sqlx::query(
            "insert into task_volumes (task_id, volume_id, mount_path, read_only)
             select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::bool[])",
        )
        .bind(&mount_rows.0)
        .bind(&mount_rows.1)
        .bind(&mount_rows.2)
        .bind(&mount_rows.3)
        .execute(&mut *tx)
        .await?;
    }
    // The quota last, just before the commit: its rows are locked from here to the commit,
    // and every admission of the tenant waits for them, so the less happens in between the
    // more admissions a tenant gets through. A refusal rolls the inserts back.
    charge_quota(&mut tx, who.tenant_id, &total, tasks.len() as i64).await?;
    tx.commit().await?;

    let specs: Vec<SchedulingSpec> = tasks
        .iter()
        .zip(&admitted)
        .map(|(v, t)| SchedulingSpec {
            task_id: t.id,
            tenant: who.tenant.clone(),
            requests: v.requests.clone(),
            priority: v.priority as u8,
            node_selector: v.req.node_selector.clone().unwrap_or_default(),
            tolerations: v.req.tolerations.clone().unwrap_or_default(),
            attempt: 0,
            seq: 0,
        })
        .collect();
    if let Err(e) = s.queue.enqueue_many(&specs).await {
        tracing::error!(tasks = specs.len(), error = %e, "enqueue failed; the reconciler will enqueue the tasks");
    }
    tracing::info!(tasks = specs.len(), tenant = %who.tenant, "tasks admitted");
    metrics::counter!("berth_tasks_admitted_total").increment(specs.len() as u64);
    Ok(admitted)
}

/// Charges `count` tasks holding `r` in all to their tenant's quota: one conditional update
/// over the kinds, in the admission transaction, so concurrent admissions across API replicas
/// never exceed a limit. Unlimited kinds are charged too, so that a limit set later starts
/// from the true usage.
async fn charge_quota(tx: &mut sqlx::PgConnection, tenant: Uuid, r: &Resources, count: i64) -> Result<(), ApiError> {
    let amounts: [(&str, i64); 4] =
        [("cpu", r.cpu_millis as i64), ("memory", r.memory_bytes as i64), ("gpu", r.gpu as i64), ("tasks", count)];
    // One statement: lock the tenant's quota rows in one fixed order (two admissions, or an
    // admission and a release, taking them in plan order could deadlock), then charge every
    // kind if every kind fits, else none. The rows come back as they were before the charge.
    let rows: Vec<(String, i64, i64, bool)> = sqlx::query_as(
        "with req as (select unnest($2::text[]) as kind, unnest($3::bigint[]) as amount),
         locked as (
             select id, resource_type, hard_limit, coalesce(used_amount, 0) as used from resource_quotas
             where tenant_id = $1 and resource_type = any($2) order by resource_type for update
         ),
         fits as (
             select coalesce(bool_and(l.used <= l.hard_limit - r.amount), true) as ok
             from locked l join req r on r.kind = l.resource_type
         ),
         charged as (
             update resource_quotas q set used_amount = l.used + r.amount, updated_at = now()
             from locked l join req r on r.kind = l.resource_type, fits
             where q.id = l.id and fits.ok
             returning q.id
         )
         select l.resource_type, l.hard_limit, l.used, (select count(*) from charged) > 0 or not exists (select 1 from locked)
         from locked l",
    )
    .bind(tenant)
    .bind(amounts.iter().map(|a| a.0).collect::<Vec<_>>())
    .bind(amounts.iter().map(|a| a.1).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() || rows[0].3 {
        return Ok(());
    }
    // Refused (the caller rolls back): the request and what is left, in the request's units.
    let show = crate::tenants::show;
    let mut requested = serde_json::Map::new();
    let mut available = serde_json::Map::new();
    for (kind, amount) in amounts {
        requested.insert(kind.into(), show(kind, amount));
        let left = rows.iter().find(|r| r.0 == kind).and_then(|r| (r.1 != i64::MAX).then(|| r.1 - r.2));
        available.insert(kind.into(), left.map_or(Value::Null, |v| show(kind, v)));
    }
    Err(ApiError::QuotaExceeded { requested: Value::Object(requested), available: Value::Object(available) })
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "Tasks", summary = "Get a task", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "The task", body = crate::openapi::TaskResponse)))]
async fn get_one(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "task")?;
    let task: Option<Task> =
        sqlx::query_as(AssertSqlSafe(format!("select {TASK_COLUMNS} from tasks where id = $1 and tenant_id = $2")))
            .bind(id)
            .bind(caller.tenant_id)
            .fetch_optional(&s.pool)
            .await?;
    let task = task.ok_or_else(|| ApiError::NotFound("Task not found".into()))?;
    let mut body = json!({ "data": task });
    if task.status == TaskStatus::Pending.as_str() {
        // Best effort: a Redis hiccup must not fail a read of PostgreSQL's truth.
        if let Ok(Some(q)) = s.queue.task_state(id).await {
            let at = s.queue.queue_position(&caller.tenant, id).await.unwrap_or_default();
            // Under fair share, a ready task may wait because its tenant is ahead of others.
            let fair = if q.state == "ready" && s.config.scheduler.profile.claim_order() != ClaimOrder::Priority {
                s.queue.fair_shares(&caller.tenant).await.ok().and_then(|shares| {
                    let mine = shares.iter().find(|(t, _)| *t == caller.tenant)?.1;
                    let lowest =
                        shares.iter().filter(|(t, _)| *t != caller.tenant).map(|(_, v)| *v).reduce(f64::min)?;
                    Some((mine, lowest))
                })
            } else {
                None
            };
            body["data"]["scheduling"] = scheduling(&q, &at, fair);
        }
    }
    Ok(Json(body))
}

/// Why a pending task is not running yet: its queue state, place and the last evaluation's
/// reasons, with one sentence (`why`) saying it.
/// `fair` is (this tenant's weighted dominant share, the lowest of the other tenants with
/// ready work), when fair share orders the queue.
fn scheduling(q: &berth_queue::TaskState, at: &berth_queue::QueuePosition, fair: Option<(f64, f64)>) -> Value {
    let due = at.due_ms.and_then(|ms| DateTime::<Utc>::from_timestamp_millis(ms as i64));
    let due_text = due.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
    let why = match (q.state.as_str(), &q.reason) {
        _ if at.suspended => "tenant suspended: its tasks wait until it is active again".to_owned(),
        ("ready", _) if fair.is_some_and(|(mine, lowest)| mine > lowest + 1e-9) => {
            let (mine, lowest) = fair.unwrap_or_default();
            format!(
                "tenant at fair share: its weighted dominant share {mine:.2} is above another tenant's {lowest:.2}, \
                 which goes first; {} of {} in the tenant's queue",
                at.position.unwrap_or(0),
                at.ready
            )
        }
        ("ready", _) => match at.position {
            Some(p) => format!("waiting in the tenant's queue: {p} of {}", at.ready),
            None => "waiting in the tenant's queue".to_owned(),
        },
        ("leased", _) => "being placed by a scheduler".to_owned(),
        ("parked", Some(r)) => format!("{r}; evaluated again when capacity changes, at the latest {due_text}"),
        ("delayed", Some(r)) if !r.is_empty() => format!("{r}; evaluated again at {due_text}"),
        ("delayed", _) => format!("in backoff until {due_text}"),
        ("bound", _) => format!("placed on {}; waiting for the executor", q.node.as_deref().unwrap_or("a node")),
        (other, _) => other.to_owned(),
    };
    json!({
        "queue_state": q.state,
        "reason": q.reason,
        "attempt": q.attempt,
        "position": at.position,
        "ready_in_tenant": at.ready,
        "due_at": due,
        "fair_share": fair.map(|(mine, lowest)| json!({ "tenant_share": mine, "lowest_other_share": lowest })),
        "why": why,
    })
}

/// Cancels a live task: it ends `cancelled`, its quota and reservation are released, and its
/// queued attempt is withdrawn. A task already over is left as it is, so repeating is
/// harmless. Returns whether the task was live.
async fn cancel(s: &AppState, caller: &Caller, id: Uuid) -> Result<bool, ApiError> {
    let task: Option<(Uuid, Option<String>)> =
        sqlx::query_as("select user_id, k8s_namespace from tasks where id = $1 and tenant_id = $2")
            .bind(id)
            .bind(caller.tenant_id)
            .fetch_optional(&s.pool)
            .await?;
    let (owner, namespace) = task.ok_or_else(|| ApiError::NotFound("Task not found".into()))?;
    if !caller.may_manage_task(owner) {
        return Err(ApiError::Forbidden);
    }
    let mut tx = s.pool.begin().await?;
    let moved: Option<(Option<i32>,)> = sqlx::query_as(
        "update tasks set status = 'cancelled', completed_at = now(), updated_at = now(), error_message = 'cancelled by a user'
         where id = $1 and status = any($2) returning current_retry_count",
    )
    .bind(id)
    .bind(TaskStatus::sources_of(TaskStatus::Cancelled))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempt,)) = moved else { return Ok(false) };
    let attempt = attempt.unwrap_or(0).max(0);
    sqlx::query(
        "update task_executions set status = 'cancelled', finished_at = now(), failure_class = 'cancelled'
         where task_id = $1 and attempt = $2 and status in ('scheduled', 'running')",
    )
    .bind(id)
    .bind(attempt)
    .execute(&mut *tx)
    .await?;
    sqlx::query(berth_core::store::RELEASE_QUOTA).bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    // PostgreSQL says cancelled. Should this fail, the executor's next word on the task (an
    // event, a binding) finds it over and releases it.
    if let Err(e) = s.queue.finish(id).await {
        tracing::warn!(task = %id, error = %e, "releasing a cancelled task in Redis failed; the executor will");
    }
    let _ = s.queue.end_log(id).await;
    let event = berth_queue::TaskEvent {
        task_id: id,
        tenant_id: caller.tenant_id,
        status: TaskStatus::Cancelled,
        attempt: attempt as u32,
        node: None,
        message: Some("cancelled by a user".into()),
        namespace,
    };
    if let Err(e) = s.queue.publish_event(&event).await {
        tracing::warn!(task = %id, error = %e, "publishing the cancellation failed");
    }
    Ok(true)
}

#[utoipa::path(post, path = "/v1/tasks/{id}/stop", tag = "Tasks", summary = "Stop a task", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Stopped, or already over", body = crate::openapi::Message)))]
async fn stop(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let was_live = cancel(&s, &caller, path_id(&raw, "task")?).await?;
    let message = if was_live { "Task stopped successfully" } else { "Task had already finished" };
    Ok(Json(json!({ "message": message })))
}

/// A task that failed for good, as the dead letters list it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadLetter {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub task: Task,
    /// When it failed for good.
    pub dead_lettered_at: DateTime<Utc>,
    /// Its last attempt's failure class (`exit_code`, `oom_killed`, `evicted`, ...).
    pub failure_class: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    #[param(value_type = Option<i64>, minimum = 1)]
    pub page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "Tasks", summary = "The tenant's tasks that failed for good",
    params(PageParams),
    responses((status = 200, description = "A page of dead letters, newest first", body = crate::openapi::DeadLetterList)))]
async fn dead_letters(
    State(s): State<AppState>,
    caller: Caller,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    q.finish()?;
    let filter = "tenant_id = $1 and status = 'failed' and dead_lettered_at is not null";
    let (total,): (i64,) = sqlx::query_as(AssertSqlSafe(format!("select count(*) from tasks where {filter}")))
        .bind(caller.tenant_id)
        .fetch_one(&s.pool)
        .await?;
    let rows: Vec<DeadLetter> = sqlx::query_as(AssertSqlSafe(format!(
        "select {TASK_COLUMNS}, dead_lettered_at,
                (select e.failure_class from task_executions e where e.task_id = tasks.id
                 order by e.attempt desc limit 1) as failure_class
         from tasks where {filter} order by dead_lettered_at desc, id desc limit $2 offset $3"
    )))
    .bind(caller.tenant_id)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": rows, "pagination": page.json(total) })))
}

/// Replays a dead letter: the task is admitted again (its quota charged again) as a new
/// attempt with a fresh retry budget, and queued.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "Tasks", summary = "Replay a task that failed for good",
    params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Queued again", body = crate::openapi::TaskResponse),
              (status = 409, description = "Not a dead letter, or the tenant's quota is full", body = crate::openapi::Error)))]
async fn retry(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "task")?;
    let mut tx = s.pool.begin().await?;
    type Row = (Uuid, Option<String>, Value, Option<i32>, Option<Value>, Option<Value>, Option<i32>, String);
    let row: Option<Row> = sqlx::query_as(
        "select t.user_id, t.dead_lettered_at::text, t.resource_requests, t.priority, t.node_selector, t.tolerations,
                t.current_retry_count, n.name
         from tasks t join tenants n on n.id = t.tenant_id
         where t.id = $1 and t.tenant_id = $2 for update of t",
    )
    .bind(id)
    .bind(caller.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (owner, dead, requests, priority, selector, tolerations, current, tenant) =
        row.ok_or_else(|| ApiError::NotFound("Task not found".into()))?;
    if !caller.may_manage_task(owner) {
        return Err(ApiError::Forbidden);
    }
    if dead.is_none() {
        return Err(ApiError::Conflict("only a task that failed for good (a dead letter) can be retried".into()));
    }
    let attempt = current.unwrap_or(0).max(0) + 1;
    let spec = SchedulingSpec::from_stored(id, tenant, &requests, priority, selector, tolerations, Some(attempt))
        .map_err(|(field, e)| ApiError::Internal(format!("task {id} has malformed {field}: {e}")))?;
    let charge = spec.reservation();
    charge_quota(&mut tx, caller.tenant_id, &charge, 1).await?;
    // The new attempt starts a fresh budget: every retry so far counts as free.
    sqlx::query(
        "update tasks set status = 'pending', current_retry_count = $2, free_retries = $2, dead_lettered_at = null,
                completed_at = null, started_at = null, error_message = null, not_before = null, node_name = null,
                quota_charged = true, quota_cpu = $3, quota_memory = $4, quota_gpu = $5, updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(attempt)
    .bind(charge.cpu_millis as i64)
    .bind(charge.memory_bytes as i64)
    .bind(charge.gpu as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Should this fail, the task is pending in PostgreSQL and the reconciler queues it.
    if let Err(e) = s.queue.enqueue(&spec, std::time::Duration::ZERO).await {
        tracing::warn!(task = %id, error = %e, "queueing a replayed task failed; the reconciler will");
    }
    let task: Task = sqlx::query_as(AssertSqlSafe(format!("select {TASK_COLUMNS} from tasks where id = $1")))
        .bind(id)
        .fetch_one(&s.pool)
        .await?;
    Ok(Json(json!({ "data": task, "message": "Task queued again" })))
}

/// Cancels the task if it is live, then removes it and its executions.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "Tasks", summary = "Delete a task (cancelling it first if live)", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Deleted", body = crate::openapi::Message)))]
async fn delete(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "task")?;
    cancel(&s, &caller, id).await?;
    sqlx::query("delete from tasks where id = $1 and tenant_id = $2")
        .bind(id)
        .bind(caller.tenant_id)
        .execute(&s.pool)
        .await?;
    Ok(Json(json!({ "message": "Task deleted successfully" })))
}

/// One attempt of a task.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Execution {
    pub id: Uuid,
    pub execution_id: String,
    pub attempt: i32,
    pub status: String,
    pub node_name: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub error_message: Option<String>,
    pub logs_path: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// Why the attempt ended, when it did not succeed: `exit_code`, `oom_killed`,
    /// `deadline_exceeded`, `evicted`, `image_pull`, `node_lost`, `infrastructure`, or
    /// `cancelled` (stopped by a user; never retried).
    pub failure_class: Option<String>,
}

#[utoipa::path(get, path = "/v1/tasks/{id}/executions", tag = "Tasks", summary = "A task's attempts", params(("id" = uuid::Uuid, Path, description = "The object's id")),
    responses((status = 200, description = "Every attempt, oldest first", body = crate::openapi::ExecutionList)))]
async fn executions(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&raw, "task")?;
    let found: Option<(Uuid,)> = sqlx::query_as("select id from tasks where id = $1 and tenant_id = $2")
        .bind(id)
        .bind(caller.tenant_id)
        .fetch_optional(&s.pool)
        .await?;
    found.ok_or_else(|| ApiError::NotFound("Task not found".into()))?;
    let rows: Vec<Execution> = sqlx::query_as(
        "select id, execution_id, attempt, status, node_name, started_at, finished_at, exit_code, error_message, logs_path,
                created_at, failure_class
         from task_executions where task_id = $1 order by attempt",
    )
    .bind(id)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": rows })))
}

/// The seed's log parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// How many of the last lines (1–10,000, default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    pub tail: Option<String>,
    /// Keep streaming new lines until the task ends.
    #[param(value_type = Option<bool>)]
    pub follow: Option<String>,
}

/// Most lines one tail returns (the log stream keeps about this many).
const MAX_TAIL: i64 = 10_000;
/// How long a follower waits for lines per read; between reads it checks the task ended.
const FOLLOW_BLOCK: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /v1/tasks/{id}/logs?tail=N&follow=bool`. Without `follow`: the seed's
/// `{"data": [lines]}` of the last `tail` lines (default 100). With `follow=true`: the last
/// `tail` lines, then new ones as they come, as a chunked `text/plain` stream (`curl -N`
/// prints it) that ends when the task does. Lines come from the executor, which copies each
/// attempt's container output into Redis (the same path for the simulated cluster and, later,
/// Kubernetes pod logs).
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "Tasks", summary = "A task's log", params(("id" = uuid::Uuid, Path, description = "The object's id"), LogParams),
    responses((status = 200, description = "The last `tail` lines as `{data: [..]}`; with `follow=true`, a chunked text/plain stream of lines until the task ends", content((crate::openapi::LogLines = "application/json"), (String = "text/plain")))))]
async fn logs(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(p): Query<LogParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let id = path_id(&raw, "task")?;
    let mut q = QueryCheck::default();
    let tail = q
        .parse("tail", p.tail.as_deref(), |v| match v.parse::<i64>() {
            Ok(n) if (1..=MAX_TAIL).contains(&n) => Ok(n as usize),
            _ => Err(format!("must be an integer between 1 and {MAX_TAIL}")),
        })
        .unwrap_or(100);
    let follow = q
        .parse("follow", p.follow.as_deref(), |v| match v {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err("must be true or false"),
        })
        .unwrap_or(false);
    q.finish()?;
    let found: Option<(String,)> = sqlx::query_as("select status from tasks where id = $1 and tenant_id = $2")
        .bind(id)
        .bind(caller.tenant_id)
        .fetch_optional(&s.pool)
        .await?;
    let (status,) = found.ok_or_else(|| ApiError::NotFound("Task not found".into()))?;
    let entries = s.queue.tail_log(id, tail + 1).await?;
    let ended = entries.iter().any(|e| e.end) || status.parse::<TaskStatus>().is_ok_and(TaskStatus::is_terminal);
    let last_id = entries.last().map(|e| e.id.clone()).unwrap_or_else(|| "0-0".into());
    let mut lines: Vec<String> = entries.into_iter().filter_map(|e| e.line).collect();
    if lines.len() > tail {
        lines.drain(..lines.len() - tail);
    }
    if !follow {
        return Ok(Json(json!({ "data": lines })).into_response());
    }
    // Held by the stream until it ends: a bounded number of followers, each with its own
    // Redis connection.
    let permit = s.log_followers.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "{} log followers already open (api.max_log_followers); retry later or read without follow",
            s.config.api.max_log_followers
        ))
    })?;
    let reader = s.queue.dedicated(FOLLOW_BLOCK).await?;
    let pool = s.pool.clone();
    let first = futures::stream::iter(lines.into_iter().map(|l| Ok::<_, std::convert::Infallible>(format!("{l}\n"))));
    // The stream's end, whatever the task does (api.max_log_follow): the client reconnects.
    let until = tokio::time::Instant::now() + s.config.api.max_log_follow;
    let rest = futures::stream::unfold((reader, last_id, ended), move |(reader, after, ended)| {
        let pool = pool.clone();
        let _permit = &permit;
        async move {
            if ended {
                return None;
            }
            loop {
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                match reader.follow_log(id, &after, FOLLOW_BLOCK).await {
                    // Quiet: still follow only while the task lives (its end marker may never come,
                    // if the task was deleted or Redis lost it).
                    Ok(batch) if batch.is_empty() => {
                        let status: Option<(String,)> = sqlx::query_as("select status from tasks where id = $1")
                            .bind(id)
                            .fetch_optional(&pool)
                            .await
                            .ok()?;
                        if status.is_none_or(|(st,)| st.parse::<TaskStatus>().is_ok_and(TaskStatus::is_terminal)) {
                            return None;
                        }
                    }
                    Ok(batch) => {
                        let done = batch.iter().any(|e| e.end);
                        let next = batch.last().map(|e| e.id.clone()).unwrap_or(after);
                        let text: String = batch.into_iter().filter_map(|e| e.line).map(|l| format!("{l}\n")).collect();
                        return Some((Ok(text), (reader, next, done)));
                    }
                    // The stream ends; the client may reconnect and tail again.
                    Err(_) => return None,
                }
            }
        }
    });
    use futures::StreamExt;
    let body = axum::body::Body::from_stream(first.chain(rest));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The seed's list parameters. Unknown parameters are ignored, as HTTP caches add their own.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(value_type = Option<i64>, minimum = 1)]
    pub page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    #[param(value_type = Option<Uuid>)]
    pub user_id: Option<String>,
    /// A label selector of equalities: `team=ml,project=x`.
    pub labels: Option<String>,
}

/// Parses `k=v,k2=v2` (`==` also accepted) into the labels a task must all have.
fn label_selector(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .ok_or_else(|| format!("{part:?} is not key=value (only equality selectors are supported)"))?;
        let (k, v) = (k.trim(), v.trim());
        validate::label_key(k).map_err(|e| format!("key {k:?} {e}"))?;
        validate::label_value(v).map_err(|e| format!("value {v:?} {e}"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    if out.len() > MAX_MAP_ENTRIES {
        return Err(format!("at most {MAX_MAP_ENTRIES} requirements"));
    }
    Ok(out)
}

#[utoipa::path(get, path = "/v1/tasks", tag = "Tasks", summary = "List the tenant's tasks", params(ListParams),
    responses((status = 200, description = "A page of tasks, newest first", body = crate::openapi::TaskList)))]
async fn list(State(s): State<AppState>, caller: Caller, Query(p): Query<ListParams>) -> Result<Json<Value>, ApiError> {
    let mut q = QueryCheck::default();
    let page = q.page(p.page.as_deref(), p.page_size.as_deref());
    let status = q.parse("status", p.status.as_deref(), |v| v.parse::<TaskStatus>().map(TaskStatus::as_str));
    let user_id = q.uuid("user_id", p.user_id.as_deref());
    let labels = q.parse("labels", p.labels.as_deref(), label_selector).map(|m| json!(m));
    q.finish()?;
    // Containment (@>) says "has all these labels".
    let filter = "tenant_id = $1 and ($2::text is null or status = $2) and ($3::uuid is null or user_id = $3)
                  and ($4::jsonb is null or labels @> $4)";
    let (total,): (i64,) = sqlx::query_as(AssertSqlSafe(format!("select count(*) from tasks where {filter}")))
        .bind(caller.tenant_id)
        .bind(status)
        .bind(user_id)
        .bind(&labels)
        .fetch_one(&s.pool)
        .await?;
    let tasks: Vec<Task> = sqlx::query_as(AssertSqlSafe(format!(
        "select {TASK_COLUMNS} from tasks where {filter} order by created_at desc, id desc limit $5 offset $6"
    )))
    .bind(caller.tenant_id)
    .bind(status)
    .bind(user_id)
    .bind(&labels)
    .bind(page.size)
    .bind(page.offset())
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "data": tasks, "pagination": page.json(total) })))
}
