//! Node filters: may this task run on this node?

use std::borrow::Cow;

use berth_core::resources::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES};
use berth_core::{NodeView, SchedulingSpec, TaintEffect};

/// Why a filter rejected a node. `reason` is short and stable so that rejections across
/// nodes aggregate ("9 insufficient nvidia.com/gpu").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub filter: &'static str,
    /// Static for the common reasons, so rejecting most of a large cluster allocates nothing.
    pub reason: Cow<'static, str>,
}

impl Unfit {
    fn new(filter: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Unfit { filter, reason: reason.into() }
    }
}

pub trait NodeFilter: Send + Sync {
    fn name(&self) -> &'static str;
    fn check(&self, task: &SchedulingSpec, node: &NodeView) -> Result<(), Unfit>;
}

/// Rejects cordoned and NotReady nodes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeSchedulable;

impl NodeSchedulable {
    pub const NAME: &'static str = "node_schedulable";
}

impl NodeFilter for NodeSchedulable {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn check(&self, _task: &SchedulingSpec, node: &NodeView) -> Result<(), Unfit> {
        if node.schedulable { Ok(()) } else { Err(Unfit::new(Self::NAME, "node unschedulable")) }
    }
}

/// Rejects nodes whose free capacity is below the task's reservation (requests with
/// kube-scheduler's defaults, the same amount the ledger reserves).
#[derive(Debug, Default, Clone, Copy)]
pub struct ResourcesFit;

impl ResourcesFit {
    pub const NAME: &'static str = "resources_fit";
}

impl NodeFilter for ResourcesFit {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn check(&self, task: &SchedulingSpec, node: &NodeView) -> Result<(), Unfit> {
        // Without defaults applied to a copy: the filter runs for every node of every decision.
        let r = &task.requests;
        let need = |v: u64, default: u64| if v == 0 { default } else { v };
        let short = |need: u64, alloc: u64, used: u64| need > alloc.saturating_sub(used);
        let (a, u) = (&node.allocatable, &node.requested);
        let cpu = short(need(r.cpu_millis, DEFAULT_CPU_MILLIS), a.cpu_millis, u.cpu_millis);
        let memory = short(need(r.memory_bytes, DEFAULT_MEMORY_BYTES), a.memory_bytes, u.memory_bytes);
        let gpu = short(r.gpu, a.gpu, u.gpu);
        let extended =
            !r.extended.is_empty() && r.extended.iter().any(|(k, v)| short(v, a.extended.get(k), u.extended.get(k)));
        let reason = match (cpu, memory, gpu, extended) {
            (false, false, false, false) => return Ok(()),
            (true, false, false, false) => "insufficient cpu",
            (false, true, false, false) => "insufficient memory",
            (false, false, true, false) => "insufficient nvidia.com/gpu",
            (true, true, false, false) => "insufficient cpu, memory",
            (true, false, true, false) => "insufficient cpu, nvidia.com/gpu",
            (false, true, true, false) => "insufficient memory, nvidia.com/gpu",
            (true, true, true, false) => "insufficient cpu, memory, nvidia.com/gpu",
            // Short of an extended resource: rare, and worth the allocation of naming it.
            _ => {
                let names = task.reservation().shortfalls(a, u).names().join(", ");
                return Err(Unfit::new(Self::NAME, format!("insufficient {names}")));
            }
        };
        Err(Unfit::new(Self::NAME, reason))
    }
}

/// Rejects nodes lacking any of the task's `node_selector` labels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeSelector;

impl NodeSelector {
    pub const NAME: &'static str = "node_selector";
}

impl NodeFilter for NodeSelector {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn check(&self, task: &SchedulingSpec, node: &NodeView) -> Result<(), Unfit> {
        let matches = task.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
        if matches { Ok(()) } else { Err(Unfit::new(Self::NAME, "node selector mismatch")) }
    }
}

/// Rejects nodes with a `NoSchedule` or `NoExecute` taint the task does not tolerate.
/// `PreferNoSchedule` never rejects (kube-scheduler's TaintToleration filter).
#[derive(Debug, Default, Clone, Copy)]
pub struct Taints;

impl Taints {
    pub const NAME: &'static str = "taints";
}

impl NodeFilter for Taints {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn check(&self, task: &SchedulingSpec, node: &NodeView) -> Result<(), Unfit> {
        let untolerated = node
            .taints
            .iter()
            .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
            .find(|t| !task.tolerations.iter().any(|tol| tol.tolerates(t)));
        match untolerated {
            None => Ok(()),
            Some(t) => Err(Unfit::new(Self::NAME, format!("untolerated taint {}", t.key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{Resources, Taint, Toleration, TolerationOperator};
    use std::collections::BTreeMap;

    fn node() -> NodeView {
        NodeView {
            name: "n1".into(),
            allocatable: Resources::new(4000, 16 << 30, 2),
            requested: Resources::new(1500, 2 << 30, 0),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            taints: vec![],
            schedulable: true,
        }
    }

    fn task(cpu: u64, mem: u64, gpu: u64) -> SchedulingSpec {
        SchedulingSpec {
            task_id: uuid::Uuid::nil(),
            tenant: "t".into(),
            requests: Resources::new(cpu, mem, gpu),
            priority: 0,
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            attempt: 0,
            seq: 0,
        }
    }

    #[test]
    fn resources_fit_admits_exactly_the_free_capacity() {
        let n = node();
        assert!(ResourcesFit.check(&task(2500, 14 << 30, 2), &n).is_ok());
        let e = ResourcesFit.check(&task(2501, 14 << 30, 3), &n).unwrap_err();
        assert_eq!(e.reason, "insufficient cpu, nvidia.com/gpu");
    }

    #[test]
    fn resources_fit_counts_default_requests() {
        let mut n = node();
        n.requested = Resources::new(3950, 0, 0);
        // An empty request reserves 100m, which no longer fits in 50m.
        assert!(ResourcesFit.check(&task(0, 0, 0), &n).is_err());
    }

    #[test]
    fn node_selector_requires_every_label() {
        let n = node();
        let mut t = task(1, 1, 0);
        t.node_selector.insert("zone".into(), "a".into());
        assert!(NodeSelector.check(&t, &n).is_ok());
        t.node_selector.insert("gpu".into(), "a100".into());
        assert_eq!(NodeSelector.check(&t, &n).unwrap_err().reason, "node selector mismatch");
    }

    #[test]
    fn taints_reject_unless_tolerated_and_prefer_no_schedule_never_rejects() {
        let mut n = node();
        n.taints = vec![Taint { key: "k".into(), value: "v".into(), effect: TaintEffect::NoSchedule }];
        let mut t = task(1, 1, 0);
        assert!(Taints.check(&t, &n).is_err());
        t.tolerations.push(Toleration {
            key: "k".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        });
        assert!(Taints.check(&t, &n).is_ok());
        n.taints = vec![Taint { key: "p".into(), value: String::new(), effect: TaintEffect::PreferNoSchedule }];
        assert!(Taints.check(&task(1, 1, 0), &n).is_ok());
    }

    #[test]
    fn cordoned_nodes_are_rejected() {
        let mut n = node();
        n.schedulable = false;
        assert!(NodeSchedulable.check(&task(1, 1, 0), &n).is_err());
    }
}
