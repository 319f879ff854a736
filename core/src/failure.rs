//! Why an attempt failed, in the classes a retry policy is chosen by (DESIGN.md §7).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The class of an attempt's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The task's process exited non-zero.
    ExitCode,
    /// The container was killed for exceeding its memory limit.
    OomKilled,
    /// The attempt ran past its deadline (`activeDeadlineSeconds`).
    DeadlineExceeded,
    /// The kubelet evicted the pod (node pressure, preemption).
    Evicted,
    /// The image could not be pulled or does not exist.
    ImagePull,
    /// The node went away or stopped reporting, or the Job vanished under a live attempt.
    NodeLost,
    /// berth could not start the attempt (the cluster refused the Job or the namespace).
    Infrastructure,
}

impl FailureClass {
    pub const ALL: [FailureClass; 7] = [
        FailureClass::ExitCode,
        FailureClass::OomKilled,
        FailureClass::DeadlineExceeded,
        FailureClass::Evicted,
        FailureClass::ImagePull,
        FailureClass::NodeLost,
        FailureClass::Infrastructure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::ExitCode => "exit_code",
            FailureClass::OomKilled => "oom_killed",
            FailureClass::DeadlineExceeded => "deadline_exceeded",
            FailureClass::Evicted => "evicted",
            FailureClass::ImagePull => "image_pull",
            FailureClass::NodeLost => "node_lost",
            FailureClass::Infrastructure => "infrastructure",
        }
    }

    /// Classifies a failure by the reason Kubernetes (or berth) gave for it: the container's
    /// terminated reason, else the pod's, else berth's own.
    pub fn classify(reason: &str) -> FailureClass {
        match reason {
            "OOMKilled" => FailureClass::OomKilled,
            "DeadlineExceeded" => FailureClass::DeadlineExceeded,
            // The kubelet or the control plane took the pod away (pressure, preemption, a
            // taint, the eviction API, a node shutdown), or the kubelet refused to admit it
            // (berth pins pods to a node, so kube-scheduler's own checks are not run first).
            "Evicted"
            | "Preempting"
            | "Shutdown"
            | "Terminated"
            | "NodeShutdown"
            | "TerminationByKubelet"
            | "EvictionByEvictionAPI"
            | "PreemptionByScheduler"
            | "DeletionByTaintManager"
            | "OutOfcpu"
            | "OutOfmemory"
            | "OutOfpods"
            | "OutOfephemeral-storage"
            | "NodeAffinity"
            | "UnexpectedAdmissionError" => FailureClass::Evicted,
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" | "RegistryUnavailable" => {
                FailureClass::ImagePull
            }
            "NodeLost" | "NodeNotReady" | "Deleted" => FailureClass::NodeLost,
            "JobCreateFailed" | "NamespaceFailed" => FailureClass::Infrastructure,
            _ => FailureClass::ExitCode,
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_classify_as_kubernetes_names_them() {
        assert_eq!(FailureClass::classify("OOMKilled"), FailureClass::OomKilled);
        assert_eq!(FailureClass::classify("DeadlineExceeded"), FailureClass::DeadlineExceeded);
        assert_eq!(FailureClass::classify("Evicted"), FailureClass::Evicted);
        assert_eq!(FailureClass::classify("OutOfcpu"), FailureClass::Evicted, "refused at admission");
        assert_eq!(FailureClass::classify("DeletionByTaintManager"), FailureClass::Evicted);
        assert_eq!(FailureClass::classify("ImagePullBackOff"), FailureClass::ImagePull);
        assert_eq!(FailureClass::classify("NodeLost"), FailureClass::NodeLost);
        assert_eq!(FailureClass::classify("JobCreateFailed"), FailureClass::Infrastructure);
        assert_eq!(FailureClass::classify("Error"), FailureClass::ExitCode);
        for c in FailureClass::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
        }
    }
}
