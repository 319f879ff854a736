//! The reconciler: PostgreSQL is the system of record; this makes Redis agree with it.
//!
//! One instance is active at a time (a Redis lease). Each pass walks every pending task and
//! enqueues those Redis does not know (admissions whose enqueue failed, everything after Redis
//! lost its data), and re-applies retries whose Redis half was lost. Enqueue and retry are
//! idempotent, so a pass racing the normal path is harmless; tasks updated in the last few
//! seconds are skipped anyway to keep passes cheap.
//!
//! Not yet reconciled (the Kubernetes executor's work): tasks `scheduled` or `running` whose
//! Job vanished with an executor, and reservations of running tasks after Redis lost its data.

use std::future::Future;
use std::time::Duration;

use berth_core::SchedulingSpec;
use berth_queue::Queue;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::executor::ExecutorError;

/// Pending tasks read (and looked up in Redis, in one pipeline) per page.
const PAGE: i64 = 1000;

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
    created_at: Option<DateTime<Utc>>,
}

/// The scheduling view of a stored task.
fn spec_of(r: PendingRow) -> Result<(SchedulingSpec, Option<DateTime<Utc>>), ExecutorError> {
    let spec = SchedulingSpec::from_stored(
        r.id,
        r.tenant_name,
        &r.resource_requests,
        r.priority,
        r.node_selector,
        r.tolerations,
        r.current_retry_count,
    )
    .map_err(|(field, message)| ExecutorError::MalformedTask { task: r.id, field, message })?;
    Ok((spec, r.not_before))
}

/// One pass over every pending task, in pages: returns how many tasks it put right.
///
/// - Unknown to Redis: enqueued (honouring `not_before`).
/// - Bound in Redis at an older attempt: PostgreSQL already sent the task to its next attempt
///   and the Redis half of that retry was lost; the retry is applied again.
pub async fn reconcile_once(pool: &PgPool, queue: &Queue, min_age: Duration) -> Result<usize, ExecutorError> {
    // Which tenants are suspended is PostgreSQL's to say; Redis only caches it for claim.
    let suspended: Vec<(String,)> =
        sqlx::query_as("select name from tenants where status = 'suspended'").fetch_all(pool).await?;
    queue.replace_suspended(&suspended.into_iter().map(|(n,)| n).collect::<Vec<_>>()).await?;
    // So are the fair-share weights.
    let weights: Vec<(String, i32)> = sqlx::query_as("select name, weight from tenants").fetch_all(pool).await?;
    queue.replace_weights(&weights.into_iter().map(|(n, w)| (n, w.max(1) as u32)).collect::<Vec<_>>()).await?;
    // Terminal tasks still holding quota (their terminal write raced a crash of an older
    // version, or a manual edit) give it back.
    sqlx::query(berth_core::store::RELEASE_QUOTA).bind(None::<Uuid>).execute(pool).await?;
    let mut repaired = 0;
    // Keyset pagination: every pending task is looked at, however many are queued normally.
    // (created_at, id) of the last task seen; the seed's created_at is nullable, so a missing
    // one sorts as the epoch (which is also where the walk starts).
    let mut after: (DateTime<Utc>, Uuid) = (DateTime::<Utc>::UNIX_EPOCH, Uuid::nil());
    loop {
        let rows: Vec<PendingRow> = sqlx::query_as(
            "select t.id, n.name as tenant_name, t.resource_requests, t.priority, t.node_selector, t.tolerations,
                    t.current_retry_count, t.not_before, t.created_at
             from tasks t join tenants n on n.id = t.tenant_id
             where t.status = 'pending' and t.updated_at < now() - $1::interval
               and (coalesce(t.created_at, 'epoch'), t.id) > ($2, $3)
             order by coalesce(t.created_at, 'epoch'), t.id
             limit $4",
        )
        .bind(format!("{} milliseconds", min_age.as_millis()))
        .bind(after.0)
        .bind(after.1)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = (last.created_at.unwrap_or(DateTime::<Utc>::UNIX_EPOCH), last.id);
        let full_page = rows.len() as i64 == PAGE;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let states = queue.task_states(&ids).await?;
        for (row, state) in rows.into_iter().zip(states) {
            let id = row.id;
            let (spec, not_before) = match spec_of(row) {
                Ok(x) => x,
                Err(e) => {
                    warn!(task = %id, error = %e, "cannot enqueue a malformed task");
                    continue;
                }
            };
            let delay = not_before.and_then(|t| (t - Utc::now()).to_std().ok()).unwrap_or(Duration::ZERO);
            match state {
                None => {
                    if queue.enqueue(&spec, delay).await?.is_some() {
                        repaired += 1;
                    }
                }
                Some(st) if st.state == "bound" && st.attempt < spec.attempt => {
                    if queue.retry(id, st.attempt, delay).await? {
                        repaired += 1;
                    }
                }
                Some(_) => {}
            }
        }
        if !full_page {
            break;
        }
    }
    Ok(repaired)
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
