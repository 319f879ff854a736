//! `berth.toml`: every role's configuration, with `BERTH_SECTION__KEY` environment overrides.
//!
//! Loading merges, lowest first: the built-in defaults below, the TOML file, then environment
//! variables (`BERTH_DATABASE__URL=…` sets `database.url`). Unknown keys are rejected, and
//! [`Config::validate`] checks every value before any connection opens; each error names the
//! key path (`scheduler.profile.scorers[0].weight`). `deploy/berth.example.toml` documents
//! every key with its default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

use crate::failure::FailureClass;
use crate::node::Taint;
use crate::quantity::{parse_bytes, parse_cpu_millis};
use crate::resources::{self, GPU_RESOURCE, Resources};
use crate::validate;

/// The JWT secret used when none is configured. Only `berth dev` accepts it.
pub const DEFAULT_JWT_SECRET: &str = "berth-dev-secret-do-not-use-in-production";

/// One invalid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Why a configuration could not be loaded: every offending key, each with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({})", self.source_name)?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration. Every section has a `Default` whose doc gives the value and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub api: ApiConfig,
    pub auth: AuthConfig,
    pub bootstrap: BootstrapConfig,
    pub scheduler: SchedulerConfig,
    pub executor: ExecutorConfig,
    pub webhooks: WebhooksConfig,
    pub cluster: ClusterConfig,
    pub dev: DevConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

/// Sections that environment variables may set; other `BERTH_…` variables (such as
/// `BERTH_CONFIG` or test switches) are not configuration and are ignored.
const SECTIONS: [&str; 12] = [
    "database",
    "redis",
    "api",
    "auth",
    "bootstrap",
    "scheduler",
    "executor",
    "webhooks",
    "cluster",
    "dev",
    "log",
    "metrics",
];

/// Where the roles without an API (`berth scheduler`, `berth executor`) serve `/metrics`
/// and `/healthz`; the API serves its own on `api.listen`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Unset (default): not served, as several replicas on one host would fight over one
    /// port. Set it per process, e.g. `127.0.0.1:9101`; port 0 picks a free one (logged).
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://postgres@127.0.0.1:5432/berth`: the local server with trust auth, as a
    /// developer machine has it. `berth dev` and `berth migrate` create the database if missing.
    #[serde(deserialize_with = "lenient::string")]
    pub url: String,
    /// 10 connections: enough for one role on a small machine; PostgreSQL's default limit is 100.
    pub max_connections: u32,
    /// 5s to get a connection before a request fails with 503 rather than queueing forever.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/berth".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://127.0.0.1:6379`: the local server.
    #[serde(deserialize_with = "lenient::string")]
    pub url: String,
    /// `"main"`: the partition's name, used as the hash tag of every key (`berth:{main}:…`), so
    /// one partition's keys share a Redis Cluster slot and its scripts run there too.
    #[serde(deserialize_with = "lenient::string")]
    pub partition: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig { url: "redis://127.0.0.1:6379".into(), partition: "main".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `127.0.0.1:8080`: loopback only, so a developer's API is not exposed by accident.
    pub listen: SocketAddr,
    /// 2 MiB: comfortably above any task spec, small enough that a flood cannot exhaust memory.
    pub body_limit_bytes: usize,
    /// 256: log followers (`logs?follow=true`) open at once per API process. Each holds a
    /// Redis connection of its own, so without a bound a client could exhaust Redis's.
    pub max_log_followers: usize,
    /// 1h: the longest one `logs?follow=true` stream lasts; it then ends (without the task's
    /// end) and the client reconnects to go on. A follower of a task that waits or runs for
    /// days does not hold its slot and Redis connection for as long.
    #[serde(with = "humantime_serde")]
    pub max_log_follow: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 2 << 20,
            max_log_followers: 256,
            max_log_follow: std::time::Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The HMAC-SHA256 key that signs access tokens. The default is public, so every role but
    /// `dev` refuses to start with it.
    #[serde(deserialize_with = "lenient::string")]
    pub jwt_secret: String,
    /// 1h: the seed's `expires_in` example; short enough that a leaked token soon dies.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// 30 days: how long a refresh token stays valid.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// 5 failed logins per username per `login_window`: enough for typos, far too few for
    /// guessing. Further attempts get 429 with Retry-After until the window ends.
    pub login_failures_per_user: u32,
    /// 60 login attempts per client address per `login_window`, so one address cannot spray
    /// many usernames; high enough for a team behind one NAT.
    pub login_attempts_per_address: u32,
    /// 1m: the window both login limits count in.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: DEFAULT_JWT_SECRET.into(),
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            login_failures_per_user: 5,
            login_attempts_per_address: 60,
            login_window: Duration::from_secs(60),
        }
    }
}

/// The platform administrator created at first start (DESIGN.md §3). Existing accounts are
/// never changed by these values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// `system`: the built-in tenant whose admins administer the platform.
    #[serde(deserialize_with = "lenient::string")]
    pub system_tenant: String,
    /// `admin`.
    #[serde(deserialize_with = "lenient::string")]
    pub admin_username: String,
    /// `admin`: fine on a laptop; set your own before the first start anywhere else.
    #[serde(deserialize_with = "lenient::string")]
    pub admin_password: String,
    /// `admin@berth.local`.
    #[serde(deserialize_with = "lenient::string")]
    pub admin_email: String,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            system_tenant: "system".into(),
            admin_username: "admin".into(),
            admin_password: "admin".into(),
            admin_email: "admin@berth.local".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// 64 candidates per cycle: enough to amortise the claim round trip, few enough that a
    /// crashed replica strands little work until its leases expire.
    pub batch_size: u32,
    /// 30s: how long a claimed task stays invisible to other replicas; a replica that dies
    /// returns its claims to ready after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// 50ms: how long an idle replica waits before claiming again.
    #[serde(with = "humantime_serde")]
    pub idle_wait: Duration,
    /// 3: how many times a placement that lost a race for a node is re-scored and retried
    /// within one cycle before the task goes back to ready.
    pub max_conflict_retries: u32,
    /// 60s: a task that fits nowhere is evaluated again when the cluster's capacity changes
    /// (a task ends, a node is added or changes), and otherwise only after this long.
    #[serde(with = "humantime_serde")]
    pub unschedulable_max_wait: Duration,
    pub profile: ProfileConfig,
}

impl SchedulerConfig {
    /// A short, stable fingerprint of the whole section (FNV-1a over its canonical TOML), so
    /// replicas can report which policy they run and operators can compare them.
    pub fn version(&self) -> String {
        let text = toml::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            batch_size: 64,
            lease_ttl: Duration::from_secs(30),
            idle_wait: Duration::from_millis(50),
            max_conflict_retries: 3,
            unschedulable_max_wait: Duration::from_secs(60),
            profile: ProfileConfig::default(),
        }
    }
}

/// Which filters, scorers and queue orders run, in the shape of a kube-scheduler profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub filters: Vec<FilterConfig>,
    pub scorers: Vec<ScorerConfig>,
    pub order: Vec<OrderConfig>,
    /// 0 (default): every node is filtered and scored, as kube-scheduler does with
    /// `percentageOfNodesToScore: 100`. N > 0: a decision scores the first N feasible nodes
    /// of an index of the nodes with the task's CPU free, by free CPU in the direction the
    /// first `resource_fit` scorer prefers (tightest first when it packs, emptiest first when
    /// it spreads). Needs such a scorer, weighing cpu.
    pub candidate_limit: u32,
}

/// Which end of the free-CPU index a candidate search starts from (see
/// [`ProfileConfig::candidate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateOrder {
    /// Least free CPU first: the profile packs.
    Tightest,
    /// Most free CPU first: the profile spreads.
    Emptiest,
}

impl Default for ProfileConfig {
    /// Every filter; bin-packing (`most_allocated`, gpus weighted 3) so that whole nodes stay
    /// free for large tasks, which is what a batch platform wants; priority first.
    fn default() -> Self {
        ProfileConfig {
            filters: vec![
                FilterConfig::NodeSchedulable,
                FilterConfig::ResourcesFit,
                FilterConfig::NodeSelector,
                FilterConfig::Taints,
            ],
            scorers: vec![ScorerConfig::ResourceFit {
                shape: Vec::new(),
                weight: 1,
                strategy: FitStrategy::MostAllocated,
                resources: BTreeMap::from([("cpu".into(), 1), ("memory".into(), 1), (GPU_RESOURCE.into(), 3)]),
            }],
            order: vec![OrderConfig::Priority, OrderConfig::Fifo],
            candidate_limit: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    NodeSchedulable,
    ResourcesFit,
    NodeSelector,
    Taints,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitStrategy {
    LeastAllocated,
    MostAllocated,
    /// Score by a piecewise-linear function (`shape`) of each resource's utilization.
    RequestedToCapacityRatio,
}

/// One point of a requested-to-capacity-ratio shape: utilization 0–100 (percent) → score 0–10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapePoint {
    pub utilization: i64,
    pub score: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerConfig {
    /// kube-scheduler's NodeResourcesFit score.
    ResourceFit {
        #[serde(default = "one")]
        weight: u32,
        strategy: FitStrategy,
        /// Per-resource weights, kube-scheduler's `resources` argument; default cpu=1, memory=1.
        #[serde(default = "default_fit_resources")]
        resources: BTreeMap<String, i64>,
        /// For `requested_to_capacity_ratio` only: utilization → score points, increasing in
        /// utilization (e.g. `[{utilization = 0, score = 0}, {utilization = 100, score = 10}]`
        /// bin-packs).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shape: Vec<ShapePoint>,
    },
    /// kube-scheduler's NodeResourcesBalancedAllocation: prefers nodes whose resources stay
    /// evenly used.
    BalancedAllocation {
        #[serde(default = "one")]
        weight: u32,
        /// The resources balanced, each with weight 1 (as upstream requires); default cpu and
        /// memory.
        #[serde(default = "default_fit_resources")]
        resources: BTreeMap<String, i64>,
    },
}

fn one() -> u32 {
    1
}

fn default_fit_resources() -> BTreeMap<String, i64> {
    BTreeMap::from([("cpu".into(), 1), ("memory".into(), 1)])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderConfig {
    Priority,
    /// Weighted dominant-resource fairness across tenants (progressive filling): the tenant
    /// whose dominant share divided by its weight is lowest goes next.
    Drf,
    Fifo,
}

/// How the claim script orders work across tenants, derived from the profile's `order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOrder {
    /// Priority, then submission, over all tenants' tasks together.
    Priority,
    /// The tenant with the lowest weighted dominant share first; priority within a tenant.
    Drf,
    /// Priority first across tenants; among equal priorities, the lowest weighted dominant
    /// share.
    PriorityThenDrf,
}

impl ClaimOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimOrder::Priority => "priority",
            ClaimOrder::Drf => "drf",
            ClaimOrder::PriorityThenDrf => "priority_drf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// 60s: how long a binding may sit unacknowledged with a dead executor before another
    /// executor takes it over.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Backoff before a failed attempt is retried: `min(cap, base × 2^retry)`, ± `jitter`.
    pub retry: RetryConfig,
    /// Per failure class: whether to retry, whether a retry counts against the task's
    /// `max_retry_count`, how many at most, and the backoff (else `retry`'s).
    pub failures: FailuresConfig,
    /// 10s: how often the reconciler enqueues pending tasks that Redis lost or never got.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// 1h (the seed's): how long an attempt of a task without `timeout_seconds` may run
    /// before it is stopped as DeadlineExceeded. "0s": no limit.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
}

impl ExecutorConfig {
    /// The deadline of an attempt, in seconds: the task's own, else [`Self::default_timeout`]
    /// (none when that is zero).
    pub fn deadline_seconds(&self, task_timeout: Option<i32>) -> Option<i64> {
        match task_timeout {
            Some(t) if t > 0 => Some(i64::from(t)),
            _ => Some(self.default_timeout.as_secs().min(i64::MAX as u64) as i64).filter(|s| *s > 0),
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            claim_idle: Duration::from_secs(60),
            retry: RetryConfig::default(),
            failures: FailuresConfig::default(),
            reconcile_interval: Duration::from_secs(10),
            default_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// 2s: the first retry's delay.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// 5m: no retry waits longer than this.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// 0.2: each delay is scaled by a random factor in [1 − jitter, 1 + jitter], so retries
    /// of tasks that failed together do not return together.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { base: Duration::from_secs(2), cap: Duration::from_secs(300), jitter: 0.2 }
    }
}

impl RetryConfig {
    /// The delay before retry number `retry` (0 = first retry), for a jitter draw `u` in [0, 1).
    pub fn delay(&self, retry: u32, u: f64) -> Duration {
        let exp = self.base.as_secs_f64() * 2f64.powi(retry.min(30) as i32);
        let capped = exp.min(self.cap.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * u - 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

/// Webhook delivery (`workers/src/webhooks.rs`): the notifier every executor runs beside it,
/// and the API's limits on registering hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// true: executors deliver webhooks. With false, events still reach the stream (and SSE),
    /// hooks can still be registered, and nothing is sent until an executor runs with true;
    /// events older than the stream's cap are lost by then.
    pub enabled: bool,
    /// 8: calls per delivery, the first included, before it is recorded as failed. Ours, not
    /// apalis-redis's (which would retry 25 times whatever it is told).
    pub max_attempts: u32,
    /// 10s: the wait after the first failed call; each further failure doubles it. At least
    /// 1s: apalis-redis schedules in whole seconds, so waits are rounded up to one.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// 1h: no wait between two calls is longer.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// 10s: one call's whole time (connect, send, response headers and body); longer is a
    /// failed attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// 16: calls in flight at once per executor process.
    pub concurrency: usize,
    /// 4,000: deliveries waiting in apalis-redis (due or scheduled) above which the notifier
    /// stops reading new events until they drain. apalis-redis's fetch fails for good once
    /// more than about 8,000 are due at once, so at most 7,000.
    pub max_backlog: usize,
    /// 20: hooks a tenant may register; each event fans out to all of them.
    pub max_per_tenant: u32,
    /// 7 days: finished deliveries (delivered or failed) are deleted after this.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// false: hooks may only reach public addresses. Loopback, private, link-local (cloud
    /// metadata) and shared addresses are refused at registration when given literally, and
    /// at every call after name resolution, so a tenant cannot reach the cluster's internal
    /// services through berth. true for hooks inside your own network.
    pub allow_private_networks: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            enabled: true,
            max_attempts: 8,
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            concurrency: 16,
            max_backlog: 4000,
            max_per_tenant: 20,
            retention: Duration::from_secs(7 * 24 * 3600),
            allow_private_networks: false,
        }
    }
}

impl WebhooksConfig {
    /// The wait after failed call number `attempt` (1 = the first call):
    /// `min(cap, base × 2^(attempt − 1))`, rounded up to whole seconds.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        Duration::from_secs(exp.min(self.backoff_cap.as_secs_f64()).ceil() as u64)
    }

    fn validate(&self, bad: &mut impl FnMut(String, String)) {
        if !(1..=50).contains(&self.max_attempts) {
            bad("webhooks.max_attempts".into(), "must be between 1 and 50".into());
        }
        if self.backoff_base < Duration::from_secs(1) {
            bad("webhooks.backoff_base".into(), "must be at least 1s (apalis-redis schedules in whole seconds)".into());
        }
        if self.backoff_cap < self.backoff_base {
            bad("webhooks.backoff_cap".into(), "must be at least webhooks.backoff_base".into());
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(300) {
            bad("webhooks.timeout".into(), "must be between 100ms and 5m".into());
        }
        if !(1..=1000).contains(&self.concurrency) {
            bad("webhooks.concurrency".into(), "must be between 1 and 1000".into());
        }
        if !(1..=7000).contains(&self.max_backlog) {
            bad("webhooks.max_backlog".into(), "must be between 1 and 7000".into());
        }
        if !(1..=1000).contains(&self.max_per_tenant) {
            bad("webhooks.max_per_tenant".into(), "must be between 1 and 1000".into());
        }
        if self.retention < Duration::from_secs(60) {
            bad("webhooks.retention".into(), "must be at least 1m".into());
        }
    }
}

/// What the operator set for one failure class; anything left out is the class's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassPolicyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<bool>,
    /// Whether a retry of this class counts against the task's `max_retry_count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted: Option<bool>,
    /// The most retries of this class per task (required for an uncounted class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub base: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub cap: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// One [`ClassPolicyConfig`] per [`FailureClass`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailuresConfig {
    pub exit_code: ClassPolicyConfig,
    pub oom_killed: ClassPolicyConfig,
    pub deadline_exceeded: ClassPolicyConfig,
    pub evicted: ClassPolicyConfig,
    pub image_pull: ClassPolicyConfig,
    pub node_lost: ClassPolicyConfig,
    pub infrastructure: ClassPolicyConfig,
}

/// The retry policy a failure class runs with: its settings over its defaults over
/// `executor.retry`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    pub retry: bool,
    pub counted: bool,
    /// None: only the task's `max_retry_count` bounds the retries.
    pub limit: Option<u32>,
    pub backoff: RetryConfig,
}

/// How many uncounted retries of a lost node or an eviction a task gets by default.
pub const DEFAULT_FREE_RETRIES: u32 = 5;

impl FailuresConfig {
    pub fn get(&self, class: FailureClass) -> &ClassPolicyConfig {
        match class {
            FailureClass::ExitCode => &self.exit_code,
            FailureClass::OomKilled => &self.oom_killed,
            FailureClass::DeadlineExceeded => &self.deadline_exceeded,
            FailureClass::Evicted => &self.evicted,
            FailureClass::ImagePull => &self.image_pull,
            FailureClass::NodeLost => &self.node_lost,
            FailureClass::Infrastructure => &self.infrastructure,
        }
    }

    /// The effective policy of `class`. Defaults: an OOM kill and an image that cannot be
    /// pulled fail at once (a retry would fail the same way); an eviction and a lost node are
    /// the cluster's doing, so they are retried without counting against the task's
    /// `max_retry_count`, at most [`DEFAULT_FREE_RETRIES`] times; the rest are retried and
    /// counted.
    pub fn policy(&self, class: FailureClass, backoff: &RetryConfig) -> ClassPolicy {
        let (retry, counted, limit) = match class {
            FailureClass::OomKilled | FailureClass::ImagePull => (false, true, None),
            FailureClass::Evicted | FailureClass::NodeLost => (true, false, Some(DEFAULT_FREE_RETRIES)),
            FailureClass::ExitCode | FailureClass::DeadlineExceeded | FailureClass::Infrastructure => {
                (true, true, None)
            }
        };
        let c = self.get(class);
        ClassPolicy {
            retry: c.retry.unwrap_or(retry),
            counted: c.counted.unwrap_or(counted),
            limit: c.limit.or(limit),
            backoff: RetryConfig {
                base: c.base.unwrap_or(backoff.base),
                cap: c.cap.unwrap_or(backoff.cap),
                jitter: c.jitter.unwrap_or(backoff.jitter),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterKind {
    /// In-process nodes from `cluster.nodes` (DESIGN.md §7).
    Simulated,
    /// A real cluster's API, found as kubectl finds it: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account. `cluster.nodes` and the simulation keys are ignored.
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `simulated`: runs anywhere, no Kubernetes needed. `kubernetes`: a real cluster.
    pub kind: ClusterKind,
    /// The simulated nodes. Default: 4 nodes `sim-1`…`sim-4` of 16 CPU, 64Gi, 4 GPUs.
    pub nodes: Vec<SimNodeConfig>,
    /// 3s: how long a simulated task runs without a `berth.io/sim-duration` label.
    #[serde(with = "humantime_serde")]
    pub default_duration: Duration,
    /// 100ms: how long a simulated Job takes from creation to its pod running.
    #[serde(with = "humantime_serde")]
    pub start_delay: Duration,
    /// 2m (`kubernetes` only): how long a pod may fail to pull its image (ErrImagePull,
    /// ImagePullBackOff) before the attempt fails as `image_pull`. A registry blip heals
    /// within it; a wrong image name does not.
    #[serde(with = "humantime_serde")]
    pub image_pull_grace: Duration,
    /// 5m (`kubernetes` only; Kubernetes' own NoExecute toleration): how long a node may be
    /// NotReady before the attempts running on it count as lost (retried elsewhere, their
    /// Jobs deleted). It gets no new tasks from the first moment. A deleted node's attempts
    /// are lost at once.
    #[serde(with = "humantime_serde")]
    pub node_lost_grace: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            kind: ClusterKind::Simulated,
            nodes: vec![SimNodeConfig {
                name: "sim".into(),
                count: 4,
                cpu: "16".into(),
                memory: "64Gi".into(),
                gpu: 4,
                extended: BTreeMap::new(),
                labels: BTreeMap::new(),
                taints: Vec::new(),
            }],
            default_duration: Duration::from_secs(3),
            start_delay: Duration::from_millis(100),
            image_pull_grace: Duration::from_secs(120),
            node_lost_grace: Duration::from_secs(300),
        }
    }
}

/// A group of identical simulated nodes, named `name-1`…`name-count` (or just `name` when
/// `count` is 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimNodeConfig {
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(deserialize_with = "lenient::string")]
    pub cpu: String,
    #[serde(deserialize_with = "lenient::string")]
    pub memory: String,
    #[serde(default)]
    pub gpu: u64,
    /// Other extended resources each node offers, by name, in whole units:
    /// `extended = { "amd.com/gpu" = 2 }`.
    #[serde(default)]
    pub extended: BTreeMap<String, u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
}

impl SimNodeConfig {
    /// The node names this group expands to.
    pub fn names(&self) -> Vec<String> {
        if self.count == 1 {
            vec![self.name.clone()]
        } else {
            (1..=self.count).map(|i| format!("{}-{i}", self.name)).collect()
        }
    }

    /// Allocatable resources of each node of the group. Call after [`Config::validate`].
    pub fn allocatable(&self) -> Resources {
        let mut r =
            Resources::new(parse_cpu_millis(&self.cpu).unwrap_or(0), parse_bytes(&self.memory).unwrap_or(0), self.gpu);
        for (name, amount) in &self.extended {
            r.extended.set(name.as_str(), *amount);
        }
        r
    }
}

/// Accounts that `berth dev` creates besides the platform admin. Dev mode only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// `demo`.
    #[serde(deserialize_with = "lenient::string")]
    pub demo_tenant: String,
    /// `demo`.
    #[serde(deserialize_with = "lenient::string")]
    pub demo_username: String,
    /// `demo`.
    #[serde(deserialize_with = "lenient::string")]
    pub demo_password: String,
    /// `demo@berth.local`.
    #[serde(deserialize_with = "lenient::string")]
    pub demo_email: String,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            demo_tenant: "demo".into(),
            demo_username: "demo".into(),
            demo_password: "demo".into(),
            demo_email: "demo@berth.local".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people; `json` for log shippers.
    pub format: LogFormat,
    /// `info`: a tracing `EnvFilter` directive such as `info,berth_scheduler=debug`; `RUST_LOG`
    /// overrides it.
    #[serde(deserialize_with = "lenient::string")]
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}

/// Strings that may arrive as numbers or booleans: environment values are typed by guess
/// (`BERTH_AUTH__JWT_SECRET=1234…` reads as an integer), and `cpu = 16` is natural TOML.
mod lenient {
    use serde::Deserializer;
    use serde::de::{self, Visitor};
    use std::fmt;

    struct AnyScalar;

    impl<'de> Visitor<'de> for AnyScalar {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(AnyScalar)
    }
}

impl Config {
    /// Loads defaults, then `path` (if given; it must exist), then `BERTH_…` variables, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed("BERTH_"))
    }

    /// Loads defaults and one TOML document, ignoring the environment (for tests and tools).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let table = parse_toml(toml, "inline TOML")?;
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Serialized::defaults(table)),
            "inline TOML",
        )
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let mut source_name = "defaults".to_string();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError {
                    source_name: p.display().to_string(),
                    errors: vec![FieldError { path: "(file)".into(), message: "no such file".into() }],
                });
            }
            source_name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                source_name: source_name.clone(),
                errors: vec![FieldError { path: "(file)".into(), message: e.to_string() }],
            })?;
            figment = figment.merge(Serialized::defaults(parse_toml(&text, &source_name)?));
        }
        let env = env.split("__").filter(|key| {
            // Keys arrive in the variable's own case (`REDIS.PARTITION`).
            let first = key.as_str().split('.').next().unwrap_or_default().to_ascii_lowercase();
            SECTIONS.contains(&first.as_str())
        });
        figment = figment.merge(env);
        Self::extract(figment, &source_name)
    }

    fn extract(figment: Figment, source_name: &str) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| ConfigError {
            source_name: source_name.to_owned(),
            errors: e
                .into_iter()
                .map(|e| FieldError {
                    path: if e.path.is_empty() { "(root)".into() } else { e.path.join(".") },
                    message: e.kind.to_string(),
                })
                .collect(),
        })?;
        let errors = config.validate();
        if errors.is_empty() { Ok(config) } else { Err(ConfigError { source_name: source_name.to_owned(), errors }) }
    }

    /// Every semantic problem, each with its key path. Empty means valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut bad = |path: String, message: String| errs.push(FieldError { path, message });

        if !self.database.url.starts_with("postgres://") && !self.database.url.starts_with("postgresql://") {
            bad("database.url".into(), "must be a postgres:// URL".into());
        }
        if self.database.max_connections == 0 {
            bad("database.max_connections".into(), "must be at least 1".into());
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            bad("redis.url".into(), "must be a redis:// or rediss:// URL".into());
        }
        let p = &self.redis.partition;
        if p.is_empty() || p.len() > 64 || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bad("redis.partition".into(), "must be 1-64 letters, digits, '-' or '_'".into());
        }
        if self.api.body_limit_bytes < 1024 {
            bad("api.body_limit_bytes".into(), "must be at least 1024".into());
        }
        if self.api.max_log_follow.is_zero() {
            bad("api.max_log_follow".into(), "must be longer than 0s".into());
        }
        if self.api.max_log_followers == 0 {
            bad("api.max_log_followers".into(), "must be at least 1".into());
        }
        if self.auth.jwt_secret.len() < 16 {
            bad("auth.jwt_secret".into(), "must be at least 16 characters".into());
        }
        if self.auth.access_token_ttl < Duration::from_secs(10) {
            bad("auth.access_token_ttl".into(), "must be at least 10s".into());
        }
        if self.auth.login_failures_per_user == 0 {
            bad("auth.login_failures_per_user".into(), "must be at least 1".into());
        }
        if self.auth.login_attempts_per_address == 0 {
            bad("auth.login_attempts_per_address".into(), "must be at least 1".into());
        }
        if self.auth.login_window < Duration::from_secs(1) {
            bad("auth.login_window".into(), "must be at least 1s".into());
        }
        for (path, v) in
            [("bootstrap.system_tenant", &self.bootstrap.system_tenant), ("dev.demo_tenant", &self.dev.demo_tenant)]
        {
            if let Err(e) = validate::dns_label(v) {
                bad(path.into(), e);
            }
        }
        for (path, v) in [
            ("bootstrap.admin_username", &self.bootstrap.admin_username),
            ("bootstrap.admin_password", &self.bootstrap.admin_password),
            ("dev.demo_username", &self.dev.demo_username),
            ("dev.demo_password", &self.dev.demo_password),
        ] {
            if v.is_empty() {
                bad(path.into(), "must not be empty".into());
            }
        }
        let s = &self.scheduler;
        if !(1..=10_000).contains(&s.batch_size) {
            bad("scheduler.batch_size".into(), "must be between 1 and 10000".into());
        }
        if s.lease_ttl < Duration::from_secs(1) {
            bad("scheduler.lease_ttl".into(), "must be at least 1s".into());
        }
        if s.idle_wait.is_zero() || s.idle_wait > Duration::from_secs(10) {
            bad("scheduler.idle_wait".into(), "must be between 1ms and 10s".into());
        }
        if s.max_conflict_retries > 100 {
            bad("scheduler.max_conflict_retries".into(), "must be at most 100".into());
        }
        if s.unschedulable_max_wait < Duration::from_millis(10) {
            bad("scheduler.unschedulable_max_wait".into(), "must be at least 10ms".into());
        }
        for e in s.profile.validate() {
            bad(format!("scheduler.profile.{}", e.path), e.message);
        }
        if self.executor.reconcile_interval < Duration::from_millis(100) {
            bad("executor.reconcile_interval".into(), "must be at least 100ms".into());
        }
        if self.executor.claim_idle < Duration::from_secs(1) {
            bad("executor.claim_idle".into(), "must be at least 1s".into());
        }
        let r = &self.executor.retry;
        if !(0.0..=1.0).contains(&r.jitter) || r.jitter.is_nan() {
            bad("executor.retry.jitter".into(), "must be between 0 and 1".into());
        }
        if r.base.is_zero() {
            bad("executor.retry.base".into(), "must be positive".into());
        }
        if r.cap < r.base {
            bad("executor.retry.cap".into(), "must be at least executor.retry.base".into());
        }
        for class in FailureClass::ALL {
            let at = |k: &str| format!("executor.failures.{class}.{k}");
            let p = self.executor.failures.policy(class, r);
            if !(0.0..=1.0).contains(&p.backoff.jitter) {
                bad(at("jitter"), "must be between 0 and 1".into());
            }
            if p.backoff.base.is_zero() {
                bad(at("base"), "must be positive".into());
            }
            if p.backoff.cap < p.backoff.base {
                bad(at("cap"), "must be at least the base".into());
            }
            if p.retry && !p.counted && p.limit.is_none() {
                bad(at("limit"), "an uncounted class needs a limit, or its retries never end".into());
            }
            if p.limit.is_some_and(|l| l > 100) {
                bad(at("limit"), "must be at most 100".into());
            }
        }
        self.webhooks.validate(&mut bad);
        let c = &self.cluster;
        if c.kind == ClusterKind::Simulated && c.nodes.is_empty() {
            bad("cluster.nodes".into(), "the simulated cluster needs at least one node".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, n) in c.nodes.iter().enumerate() {
            let at = |k: &str| format!("cluster.nodes[{i}].{k}");
            if let Err(e) = validate::dns_subdomain(&n.name) {
                bad(at("name"), e);
            }
            if !(1..=100_000).contains(&n.count) {
                bad(at("count"), "must be between 1 and 100000".into());
            }
            match parse_cpu_millis(&n.cpu) {
                Ok(0) => bad(at("cpu"), "must be positive".into()),
                Ok(_) => {}
                Err(e) => bad(at("cpu"), e.to_string()),
            }
            match parse_bytes(&n.memory) {
                Ok(0) => bad(at("memory"), "must be positive".into()),
                Ok(_) => {}
                Err(e) => bad(at("memory"), e.to_string()),
            }
            for (k, v) in &n.extended {
                if let Err(e) = resources::check_extended_name(k) {
                    bad(at(&format!("extended.{k:?}")), e);
                } else if *v > resources::MAX_EXTENDED_AMOUNT {
                    bad(at(&format!("extended.{k:?}")), format!("must be at most {}", resources::MAX_EXTENDED_AMOUNT));
                }
            }
            for (k, v) in &n.labels {
                if let Err(e) = validate::label_key(k) {
                    bad(at(&format!("labels.{k:?}")), e);
                }
                if let Err(e) = validate::label_value(v) {
                    bad(at(&format!("labels.{k:?}")), e);
                }
            }
            for (j, t) in n.taints.iter().enumerate() {
                if let Err(e) = validate::label_key(&t.key) {
                    bad(at(&format!("taints[{j}].key")), e);
                }
            }
            for name in n.names() {
                if !seen.insert(name.clone()) {
                    bad(at("name"), format!("node {name:?} is defined twice"));
                }
            }
        }
        errs
    }
}

/// Parses TOML 1.1 (multi-line inline tables included, as DESIGN.md's examples use them).
fn parse_toml(text: &str, source_name: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        source_name: source_name.to_owned(),
        errors: vec![FieldError { path: "(syntax)".into(), message: e.to_string() }],
    })
}

/// A scorer's weight (1..=100), and its resources: known names, each weight passing `rule`.
fn check_scorer(
    i: usize,
    weight: u32,
    resources: &BTreeMap<String, i64>,
    rule: fn(i64) -> bool,
    rule_message: &str,
    errs: &mut Vec<FieldError>,
) {
    if !(1..=100).contains(&weight) {
        errs.push(FieldError { path: format!("scorers[{i}].weight"), message: "must be between 1 and 100".into() });
    }
    if resources.is_empty() {
        errs.push(FieldError {
            path: format!("scorers[{i}].resources"),
            message: "must name at least one resource".into(),
        });
    }
    for (name, w) in resources {
        if !["cpu", "memory", GPU_RESOURCE].contains(&name.as_str())
            && let Err(e) = resources::check_extended_name(name)
        {
            errs.push(FieldError {
                path: format!("scorers[{i}].resources.{name:?}"),
                message: format!(
                    "unknown resource (expected cpu, memory, {GPU_RESOURCE} or an extended resource name): {e}"
                ),
            });
        }
        if !rule(*w) {
            errs.push(FieldError { path: format!("scorers[{i}].resources.{name:?}"), message: rule_message.into() });
        }
    }
}

impl ProfileConfig {
    /// The cross-tenant order: `drf` before `priority` (or without it) puts fair share first;
    /// after it, fair share breaks ties between equal priorities.
    pub fn claim_order(&self) -> ClaimOrder {
        let at = |o: OrderConfig| self.order.iter().position(|x| *x == o);
        match (at(OrderConfig::Drf), at(OrderConfig::Priority)) {
            (None, _) => ClaimOrder::Priority,
            (Some(d), Some(p)) if p < d => ClaimOrder::PriorityThenDrf,
            (Some(_), _) => ClaimOrder::Drf,
        }
    }

    /// The direction a candidate search takes: that of the first `resource_fit` scorer, if
    /// it weighs cpu (the index orders by free CPU) and its preference is monotone; None
    /// otherwise.
    pub fn candidate_order(&self) -> Option<CandidateOrder> {
        let (strategy, resources, shape) = self.scorers.iter().find_map(|s| match s {
            ScorerConfig::ResourceFit { strategy, resources, shape, .. } => Some((strategy, resources, shape)),
            ScorerConfig::BalancedAllocation { .. } => None,
        })?;
        if !resources.contains_key("cpu") {
            return None;
        }
        match strategy {
            FitStrategy::MostAllocated => Some(CandidateOrder::Tightest),
            FitStrategy::LeastAllocated => Some(CandidateOrder::Emptiest),
            FitStrategy::RequestedToCapacityRatio => {
                let rises = shape.windows(2).all(|w| w[1].score >= w[0].score);
                let falls = shape.windows(2).all(|w| w[1].score <= w[0].score);
                match (shape.first(), shape.last()) {
                    (Some(a), Some(b)) if rises && b.score > a.score => Some(CandidateOrder::Tightest),
                    (Some(a), Some(b)) if falls && b.score < a.score => Some(CandidateOrder::Emptiest),
                    _ => None,
                }
            }
        }
    }

    /// Problems with the profile; paths are relative to the profile.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.candidate_limit > 0 && self.candidate_order().is_none() {
            errs.push(FieldError {
                path: "candidate_limit".into(),
                message: "needs its first resource_fit scorer to weigh cpu and to pack or spread (most_allocated, \
                          least_allocated, or a requested_to_capacity_ratio shape that only rises or only falls): \
                          candidates are ordered by free CPU in that direction"
                    .into(),
            });
        }
        if self.candidate_limit > 1_000_000 {
            errs.push(FieldError { path: "candidate_limit".into(), message: "must be at most 1000000".into() });
        }
        for (i, o) in self.order.iter().enumerate() {
            if self.order[..i].contains(o) {
                errs.push(FieldError { path: format!("order[{i}]"), message: "order listed twice".into() });
            }
        }
        for (i, s) in self.scorers.iter().enumerate() {
            match s {
                ScorerConfig::BalancedAllocation { weight, resources } => {
                    // ValidateNodeResourcesBalancedAllocationArgs: every weight is 1.
                    check_scorer(i, *weight, resources, |w| w == 1, "weight must be 1", &mut errs);
                }
                ScorerConfig::ResourceFit { weight, resources, strategy, shape } => {
                    // kube-scheduler's validateFunctionShape.
                    match (strategy, shape.is_empty()) {
                        (FitStrategy::RequestedToCapacityRatio, true) => errs.push(FieldError {
                            path: format!("scorers[{i}].shape"),
                            message: "at least one point must be specified".into(),
                        }),
                        (FitStrategy::RequestedToCapacityRatio, false) => {
                            if let Some(j) =
                                (1..shape.len()).find(|&j| shape[j - 1].utilization >= shape[j].utilization)
                            {
                                errs.push(FieldError {
                                    path: format!("scorers[{i}].shape[{j}].utilization"),
                                    message: "values must be sorted in increasing order".into(),
                                });
                            }
                            for (j, p) in shape.iter().enumerate() {
                                if !(0..=100).contains(&p.utilization) {
                                    errs.push(FieldError {
                                        path: format!("scorers[{i}].shape[{j}].utilization"),
                                        message: "not in valid range [0, 100]".into(),
                                    });
                                }
                                if !(0..=10).contains(&p.score) {
                                    errs.push(FieldError {
                                        path: format!("scorers[{i}].shape[{j}].score"),
                                        message: "not in valid range [0, 10]".into(),
                                    });
                                }
                            }
                        }
                        (_, false) => errs.push(FieldError {
                            path: format!("scorers[{i}].shape"),
                            message: "only the requested_to_capacity_ratio strategy takes a shape".into(),
                        }),
                        (_, true) => {}
                    }
                    // ValidateNodeResourcesFitArgs: weights in 1..=100.
                    check_scorer(
                        i,
                        *weight,
                        resources,
                        |w| (1..=100).contains(&w),
                        "weight must be between 1 and 100",
                        &mut errs,
                    );
                }
            }
        }
        let mut seen = Vec::new();
        for (i, f) in self.filters.iter().enumerate() {
            if seen.contains(f) {
                errs.push(FieldError { path: format!("filters[{i}]"), message: "filter listed twice".into() });
            }
            seen.push(*f);
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(e: ConfigError) -> Vec<String> {
        e.errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), vec![]);
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = Config::from_toml_str("[scheduler]\nbatch_sise = 3\n").unwrap_err();
        assert_eq!(paths(e.clone()), vec!["scheduler.batch_sise"], "{e}");
        assert!(e.to_string().contains("batch_sise"), "{e}");
    }

    #[test]
    fn extended_resources_are_named_as_kubernetes_names_them() {
        let c = Config::from_toml_str(
            "[[cluster.nodes]]\nname = \"amd\"\ncpu = \"8\"\nmemory = \"32Gi\"\nextended = { \"amd.com/gpu\" = 2 }\n\
             [scheduler.profile]\nscorers = [{ kind = \"resource_fit\", weight = 1, strategy = \"most_allocated\", \
             resources = { cpu = 1, \"amd.com/gpu\" = 5 } }]\n",
        )
        .unwrap();
        assert_eq!(c.cluster.nodes[0].allocatable().amount("amd.com/gpu"), 2);
        let e = Config::from_toml_str(
            "[[cluster.nodes]]\nname = \"n\"\ncpu = \"8\"\nmemory = \"1Gi\"\nextended = { fpga = 1 }\n",
        )
        .unwrap_err();
        assert_eq!(paths(e), vec!["cluster.nodes[0].extended.\"fpga\""]);
        let e = Config::from_toml_str(
            "[scheduler.profile]\nscorers = [{ kind = \"resource_fit\", weight = 1, strategy = \"most_allocated\", \
             resources = { \"kubernetes.io/x\" = 1 } }]\n",
        )
        .unwrap_err();
        assert_eq!(paths(e), vec!["scheduler.profile.scorers[0].resources.\"kubernetes.io/x\""]);
    }

    #[test]
    fn a_candidate_limit_needs_a_direction() {
        let c = Config::from_toml_str("[scheduler.profile]\ncandidate_limit = 128\n").unwrap();
        assert_eq!(c.scheduler.profile.candidate_order(), Some(CandidateOrder::Tightest));
        let e = Config::from_toml_str(
            "[scheduler.profile]\ncandidate_limit = 128\nscorers = [{ kind = \"balanced_allocation\", weight = 1 }]\n",
        )
        .unwrap_err();
        assert_eq!(paths(e), vec!["scheduler.profile.candidate_limit"]);
        let spread = Config::from_toml_str(
            "[scheduler.profile]\ncandidate_limit = 8\nscorers = [{ kind = \"resource_fit\", weight = 1, \
             strategy = \"requested_to_capacity_ratio\", shape = [{ utilization = 0, score = 10 }, \
             { utilization = 100, score = 0 }] }]\n",
        )
        .unwrap();
        assert_eq!(spread.scheduler.profile.candidate_order(), Some(CandidateOrder::Emptiest));
        for scorer in [
            // Not weighing cpu: free CPU says nothing of its preference.
            "{ kind = \"resource_fit\", weight = 1, strategy = \"most_allocated\", resources = { \"nvidia.com/gpu\" = 1 } }",
            // Rising then falling: no direction.
            "{ kind = \"resource_fit\", weight = 1, strategy = \"requested_to_capacity_ratio\", shape = [\
             { utilization = 0, score = 0 }, { utilization = 50, score = 10 }, { utilization = 100, score = 5 }] }",
        ] {
            let e = Config::from_toml_str(&format!("[scheduler.profile]\ncandidate_limit = 8\nscorers = [{scorer}]\n"))
                .unwrap_err();
            assert_eq!(paths(e), vec!["scheduler.profile.candidate_limit"], "{scorer}");
        }
    }

    #[test]
    fn failure_classes_take_their_defaults_and_the_operators_settings() {
        let c = Config::from_toml_str(
            "[executor.failures.oom_killed]\nretry = true\n[executor.failures.evicted]\nlimit = 9\nbase = \"1s\"\n",
        )
        .unwrap();
        let (f, r) = (&c.executor.failures, &c.executor.retry);
        assert!(f.policy(FailureClass::OomKilled, r).retry);
        assert!(!f.policy(FailureClass::ImagePull, r).retry);
        let evicted = f.policy(FailureClass::Evicted, r);
        assert_eq!((evicted.retry, evicted.counted, evicted.limit), (true, false, Some(9)));
        assert_eq!((evicted.backoff.base, evicted.backoff.cap), (Duration::from_secs(1), r.cap));
        let exit = f.policy(FailureClass::ExitCode, r);
        assert_eq!((exit.retry, exit.counted, exit.limit), (true, true, None));
        let e = Config::from_toml_str("[executor.failures.exit_code]\ncounted = false\n").unwrap_err();
        assert_eq!(paths(e), vec!["executor.failures.exit_code.limit"]);
        let e = Config::from_toml_str("[executor.failures.node_lots]\nlimit = 1\n").unwrap_err();
        assert_eq!(paths(e), vec!["executor.failures.node_lots"]);
    }

    #[test]
    fn webhooks_back_off_exponentially_to_the_cap_and_bad_values_name_the_key() {
        let c = Config::from_toml_str("[webhooks]\nbackoff_base = \"2s\"\nbackoff_cap = \"10s\"\n").unwrap();
        let waits: Vec<u64> = (1..=5).map(|a| c.webhooks.backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 10, 10]);
        // Whole seconds, rounded up, because apalis-redis schedules in seconds.
        let w = WebhooksConfig { backoff_base: Duration::from_millis(1500), ..WebhooksConfig::default() };
        assert_eq!(w.backoff(1), Duration::from_secs(2));
        let e = Config::from_toml_str(
            "[webhooks]\nmax_attempts = 0\nbackoff_base = \"500ms\"\nmax_backlog = 9000\nconcurency = 3\n",
        )
        .unwrap_err();
        assert_eq!(paths(e), vec!["webhooks.concurency"]);
        let e = Config::from_toml_str("[webhooks]\nmax_attempts = 0\nbackoff_base = \"500ms\"\nmax_backlog = 9000\n")
            .unwrap_err();
        assert_eq!(paths(e), vec!["webhooks.max_attempts", "webhooks.backoff_base", "webhooks.max_backlog"]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml_str("[scheduler]\nbatch_size = \"many\"\n").unwrap_err();
        assert_eq!(paths(e), vec!["scheduler.batch_size"]);
        let e = Config::from_toml_str(
            "[scheduler.profile]\nscorers = [{ kind = \"resource_fit\", weight = 0, strategy = \"most_allocated\" }]\n",
        )
        .unwrap_err();
        assert_eq!(paths(e), vec!["scheduler.profile.scorers[0].weight"]);
        let e =
            Config::from_toml_str("[[cluster.nodes]]\nname = \"n\"\ncpu = \"12x\"\nmemory = \"1Gi\"\n").unwrap_err();
        assert_eq!(paths(e), vec!["cluster.nodes[0].cpu"]);
    }

    #[test]
    fn the_design_example_profile_parses() {
        let c = Config::from_toml_str(
            r#"
[scheduler]
batch_size = 64
[scheduler.profile]
filters = [{ kind = "resources_fit" }, { kind = "node_selector" }, { kind = "taints" }]
scorers = [
  { kind = "resource_fit", weight = 1, strategy = "most_allocated",
    resources = { cpu = 1, memory = 1, "nvidia.com/gpu" = 3 } },
]
order = [{ kind = "priority" }]
"#,
        )
        .unwrap();
        assert_eq!(c.scheduler.profile.filters.len(), 3);
    }

    /// The scorers' arguments are validated as kube-scheduler validates NodeResourcesFitArgs
    /// and NodeResourcesBalancedAllocationArgs (weights 1..=100, or exactly 1; shapes with
    /// points strictly increasing in utilization 0..=100 and scores 0..=10), and the drf
    /// order parses and decides the claim order.
    #[test]
    fn scorer_arguments_and_orders_are_validated_like_upstream() {
        let errors = |scorers: &str| -> Vec<String> {
            let text = format!("[scheduler.profile]\nscorers = [{scorers}]\n");
            match Config::from_toml_str(&text) {
                Ok(_) => Vec::new(),
                Err(e) => e.errors.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
            }
        };
        let ok = r#"{ kind = "resource_fit", strategy = "requested_to_capacity_ratio", shape = [{ utilization = 0, score = 0 }, { utilization = 100, score = 10 }] }, { kind = "balanced_allocation", weight = 2 }"#;
        assert_eq!(errors(ok), Vec::<String>::new());
        for (scorer, want) in [
            (
                r#"{ kind = "resource_fit", strategy = "least_allocated", resources = { memory = -1, cpu = 1 } }"#,
                r#"scheduler.profile.scorers[0].resources."memory": weight must be between 1 and 100"#,
            ),
            (
                r#"{ kind = "resource_fit", strategy = "least_allocated", resources = { memory = 1, cpu = 0 } }"#,
                r#"scheduler.profile.scorers[0].resources."cpu": weight must be between 1 and 100"#,
            ),
            (
                r#"{ kind = "resource_fit", strategy = "most_allocated", resources = { memory = 101 } }"#,
                r#"scheduler.profile.scorers[0].resources."memory": weight must be between 1 and 100"#,
            ),
            (
                r#"{ kind = "resource_fit", strategy = "requested_to_capacity_ratio" }"#,
                "scheduler.profile.scorers[0].shape: at least one point must be specified",
            ),
            (
                r#"{ kind = "resource_fit", strategy = "requested_to_capacity_ratio", shape = [{ utilization = 50, score = 1 }, { utilization = 50, score = 2 }] }"#,
                "scheduler.profile.scorers[0].shape[1].utilization: values must be sorted in increasing order",
            ),
            (
                r#"{ kind = "resource_fit", strategy = "requested_to_capacity_ratio", shape = [{ utilization = 101, score = 11 }] }"#,
                "scheduler.profile.scorers[0].shape[0].score: not in valid range [0, 10]",
            ),
            (
                r#"{ kind = "resource_fit", strategy = "most_allocated", shape = [{ utilization = 0, score = 0 }] }"#,
                "scheduler.profile.scorers[0].shape: only the requested_to_capacity_ratio strategy takes a shape",
            ),
            (
                r#"{ kind = "balanced_allocation", resources = { cpu = 2 } }"#,
                r#"scheduler.profile.scorers[0].resources."cpu": weight must be 1"#,
            ),
        ] {
            let got = errors(scorer);
            assert!(got.iter().any(|e| e == want), "{scorer}\n  want {want}\n  got {got:?}");
        }
        let order = |o: &str| {
            Config::from_toml_str(&format!("[scheduler.profile]\norder = {o}\n"))
                .map(|c| c.scheduler.profile.claim_order())
        };
        assert_eq!(order(r#"[{ kind = "drf" }, { kind = "priority" }]"#).unwrap(), ClaimOrder::Drf);
        assert_eq!(order(r#"[{ kind = "priority" }, { kind = "drf" }]"#).unwrap(), ClaimOrder::PriorityThenDrf);
        assert_eq!(order(r#"[{ kind = "priority" }, { kind = "fifo" }]"#).unwrap(), ClaimOrder::Priority);
        assert!(order(r#"[{ kind = "drf" }, { kind = "drf" }]"#).is_err(), "an order listed twice");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail dictates the closure's error type
    fn environment_variables_override_the_file_and_name_bad_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("berth.toml", "[scheduler]\nbatch_size = 8\n[redis]\npartition = \"file\"\n")?;
            jail.set_env("BERTH_REDIS__PARTITION", "from-env");
            jail.set_env("BERTH_SCHEDULER__BATCH_SIZE", "16");
            jail.set_env("BERTH_AUTH__JWT_SECRET", "12345678901234567890");
            jail.set_env("BERTH_CONFIG", "ignored: not a section");
            jail.set_env("BERTH_TEST_KUBECONFIG", "ignored too");
            let c = Config::load(Some(Path::new("berth.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.redis.partition, "from-env");
            assert_eq!(c.scheduler.batch_size, 16);
            assert_eq!(c.auth.jwt_secret, "12345678901234567890", "a numeric-looking string stays a string");
            jail.set_env("BERTH_SCHEDULER__BATCH_SIZE", "many");
            let e = Config::load(Some(Path::new("berth.toml"))).unwrap_err();
            assert_eq!(paths(e), vec!["scheduler.batch_size"]);
            jail.set_env("BERTH_SCHEDULER__BATCH_SIZE", "16");
            jail.set_env("BERTH_SCHEDULER__BATCH_SIZZLE", "1");
            let e = Config::load(Some(Path::new("berth.toml"))).unwrap_err();
            assert_eq!(paths(e), vec!["scheduler.batch_sizzle"]);
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/berth.toml"))).unwrap_err();
        assert_eq!(paths(e), vec!["(file)"]);
    }

    #[test]
    fn the_example_config_documents_exactly_the_defaults() {
        let text = include_str!("../../deploy/berth.example.toml");
        assert_eq!(Config::from_toml_str(text).unwrap(), Config::default());
    }

    #[test]
    fn sim_node_groups_expand_to_names() {
        let c = Config::default();
        assert_eq!(c.cluster.nodes[0].names(), vec!["sim-1", "sim-2", "sim-3", "sim-4"]);
        assert_eq!(c.cluster.nodes[0].allocatable(), Resources::new(16_000, 64 << 30, 4));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let r = RetryConfig { base: Duration::from_secs(2), cap: Duration::from_secs(10), jitter: 0.0 };
        assert_eq!(r.delay(0, 0.5), Duration::from_secs(2));
        assert_eq!(r.delay(1, 0.5), Duration::from_secs(4));
        assert_eq!(r.delay(5, 0.5), Duration::from_secs(10));
        let j = RetryConfig { jitter: 0.5, ..r };
        assert_eq!(j.delay(0, 0.0), Duration::from_secs(1));
    }
}
