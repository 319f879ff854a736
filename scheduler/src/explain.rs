//! `berth explain`: one task against a described set of nodes, with every node's verdict.
//!
//! The node chosen is [`decide`]'s, the scheduler's own code path; the per-node detail (each
//! rejecting filter's reason, each scorer's score, the weighted total) comes from the same
//! [`Profile`]. Input and output are JSON documents (see the README's "berth explain").

use std::collections::BTreeMap;

use berth_core::{ClusterSnapshot, NodeView, Resources, SchedulingSpec, Taint, Toleration};
use berth_policies::Profile;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::candidates::CandidateIndex;
use crate::decide::{Decision, decide_with};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainInput {
    pub nodes: Vec<NodeInput>,
    pub task: TaskInput,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    pub name: String,
    /// Kubernetes resource names to quantities: `cpu`, `memory`, `nvidia.com/gpu`, any
    /// extended resource (`amd.com/gpu`); `pods`, `ephemeral-storage` and hugepages are ignored.
    pub allocatable: BTreeMap<String, Value>,
    /// What is already placed on the node, in the same form.
    #[serde(default)]
    pub requested: BTreeMap<String, Value>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    #[serde(default)]
    pub resource_requests: RequestsInput,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub priority: u8,
}

/// The seed's ResourceRequirements, with `extended` resources by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsInput {
    #[serde(default)]
    pub cpu: Option<Value>,
    #[serde(default)]
    pub memory: Option<Value>,
    #[serde(default)]
    pub gpu: Option<u64>,
    #[serde(default)]
    pub extended: BTreeMap<String, Value>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Explanation {
    /// The node the scheduler would choose, or null when none fits.
    pub selected: Option<String>,
    pub nodes: Vec<NodeVerdict>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct NodeVerdict {
    pub name: String,
    pub feasible: bool,
    /// Each rejecting filter's reason; empty when feasible.
    pub unfit: Vec<String>,
    /// Each scorer's score (only for feasible nodes, as the scheduler scores only those).
    pub scores: BTreeMap<String, u64>,
    /// The weighted sum of `scores`.
    pub total: u64,
}

/// Node resources Kubernetes reports that berth does not schedule by: accepted, ignored.
fn ignored_resource(name: &str) -> bool {
    matches!(name, "pods" | "ephemeral-storage") || name.starts_with("hugepages-")
}

fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("expected a quantity (a string or a number), got {other}")),
    }
}

fn resources(at: &str, m: &BTreeMap<String, Value>) -> Result<Resources, String> {
    let mut r = Resources::ZERO;
    for (name, v) in m.iter().filter(|(n, _)| !ignored_resource(n)) {
        let bad = |e: String| format!("{at}.{name}: {e}");
        r.set_quantity(name, &text(v).map_err(bad)?).map_err(bad)?;
    }
    Ok(r)
}

impl ExplainInput {
    /// The snapshot and the task, or the first problem, naming its place in the input.
    pub fn parse(self) -> Result<(ClusterSnapshot, SchedulingSpec), String> {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.into_iter().enumerate() {
            if n.name.is_empty() {
                return Err(format!("nodes[{i}].name: must not be empty"));
            }
            if nodes.iter().any(|m: &NodeView| m.name == n.name) {
                return Err(format!("nodes[{i}].name: {:?} appears twice", n.name));
            }
            nodes.push(NodeView {
                allocatable: resources(&format!("nodes[{i}].allocatable"), &n.allocatable)?,
                requested: resources(&format!("nodes[{i}].requested"), &n.requested)?,
                name: n.name,
                labels: n.labels,
                taints: n.taints,
                schedulable: !n.unschedulable,
            });
        }
        let r = &self.task.resource_requests;
        let named: BTreeMap<String, Value> = [("cpu", &r.cpu), ("memory", &r.memory)]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
            .collect();
        let mut requests = resources("task.resource_requests", &named)?;
        let at = "task.resource_requests.extended";
        if let Some(name) = r.extended.keys().find(|n| ignored_resource(n)) {
            return Err(format!("{at}.{name}: not a resource berth schedules"));
        }
        let extended = resources(at, &r.extended)?;
        requests.gpu = r.gpu.unwrap_or(0) + extended.gpu;
        requests.extended = extended.extended;
        let task = SchedulingSpec {
            task_id: Uuid::nil(),
            tenant: "explain".into(),
            requests,
            priority: self.task.priority,
            node_selector: self.task.node_selector,
            tolerations: self.task.tolerations,
            attempt: 0,
            seq: 0,
        };
        Ok((ClusterSnapshot { version: 0, nodes }, task))
    }
}

/// Explains where `task` goes on `snapshot` under `profile`.
pub fn explain(snapshot: &ClusterSnapshot, task: &SchedulingSpec, profile: &Profile) -> Explanation {
    // The scheduler's own search, candidate index included when the profile has one.
    let mut index = profile.candidates().map(|(order, limit)| CandidateIndex::new(order, limit, snapshot));
    let selected = match decide_with(snapshot, index.as_mut(), std::slice::from_ref(task), profile).into_iter().next() {
        Some(Decision::Place { node, .. }) => Some(node),
        _ => None,
    };
    let nodes = snapshot
        .nodes
        .iter()
        .map(|node| {
            let unfit: Vec<String> = profile.unfit_all(task, node).into_iter().map(|u| u.reason.into_owned()).collect();
            let feasible = unfit.is_empty();
            let (total, scores) = if feasible {
                let (total, entries) = profile.score(task, node);
                (total, entries.into_iter().map(|e| (e.scorer.to_owned(), e.score)).collect())
            } else {
                (0, BTreeMap::new())
            };
            NodeVerdict { name: node.name.clone(), feasible, unfit, scores, total }
        })
        .collect();
    Explanation { selected, nodes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::config::Config;

    fn run(input: &str) -> Result<Explanation, String> {
        let input: ExplainInput = serde_json::from_str(input).map_err(|e| e.to_string())?;
        let (snapshot, task) = input.parse()?;
        Ok(explain(&snapshot, &task, &Profile::build(&Config::default().scheduler.profile).unwrap()))
    }

    #[test]
    fn the_issues_example_explains_every_node() {
        let out = run(r#"{"nodes": [
            {"name": "n1", "allocatable": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
             "requested": {"cpu": "1500m", "memory": "2Gi"}, "labels": {},
             "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}], "unschedulable": false},
            {"name": "n2", "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}, "requested": {"cpu": "3"}}],
            "task": {"resource_requests": {"cpu": "100m", "memory": "128Mi", "gpu": 0, "extended": {}},
                     "node_selector": {}, "tolerations": []}}"#)
        .unwrap();
        // n1's taint is not tolerated; n2 fits. Default profile: most_allocated over cpu and
        // memory (gpu not requested, so skipped): cpu (3000+100)*100/4000 = 77,
        // memory 128Mi*100/16Gi = 0 → (77 + 0) / 2 = 38.
        assert_eq!(out.selected.as_deref(), Some("n2"));
        assert!(!out.nodes[0].feasible);
        assert_eq!(out.nodes[0].unfit.len(), 1, "{:?}", out.nodes[0].unfit);
        assert!(out.nodes[0].unfit[0].contains("taint"), "{:?}", out.nodes[0].unfit);
        assert!(out.nodes[1].feasible);
        assert_eq!(out.nodes[1].scores["resource_fit"], 38);
        assert_eq!(out.nodes[1].total, 38);
    }

    #[test]
    fn every_rejecting_filter_is_listed_and_nothing_fitting_selects_null() {
        let out =
            run(r#"{"nodes": [{"name": "n1", "allocatable": {"cpu": "1", "memory": "1Gi"}, "unschedulable": true,
                                      "labels": {"zone": "a"}}],
                          "task": {"resource_requests": {"cpu": "2"}, "node_selector": {"zone": "b"}}}"#)
            .unwrap();
        assert_eq!(out.selected, None);
        assert_eq!(out.nodes[0].unfit.len(), 3, "{:?}", out.nodes[0].unfit);
        assert!(out.nodes[0].scores.is_empty());
    }

    #[test]
    fn extended_resources_are_filtered_and_named() {
        let out = run(r#"{"nodes": [
            {"name": "amd", "allocatable": {"cpu": "8", "memory": "32Gi", "amd.com/gpu": "2"},
             "requested": {"amd.com/gpu": "1"}},
            {"name": "full", "allocatable": {"cpu": "8", "memory": "32Gi", "amd.com/gpu": "1"},
             "requested": {"amd.com/gpu": "1"}},
            {"name": "plain", "allocatable": {"cpu": "8", "memory": "32Gi"}}],
            "task": {"resource_requests": {"cpu": "1", "memory": "1Gi", "extended": {"amd.com/gpu": "1"}}}}"#)
        .unwrap();
        assert_eq!(out.selected.as_deref(), Some("amd"));
        for i in [1, 2] {
            assert_eq!(out.nodes[i].unfit, vec!["insufficient amd.com/gpu".to_string()], "{:?}", out.nodes[i]);
        }
    }

    #[test]
    fn bad_input_names_its_place() {
        let e = run(r#"{"nodes": [{"name": "n1", "allocatable": {"cpu": "4x"}}], "task": {}}"#).unwrap_err();
        assert!(e.starts_with("nodes[0].allocatable.cpu:"), "{e}");
        let e = run(r#"{"nodes": [], "task": {"resource_requests": {"extended": {"fpga": "1"}}}}"#).unwrap_err();
        assert!(e.starts_with("task.resource_requests.extended.fpga: not a resource berth schedules"), "{e}");
        let e =
            run(r#"{"nodes": [], "task": {"resource_requests": {"extended": {"amd.com/gpu": "0.5"}}}}"#).unwrap_err();
        assert!(e.contains("whole number"), "{e}");
        let e = run(r#"{"nodes": [{"name": "a", "allocatable": {}}, {"name": "a", "allocatable": {}}], "task": {}}"#)
            .unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
    }
}
