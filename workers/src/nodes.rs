//! The node publisher: copies the cluster's nodes into the Redis ledger.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_queue::Queue;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::executor::ExecutorError;

/// Publishes every node once. Returns how many changed.
pub async fn publish_once(cluster: &dyn Cluster, queue: &Queue) -> Result<usize, ExecutorError> {
    let nodes = cluster.list_nodes().await?;
    let mut changed = 0;
    for n in &nodes {
        if queue.upsert_node(n).await? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Publishes the nodes now and every `every` until `shutdown`.
pub async fn run(cluster: Arc<dyn Cluster>, queue: Queue, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        match publish_once(cluster.as_ref(), &queue).await {
            Ok(0) => {}
            Ok(n) => info!(changed = n, "published nodes to the ledger"),
            Err(e) => warn!(error = %e, "publishing nodes failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
