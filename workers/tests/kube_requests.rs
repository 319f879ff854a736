//! The exact requests `KubeCluster` sends, and how it takes the API's refusals (409, 404,
//! 500), on a mock service in place of the API server (tower-test).

use berth_core::Resources;
use berth_workers::k8s::KubeCluster;
use berth_workers::{Cluster, ClusterError, JobRequest};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;
use uuid::Uuid;

fn request() -> JobRequest {
    let task_id = Uuid::from_u128(0xabc);
    JobRequest {
        name: JobRequest::job_name(task_id, 2),
        namespace: "tenant-acme".into(),
        task_id,
        tenant_id: Uuid::from_u128(2),
        user_id: Uuid::from_u128(3),
        attempt: 2,
        node: "node-1".into(),
        image: "busybox:1.36".into(),
        command: vec!["sh".into(), "-c".into(), "echo hi".into()],
        args: vec![],
        env: Default::default(),
        labels: Default::default(),
        requests: Resources::new(500, 1 << 30, 0),
        limits: Resources::new(500, 1 << 30, 0),
        node_selector: Default::default(),
        tolerations: vec![],
        task_name: "hello".into(),
        priority: 0,
        created_at: "2026-12-04T10:00:00Z".parse().unwrap(),
        active_deadline_seconds: None,
        volumes: vec![],
    }
}

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn mocked() -> (KubeCluster, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (KubeCluster::new(kube::Client::new(service, "default")), handle)
}

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("mock {reason}"),
                      "reason": reason, "code": code.as_u16()});
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

/// The next request: its method, path and query, and JSON body.
async fn next(handle: &mut Handle) -> (Method, String, Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = handle.next_request().await.expect("a request");
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (parts.method, parts.uri.path_and_query().unwrap().to_string(), value, send)
}

#[tokio::test]
async fn a_job_is_one_post_of_the_built_job_and_already_exists_is_success() {
    let (cluster, mut handle) = mocked();
    let req = request();
    let call = tokio::spawn(async move { cluster.create_job(&req).await });
    let (method, path, body, send) = next(&mut handle).await;
    assert_eq!((method, path.as_str()), (Method::POST, "/apis/batch/v1/namespaces/tenant-acme/jobs?"));
    assert_eq!(body, serde_json::to_value(berth_workers::job::build(&request())).unwrap());
    send.send_response(status(StatusCode::CONFLICT, "AlreadyExists"));
    call.await.unwrap().expect("409 AlreadyExists: an earlier try made it");
}

#[tokio::test]
async fn a_refused_job_is_an_error_that_says_why() {
    let (cluster, mut handle) = mocked();
    let call = tokio::spawn(async move { cluster.create_job(&request()).await });
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
    match call.await.unwrap() {
        Err(ClusterError::JobCreateFailed { job, message }) => {
            assert_eq!(job, format!("task-{}-2", Uuid::from_u128(0xabc)));
            assert!(message.contains("mock InternalError"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A conflict that is not AlreadyExists (say, a quota race) is no success either.
    let (cluster, mut handle) = mocked();
    let call = tokio::spawn(async move { cluster.create_job(&request()).await });
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(status(StatusCode::CONFLICT, "Conflict"));
    assert!(matches!(call.await.unwrap(), Err(ClusterError::JobCreateFailed { .. })));
}

#[tokio::test]
async fn a_stop_deletes_in_the_foreground_and_a_missing_job_is_success() {
    let (cluster, mut handle) = mocked();
    let call = tokio::spawn(async move { cluster.delete_job("tenant-acme", "task-x-0").await });
    let (method, path, body, send) = next(&mut handle).await;
    assert_eq!((method, path.as_str()), (Method::DELETE, "/apis/batch/v1/namespaces/tenant-acme/jobs/task-x-0?"));
    assert_eq!(body["propagationPolicy"], "Foreground", "{body}");
    send.send_response(status(StatusCode::NOT_FOUND, "NotFound"));
    call.await.unwrap().expect("404: already gone");

    let (cluster, mut handle) = mocked();
    let call = tokio::spawn(async move { cluster.delete_job("tenant-acme", "task-x-0").await });
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
    assert!(matches!(call.await.unwrap(), Err(ClusterError::JobDeleteFailed { .. })));
}

/// A pod watch whose resourceVersion expired (410 Gone) starts over from a fresh list,
/// rather than stopping: the executor keeps hearing of its pods.
#[tokio::test]
async fn an_expired_watch_lists_again() {
    let (cluster, mut handle) = mocked();
    let mut events = cluster.take_events().unwrap();
    let pod = json!({"metadata": {"name": "p", "namespace": "tenant-acme", "resourceVersion": "7",
        "labels": {"app": "compute-platform", "compute-platform/component": "task-runner",
                   "compute-platform/task-id": Uuid::from_u128(0xabc).to_string(), "compute-platform/attempt": "0"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "task-container", "image": "busybox"}]},
        "status": {"phase": "Running", "startTime": "2026-12-04T10:00:00Z"}});
    let list = |items: Vec<Value>| {
        let body =
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": items});
        Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
    };
    let mut lists = 0;
    let mut running = 0;
    // The pod watcher and the Job watcher share the mock: answer each by its path.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(8);
    while running < 2 {
        assert!(tokio::time::Instant::now() < deadline, "lists {lists}, running {running}");
        tokio::select! {
            r = next(&mut handle) => {
                let (_, path, _, send) = r;
                if path.starts_with("/api/v1/pods?") && !path.contains("watch=true") {
                    lists += 1;
                    send.send_response(list(vec![pod.clone()]));
                } else if path.starts_with("/api/v1/pods?") {
                    // The watch from the list's version: expired, said as the API server
                    // says it, an ERROR event in the watch stream.
                    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": "too old resource version: 10 (12)"}});
                    let body = format!("{gone}\n");
                    send.send_response(Response::builder().body(Body::from(body.into_bytes())).unwrap());
                } else if path.contains("/log?") {
                    send.send_response(Response::builder().body(Body::empty()).unwrap());
                } else {
                    // The Job watcher: nothing to say.
                    send.send_response(status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
                }
            }
            e = events.recv() => {
                if matches!(e.unwrap().phase, berth_workers::JobPhase::Running { .. }) {
                    running += 1;
                }
            }
        }
    }
    assert!(lists >= 2, "listed again after the 410: {lists}");
}
