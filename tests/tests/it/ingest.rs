//! Durability of ingest, event-driven ingest and dead letters, the outbox
//! relay, the CLI and the binaries' lifecycle.

use std::{process::Stdio, time::Duration};

use herald::{
    broker::{Headers, Outgoing, Publisher},
    db::keys::Scope,
    model::Lane,
};
use herald_tests::{Client, TestEnv, binary};
use lapin::options::BasicGetOptions;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

/// source, error class, last error, tenant, payload.
type DeadRow = (String, String, String, Option<String>, Vec<u8>);

fn notification() -> Value {
    json!({
        "category": "security",
        "to": {"users": ["u-1"]},
        "priority": "high",
        "content": {"sms": {"text": "Your code is {{code}}"}},
        "data": {"code": "123456"}
    })
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process with this environment's configuration.
pub(crate) fn command(env: &TestEnv, name: &str) -> Command {
    let mut cmd = Command::new(binary(name));
    cmd.env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", herald_tests::amqp_url())
        .env("BROKER_PREFIX", &env.prefix)
        .env("RETRY_SCHEDULE", env.schedule.to_string())
        .env("LOG_FORMAT", "json")
        .kill_on_drop(true);
    cmd
}

pub(crate) async fn wait_ready(port: u16) {
    for _ in 0..300 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process on port {port} never became ready");
}

#[tokio::test]
async fn accepted_notification_survives_ingest_being_killed() {
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send]).await;
    let port = free_port();
    // The routing message is what a killed ingest must leave behind here:
    // inline routing off (inline_routing.rs covers the delivery messages it
    // publishes instead).
    let mut ingest = command(&env, "ingest")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("INLINE_ROUTING_MAX_USERS", "0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/notifications"))
        .bearer_auth(&key)
        .json(&notification())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // SIGKILL: no graceful anything.
    ingest.start_kill().unwrap();
    ingest.wait().await.unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let broker = env.broker().await;
    let ch = broker.channel().await.unwrap();
    let msg = ch
        .basic_get(
            env.names().route_queue(Lane::High).as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("the accepted notification is on the broker");
    let body: Value = serde_json::from_slice(&msg.delivery.data).unwrap();
    assert_eq!(body["notification_id"], id);
    assert_eq!(body["tenant_id"], "acme");
    let headers = msg.delivery.properties.headers().as_ref();
    assert_eq!(
        herald::broker::header_str(headers, Headers::NOTIFICATION).as_deref(),
        Some(id.as_str())
    );
    broker.close().await;
}

/// Routed inline, a one-time code's delivery message is on the broker when
/// the 202 arrives: a SIGKILL right after it loses nothing.
#[tokio::test]
async fn inline_routed_code_is_on_the_broker_when_ingest_is_killed_after_its_202() {
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send]).await;
    sqlx::query("INSERT INTO users (tenant_id, id, phone) VALUES ('acme', 'u-1', '+14155550100')")
        .execute(&env.pool)
        .await
        .unwrap();
    let port = free_port();
    let mut ingest = command(&env, "ingest")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/notifications"))
        .bearer_auth(&key)
        .json(&notification())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    ingest.start_kill().unwrap();
    ingest.wait().await.unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let broker = env.broker().await;
    let ch = broker.channel().await.unwrap();
    let msg = ch
        .basic_get(
            env.names()
                .delivery_queue(herald::model::Channel::Sms, Lane::High)
                .as_str()
                .into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("the code's delivery is on the broker");
    let body: Value = serde_json::from_slice(&msg.delivery.data).unwrap();
    assert_eq!(body["notification_id"], id);
    assert_eq!(body["destination"]["address"], "+14155550100");
    let stored: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE notification_id = $1::uuid AND status = 'pending'",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(body["delivery_id"], stored.to_string());
    assert_eq!(
        env.queue_depth(&env.names().route_queue(Lane::High)).await,
        0,
        "no routing message"
    );
    broker.close().await;
}

/// Ingest's marks: a routed mark sets `routed`, a published one only
/// `published_at`, a completed key its `completed_at`; and the statement is
/// planned once per connection, whatever the lengths of its arrays (before,
/// PostgreSQL planned it again on every call: a custom plan's estimate, with
/// the arrays' lengths known, was always below the generic plan's).
#[tokio::test]
async fn marks_set_what_they_name_and_are_planned_once() {
    let env = TestEnv::new().await;
    env.key("acme", &[Scope::Send]).await;
    let ids: Vec<uuid::Uuid> = (0..40).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, category, priority, request)
         SELECT id, 'acme', 'x', 'normal', '{}' FROM UNNEST($1::uuid[]) AS id",
    )
    .bind(&ids)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response_status, response_body)
         VALUES ('acme', 'k-1', '\\x00', 202, '{}')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let marks = herald::db::notifications::marks_pool(&env.pool, 1);
    let mut conn = marks.acquire().await.unwrap();
    // Twenty calls of 0 to 8 rows, routed and published ones mixed.
    let keys = [("acme".to_owned(), "k-1".to_owned())];
    let mut expected = std::collections::HashMap::new();
    let mut at = 0;
    for n in 1..=8 {
        let (routed, published) = ids[at..at + n].split_at(n / 2);
        let keys = if n == 8 { &keys[..] } else { &[] };
        herald::db::notifications::mark_published(&mut conn, published, routed, keys)
            .await
            .unwrap();
        expected.extend(routed.iter().map(|id| (*id, ("routed", true, false))));
        expected.extend(published.iter().map(|id| (*id, ("accepted", false, true))));
        at += n;
    }
    let absent = [uuid::Uuid::now_v7()];
    for _ in 0..12 {
        herald::db::notifications::mark_published(&mut conn, &[], &absent, &[])
            .await
            .unwrap();
    }
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements
          WHERE statement LIKE '%WITH marks AS%'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        (generic, custom),
        (20, 0),
        "every call runs the one generic plan"
    );

    let rows: Vec<(uuid::Uuid, String, bool, bool)> = sqlx::query_as(
        "SELECT id, status, routed_at IS NOT NULL, published_at IS NOT NULL
           FROM notifications WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for (id, status, routed_at, published_at) in rows {
        let want = expected
            .get(&id)
            .copied()
            .unwrap_or(("accepted", false, false));
        assert_eq!(
            (status.as_str(), routed_at, published_at),
            want,
            "notification {id}"
        );
    }
    let completed: bool = sqlx::query_scalar(
        "SELECT completed_at IS NOT NULL FROM idempotency_keys WHERE key = 'k-1'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(completed, "the completed key is marked");
}

#[tokio::test]
async fn relay_republishes_committed_but_unconfirmed_notifications() {
    let env = TestEnv::new().await;
    env.key("acme", &[Scope::Send]).await;
    // As if ingest died between commit and confirm.
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, category, priority, request, created_at)
         VALUES ($1, 'acme', 'x', 'bulk', '{}', now() - interval '1 minute')",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let n = herald::intake::relay::pass(&env.pool, &publisher, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        env.queue_depth(&env.names().route_queue(Lane::Bulk)).await,
        1
    );
    let published: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT published_at FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(published.is_some());
    // A second pass finds nothing; a fresh unconfirmed row is left to its own publish.
    assert_eq!(
        herald::intake::relay::pass(&env.pool, &publisher, Duration::from_secs(30))
            .await
            .unwrap(),
        0
    );
    broker.close().await;
}

async fn publish_ingest(
    env: &TestEnv,
    publisher: &Publisher,
    tenant: &str,
    body: &[u8],
    key: Option<&str>,
) {
    let mut headers = Headers::default();
    if let Some(key) = key {
        headers = headers.str(Headers::IDEMPOTENCY_KEY, key);
    }
    let msg = Outgoing::json(
        env.names().ingest_exchange(),
        tenant,
        body.to_vec(),
        headers,
    );
    publisher.publish(&msg).await.unwrap();
}

#[tokio::test]
async fn amqp_ingest_accepts_valid_and_dead_letters_invalid_with_reason() {
    let env = TestEnv::new().await;
    env.key("acme", &[Scope::Send]).await;
    let ingest = env.spawn_ingest().await;
    // The router runs the archiver that moves dead letters into PostgreSQL.
    let router = env.spawn_router().await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());

    let valid = serde_json::to_vec(&notification()).unwrap();
    publish_ingest(&env, &publisher, "acme", &valid, Some("evt-1")).await;
    publish_ingest(&env, &publisher, "acme", &valid, Some("evt-1")).await; // duplicate event
    publish_ingest(
        &env,
        &publisher,
        "acme",
        br#"{"category": "x", "to": {"users": ["a b"]}}"#,
        None,
    )
    .await;
    publish_ingest(&env, &publisher, "acme", b"not json at all", None).await;
    publish_ingest(&env, &publisher, "nobody", &valid, None).await;

    let rows = env
        .eventually(Duration::from_secs(20), || async {
            let rows: Vec<DeadRow> = sqlx::query_as(
                "SELECT source, error_class, last_error, tenant_id, payload FROM dead_letters ORDER BY last_error",
            )
            .fetch_all(&env.pool)
            .await
            .unwrap();
            (rows.len() >= 3).then_some(rows)
        })
        .await
        .expect("three dead letters archived");
    assert_eq!(rows.len(), 3);
    let errors: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("to.users[0]") && e.contains("content")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("not valid JSON")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("unknown tenant `nobody`")),
        "{errors:?}"
    );
    for (source, class, _, _, payload) in &rows {
        assert_eq!(source, "ingest");
        assert_eq!(class, "invalid");
        assert!(!payload.is_empty(), "the original payload is kept");
    }

    // The valid event was accepted once, despite being published twice.
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE tenant_id = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    assert_eq!(
        env.queue_depth(&env.names().dead_queue()).await,
        0,
        "archived and acked"
    );
    ingest.stop().await;
    router.stop().await;
    broker.close().await;
}

#[tokio::test]
async fn heraldctl_keys_create_is_scriptable() {
    let env = TestEnv::new().await;
    let out = command(&env, "heraldctl")
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "send,manage",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.strip_suffix('\n').expect("one line");
    assert!(
        key.starts_with("hk_") && key.len() == 67 && !key.contains(char::is_whitespace),
        "{stdout:?}"
    );

    let app = env.spawn_ingest().await;
    let client = Client::new(&app, key);
    assert_eq!(
        client
            .json(Method::PUT, "/v1/users/u-1", Some(json!({"name": "A"})))
            .await
            .0,
        201
    );
    assert_eq!(
        client
            .json(Method::POST, "/v1/notifications", Some(notification()))
            .await
            .0,
        202
    );

    // Failures exit non-zero with the reason on stderr and nothing on stdout.
    let out = command(&env, "heraldctl")
        .args(["keys", "create", "--tenant", "bad.tenant"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid tenant id"));
    let out = command(&env, "heraldctl")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .args(["keys", "create", "--tenant", "acme"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the database"));

    let out = command(&env, "heraldctl")
        .args(["keys", "list", "--json"])
        .output()
        .await
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(key),
        "keys are never listed"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_binary_starts_declares_serves_health_and_stops_on_sigterm() {
    let env = TestEnv::new().await;
    for name in [
        "ingest",
        "router",
        "worker-push",
        "worker-email",
        "worker-sms",
    ] {
        let port = free_port();
        let mut child = command(&env, name)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_ready(port).await;
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200, "{name}");
        assert_eq!(
            reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
        // SIGTERM: graceful shutdown, exit 0.
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "{name} exited with {status}");
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        // LOG_FORMAT=json: every line is a JSON object.
        assert!(
            out.lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()),
            "{name}: {out}"
        );
        assert!(out.contains("topology declared"), "{name}: {out}");
    }
    // The topology exists: every queue can be inspected.
    for queue in env.names().all_queues(&env.schedule) {
        env.queue_depth(&queue).await;
    }
}

/// Connections leave PostgreSQL to choose between custom and generic plans.
/// The risk of a generic plan is one made while the day's delivery partition
/// was empty (a sequential scan kept as the partition grows to millions of
/// rows). Forced generic plans, made against the test database's near-empty
/// partitions, must still find the hot path's rows by index.
#[tokio::test]
async fn generic_plans_of_the_hot_path_find_rows_by_index() {
    let env = TestEnv::new().await;
    let pool = herald::db::connect_lazy(&env.database_url, 1).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(mode, "auto");
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    // Each statement with the index condition its plan must use. On an empty
    // partition the primary key (created_at, id) and the fan-out key
    // (created_at, notification_id, ...) cost the same, so a lookup by id may
    // be planned on either: both start at the partition key. Once the
    // partition has rows, autoanalyze's new statistics invalidate the cached
    // plan and the next one is made by the primary key.
    let statements = [
        (
            "SELECT attempts, status FROM deliveries WHERE created_at = $1::timestamptz AND id = $2::uuid",
            "created_at = $1",
        ),
        (
            "UPDATE deliveries SET updated_at = now() WHERE created_at = $1::timestamptz AND id = $2::uuid",
            "created_at = $1",
        ),
        (
            "SELECT id FROM deliveries WHERE notification_id = $2::uuid AND $1::timestamptz IS NOT NULL",
            "notification_id = $2",
        ),
        (
            "SELECT status FROM notifications WHERE id = $2::uuid AND $1::timestamptz IS NOT NULL",
            "id = $2",
        ),
    ];
    for (n, (statement, condition)) in statements.iter().enumerate() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PREPARE hot{n} AS {statement}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE hot{n}(now(), '00000000-0000-7000-8000-000000000000')"
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{statement}:\n{plan}");
        // Every scan of a table is by index, on the key the statement names.
        let scans = plan.matches(" Scan ").count();
        let by_key = plan
            .lines()
            .filter(|l| l.contains("Index Cond:") && l.contains(condition))
            .count();
        assert!(scans > 0 && by_key == scans, "{statement}:\n{plan}");
    }
    // Leave nothing behind on the pooled connection.
    conn.detach();
}
