//! The reconciler: PostgreSQL is the system of record; this makes Redis agree with it.
//!
//! One instance is active at a time (a Redis lease). Each pass enqueues pending tasks that
//! Redis does not know: admissions whose enqueue failed, and everything after Redis lost its
//! data. Enqueue is idempotent, so a pass racing a fresh admission is harmless; tasks updated
//! in the last few seconds are skipped anyway to keep passes cheap.

use std::future::Future;
use std::time::Duration;

use berth_core::{Resources, SchedulingSpec, Toleration};
use berth_queue::Queue;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::executor::ExecutorError;

/// Tasks looked at per pass; the rest wait for the next pass.
const PASS_LIMIT: i64 = 1000;

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: Uuid,
    tenant_name: String,
    resource_requests: serde_json::Value,
    priority: Option<i32>,
    node_selector: Option<serde_json::Value>,
    tolerations: Option<serde_json::Value>,
    current_retry_count: Option<i32>,
    not_before: Option<DateTime<Utc>>,
}

/// The scheduling view of a stored task.
fn spec_of(r: PendingRow) -> Result<(SchedulingSpec, Option<DateTime<Utc>>), ExecutorError> {
    let malformed = |field, message: String| ExecutorError::MalformedTask { task: r.id, field, message };
    let requests =
        Resources::from_requirements_json(&r.resource_requests).map_err(|e| malformed("resource_requests", e))?;
    let node_selector = match r.node_selector.clone() {
        None | Some(serde_json::Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v).map_err(|e| malformed("node_selector", e.to_string()))?,
    };
    let tolerations: Vec<Toleration> = match r.tolerations.clone() {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| malformed("tolerations", e.to_string()))?,
    };
    let spec = SchedulingSpec {
        task_id: r.id,
        tenant: r.tenant_name,
        requests,
        priority: r.priority.unwrap_or(0).clamp(0, 100) as u8,
        node_selector,
        tolerations,
        attempt: r.current_retry_count.unwrap_or(0).max(0) as u32,
        seq: 0,
    };
    Ok((spec, r.not_before))
}

/// One pass: returns how many tasks it enqueued.
pub async fn reconcile_once(pool: &PgPool, queue: &Queue, min_age: Duration) -> Result<usize, ExecutorError> {
    let rows: Vec<PendingRow> = sqlx::query_as(
        "select t.id, n.name as tenant_name, t.resource_requests, t.priority, t.node_selector, t.tolerations,
                t.current_retry_count, t.not_before
         from tasks t join tenants n on n.id = t.tenant_id
         where t.status = 'pending' and t.updated_at < now() - $1::interval
         order by t.created_at
         limit $2",
    )
    .bind(format!("{} milliseconds", min_age.as_millis()))
    .bind(PASS_LIMIT)
    .fetch_all(pool)
    .await?;
    let mut enqueued = 0;
    for row in rows {
        let id = row.id;
        if queue.task_state(id).await?.is_some() {
            continue;
        }
        let (spec, not_before) = match spec_of(row) {
            Ok(x) => x,
            Err(e) => {
                warn!(task = %id, error = %e, "cannot enqueue a malformed task");
                continue;
            }
        };
        let delay = not_before.and_then(|t| (t - Utc::now()).to_std().ok()).unwrap_or(Duration::ZERO);
        if queue.enqueue(&spec, delay).await?.is_some() {
            enqueued += 1;
        }
    }
    Ok(enqueued)
}

/// Runs passes every `every` while this process holds the reconciler lease.
pub async fn run(pool: PgPool, queue: Queue, holder: String, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        match queue.hold_leader("reconciler", &holder, every * 3).await {
            Ok(true) => match reconcile_once(&pool, &queue, Duration::from_secs(2)).await {
                Ok(0) => {}
                Ok(n) => info!(enqueued = n, "reconciler enqueued pending tasks missing from Redis"),
                Err(e) => warn!(error = %e, "reconcile pass failed"),
            },
            Ok(false) => {}
            Err(e) => warn!(error = %e, "reconciler lease check failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
