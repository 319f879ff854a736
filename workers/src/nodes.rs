//! The node publisher: copies the cluster's nodes into the Redis ledger.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, HashSet};

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
    Publisher::default().publish(cluster, queue, true).await
}

/// What was last published, so that a change to one node costs one ledger write, not one
/// per node.
#[derive(Default)]
pub struct Publisher {
    last: HashMap<String, NodeView>,
}

impl Publisher {
    /// Publishes the nodes that changed since the last call; with `full`, every node (a
    /// periodic resync: the ledger may have been lost or edited).
    pub async fn publish(&mut self, cluster: &dyn Cluster, queue: &Queue, full: bool) -> Result<usize, ExecutorError> {
        let nodes = cluster.list_nodes().await?;
        let mut changed = 0;
        for n in &nodes {
            if (full || self.last.get(&n.name) != Some(n)) && queue.upsert_node(n).await? {
                changed += 1;
            }
        }
        let listed: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let gone: Vec<String> = if full {
            queue.node_names().await?.into_iter().filter(|n| !listed.contains(n.as_str())).collect()
        } else {
            self.last.keys().filter(|n| !listed.contains(n.as_str())).cloned().collect()
        };
        for name in gone {
            let view = NodeView {
                name,
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
        self.last = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        Ok(changed)
    }
}

/// How long a change waits for the ones right behind it (a node's status and its pods often
/// change together) before the ledger is written.
const SETTLE: Duration = Duration::from_millis(100);

/// Publishes the nodes now, on every change the cluster reports (within about [`SETTLE`]),
/// and in full every `every`, until `shutdown`.
pub async fn run(cluster: Arc<dyn Cluster>, queue: Queue, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let changes = cluster.node_changes();
    let mut publisher = Publisher::default();
    let mut next_full = tokio::time::Instant::now();
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + every;
        }
        match publisher.publish(cluster.as_ref(), &queue, full).await {
            Ok(0) => {}
            Ok(n) => info!(changed = n, "published nodes to the ledger"),
            Err(e) => warn!(error = %e, "publishing nodes failed"),
        }
        let changed = async {
            match &changes {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep_until(next_full) => {}
            _ = changed => tokio::time::sleep(SETTLE).await,
        }
    }
}
