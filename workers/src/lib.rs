//! berth's workers: they turn bindings into running Jobs and Job outcomes into task states.
//!
//! - [`cluster`]: the [`Cluster`] seam (create/delete Job, Job events, nodes) and its types.
//! - [`k8s`]: [`k8s::KubeCluster`], the seam on a real Kubernetes API (kube-rs).
//! - [`job`]: one attempt's Kubernetes Job, built as the seed's Job template.
//! - [`sim`]: [`SimCluster`], in-process nodes whose tasks run for the duration in their
//!   `berth.io/sim-duration` label and exit with `berth.io/sim-exit-code` (DESIGN.md §7).
//! - [`executor`]: [`executor::run`], reading bindings from Redis, creating one Job per
//!   attempt, recording each transition in PostgreSQL, retrying failures with backoff.
//! - [`nodes`]: the node publisher, keeping the Redis ledger's capacity in step with the cluster.
//! - [`volumes`]: the volume syncer: claims for new volumes, their phase into PostgreSQL.
//! - [`reconciler`]: enqueues pending tasks that Redis does not know (PostgreSQL is the truth).
//! - [`webhooks`]: the notifier: task events to the tenants' webhooks, signed, retried with
//!   backoff, delivered through apalis-redis.
//!
//! Start at [`executor::run`].

pub mod cluster;
pub mod executor;
pub mod job;
pub mod k8s;
pub mod nodes;
pub mod reconciler;
pub mod sim;
pub mod volumes;
pub mod webhooks;

pub use cluster::{Cluster, ClusterError, JobEvent, JobPhase, JobRequest, JobVolume, VolumePhase, VolumeRequest};
pub use sim::SimCluster;
