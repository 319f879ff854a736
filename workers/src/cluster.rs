//! The seam between berth and whatever runs its tasks.

use std::collections::BTreeMap;

use async_trait::async_trait;
use berth_core::{NodeView, Resources, Toleration};
use chrono::{DateTime, Utc};
use thiserror::Error;
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("creating job {job} failed: {message}")]
    JobCreateFailed { job: String, message: String },
    #[error("deleting job {job} failed: {message}")]
    JobDeleteFailed { job: String, message: String },
    #[error("listing nodes failed: {0}")]
    NodeListFailed(String),
    #[error("ensuring namespace {namespace} failed: {message}")]
    NamespaceFailed { namespace: String, message: String },
    #[error("ensuring volume claim {claim} failed: {message}")]
    VolumeFailed { claim: String, message: String },
    #[error("the job event stream was already taken")]
    EventsTaken,
}

/// Everything needed to create one attempt's Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// `task-<id>-<attempt>`: deterministic, so a repeated create is recognisably the same Job.
    pub name: String,
    /// `tenant-<tenant name>`.
    pub namespace: String,
    pub task_id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub attempt: u32,
    /// The node the scheduler chose; the Job is pinned to it.
    pub node: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub limits: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// The task's name and priority, for the Job's annotations.
    pub task_name: String,
    pub priority: i32,
    /// When the task was submitted (the `created-at` annotation).
    pub created_at: DateTime<Utc>,
    /// The Job's `activeDeadlineSeconds`; None leaves the attempt unbounded.
    pub active_deadline_seconds: Option<i64>,
    /// The tenant's volumes the task mounts.
    pub volumes: Vec<JobVolume>,
}

/// One of the tenant's volumes, mounted into an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobVolume {
    /// The volume's name (the pod volume's name too).
    pub name: String,
    /// Its PersistentVolumeClaim in the tenant's namespace.
    pub claim: String,
    pub mount_path: String,
    pub read_only: bool,
}

impl JobRequest {
    pub fn job_name(task_id: Uuid, attempt: u32) -> String {
        format!("task-{task_id}-{attempt}")
    }

    pub fn namespace_for(tenant: &str) -> String {
        format!("tenant-{tenant}")
    }
}

/// A volume's claim, as the cluster should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    pub namespace: String,
    /// The PersistentVolumeClaim's name.
    pub claim: String,
    pub size: String,
    pub storage_class: Option<String>,
    pub access_mode: String,
}

/// A claim's phase, as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumePhase {
    Pending,
    Bound,
    Lost,
}

impl VolumePhase {
    /// The seed's `volumes.status` value.
    pub fn as_status(self) -> &'static str {
        match self {
            VolumePhase::Pending => "pending",
            VolumePhase::Bound => "bound",
            VolumePhase::Lost => "lost",
        }
    }
}

/// What happened to one attempt's Job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobPhase {
    Running {
        node: String,
        at: DateTime<Utc>,
    },
    Succeeded {
        at: DateTime<Utc>,
    },
    Failed {
        exit_code: Option<i32>,
        reason: String,
        message: String,
        at: DateTime<Utc>,
    },
    /// Lines the attempt's container wrote, in order; `first` is the index of the first of
    /// them in the attempt's output. A line given again (a log follower restarted from the
    /// start) is recognised by its index and kept once.
    Output {
        first: u64,
        lines: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub task_id: Uuid,
    pub attempt: u32,
    pub phase: JobPhase,
}

#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Creates the Job; an existing Job of the same name counts as success.
    async fn create_job(&self, job: &JobRequest) -> Result<(), ClusterError>;
    /// Deletes the Job and its pods; a missing Job counts as success.
    async fn delete_job(&self, namespace: &str, name: &str) -> Result<(), ClusterError>;
    /// The stream of Job events. There is one: the executor takes it once.
    fn take_events(&self) -> Result<mpsc::UnboundedReceiver<JobEvent>, ClusterError>;
    /// Creates the volume's claim if missing; returns its phase.
    async fn ensure_volume(&self, volume: &VolumeRequest) -> Result<VolumePhase, ClusterError>;
    /// Every node with the capacity berth may use (`requested` is ignored: the ledger owns it).
    async fn list_nodes(&self) -> Result<Vec<NodeView>, ClusterError>;
    /// Whether the Job of a task's attempt exists, as far as this cluster knows without
    /// asking (None: it does not know, or cannot tell yet). The executor uses it to find
    /// attempts whose Job vanished while nobody watched.
    fn job_exists(&self, _task_id: Uuid, _attempt: u32) -> Option<bool> {
        None
    }
    /// Notified whenever the cluster's nodes (or what else holds their capacity) change, for
    /// clusters that watch them; None for one whose nodes never change (the simulated).
    /// The first call starts the watching.
    fn node_changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// Creates or updates a tenant's namespace and what berth keeps in it. Safe to repeat.
    /// The simulated cluster has no namespaces.
    async fn ensure_namespace(&self, _namespace: &NamespaceRequest) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// A tenant's namespace as berth wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRequest {
    /// `tenant-<name>`.
    pub namespace: String,
    pub tenant: String,
    pub tenant_id: Uuid,
    /// The tenant's quota, for the ResourceQuota; None where unlimited.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub gpu: Option<u64>,
}
