//! Single-task admissions of one tenant, merged into shared transactions.
//!
//! A tenant's admissions serialize on its quota rows: each holds them from its conditional
//! update to its commit (a WAL flush), so one tenant gets through at most one admission per
//! commit. Here concurrent `POST /v1/tasks` of a tenant queue up while the tenant's current
//! transaction runs, and the next transaction admits all of them at once: one quota update
//! and one commit for the lot. An idle tenant's request starts at once, so nothing waits for
//! a batch to fill; under load batches form by themselves, as in a database's group commit.
//!
//! The merge never changes an answer. The merged transaction is the same [`admit`] as a
//! batch's (one conditional update in the insert transaction, all or nothing). If it is
//! refused because of what the requests ask (the quota cannot hold them all, one user was
//! suspended, a missing volume), it was rolled back, and each request is admitted on its own,
//! in arrival order, and gets exactly the answer it would have had alone. If PostgreSQL or
//! Redis failed instead, every request of the batch gets that failure, as it would have
//! alone: retrying them one by one could admit twice what a commit whose answer was lost did
//! admit, and would keep the tenant's later requests waiting through the outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::tasks::{Submitters, Task, ValidTask, admit};

/// Most requests one merged transaction admits.
const MAX_MERGED: usize = 256;

struct Waiting {
    caller: Caller,
    task: ValidTask,
    reply: oneshot::Sender<Result<Task, ApiError>>,
}

/// Per tenant: the requests waiting for the next transaction. A tenant is in the map exactly
/// while a worker runs for it.
#[derive(Default)]
pub struct Admissions {
    waiting: Mutex<HashMap<Uuid, Vec<Waiting>>>,
    merged: AtomicU64,
}

impl Admissions {
    /// How many merged transactions (of more than one request) have committed.
    pub fn merged_transactions(&self) -> u64 {
        self.merged.load(Ordering::Relaxed)
    }

    /// Admits one task of `caller`'s tenant, possibly together with others of the tenant.
    pub async fn submit(self: &Arc<Self>, s: &AppState, caller: &Caller, task: ValidTask) -> Result<Task, ApiError> {
        let (reply, answer) = oneshot::channel();
        let tenant = caller.tenant_id;
        let start = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let start = !waiting.contains_key(&tenant);
            waiting.entry(tenant).or_default().push(Waiting { caller: caller.clone(), task, reply });
            start
        };
        if start {
            // A task of its own, not this request's future: if this client goes away, the
            // others' admissions must still finish.
            tokio::spawn(self.clone().work(s.clone(), tenant));
        }
        answer.await.unwrap_or_else(|_| Err(ApiError::Internal("the admission worker stopped".into())))
    }

    /// Admits the tenant's waiting requests, a transaction at a time, until none wait.
    async fn work(self: Arc<Self>, s: AppState, tenant: Uuid) {
        loop {
            let batch: Vec<Waiting> = {
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = waiting.get_mut(&tenant) else { return };
                if queue.is_empty() {
                    waiting.remove(&tenant);
                    return;
                }
                let n = queue.len().min(MAX_MERGED);
                queue.drain(..n).collect()
            };
            // A panic fails this batch's requests (their replies drop: a 500 each), not the
            // tenant's later ones.
            if std::panic::AssertUnwindSafe(admit_batch(&s, &self.merged, batch)).catch_unwind().await.is_err() {
                tracing::error!(%tenant, "an admission batch panicked");
            }
        }
    }
}

/// Refusals that depend on what the requests ask: alone, some of them may pass.
fn refused_for_the_request(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::QuotaExceeded { .. }
            | ApiError::Suspended(_)
            | ApiError::Unauthorized(_)
            | ApiError::BadRequest { .. }
            | ApiError::Conflict(_)
            | ApiError::NotFound(_)
    )
}

async fn admit_batch(s: &AppState, merged: &AtomicU64, mut batch: Vec<Waiting>) {
    if batch.len() > 1 {
        let first = &batch[0].caller;
        let who = Submitters {
            tenant_id: first.tenant_id,
            tenant: first.tenant.clone(),
            users: batch.iter().map(|w| w.caller.user_id).collect(),
        };
        let tasks = batch.iter().map(|w| w.task.clone()).collect();
        match admit(s, &who, tasks, "").await {
            Ok(admitted) => {
                merged.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("berth_admission_merged_transactions_total").increment(1);
                metrics::counter!("berth_admission_merged_requests_total").increment(batch.len() as u64);
                for (w, task) in batch.into_iter().zip(admitted) {
                    let _ = w.reply.send(Ok(task));
                }
                return;
            }
            Err(e) if refused_for_the_request(&e) => {
                tracing::debug!(requests = batch.len(), error = %e, "merged admission refused; admitting one by one")
            }
            Err(e) => {
                let status = e.status_code();
                tracing::error!(requests = batch.len(), error = %e, "merged admission failed");
                for w in batch {
                    let err = if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                        ApiError::Unavailable("database busy, retry later".into())
                    } else {
                        ApiError::Internal(format!("admission failed: {e}"))
                    };
                    let _ = w.reply.send(Err(err));
                }
                return;
            }
        }
    }
    for w in batch.drain(..) {
        let result = admit(s, &Submitters::of(&w.caller, 1), vec![w.task], "").await.map(|mut v| v.remove(0));
        let _ = w.reply.send(result);
    }
}
