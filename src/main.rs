//! `berth`: one binary, one subcommand per role (DESIGN.md §1). This file only parses the
//! command line and configuration, builds clients and runs roles until a shutdown signal.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_core::config::{ClusterKind, Config, DEFAULT_JWT_SECRET, LogFormat};
use berth_queue::Queue;
use berth_workers::{Cluster, SimCluster};
use clap::{Parser, Subcommand};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "berth", version, about = "A multi-tenant compute platform on Kubernetes")]
struct Cli {
    /// Configuration file (TOML). Default: ./berth.toml if it exists, else built-in defaults.
    #[arg(long, short, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Role {
    /// Serve the REST API.
    Api,
    /// Run one scheduler replica.
    Scheduler,
    /// Run one executor (with the node publisher and, when it holds the lease, the reconciler).
    Executor,
    /// Every role in one process on the simulated cluster, with demo accounts.
    Dev,
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Check a configuration file and print the effective configuration (`config check`).
    #[command(hide = true)]
    CheckConfig,
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print where the scheduler would place one task on described nodes, and why (JSON).
    Explain {
        /// A JSON case: `{"nodes": [...], "task": {...}}` (see the README).
        #[arg(long)]
        input: PathBuf,
    },
    /// Print the API's OpenAPI document (the same as `GET /openapi.json`).
    Openapi,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum ConfigCommand {
    /// Validate FILE (with the environment's overrides) and print the effective configuration.
    Check { file: PathBuf },
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn main() -> std::process::ExitCode {
    // Errors are printed as their chain of causes, without a backtrace even when
    // RUST_BACKTRACE is set: a config error is for the operator, not a developer.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    if cli.role == Role::Openapi {
        println!("{}", serde_json::to_string_pretty(berth_api::openapi::document()).context("printing the document")?);
        return Ok(());
    }
    let path = match &cli.role {
        Role::Config(ConfigCommand::Check { file }) => Some(file.clone()),
        _ => cli.config.clone().or_else(|| {
            let p = PathBuf::from("berth.toml");
            p.exists().then_some(p)
        }),
    };
    let config = Config::load(path.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&config);
    match &cli.role {
        Role::CheckConfig | Role::Config(ConfigCommand::Check { .. }) => {
            println!("{}", toml::to_string_pretty(&config).context("printing the configuration")?);
            return Ok(());
        }
        Role::Explain { input } => return explain(&config, input),
        _ => {}
    }
    // Every long-running role but dev refuses the public default, even roles that do not sign
    // tokens, so that a deployment cannot run half-configured.
    if matches!(cli.role, Role::Api | Role::Scheduler | Role::Executor) && config.auth.jwt_secret == DEFAULT_JWT_SECRET
    {
        bail!(
            "auth.jwt_secret is the public development default; set auth.jwt_secret in the config file or BERTH_AUTH__JWT_SECRET (only `berth dev` accepts the default)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli.role, config, path))
}

/// `berth explain`: the scheduler's decision for one task, with every node's verdict.
fn explain(config: &Config, input: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let case: berth_scheduler::explain::ExplainInput =
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid explain case", input.display()))?;
    let (snapshot, task) = case.parse().map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let profile = berth_policies::Profile::build(&config.scheduler.profile).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = berth_scheduler::explain::explain(&snapshot, &task, &profile);
    println!("{}", serde_json::to_string_pretty(&out).context("printing the explanation")?);
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    // Colours only for a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A process-unique name for leases and consumer groups.
fn instance_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{role}-{host}-{}-{}", std::process::id(), &tag[..8])
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The scheduler section, reloaded from `path` on SIGHUP and when the file changes (checked
/// every second). A file that does not load or validate is logged and ignored: the running
/// section stays until a good one arrives. The worker swaps sections between cycles. SIGHUP
/// is handled even without a file (it then only says so), so it never kills the process.
fn watch_scheduler_config(
    path: Option<PathBuf>,
    initial: berth_core::config::SchedulerConfig,
) -> watch::Receiver<berth_core::config::SchedulerConfig> {
    let (tx, rx) = watch::channel(initial);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| warn!(error = %e, "no SIGHUP handler; the scheduler section reloads on file changes only"))
            .ok();
        let mut seen = path.as_deref().and_then(modified);
        loop {
            #[cfg(unix)]
            let signalled = tokio::select! {
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            #[cfg(not(unix))]
            let signalled = {
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            };
            let Some(path) = path.as_deref() else {
                if signalled {
                    info!("SIGHUP: no configuration file to reload (the configuration comes from the environment)");
                }
                continue;
            };
            let now = modified(path);
            if !signalled && now == seen {
                continue;
            }
            seen = now;
            match Config::load(Some(path)) {
                Ok(c) if c.scheduler == *tx.borrow() => info!(path = %path.display(), "configuration unchanged"),
                Ok(c) => {
                    info!(path = %path.display(), version = %c.scheduler.version(), "scheduler section reloaded; applying");
                    if tx.send(c.scheduler).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "configuration refused, keeping the running one: {e}")
                }
            }
        }
    });
    rx
}

/// A shutdown future per role, all fired by one signal.
fn shutdown_future(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

async fn ensure_database(url: &str) -> Result<()> {
    let opts = PgConnectOptions::from_str(url).context("parsing database.url")?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let mut admin = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url} (is it running? `make services` starts it)"))?;
    let exists: Option<(i32,)> =
        sqlx::query_as("select 1 from pg_database where datname = $1").bind(&name).fetch_optional(&mut admin).await?;
    if exists.is_none() {
        // A database name cannot be a bind parameter; quote it as an identifier.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {quoted}"))).execute(&mut admin).await.or_else(
            |e| match &e {
                // Another process created it first.
                sqlx::Error::Database(d) if d.code().as_deref() == Some("42P04") => Ok(Default::default()),
                _ => Err(e),
            },
        )?;
        info!(database = %name, "created database");
    }
    Ok(())
}

async fn connect_pg(config: &Config) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(config.database.acquire_timeout)
        .connect(&config.database.url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", config.database.url))
}

async fn connect_redis(config: &Config) -> Result<Queue> {
    Queue::connect(&config.redis.url, &config.redis.partition).await.with_context(|| {
        format!("connecting to Redis at {} (is it running? `make services` starts it)", config.redis.url)
    })
}

async fn migrate(config: &Config) -> Result<PgPool> {
    ensure_database(&config.database.url).await?;
    let pool = connect_pg(config).await?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    Ok(pool)
}

async fn run(role: Role, config: Config, path: Option<PathBuf>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    match role {
        Role::Migrate => {
            migrate(&config).await?;
            info!("migrations applied");
            Ok(())
        }
        Role::Api => {
            let pool = connect_pg(&config).await?;
            let queue = connect_redis(&config).await?;
            berth_api::bootstrap::ensure_platform_admin(&pool, &config.bootstrap)
                .await
                .context("bootstrapping (did you run `berth migrate`?)")?;
            serve_api(pool, queue, config, &stop_rx).await
        }
        Role::Scheduler => {
            let queue = connect_redis(&config).await?;
            serve_metrics(&config, &stop_rx).await?;
            let stats = Arc::new(berth_scheduler::SchedulerStats::default());
            let configs = watch_scheduler_config(path, config.scheduler.clone());
            let owner = instance_name("scheduler");
            berth_scheduler::run_reloading(configs, queue, owner, stats, shutdown_future(&stop_rx)).await?;
            Ok(())
        }
        Role::Executor => {
            let pool = connect_pg(&config).await?;
            let queue = connect_redis(&config).await?;
            let cluster: Arc<dyn Cluster> = match config.cluster.kind {
                ClusterKind::Simulated => Arc::new(SimCluster::new(&config.cluster)),
                ClusterKind::Kubernetes => {
                    let client = kube::Client::try_default().await.context(
                        "connecting to Kubernetes (KUBECONFIG, ~/.kube/config or the in-cluster service account)",
                    )?;
                    Arc::new(
                        berth_workers::k8s::KubeCluster::new(client)
                            .with_image_pull_grace(config.cluster.image_pull_grace)
                            .with_node_lost_grace(config.cluster.node_lost_grace),
                    )
                }
            };
            serve_metrics(&config, &stop_rx).await?;
            run_executor(pool, queue, cluster, &config, &stop_rx).await
        }
        Role::Dev => run_dev(config, stop_rx).await,
        Role::CheckConfig | Role::Config(_) | Role::Explain { .. } | Role::Openapi => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `/metrics` and `/healthz` on `metrics.listen`, when set, for a role without the API.
async fn serve_metrics(config: &Config, stop_rx: &watch::Receiver<bool>) -> Result<()> {
    let Some(listen) = config.metrics.listen else { return Ok(()) };
    // The recorder first, so nothing recorded before the endpoint's task runs is lost.
    berth_api::metrics::install();
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding metrics to {listen}"))?;
    info!(address = %listener.local_addr()?, "metrics listening");
    let shutdown = shutdown_future(stop_rx);
    tokio::spawn(async move {
        if let Err(e) = berth_api::metrics::serve_standalone(listener, shutdown).await {
            warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn serve_api(pool: PgPool, queue: Queue, config: Config, stop_rx: &watch::Receiver<bool>) -> Result<()> {
    let listen = config.api.listen;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;
    info!(address = %listener.local_addr()?, "API listening");
    let state = berth_api::AppState::new(pool, queue, config).context("building the API")?;
    berth_api::serve(listener, state, shutdown_future(stop_rx)).await.context("serving the API")
}

async fn run_executor(
    pool: PgPool,
    queue: Queue,
    cluster: Arc<dyn Cluster>,
    config: &Config,
    stop_rx: &watch::Receiver<bool>,
) -> Result<()> {
    let name = instance_name("executor");
    let publisher = tokio::spawn(berth_workers::nodes::run(
        cluster.clone(),
        queue.clone(),
        Duration::from_secs(10),
        shutdown_future(stop_rx),
    ));
    let reconciler = tokio::spawn(berth_workers::reconciler::run(
        pool.clone(),
        queue.clone(),
        name.clone(),
        config.executor.reconcile_interval,
        shutdown_future(stop_rx),
    ));
    let volumes = tokio::spawn(berth_workers::volumes::run(
        pool.clone(),
        cluster.clone(),
        config.executor.reconcile_interval,
        shutdown_future(stop_rx),
    ));
    // Webhook delivery runs beside the executor; its failure never stops task execution.
    let notifier = config.webhooks.enabled.then(|| {
        let (config, pool, queue, name) = (config.webhooks.clone(), pool.clone(), queue.clone(), name.clone());
        let stop = shutdown_future(stop_rx);
        tokio::spawn(async move {
            if let Err(e) = berth_workers::webhooks::run(config, pool, queue, name, stop).await {
                warn!(error = %e, "the webhook notifier stopped; webhooks are not delivered by this executor");
            }
        })
    });
    berth_workers::executor::run(config.executor.clone(), pool, queue, cluster, name, shutdown_future(stop_rx)).await?;
    if let Some(n) = notifier {
        let _ = n.await;
    }
    let _ = volumes.await;
    let _ = publisher.await;
    let _ = reconciler.await;
    Ok(())
}

async fn run_dev(config: Config, stop_rx: watch::Receiver<bool>) -> Result<()> {
    // dev fails whatever was running at its last stop and clears its partition: never let it
    // loose on a real cluster.
    anyhow::ensure!(
        config.cluster.kind == ClusterKind::Simulated,
        "berth dev runs only the simulated cluster (cluster.kind = \"simulated\"); run the roles separately for Kubernetes"
    );
    let pool = migrate(&config).await?;
    let queue = connect_redis(&config).await?;
    berth_api::bootstrap::ensure_platform_admin(&pool, &config.bootstrap)
        .await
        .context("creating the platform admin")?;
    berth_api::bootstrap::ensure_dev_accounts(&pool, &config.dev).await.context("creating the demo accounts")?;

    // The simulated cluster lives in this process: whatever ran before this start is gone.
    // Redis is rebuilt from PostgreSQL, the system of record.
    queue.purge().await.context("resetting the Redis partition")?;
    let (lost,): (i64,) = sqlx::query_as(
        "with lost as (
            update tasks set status = 'failed', completed_at = now(), updated_at = now(),
                   error_message = 'lost: berth dev restarted while the task was placed or running'
            where status in ('scheduled', 'running') returning id, current_retry_count),
         executions as (
            update task_executions e set status = 'failed', finished_at = now(), error_message = 'lost: berth dev restarted'
            from lost where e.task_id = lost.id and e.attempt = coalesce(lost.current_retry_count, 0)
              and e.status in ('scheduled', 'running'))
         select count(*) from lost",
    )
    .fetch_one(&pool)
    .await?;
    sqlx::query(berth_core::store::RELEASE_QUOTA).bind(None::<uuid::Uuid>).execute(&pool).await?;
    if lost > 0 {
        warn!(tasks = lost, "tasks that were running when berth dev last stopped are marked failed");
    }
    let cluster = Arc::new(SimCluster::new(&config.cluster));
    berth_workers::nodes::publish_once(cluster.as_ref(), &queue).await?;
    let requeued = berth_workers::reconciler::reconcile_once(&pool, &queue, Duration::ZERO).await?;
    if requeued > 0 {
        info!(tasks = requeued, "re-queued pending tasks");
    }

    let listen = config.api.listen;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let nodes = config.cluster.nodes.iter().map(|n| n.count as usize).sum::<usize>();
    println!(
        "\nberth dev is up: API at {url}/v1, simulated cluster of {nodes} nodes\n  platform admin: tenant {} / user {} / password {}\n  demo user:      tenant {} / user {} / password {}\n  try: curl -s -X POST {url}/v1/auth/login -H 'content-type: application/json' -d '{{\"username\":\"{}\",\"password\":\"{}\"}}'\nPress Ctrl-C to stop.\n",
        config.bootstrap.system_tenant,
        config.bootstrap.admin_username,
        config.bootstrap.admin_password,
        config.dev.demo_tenant,
        config.dev.demo_username,
        config.dev.demo_password,
        config.dev.demo_username,
        config.dev.demo_password,
    );

    let stats = Arc::new(berth_scheduler::SchedulerStats::default());
    let scheduler = tokio::spawn(berth_scheduler::run(
        config.scheduler.clone(),
        queue.clone(),
        instance_name("scheduler"),
        stats,
        shutdown_future(&stop_rx),
    ));
    let executor = {
        let (pool, queue, config, stop_rx) = (pool.clone(), queue.clone(), config.clone(), stop_rx.clone());
        let cluster: Arc<dyn Cluster> = cluster;
        tokio::spawn(async move { run_executor(pool, queue, cluster, &config, &stop_rx).await })
    };
    let state = berth_api::AppState::new(pool, queue, config).context("building the API")?;
    berth_api::serve(listener, state, shutdown_future(&stop_rx)).await.context("serving the API")?;
    scheduler.await??;
    executor.await??;
    Ok(())
}
