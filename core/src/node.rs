//! Nodes as the scheduler sees them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// A taint's effect, as Kubernetes defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: TaintEffect,
}

/// One node: its capacity for berth, what berth has reserved on it, and what filters read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// What berth may place on the node (allocatable minus pods berth does not own).
    pub allocatable: Resources,
    /// What berth's bindings hold on the node.
    pub requested: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// False for a cordoned or NotReady node: it receives no new tasks.
    #[serde(default = "yes")]
    pub schedulable: bool,
}

fn yes() -> bool {
    true
}

impl NodeView {
    pub fn free(&self) -> Resources {
        self.allocatable.saturating_sub(&self.requested)
    }
}

/// Every node the scheduler may place on, at one ledger version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub version: u64,
    pub nodes: Vec<NodeView>,
}

impl ClusterSnapshot {
    /// The position of node `name`: a binary search, as snapshots read from the ledger are
    /// sorted by name, falling back to a scan for one built in another order.
    pub fn position(&self, name: &str) -> Option<usize> {
        match self.nodes.binary_search_by(|n| n.name.as_str().cmp(name)) {
            Ok(i) => Some(i),
            Err(_) => self.nodes.iter().position(|n| n.name == name),
        }
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeView> {
        self.position(name).map(|i| &mut self.nodes[i])
    }

    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.position(name).map(|i| &self.nodes[i])
    }
}
