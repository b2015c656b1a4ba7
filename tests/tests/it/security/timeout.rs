//! `API_REQUEST_TIMEOUT`: a request that cannot finish in time is answered
//! 503 problem+json with `Retry-After`, not left hanging; a send that has
//! begun committing is never cut off into a 503 that was in fact kept.

use sqlx::Connection;

use super::*;

async fn setup() -> (TestEnv, herald_tests::Spawned, Client) {
    let env = TestEnv::new().await;
    let app = env
        .spawn_ingest_with(|c| c.api_request_timeout = Duration::from_millis(500))
        .await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&app, &key);
    (env, app, client)
}

fn notification() -> Value {
    json!({"category": "security", "priority": "high", "to": {"users": ["u-1"]},
           "content": {"sms": {"text": "Code {{code}}"}}, "data": {"code": "123456"}})
}

async fn locked(env: &TestEnv, statement: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Notifications stored.
async fn stored(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_blocked_by_the_database_times_out_with_a_problem() {
    let (env, app, client) = setup().await;
    let (status, _) = client
        .json(Method::PUT, "/v1/users/u-1", Some(json!({"name": "Ada"})))
        .await;
    assert_eq!(status, 201);
    // Another transaction holds the user's row: the PUT waits for it.
    let mut holder = locked(
        &env,
        "SELECT * FROM users WHERE tenant_id = 'acme' AND id = 'u-1' FOR UPDATE",
    )
    .await;
    let started = std::time::Instant::now();
    let resp = client
        .req(Method::PUT, "/v1/users/u-1")
        .json(&json!({"name": "Grace"}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("answered, not hung");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered after the timeout, not the lock: {:?}",
        started.elapsed()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["type"], "/problems/timeout");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    // The service is fine afterwards.
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, _) = client.json(Method::GET, "/v1/users/u-1", None).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_send_timed_out_before_its_commit_keeps_nothing() {
    let (env, app, client) = setup().await;
    // An uncommitted claim of the same idempotency key: the send waits for it.
    let mut holder = locked(
        &env,
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response_status, response_body)
         VALUES ('acme', 'k-blocked', '\\x00', 202, '{}')",
    )
    .await;
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .header("idempotency-key", "k-blocked")
        .json(&notification())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("answered, not hung");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    // The abandoned transaction rolls back: no notification, no key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM idempotency_keys)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(kept, 0, "a 503 keeps nothing");
    // A retry with the same key goes through.
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .header("idempotency-key", "k-blocked")
        .json(&notification())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_send_past_its_commit_answers_what_happened() {
    let (env, app, client) = setup().await;
    // The table accepts no insert until released: the send has handed its
    // row to the group insert and waits on its commit.
    let mut holder = locked(&env, "LOCK TABLE notifications IN SHARE MODE").await;
    let send = tokio::spawn({
        let req = client
            .req(Method::POST, "/v1/notifications")
            .json(&notification())
            .timeout(Duration::from_secs(30));
        async move { req.send().await.expect("answered") }
    });
    // Well past the 500 ms timeout, still inside the grace a commit gets.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let resp = send.await.unwrap();
    assert_eq!(resp.status(), 202, "accepted, and answered as accepted");
    assert_eq!(stored(&env).await, 1);
    app.stop().await;
}

/// A key held by a transaction that does not finish (another request with
/// the same key, stuck) holds up only its own request: the group commit
/// waits for the key's lock at most a second (`lock_timeout`, sent with
/// its `BEGIN`), then commits the other sends without it.
#[tokio::test]
async fn a_key_held_elsewhere_does_not_hold_up_other_sends() {
    let env = TestEnv::new().await;
    let app = env
        .spawn_ingest_with(|c| c.api_request_timeout = Duration::from_secs(30))
        .await;
    let key = env.key("acme", &[Scope::Send]).await;
    let client = Client::new(&app, &key);
    let mut holder = locked(
        &env,
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response_status, response_body)
         VALUES ('acme', 'k-held', '\\x00', 202, '{}')",
    )
    .await;
    let keyed = tokio::spawn({
        let req = client
            .req(Method::POST, "/v1/notifications")
            .header("idempotency-key", "k-held")
            .json(&notification())
            .timeout(Duration::from_secs(30));
        async move { req.send().await.expect("answered") }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let plain = client
        .req(Method::POST, "/v1/notifications")
        .json(&notification())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(plain.status(), 202);
    assert!(
        took < Duration::from_secs(5),
        "the plain send waited for the held key: {took:?}"
    );
    assert!(!keyed.is_finished(), "the keyed send waits for its key");

    // The holder gives up: the keyed request goes through on its own.
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let keyed = keyed.await.unwrap();
    assert_eq!(keyed.status(), 202);
    assert_eq!(stored(&env).await, 2);
    app.stop().await;
}
