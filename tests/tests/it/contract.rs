//! The running ingest answers as its own OpenAPI document says. Schemathesis,
//! written by nobody on this team, reads `/v1/openapi.json`, generates valid
//! and invalid requests for every operation and checks each answer: no 5xx,
//! a documented status, content type, headers and body.

use std::{path::PathBuf, process::Stdio, time::Instant};

use herald::db::keys::Scope;
use herald_tests::{Client, TestEnv, fakes::temp_path};
use reqwest::Method;
use serde_json::json;

/// The Schemathesis `scripts/install-test-tools` installs.
fn schemathesis() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/schemathesis/venv/bin/schemathesis")
}

/// Checks Schemathesis runs: status, content type, headers and body
/// against the document, and no server error.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// Runs Schemathesis over every operation, fails the test on any failure
/// or error, and answers how many cases it generated.
async fn run(binary: &PathBuf, url: &str, header: &str) -> u64 {
    // Its reports and cache go to a folder of their own, not the tree.
    let reports = temp_path("schemathesis");
    std::fs::create_dir_all(&reports).expect("report folder");
    let output = tokio::process::Command::new(binary)
        .current_dir(&reports)
        .arg("run")
        .arg(url)
        .args(["--checks", CHECKS])
        .args(["--header", header])
        // Bounded for a 2-core machine: a few dozen cases per operation and
        // phase, each request given 10 s. One worker: with two threads the
        // generator's parsing of its own source trips a CPython 3.11 bug
        // ("AST constructor recursion depth mismatch") and the run errors.
        .args(["--max-examples", "60", "--request-timeout", "10"])
        .args(["--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&reports);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "schemathesis found answers that break the document:\n{text}"
    );
    // "Test cases:\n  1234 generated, ..."
    text.lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_as_its_openapi_document_says() {
    let binary = schemathesis();
    assert!(
        binary.exists(),
        "Schemathesis is not installed at {}: run scripts/install-test-tools",
        binary.display()
    );
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let ingest = env.spawn_ingest().await;
    // What the document's examples name, so generated reads, updates and
    // deletes reach past "not found": a user, a device and a subscription.
    let client = Client::new(&ingest, &key);
    for (path, body) in [
        ("/v1/users/u-1", Some(json!({"name": "Ada"}))),
        (
            "/v1/users/u-1/devices/device-token-1",
            Some(json!({"platform": "fcm"})),
        ),
        ("/v1/topics/news/subscribers/u-1", None),
    ] {
        let (status, answer) = client.json(Method::PUT, path, body).await;
        assert_eq!(status, 201, "{path}: {answer}");
    }

    let url = ingest.url("/v1/openapi.json");
    let header = format!("Authorization: Bearer {key}");
    let started = Instant::now();
    let cases = run(&binary, &url, &header).await;
    println!(
        "schemathesis: {cases} cases in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    ingest.stop().await;
}
