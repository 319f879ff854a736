//! berth's domain: the types every other crate speaks, with no I/O.
//!
//! - [`quantity`]: Kubernetes quantity strings (`"100m"`, `"128Mi"`, `"1.5"`) to exact integers.
//! - [`resources`]: [`Resources`] (cpu millicores, memory bytes, gpus) and their arithmetic.
//! - [`task`]: [`TaskStatus`] and its state machine, tolerations, the scheduling view of a task.
//! - [`node`]: [`NodeView`] (what the scheduler knows of a node), taints, [`ClusterSnapshot`].
//! - [`validate`]: field validation shared by the API and config (names, labels, images).
//! - [`config`]: `berth.toml` with `BERTH_…` environment overrides, validated with key paths.
//! - [`failure`]: [`failure::FailureClass`], why an attempt failed, for its retry policy.
//! - [`sim`]: the labels that steer the simulated cluster.
//! - [`store`]: SQL shared by the roles that write the same rows (quota release).
//!
//! Start with [`task::TaskStatus`] and [`resources::Resources`]: the rest builds on them.

pub mod config;
pub mod failure;
pub mod node;
pub mod quantity;
pub mod resources;
pub mod sim;
pub mod store;
pub mod task;
pub mod validate;

pub use node::{ClusterSnapshot, NodeView, Taint, TaintEffect};
pub use resources::Resources;
pub use task::{SchedulingSpec, TaskStatus, Toleration, TolerationOperator};
