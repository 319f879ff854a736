//! One attempt's Kubernetes Job, built as the seed's Job template (`platform-design.zh.md`
//! §4.2.1, and the builder of §3.2.3 for the container's security context), with berth's
//! changes: `backoffLimit: 0` (retries go back through berth's queue, so a retry may land on
//! another node), the pod pinned to the node the scheduler chose, and an attempt label so a
//! watcher can tell attempts apart.

use std::collections::BTreeMap;

use berth_core::resources::GPU_RESOURCE;
use berth_core::{Resources, TaintEffect, Toleration, TolerationOperator, quantity};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Toleration as K8sToleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cluster::JobRequest;

/// The seed's `app` label, on every object berth creates.
pub const APP: &str = "compute-platform";
pub const LABEL_TASK: &str = "compute-platform/task-id";
pub const LABEL_TENANT: &str = "compute-platform/tenant-id";
pub const LABEL_USER: &str = "compute-platform/user-id";
pub const LABEL_COMPONENT: &str = "compute-platform/component";
/// berth's addition: which attempt a Job or Pod belongs to.
pub const LABEL_ATTEMPT: &str = "compute-platform/attempt";
/// Selects every Job and Pod berth runs a task in.
pub const SELECTOR: &str = "app=compute-platform,compute-platform/component=task-runner";
/// The task container's name, as the seed names it.
pub const CONTAINER: &str = "task-container";
/// The ServiceAccount task pods run as, created in each tenant namespace.
pub const SERVICE_ACCOUNT: &str = "compute-platform-task-runner";
/// The seed's `ttlSecondsAfterFinished`: a finished Job is removed after 24 hours.
pub const TTL_AFTER_FINISHED: i32 = 86_400;
/// The seed's init container image.
pub const INIT_IMAGE: &str = "busybox:1.35";
const UID: i64 = 1000;

fn quantities(r: &Resources) -> BTreeMap<String, Quantity> {
    let mut m = BTreeMap::new();
    if r.cpu_millis > 0 {
        m.insert("cpu".into(), Quantity(quantity::format_cpu_millis(r.cpu_millis)));
    }
    if r.memory_bytes > 0 {
        m.insert("memory".into(), Quantity(quantity::format_bytes(r.memory_bytes)));
    }
    if r.gpu > 0 {
        m.insert(GPU_RESOURCE.into(), Quantity(r.gpu.to_string()));
    }
    for (name, amount) in r.extended.iter() {
        m.insert(name.to_owned(), Quantity(amount.to_string()));
    }
    m
}

fn toleration(t: &Toleration) -> K8sToleration {
    K8sToleration {
        key: (!t.key.is_empty()).then(|| t.key.clone()),
        operator: Some(
            match t.operator {
                TolerationOperator::Equal => "Equal",
                TolerationOperator::Exists => "Exists",
            }
            .into(),
        ),
        value: (!t.value.is_empty()).then(|| t.value.clone()),
        effect: t.effect.map(|e| {
            match e {
                TaintEffect::NoSchedule => "NoSchedule",
                TaintEffect::PreferNoSchedule => "PreferNoSchedule",
                TaintEffect::NoExecute => "NoExecute",
            }
            .into()
        }),
        toleration_seconds: None,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
}

/// The Job for one attempt.
pub fn build(job: &JobRequest) -> Job {
    let task = job.task_id.to_string();
    let attempt = job.attempt.to_string();
    let mut labels: BTreeMap<String, String> = job.labels.clone();
    // The platform's labels win over a user label of the same key.
    labels.extend([
        ("app".to_string(), APP.to_string()),
        (LABEL_TASK.into(), task.clone()),
        (LABEL_TENANT.into(), job.tenant_id.to_string()),
        (LABEL_USER.into(), job.user_id.to_string()),
        (LABEL_COMPONENT.into(), "task-runner".into()),
        (LABEL_ATTEMPT.into(), attempt.clone()),
    ]);
    let annotations = BTreeMap::from([
        ("compute-platform/created-by".to_string(), "task-service".to_string()),
        ("compute-platform/created-at".into(), job.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ("compute-platform/task-name".into(), job.task_name.clone()),
        ("compute-platform/priority".into(), job.priority.to_string()),
    ]);
    let pod_labels = BTreeMap::from([
        ("app".to_string(), APP.to_string()),
        (LABEL_TASK.into(), task.clone()),
        (LABEL_COMPONENT.into(), "task-runner".into()),
        (LABEL_ATTEMPT.into(), attempt),
    ]);
    let pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".into(), "8080".into()),
        ("prometheus.io/path".into(), "/metrics".into()),
    ]);
    let mut env = vec![
        EnvVar { name: "COMPUTE_PLATFORM_TASK_ID".into(), value: Some(task), ..Default::default() },
        EnvVar {
            name: "COMPUTE_PLATFORM_TENANT_ID".into(),
            value: Some(job.tenant_id.to_string()),
            ..Default::default()
        },
    ];
    env.extend(job.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() }));
    // Kubernetes never overcommits extended resources: their limit must be set, and equal the
    // request (admission makes a given limit equal; a missing one is the request).
    let mut limits = job.limits.clone();
    limits.gpu = job.requests.gpu;
    limits.extended = job.requests.extended.clone();
    let mut mounts = vec![mount("workspace", "/workspace", false), mount("tmp-data", "/tmp", false)];
    let mut volumes = vec![empty_dir("workspace"), empty_dir("tmp-data")];
    for v in &job.volumes {
        mounts.push(mount(&v.name, &v.mount_path, v.read_only));
        volumes.push(Volume {
            name: v.name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: v.claim.clone(),
                read_only: v.read_only.then_some(true),
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(job.image.clone()),
        command: (!job.command.is_empty()).then(|| job.command.clone()),
        args: (!job.args.is_empty()).then(|| job.args.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&job.requests)),
            limits: Some(quantities(&limits)).filter(|m| !m.is_empty()),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let init = Container {
        name: "setup-workspace".into(),
        image: Some(INIT_IMAGE.into()),
        command: Some(vec!["sh".into(), "-c".into()]),
        args: Some(vec![
            "mkdir -p /workspace /tmp-data\nchown -R 1000:1000 /workspace /tmp-data\nchmod 755 /workspace /tmp-data\n"
                .into(),
        ]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            // The pod runs as non-root; this one container must be allowed to be root.
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        volume_mounts: Some(vec![mount("workspace", "/workspace", false), mount("tmp-data", "/tmp-data", false)]),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job.name.clone()),
            namespace: Some(job.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED),
            active_deadline_seconds: job.active_deadline_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(SERVICE_ACCOUNT.into()),
                    // berth is the scheduler: the pod goes to the node it chose.
                    node_name: Some(job.node.clone()),
                    node_selector: (!job.node_selector.is_empty()).then(|| job.node_selector.clone()),
                    tolerations: (!job.tolerations.is_empty())
                        .then(|| job.tolerations.iter().map(toleration).collect()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(UID),
                        run_as_group: Some(UID),
                        fs_group: Some(UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    init_containers: Some(vec![init]),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::JobVolume;
    use serde_json::json;
    use uuid::Uuid;

    fn request() -> JobRequest {
        JobRequest {
            name: "task-00000000-0000-0000-0000-000000000001-2".into(),
            namespace: "tenant-acme".into(),
            task_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            user_id: Uuid::from_u128(3),
            attempt: 2,
            node: "node-7".into(),
            image: "pytorch/pytorch:2.1".into(),
            command: vec!["python".into()],
            args: vec!["train.py".into()],
            env: BTreeMap::from([("EPOCHS".into(), "10".into())]),
            labels: BTreeMap::from([("project".into(), "ml".into()), ("app".into(), "mine".into())]),
            requests: Resources::new(2000, 4 << 30, 1).with_extended("amd.com/gpu", 1),
            limits: Resources::new(4000, 8 << 30, 0),
            node_selector: BTreeMap::from([("zone".into(), "a".into())]),
            tolerations: vec![Toleration {
                key: "dedicated".into(),
                operator: TolerationOperator::Equal,
                value: "gpu".into(),
                effect: Some(TaintEffect::NoSchedule),
            }],
            task_name: "train".into(),
            priority: 70,
            created_at: "2026-12-04T10:00:00Z".parse().unwrap(),
            active_deadline_seconds: Some(3600),
            volumes: vec![JobVolume {
                name: "data".into(),
                claim: "pvc-data".into(),
                mount_path: "/data".into(),
                read_only: true,
            }],
        }
    }

    /// The seed's template, field by field, as JSON; berth's changes are named inline.
    #[test]
    fn the_job_is_the_seeds_template() {
        let job = serde_json::to_value(build(&request())).unwrap();
        let task = "00000000-0000-0000-0000-000000000001";
        assert_eq!(job["apiVersion"], "batch/v1");
        assert_eq!(job["kind"], "Job");
        let meta = &job["metadata"];
        assert_eq!(meta["name"], format!("task-{task}-2"));
        assert_eq!(meta["namespace"], "tenant-acme");
        assert_eq!(
            meta["labels"],
            json!({
                "app": "compute-platform",               // the platform's wins over the user's "mine"
                "compute-platform/task-id": task,
                "compute-platform/tenant-id": "00000000-0000-0000-0000-000000000002",
                "compute-platform/user-id": "00000000-0000-0000-0000-000000000003",
                "compute-platform/component": "task-runner",
                "compute-platform/attempt": "2",          // berth's addition
                "project": "ml",
            })
        );
        assert_eq!(
            meta["annotations"],
            json!({
                "compute-platform/created-by": "task-service",
                "compute-platform/created-at": "2026-12-04T10:00:00Z",
                "compute-platform/task-name": "train",
                "compute-platform/priority": "70",
            })
        );
        let spec = &job["spec"];
        assert_eq!(spec["backoffLimit"], 0, "retries go through berth's queue");
        assert_eq!(spec["ttlSecondsAfterFinished"], 86400);
        assert_eq!(spec["activeDeadlineSeconds"], 3600);
        let tmpl = &spec["template"];
        assert_eq!(
            tmpl["metadata"]["labels"],
            json!({"app": "compute-platform", "compute-platform/task-id": task,
                   "compute-platform/component": "task-runner", "compute-platform/attempt": "2"})
        );
        assert_eq!(
            tmpl["metadata"]["annotations"],
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"})
        );
        let pod = &tmpl["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "compute-platform-task-runner");
        assert_eq!(pod["nodeName"], "node-7", "pinned to the scheduler's choice");
        assert_eq!(pod["nodeSelector"], json!({"zone": "a"}));
        assert_eq!(
            pod["tolerations"],
            json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}])
        );
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        let init = &pod["initContainers"][0];
        assert_eq!(init["name"], "setup-workspace");
        assert_eq!(init["image"], "busybox:1.35");
        assert_eq!(init["command"], json!(["sh", "-c"]));
        assert_eq!(
            init["args"],
            json!([
                "mkdir -p /workspace /tmp-data\nchown -R 1000:1000 /workspace /tmp-data\nchmod 755 /workspace /tmp-data\n"
            ])
        );
        assert_eq!(
            init["securityContext"],
            json!({"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false})
        );
        assert_eq!(
            init["volumeMounts"],
            json!([{"name": "workspace", "mountPath": "/workspace"}, {"name": "tmp-data", "mountPath": "/tmp-data"}])
        );
        let c = &pod["containers"][0];
        assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
        assert_eq!(c["name"], "task-container");
        assert_eq!(c["image"], "pytorch/pytorch:2.1");
        assert_eq!(c["command"], json!(["python"]));
        assert_eq!(c["args"], json!(["train.py"]));
        assert_eq!(
            c["env"],
            json!([
                {"name": "COMPUTE_PLATFORM_TASK_ID", "value": task},
                {"name": "COMPUTE_PLATFORM_TENANT_ID", "value": "00000000-0000-0000-0000-000000000002"},
                {"name": "EPOCHS", "value": "10"},
            ])
        );
        assert_eq!(
            c["resources"],
            json!({
                "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1", "amd.com/gpu": "1"},
                // Extended resources' limits equal their requests, as Kubernetes requires.
                "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1", "amd.com/gpu": "1"},
            })
        );
        assert_eq!(
            c["volumeMounts"],
            json!([
                {"name": "workspace", "mountPath": "/workspace"},
                {"name": "tmp-data", "mountPath": "/tmp"},
                {"name": "data", "mountPath": "/data", "readOnly": true},
            ])
        );
        assert_eq!(
            c["securityContext"],
            json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                   "capabilities": {"drop": ["ALL"]}})
        );
        assert_eq!(
            pod["volumes"],
            json!([
                {"name": "workspace", "emptyDir": {}},
                {"name": "tmp-data", "emptyDir": {}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-data", "readOnly": true}},
            ])
        );
    }

    #[test]
    fn a_bare_task_gets_no_empty_fields() {
        let mut r = request();
        r.command.clear();
        r.args.clear();
        r.node_selector.clear();
        r.tolerations.clear();
        r.volumes.clear();
        r.active_deadline_seconds = None;
        r.requests = Resources::ZERO;
        r.limits = Resources::ZERO;
        let job = serde_json::to_value(build(&r)).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        for absent in ["nodeSelector", "tolerations"] {
            assert!(pod.get(absent).is_none(), "{absent}: {pod}");
        }
        let c = &pod["containers"][0];
        assert!(c.get("command").is_none() && c.get("args").is_none(), "{c}");
        assert_eq!(c["resources"], json!({"requests": {}}));
        assert!(job["spec"].get("activeDeadlineSeconds").is_none());
    }
}
