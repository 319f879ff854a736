//! The Kubernetes implementation of the Cluster seam against a Kubernetes API over HTTP: the
//! kmock emulator (PyPI, pinned by `scripts/kmock.sh`) with berth's shim
//! (`tests/kmock/shim.py`), one emulator per test. The test plays the Job controller and the
//! kubelet by creating pods and patching their status, as those would.

use std::time::Duration;

use berth_core::{Resources, TaintEffect, Toleration, TolerationOperator};
use berth_workers::cluster::JobVolume;
use berth_workers::cluster::NamespaceRequest;
use berth_workers::k8s::KubeCluster;
use berth_workers::{Cluster, JobEvent, JobPhase, JobRequest, VolumePhase, VolumeRequest};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, PersistentVolumeClaim, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use uuid::Uuid;

mod common;
use common::Emulator;

fn request(attempt: u32) -> JobRequest {
    let task_id = Uuid::from_u128(0xabc);
    JobRequest {
        name: JobRequest::job_name(task_id, attempt),
        namespace: "tenant-acme".into(),
        task_id,
        tenant_id: Uuid::from_u128(2),
        user_id: Uuid::from_u128(3),
        attempt,
        node: "node-1".into(),
        image: "busybox:1.36".into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["echo hi".into()],
        env: [("A".to_string(), "1".to_string())].into(),
        labels: [("team".to_string(), "ml".to_string())].into(),
        requests: Resources::new(500, 1 << 30, 1),
        limits: Resources::new(1000, 2 << 30, 1),
        node_selector: [("zone".to_string(), "a".to_string())].into(),
        tolerations: vec![Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: Some(TaintEffect::NoSchedule),
        }],
        task_name: "hello".into(),
        priority: 50,
        created_at: "2026-12-04T10:00:00Z".parse().unwrap(),
        active_deadline_seconds: Some(600),
        volumes: vec![JobVolume {
            name: "data".into(),
            claim: "data-pvc".into(),
            mount_path: "/data".into(),
            read_only: false,
        }],
    }
}

#[tokio::test]
async fn a_job_is_created_once_as_built_and_deleted_with_its_pods() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    let req = request(0);
    cluster.create_job(&req).await.unwrap();
    // The same attempt again (a redelivered binding): AlreadyExists is success.
    cluster.create_job(&req).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(emu.client(), "tenant-acme");
    let stored = jobs.get(&req.name).await.unwrap();
    let built = berth_workers::job::build(&req);
    assert_eq!(serde_json::to_value(&stored.spec).unwrap(), serde_json::to_value(&built.spec).unwrap());
    assert_eq!(stored.metadata.labels, built.metadata.labels);
    assert_eq!(jobs.list(&Default::default()).await.unwrap().items.len(), 1);

    // The job controller's pod, owned by the Job.
    let uid = stored.metadata.uid.clone().expect("the emulator assigns uids");
    let pods: Api<Pod> = Api::namespaced(emu.client(), "tenant-acme");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{}-x", req.name), "labels": {"app": "compute-platform"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": req.name, "uid": uid}]},
        "spec": {"containers": [{"name": "task-container", "image": "busybox:1.36"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster.delete_job("tenant-acme", &req.name).await.unwrap();
    assert!(jobs.get_opt(&req.name).await.unwrap().is_none());
    assert!(pods.list(&Default::default()).await.unwrap().items.is_empty(), "foreground deletion takes the pods");
    // Deleting what is gone is harmless.
    cluster.delete_job("tenant-acme", &req.name).await.unwrap();
}

#[tokio::test]
async fn a_tenant_namespace_gets_its_quota_defaults_policy_and_account() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    let ns = NamespaceRequest {
        namespace: "tenant-acme".into(),
        tenant: "acme".into(),
        tenant_id: Uuid::from_u128(2),
        cpu_millis: Some(8000),
        memory_bytes: Some(32 << 30),
        gpu: None,
    };
    cluster.ensure_namespace(&ns).await.unwrap();
    // Again, with a changed quota: applied over the first.
    let ns = NamespaceRequest { gpu: Some(2), ..ns };
    cluster.ensure_namespace(&ns).await.unwrap();
    let c = emu.client();
    let n = Api::<Namespace>::all(c.clone()).get("tenant-acme").await.unwrap();
    assert_eq!(n.metadata.labels.unwrap()["compute-platform/tenant"], "acme");
    let q = Api::<ResourceQuota>::namespaced(c.clone(), "tenant-acme").get("compute-platform-quota").await.unwrap();
    assert_eq!(
        serde_json::to_value(q.spec.unwrap().hard).unwrap(),
        json!({"requests.cpu": "8", "requests.memory": "32Gi", "requests.nvidia.com/gpu": "2"})
    );
    let l = Api::<LimitRange>::namespaced(c.clone(), "tenant-acme").get("compute-platform-defaults").await.unwrap();
    assert_eq!(
        serde_json::to_value(&l.spec.unwrap().limits[0].default_request).unwrap(),
        json!({"cpu": "100m", "memory": "200Mi"})
    );
    let p = Api::<NetworkPolicy>::namespaced(c.clone(), "tenant-acme").get("default-deny-ingress").await.unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    assert!(spec.ingress.is_none(), "no ingress rule: everything in is denied");
    let sa = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(c, "tenant-acme")
        .get("compute-platform-task-runner")
        .await
        .unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
}

#[tokio::test]
async fn pod_phases_arrive_as_job_events() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    let mut events = cluster.take_events().unwrap();
    assert!(cluster.take_events().is_err(), "one stream");
    let req = request(1);
    let pods: Api<Pod> = Api::namespaced(emu.client(), "tenant-acme");
    let template = berth_workers::job::build(&req).spec.unwrap().template;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("p1".into()),
            namespace: Some("tenant-acme".into()),
            ..template.metadata.unwrap()
        },
        spec: template.spec,
        status: None,
    };
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = |s: serde_json::Value| Patch::Merge(json!({"status": s}));
    pods.patch_status(
        "p1",
        &PatchParams::default(),
        &status(json!({"phase": "Running", "startTime": "2026-12-04T10:00:00Z"})),
    )
    .await
    .unwrap();
    let next = async |events: &mut tokio::sync::mpsc::UnboundedReceiver<berth_workers::JobEvent>| {
        tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("an event in time").unwrap()
    };
    let e = next(&mut events).await;
    assert_eq!((e.task_id, e.attempt), (req.task_id, 1));
    assert_eq!(e.phase, JobPhase::Running { node: "node-1".into(), at: "2026-12-04T10:00:00Z".parse().unwrap() });
    pods.patch_status(
        "p1",
        &PatchParams::default(),
        &status(json!({"phase": "Failed", "containerStatuses": [{"name": "task-container", "image": "busybox:1.36",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-04T10:01:00Z"}}}]})),
    )
    .await
    .unwrap();
    let e = next(&mut events).await;
    assert!(
        matches!(&e.phase, JobPhase::Failed { exit_code: Some(137), reason, .. } if reason == "OOMKilled"),
        "{e:?}"
    );

    // A live pod deleted under its attempt: the attempt is lost. A finished one deleted: nothing.
    // (Attempt 2: attempt 1 is over, and the repeats of an attempt that ended are not reported.)
    let mut labels = pod.metadata.labels.clone().unwrap();
    labels.insert("compute-platform/attempt".into(), "2".into());
    let p2 = Pod {
        metadata: ObjectMeta { name: Some("p2".into()), labels: Some(labels), ..pod.metadata.clone() },
        ..pod.clone()
    };
    pods.create(&PostParams::default(), &p2).await.unwrap();
    pods.patch_status("p2", &PatchParams::default(), &status(json!({"phase": "Running"}))).await.unwrap();
    assert!(matches!(next(&mut events).await.phase, JobPhase::Running { .. }));
    pods.delete("p2", &Default::default()).await.unwrap();
    let e = next(&mut events).await;
    assert!(matches!(&e.phase, JobPhase::Failed { exit_code: None, reason, .. } if reason == "Deleted"), "{e:?}");
    pods.delete("p1", &Default::default()).await.unwrap();
    assert!(
        tokio::time::timeout(berth_workers::k8s::LOST_GRACE * 2, events.recv()).await.is_err(),
        "a finished pod's deletion is no event"
    );
}

#[tokio::test]
async fn nodes_and_volume_claims_come_from_the_api() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    // As a kubelet registers: the node, then its status.
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-1", "labels": {"zone": "a"}},
        "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    let nodes_api = Api::<Node>::all(emu.client());
    nodes_api.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {"allocatable": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"},
                                   "conditions": [{"type": "Ready", "status": "True"}]}});
    nodes_api.patch_status("node-1", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let nodes = cluster.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].allocatable, Resources::new(8000, 32 << 30, 2));
    assert!(nodes[0].schedulable);
    // A pod berth does not own takes its requests out; berth's own pods and finished pods do not.
    let pod = |name: &str, labels: serde_json::Value, cpu: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x",
                     "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}}))
        .unwrap()
    };
    let system: Api<Pod> = Api::namespaced(emu.client(), "kube-system");
    system.create(&PostParams::default(), &pod("daemon", json!({"k8s-app": "dns"}), "1500m")).await.unwrap();
    system.create(&PostParams::default(), &pod("done", json!({}), "2")).await.unwrap();
    system
        .patch_status("done", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Succeeded"}})))
        .await
        .unwrap();
    let ours: Api<Pod> = Api::namespaced(emu.client(), "tenant-acme");
    let task = json!({"compute-platform/task-id": Uuid::nil().to_string()});
    ours.create(&PostParams::default(), &pod("task", task, "3")).await.unwrap();
    let nodes = cluster.list_nodes().await.unwrap();
    assert_eq!(nodes[0].allocatable, Resources::new(6500, 31 << 30, 2));

    let v = VolumeRequest {
        namespace: "tenant-acme".into(),
        claim: "data-pvc".into(),
        size: "10Gi".into(),
        storage_class: Some("standard".into()),
        access_mode: "ReadWriteOnce".into(),
    };
    assert_eq!(cluster.ensure_volume(&v).await.unwrap(), VolumePhase::Pending);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(emu.client(), "tenant-acme");
    let pvc = claims.get("data-pvc").await.unwrap();
    assert_eq!(
        serde_json::to_value(pvc.spec.unwrap()).unwrap(),
        json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
               "resources": {"requests": {"storage": "10Gi"}}})
    );
    claims
        .patch_status("data-pvc", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Bound"}})))
        .await
        .unwrap();
    assert_eq!(cluster.ensure_volume(&v).await.unwrap(), VolumePhase::Bound, "and repeating it keeps the claim");
    assert_eq!(claims.list(&Default::default()).await.unwrap().items.len(), 1);
}

/// The executor through the Kubernetes implementation: a binding makes the tenant's namespace
/// (quota from PostgreSQL) and the attempt's Job, with the task's volume as its claim.
#[sqlx::test(migrations = "../migrations")]
async fn a_binding_makes_the_tenant_namespace_and_the_job(pool: sqlx::PgPool) {
    let emu = Emulator::start();
    let url = std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let partition = format!("test-{}", Uuid::new_v4().simple());
    let queue = berth_queue::Queue::connect(&url, &partition).await.expect("Redis (make services)");
    let tenant = common::tenant(&pool, "acme").await;
    sqlx::query(
        "insert into resource_quotas (tenant_id, resource_type, hard_limit, used_amount)
         values ($1, 'cpu', 16000, 0), ($1, 'memory', 9223372036854775807, 0)",
    )
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    let user = common::user(&pool, tenant).await;
    let (volume,): (Uuid,) = sqlx::query_as(
        "insert into volumes (tenant_id, user_id, name, size, pvc_name) values ($1, $2, 'data', '1Gi', 'data-claim')
         returning id",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(&pool)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into tasks (id, tenant_id, user_id, name, image, resource_requests, priority)
         values ($1, $2, $3, 'train', 'busybox:1.36', $4, 30)",
    )
    .bind(id)
    .bind(tenant)
    .bind(user)
    .bind(json!({"cpu": "2", "memory": "1Gi", "gpu": 0}))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("insert into task_volumes (task_id, volume_id, mount_path, read_only) values ($1, $2, '/data', true)")
        .bind(id)
        .bind(volume)
        .execute(&pool)
        .await
        .unwrap();
    let cluster = std::sync::Arc::new(KubeCluster::new(emu.client()));
    let executor = berth_workers::executor::Executor::new(
        Default::default(),
        pool.clone(),
        queue.clone(),
        cluster,
        "test-executor".into(),
    );
    let binding = berth_queue::Binding { entry_id: "0-1".into(), task_id: id, node: "node-1".into(), attempt: 0 };
    executor.handle_binding(&binding).await.unwrap();
    // Again (a redelivery): still one Job.
    executor.handle_binding(&binding).await.unwrap();

    let c = emu.client();
    let q = Api::<ResourceQuota>::namespaced(c.clone(), "tenant-acme").get("compute-platform-quota").await.unwrap();
    assert_eq!(serde_json::to_value(q.spec.unwrap().hard).unwrap(), json!({"requests.cpu": "16"}), "memory unlimited");
    let jobs: Api<Job> = Api::namespaced(c, "tenant-acme");
    let all = jobs.list(&Default::default()).await.unwrap().items;
    assert_eq!(all.len(), 1);
    let job = serde_json::to_value(&all[0]).unwrap();
    assert_eq!(job["metadata"]["name"], format!("task-{id}-0"));
    assert_eq!(job["metadata"]["annotations"]["compute-platform/task-name"], "train");
    assert_eq!(job["metadata"]["annotations"]["compute-platform/priority"], "30");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["nodeName"], "node-1");
    assert_eq!(
        pod["volumes"][2],
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-claim", "readOnly": true}})
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"][2],
        json!({"name": "data", "mountPath": "/data", "readOnly": true})
    );
    let (status,): (String,) =
        sqlx::query_as("select status from tasks where id = $1").bind(id).fetch_one(&pool).await.unwrap();
    assert_eq!(status, "scheduled");
    berth_queue::Queue::purge_blocking(&url, &partition);
}

/// The node publisher on the Kubernetes implementation: a node that turns NotReady, or is
/// deleted, receives no new tasks.
#[tokio::test]
async fn a_node_that_goes_not_ready_or_away_takes_no_new_tasks() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    let url = std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let partition = format!("test-{}", Uuid::new_v4().simple());
    let queue = berth_queue::Queue::connect(&url, &partition).await.expect("Redis (make services)");
    let nodes_api = Api::<Node>::all(emu.client());
    for name in ["a", "b"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes_api.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {"allocatable": {"cpu": "4", "memory": "8Gi"},
                                       "conditions": [{"type": "Ready", "status": "True"}]}});
        nodes_api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    }
    berth_workers::nodes::publish_once(&cluster, &queue).await.unwrap();
    let schedulable = |q: berth_queue::Queue| async move {
        q.snapshot().await.unwrap().nodes.iter().map(|n| (n.name.clone(), n.schedulable)).collect::<Vec<_>>()
    };
    assert_eq!(schedulable(queue.clone()).await, [("a".into(), true), ("b".into(), true)]);
    assert_eq!(queue.capacity().await.unwrap().cpu_millis, 8000);

    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    nodes_api.patch_status("a", &PatchParams::default(), &Patch::Merge(not_ready)).await.unwrap();
    nodes_api.delete("b", &Default::default()).await.unwrap();
    berth_workers::nodes::publish_once(&cluster, &queue).await.unwrap();
    assert_eq!(schedulable(queue.clone()).await, [("a".into(), false), ("b".into(), false)]);
    assert_eq!(queue.capacity().await.unwrap().cpu_millis, 0);
    berth_queue::Queue::purge_blocking(&url, &partition);
}

/// Waits for the next event, failing the test after `secs`.
async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<berth_workers::JobEvent>, secs: u64) -> JobEvent {
    tokio::time::timeout(Duration::from_secs(secs), events.recv()).await.expect("an event in time").unwrap()
}

/// Creates `req`'s pod `name` as the Job controller would, reports it Running as the kubelet
/// would, and takes the Running event.
async fn start_pod(
    pods: &Api<Pod>,
    req: &JobRequest,
    name: &str,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
) {
    pods.create(&PostParams::default(), &pod_of(req, name)).await.unwrap();
    let running = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch_status(name, &PatchParams::default(), &running).await.unwrap();
    assert!(matches!(next_event(events, 10).await.phase, JobPhase::Running { .. }));
}

/// Waits until `req`'s Job is deleted; fails with `what` after 5 s.
async fn job_goes(emu: &Emulator, req: &JobRequest, what: &str) {
    let jobs: Api<Job> = Api::namespaced(emu.client(), &req.namespace);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while jobs.get_opt(&req.name).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pod the Job controller would make for `req`'s Job, on `node`.
fn pod_of(req: &JobRequest, name: &str) -> Pod {
    let template = berth_workers::job::build(req).spec.unwrap().template;
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(req.namespace.clone()),
            ..template.metadata.unwrap()
        },
        spec: template.spec,
        status: None,
    }
}

fn waiting(reason: &str) -> serde_json::Value {
    json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "task-container", "image": "x",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]}})
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_its_attempt_after_the_grace_period() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client()).with_image_pull_grace(Duration::from_millis(1500));
    let mut events = cluster.take_events().unwrap();
    let req = request(0);
    cluster.create_job(&req).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(emu.client(), &req.namespace);
    pods.create(&PostParams::default(), &pod_of(&req, "p")).await.unwrap();
    let started = std::time::Instant::now();
    pods.patch_status("p", &PatchParams::default(), &Patch::Merge(waiting("ErrImagePull"))).await.unwrap();
    pods.patch_status("p", &PatchParams::default(), &Patch::Merge(waiting("ImagePullBackOff"))).await.unwrap();
    let e = next_event(&mut events, 10).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before the grace period: {:?}", started.elapsed());
    match &e.phase {
        JobPhase::Failed { exit_code: None, reason, message, .. } => {
            assert_eq!(reason, "ImagePullBackOff");
            assert!(message.contains("pull access denied") && message.contains("not pulled within"), "{message}");
            assert_eq!(berth_core::failure::FailureClass::classify(reason).as_str(), "image_pull");
        }
        other => panic!("{other:?}"),
    }
    // Its pod would wait for the image for ever: the Job goes.
    job_goes(&emu, &req, "the Job of an image never pulled is still there").await;
    // The pod's deletion that follows is not a second failure.
    assert!(tokio::time::timeout(berth_workers::k8s::LOST_GRACE * 2, events.recv()).await.is_err());

    // A pull that recovers within the grace period is no failure.
    let req = request(1);
    cluster.create_job(&req).await.unwrap();
    pods.create(&PostParams::default(), &pod_of(&req, "p1")).await.unwrap();
    pods.patch_status("p1", &PatchParams::default(), &Patch::Merge(waiting("ErrImagePull"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = json!({"status": {"phase": "Running", "containerStatuses": [{"name": "task-container",
        "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
    pods.patch_status("p1", &PatchParams::default(), &Patch::Merge(running)).await.unwrap();
    let e = next_event(&mut events, 10).await;
    assert!(matches!(e.phase, JobPhase::Running { .. }), "{e:?}");
    assert!(tokio::time::timeout(Duration::from_secs(2), events.recv()).await.is_err(), "no failure after recovery");
}

#[tokio::test]
async fn a_job_deleted_before_its_pod_existed_loses_its_attempt() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    let mut events = cluster.take_events().unwrap();
    let req = request(0);
    cluster.create_job(&req).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // the watch has the Job
    let jobs: Api<Job> = Api::namespaced(emu.client(), &req.namespace);
    jobs.delete(&req.name, &Default::default()).await.unwrap();
    let e = next_event(&mut events, 10).await;
    assert_eq!((e.task_id, e.attempt), (req.task_id, 0));
    assert!(matches!(&e.phase, JobPhase::Failed { exit_code: None, reason, .. } if reason == "Deleted"), "{e:?}");
}

/// The Job controller ends a Job past its activeDeadlineSeconds: it marks the Job Failed
/// (DeadlineExceeded) and deletes the pod. The attempt fails as DeadlineExceeded, whichever
/// of the two the executor hears of first.
#[tokio::test]
async fn a_job_past_its_deadline_fails_as_deadline_exceeded() {
    let emu = Emulator::start();
    let cluster = KubeCluster::new(emu.client());
    let mut events = cluster.take_events().unwrap();
    let req = request(0);
    cluster.create_job(&req).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(emu.client(), &req.namespace);
    start_pod(&pods, &req, "p", &mut events).await;
    // The pod first, then the condition: the worse order for the executor.
    pods.delete("p", &Default::default()).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(emu.client(), &req.namespace);
    let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
        "message": "Job was active longer than specified deadline", "lastTransitionTime": "2026-12-04T10:10:00Z"}]}});
    jobs.patch_status(&req.name, &PatchParams::default(), &Patch::Merge(failed)).await.unwrap();
    let e = next_event(&mut events, 10).await;
    assert!(
        matches!(&e.phase, JobPhase::Failed { reason, .. } if reason == "DeadlineExceeded"),
        "the pod's loss, told with the Job's reason: {e:?}"
    );
    let again = tokio::time::timeout(berth_workers::k8s::LOST_GRACE * 2, events.recv()).await;
    assert!(again.is_err(), "the Job's own word is not a second failure: {again:?}");

    // The Job controller's own order: FailureTarget, then the pod killed ("Error", 143): the
    // pod's failure is reported with the Job's reason.
    let req = request(1);
    cluster.create_job(&req).await.unwrap();
    start_pod(&pods, &req, "p1", &mut events).await;
    let target = json!({"status": {"conditions": [{"type": "FailureTarget", "status": "True",
        "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}});
    jobs.patch_status(&req.name, &PatchParams::default(), &Patch::Merge(target)).await.unwrap();
    let killed = json!({"status": {"phase": "Failed", "containerStatuses": [{"name": "task-container", "image": "x",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 143, "reason": "Error"}}}]}});
    pods.patch_status("p1", &PatchParams::default(), &Patch::Merge(killed)).await.unwrap();
    let e = next_event(&mut events, 10).await;
    assert_eq!(e.attempt, 1);
    assert!(
        matches!(&e.phase, JobPhase::Failed { reason, .. } if reason == "DeadlineExceeded"),
        "not an exit code: {e:?}"
    );
    let again = tokio::time::timeout(berth_workers::k8s::LOST_GRACE * 2, events.recv()).await;
    assert!(again.is_err(), "once: {again:?}");
}

/// A node that turns NotReady: within about a second the ledger has it unschedulable, and
/// the attempts running on it are lost (retried elsewhere) and their Jobs deleted.
#[tokio::test]
async fn a_node_that_turns_not_ready_loses_its_running_attempts_within_a_second() {
    let emu = Emulator::start();
    emu.add_node("node-1", "8", "16Gi").await;
    let cluster = std::sync::Arc::new(KubeCluster::new(emu.client()).with_node_lost_grace(Duration::from_millis(300)));
    let mut events = cluster.take_events().unwrap();
    let url = std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let partition = format!("test-{}", Uuid::new_v4().simple());
    let queue = berth_queue::Queue::connect(&url, &partition).await.expect("Redis (make services)");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // A full resync only every hour: what follows comes from the watch.
    let publisher = tokio::spawn(berth_workers::nodes::run(
        cluster.clone(),
        queue.clone(),
        Duration::from_secs(3600),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let schedulable = async |q: &berth_queue::Queue| q.snapshot().await.unwrap().nodes.first().map(|n| n.schedulable);
    let wait_for = async |want: Option<bool>, what: &str| {
        let t = std::time::Instant::now();
        while schedulable(&queue).await != want {
            assert!(t.elapsed() < Duration::from_secs(5), "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.elapsed()
    };
    wait_for(Some(true), "the node is published").await;

    let req = request(0);
    cluster.create_job(&req).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(emu.client(), &req.namespace);
    start_pod(&pods, &req, "p", &mut events).await;

    let nodes = Api::<Node>::all(emu.client());
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    // NotReady for a moment, shorter than the grace period: nothing is lost.
    nodes.patch_status("node-1", &PatchParams::default(), &Patch::Merge(not_ready.clone())).await.unwrap();
    nodes.patch_status("node-1", &PatchParams::default(), &Patch::Merge(ready)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(1), events.recv()).await.is_err(), "a blip loses nothing");
    wait_for(Some(true), "back to schedulable").await;
    nodes.patch_status("node-1", &PatchParams::default(), &Patch::Merge(not_ready)).await.unwrap();
    // From the watch: the full resync is an hour away. (How fast is a benchmark's business,
    // not a test's; it is about 100 ms here.)
    let took = wait_for(Some(false), "the NotReady node is unschedulable in the ledger").await;
    eprintln!("the ledger followed the node in {took:?}");
    let e = next_event(&mut events, 10).await;
    match &e.phase {
        JobPhase::Failed { reason, message, .. } => {
            assert_eq!(reason, "NodeLost");
            assert!(message.contains("node-1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    job_goes(&emu, &req, "the lost attempt's Job is still there").await;
    stop_tx.send(true).unwrap();
    publisher.await.unwrap();
    berth_queue::Queue::purge_blocking(&url, &partition);
}

/// The verbs the code uses, seen by the emulator while every path of the Kubernetes
/// implementation runs, are exactly `k8s::PERMISSIONS` (which the manifest's ClusterRole is
/// held to in `manifests.rs`). Only the implementation's own requests are counted: its
/// client sends `X-Shim-Audit: yes`, the test's does not.
#[tokio::test]
async fn the_permissions_are_exactly_the_verbs_the_code_uses() {
    let emu = Emulator::start();
    emu.add_node("node-1", "8", "16Gi").await;
    let mut config = kube::Config::new(emu.url.parse().unwrap());
    config.headers.push((http::HeaderName::from_static("x-shim-audit"), http::HeaderValue::from_static("yes")));
    let audited = kube::Client::try_from(config).unwrap();
    let cluster = KubeCluster::new(audited).with_image_pull_grace(Duration::ZERO).with_node_lost_grace(Duration::ZERO);
    let mut events = cluster.take_events().unwrap();
    let changes = cluster.node_changes().expect("the Kubernetes cluster watches its nodes");
    cluster.list_nodes().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.notified()).await.expect("the node reflector reports");
    let ns = NamespaceRequest {
        namespace: "tenant-acme".into(),
        tenant: "acme".into(),
        tenant_id: Uuid::from_u128(2),
        cpu_millis: Some(4000),
        memory_bytes: None,
        gpu: None,
    };
    cluster.ensure_namespace(&ns).await.unwrap();
    let volume = VolumeRequest {
        namespace: "tenant-acme".into(),
        claim: "data-claim".into(),
        size: "1Gi".into(),
        storage_class: None,
        access_mode: "ReadWriteOnce".into(),
    };
    cluster.ensure_volume(&volume).await.unwrap();
    // A running attempt (its log is read), then its pod vanishes (its Job is read).
    let req = request(0);
    cluster.create_job(&req).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(emu.client(), &req.namespace);
    start_pod(&pods, &req, "p", &mut events).await;
    common::write_log(&emu.client(), &req.namespace, "p", "hi\n", false).await;
    assert!(matches!(next_event(&mut events, 10).await.phase, JobPhase::Output { .. }));
    pods.delete("p", &Default::default()).await.unwrap();
    assert!(matches!(next_event(&mut events, 10).await.phase, JobPhase::Failed { .. }));
    // An attempt on a node that is lost (its pods are listed); an image that never comes
    // (its Job is deleted).
    let req = request(1);
    cluster.create_job(&req).await.unwrap();
    pods.create(&PostParams::default(), &pod_of(&req, "p1")).await.unwrap();
    pods.patch_status("p1", &PatchParams::default(), &Patch::Merge(waiting("InvalidImageName"))).await.unwrap();
    assert!(matches!(next_event(&mut events, 10).await.phase, JobPhase::Failed { .. }));
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    Api::<Node>::all(emu.client())
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(not_ready))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.delete_job(&req.namespace, &req.name).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen: Vec<(String, String, String)> = {
        let req = http::Request::get("/_shim/verbs").body(Vec::new()).unwrap();
        serde_json::from_str(&emu.client().request_text(req).await.unwrap()).unwrap()
    };
    let mut used: std::collections::BTreeSet<(String, String, String)> = seen.into_iter().collect();
    // A server-side apply is a PATCH, and one that creates needs `create` as well.
    let applied: Vec<_> = used.iter().filter(|u| u.2 == "patch").map(|u| (u.0.clone(), u.1.clone())).collect();
    used.extend(applied.into_iter().map(|(g, r)| (g, r, "create".to_string())));
    let granted: std::collections::BTreeSet<(String, String, String)> = berth_workers::k8s::PERMISSIONS
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect();
    assert_eq!(used, granted, "k8s::PERMISSIONS against what the code was seen to do");
}

/// A tenant created, then its quota changed: each change reaches the tenant's namespace and
/// ResourceQuota at once, before any task of the tenant runs.
#[sqlx::test(migrations = "../migrations")]
async fn a_tenant_change_reaches_its_namespace_and_quota(pool: sqlx::PgPool) {
    let emu = Emulator::start();
    let url = std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let partition = format!("test-{}", Uuid::new_v4().simple());
    let queue = berth_queue::Queue::connect(&url, &partition).await.expect("Redis (make services)");
    let cluster = std::sync::Arc::new(KubeCluster::new(emu.client()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let executor = tokio::spawn(berth_workers::executor::run(
        Default::default(),
        pool.clone(),
        queue.clone(),
        cluster,
        "test-executor".into(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(500)).await; // it follows tenant changes
    // What the API's tenant creation does: PostgreSQL, then the notice.
    let tenant = common::tenant(&pool, "acme").await;
    sqlx::query(
        "insert into resource_quotas (tenant_id, resource_type, hard_limit, used_amount) values ($1, 'cpu', 16000, 0)",
    )
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    queue.publish_tenant_change(tenant).await.unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(emu.client(), "tenant-acme");
    let hard = async || {
        quotas
            .get_opt("compute-platform-quota")
            .await
            .unwrap()
            .and_then(|q| q.spec)
            .and_then(|s| s.hard)
            .map(|h| serde_json::to_value(h).unwrap())
    };
    let wait_for = async |want: serde_json::Value| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = hard().await;
            if now.as_ref() == Some(&want) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "quota is {now:?}, not {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(json!({"requests.cpu": "16"})).await;
    assert!(Api::<Namespace>::all(emu.client()).get_opt("tenant-acme").await.unwrap().is_some());

    // The quota changes: cpu down, memory limited.
    sqlx::query("update resource_quotas set hard_limit = 8000 where tenant_id = $1 and resource_type = 'cpu'")
        .bind(tenant)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into resource_quotas (tenant_id, resource_type, hard_limit, used_amount) values ($1, 'memory', $2, 0)",
    )
    .bind(tenant)
    .bind(4i64 << 30)
    .execute(&pool)
    .await
    .unwrap();
    queue.publish_tenant_change(tenant).await.unwrap();
    wait_for(json!({"requests.cpu": "8", "requests.memory": "4Gi"})).await;
    stop_tx.send(true).unwrap();
    executor.await.unwrap().unwrap();
    berth_queue::Queue::purge_blocking(&url, &partition);
}
