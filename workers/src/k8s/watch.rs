//! The watchers behind [`super::KubeCluster`]: task pods and Jobs become [`JobEvent`]s, the
//! task container's log becomes `Output` events, and Nodes and other pods are reflected into
//! a cache that the node publisher reads.
//!
//! Every event may repeat (a watch restarts from a relist, an executor restarts): the
//! executor applies each transition once, and log lines are appended once by their index.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{lost_pod_event, pod_event, task_attempt};
use crate::cluster::{JobEvent, JobPhase, JobRequest};
use crate::job::{self, LABEL_TASK};

/// How long a vanished pod or Job waits before it counts as lost: the Job controller marks a
/// Job that ran past its deadline (DeadlineExceeded) while it deletes its pod, and that reason,
/// not "deleted", is the attempt's.
pub const LOST_GRACE: Duration = Duration::from_secs(2);
/// How long the last log lines of a finished container may take to arrive before its outcome
/// is reported without them.
const LOG_DRAIN: Duration = Duration::from_secs(30);
/// Log lines sent per Output event at most.
const LOG_CHUNK: usize = 256;
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// Waiting reasons that mean the image could not be pulled. The first two may heal (a
/// registry blip) and get the grace period; the others never do.
const PULL_RETRYING: &[&str] = &["ErrImagePull", "ImagePullBackOff"];
const PULL_HOPELESS: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];

/// Which attempt of which task an object belongs to.
type Key = (Uuid, u32);

/// The attempts whose pod the pod watcher has seen: a Job deleted with its pod is reported
/// lost by the pod's watcher, so the Job's watcher reports only those that never had one. A
/// key goes when its Job does (the last of the two to go).
pub type PodsSeen = Arc<std::sync::Mutex<HashSet<Key>>>;

fn lock(seen: &PodsSeen) -> std::sync::MutexGuard<'_, HashSet<Key>> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends to the executor; false once it has gone.
fn send(tx: &mpsc::UnboundedSender<JobEvent>, e: JobEvent) -> bool {
    tx.send(e).is_ok()
}

/// A pod whose image has not been pulled yet.
struct Pulling {
    since: Instant,
    namespace: String,
    reason: String,
    message: String,
    hopeless: bool,
}

/// The pod watcher's memory: log followers, image pull failures, outcomes reported.
struct Pods {
    client: kube::Client,
    tx: mpsc::UnboundedSender<JobEvent>,
    pull_grace: Duration,
    followers: HashMap<Key, JoinHandle<()>>,
    pulling: HashMap<Key, Pulling>,
    /// Attempts whose outcome this process has reported (their repeats are not sent again).
    ended: HashSet<Key>,
    seen: PodsSeen,
}

/// Watches berth's task pods in every namespace until the executor goes away.
pub async fn pods(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, pull_grace: Duration, seen: PodsSeen) {
    let api: Api<Pod> = Api::all(client.clone());
    let mut stream = watcher(api, watcher::Config::default().labels(job::SELECTOR)).boxed();
    let mut pods = Pods {
        client,
        tx,
        pull_grace,
        followers: HashMap::new(),
        pulling: HashMap::new(),
        ended: HashSet::new(),
        seen,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => pods.seen(&p),
                Some(Ok(watcher::Event::Delete(p))) => pods.gone(&p),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // The watcher retries by itself (relist, then watch again).
                    warn!(error = %e, "pod watch failed; retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
            },
            _ = tick.tick() => pods.expire_pulls(),
        }
        if pods.tx.is_closed() {
            return;
        }
    }
}

/// The waiting reason and message of a pod's task container that cannot pull its image.
fn pull_failure(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == job::CONTAINER)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())?;
    let reason = waiting.reason.as_deref()?;
    (PULL_RETRYING.contains(&reason) || PULL_HOPELESS.contains(&reason))
        .then(|| (reason.to_owned(), waiting.message.clone().unwrap_or_default()))
}

impl Pods {
    fn seen(&mut self, pod: &Pod) {
        let Some(key) = task_attempt(pod) else { return };
        lock(&self.seen).insert(key);
        if self.ended.contains(&key) {
            return;
        }
        match pull_failure(pod) {
            Some((reason, message)) => {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let hopeless = PULL_HOPELESS.contains(&reason.as_str());
                let entry = self.pulling.entry(key).or_insert_with(|| Pulling {
                    since: Instant::now(),
                    namespace,
                    reason: String::new(),
                    message: String::new(),
                    hopeless,
                });
                (entry.reason, entry.message, entry.hopeless) = (reason, message, hopeless);
                return;
            }
            None => {
                self.pulling.remove(&key);
            }
        }
        let Some(event) = pod_event(pod) else { return };
        match event.phase {
            JobPhase::Running { .. } => {
                self.follow(pod, key, true);
                send(&self.tx, event);
            }
            _ => {
                // The outcome goes after the container's last lines: a follower running drains
                // first; a pod that ended unseen (fast, or while no executor watched) has its
                // log read once.
                self.ended.insert(key);
                if !self.followers.contains_key(&key) {
                    self.follow(pod, key, false);
                }
                let follower = self.followers.remove(&key);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Some(f) = follower {
                        let _ = tokio::time::timeout(LOG_DRAIN, f).await;
                    }
                    send(&tx, event);
                });
            }
        }
    }

    /// Starts reading the task container's log (following it while it runs), once per attempt.
    fn follow(&mut self, pod: &Pod, key: Key, follow: bool) {
        if self.followers.contains_key(&key) {
            return;
        }
        let (Some(name), Some(namespace)) = (pod.metadata.name.clone(), pod.metadata.namespace.clone()) else { return };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let tx = self.tx.clone();
        self.followers.insert(key, tokio::spawn(read_log(api, name, key, follow, tx)));
    }

    fn gone(&mut self, pod: &Pod) {
        let Some(key) = task_attempt(pod) else { return };
        self.pulling.remove(&key);
        let ended = self.ended.remove(&key);
        if let Some(f) = self.followers.remove(&key) {
            f.abort();
        }
        if ended {
            return;
        }
        if let Some(event) = lost_pod_event(pod) {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            tokio::spawn(lost(self.client.clone(), self.tx.clone(), namespace, event));
        }
    }

    /// Fails the attempts whose image has not been pulled within the grace period, and
    /// deletes their Jobs (their pods would wait for the image for ever).
    fn expire_pulls(&mut self) {
        let now = Instant::now();
        let expired: Vec<Key> = self
            .pulling
            .iter()
            .filter(|(_, p)| p.hopeless || now.duration_since(p.since) >= self.pull_grace)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            let Some(p) = self.pulling.remove(&key) else { continue };
            self.ended.insert(key);
            let message =
                if p.hopeless { p.message } else { format!("{} (not pulled within {:?})", p.message, self.pull_grace) };
            info!(task = %key.0, attempt = key.1, reason = %p.reason, "image not pulled; failing the attempt");
            send(
                &self.tx,
                JobEvent {
                    task_id: key.0,
                    attempt: key.1,
                    phase: JobPhase::Failed { exit_code: None, reason: p.reason, message, at: Utc::now() },
                },
            );
            let jobs: Api<Job> = Api::namespaced(self.client.clone(), &p.namespace);
            let name = JobRequest::job_name(key.0, key.1);
            tokio::spawn(async move {
                if let Err(e) = jobs.delete(&name, &DeleteParams::foreground()).await {
                    debug!(job = %name, error = %e, "deleting a Job whose image never came failed");
                }
            });
        }
    }
}

/// Sends the task container's log as Output events, each line with its index in the attempt;
/// with `follow`, until the container ends.
async fn read_log(api: Api<Pod>, pod: String, key: Key, follow: bool, tx: mpsc::UnboundedSender<JobEvent>) {
    let params = LogParams { container: Some(job::CONTAINER.into()), follow, ..Default::default() };
    let reader = match api.log_stream(&pod, &params).await {
        Ok(r) => r,
        Err(e) => {
            debug!(%pod, error = %e, "reading the task's log failed");
            return;
        }
    };
    let mut lines = reader.lines().ready_chunks(LOG_CHUNK);
    let mut first = 0u64;
    while let Some(chunk) = lines.next().await {
        let n = chunk.len();
        let ok: Vec<String> = chunk.into_iter().map_while(Result::ok).collect();
        let broken = ok.len() < n;
        if !ok.is_empty() {
            let count = ok.len() as u64;
            if !send(&tx, JobEvent { task_id: key.0, attempt: key.1, phase: JobPhase::Output { first, lines: ok } }) {
                return;
            }
            first += count;
        }
        if broken {
            debug!(%pod, "the task's log stream broke off");
            return;
        }
    }
}

/// The reason a Job failed for, from its Failed condition; None while it has not failed, or
/// when it failed because its pod did (`BackoffLimitExceeded`: the pod's own outcome says more).
fn job_failure(job: &Job) -> Option<(String, String, DateTime<Utc>)> {
    let c = job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Failed" && c.status == "True")?;
    let reason = c.reason.clone().filter(|r| !r.is_empty() && r != "BackoffLimitExceeded")?;
    let at = c.last_transition_time.as_ref().map_or_else(Utc::now, super::time);
    Some((reason, c.message.clone().unwrap_or_default(), at))
}

fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn job_key(job: &Job) -> Option<Key> {
    let labels = job.metadata.labels.as_ref()?;
    Some((labels.get(LABEL_TASK)?.parse().ok()?, labels.get(job::LABEL_ATTEMPT)?.parse().ok()?))
}

/// Reports a vanished pod's or Job's attempt as lost after [`LOST_GRACE`], unless its Job
/// says it failed for a reason of its own (then that reason).
async fn lost(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, namespace: String, mut event: JobEvent) {
    tokio::time::sleep(LOST_GRACE).await;
    let jobs: Api<Job> = Api::namespaced(client, &namespace);
    if let Ok(Some(job)) = jobs.get_opt(&JobRequest::job_name(event.task_id, event.attempt)).await
        && let Some((reason, message, at)) = job_failure(&job)
    {
        event.phase = JobPhase::Failed { exit_code: None, reason, message, at };
    }
    send(&tx, event);
}

/// Watches berth's Jobs: a Job that failed on its own (past its deadline) fails its attempt;
/// one deleted before it finished, its pod never seen ending, loses it.
pub async fn jobs(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, seen: PodsSeen) {
    let api: Api<Job> = Api::all(client.clone());
    let mut stream = watcher(api, watcher::Config::default().labels(job::SELECTOR)).boxed();
    let mut failed: HashSet<Key> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                let Some(key) = job_key(&j) else { continue };
                if let Some((reason, message, at)) = job_failure(&j)
                    && failed.insert(key)
                {
                    let phase = JobPhase::Failed { exit_code: None, reason, message, at };
                    if !send(&tx, JobEvent { task_id: key.0, attempt: key.1, phase }) {
                        return;
                    }
                }
            }
            Ok(watcher::Event::Delete(j)) => {
                let Some(key) = job_key(&j) else { continue };
                failed.remove(&key);
                if job_finished(&j) {
                    continue;
                }
                let event = JobEvent {
                    task_id: key.0,
                    attempt: key.1,
                    phase: JobPhase::Failed {
                        exit_code: None,
                        reason: "Deleted".into(),
                        message: "the Job was deleted before the attempt ended".into(),
                        at: Utc::now(),
                    },
                };
                let namespace = j.metadata.namespace.clone().unwrap_or_default();
                let (client, tx, seen) = (client.clone(), tx.clone(), seen.clone());
                tokio::spawn(async move {
                    // Its pod's watcher may be a moment behind.
                    tokio::time::sleep(LOST_GRACE).await;
                    if !lock(&seen).remove(&key) {
                        lost(client, tx, namespace, event).await;
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "job watch failed; retrying");
                tokio::time::sleep(WATCH_RETRY).await;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Nodes and the pods berth does not own, reflected: what [`super::KubeCluster::list_nodes`]
/// reads once both are listed, and a notification on every change.
pub struct NodeCache {
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    nodes_ready: Arc<AtomicBool>,
    pods_ready: Arc<AtomicBool>,
    pub changed: Arc<Notify>,
}

impl NodeCache {
    /// Starts the reflectors. A node that turns NotReady or is deleted loses its running
    /// attempts: they are reported failed (NodeLost) and their Jobs deleted, so that a node
    /// coming back does not run a task that was retried elsewhere.
    pub fn start(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>) -> NodeCache {
        let (nodes, node_writer) = reflector::store::<Node>();
        let (pods, pod_writer) = reflector::store::<Pod>();
        let cache = NodeCache {
            nodes,
            pods,
            nodes_ready: Arc::new(AtomicBool::new(false)),
            pods_ready: Arc::new(AtomicBool::new(false)),
            changed: Arc::new(Notify::new()),
        };
        let (ready, changed) = (cache.nodes_ready.clone(), cache.changed.clone());
        let node_client = client.clone();
        tokio::spawn(async move {
            let api: Api<Node> = Api::all(node_client.clone());
            let mut stream = reflector::reflector(node_writer, watcher(api, watcher::Config::default())).boxed();
            let mut was_ready: HashMap<String, bool> = HashMap::new();
            while let Some(event) = stream.next().await {
                let lost_node = match event {
                    Ok(watcher::Event::InitDone) => {
                        ready.store(true, Ordering::Release);
                        None
                    }
                    Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        let now = super::node_ready(&n);
                        let before = was_ready.insert(name.clone(), now);
                        (!now && before != Some(false)).then_some((name, "became NotReady"))
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        was_ready.remove(&name);
                        Some((name, "was deleted"))
                    }
                    Ok(watcher::Event::Init) => None,
                    Err(e) => {
                        warn!(error = %e, "node watch failed; retrying");
                        tokio::time::sleep(WATCH_RETRY).await;
                        None
                    }
                };
                changed.notify_one();
                if let Some((node, what)) = lost_node {
                    tokio::spawn(lose_node(node_client.clone(), tx.clone(), node, what));
                }
            }
        });
        let (ready, changed) = (cache.pods_ready.clone(), cache.changed.clone());
        tokio::spawn(async move {
            let api: Api<Pod> = Api::all(client);
            let config = watcher::Config::default().labels(&format!("!{LABEL_TASK}")).fields(super::FOREIGN_LIVE);
            let mut stream = reflector::reflector(pod_writer, watcher(api, config)).boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => ready.store(true, Ordering::Release),
                    Ok(watcher::Event::Init) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "pod watch (capacity) failed; retrying");
                        tokio::time::sleep(WATCH_RETRY).await;
                        continue;
                    }
                }
                changed.notify_one();
            }
        });
        cache
    }

    /// Both reflectors have listed once: the cache answers for the API.
    pub fn ready(&self) -> bool {
        self.nodes_ready.load(Ordering::Acquire) && self.pods_ready.load(Ordering::Acquire)
    }
}

/// Fails the live attempts on a lost node (class node lost) and deletes their Jobs.
async fn lose_node(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, node: String, what: &'static str) {
    let api: Api<Pod> = Api::all(client.clone());
    let params = ListParams::default().labels(job::SELECTOR).fields(&format!("spec.nodeName={node}"));
    let pods = match api.list(&params).await {
        Ok(list) => list.items,
        Err(e) => {
            warn!(%node, error = %e, "listing a lost node's pods failed; they count as lost when deleted");
            return;
        }
    };
    for pod in pods {
        let Some(mut event) = lost_pod_event(&pod) else { continue };
        event.phase = JobPhase::Failed {
            exit_code: None,
            reason: "NodeLost".into(),
            message: format!("node {node} {what}"),
            at: Utc::now(),
        };
        let (task, attempt) = (event.task_id, event.attempt);
        info!(%node, %task, attempt, "node lost; failing its attempt");
        if !send(&tx, event) {
            return;
        }
        let jobs: Api<Job> = Api::namespaced(client.clone(), pod.metadata.namespace.as_deref().unwrap_or_default());
        let name = JobRequest::job_name(task, attempt);
        if let Err(e) = jobs.delete(&name, &DeleteParams::background()).await {
            debug!(job = %name, error = %e, "deleting a lost node's Job failed");
        }
    }
}
