//! The defects the property tests found, each pinned by a plain test.

use std::time::Duration;

use herald::{
    broker::{Headers, Outgoing, Publisher},
    db::keys::Scope,
};
use herald_tests::TestEnv;
use serde_json::{Value, json};

use super::{raw, valid_notification};

async fn problem_of(
    env_app: &herald_tests::Spawned,
    key: &str,
    method: &str,
    target: &str,
    body: &Value,
) -> (u16, Value) {
    let answer = raw::send(
        env_app.addr,
        method,
        target.as_bytes(),
        &[
            ("Authorization", format!("Bearer {key}").into_bytes()),
            ("Content-Type", b"application/json".to_vec()),
        ],
        body.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{method} {target}: {answer:?}"
    );
    (answer.status, serde_json::from_slice(&answer.body).unwrap())
}

#[tokio::test]
async fn odd_methods_paths_queries_and_nul_get_problems_not_500s() {
    let env = TestEnv::new().await;
    let admin_key = "admin-key-for-tests-0123456789";
    let app = env
        .spawn_ingest_with(|c| c.admin_api_key = Some(admin_key.to_owned().into()))
        .await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let empty = json!({});

    // NUL in a query filter reached PostgreSQL: 500.
    let (status, _) = problem_of(
        &app,
        admin_key,
        "GET",
        "/admin/api/dead-letters?tenant=a%00",
        &empty,
    )
    .await;
    assert_eq!(status, 400);

    // 405 was an empty body.
    let (status, body) =
        problem_of(&app, &key, "DELETE", "/v1/users/u-1/preferences", &empty).await;
    assert_eq!((status, body["status"].as_u64()), (405, Some(405)));
    // A path that is not UTF-8 once decoded was axum's plain-text 400.
    let (status, _) = problem_of(&app, &key, "GET", "/v1/users/%C0%AF", &empty).await;
    assert_eq!(status, 400);
    // NUL in a path reached PostgreSQL, which refused it: 500.
    let (status, _) = problem_of(&app, &key, "GET", "/v1/users/a%00b", &empty).await;
    assert_eq!(status, 404);
    let (status, _) = problem_of(
        &app,
        &key,
        "DELETE",
        "/v1/topics/t%00/subscribers/u",
        &empty,
    )
    .await;
    assert_eq!(status, 404);
    // A malformed query was axum's plain-text 400.
    let id = uuid::Uuid::now_v7();
    let (status, _) = problem_of(
        &app,
        &key,
        "GET",
        &format!("/v1/notifications/{id}?limit=many"),
        &empty,
    )
    .await;
    assert_eq!(status, 400);
    // NUL in a profile was a 500; in a notification a 503 (the jsonb insert
    // failed, taking every request of the same group insert with it).
    let (status, body) = problem_of(
        &app,
        &key,
        "PUT",
        "/v1/users/u-1",
        &json!({"name": "A\u{0}da"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "name");
    let mut n = valid_notification();
    n["data"]["order_id"] = json!("A-\u{0}991");
    let (status, body) = problem_of(&app, &key, "POST", "/v1/notifications", &n).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "data.order_id");
    app.stop().await;
}

#[tokio::test]
async fn hostile_events_are_dead_lettered_instead_of_stalling_ingest() {
    let env = TestEnv::new().await;
    env.key("acme", &[Scope::Send]).await;
    let ingest = env.spawn_ingest().await;
    let router = env.spawn_router().await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let publish = |tenant: &str, body: Vec<u8>, key: &str| {
        Outgoing::json(
            env.names().ingest_exchange(),
            tenant,
            body,
            Headers::default().str(Headers::IDEMPOTENCY_KEY, key),
        )
    };
    // An unknown field named by 300 KB: its error (path and message both
    // name it) could not travel in a header, the broker closed the
    // connection, and ingest stalled for everyone. Now the error is cut.
    let huge_key = serde_json::to_vec(&json!({ "x".repeat(300_000): 1 })).unwrap();
    publisher
        .publish(&publish("acme", huge_key, "huge-key"))
        .await
        .unwrap();
    // NUL in a header: the dead letter could not be archived and looped.
    publisher
        .publish(&publish("acme", b"not json".to_vec(), "nul\u{0}key"))
        .await
        .unwrap();
    // Over 1 MiB of valid JSON (whitespace): was accepted, unlike over HTTP.
    let mut padded = serde_json::to_vec(&valid_notification()).unwrap();
    padded.splice(1..1, std::iter::repeat_n(b' ', 1_100_000));
    publisher
        .publish(&publish("acme", padded, "padded"))
        .await
        .unwrap();
    // And a valid one behind them.
    let valid = serde_json::to_vec(&valid_notification()).unwrap();
    publisher
        .publish(&publish("acme", valid, "valid"))
        .await
        .unwrap();

    let errors: Vec<String> = env
        .eventually(Duration::from_secs(30), || async {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT last_error FROM dead_letters WHERE source = 'ingest' ORDER BY failed_at",
            )
            .fetch_all(&env.pool)
            .await
            .unwrap();
            (rows.len() == 3).then_some(rows)
        })
        .await
        .expect("three dead letters archived");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("xxxx") && e.ends_with("bytes)") && e.len() < 5000),
        "{:?}",
        errors.iter().map(|e| e.len()).collect::<Vec<_>>()
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("larger than the 1024 KiB limit"))
    );
    assert!(errors.iter().any(|e| e.contains("idempotency-key")));
    env.eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE idempotency_key = 'valid'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await
    .expect("the valid event is accepted");
    ingest.stop().await;
    router.stop().await;
    broker.close().await;
}

#[tokio::test]
async fn a_device_token_too_long_for_the_index_is_refused_not_a_500() {
    let env = TestEnv::new().await;
    let app = env.spawn_ingest().await;
    let key = env.key("acme", &[Scope::Manage]).await;
    let client = herald_tests::Client::new(&app, &key);
    let put = reqwest::Method::PUT;
    let (status, _) = client
        .json(put.clone(), "/v1/users/u-1", Some(json!({})))
        .await;
    assert_eq!(status, 201);
    // 4 KiB of hex: no btree entry holds it, and the insert failed (500).
    let token: String = (0..256u64)
        .map(|i| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let (status, problem) = problem_of(
        &app,
        &key,
        "PUT",
        &format!("/v1/users/u-1/devices/{token}"),
        &json!({"platform": "fcm"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "token");
    let path = format!("/v1/users/u-1/devices/{}", &token[..1024]);
    let (status, answer) = client
        .json(put, &path, Some(json!({"platform": "fcm"})))
        .await;
    assert_eq!(status, 201, "{answer}");
}
