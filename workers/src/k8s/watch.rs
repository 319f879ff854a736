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

/// Waiting reasons that keep a container from starting. These may heal (a registry blip, a
/// ConfigMap created late) and get the grace period; the next ones never do.
const PULL_RETRYING: &[&str] =
    &["ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"];
const PULL_HOPELESS: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];

/// Which attempt of which task an object belongs to.
type Key = (Uuid, u32);

/// What the pod watcher knows of each attempt, shared with the Job watcher: a Job deleted
/// with its pod is reported lost by the pod's watcher, and a Job that failed because its pod
/// did (BackoffLimitExceeded) is reported only if the pod's own outcome was not, so the Job's
/// watcher asks here first. Entries of pods that are gone are pruned after [`FORGET_AFTER`].
#[derive(Default)]
pub struct Attempts {
    seen: HashMap<Key, AttemptState>,
    /// Jobs that exist, from the Job watcher; None until its first list is done.
    jobs: Option<HashSet<Key>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AttemptState {
    /// Its pod exists and has not ended.
    Live,
    /// Its outcome (success, failure, loss) was reported.
    Ended,
    /// Its pod is gone (reported or not); forgotten after a while.
    Gone(Instant),
}

pub type Shared = Arc<std::sync::Mutex<Attempts>>;

pub(super) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Attempts> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long the memory of a vanished pod is kept (for the Job's deletion that follows).
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl Attempts {
    /// Whether the attempt's Job exists: None while the Job watcher has not listed yet.
    pub fn job_exists(&self, key: Key) -> Option<bool> {
        self.jobs.as_ref().map(|j| j.contains(&key))
    }

    fn reported(&self, key: &Key) -> bool {
        matches!(self.seen.get(key), Some(AttemptState::Ended | AttemptState::Gone(_)))
    }

    fn pod_seen(&self, key: &Key) -> bool {
        self.seen.contains_key(key)
    }
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
    followers: HashMap<Key, Follower>,
    pulling: HashMap<Key, Pulling>,
    /// Attempts whose outcome this process has reported (their repeats are not sent again).
    ended: HashSet<Key>,
    /// The last state of every live task pod, to find those that vanished while the watch
    /// was down (a relist gives no Delete for them).
    live: HashMap<Key, Pod>,
    /// The keys of a relist in progress.
    relisted: Option<HashSet<Key>>,
    shared: Shared,
}

/// A log reader, and how to tell it its container ended.
struct Follower {
    handle: JoinHandle<()>,
    ended: tokio::sync::watch::Sender<bool>,
}

/// Watches berth's task pods in every namespace until the executor goes away.
pub async fn pods(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, pull_grace: Duration, shared: Shared) {
    let api: Api<Pod> = Api::all(client.clone());
    let mut stream = watcher(api, watcher::Config::default().labels(job::SELECTOR)).boxed();
    let mut pods = Pods {
        client,
        tx,
        pull_grace,
        followers: HashMap::new(),
        pulling: HashMap::new(),
        ended: HashSet::new(),
        live: HashMap::new(),
        relisted: None,
        shared,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Ok(watcher::Event::Init)) => pods.relisted = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(p))) => {
                    if let (Some(r), Some(key)) = (pods.relisted.as_mut(), task_attempt(&p)) {
                        r.insert(key);
                    }
                    pods.seen(&p);
                }
                Some(Ok(watcher::Event::InitDone)) => pods.relist_done(),
                Some(Ok(watcher::Event::Apply(p))) => pods.seen(&p),
                Some(Ok(watcher::Event::Delete(p))) => pods.gone(&p),
                Some(Err(e)) => {
                    // The watcher retries by itself (relist, then watch again).
                    warn!(error = %e, "pod watch failed; retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
            },
            _ = tick.tick() => pods.tick(),
        }
        if pods.tx.is_closed() {
            return;
        }
    }
}

/// What [`Pods::gone`] needs of a live pod (its name, namespace, labels and phase), kept
/// for every live task pod instead of the whole object.
fn skeleton(pod: &Pod) -> Pod {
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            ..Default::default()
        },
        spec: None,
        status: Some(k8s_openapi::api::core::v1::PodStatus {
            phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
            ..Default::default()
        }),
    }
}

/// The waiting reason and message of a pod's task container that cannot pull its image.
/// Its init container's too (the workspace initialiser's image may be missing as well).
fn pull_failure(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()).find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        (PULL_RETRYING.contains(&reason) || PULL_HOPELESS.contains(&reason))
            .then(|| (reason.to_owned(), format!("{}: {}", c.name, waiting.message.clone().unwrap_or_default())))
    })
}

impl Pods {
    fn set(&self, key: Key, state: AttemptState) {
        lock(&self.shared).seen.insert(key, state);
    }

    fn seen(&mut self, pod: &Pod) {
        let Some(key) = task_attempt(pod) else { return };
        if self.ended.contains(&key) {
            return;
        }
        self.set(key, AttemptState::Live);
        self.live.insert(key, skeleton(pod));
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
                // The outcome goes after the container's last lines: a follower drains first;
                // a pod that ended unseen (fast, or while no executor watched) has its log
                // read once. A failure is checked against its Job, which may know better
                // (a deadline: the Job controller killed the container).
                self.ended.insert(key);
                self.live.remove(&key);
                self.set(key, AttemptState::Ended);
                if !self.followers.contains_key(&key) {
                    self.follow(pod, key, false);
                }
                let follower = self.followers.remove(&key);
                let (tx, client) = (self.tx.clone(), self.client.clone());
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                tokio::spawn(async move {
                    if let Some(f) = follower {
                        let _ = f.ended.send(true);
                        let mut handle = f.handle;
                        if tokio::time::timeout(LOG_DRAIN, &mut handle).await.is_err() {
                            handle.abort();
                        }
                    }
                    let event = match event.phase {
                        JobPhase::Failed { .. } => with_job_reason(&client, &namespace, event).await,
                        _ => event,
                    };
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
        let (ended, ended_rx) = tokio::sync::watch::channel(!follow);
        let handle = tokio::spawn(read_log(api, name, key, ended_rx, self.tx.clone()));
        self.followers.insert(key, Follower { handle, ended });
    }

    fn gone(&mut self, pod: &Pod) {
        let Some(key) = task_attempt(pod) else { return };
        self.pulling.remove(&key);
        self.live.remove(&key);
        let ended = self.ended.remove(&key);
        self.set(key, AttemptState::Gone(Instant::now()));
        if let Some(f) = self.followers.remove(&key) {
            f.handle.abort();
        }
        if ended {
            return;
        }
        if let Some(event) = lost_pod_event(pod) {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            tokio::spawn(lost(self.client.clone(), self.tx.clone(), namespace, event));
        }
    }

    /// A relist is complete: a live pod it did not return vanished while the watch was down
    /// (a relist has no Delete for it), and is lost like a deleted one.
    fn relist_done(&mut self) {
        let Some(listed) = self.relisted.take() else { return };
        // Ended pods that went unseen need no report, only forgetting.
        self.ended.retain(|k| listed.contains(k));
        let vanished: Vec<Pod> =
            self.live.iter().filter(|(k, _)| !listed.contains(k)).map(|(_, p)| p.clone()).collect();
        for pod in vanished {
            debug!(pod = ?pod.metadata.name, "a task pod vanished while the watch was down");
            self.gone(&pod);
        }
    }

    fn tick(&mut self) {
        self.expire_pulls();
        let now = Instant::now();
        lock(&self.shared)
            .seen
            .retain(|_, s| !matches!(s, AttemptState::Gone(at) if now.duration_since(*at) > FORGET_AFTER));
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
            self.live.remove(&key);
            self.set(key, AttemptState::Ended);
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
            tokio::spawn(delete_job(jobs, JobRequest::job_name(key.0, key.1), DeleteParams::foreground()));
        }
    }
}

/// Deletes a Job berth gave up on, retrying for about a minute: a Job left behind would run
/// its task again beside the retry.
async fn delete_job(jobs: Api<Job>, name: String, params: DeleteParams) {
    let mut delay = Duration::from_millis(500);
    for _ in 0..8 {
        match jobs.delete(&name, &params).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.is_not_found() => return,
            Err(e) => {
                debug!(job = %name, error = %e, "deleting an abandoned Job failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
        }
    }
    warn!(job = %name, "could not delete an abandoned Job; delete it by hand");
}

/// The task container's log lines, undecodable bytes replaced (a stray Latin-1 byte must not
/// end the log), without their line ends.
fn lossy_lines(reader: impl futures::AsyncBufRead + Unpin) -> impl futures::Stream<Item = String> {
    futures::stream::unfold((reader, Vec::new()), |(mut reader, mut buf)| async move {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let line = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf)).into_owned();
                Some((line, (reader, buf)))
            }
        }
    })
}

/// Sends the task container's log as Output events, each line with its index in the attempt.
/// It follows the log until `ended` says the container ended; a follow that breaks off
/// earlier (the API server closed it, the kubelet restarted) starts again from the top, and
/// lines already sent are skipped, here and in Redis.
async fn read_log(
    api: Api<Pod>,
    pod: String,
    key: Key,
    mut ended: tokio::sync::watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<JobEvent>,
) {
    let mut sent = 0u64;
    loop {
        let follow = !*ended.borrow();
        let params = LogParams { container: Some(job::CONTAINER.into()), follow, ..Default::default() };
        match api.log_stream(&pod, &params).await {
            Ok(reader) => {
                let mut lines = lossy_lines(reader).boxed().ready_chunks(LOG_CHUNK);
                let mut index = 0u64;
                while let Some(chunk) = lines.next().await {
                    let first = index;
                    index += chunk.len() as u64;
                    if index <= sent {
                        continue;
                    }
                    let skip = sent.saturating_sub(first) as usize;
                    let lines: Vec<String> = chunk.into_iter().skip(skip).collect();
                    let event = JobEvent {
                        task_id: key.0,
                        attempt: key.1,
                        phase: JobPhase::Output { first: first + skip as u64, lines },
                    };
                    if !send(&tx, event) {
                        return;
                    }
                    sent = index;
                }
            }
            Err(e) => debug!(%pod, error = %e, "reading the task's log failed"),
        }
        if !follow {
            return;
        }
        // The follow ended: the container did, or the connection broke. Until the watch says
        // the container ended, read again; once it has, one last read without follow.
        let _ = tokio::time::timeout(Duration::from_secs(2), ended.wait_for(|e| *e)).await;
    }
}

/// A pod's failure as its Job tells it, when the Job failed for a reason of its own (a
/// deadline): the Job controller killed the container, whose own word is only "Error".
async fn with_job_reason(client: &kube::Client, namespace: &str, mut event: JobEvent) -> JobEvent {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    if let Ok(Some(job)) = jobs.get_opt(&JobRequest::job_name(event.task_id, event.attempt)).await
        && let Some((reason, message, at)) = job_failure(&job)
        && let JobPhase::Failed { exit_code, .. } = event.phase
    {
        event.phase = JobPhase::Failed { exit_code, reason, message, at };
    }
    event
}

/// The reason a Job failed for, from its Failed condition (or FailureTarget, which the Job
/// controller sets first, before it kills the pods); None while it has not failed, or when it
/// failed because its pod did (`BackoffLimitExceeded`: the pod's own outcome says more).
fn job_failure(job: &Job) -> Option<(String, String, DateTime<Utc>)> {
    let c = job_condition(job, &["FailureTarget", "Failed"])?;
    let reason = c.reason.clone().filter(|r| !r.is_empty() && r != "BackoffLimitExceeded")?;
    let at = c.last_transition_time.as_ref().map_or_else(Utc::now, super::time);
    Some((reason, c.message.clone().unwrap_or_default(), at))
}

fn job_condition<'a>(job: &'a Job, types: &[&str]) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| types.contains(&c.type_.as_str()) && c.status == "True")
}

fn job_finished(job: &Job) -> bool {
    job_condition(job, &["Complete", "Failed"]).is_some()
}

fn job_key(job: &Job) -> Option<Key> {
    let labels = job.metadata.labels.as_ref()?;
    Some((labels.get(LABEL_TASK)?.parse().ok()?, labels.get(job::LABEL_ATTEMPT)?.parse().ok()?))
}

/// Reports a vanished pod's or Job's attempt as lost after [`LOST_GRACE`], unless its Job
/// says it failed for a reason of its own (then that reason).
async fn lost(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, namespace: String, event: JobEvent) {
    tokio::time::sleep(LOST_GRACE).await;
    send(&tx, with_job_reason(&client, &namespace, event).await);
}

fn lost_event(key: Key, message: &str) -> JobEvent {
    JobEvent {
        task_id: key.0,
        attempt: key.1,
        phase: JobPhase::Failed { exit_code: None, reason: "Deleted".into(), message: message.into(), at: Utc::now() },
    }
}

/// Watches berth's Jobs, and keeps the set of those that exist for
/// [`Attempts::job_exists`]:
/// - a Job that failed on its own (past its deadline) fails its attempt;
/// - one that failed because its pod did, when the pod's outcome was never seen (the pod
///   vanished), loses it;
/// - one deleted before it finished, its pod never seen, loses it; as does one that vanished
///   while the watch was down.
pub async fn jobs(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, shared: Shared) {
    let api: Api<Job> = Api::all(client.clone());
    let mut stream = watcher(api, watcher::Config::default().labels(job::SELECTOR)).boxed();
    let mut failed: HashSet<Key> = HashSet::new();
    // Unfinished Jobs, with their namespaces; and the keys of a relist in progress.
    let mut live: HashMap<Key, String> = HashMap::new();
    let mut relisted: Option<HashSet<Key>> = None;
    let vanished = |key: Key, namespace: String, message: &'static str| {
        let (client, tx, shared) = (client.clone(), tx.clone(), shared.clone());
        tokio::spawn(async move {
            // Its pod's watcher may be a moment behind.
            tokio::time::sleep(LOST_GRACE).await;
            if !lock(&shared).pod_seen(&key) {
                lost(client, tx, namespace, lost_event(key, message)).await;
            }
        });
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                let listed = relisted.take().unwrap_or_default();
                let gone: Vec<(Key, String)> =
                    live.iter().filter(|(k, _)| !listed.contains(k)).map(|(k, n)| (*k, n.clone())).collect();
                for (key, namespace) in gone {
                    live.remove(&key);
                    vanished(key, namespace, "the Job vanished while berth was not watching");
                }
                let mut state = lock(&shared);
                let jobs = state.jobs.get_or_insert_with(HashSet::new);
                jobs.retain(|k| listed.contains(k));
                jobs.extend(listed);
            }
            Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                let Some(key) = job_key(&j) else { continue };
                if let Some(r) = relisted.as_mut() {
                    r.insert(key);
                }
                if let Some(jobs) = lock(&shared).jobs.as_mut() {
                    jobs.insert(key);
                }
                let namespace = j.metadata.namespace.clone().unwrap_or_default();
                if job_finished(&j) {
                    live.remove(&key);
                } else {
                    live.insert(key, namespace.clone());
                }
                if !failed.insert(key) {
                    continue;
                }
                if let Some((reason, message, at)) = job_failure(&j) {
                    // After the pod's own report, which carries its last log lines and the
                    // same reason (it asks the Job): this one matters only if that never
                    // comes (the pod was already gone).
                    let phase = JobPhase::Failed { exit_code: None, reason, message, at };
                    let (tx, shared) = (tx.clone(), shared.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(LOST_GRACE).await;
                        if !lock(&shared).reported(&key) {
                            send(&tx, JobEvent { task_id: key.0, attempt: key.1, phase });
                        }
                    });
                } else if job_condition(&j, &["Failed"]).is_some() {
                    // Failed because its pod did: the pod's watcher reports that, unless the
                    // pod vanished unseen.
                    let (client, tx, shared) = (client.clone(), tx.clone(), shared.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(LOST_GRACE).await;
                        if !lock(&shared).reported(&key) {
                            let event = lost_event(key, "the Job failed and its pod is gone");
                            lost(client, tx, namespace, event).await;
                        }
                    });
                } else {
                    failed.remove(&key);
                }
            }
            Ok(watcher::Event::Delete(j)) => {
                let Some(key) = job_key(&j) else { continue };
                failed.remove(&key);
                live.remove(&key);
                if let Some(jobs) = lock(&shared).jobs.as_mut() {
                    jobs.remove(&key);
                }
                if !job_finished(&j) {
                    let namespace = j.metadata.namespace.clone().unwrap_or_default();
                    vanished(key, namespace, "the Job was deleted before the attempt ended");
                }
            }
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
    /// Starts the reflectors. A node that is deleted, or stays NotReady for `lost_grace`,
    /// loses its running attempts: they are reported failed (NodeLost) and their Jobs
    /// deleted, so that the API server tells its kubelet to stop them should it come back.
    pub fn start(client: kube::Client, tx: mpsc::UnboundedSender<JobEvent>, lost_grace: Duration) -> NodeCache {
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
        let store = cache.nodes.clone();
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
                    let (client, tx, store) = (node_client.clone(), tx.clone(), store.clone());
                    tokio::spawn(async move {
                        // A deleted node is gone; a NotReady one may be back in a moment (a
                        // busy kubelet, a runtime restart): its tasks are lost only if it
                        // stays away for the grace period.
                        if what != "was deleted" {
                            tokio::time::sleep(lost_grace).await;
                            let key = kube::runtime::reflector::ObjectRef::<Node>::new(&node);
                            if store.get(&key).is_none_or(|n| super::node_ready(&n)) {
                                return;
                            }
                        }
                        lose_node(client, tx, node, what).await;
                    });
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
        tokio::spawn(delete_job(jobs, JobRequest::job_name(task, attempt), DeleteParams::background()));
    }
}
