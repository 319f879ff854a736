//! [`Queue`]: every Redis operation berth performs, each one round trip.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_core::config::ClaimOrder;
use berth_core::{ClusterSnapshot, NodeView, Resources, SchedulingSpec, Taint, TaskStatus};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::QueueError;
use crate::keys::Keys;
use crate::scripts::SCRIPTS;

/// The consumer group every executor reads bindings through.
pub const EXECUTOR_GROUP: &str = "executors";
/// The consumer group the webhook notifiers read task events through: each event is handled
/// by one notifier, whichever executor process runs it.
pub const NOTIFIER_GROUP: &str = "notifiers";
/// Events kept in the stream (approximately): enough for SSE clients and webhooks to catch up
/// after a short disconnect, bounded so the stream never grows without limit.
pub const EVENTS_MAXLEN: usize = 100_000;
/// Nodes read per round trip when a snapshot is read whole.
const SNAPSHOT_CHUNK: usize = 2000;
/// Most delayed tasks and expired leases promoted per claim, so one claim stays short even
/// after a long outage.
const MAX_PROMOTIONS: u32 = 1000;

/// A task handed to one scheduler until its lease expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTask {
    pub spec: SchedulingSpec,
}

/// The answer of [`Queue::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Capacity reserved and the binding emitted.
    Bound,
    /// The node no longer has room; its fresh state is attached.
    NoRoom { allocatable: Resources, reserved: Resources },
    /// The node is gone from the ledger or unschedulable.
    NodeUnavailable,
    /// Our lease expired and the task went to someone else (or was cancelled).
    LeaseLost,
}

/// A scheduler's decision on its way to an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The stream entry id, to acknowledge.
    pub entry_id: String,
    pub task_id: Uuid,
    pub node: String,
    pub attempt: u32,
}

/// What Redis knows of a queued task (for "why pending").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub state: String,
    pub node: Option<String>,
    pub reason: Option<String>,
    pub attempt: u32,
}

/// The task hash fields behind a [`TaskState`], in [`TaskState::FIELDS`] order.
type StateFields = (Option<String>, Option<String>, Option<String>, Option<u32>);

impl TaskState {
    const FIELDS: [&'static str; 4] = ["state", "node", "reason", "attempt"];
}

/// How often a scheduler replica refreshes its [`PolicyReport`].
pub const POLICY_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Reports older than this are a replica that died: readers drop them.
pub const POLICY_REPORT_MAX_AGE: Duration = Duration::from_secs(45);

/// Which scheduling policy a scheduler replica runs, as it reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub replica: String,
    /// [`berth_core::config::SchedulerConfig::version`] of the section it runs.
    pub version: String,
    /// When it loaded that section (Unix ms).
    pub loaded_at_ms: i64,
    /// When it last reported (Unix ms); reports older than the reader's limit are dropped.
    pub seen_at_ms: i64,
    /// The scheduler section itself.
    pub config: serde_json::Value,
}

/// Amounts from a capacity or usage hash: `cpu`, `mem`, `gpu`, and each other extended
/// resource by its name (names with a `/`; see claim.lua).
fn ledger_resources(h: &HashMap<String, i64>) -> Resources {
    let g = |f: &str| h.get(f).copied().unwrap_or(0).max(0) as u64;
    let mut r = Resources::new(g("cpu"), g("mem"), g("gpu"));
    for (name, v) in h.iter().filter(|(k, _)| k.contains('/')) {
        r.extended.set(name.as_str(), (*v).max(0) as u64);
    }
    r
}

/// The reserve script's answer (see reserve.lua).
fn reserve_outcome(node: &str, r: Vec<redis::Value>) -> Result<ReserveOutcome, QueueError> {
    let corrupt = || QueueError::Corrupt(format!("reserve returned {r:?}"));
    let code: i64 =
        r.first().and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok()).ok_or_else(corrupt)?;
    Ok(match code {
        1 => ReserveOutcome::Bound,
        -1 => ReserveOutcome::LeaseLost,
        -2 => ReserveOutcome::NodeUnavailable,
        0 => {
            let h: HashMap<String, String> =
                r.get(1).and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok()).ok_or_else(corrupt)?;
            // The node cannot vanish between the script's reads: one script is atomic.
            let n = node_view(node.to_owned(), &h)?.ok_or_else(corrupt)?;
            ReserveOutcome::NoRoom { allocatable: n.allocatable, reserved: n.requested }
        }
        _ => return Err(corrupt()),
    })
}

/// A node's ledger hash as the scheduler sees it; None for a node that no longer exists.
fn node_view(name: String, h: &HashMap<String, String>) -> Result<Option<NodeView>, QueueError> {
    if h.is_empty() {
        return Ok(None);
    }
    let num = |f: &str| -> Result<u64, QueueError> {
        let v = h.get(f).map(String::as_str).unwrap_or("0");
        v.parse::<i64>()
            .map(|x| x.max(0) as u64)
            .map_err(|_| QueueError::Corrupt(format!("node {name} field {f}={v:?}")))
    };
    let meta: NodeMeta = serde_json::from_str(h.get("meta").map(String::as_str).unwrap_or("{}"))
        .map_err(|e| QueueError::Corrupt(format!("node {name} meta: {e}")))?;
    let mut allocatable = Resources::new(num("alloc_cpu")?, num("alloc_mem")?, num("alloc_gpu")?);
    let mut requested = Resources::new(num("res_cpu")?, num("res_mem")?, num("res_gpu")?);
    // Other extended resources: alloc:<name> and res:<name> (see upsert_node.lua, reserve.lua).
    for (field, _) in h.iter().filter(|(f, _)| f.contains(':')) {
        if let Some(ext) = field.strip_prefix("alloc:") {
            allocatable.extended.set(ext, num(field)?);
        } else if let Some(ext) = field.strip_prefix("res:") {
            requested.extended.set(ext, num(field)?);
        }
    }
    Ok(Some(NodeView {
        allocatable,
        requested,
        labels: meta.labels,
        taints: meta.taints,
        schedulable: h.get("schedulable").map(String::as_str) == Some("1"),
        name,
    }))
}

/// The answer of [`Queue::park`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkOutcome {
    Parked,
    /// Capacity changed after the judgement: the task is ready again instead.
    Requeued,
    LeaseLost,
}

/// Where a queued task stands in its tenant's queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueuePosition {
    /// 1-based place among the tenant's ready tasks (in priority, then submission, order), if
    /// it is ready.
    pub position: Option<u64>,
    /// How many of the tenant's tasks are ready.
    pub ready: u64,
    /// When a delayed task is due again (Unix ms): its backoff's end, or its next evaluation.
    pub due_ms: Option<u64>,
    /// The tenant is suspended: nothing of it is claimed until it is reactivated.
    pub suspended: bool,
}

/// Log lines kept per task (approximately): enough for any tail a user asks for.
pub const LOG_MAXLEN: usize = 10_000;
/// How long a task's log outlives its last line.
pub const LOG_TTL: Duration = Duration::from_secs(24 * 3600);

/// One entry of a task's log stream: a line, or the end marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub id: String,
    pub line: Option<String>,
    pub attempt: Option<u32>,
    pub end: bool,
}

/// A task state change, as published on the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub task_id: Uuid,
    pub tenant_id: Uuid,
    pub status: TaskStatus,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The task's namespace, on cancellations: the executor deletes the Job even when the
    /// task's row is already gone (DELETE cancels, then removes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A task's placement constraints, the part of its spec not kept as plain fields.
#[derive(Serialize, Deserialize)]
struct Placement {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tolerations: Vec<berth_core::Toleration>,
}

/// A task as claim.lua returns it: id, tenant, prio, seq, attempt, cpu, mem, gpu, ext,
/// place, raw (see enqueue.lua), legacy spec.
fn claimed_spec(c: &[String]) -> Result<ClaimedTask, QueueError> {
    let bad = |what: &str, v: &str| QueueError::Corrupt(format!("task {}: {what} {v:?}", c[0]));
    let num = |i: usize, what: &str| c[i].parse::<u64>().map_err(|_| bad(what, &c[i]));
    if !c[11].is_empty() {
        // Queued by an earlier version: the whole spec as JSON, its counters as fields.
        let mut spec: SchedulingSpec = serde_json::from_str(&c[11]).map_err(|e| bad("spec", &e.to_string()))?;
        spec.seq = num(3, "seq")?;
        spec.attempt = num(4, "attempt")? as u32;
        return Ok(ClaimedTask { spec });
    }
    let task_id = c[0].parse().map_err(|_| bad("id", &c[0]))?;
    let mut requests = Resources::new(num(5, "cpu")?, num(6, "mem")?, num(7, "gpu")?);
    // The hash holds the reservation; give back the request as submitted.
    let defaulted = if c[10].is_empty() { 0 } else { num(10, "raw")? };
    if defaulted & 1 != 0 {
        requests.cpu_millis = 0;
    }
    if defaulted & 2 != 0 {
        requests.memory_bytes = 0;
    }
    requests.extended = berth_core::resources::Extended::decode(&c[8]).map_err(|e| bad("ext", &e))?;
    let place: Placement = if c[9].is_empty() {
        Placement { node_selector: BTreeMap::new(), tolerations: Vec::new() }
    } else {
        serde_json::from_str(&c[9]).map_err(|e| bad("place", &e.to_string()))?
    };
    Ok(ClaimedTask {
        spec: SchedulingSpec {
            task_id,
            tenant: c[1].clone(),
            requests,
            priority: num(2, "prio")?.min(100) as u8,
            node_selector: place.node_selector,
            tolerations: place.tolerations,
            attempt: num(4, "attempt")? as u32,
            seq: num(3, "seq")?,
        },
    })
}

#[derive(Serialize, Deserialize)]
struct NodeMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<Taint>,
}

/// A handle on one partition. Cheap to clone: clones share one multiplexed connection that
/// reconnects by itself.
#[derive(Clone)]
pub struct Queue {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
}

/// How long one command may take before it fails. The client's default (500ms) is too tight
/// for a claim over many tenants on a loaded machine; a minute would hide a dead server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("prefix", &self.keys.prefix()).finish()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Queue {
    pub async fn connect(url: &str, partition: &str) -> Result<Queue, QueueError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Queue { client, conn, keys: Keys::new(partition) })
    }

    /// A handle with a connection of its own, for blocking reads ([`Queue::read_bindings`]):
    /// a blocked command on the shared multiplexed connection would stall every other caller.
    pub async fn dedicated(&self, block: Duration) -> Result<Queue, QueueError> {
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        let conn = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        Ok(Queue { client: self.client.clone(), conn, keys: self.keys.clone() })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A raw connection, for tests and tools.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// The enqueue script's invocation for one task.
    fn enqueue_invocation(
        &self,
        spec: &SchedulingSpec,
        delay: Duration,
    ) -> Result<redis::ScriptInvocation<'static>, QueueError> {
        let k = &self.keys;
        let r = spec.reservation();
        let place = if spec.node_selector.is_empty() && spec.tolerations.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&Placement {
                node_selector: spec.node_selector.clone(),
                tolerations: spec.tolerations.clone(),
            })
            .map_err(|e| QueueError::Corrupt(e.to_string()))?
        };
        let defaulted = u8::from(spec.requests.cpu_millis == 0) | u8::from(spec.requests.memory_bytes == 0) << 1;
        let mut inv = SCRIPTS.enqueue.prepare_invoke();
        inv.key(k.task(spec.task_id))
            .key(k.seq())
            .key(k.ready(&spec.tenant))
            .key(k.tenants())
            .key(k.delayed())
            .arg(spec.task_id.to_string())
            .arg(place)
            .arg(&spec.tenant)
            .arg(spec.priority.min(100))
            .arg(r.cpu_millis)
            .arg(r.memory_bytes)
            .arg(r.gpu)
            .arg(ms(delay))
            .arg(spec.attempt)
            .arg(r.extended.encode())
            .arg(defaulted);
        Ok(inv)
    }

    /// Queues a task (ready now, or after `delay`). Returns its sequence number, or `None`
    /// if the task was already queued (enqueue is idempotent on the task id).
    pub async fn enqueue(&self, spec: &SchedulingSpec, delay: Duration) -> Result<Option<u64>, QueueError> {
        let seq: u64 = self.enqueue_invocation(spec, delay)?.invoke_async(&mut self.conn.clone()).await?;
        Ok((seq > 0).then_some(seq))
    }

    /// [`Queue::enqueue`] for many tasks, ready now, in one pipelined round trip.
    pub async fn enqueue_many(&self, specs: &[SchedulingSpec]) -> Result<(), QueueError> {
        let invocations =
            specs.iter().map(|s| self.enqueue_invocation(s, Duration::ZERO)).collect::<Result<Vec<_>, _>>()?;
        let _: Vec<redis::Value> = self.pipelined(&invocations).await?;
        Ok(())
    }

    /// Promotes due work, then leases up to `batch` ready tasks to `owner` for `lease`.
    pub async fn claim(&self, owner: &str, batch: u32, lease: Duration) -> Result<Vec<ClaimedTask>, QueueError> {
        self.claim_ordered(owner, batch, lease, ClaimOrder::Priority).await
    }

    /// [`Queue::claim`] with the cross-tenant order given: fair share (DRF) reads the
    /// tenants' usage, weights and the cluster's capacity in the same script, so the order
    /// is exact at the moment of the claim. Tasks come back in claim order.
    pub async fn claim_ordered(
        &self,
        owner: &str,
        batch: u32,
        lease: Duration,
        order: ClaimOrder,
    ) -> Result<Vec<ClaimedTask>, QueueError> {
        let k = &self.keys;
        let flat: Vec<String> = SCRIPTS
            .claim
            .key(k.tenants())
            .key(k.leases())
            .key(k.delayed())
            .key(k.suspended())
            .arg(k.prefix())
            .arg(batch)
            .arg(ms(lease).max(1))
            .arg(owner)
            .arg(MAX_PROMOTIONS)
            .arg(order.as_str())
            .invoke_async(&mut self.conn.clone())
            .await?;
        flat.chunks_exact(12).map(claimed_spec).collect()
    }

    /// Reserves the task's capacity on `node` and emits its binding, if `owner` still holds
    /// the lease and the node still has room.
    pub async fn reserve(&self, task: &SchedulingSpec, owner: &str, node: &str) -> Result<ReserveOutcome, QueueError> {
        let r: Vec<redis::Value> =
            self.reserve_invocation(task, owner, node).invoke_async(&mut self.conn.clone()).await?;
        reserve_outcome(node, r)
    }

    /// [`Queue::reserve`] for many (task, node) pairs in one pipelined round trip. Each
    /// reservation is atomic on its own, as with `reserve`; outcomes come back in order.
    pub async fn reserve_many(
        &self,
        owner: &str,
        pairs: &[(&SchedulingSpec, &str)],
    ) -> Result<Vec<ReserveOutcome>, QueueError> {
        let invocations: Vec<_> = pairs.iter().map(|(t, n)| self.reserve_invocation(t, owner, n)).collect();
        let replies: Vec<Vec<redis::Value>> = self.pipelined(&invocations).await?;
        pairs.iter().zip(replies).map(|((_, node), r)| reserve_outcome(node, r)).collect()
    }

    /// Runs invocations of one script as a pipeline of EVALSHA, in one round trip. A server
    /// that does not have the script yet (a first call, a restart) answers NOSCRIPT to every
    /// one of them and runs none, so the script is loaded and the pipeline sent once more.
    async fn pipelined<T: redis::FromRedisValue>(
        &self,
        invocations: &[redis::ScriptInvocation<'static>],
    ) -> Result<Vec<T>, QueueError> {
        let Some(first) = invocations.first() else { return Ok(Vec::new()) };
        let mut pipe = redis::pipe();
        for inv in invocations {
            pipe.invoke_script(inv);
        }
        let mut conn = self.conn.clone();
        match pipe.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                first.load_async(&mut conn).await?;
                Ok(pipe.query_async(&mut conn).await?)
            }
            r => Ok(r?),
        }
    }

    fn reserve_invocation(&self, task: &SchedulingSpec, owner: &str, node: &str) -> redis::ScriptInvocation<'static> {
        let k = &self.keys;
        let mut inv = SCRIPTS.reserve.prepare_invoke();
        inv.key(k.task(task.task_id))
            .key(k.node(node))
            .key(k.usage(&task.tenant))
            .key(k.leases())
            .key(k.bindings())
            .key(k.nodes_version())
            .key(k.nodes_changed())
            .arg(task.task_id.to_string())
            .arg(owner)
            .arg(node);
        inv
    }

    /// Hands a claimed task back: to ready now (`delay` zero) or after `delay`, recording
    /// `reason` for "why pending". Returns false if the lease was no longer ours.
    pub async fn unlease(&self, task_id: Uuid, owner: &str, delay: Duration, reason: &str) -> Result<bool, QueueError> {
        let k = &self.keys;
        let n: i64 = SCRIPTS
            .unlease
            .key(k.task(task_id))
            .key(k.leases())
            .key(k.delayed())
            .key(k.tenants())
            .arg(task_id.to_string())
            .arg(owner)
            .arg(ms(delay))
            .arg(reason)
            .arg(k.prefix())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// The capacity epoch: it moves whenever capacity may have grown (a release, a node
    /// change). A scheduler reads it before its snapshot and parks with it.
    pub async fn capacity_epoch(&self) -> Result<u64, QueueError> {
        let v: Option<u64> =
            redis::cmd("GET").arg(self.keys.capacity_epoch()).query_async(&mut self.conn.clone()).await?;
        Ok(v.unwrap_or(0))
    }

    /// Parks a claimed task no node fits, with `reason`, judged on the cluster as of capacity
    /// epoch `judged_at`: it is claimed again once the epoch moves past that (at once, if it
    /// already has), or after `max_wait`; while nothing changes it is not looked at again.
    pub async fn park(
        &self,
        task_id: Uuid,
        owner: &str,
        reason: &str,
        max_wait: Duration,
        judged_at: u64,
    ) -> Result<ParkOutcome, QueueError> {
        let k = &self.keys;
        let n: i64 = SCRIPTS
            .park
            .key(k.task(task_id))
            .key(k.leases())
            .key(k.parked())
            .key(k.parked_epoch())
            .key(k.capacity_epoch())
            .key(k.tenants())
            .arg(task_id.to_string())
            .arg(owner)
            .arg(reason)
            .arg(ms(max_wait).max(1))
            .arg(judged_at)
            .arg(k.prefix())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match n {
            1 => ParkOutcome::Parked,
            2 => ParkOutcome::Requeued,
            _ => ParkOutcome::LeaseLost,
        })
    }

    /// The task is done for good: release its reservation and usage and forget it.
    pub async fn finish(&self, task_id: Uuid) -> Result<bool, QueueError> {
        self.release(task_id, "finish", 0, Duration::ZERO).await
    }

    /// Attempt `attempt` failed and will be retried after `delay`: release its reservation
    /// and queue attempt `attempt + 1`. A repeat for the same attempt changes nothing.
    pub async fn retry(&self, task_id: Uuid, attempt: u32, delay: Duration) -> Result<bool, QueueError> {
        self.release(task_id, "retry", attempt, delay).await
    }

    async fn release(&self, task_id: Uuid, mode: &str, attempt: u32, delay: Duration) -> Result<bool, QueueError> {
        let k = &self.keys;
        let n: i64 = SCRIPTS
            .release
            .key(k.task(task_id))
            .key(k.nodes_version())
            .key(k.delayed())
            .key(k.leases())
            .arg(task_id.to_string())
            .arg(k.prefix())
            .arg(mode)
            .arg(attempt)
            .arg(ms(delay))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Marks a tenant suspended (its queued tasks are not claimed) or active again.
    pub async fn set_suspended(&self, tenant: &str, suspended: bool) -> Result<(), QueueError> {
        let cmd = if suspended { "SADD" } else { "SREM" };
        let _: i64 = redis::cmd(cmd).arg(self.keys.suspended()).arg(tenant).query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Records (or refreshes) the policy a scheduler replica runs.
    pub async fn report_policy(&self, report: &PolicyReport) -> Result<(), QueueError> {
        let json = serde_json::to_string(report).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let _: i64 = redis::cmd("HSET")
            .arg(self.keys.schedulers())
            .arg(&report.replica)
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// A replica stopping cleanly withdraws its report.
    pub async fn withdraw_policy(&self, replica: &str) -> Result<(), QueueError> {
        let _: i64 =
            redis::cmd("HDEL").arg(self.keys.schedulers()).arg(replica).query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// The live replicas' reports, by replica name; reports not refreshed within `max_age`
    /// (a replica that died) are removed.
    pub async fn policy_reports(&self, max_age: Duration) -> Result<Vec<PolicyReport>, QueueError> {
        let all: HashMap<String, String> =
            redis::cmd("HGETALL").arg(self.keys.schedulers()).query_async(&mut self.conn.clone()).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut live = Vec::new();
        for (replica, json) in all {
            match serde_json::from_str::<PolicyReport>(&json) {
                Ok(r) if now - r.seen_at_ms <= max_age.as_millis() as i64 => live.push(r),
                _ => self.withdraw_policy(&replica).await?,
            }
        }
        live.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(live)
    }

    /// Sets a tenant's fair-share weight.
    pub async fn set_weight(&self, tenant: &str, weight: u32) -> Result<(), QueueError> {
        let _: i64 = redis::cmd("HSET")
            .arg(self.keys.weights())
            .arg(tenant)
            .arg(weight)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Replaces every tenant's weight (the reconciler copies them from PostgreSQL).
    pub async fn replace_weights(&self, weights: &[(String, u32)]) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic().del(self.keys.weights());
        for (tenant, w) in weights {
            pipe.hset(self.keys.weights(), tenant, *w);
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// The cluster's schedulable capacity as fair share sees it.
    pub async fn capacity(&self) -> Result<Resources, QueueError> {
        let h: HashMap<String, i64> =
            redis::cmd("HGETALL").arg(self.keys.capacity()).query_async(&mut self.conn.clone()).await?;
        Ok(ledger_resources(&h))
    }

    /// Replaces the set of suspended tenants (the reconciler copies it from PostgreSQL).
    pub async fn replace_suspended(&self, tenants: &[String]) -> Result<(), QueueError> {
        let key = self.keys.suspended();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        if !tenants.is_empty() {
            pipe.cmd("SADD").arg(&key).arg(tenants).ignore();
        }
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Publishes a node's capacity and scheduling facts; keeps its reservations.
    pub async fn upsert_node(&self, node: &NodeView) -> Result<bool, QueueError> {
        let k = &self.keys;
        let meta = serde_json::to_string(&NodeMeta { labels: node.labels.clone(), taints: node.taints.clone() })
            .map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let n: i64 = SCRIPTS
            .upsert_node
            .key(k.nodes())
            .key(k.node(&node.name))
            .key(k.nodes_version())
            .key(k.capacity())
            .key(k.capacity_epoch())
            .key(k.nodes_changed())
            .arg(&node.name)
            .arg(node.allocatable.cpu_millis)
            .arg(node.allocatable.memory_bytes)
            .arg(node.allocatable.gpu)
            .arg(if node.schedulable { 1 } else { 0 })
            .arg(meta)
            .arg(node.allocatable.extended.encode())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// The name of every node in the ledger.
    pub async fn node_names(&self) -> Result<Vec<String>, QueueError> {
        Ok(redis::cmd("SMEMBERS").arg(self.keys.nodes()).query_async(&mut self.conn.clone()).await?)
    }

    /// The ledger's version: it moves whenever any node or reservation changes.
    pub async fn nodes_version(&self) -> Result<u64, QueueError> {
        let v: Option<u64> =
            redis::cmd("GET").arg(self.keys.nodes_version()).query_async(&mut self.conn.clone()).await?;
        Ok(v.unwrap_or(0))
    }

    /// Every node in the ledger with its reservations, sorted by name.
    pub async fn snapshot(&self) -> Result<ClusterSnapshot, QueueError> {
        let mut conn = self.conn.clone();
        let (version, names): (Option<u64>, Vec<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.keys.nodes_version())
            .cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut conn)
            .await?;
        let mut nodes = Vec::with_capacity(names.len());
        // In chunks: one pipeline of every node's hash would hold all their replies at once,
        // hundreds of MiB for a large cluster.
        for chunk in names.chunks(SNAPSHOT_CHUNK) {
            let mut pipe = redis::pipe();
            for n in chunk {
                pipe.cmd("HGETALL").arg(self.keys.node(n));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (name, h) in chunk.iter().zip(hashes) {
                nodes.extend(node_view(name.clone(), &h)?);
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ClusterSnapshot { version: version.unwrap_or(0), nodes })
    }

    /// Brings `snap` up to the ledger's current version by reading only the nodes changed
    /// since `snap.version` (one round trip when nothing changed, two otherwise), instead of
    /// every node. A ledger older than the snapshot (a purge) is read whole. Returns the
    /// capacity epoch, read before any node: what a task judged on this snapshot parks with.
    pub async fn refresh_snapshot(&self, snap: &mut ClusterSnapshot) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        // Atomically: the epoch and the version, then what changed after the snapshot's, so no
        // change between the reads is missed (a node state newer than `version` is only read
        // again next time).
        let (epoch, version, changed): (Option<u64>, Option<u64>, Vec<String>) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(self.keys.capacity_epoch())
            .cmd("GET")
            .arg(self.keys.nodes_version())
            .cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes_changed())
            .arg(format!("({}", snap.version))
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        let (epoch, version) = (epoch.unwrap_or(0), version.unwrap_or(0));
        if version < snap.version || snap.nodes.is_empty() {
            *snap = self.snapshot().await?;
            return Ok(epoch);
        }
        for chunk in changed.chunks(SNAPSHOT_CHUNK) {
            let mut pipe = redis::pipe();
            for n in chunk {
                pipe.cmd("HGETALL").arg(self.keys.node(n));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (name, h) in chunk.iter().cloned().zip(hashes) {
                match (snap.nodes.binary_search_by(|n| n.name.cmp(&name)), node_view(name, &h)?) {
                    (Ok(i), Some(v)) => snap.nodes[i] = v,
                    (Ok(i), None) => {
                        snap.nodes.remove(i);
                    }
                    (Err(i), Some(v)) => snap.nodes.insert(i, v),
                    (Err(_), None) => {}
                }
            }
        }
        snap.version = version;
        Ok(epoch)
    }

    /// Resources held by one tenant's bound tasks.
    pub async fn tenant_usage(&self, tenant: &str) -> Result<Resources, QueueError> {
        let h: HashMap<String, i64> =
            redis::cmd("HGETALL").arg(self.keys.usage(tenant)).query_async(&mut self.conn.clone()).await?;
        Ok(ledger_resources(&h))
    }

    /// The weighted dominant share (what fair share orders by, as claim.lua computes it) of
    /// `tenant` and of every other tenant with ready work, by tenant name.
    pub async fn fair_shares(&self, tenant: &str) -> Result<Vec<(String, f64)>, QueueError> {
        let mut conn = self.conn.clone();
        let mut tenants: Vec<String> = redis::cmd("SMEMBERS").arg(self.keys.tenants()).query_async(&mut conn).await?;
        if !tenants.iter().any(|t| t == tenant) {
            tenants.push(tenant.to_owned());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.keys.capacity());
        for t in &tenants {
            pipe.cmd("HGETALL").arg(self.keys.usage(t));
            pipe.cmd("HGET").arg(self.keys.weights()).arg(t);
        }
        let mut rows: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let hash = |v: redis::Value| -> HashMap<String, f64> {
            redis::FromRedisValue::from_redis_value(v).unwrap_or_default()
        };
        let rest = rows.split_off(1);
        let cap = hash(rows.remove(0));
        let mut out = Vec::new();
        for (t, pair) in tenants.into_iter().zip(rest.chunks(2)) {
            let used = hash(pair[0].clone());
            let weight: Option<f64> = redis::FromRedisValue::from_redis_value(pair[1].clone()).unwrap_or(None);
            let weight = weight.filter(|w| *w > 0.0).unwrap_or(1.0);
            let dominant = cap
                .iter()
                .filter(|(_, c)| **c > 0.0)
                .map(|(name, c)| used.get(name).copied().unwrap_or(0.0) / c)
                .fold(0.0, f64::max);
            out.push((t, dominant / weight));
        }
        Ok(out)
    }

    /// `task_id`'s place in `tenant`'s queue, in one round trip.
    pub async fn queue_position(&self, tenant: &str, task_id: Uuid) -> Result<QueuePosition, QueueError> {
        let id = task_id.to_string();
        type Row = (Option<u64>, u64, Option<f64>, bool, Option<u64>);
        let (rank, ready, due, suspended, parked_until): Row = redis::pipe()
            .cmd("ZRANK")
            .arg(self.keys.ready(tenant))
            .arg(&id)
            .cmd("ZCARD")
            .arg(self.keys.ready(tenant))
            .cmd("ZSCORE")
            .arg(self.keys.delayed())
            .arg(&id)
            .cmd("SISMEMBER")
            .arg(self.keys.suspended())
            .arg(tenant)
            .cmd("HGET")
            .arg(self.keys.task(task_id))
            .arg("parked_until")
            .query_async(&mut self.conn.clone())
            .await?;
        // A parked task is due at the latest when its max wait ends.
        let due = due.map(|d| d.max(0.0) as u64).or(parked_until);
        Ok(QueuePosition { position: rank.map(|r| r + 1), ready, due_ms: due, suspended })
    }

    /// What Redis knows of a task, if it is queued, leased, delayed or bound.
    pub async fn task_state(&self, task_id: Uuid) -> Result<Option<TaskState>, QueueError> {
        Ok(self.task_states(&[task_id]).await?.pop().flatten())
    }

    /// [`Queue::task_state`] of many tasks in one round trip.
    pub async fn task_states(&self, ids: &[Uuid]) -> Result<Vec<Option<TaskState>>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.keys.task(*id)).arg(&TaskState::FIELDS);
        }
        let rows: Vec<StateFields> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(rows
            .into_iter()
            .map(|(state, node, reason, attempt)| {
                state.map(|state| TaskState { state, node, reason, attempt: attempt.unwrap_or(0) })
            })
            .collect())
    }

    /// Ready tasks per tenant with ready work.
    pub async fn ready_depths(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let mut conn = self.conn.clone();
        let tenants: Vec<String> = redis::cmd("SMEMBERS").arg(self.keys.tenants()).query_async(&mut conn).await?;
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for t in &tenants {
            pipe.cmd("ZCARD").arg(self.keys.ready(t));
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(tenants.into_iter().zip(counts).collect())
    }

    /// Creates the executors' consumer group if it does not exist yet.
    pub async fn ensure_binding_group(&self) -> Result<(), QueueError> {
        self.ensure_group(&self.keys.bindings(), EXECUTOR_GROUP, "0").await
    }

    /// Creates consumer group `group` of stream `key` (and the stream), reading after
    /// `start`, unless it exists.
    async fn ensure_group(&self, key: &str, group: &str, start: &str) -> Result<(), QueueError> {
        let r: Result<String, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// New bindings for `consumer`, waiting up to `block` for some to arrive.
    pub async fn read_bindings(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Binding>, QueueError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(EXECUTOR_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.bindings())
            .arg(">")
            .query_async(&mut self.conn.clone())
            .await?;
        let ids = reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>()).unwrap_or_default();
        ids.iter().map(parse_binding).collect()
    }

    /// Takes over bindings that another executor received but did not acknowledge within
    /// `min_idle` (it died or hangs).
    /// Pass `"0-0"` first, then the cursor each call returns.
    pub async fn reclaim_bindings(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
        cursor: &str,
    ) -> Result<(Vec<Binding>, String), QueueError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.bindings())
            .arg(EXECUTOR_GROUP)
            .arg(consumer)
            .arg(ms(min_idle))
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        let claimed = reply.claimed.iter().map(parse_binding).collect::<Result<Vec<_>, _>>()?;
        Ok((claimed, reply.next_stream_id))
    }

    /// Acknowledges and deletes a handled binding (one group reads the stream, so a handled
    /// entry is needed by no one).
    pub async fn ack_binding(&self, entry_id: &str) -> Result<(), QueueError> {
        let _: (i64, i64) = redis::pipe()
            .cmd("XACK")
            .arg(self.keys.bindings())
            .arg(EXECUTOR_GROUP)
            .arg(entry_id)
            .cmd("XDEL")
            .arg(self.keys.bindings())
            .arg(entry_id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Appends a task state change to the capped event stream.
    pub async fn publish_event(&self, event: &TaskEvent) -> Result<(), QueueError> {
        let body = serde_json::to_string(event).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let _: String = redis::cmd("XADD")
            .arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(EVENTS_MAXLEN)
            .arg("*")
            .arg("tenant")
            .arg(event.tenant_id.to_string())
            .arg("event")
            .arg(body)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Creates the notifiers' consumer group on the event stream if it does not exist yet.
    /// It starts at the stream's end: events from before the first notifier ever ran are
    /// not delivered (there were no deliveries promised for them).
    pub async fn ensure_event_group(&self) -> Result<(), QueueError> {
        self.ensure_event_group_at("$").await
    }

    /// [`Queue::ensure_event_group`], the group (if new) starting after stream id `start`:
    /// `"0"` re-creates a group Redis lost with its data, so that the events published since
    /// (into a stream that `XADD` made anew) are read too.
    pub async fn ensure_event_group_at(&self, start: &str) -> Result<(), QueueError> {
        self.ensure_group(&self.keys.events(), NOTIFIER_GROUP, start).await
    }

    /// Events for notifier `consumer`: with `from` = `">"` new ones, waiting up to `block`
    /// (use a [`Queue::dedicated`] handle); with `"0"` those it read before and has not
    /// acknowledged, at once. Each is (stream id, tenant id, event JSON); they stay pending
    /// in the group until [`Queue::ack_events`].
    pub async fn read_event_group(
        &self,
        consumer: &str,
        from: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(String, String, String)>, QueueError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(NOTIFIER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(from)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).map(event_entry).collect()).unwrap_or_default())
    }

    /// Takes over events another notifier read but did not acknowledge within `min_idle`
    /// (it died). Pass `"0-0"` first, then the cursor each call returns.
    pub async fn reclaim_events(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
        cursor: &str,
    ) -> Result<(Vec<(String, String, String)>, String), QueueError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.events())
            .arg(NOTIFIER_GROUP)
            .arg(consumer)
            .arg(ms(min_idle))
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((reply.claimed.into_iter().map(event_entry).collect(), reply.next_stream_id))
    }

    /// Acknowledges handled events in the notifiers' group. They stay in the stream, which
    /// SSE clients read too; its cap trims them.
    pub async fn ack_events(&self, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: i64 = redis::cmd("XACK")
            .arg(self.keys.events())
            .arg(NOTIFIER_GROUP)
            .arg(ids)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Takes or renews the singleton lease of `role` for `holder`; true while `holder` has it.
    pub async fn hold_leader(&self, role: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let held: i64 = redis::Script::new(
            "local cur = redis.call('GET', KEYS[1])
             if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
             if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
             return 0",
        )
        .key(self.keys.leader(role))
        .arg(holder)
        .arg(ms(ttl).max(1))
        .invoke_async(&mut self.conn.clone())
        .await?;
        Ok(held == 1)
    }

    /// The partition's name, as given to [`Queue::connect`].
    pub fn partition(&self) -> &str {
        self.keys.prefix().trim_start_matches("berth:{").trim_end_matches("}:")
    }

    /// Deletes a partition from outside any runtime, on a connection and thread of its own:
    /// for test fixtures' `Drop`, which cannot await and may run while the test's own
    /// runtime (which drives the test's connection) is blocked. Best effort.
    pub fn purge_blocking(url: &str, partition: &str) {
        let (url, partition) = (url.to_owned(), partition.to_owned());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(q) = Queue::connect(&url, &partition).await {
                    let _ = q.purge().await;
                }
            })
        })
        .join();
    }

    /// A fixed-window rate limit: counts one hit on `what` if `count` is true, and says
    /// whether the window is already over `limit` (then: how long until it ends). Counting and
    /// checking are one atomic step, so concurrent API replicas share the limit.
    pub async fn rate_limit(
        &self,
        what: &str,
        limit: u32,
        window: Duration,
        count: bool,
    ) -> Result<Option<Duration>, QueueError> {
        let r: (i64, i64) = redis::Script::new(
            "local n
             if ARGV[3] == '1' then
               n = redis.call('INCR', KEYS[1])
               if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
             else
               n = tonumber(redis.call('GET', KEYS[1]) or '0')
             end
             local ttl = redis.call('PTTL', KEYS[1])
             if ttl < 0 and n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) ttl = tonumber(ARGV[2]) end
             return { n, ttl }",
        )
        .key(self.keys.rate(what))
        .arg(limit)
        .arg(ms(window).max(1))
        .arg(if count { "1" } else { "0" })
        .invoke_async(&mut self.conn.clone())
        .await?;
        let (n, ttl) = r;
        Ok((n > i64::from(limit)).then(|| Duration::from_millis(ttl.max(1) as u64)))
    }

    /// Events after stream id `after` (`"$"`: only new ones), waiting up to `block` when
    /// there are none; use on a [`Queue::dedicated`] handle. Each is (stream id, tenant id,
    /// event JSON).
    pub async fn read_events(
        &self,
        after: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(String, String, String)>, QueueError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(after)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).map(event_entry).collect()).unwrap_or_default())
    }

    /// Says a tenant was created or its quota changed, for the executors to bring its
    /// namespace up to date. Best effort: an executor also ensures a namespace before the
    /// first Job it creates in it.
    pub async fn publish_tenant_change(&self, tenant: Uuid) -> Result<(), QueueError> {
        let _: String = redis::cmd("XADD")
            .arg(self.keys.tenant_changes())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("tenant")
            .arg(tenant.to_string())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Tenant changes after stream id `after` (`"$"`: only new ones), waiting up to `block`:
    /// (entry id, tenant id); use on a [`Queue::dedicated`] handle.
    pub async fn read_tenant_changes(&self, after: &str, block: Duration) -> Result<Vec<(String, Uuid)>, QueueError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.tenant_changes())
            .arg(after)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .filter_map(|e| Some((e.id.clone(), e.get::<String>("tenant")?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The id of the newest event, or `"0-0"` for an empty stream: where a follower starts so
    /// that nothing appended after this call is missed.
    pub async fn last_event_id(&self) -> Result<String, QueueError> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.ids.into_iter().next().map_or_else(|| "0-0".to_string(), |e| e.id))
    }

    /// Events strictly after stream id `after`, oldest first, without waiting (catching up a
    /// client that reconnects with Last-Event-ID).
    pub async fn events_after(&self, after: &str, count: usize) -> Result<Vec<(String, String, String)>, QueueError> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.events())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.ids.into_iter().map(event_entry).collect())
    }

    /// Appends log lines of a task's attempt, `first` being the index of the first of them in
    /// the attempt's output; lines already appended (by index) are skipped. The stream keeps
    /// the newest [`LOG_MAXLEN`] lines (approximately) and lives [`LOG_TTL`] after its last
    /// write. Returns how many lines were new.
    pub async fn append_log(&self, task: Uuid, attempt: u32, first: u64, lines: &[String]) -> Result<u64, QueueError> {
        if lines.is_empty() {
            return Ok(0);
        }
        let mut inv = SCRIPTS.append_log.prepare_invoke();
        inv.key(self.keys.logs(task))
            .key(self.keys.log_lines(task))
            .arg(attempt)
            .arg(first)
            .arg(LOG_MAXLEN)
            .arg(LOG_TTL.as_secs());
        for line in lines {
            inv.arg(line);
        }
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Marks a task's log complete: followers stop after this entry.
    pub async fn end_log(&self, task: Uuid) -> Result<(), QueueError> {
        let key = self.keys.logs(task);
        let _: () = redis::pipe()
            .cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("end")
            .arg(1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(LOG_TTL.as_secs())
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The last `n` entries of a task's log, oldest first.
    pub async fn tail_log(&self, task: Uuid, n: usize) -> Result<Vec<LogEntry>, QueueError> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.logs(task))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut v: Vec<LogEntry> = reply.ids.into_iter().map(log_entry).collect();
        v.reverse();
        Ok(v)
    }

    /// Log entries after stream id `after`, waiting up to `block`; use on a
    /// [`Queue::dedicated`] handle.
    pub async fn follow_log(&self, task: Uuid, after: &str, block: Duration) -> Result<Vec<LogEntry>, QueueError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.logs(task))
            .arg(after)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).map(log_entry).collect()).unwrap_or_default())
    }

    /// Takes back one hit of a rate limit (a login that succeeded).
    pub async fn rate_forgive(&self, what: &str) -> Result<(), QueueError> {
        let _: i64 = redis::Script::new("local n = tonumber(redis.call('GET', KEYS[1]) or '0') if n > 0 then return redis.call('DECR', KEYS[1]) end return 0")
            .key(self.keys.rate(what))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Deletes every key of this partition. For tests and `berth dev`'s fresh start only.
    pub async fn purge(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", self.keys.prefix().replace('{', "\\{").replace('}', "\\}"));
        let mut cursor = 0u64;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

fn log_entry(e: StreamId) -> LogEntry {
    LogEntry {
        line: e.get::<String>("line"),
        attempt: e.get::<String>("attempt").and_then(|a| a.parse().ok()),
        end: e.map.contains_key("end"),
        id: e.id,
    }
}

fn event_entry(e: StreamId) -> (String, String, String) {
    let tenant = e.get::<String>("tenant").unwrap_or_default();
    let body = e.get::<String>("event").unwrap_or_default();
    (e.id, tenant, body)
}

fn parse_binding(e: &StreamId) -> Result<Binding, QueueError> {
    let field = |f: &str| -> Result<String, QueueError> {
        e.get::<String>(f).ok_or_else(|| QueueError::Corrupt(format!("binding {} lacks {f}", e.id)))
    };
    let task = field("task")?;
    Ok(Binding {
        entry_id: e.id.clone(),
        task_id: task.parse().map_err(|_| QueueError::Corrupt(format!("binding {} task {task:?}", e.id)))?,
        node: field("node")?,
        attempt: field("attempt")?.parse().map_err(|_| QueueError::Corrupt(format!("binding {} attempt", e.id)))?,
    })
}
