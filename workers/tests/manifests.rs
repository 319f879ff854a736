//! Every manifest under `deploy/kubernetes/` parses into k8s-openapi's types (so a typo in a
//! field name fails here, not at `kubectl apply`), and the executor's ClusterRole grants
//! exactly what the Kubernetes implementation calls (`k8s::PERMISSIONS`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn documents() -> Vec<(String, serde_json::Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let v = serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path.display().to_string(), v));
            }
        }
    }
    assert!(!out.is_empty());
    out
}

/// Parses `v` as `T`, refusing fields `T` does not have.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(at: &str, v: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    // What k8s-openapi does not know it drops: a round trip that loses a field is a typo.
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, v, "{at}: a field k8s-openapi does not know");
    t
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    for (at, v) in documents() {
        match v["kind"].as_str().unwrap_or_default() {
            "Namespace" => drop(strict::<Namespace>(&at, &v)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(&at, &v)),
            "ClusterRole" => drop(strict::<ClusterRole>(&at, &v)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&at, &v)),
            other => panic!("{at}: no test type for kind {other:?}"),
        }
    }
}

#[test]
fn the_executor_role_grants_exactly_what_the_code_calls() {
    let role = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "ClusterRole" && v["metadata"]["name"] == "berth-executor")
        .map(|(at, v)| strict::<ClusterRole>(&at, &v))
        .expect("the berth-executor ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = berth_workers::k8s::PERMISSIONS
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect();
    assert_eq!(granted, used);
}
