//! The node publisher: copies the cluster's nodes into the Redis ledger.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use berth_core::{NodeView, Resources};
use berth_queue::Queue;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::executor::ExecutorError;

/// Publishes every node once. A node the ledger has but the cluster no longer lists (deleted)
/// stays in the ledger, unschedulable and with no capacity, so nothing new lands on it while
/// the reservations of what ran there are released as those tasks end. Returns how many
/// changed.
pub async fn publish_once(cluster: &dyn Cluster, queue: &Queue) -> Result<usize, ExecutorError> {
    let nodes = cluster.list_nodes().await?;
    let mut changed = 0;
    for n in &nodes {
        if queue.upsert_node(n).await? {
            changed += 1;
        }
    }
    let listed: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    for gone in queue.node_names().await?.into_iter().filter(|n| !listed.contains(n.as_str())) {
        let view = NodeView {
            name: gone,
            allocatable: Resources::ZERO,
            requested: Resources::ZERO,
            labels: Default::default(),
            taints: Vec::new(),
            schedulable: false,
        };
        if queue.upsert_node(&view).await? {
            info!(node = %view.name, "node left the cluster; no new tasks go to it");
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
