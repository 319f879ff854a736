//! What the Kubernetes tests share: the API emulator, and a stand-in for the Job controller
//! and the kubelet that runs task pods on it.
#![allow(dead_code)] // each test crate uses its own part

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_core::sim::{self, Step};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// One emulator process (kmock with berth's shim), killed when dropped.
pub struct Emulator {
    child: Child,
    pub url: String,
}

impl Emulator {
    pub fn start() -> Emulator {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out =
            Command::new(format!("{root}/scripts/kmock.sh")).current_dir(root).output().expect("scripts/kmock.sh");
        assert!(out.status.success(), "scripts/kmock.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let python = String::from_utf8(out.stdout).unwrap().lines().last().expect("the venv's python").to_owned();
        let mut child = Command::new(python)
            .arg(format!("{root}/tests/kmock/shim.py"))
            .args(["--port", "0"])
            // It exits when this process's end of its stdin closes, even if this process is
            // SIGKILLed and never runs Drop.
            .arg("--exit-on-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the kmock shim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("shim said {line:?}"));
        Emulator { child, url: format!("http://127.0.0.1:{port}") }
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }

    /// A Ready node with `cpu` and `memory` allocatable.
    pub async fn add_node(&self, name: &str, cpu: &str, memory: &str) {
        let nodes = Api::<Node>::all(self.client());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {"allocatable": {"cpu": cpu, "memory": memory},
                                       "conditions": [{"type": "Ready", "status": "True"}]}});
        nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tenant named `name` in PostgreSQL.
pub async fn tenant(pool: &sqlx::PgPool, name: &str) -> uuid::Uuid {
    let (id,): (uuid::Uuid,) = sqlx::query_as("insert into tenants (name, display_name) values ($1, $1) returning id")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
    id
}

/// User `alice` of `tenant` in PostgreSQL.
pub async fn user(pool: &sqlx::PgPool, tenant: uuid::Uuid) -> uuid::Uuid {
    let (id,): (uuid::Uuid,) = sqlx::query_as(
        "insert into users (tenant_id, username, email, password_hash) values ($1, 'alice', 'a@x', 'x') returning id",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap();
    id
}

/// Appends to a pod's log on the emulator (the shim's control endpoint); `close` ends it.
pub async fn write_log(client: &kube::Client, namespace: &str, pod: &str, text: &str, close: bool) {
    let path = format!("/_shim/pods/{namespace}/{pod}/log{}", if close { "?close=true" } else { "" });
    let req = http::Request::post(path).header("content-type", "text/plain").body(text.as_bytes().to_vec()).unwrap();
    client.request_text(req).await.expect("the shim's log endpoint");
}

/// Plays the Job controller and the kubelet on the emulator, as the tests' cluster: each new
/// Job of berth's gets its pod, which runs the task container's `sh -c` script of
/// echo/sleep/exit (what busybox would do on a real cluster): Running, its echoes in the
/// pod's log, then Succeeded or Failed with the exit code, and the Job's condition. An image
/// under `registry.invalid/` cannot be pulled: the pod waits in ErrImagePull. A pod deleted
/// meanwhile stops running; one past the Job's activeDeadlineSeconds fails its Job
/// (DeadlineExceeded) and is deleted, as the Job controller does.
pub async fn kubelet(client: kube::Client) {
    let jobs: Api<Job> = Api::all(client.clone());
    let mut stream = watcher(jobs, watcher::Config::default().labels(berth_workers::job::SELECTOR)).boxed();
    let mut started = HashSet::new();
    while let Some(event) = stream.next().await {
        let Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) = event else { continue };
        let (Some(name), Some(namespace)) = (job.metadata.name.clone(), job.metadata.namespace.clone()) else {
            continue;
        };
        if job.metadata.deletion_timestamp.is_some() || !started.insert((namespace.clone(), name.clone())) {
            continue;
        }
        tokio::spawn(run_pod(client.clone(), job));
    }
}

async fn run_pod(client: kube::Client, job: Job) {
    let name = job.metadata.name.clone().unwrap();
    let namespace = job.metadata.namespace.clone().unwrap();
    let template = job.spec.as_ref().unwrap().template.clone();
    let pod_name = format!("{name}-x7k2p");
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.clone(),
                uid: job.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..template.metadata.unwrap_or_default()
        },
        spec: template.spec,
        status: None,
    };
    let container = pod.spec.as_ref().unwrap().containers[0].clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    if pods.create(&PostParams::default(), &pod).await.is_err() {
        return;
    }
    let patch = |status: serde_json::Value| Patch::Merge(json!({ "status": status }));
    let container_status = |state: serde_json::Value| {
        json!([{"name": container.name, "image": container.image, "imageID": "", "ready": false,
                "restartCount": 0, "state": state}])
    };
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    if container.image.as_deref().is_some_and(|i| i.starts_with("registry.invalid/")) {
        let waiting = json!({"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}});
        let _ = pods
            .patch_status(
                &pod_name,
                &PatchParams::default(),
                &patch(json!({"phase": "Pending",
                "containerStatuses": container_status(waiting)})),
            )
            .await;
        return;
    }
    let running = json!({"phase": "Running", "startTime": now(),
                         "containerStatuses": container_status(json!({"running": {"startedAt": now()}}))});
    if pods.patch_status(&pod_name, &PatchParams::default(), &patch(running)).await.is_err() {
        return;
    }
    let steps = sim::script(&container.command.unwrap_or_default(), &container.args.unwrap_or_default())
        .unwrap_or_else(|| vec![Step::Sleep(Duration::from_secs(3600))]);
    // The Job controller's part: past activeDeadlineSeconds, the Job fails and its pod goes.
    let deadline = job
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s as u64));
    let mut code = 0;
    for step in steps {
        let slept = match step {
            Step::Echo(text) => {
                write_log(&client, &namespace, &pod_name, &format!("{text}\n"), false).await;
                Duration::ZERO
            }
            Step::Sleep(d) => d,
            Step::Exit(c) => {
                code = c;
                break;
            }
        };
        let until = tokio::time::Instant::now() + slept;
        loop {
            if pods.get_opt(&pod_name).await.ok().flatten().is_none() {
                return; // deleted: the container is gone with it
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                // As the Job controller does it (Kubernetes 1.31 and later): FailureTarget,
                // then the container killed (the kubelet says "Error", 143), then Failed.
                let condition = |kind: &str| {
                    json!({"type": kind, "status": "True", "reason": "DeadlineExceeded",
                           "message": "Job was active longer than specified deadline", "lastTransitionTime": now()})
                };
                let target = json!({"conditions": [condition("FailureTarget")]});
                let _ = jobs.patch_status(&name, &PatchParams::default(), &patch(target)).await;
                let killed = json!({"terminated": {"exitCode": 143, "reason": "Error", "finishedAt": now()}});
                let done = json!({"phase": "Failed", "containerStatuses": container_status(killed)});
                let _ = pods.patch_status(&pod_name, &PatchParams::default(), &patch(done)).await;
                write_log(&client, &namespace, &pod_name, "", true).await;
                let failed = json!({"conditions": [condition("FailureTarget"), condition("Failed")]});
                let _ = jobs.patch_status(&name, &PatchParams::default(), &patch(failed)).await;
                return;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }
    let (phase, reason, condition) =
        if code == 0 { ("Succeeded", "Completed", "Complete") } else { ("Failed", "Error", "Failed") };
    let terminated =
        json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}});
    let done = json!({"phase": phase, "containerStatuses": container_status(terminated)});
    if pods.patch_status(&pod_name, &PatchParams::default(), &patch(done)).await.is_err() {
        return;
    }
    write_log(&client, &namespace, &pod_name, "", true).await;
    let reason = if code == 0 { "Completed" } else { "BackoffLimitExceeded" };
    let cond =
        json!({"conditions": [{"type": condition, "status": "True", "reason": reason, "lastTransitionTime": now()}]});
    let _ = jobs.patch_status(&name, &PatchParams::default(), &patch(cond)).await;
}
