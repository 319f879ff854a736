//! The volume syncer: makes sure every volume not yet bound has its claim in the cluster,
//! and records the claim's phase as the volume's status.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::cluster::{Cluster, JobRequest, VolumeRequest};
use crate::executor::ExecutorError;

#[derive(sqlx::FromRow)]
struct UnboundVolume {
    id: Uuid,
    tenant: String,
    size: String,
    storage_class: Option<String>,
    access_mode: String,
    pvc_name: Option<String>,
    status: String,
}

/// One pass over the volumes that are not bound; returns how many changed status.
pub async fn sync_once(pool: &PgPool, cluster: &dyn Cluster) -> Result<usize, ExecutorError> {
    let rows: Vec<UnboundVolume> = sqlx::query_as(
        "select v.id, n.name as tenant, v.size, v.storage_class, v.access_mode, v.pvc_name, v.status
         from volumes v join tenants n on n.id = v.tenant_id
         where v.status in ('pending', 'lost') order by v.created_at limit 1000",
    )
    .fetch_all(pool)
    .await?;
    let mut changed = 0;
    for UnboundVolume { id, tenant, size, storage_class, access_mode, pvc_name: claim, status } in rows {
        let request = VolumeRequest {
            namespace: JobRequest::namespace_for(&tenant),
            claim: claim.unwrap_or_else(|| id.to_string()),
            size,
            storage_class,
            access_mode,
        };
        let phase = match cluster.ensure_volume(&request).await {
            Ok(p) => p,
            Err(e) => {
                warn!(volume = %id, error = %e, "ensuring a volume's claim failed");
                continue;
            }
        };
        if phase.as_status() != status {
            sqlx::query("update volumes set status = $2, updated_at = now() where id = $1")
                .bind(id)
                .bind(phase.as_status())
                .execute(pool)
                .await?;
            info!(volume = %id, status = phase.as_status(), "volume status changed");
            changed += 1;
        }
    }
    Ok(changed)
}

/// Runs passes every `every` until `shutdown`.
pub async fn run(pool: PgPool, cluster: Arc<dyn Cluster>, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = sync_once(&pool, cluster.as_ref()).await {
            warn!(error = %e, "volume sync failed");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
