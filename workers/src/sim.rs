//! The simulated cluster: nodes from config, Jobs that run as timers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::config::ClusterConfig;
use berth_core::sim::{self, Step};
use berth_core::{NodeView, Resources};
use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::cluster::{Cluster, ClusterError, JobEvent, JobPhase, JobRequest, VolumePhase, VolumeRequest};

pub struct SimCluster {
    nodes: Vec<NodeView>,
    default_duration: Duration,
    start_delay: Duration,
    jobs: Mutex<HashMap<String, JoinHandle<()>>>,
    tx: mpsc::UnboundedSender<JobEvent>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<JobEvent>>>,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster").field("nodes", &self.nodes.len()).finish()
    }
}

impl SimCluster {
    pub fn new(config: &ClusterConfig) -> SimCluster {
        let nodes = config
            .nodes
            .iter()
            .flat_map(|group| {
                group.names().into_iter().map(move |name| NodeView {
                    name,
                    allocatable: group.allocatable(),
                    requested: Resources::ZERO,
                    labels: group.labels.clone(),
                    taints: group.taints.clone(),
                    schedulable: true,
                })
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        SimCluster {
            nodes,
            default_duration: config.default_duration,
            start_delay: config.start_delay,
            jobs: Mutex::new(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// What a Job runs: its `sh -c` script of echo/sleep/exit when it has one and no sim
    /// labels; else its sim-duration (a progress line per second) and sim-exit-code labels.
    fn plan(&self, job: &JobRequest) -> Vec<Step> {
        let labelled = job.labels.contains_key(sim::DURATION_LABEL) || job.labels.contains_key(sim::EXIT_CODE_LABEL);
        if !labelled && let Some(steps) = sim::script(&job.command, &job.args) {
            return steps;
        }
        let duration = match job.labels.get(sim::DURATION_LABEL) {
            None => self.default_duration,
            Some(v) => sim::parse_duration(v).unwrap_or_else(|e| {
                warn!(job = %job.name, error = %e, "bad sim duration label; using the default");
                self.default_duration
            }),
        };
        let exit_code = match job.labels.get(sim::EXIT_CODE_LABEL) {
            None => 0,
            Some(v) => sim::parse_exit_code(v).unwrap_or_else(|e| {
                warn!(job = %job.name, error = %e, "bad sim exit-code label; exiting 1");
                1
            }),
        };
        // A synthesized line per second of simulated work, as a real container would log.
        let mut steps = Vec::new();
        let (mut left, mut second) = (duration, 0u64);
        while left > Duration::ZERO {
            let step = left.min(Duration::from_secs(1));
            steps.push(Step::Sleep(step));
            left -= step;
            second += 1;
            if left > Duration::ZERO {
                steps.push(Step::Echo(format!("[berth-sim] working… {second}s of {duration:?}")));
            }
        }
        steps.push(Step::Echo(format!("[berth-sim] exiting with code {exit_code}")));
        steps.push(Step::Exit(exit_code));
        steps
    }

    /// Jobs created and not yet finished or deleted.
    pub fn live_jobs(&self) -> usize {
        let mut jobs = self.jobs.lock().expect("sim jobs lock");
        jobs.retain(|_, h| !h.is_finished());
        jobs.len()
    }
}

#[async_trait]
impl Cluster for SimCluster {
    async fn create_job(&self, job: &JobRequest) -> Result<(), ClusterError> {
        let mut jobs = self.jobs.lock().expect("sim jobs lock");
        if jobs.contains_key(&job.name) {
            return Ok(()); // AlreadyExists: the same attempt, created before.
        }
        let steps = self.plan(job);
        let (tx, start_delay) = (self.tx.clone(), self.start_delay);
        let (task_id, attempt, node, name) = (job.task_id, job.attempt, job.node.clone(), job.name.clone());
        let command = job.command.iter().chain(&job.args).cloned().collect::<Vec<_>>().join(" ");
        let image = job.image.clone();
        debug!(job = %name, %node, steps = steps.len(), "sim job created");
        // The Job controller's activeDeadlineSeconds, counted from the pod's start.
        let deadline = job.active_deadline_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
        let handle = tokio::spawn(async move {
            let mut line = 0u64;
            let mut say = |text: String| {
                let _ =
                    tx.send(JobEvent { task_id, attempt, phase: JobPhase::Output { first: line, lines: vec![text] } });
                line += 1;
            };
            tokio::time::sleep(start_delay).await;
            let started = format!("[berth-sim] attempt {attempt} started on {node}: {image} {command}");
            let _ = tx.send(JobEvent { task_id, attempt, phase: JobPhase::Running { node, at: Utc::now() } });
            say(started);
            let run = async {
                for step in steps {
                    match step {
                        Step::Echo(text) => say(text),
                        Step::Sleep(d) => tokio::time::sleep(d).await,
                        Step::Exit(code) => return code,
                    }
                }
                0
            };
            let outcome = match deadline {
                Some(d) => tokio::time::timeout(d, run).await.ok(),
                None => Some(run.await),
            };
            let at = Utc::now();
            let phase = match outcome {
                Some(0) => JobPhase::Succeeded { at },
                Some(code) => JobPhase::Failed {
                    exit_code: Some(code),
                    reason: "Error".into(),
                    message: format!("container exited with code {code}"),
                    at,
                },
                None => JobPhase::Failed {
                    exit_code: None,
                    reason: "DeadlineExceeded".into(),
                    message: format!(
                        "Job was active longer than specified deadline ({}s)",
                        deadline.unwrap_or_default().as_secs()
                    ),
                    at,
                },
            };
            let _ = tx.send(JobEvent { task_id, attempt, phase });
        });
        jobs.insert(name, handle);
        Ok(())
    }

    async fn delete_job(&self, _namespace: &str, name: &str) -> Result<(), ClusterError> {
        if let Some(h) = self.jobs.lock().expect("sim jobs lock").remove(name) {
            h.abort();
        }
        Ok(())
    }

    fn take_events(&self) -> Result<mpsc::UnboundedReceiver<JobEvent>, ClusterError> {
        self.rx.lock().expect("sim rx lock").take().ok_or(ClusterError::EventsTaken)
    }

    /// The simulated provisioner binds every claim at once.
    async fn ensure_volume(&self, _volume: &VolumeRequest) -> Result<VolumePhase, ClusterError> {
        Ok(VolumePhase::Bound)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeView>, ClusterError> {
        Ok(self.nodes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn job(labels: &[(&str, &str)]) -> JobRequest {
        JobRequest {
            name: "task-x-0".into(),
            namespace: "tenant-t".into(),
            task_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            user_id: Uuid::nil(),
            attempt: 0,
            node: "sim-1".into(),
            image: "busybox".into(),
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            requests: Resources::ZERO,
            limits: Resources::ZERO,
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            task_name: "x".into(),
            priority: 0,
            created_at: chrono::Utc::now(),
            active_deadline_seconds: None,
            volumes: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sim_job_runs_for_its_duration_and_exits_with_its_code() {
        let sim = SimCluster::new(&ClusterConfig::default());
        let mut rx = sim.take_events().unwrap();
        sim.create_job(&job(&[(sim::DURATION_LABEL, "2s"), (sim::EXIT_CODE_LABEL, "3")])).await.unwrap();
        // A repeated create is the same Job, not a second one.
        sim.create_job(&job(&[])).await.unwrap();
        assert_eq!(sim.live_jobs(), 1);
        let t0 = tokio::time::Instant::now();
        assert!(matches!(rx.recv().await.unwrap().phase, JobPhase::Running { .. }));
        let mut lines = Vec::new();
        let end = loop {
            match rx.recv().await.unwrap() {
                JobEvent { phase: JobPhase::Output { lines: l, .. }, .. } => lines.extend(l),
                other => break other,
            }
        };
        assert!(matches!(end.phase, JobPhase::Failed { exit_code: Some(3), .. }), "{end:?}");
        assert_eq!(lines.len(), 3, "started, one progress line, exit: {lines:?}");
        assert!(lines[0].contains("started on sim-1"), "{lines:?}");
        assert_eq!(lines[2], "[berth-sim] exiting with code 3");
        assert!(t0.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_sim_job_never_finishes() {
        let sim = SimCluster::new(&ClusterConfig::default());
        let mut rx = sim.take_events().unwrap();
        sim.create_job(&job(&[(sim::DURATION_LABEL, "1s")])).await.unwrap();
        sim.delete_job("tenant-t", "task-x-0").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(sim.live_jobs(), 0);
    }

    #[test]
    fn the_default_sim_cluster_has_four_nodes() {
        let sim = SimCluster::new(&ClusterConfig::default());
        assert_eq!(sim.nodes.len(), 4);
        assert_eq!(sim.nodes[0].allocatable, Resources::new(16_000, 64 << 30, 4));
    }
}
