//! The API against a fuzzer: schemathesis (PyPI, pinned in `scripts/schemathesis.sh`) reads
//! the served `/openapi.json` and sends every operation generated and boundary-case input,
//! valid and invalid, as a platform admin and as a plain user of another tenant.
//!
//! It fails on any 5xx, on a response that does not match its documented schema, status or
//! content type, and on a secured operation that answers without a valid token. Independently
//! of the fuzzer's own verdict, the server's request counter must show no 5xx at the end.
//!
//! Bounded: a fixed number of examples per operation and a fixed seed, so a run is a couple
//! of minutes and repeatable.

use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

use common::*;

/// What the fuzzer checks, beyond "no 5xx".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,ignored_auth";

fn fuzz(d: &Deployment, token: &str, who: &str, examples: u32) -> (bool, String) {
    let scratch = d.logs.join(format!("schemathesis-{who}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis.sh");
    let started = Instant::now();
    let out = Command::new(script)
        .current_dir(&scratch)
        .args(["run", &d.url("/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples.to_string()])
        .args(["--phases", "examples,coverage,fuzzing"])
        // Streams that end only with the task or the token: exercised by their own tests.
        .args(["--exclude-path", "/v1/events"])
        // Not `--max-time`: schemathesis 4.32.5 then waits out the whole limit.
        .args(["--request-timeout", "20"])
        // One worker: with two, hypothesis 6.170's lambda-source cache races ("AST constructor
        // recursion depth mismatch"), a fuzzer error that is not ours.
        .args(["--seed", "20261204", "--generation-database", "none", "--workers", "1"])
        .arg("--no-color")
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/schemathesis.sh");
    let text = format!(
        "{}{}\n({who}: {:.0?})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_yields_a_server_error_or_breaks_the_documented_contract() {
    let mut d = Deployment::new();
    d.spawn("dev", "dev");
    let http = reqwest::Client::new();
    d.wait_ready(&http).await;
    let admin = login(&http, &d, "admin", "admin").await;
    let demo = login(&http, &d, "demo", "demo").await;

    // The tenant user first: the platform admin's run may delete the demo tenant (it may).
    for (who, token, examples) in [("tenant-user", &demo, 10), ("platform-admin", &admin, 25)] {
        let (ok, report) = fuzz(&d, token, who, examples);
        assert!(ok, "schemathesis found problems as the {who}:\n{report}\n{}", d.logs_tail());
        let summary: Vec<&str> = report.lines().rev().take(8).collect();
        eprintln!("{}", summary.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }

    // The server's own count, whatever the fuzzer concluded.
    let metrics = http.get(d.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let errors: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("berth_http_requests_total{") && l.contains("status=\"5")).collect();
    assert!(errors.is_empty(), "5xx answered during the fuzz run:\n{}\n{}", errors.join("\n"), d.logs_tail());
    let total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("berth_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(total > 1000.0, "the fuzzer sent only {total} requests");
}
