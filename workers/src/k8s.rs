//! [`KubeCluster`]: the [`Cluster`] seam on a real Kubernetes API, through kube-rs.
//!
//! - Jobs: one per attempt, built by [`crate::job::build`]; a deterministic name, so
//!   `AlreadyExists` means an earlier try created it (success). Deleted with foreground
//!   propagation, so the pods go first.
//! - Events: a kube-runtime watcher on berth's task pods (label-selected, every namespace),
//!   each pod's phase mapped to a [`JobEvent`] of its task and attempt. Repeats are harmless:
//!   the executor applies each transition once.
//! - Volumes: a PersistentVolumeClaim in the tenant's namespace; its phase is the volume's.
//! - Nodes: allocatable, labels, taints, and schedulable (not cordoned, Ready).
//! - Tenant namespaces (`ensure_namespace`): labels, a ResourceQuota mirroring the tenant's
//!   quota, a LimitRange defaulting requests to kube-scheduler's 100m / 200Mi (what berth
//!   reserves for a request-less task), a default-deny-ingress NetworkPolicy and the task
//!   ServiceAccount, all server-side applied, so repeating it is harmless.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::resources::GPU_RESOURCE;
use berth_core::{NodeView, Resources, Taint, TaintEffect, quantity};
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, Node, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
    ResourceQuota, ResourceQuotaSpec, ServiceAccount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tracing::debug;
use uuid::Uuid;

use crate::cluster::{
    Cluster, ClusterError, JobEvent, JobPhase, JobRequest, NamespaceRequest, VolumePhase, VolumeRequest,
};
use crate::job::{self, APP, LABEL_ATTEMPT, LABEL_TASK, SERVICE_ACCOUNT};

/// Every API call this module makes, as (API group, resource, verbs): what the executor's
/// ClusterRole (`deploy/kubernetes/executor-rbac.yaml`) grants, no more. Two tests hold them
/// together: the manifest's role equals this list, and this list equals the verbs the
/// emulator saw the code use (`workers/tests/kube.rs`). Server-side apply is a PATCH that may
/// create, so it needs both verbs.
pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
    // Create per attempt, delete on stop; watch; get: why a Job whose pod vanished failed.
    ("batch", "jobs", &["create", "delete", "get", "list", "watch"]),
    // Task pods watched; other pods' requests reflected; a lost node's pods listed.
    ("", "pods", &["list", "watch"]),
    ("", "pods/log", &["get"]),
    ("", "nodes", &["list", "watch"]),
    ("", "persistentvolumeclaims", &["get", "create"]),
    ("", "namespaces", &["create", "patch"]),
    ("", "serviceaccounts", &["create", "patch"]),
    ("", "resourcequotas", &["create", "patch"]),
    ("", "limitranges", &["create", "patch"]),
    ("networking.k8s.io", "networkpolicies", &["create", "patch"]),
];

/// The field manager of berth's server-side applies.
const MANAGER: &str = "berth";

mod watch;

pub use watch::LOST_GRACE;

pub struct KubeCluster {
    client: kube::Client,
    image_pull_grace: Duration,
    events: Mutex<Option<mpsc::UnboundedReceiver<JobEvent>>>,
    tx: mpsc::UnboundedSender<JobEvent>,
    /// The node and pod reflectors, started by the first [`Cluster::node_changes`].
    nodes: OnceLock<watch::NodeCache>,
    /// What the pod and Job watchers know of each attempt.
    attempts: watch::Shared,
    /// How long a NotReady node may stay so before its running attempts count as lost.
    node_lost_grace: Duration,
}

fn api_error(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

impl KubeCluster {
    pub fn new(client: kube::Client) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let image_pull_grace = berth_core::config::ClusterConfig::default().image_pull_grace;
        let defaults = berth_core::config::ClusterConfig::default();
        KubeCluster {
            client,
            image_pull_grace,
            events: Mutex::new(Some(rx)),
            tx,
            nodes: OnceLock::new(),
            attempts: Default::default(),
            node_lost_grace: defaults.node_lost_grace,
        }
    }

    /// How long a node may be NotReady before its running attempts count as lost
    /// (`cluster.node_lost_grace`).
    pub fn with_node_lost_grace(mut self, grace: Duration) -> Self {
        self.node_lost_grace = grace;
        self
    }

    /// How long a pod may fail to pull its image before its attempt fails
    /// (`cluster.image_pull_grace`).
    pub fn with_image_pull_grace(mut self, grace: Duration) -> Self {
        self.image_pull_grace = grace;
        self
    }

    /// Creates or updates the tenant's namespace and what berth keeps in it.
    async fn apply_namespace(&self, ns: &NamespaceRequest) -> Result<(), ClusterError> {
        let fail = |what: &str, e: kube::Error| ClusterError::NamespaceFailed {
            namespace: ns.namespace.clone(),
            message: format!("{what}: {e}"),
        };
        let labels = BTreeMap::from([
            ("app".to_string(), APP.to_string()),
            ("compute-platform/tenant".into(), ns.tenant.clone()),
            ("compute-platform/tenant-id".into(), ns.tenant_id.to_string()),
        ]);
        let meta = |name: &str, namespace: Option<&str>| ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let pp = PatchParams::apply(MANAGER).force();
        let n = &ns.namespace;
        let namespace = Namespace { metadata: meta(n, None), ..Default::default() };
        Api::<Namespace>::all(self.client.clone())
            .patch(n, &pp, &Patch::Apply(&namespace))
            .await
            .map_err(|e| fail("namespace", e))?;
        let sa = ServiceAccount {
            metadata: meta(SERVICE_ACCOUNT, Some(n)),
            automount_service_account_token: Some(false),
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), n)
            .patch(SERVICE_ACCOUNT, &pp, &Patch::Apply(&sa))
            .await
            .map_err(|e| fail("service account", e))?;
        let mut hard = BTreeMap::new();
        if let Some(c) = ns.cpu_millis {
            hard.insert("requests.cpu".to_string(), Quantity(quantity::format_cpu_millis(c)));
        }
        if let Some(m) = ns.memory_bytes {
            hard.insert("requests.memory".to_string(), Quantity(quantity::format_bytes(m)));
        }
        if let Some(g) = ns.gpu {
            hard.insert(format!("requests.{GPU_RESOURCE}"), Quantity(g.to_string()));
        }
        let quota = ResourceQuota {
            metadata: meta("compute-platform-quota", Some(n)),
            spec: Some(ResourceQuotaSpec { hard: Some(hard), ..Default::default() }),
            status: None,
        };
        Api::<ResourceQuota>::namespaced(self.client.clone(), n)
            .patch("compute-platform-quota", &pp, &Patch::Apply(&quota))
            .await
            .map_err(|e| fail("resource quota", e))?;
        let defaults = BTreeMap::from([
            ("cpu".to_string(), Quantity(quantity::format_cpu_millis(berth_core::resources::DEFAULT_CPU_MILLIS))),
            ("memory".to_string(), Quantity(quantity::format_bytes(berth_core::resources::DEFAULT_MEMORY_BYTES))),
        ]);
        let limits = LimitRange {
            metadata: meta("compute-platform-defaults", Some(n)),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".into(),
                    default_request: Some(defaults),
                    ..Default::default()
                }],
            }),
        };
        Api::<LimitRange>::namespaced(self.client.clone(), n)
            .patch("compute-platform-defaults", &pp, &Patch::Apply(&limits))
            .await
            .map_err(|e| fail("limit range", e))?;
        let deny = NetworkPolicy {
            metadata: meta("default-deny-ingress", Some(n)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into()]),
                ..Default::default()
            }),
        };
        Api::<NetworkPolicy>::namespaced(self.client.clone(), n)
            .patch("default-deny-ingress", &pp, &Patch::Apply(&deny))
            .await
            .map_err(|e| fail("network policy", e))?;
        Ok(())
    }
}

/// The task and attempt a pod of berth's runs, from its labels; None for another pod.
pub(crate) fn task_attempt(pod: &Pod) -> Option<(Uuid, u32)> {
    let labels = pod.metadata.labels.as_ref()?;
    Some((labels.get(LABEL_TASK)?.parse().ok()?, labels.get(LABEL_ATTEMPT)?.parse().ok()?))
}

/// The event for a task pod deleted before it ended: a failed attempt of class node lost
/// (`Deleted`); None for a pod that had finished.
pub fn lost_pod_event(pod: &Pod) -> Option<JobEvent> {
    let (task_id, attempt) = task_attempt(pod)?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(JobEvent {
        task_id,
        attempt,
        phase: JobPhase::Failed {
            exit_code: None,
            reason: "Deleted".into(),
            message: "the pod was deleted before the attempt ended".into(),
            at: Utc::now(),
        },
    })
}

pub(crate) fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32).unwrap_or_else(Utc::now)
}

/// The [`JobEvent`] a pod's state stands for, if any (pending pods have none).
pub fn pod_event(pod: &Pod) -> Option<JobEvent> {
    let (task_id, attempt) = task_attempt(pod)?;
    let status = pod.status.as_ref()?;
    let container =
        status.container_statuses.iter().flatten().find(|c| c.name == job::CONTAINER).and_then(|c| c.state.as_ref());
    let terminated = container.and_then(|s| s.terminated.as_ref());
    let now = Utc::now();
    let finished: DateTime<Utc> = terminated.and_then(|t| t.finished_at.as_ref()).map_or(now, time);
    let phase = match status.phase.as_deref()? {
        "Running" => JobPhase::Running {
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
            at: status.start_time.as_ref().map_or(now, time),
        },
        "Succeeded" => JobPhase::Succeeded { at: finished },
        "Failed" => {
            // Why the pod was taken away (a DisruptionTarget condition: preemption, a taint,
            // the eviction API, the kubelet), or why it was evicted or refused (the pod's
            // reason: Evicted, OutOfcpu, NodeAffinity), says more than its container's
            // "Error" or exit 137 from being killed; an OOM kill is the container's own word.
            let disruption = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "DisruptionTarget" && c.status == "True" && c.reason.is_some());
            let oom = terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled");
            let (reason, message) = match (disruption, status.reason.as_ref()) {
                _ if oom => (None, None),
                (Some(c), _) => (c.reason.clone(), c.message.clone()),
                (None, Some(r)) => (Some(r.clone()), status.message.clone()),
                (None, None) => (None, None),
            };
            JobPhase::Failed {
                exit_code: terminated.map(|t| t.exit_code),
                reason: reason.or_else(|| terminated.and_then(|t| t.reason.clone())).unwrap_or_else(|| "Failed".into()),
                message: message
                    .or_else(|| terminated.and_then(|t| t.message.clone()))
                    .or_else(|| status.message.clone())
                    .unwrap_or_default(),
                at: finished,
            }
        }
        _ => return None,
    };
    Some(JobEvent { task_id, attempt, phase })
}

/// A pod's requests as kube-scheduler counts them: per resource, the larger of the sum over
/// its containers and the largest init container (which run before them, one at a time),
/// plus its overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::ZERO };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        resource_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    let containers = spec.containers.iter().fold(Resources::ZERO, |acc, c| acc.saturating_add(&of(c)));
    let max = |a: &Resources, b: &Resources| {
        let mut m =
            Resources::new(a.cpu_millis.max(b.cpu_millis), a.memory_bytes.max(b.memory_bytes), a.gpu.max(b.gpu));
        for (k, v) in a.extended.iter().chain(b.extended.iter()) {
            m.extended.set(k, m.extended.get(k).max(v));
        }
        m
    };
    let init = spec.init_containers.iter().flatten().fold(Resources::ZERO, |acc, c| max(&acc, &of(c)));
    let mut total = max(&containers, &init);
    if let Some(overhead) = spec.overhead.as_ref() {
        total = total.saturating_add(&resource_list(Some(overhead)));
    }
    total
}

/// A Kubernetes resource list (a node's allocatable, a container's requests) as berth's
/// amounts: cpu, memory, `nvidia.com/gpu` and each extended resource; others (pods,
/// ephemeral-storage, hugepages) are not scheduled by and ignored.
fn resource_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    let mut r = Resources::ZERO;
    for (k, v) in list.into_iter().flatten() {
        // Names berth does not schedule, and amounts it cannot read, count as none.
        let _ = r.set_quantity(k, &v.0);
    }
    r
}

/// Whether the node's kubelet reports Ready.
pub(crate) fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// What berth may use of a node (allocatable), with its scheduling facts.
pub fn node_view(node: &Node) -> Option<NodeView> {
    let name = node.metadata.name.clone()?;
    let status = node.status.as_ref();
    let allocatable = resource_list(status.and_then(|s| s.allocatable.as_ref()));
    let spec = node.spec.as_ref();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let effect = match t.effect.as_str() {
                "NoSchedule" => TaintEffect::NoSchedule,
                "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                "NoExecute" => TaintEffect::NoExecute,
                _ => return None,
            };
            Some(Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default(), effect })
        })
        .collect();
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let ready = node_ready(node);
    Some(NodeView {
        name,
        allocatable,
        requested: Resources::ZERO,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints,
        schedulable: ready && !cordoned,
    })
}

/// The field selector of pods that hold capacity: not finished.
pub(crate) const FOREIGN_LIVE: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// The nodes as berth may use them: pods berth does not own (system daemons, other
/// schedulers' work; `foreign`, unfinished) take their requests out of allocatable.
fn capacity<'a>(nodes: impl Iterator<Item = &'a Node>, foreign: impl Iterator<Item = &'a Pod>) -> Vec<NodeView> {
    let mut held: BTreeMap<String, Resources> = BTreeMap::new();
    for p in foreign {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            let e = held.entry(node.clone()).or_default();
            *e = e.saturating_add(&pod_requests(p));
        }
    }
    let mut views: Vec<NodeView> = nodes
        .filter_map(node_view)
        .map(|mut n| {
            if let Some(h) = held.get(&n.name) {
                n.allocatable = n.allocatable.saturating_sub(h);
            }
            n
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn create_job(&self, req: &JobRequest) -> Result<(), ClusterError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &req.namespace);
        match jobs.create(&PostParams::default(), &job::build(req)).await {
            Ok(_) => Ok(()),
            Err(e) if api_error(&e).is_some_and(|s| s.is_already_exists()) => {
                debug!(job = %req.name, "job already exists");
                Ok(())
            }
            Err(e) => Err(ClusterError::JobCreateFailed { job: req.name.clone(), message: e.to_string() }),
        }
    }

    async fn delete_job(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        match jobs.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => Ok(()),
            Err(e) if api_error(&e).is_some_and(|s| s.is_not_found()) => Ok(()),
            Err(e) => Err(ClusterError::JobDeleteFailed { job: name.into(), message: e.to_string() }),
        }
    }

    fn take_events(&self) -> Result<mpsc::UnboundedReceiver<JobEvent>, ClusterError> {
        let rx = self.events.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or(ClusterError::EventsTaken)?;
        let shared = self.attempts.clone();
        tokio::spawn(watch::pods(self.client.clone(), self.tx.clone(), self.image_pull_grace, shared.clone()));
        tokio::spawn(watch::jobs(self.client.clone(), self.tx.clone(), shared));
        Ok(rx)
    }

    async fn ensure_volume(&self, v: &VolumeRequest) -> Result<VolumePhase, ClusterError> {
        let fail = |e: kube::Error| ClusterError::VolumeFailed { claim: v.claim.clone(), message: e.to_string() };
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &v.namespace);
        let existing = claims.get_opt(&v.claim).await.map_err(fail)?;
        let claim = match existing {
            Some(c) => c,
            None => {
                let pvc = PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(v.claim.clone()),
                        namespace: Some(v.namespace.clone()),
                        labels: Some(BTreeMap::from([("app".to_string(), APP.to_string())])),
                        ..Default::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec![v.access_mode.clone()]),
                        storage_class_name: v.storage_class.clone(),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([("storage".to_string(), Quantity(v.size.clone()))])),
                            limits: None,
                        }),
                        ..Default::default()
                    }),
                    status: None,
                };
                match claims.create(&PostParams::default(), &pvc).await {
                    Ok(c) => c,
                    Err(e) if api_error(&e).is_some_and(|s| s.is_already_exists()) => {
                        claims.get(&v.claim).await.map_err(fail)?
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
        };
        Ok(match claim.status.and_then(|s| s.phase).as_deref() {
            Some("Bound") => VolumePhase::Bound,
            Some("Lost") => VolumePhase::Lost,
            _ => VolumePhase::Pending,
        })
    }

    async fn ensure_namespace(&self, ns: &NamespaceRequest) -> Result<(), ClusterError> {
        self.apply_namespace(ns).await
    }

    /// From the reflectors once they have listed (no API call); else listed.
    async fn list_nodes(&self) -> Result<Vec<NodeView>, ClusterError> {
        if let Some(cache) = self.nodes.get().filter(|c| c.ready()) {
            let (nodes, pods) = (cache.nodes.state(), cache.pods.state());
            return Ok(capacity(nodes.iter().map(|n| n.as_ref()), pods.iter().map(|p| p.as_ref())));
        }
        let failed = |e: kube::Error| ClusterError::NodeListFailed(e.to_string());
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes.list(&Default::default()).await.map_err(failed)?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("!{LABEL_TASK}")).fields(FOREIGN_LIVE);
        let foreign = pods.list(&params).await.map_err(failed)?;
        Ok(capacity(list.items.iter(), foreign.items.iter()))
    }

    fn job_exists(&self, task_id: Uuid, attempt: u32) -> Option<bool> {
        watch::lock(&self.attempts).job_exists((task_id, attempt))
    }

    fn node_changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        let cache = self
            .nodes
            .get_or_init(|| watch::NodeCache::start(self.client.clone(), self.tx.clone(), self.node_lost_grace));
        Some(cache.changed.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {
                "compute-platform/task-id": "00000000-0000-0000-0000-000000000001",
                "compute-platform/attempt": "3"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "task-container"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn pod_phases_become_job_events() {
        assert_eq!(pod_event(&pod(json!({"phase": "Pending"}))), None);
        let running = pod_event(&pod(json!({"phase": "Running", "startTime": "2026-12-04T10:00:00Z"}))).unwrap();
        assert_eq!((running.task_id, running.attempt), (Uuid::from_u128(1), 3));
        assert_eq!(running.phase, JobPhase::Running { node: "n1".into(), at: "2026-12-04T10:00:00Z".parse().unwrap() });
        let oom = pod_event(&pod(json!({"phase": "Failed", "containerStatuses": [{"name": "task-container",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-04T10:05:00Z"}}}]})))
        .unwrap();
        assert_eq!(
            oom.phase,
            JobPhase::Failed {
                exit_code: Some(137),
                reason: "OOMKilled".into(),
                message: String::new(),
                at: "2026-12-04T10:05:00Z".parse().unwrap()
            }
        );
        // An eviction has no container verdict: the pod's reason names it.
        let evicted =
            pod_event(&pod(json!({"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}))).unwrap();
        assert!(
            matches!(&evicted.phase, JobPhase::Failed { exit_code: None, reason, message, .. }
                if reason == "Evicted" && message == "node low on memory"),
            "{evicted:?}"
        );
        // An evicted or preempted pod's container was killed ("Error", 137): the pod's word wins.
        let killed = json!([{"name": "task-container", "image": "x", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]);
        let evicted = pod_event(&pod(json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory",
            "containerStatuses": killed})))
        .unwrap();
        assert!(matches!(&evicted.phase, JobPhase::Failed { exit_code: Some(137), reason, .. } if reason == "Evicted"));
        let preempted = pod_event(&pod(json!({"phase": "Failed", "containerStatuses": killed, "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}]})))
        .unwrap();
        assert!(
            matches!(&preempted.phase, JobPhase::Failed { reason, message, .. }
                if reason == "PreemptionByScheduler" && message == "preempted"),
            "{preempted:?}"
        );
        // Refused by the kubelet at admission (berth pins pods, so this can happen).
        let refused = pod_event(&pod(json!({"phase": "Failed", "reason": "OutOfcpu"}))).unwrap();
        assert!(matches!(&refused.phase, JobPhase::Failed { reason, .. } if reason == "OutOfcpu"));
        // Not berth's pod: no event.
        let mut foreign = pod(json!({"phase": "Running"}));
        foreign.metadata.labels = None;
        assert_eq!(pod_event(&foreign), None);
    }

    #[test]
    fn a_pods_requests_count_as_kube_scheduler_counts_them() {
        let p: Pod = serde_json::from_value(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi", "amd.com/gpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "256Mi"}}}],
            "overhead": {"cpu": "100m"}}}))
        .unwrap();
        // cpu: max(750m, 2) + 100m; memory: max(1Gi, 256Mi).
        assert_eq!(pod_requests(&p), Resources::new(2100, 1 << 30, 0).with_extended("amd.com/gpu", 1));
    }

    #[test]
    fn nodes_carry_allocatable_taints_and_readiness() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "7910m", "memory": "31Gi", "nvidia.com/gpu": "2", "amd.com/gpu": "1",
                                "pods": "110", "hugepages-2Mi": "0", "ephemeral-storage": "100Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        let v = node_view(&node).unwrap();
        assert_eq!(v.allocatable, Resources::new(7910, 31 << 30, 2).with_extended("amd.com/gpu", 1));
        assert_eq!(v.taints, vec![Taint { key: "gpu".into(), value: "true".into(), effect: TaintEffect::NoSchedule }]);
        assert!(v.schedulable);
        let mut cordoned = node.clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert!(!node_view(&cordoned).unwrap().schedulable);
        let mut not_ready = node;
        not_ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(!node_view(&not_ready).unwrap().schedulable);
    }
}
