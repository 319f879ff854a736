//! Tasks: the status state machine and the scheduling view of a task.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::node::{Taint, TaintEffect};
use crate::resources::Resources;

/// Where a task is in its life. `pending → scheduled → running → succeeded | failed |
/// cancelled`; a failed attempt with retries left goes back to `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A status change that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("illegal task transition {from} → {to}")]
pub struct IllegalTransition {
    pub from: TaskStatus,
    pub to: TaskStatus,
}

/// A status string that names no status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown task status {0:?} (expected one of pending, scheduled, running, succeeded, failed, cancelled)")]
pub struct UnknownStatus(pub String);

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Scheduled,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled)
    }

    /// Whether the task still holds (or will hold) quota and capacity.
    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    /// The one place that says which status changes are legal.
    ///
    /// `Running → Pending` and `Scheduled → Pending` are retries (an attempt failed with retries
    /// left, or its binding could not be started); every live status may be cancelled or fail;
    /// terminal statuses never change.
    pub fn can_become(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        match (self, to) {
            (Pending, Scheduled) => true,
            (Scheduled, Running) => true,
            (Running, Succeeded) => true,
            // A Job can finish before berth saw it running (short tasks, a missed watch event).
            (Scheduled, Succeeded) => true,
            (Scheduled | Running, Pending) => true,
            (Pending | Scheduled | Running, Failed | Cancelled) => true,
            _ => false,
        }
    }

    pub fn transition(self, to: TaskStatus) -> Result<TaskStatus, IllegalTransition> {
        if self.can_become(to) { Ok(to) } else { Err(IllegalTransition { from: self, to }) }
    }

    /// The statuses from which `to` may be reached, for guarded SQL updates
    /// (`... where status = any($from)`).
    pub fn sources_of(to: TaskStatus) -> Vec<&'static str> {
        TaskStatus::ALL.into_iter().filter(|s| s.can_become(to)).map(TaskStatus::as_str).collect()
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// How a toleration matches a taint's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

/// A task's toleration, as Kubernetes defines it. An empty `effect` tolerates every effect;
/// an empty `key` with `Exists` tolerates every taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Kubernetes' `Toleration.ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if let Some(effect) = self.effect
            && effect != taint.effect
        {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// What the scheduler needs of a task: kept beside the task in Redis, so scheduling never
/// reads PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulingSpec {
    pub task_id: Uuid,
    pub tenant: String,
    /// Requests as submitted (zero where the task named none); the scheduler applies defaults.
    pub requests: Resources,
    pub priority: u8,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// 0 for the first attempt, +1 for each retry.
    #[serde(default)]
    pub attempt: u32,
    /// Submission order within the partition, assigned once at first enqueue and kept across
    /// retries: FIFO within a priority, and the last tie-breaker of every queue order.
    #[serde(default)]
    pub seq: u64,
}

impl SchedulingSpec {
    /// What the task reserves on a node: its requests with kube-scheduler's defaults.
    pub fn reservation(&self) -> Resources {
        self.requests.with_defaults()
    }

    /// The scheduling view of a stored task, from its columns as PostgreSQL holds them
    /// (absent or null JSON is empty). Admission validated them, so an error, naming the
    /// column, means corruption.
    pub fn from_stored(
        task_id: Uuid,
        tenant: String,
        resource_requests: &serde_json::Value,
        priority: Option<i32>,
        node_selector: Option<serde_json::Value>,
        tolerations: Option<serde_json::Value>,
        attempt: Option<i32>,
    ) -> Result<SchedulingSpec, (&'static str, String)> {
        fn column<T: serde::de::DeserializeOwned + Default>(
            name: &'static str,
            v: Option<serde_json::Value>,
        ) -> Result<T, (&'static str, String)> {
            match v {
                None | Some(serde_json::Value::Null) => Ok(T::default()),
                Some(v) => serde_json::from_value(v).map_err(|e| (name, e.to_string())),
            }
        }
        Ok(SchedulingSpec {
            task_id,
            tenant,
            requests: Resources::from_requirements_json(resource_requests).map_err(|e| ("resource_requests", e))?,
            priority: priority.unwrap_or(0).clamp(0, 100) as u8,
            node_selector: column("node_selector", node_selector)?,
            tolerations: column("tolerations", tolerations)?,
            attempt: attempt.unwrap_or(0).max(0) as u32,
            seq: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn the_happy_path_is_legal() {
        assert_eq!(Pending.transition(Scheduled), Ok(Scheduled));
        assert_eq!(Scheduled.transition(Running), Ok(Running));
        assert_eq!(Running.transition(Succeeded), Ok(Succeeded));
        assert_eq!(Running.transition(Failed), Ok(Failed));
    }

    #[test]
    fn terminal_statuses_never_change() {
        for from in [Succeeded, Failed, Cancelled] {
            for to in TaskStatus::ALL {
                assert!(from.transition(to).is_err(), "{from} → {to}");
            }
        }
    }

    #[test]
    fn pending_cannot_skip_to_running_or_succeeded() {
        assert!(Pending.transition(Running).is_err());
        assert!(Pending.transition(Succeeded).is_err());
        assert!(Pending.transition(Pending).is_err());
    }

    #[test]
    fn status_strings_round_trip_and_unknown_ones_are_named() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(s));
        }
        assert_eq!("done".parse::<TaskStatus>(), Err(UnknownStatus("done".into())));
    }

    #[test]
    fn sources_of_running_is_scheduled_only() {
        assert_eq!(TaskStatus::sources_of(Running), vec!["scheduled"]);
    }

    #[test]
    fn tolerations_match_as_kubernetes_defines() {
        let taint = Taint { key: "k".into(), value: "v".into(), effect: TaintEffect::NoSchedule };
        let t = |key: &str, op, value: &str, effect| Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
        };
        assert!(t("k", TolerationOperator::Equal, "v", Some(TaintEffect::NoSchedule)).tolerates(&taint));
        assert!(t("k", TolerationOperator::Equal, "v", None).tolerates(&taint));
        assert!(!t("k", TolerationOperator::Equal, "w", None).tolerates(&taint));
        assert!(t("k", TolerationOperator::Exists, "", None).tolerates(&taint));
        assert!(t("", TolerationOperator::Exists, "", None).tolerates(&taint));
        assert!(!t("k", TolerationOperator::Exists, "", Some(TaintEffect::NoExecute)).tolerates(&taint));
        assert!(!t("other", TolerationOperator::Exists, "", None).tolerates(&taint));
    }
}
