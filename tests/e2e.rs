//! End to end: the real `berth` binary's roles as separate processes that share nothing but
//! PostgreSQL and Redis, driven over HTTP like a user would.

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_queue::Queue;
use serde_json::{Value, json};
use uuid::Uuid;

mod common;

use common::*;

async fn wait_terminal(http: &reqwest::Client, d: &Deployment, token: &str, id: &str, deadline: Instant) -> Value {
    loop {
        let v: Value =
            http.get(d.url(&format!("/v1/tasks/{id}"))).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        let status = v["data"]["status"].as_str().unwrap_or_default().to_owned();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
            return v["data"].clone();
        }
        assert!(Instant::now() < deadline, "task {id} stuck in {status}\n{}", d.logs_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_roles_run_fifty_tasks_from_two_tenants_to_their_outcomes() {
    let mut d = Deployment::new();
    let status = d.command("migrate").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "berth migrate failed (is PostgreSQL running? `make services`)");
    let pool = sqlx::PgPool::connect(&d.db_url).await.unwrap();
    for (tenant, user) in [("acme", "alice"), ("globex", "gina")] {
        let tid = berth_api::bootstrap::ensure_tenant(&pool, tenant, tenant, "").await.unwrap();
        berth_api::bootstrap::ensure_user(&pool, tid, user, &format!("{user}@{tenant}.test"), "pw", "user")
            .await
            .unwrap();
    }
    d.spawn("api", "api");
    d.spawn("scheduler", "scheduler-1");
    d.spawn("scheduler", "scheduler-2");
    d.spawn("executor", "executor");
    let http = reqwest::Client::new();
    d.wait_ready(&http).await;
    let tokens = [login(&http, &d, "alice", "pw").await, login(&http, &d, "gina", "pw").await];

    // 50 tasks of 2 CPU on 4 × 16 CPU: more than fits at once, so some wait for room.
    // Every fifth fails; of those, half may retry once.
    let mut submitted = Vec::new();
    for i in 0..50 {
        let fails = i % 5 == 4;
        let retries = if fails && i % 10 == 9 { 1 } else { 0 };
        let mut labels = json!({"berth.io/sim-duration": "300ms", "index": i.to_string()});
        if fails {
            labels["berth.io/sim-exit-code"] = json!("1");
        }
        let token = &tokens[i % 2];
        let body = json!({
            "name": format!("task-{i}"),
            "image": "busybox:1.36",
            "command": ["sh", "-c", "exit 0"],
            "resource_requests": {"cpu": "2", "memory": "1Gi"},
            "labels": labels,
            "priority": (i * 7) % 101,
            "max_retry_count": retries,
        });
        let r = http.post(d.url("/v1/tasks")).bearer_auth(token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "submit {i}");
        let v: Value = r.json().await.unwrap();
        submitted.push((v["data"]["id"].as_str().unwrap().to_owned(), i % 2, fails, retries));
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    for (id, who, fails, retries) in &submitted {
        let t = wait_terminal(&http, &d, &tokens[*who], id, deadline).await;
        let want = if *fails { "failed" } else { "succeeded" };
        assert_eq!(t["status"], want, "task {id}: {t}");
        assert!(t["started_at"].is_string() && t["completed_at"].is_string(), "{t}");
        assert_eq!(t["current_retry_count"], *retries, "{t}");
        if *fails {
            assert!(t["error_message"].as_str().unwrap().contains("exited with code 1"), "{t}");
        }
        let (attempts, ok_rows): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where status in ('succeeded', 'failed') and started_at is not null and finished_at is not null)
             from task_executions where task_id = $1",
        )
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(attempts, 1 + retries, "one execution row per attempt of {id}");
        assert_eq!(ok_rows, attempts, "every attempt of {id} was recorded to its end");
    }

    // The simulated container's output reached the task's log.
    let v: Value = http
        .get(d.url(&format!("/v1/tasks/{}/logs", submitted[0].0)))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines = v["data"].as_array().unwrap();
    assert!(lines.last().is_some_and(|l| l == "[berth-sim] exiting with code 0"), "{v}");

    // Another tenant's task is invisible; the list is the tenant's own 25.
    let r = http.get(d.url(&format!("/v1/tasks/{}", submitted[0].0))).bearer_auth(&tokens[1]).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value =
        http.get(d.url("/v1/tasks?page_size=100")).bearer_auth(&tokens[0]).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["pagination"]["total"], 25);

    // Every reservation and every tenant's usage is back to zero.
    let queue = Queue::connect(&redis_url(), &d.partition).await.unwrap();
    let snap = queue.snapshot().await.unwrap();
    assert_eq!(snap.nodes.len(), 4);
    for n in &snap.nodes {
        assert!(n.requested.is_zero(), "node {} still holds {:?}", n.name, n.requested);
    }
    for tenant in ["acme", "globex"] {
        assert!(queue.tenant_usage(tenant).await.unwrap().is_zero(), "{tenant} usage leaked");
    }
    // And every quota charge was given back by the executor's terminal writes.
    let (charged,): (i64,) = sqlx::query_as("select coalesce(sum(used_amount), 0)::bigint from resource_quotas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(charged, 0, "quota usage leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_seeds_its_accounts_and_runs_the_readme_task() {
    let mut d = Deployment::new();
    d.spawn("dev", "dev");
    let http = reqwest::Client::new();
    d.wait_ready(&http).await;
    let token = login(&http, &d, "demo", "demo").await;
    login(&http, &d, "admin", "admin").await;
    let body = json!({
        "name": "hello",
        "image": "busybox:1.36",
        "command": ["echo", "hello"],
        "resource_requests": {"cpu": "500m", "memory": "128Mi"},
        "labels": {"berth.io/sim-duration": "200ms"}
    });
    let v: Value =
        http.post(d.url("/v1/tasks")).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let t = wait_terminal(&http, &d, &token, &id, Instant::now() + Duration::from_secs(30)).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert!(t["node_name"].as_str().unwrap().starts_with("sim-"));
}

#[test]
fn every_role_but_dev_refuses_the_default_jwt_secret() {
    let d = Deployment::new();
    for role in ["api", "scheduler", "executor"] {
        let out = d.command(role).env_remove("BERTH_AUTH__JWT_SECRET").output().unwrap();
        assert!(!out.status.success(), "{role} started with the default secret");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("auth.jwt_secret"), "{role}: {err}");
    }
}

#[test]
fn a_bad_config_file_is_refused_with_the_key_path() {
    let d = Deployment::new();
    let path = d.logs.join("bad.toml");
    std::fs::write(&path, "[scheduler]\nbatch_size = 0\n[api]\nlisten = \"nowhere\"\n").unwrap();
    // (The deployment's own BERTH_API__LISTEN would override the file's value.)
    let out = d.command("config").env_remove("BERTH_API__LISTEN").arg("check").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.listen"), "{err}");
    std::fs::write(&path, "[scheduler]\nbatch_size = 0\n").unwrap();
    let out = d.command("config").arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scheduler.batch_size: must be between 1 and 10000"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
    std::fs::write(&path, "[scheduler]\nbatch_size = 7\n").unwrap();
    let out = d.command("config").arg("check").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("batch_size = 7"));
}

/// `berth explain` prints one JSON document for a good case and exits non-zero with the
/// problem's place for a bad one, under the profile of the given config file.
#[test]
fn explain_prints_the_decision_and_refuses_bad_cases() {
    let d = Deployment::new();
    let (config, case) = (d.logs.join("least.toml"), d.logs.join("case.json"));
    std::fs::write(&config, "[[scheduler.profile.scorers]]\nkind = \"resource_fit\"\nstrategy = \"least_allocated\"\n")
        .unwrap();
    std::fs::write(
        &case,
        r#"{"nodes": [{"name": "busy", "allocatable": {"cpu": "4", "memory": "16Gi"}, "requested": {"cpu": "3"}},
                      {"name": "idle", "allocatable": {"cpu": "4", "memory": "16Gi"}}],
            "task": {"resource_requests": {"cpu": "1", "memory": "1Gi"}}}"#,
    )
    .unwrap();
    let out = d.command("explain").arg("--config").arg(&config).arg("--input").arg(&case).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    // least_allocated spreads: the idle node wins.
    assert_eq!(v["selected"], "idle", "{v}");
    assert_eq!(v["nodes"][1]["scores"]["resource_fit"], 84, "cpu 75, memory 93 → 84: {v}");
    std::fs::write(&case, r#"{"nodes": [{"name": "n", "allocatable": {"cpu": "lots"}}], "task": {}}"#).unwrap();
    let out = d.command("explain").arg("--input").arg(&case).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nodes[0].allocatable.cpu"), "{err}");
    std::fs::write(&case, "{not json").unwrap();
    let out = d.command("explain").arg("--input").arg(&case).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid explain case"));
}

/// Three `berth scheduler` processes and no leader, against 2,000 tasks of random sizes on 50
/// nodes; one is killed with SIGKILL mid-run. Replaying the bindings stream in order checks
/// every reservation: no node is ever over-committed. Every task is bound exactly once (the
/// killed replica's leases expire back to ready and the others place them), and the
/// survivors report the conflicts they counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scheduler_processes_bind_every_task_once_even_when_one_is_killed() {
    use berth_core::{NodeView, Resources, SchedulingSpec};
    use rand::{RngExt, SeedableRng};
    use std::collections::{HashMap, HashSet};

    let mut d = Deployment::new();
    let queue = Queue::connect(&redis_url(), &d.partition).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut allocatable = HashMap::new();
    for i in 0..50 {
        let n = NodeView {
            name: format!("n{i:02}"),
            allocatable: Resources::new(
                rng.random_range(10..=16) * 1000,
                rng.random_range(48..=64) << 30,
                rng.random_range(2..=6),
            ),
            requested: Resources::ZERO,
            labels: Default::default(),
            taints: vec![],
            schedulable: true,
        };
        allocatable.insert(n.name.clone(), n.allocatable.clone());
        queue.upsert_node(&n).await.unwrap();
    }
    let mut reservations = HashMap::new();
    for i in 0..2000 {
        let s = SchedulingSpec {
            task_id: Uuid::new_v4(),
            tenant: ["a", "b", "c", "d"][i % 4].into(),
            requests: Resources::new(
                rng.random_range(1..=4) * 100,
                rng.random_range(1..=8) << 27,
                u64::from(rng.random_range(0..20) == 0),
            ),
            priority: rng.random_range(0..=100),
            node_selector: Default::default(),
            tolerations: vec![],
            attempt: 0,
            seq: 0,
        };
        reservations.insert(s.task_id, s.reservation());
        queue.enqueue(&s, Duration::ZERO).await.unwrap();
    }
    let schedulers = ["scheduler-1", "scheduler-2", "scheduler-3"];
    for name in schedulers {
        let out = std::fs::File::create(d.logs.join(format!("{name}.log"))).unwrap();
        let child = d
            .command("scheduler")
            .env("BERTH_SCHEDULER__LEASE_TTL", "2s")
            .env("BERTH_SCHEDULER__BATCH_SIZE", "16")
            .env("BERTH_SCHEDULER__IDLE_WAIT", "10ms")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        d.children.push((name.to_owned(), child));
    }
    let bound =
        |q: Queue| async move { q.snapshot().await.unwrap().nodes.iter().map(|n| n.requested.cpu_millis).sum::<u64>() };
    // Kill one replica with SIGKILL once placement is under way and it holds leases.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = format!("-{}-", d.children[1].1.id());
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("berth:{{{}}}:", d.partition);
    let held = loop {
        assert!(Instant::now() < deadline, "no progress\n{}", d.logs_tail());
        let leased: Vec<String> =
            redis::cmd("ZRANGE").arg(format!("{prefix}leases")).arg(0).arg(-1).query_async(&mut redis).await.unwrap();
        let mut held = 0;
        for id in &leased {
            let owner: Option<String> = redis::cmd("HGET")
                .arg(format!("{prefix}task:{id}"))
                .arg("owner")
                .query_async(&mut redis)
                .await
                .unwrap();
            held += usize::from(owner.is_some_and(|o| o.contains(&victim)));
        }
        if held > 0 && bound(queue.clone()).await > 20_000 {
            d.children[1].1.kill().unwrap();
            break held;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    d.children[1].1.wait().unwrap();
    // Until nothing moves for longer than a lease: then every lease has expired and been
    // claimed again by a survivor.
    let (mut last, mut since) = (0, Instant::now());
    while since.elapsed() < Duration::from_secs(4) {
        assert!(Instant::now() < deadline, "placement did not settle\n{}", d.logs_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = bound(queue.clone()).await;
        if b != last {
            (last, since) = (b, Instant::now());
        }
    }
    for i in [0, 2] {
        let pid = d.children[i].1.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        d.children[i].1.wait().unwrap();
    }

    // Replay the bindings in stream order (the order the reserve script appended them).
    queue.ensure_binding_group().await.unwrap();
    let (mut seen, mut per_node) = (HashSet::new(), HashMap::<String, Resources>::new());
    loop {
        let batch = queue.read_bindings("checker", 500, Duration::from_millis(10)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for b in batch {
            assert!(seen.insert(b.task_id), "task {} bound twice", b.task_id);
            let held = per_node.entry(b.node.clone()).or_default();
            *held = held.saturating_add(&reservations[&b.task_id]);
            assert!(held.fits_in(&allocatable[&b.node]), "node {} over-committed at a reservation: {held:?}", b.node);
        }
    }
    assert_eq!(seen.len(), 2000, "every task bound exactly once\n{}", d.logs_tail());
    let mut conflicts = 0;
    for name in ["scheduler-1", "scheduler-3"] {
        let log = std::fs::read_to_string(d.logs.join(format!("{name}.log"))).unwrap();
        let line = log.lines().find(|l| l.contains("scheduler stopped")).unwrap_or_else(|| panic!("{name}:\n{log}"));
        let n = line.split("conflicts=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
        conflicts += n.parse::<u64>().unwrap();
    }
    eprintln!(
        "2000 tasks bound once each across 3 processes; one was SIGKILLed holding about {held} leases; \
         survivors counted {conflicts} conflicts"
    );
}

/// A running `berth scheduler` takes a changed config file within seconds and on SIGHUP,
/// refuses a bad one while keeping the running policy, and reports the version it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_reloads_its_policy_and_keeps_the_last_good_one() {
    let mut d = Deployment::new();
    let queue = Queue::connect(&redis_url(), &d.partition).await.unwrap();
    let path = d.logs.join("berth.toml");
    let section =
        |strategy: &str| format!("[[scheduler.profile.scorers]]\nkind = \"resource_fit\"\nstrategy = \"{strategy}\"\n");
    std::fs::write(&path, section("most_allocated")).unwrap();
    let out = std::fs::File::create(d.logs.join("scheduler.log")).unwrap();
    let metrics_port = common::free_port();
    let child = d
        .command("scheduler")
        .arg("--config")
        .arg(&path)
        .env("BERTH_METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    d.children.push(("scheduler".into(), child));
    // The strategy and version the replica reports running.
    let reported = |q: Queue| async move {
        let r = q.policy_reports(Duration::from_secs(60)).await.unwrap();
        r.first().map(|r| {
            (r.config["profile"]["scorers"][0]["strategy"].as_str().unwrap_or("").to_owned(), r.version.clone())
        })
    };
    let wait_for = |want: &'static str, d: &Deployment| {
        let (q, logs) = (queue.clone(), d.logs.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some((strategy, version)) = reported(q.clone()).await
                    && strategy == want
                {
                    return version;
                }
                let log = std::fs::read_to_string(logs.join("scheduler.log")).unwrap_or_default();
                assert!(Instant::now() < deadline, "the scheduler never reported {want}\n{log}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let first = wait_for("most_allocated", &d).await;

    // A changed file is picked up by itself, as a new version.
    std::fs::write(&path, section("least_allocated")).unwrap();
    let second = wait_for("least_allocated", &d).await;
    assert_ne!(first, second);
    // The standalone scheduler's own /metrics says the same: the new version runs, the old not.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    let info: Vec<&str> = metrics.lines().filter(|l| l.starts_with("berth_scheduler_policy_info{")).collect();
    assert!(info.iter().any(|l| l.contains(&format!("version=\"{second}\"")) && l.ends_with(" 1")), "{metrics}");
    assert!(info.iter().any(|l| l.contains(&format!("version=\"{first}\"")) && l.ends_with(" 0")), "{metrics}");

    // A bad file is refused: the running policy stays, and the log says why.
    std::fs::write(&path, "[scheduler]\nbatch_size = 0\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reported(queue.clone()).await, Some(("least_allocated".to_owned(), second.clone())));
    let log = std::fs::read_to_string(d.logs.join("scheduler.log")).unwrap();
    assert!(log.contains("configuration refused") && log.contains("scheduler.batch_size"), "{log}");

    // SIGHUP reloads at once. The new file gets the old one's modification time back, so
    // only the signal can be what notices it.
    let seen = std::fs::metadata(&path).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
    std::fs::write(
        &path,
        section("requested_to_capacity_ratio")
            + "shape = [{ utilization = 0, score = 0 }, { utilization = 100, score = 10 }]\n",
    )
    .unwrap();
    let stamp = format!("@{}.{:09}", seen.as_secs(), seen.subsec_nanos());
    assert!(std::process::Command::new("touch").args(["-m", "-d", &stamp]).arg(&path).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reported(queue.clone()).await.unwrap().0, "least_allocated", "no reload without the signal");
    let pid = d.children[0].1.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let third = wait_for("requested_to_capacity_ratio", &d).await;
    assert_ne!(third, second);
    assert!(d.children[0].1.try_wait().unwrap().is_none(), "SIGHUP does not stop the scheduler");
}

/// SIGHUP never kills a scheduler, even one configured from the environment alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_is_harmless() {
    let mut d = Deployment::new();
    let queue = Queue::connect(&redis_url(), &d.partition).await.unwrap();
    d.spawn("scheduler", "scheduler");
    let deadline = Instant::now() + Duration::from_secs(15);
    while queue.policy_reports(Duration::from_secs(60)).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never reported\n{}", d.logs_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = d.children[0].1.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(d.children[0].1.try_wait().unwrap().is_none(), "SIGHUP killed the scheduler\n{}", d.logs_tail());
    let log = std::fs::read_to_string(d.logs.join("scheduler.log")).unwrap();
    assert!(log.contains("no configuration file to reload"), "{log}");
}
