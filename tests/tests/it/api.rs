//! The HTTP API: every endpoint's happy path, every error status, tenant
//! isolation and idempotency.

use herald::db::keys::Scope;
use herald_tests::{Client, TestEnv};
use reqwest::Method;
use serde_json::{Value, json};

fn email_notification(users: &[&str]) -> Value {
    json!({
        "category": "order.shipped",
        "to": {"users": users},
        "content": {"email": {"subject": "Shipped", "text": "Hi {{name}}, order {{order_id}}"}},
        "data": {"order_id": "A-991"}
    })
}

/// Ingest with inline routing off: these tests look at what ingest itself
/// makes durable for the router (the row, the routing message on the
/// broker, the idempotency record). Inline routing has its tests in
/// inline_routing.rs.
async fn setup() -> (TestEnv, herald_tests::Spawned, Client) {
    let env = TestEnv::new().await;
    let app = env
        .spawn_ingest_with(|c| c.inline_routing_max_users = 0)
        .await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&app, &key);
    (env, app, client)
}

#[tokio::test]
async fn send_is_accepted_durable_and_queryable() {
    let (env, app, client) = setup().await;
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .json(&email_notification(&["u-1", "u-2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/notifications/{id}"));

    // Durable before the 202: in PostgreSQL and on the broker; the outbox
    // mark follows within milliseconds (batched).
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM notifications WHERE id = $1::uuid)")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(exists);
    env.eventually(std::time::Duration::from_secs(5), || async {
        let published: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT published_at FROM notifications WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        published.map(|_| ())
    })
    .await
    .expect("marked published");
    assert_eq!(
        env.queue_depth(&env.names().route_queue(herald::model::Lane::Normal))
            .await,
        1
    );

    let (status, body) = client.json(Method::GET, &location, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], id);
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["deliveries"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn priority_picks_the_router_lane() {
    let (env, app, client) = setup().await;
    let mut n = email_notification(&["u-1"]);
    n["priority"] = json!("high");
    let (status, _) = client
        .json(Method::POST, "/v1/notifications", Some(n))
        .await;
    assert_eq!(status, 202);
    n = email_notification(&["u-1"]);
    n["priority"] = json!("bulk");
    client
        .json(Method::POST, "/v1/notifications", Some(n))
        .await;
    use herald::model::Lane;
    assert_eq!(
        env.queue_depth(&env.names().route_queue(Lane::High)).await,
        1
    );
    assert_eq!(
        env.queue_depth(&env.names().route_queue(Lane::Bulk)).await,
        1
    );
    assert_eq!(
        env.queue_depth(&env.names().route_queue(Lane::Normal))
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_requests_get_problem_json_with_field_paths() {
    let (_env, app, client) = setup().await;
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .json(&json!({"to": {"users": ["ok", "not ok"]}, "priority": "urgent", "content": {"sms": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 422);
    assert_eq!(body["type"], "/problems/invalid-request");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["category", "to.users[1]", "priority", "content.sms.text"]
    );

    // Too many recipients, a bad idempotency key, unknown fields, malformed JSON.
    let users: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let (status, body) = client
        .json(
            Method::POST,
            "/v1/notifications",
            Some(email_notification(&users)),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "to.users");
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .header("idempotency-key", "k".repeat(256))
        .json(&email_notification(&["u"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let (status, body) = client
        .json(
            Method::POST,
            "/v1/notifications",
            Some(json!({"category": "x", "colour": 1})),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

#[tokio::test]
async fn auth_errors_401_403() {
    let env = TestEnv::new().await;
    let app = env.spawn_ingest().await;
    let send_only = env.key("acme", &[Scope::Send]).await;
    let manage_only = env.key("acme", &[Scope::Manage]).await;
    let http = reqwest::Client::new();

    let resp = http
        .post(app.url("/v1/notifications"))
        .json(&email_notification(&["u"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = http
        .post(app.url("/v1/notifications"))
        .bearer_auth("hk_nonsense")
        .json(&email_notification(&["u"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let (status, body) = Client::new(&app, &send_only)
        .json(Method::PUT, "/v1/users/u-1", Some(json!({"name": "A"})))
        .await;
    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains("manage"));
    let (status, _) = Client::new(&app, &manage_only)
        .json(
            Method::POST,
            "/v1/notifications",
            Some(email_notification(&["u"])),
        )
        .await;
    assert_eq!(status, 403);

    // A revoked key stops working (the cache is bypassed for a fresh process).
    let (id,): (uuid::Uuid,) = sqlx::query_as("SELECT id FROM api_keys WHERE scopes = '{send}'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    herald::db::keys::revoke(&env.pool, id).await.unwrap();
    let app2 = env.spawn_ingest().await;
    let (status, _) = Client::new(&app2, &send_only)
        .json(
            Method::POST,
            "/v1/notifications",
            Some(email_notification(&["u"])),
        )
        .await;
    assert_eq!(status, 401);
    app.stop().await;
    app2.stop().await;
}

#[tokio::test]
async fn body_limits_413_and_media_type_415() {
    let (_env, app, client) = setup().await;
    let big = "x".repeat(1024 * 1024 + 10);
    let mut n = email_notification(&["u"]);
    n["data"] = json!({ "blob": big });
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .json(&n)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    // A batch may be up to 8 MiB: 3 MiB passes the size check (and is then
    // judged on its content), 9 MiB does not.
    let item = |size: usize| {
        let mut n = email_notification(&["u"]);
        n["content"]["email"]["text"] = json!("y".repeat(size));
        n
    };
    let batch = json!({"notifications": vec![item(200_000); 15]});
    let (status, _) = client
        .json(Method::POST, "/v1/notifications/batch", Some(batch))
        .await;
    assert_eq!(status, 200);
    let batch = json!({"notifications": vec![item(250_000); 40]});
    let (status, _) = client
        .json(Method::POST, "/v1/notifications/batch", Some(batch))
        .await;
    assert_eq!(status, 413);

    let resp = client
        .req(Method::POST, "/v1/notifications")
        .header("content-type", "text/plain")
        .body(email_notification(&["u"]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

#[tokio::test]
async fn idempotent_replay_and_conflict() {
    let (env, app, client) = setup().await;
    let send = |key: &'static str, body: Value| {
        client
            .req(Method::POST, "/v1/notifications")
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("order-991", email_notification(&["u-1"]))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    // Same key, same body (keys in another order): the first answer again.
    let same = json!({
        "data": {"order_id": "A-991"},
        "content": {"email": {"text": "Hi {{name}}, order {{order_id}}", "subject": "Shipped"}},
        "to": {"users": ["u-1"]},
        "category": "order.shipped"
    });
    let again = send("order-991", same).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    // Same key, other body: 409.
    let other = send("order-991", email_notification(&["u-2"]))
        .await
        .unwrap();
    assert_eq!(other.status(), 409);
    assert_eq!(other.headers()["content-type"], "application/problem+json");

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(
        env.queue_depth(&env.names().route_queue(herald::model::Lane::Normal))
            .await,
        1
    );

    // Keys are per tenant: another tenant may use the same key.
    let other_key = env.key("globex", &[Scope::Send]).await;
    let resp = Client::new(&app, &other_key)
        .req(Method::POST, "/v1/notifications")
        .header("idempotency-key", "order-991")
        .json(&email_notification(&["u-2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // After 24 h the key is forgotten.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&env.pool)
        .await
        .unwrap();
    let later = send("order-991", email_notification(&["u-2"]))
        .await
        .unwrap();
    assert_eq!(later.status(), 202);
    let later: Value = later.json().await.unwrap();
    assert_ne!(later["id"], first["id"]);
    app.stop().await;
}

/// Clients retrying at once with the same keys, each round of tries in
/// another order, spread over group commits in flight together: every key
/// is committed once, every 202 for it names the same notification, and no
/// request fails.
#[tokio::test]
async fn racing_retries_commit_each_key_once() {
    let (env, app, client) = setup().await;
    const KEYS: usize = 40;
    const TRIES: usize = 4;
    let mut sends = Vec::new();
    for round in 0..TRIES {
        for i in 0..KEYS {
            // Each round sends the keys in another order.
            let k = if round % 2 == 0 { i } else { KEYS - 1 - i };
            let req = client
                .req(Method::POST, "/v1/notifications")
                .header("idempotency-key", format!("race-{k}"))
                .json(&email_notification(&["u-1"]));
            sends.push(async move { (k, req.send().await.unwrap()) });
        }
    }
    let answers = futures::future::join_all(sends).await;
    let mut ids: std::collections::HashMap<usize, std::collections::HashSet<String>> =
        Default::default();
    for (k, resp) in answers {
        let status = resp.status().as_u16();
        // 409 only as "still in progress" (a retry that waited a second
        // for its first try): never a server error.
        assert!(
            status == 202 || status == 409,
            "key {k}: {status} {}",
            resp.text().await.unwrap()
        );
        if status == 202 {
            let body: Value = resp.json().await.unwrap();
            ids.entry(k)
                .or_default()
                .insert(body["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), KEYS, "every key answered 202 at least once");
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(count, KEYS as i64);
    app.stop().await;
}

/// What an ingest killed between commit and confirm leaves behind: the
/// notification and its key committed, the key never marked complete. A
/// retry is told to come back (409 with `Retry-After`, a problem type of its
/// own) until the relay owns the notification, then gets the first answer.
#[tokio::test]
async fn a_key_whose_first_request_died_mid_way_answers_retry_later_then_the_first_answer() {
    let (env, app, client) = setup().await;
    let send = || {
        client
            .req(Method::POST, "/v1/notifications")
            .header("idempotency-key", "order-992")
            .json(&email_notification(&["u-1"]))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The key is marked complete just after the answer; undo that once done.
    herald_tests::faults::wait_for(
        "the key marked complete",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(10),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT completed_at IS NOT NULL FROM idempotency_keys WHERE key = 'order-992'",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap()
            .then_some(())
        },
    )
    .await;
    sqlx::query("UPDATE idempotency_keys SET completed_at = NULL")
        .execute(&env.pool)
        .await
        .unwrap();

    let waiting = send().await.unwrap();
    assert_eq!(waiting.status(), 409);
    assert_eq!(waiting.headers()["retry-after"], "1");
    let problem: Value = waiting.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/key-in-progress");
    assert_eq!(problem["status"], 409);

    // Past the relay's grace the relay owns it: the first answer, replayed.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '31 seconds'")
        .execute(&env.pool)
        .await
        .unwrap();
    let settled = send().await.unwrap();
    assert_eq!(settled.status(), 202);
    assert_eq!(settled.headers()["idempotent-replayed"], "true");
    let settled: Value = settled.json().await.unwrap();
    assert_eq!(settled["id"], first["id"]);

    // A key reused with another body is a plain conflict: no Retry-After.
    let other = client
        .req(Method::POST, "/v1/notifications")
        .header("idempotency-key", "order-992")
        .json(&email_notification(&["u-2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 409);
    assert!(other.headers().get("retry-after").is_none());
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/conflict");
    app.stop().await;
}

#[tokio::test]
async fn batch_answers_each_item_in_order() {
    let (env, app, client) = setup().await;
    let batch = json!({"notifications": [
        email_notification(&["u-1"]),
        {"category": "x", "to": {"users": []}, "content": {"sms": {"text": "hi"}}},
        email_notification(&["u-2"]),
    ]});
    let resp = client
        .req(Method::POST, "/v1/notifications/batch")
        .header("idempotency-key", "batch-1")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[1]["status"], 422);
    assert_eq!(results[1]["errors"][0]["field"], "to.users");
    assert_eq!(results[2]["status"], 202);
    assert_eq!(
        env.queue_depth(&env.names().route_queue(herald::model::Lane::Normal))
            .await,
        2
    );

    let replay = client
        .req(Method::POST, "/v1/notifications/batch")
        .header("idempotency-key", "batch-1")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay, body);

    let (status, body) = client
        .json(
            Method::POST,
            "/v1/notifications/batch",
            Some(json!({"notifications": []})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "notifications");
    let many = json!({"notifications": vec![email_notification(&["u"]); 501]});
    let (status, _) = client
        .json(Method::POST, "/v1/notifications/batch", Some(many))
        .await;
    assert_eq!(status, 422);
    app.stop().await;
}

#[tokio::test]
async fn users_devices_preferences_topics() {
    let (_env, app, client) = setup().await;
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/users/u-1",
            Some(json!({"name": "Ada", "email": "ada@example.com", "phone": "+14155550100", "locale": "en-GB", "timezone": "Europe/London"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["email"], "ada@example.com");
    let (status, _) = client
        .json(
            Method::PUT,
            "/v1/users/u-1",
            Some(json!({"name": "Ada L."})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/users/u-2",
            Some(json!({"email": "nope", "phone": "555", "timezone": "Mars/Base"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);

    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/users/u-1/devices/tok-abcdefghijklmnop",
            Some(json!({"platform": "fcm"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = client
        .json(
            Method::PUT,
            "/v1/users/u-1/devices/tok-2",
            Some(json!({"platform": "blackberry"})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = client
        .json(
            Method::PUT,
            "/v1/users/nobody/devices/tok-3",
            Some(json!({"platform": "apns"})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = client.json(Method::GET, "/v1/users/u-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "Ada L.");
    assert_eq!(body["devices"][0]["platform"], "fcm");
    assert_eq!(body["devices"][0]["token"], "tok-…mnop");

    let (status, body) = client
        .json(Method::GET, "/v1/users/u-1/preferences", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["channels"],
        json!({"email": true, "push": true, "sms": true})
    );
    let prefs = json!({
        "channels": {"sms": false},
        "categories": {"marketing": {"email": false, "push": false}},
        "quiet_hours": {"start": "22:00", "end": "07:00"}
    });
    let (status, _) = client
        .json(Method::PUT, "/v1/users/u-1/preferences", Some(prefs))
        .await;
    assert_eq!(status, 200);
    let (_, body) = client
        .json(Method::GET, "/v1/users/u-1/preferences", None)
        .await;
    assert_eq!(body["channels"]["sms"], false);
    assert_eq!(body["categories"]["marketing"]["email"], false);
    assert_eq!(body["quiet_hours"]["start"], "22:00");
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/users/u-1/preferences",
            Some(json!({"quiet_hours": {"start": "25:00", "end": "07:00"}})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "quiet_hours.start");

    let (status, _) = client
        .json(Method::PUT, "/v1/topics/launch/subscribers/u-1", None)
        .await;
    assert_eq!(status, 201);
    let (status, _) = client
        .json(Method::PUT, "/v1/topics/launch/subscribers/u-1", None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = client
        .json(Method::PUT, "/v1/topics/launch/subscribers/ghost", None)
        .await;
    assert_eq!(status, 404);
    let (_, body) = client.json(Method::GET, "/v1/topics/launch", None).await;
    assert_eq!(body["subscribers"], 1);

    let (status, _) = client
        .json(
            Method::DELETE,
            "/v1/users/u-1/devices/tok-abcdefghijklmnop",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = client
        .json(
            Method::DELETE,
            "/v1/users/u-1/devices/tok-abcdefghijklmnop",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = client
        .json(Method::DELETE, "/v1/topics/launch/subscribers/u-1", None)
        .await;
    assert_eq!(status, 204);
    client
        .json(Method::PUT, "/v1/topics/launch/subscribers/u-1", None)
        .await;

    // Erasing a user removes their devices, preferences and subscriptions.
    client
        .json(
            Method::PUT,
            "/v1/users/u-1/devices/tok-x",
            Some(json!({"platform": "apns"})),
        )
        .await;
    let (status, _) = client.json(Method::DELETE, "/v1/users/u-1", None).await;
    assert_eq!(status, 204);
    let (status, _) = client.json(Method::GET, "/v1/users/u-1", None).await;
    assert_eq!(status, 404);
    let (_, body) = client.json(Method::GET, "/v1/topics/launch", None).await;
    assert_eq!(body["subscribers"], 0);
    let (status, _) = client
        .json(Method::GET, "/v1/users/u-1/preferences", None)
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated() {
    let (env, app, acme) = setup().await;
    let globex = Client::new(
        &app,
        &env.key("globex", &[Scope::Send, Scope::Manage]).await,
    );
    acme.json(
        Method::PUT,
        "/v1/users/u-1",
        Some(json!({"name": "Acme's"})),
    )
    .await;
    acme.json(Method::PUT, "/v1/topics/news/subscribers/u-1", None)
        .await;
    let (_, sent) = acme
        .json(
            Method::POST,
            "/v1/notifications",
            Some(email_notification(&["u-1"])),
        )
        .await;
    let path = format!("/v1/notifications/{}", sent["id"].as_str().unwrap());

    assert_eq!(globex.json(Method::GET, &path, None).await.0, 404);
    assert_eq!(globex.json(Method::GET, "/v1/users/u-1", None).await.0, 404);
    assert_eq!(
        globex
            .json(Method::GET, "/v1/users/u-1/preferences", None)
            .await
            .0,
        404
    );
    assert_eq!(
        globex.json(Method::DELETE, "/v1/users/u-1", None).await.0,
        404
    );
    assert_eq!(
        globex
            .json(
                Method::PUT,
                "/v1/users/u-1/devices/t",
                Some(json!({"platform": "fcm"}))
            )
            .await
            .0,
        404
    );
    assert_eq!(
        globex
            .json(Method::PUT, "/v1/topics/news/subscribers/u-1", None)
            .await
            .0,
        404
    );
    assert_eq!(
        globex.json(Method::GET, "/v1/topics/news", None).await.1["subscribers"],
        0
    );
    // globex's own user of the same id is a different user.
    assert_eq!(
        globex
            .json(
                Method::PUT,
                "/v1/users/u-1",
                Some(json!({"name": "Globex's"}))
            )
            .await
            .0,
        201
    );
    assert_eq!(
        acme.json(Method::GET, "/v1/users/u-1", None).await.1["name"],
        "Acme's"
    );
    // Unknown ids and malformed ids are 404 alike.
    assert_eq!(
        acme.json(Method::GET, "/v1/notifications/not-a-uuid", None)
            .await
            .0,
        404
    );
    assert_eq!(
        acme.json(Method::GET, "/v1/nothing-here", None).await.0,
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_429_with_retry_after() {
    let env = TestEnv::new().await;
    let app = env.spawn_ingest_with(|c| c.api_key_rate_per_sec = 5).await;
    let key = env.key("acme", &[Scope::Manage]).await;
    let other = env.key("acme", &[Scope::Manage]).await;
    let client = Client::new(&app, &key);
    let mut limited = None;
    for _ in 0..20 {
        let resp = client
            .req(Method::GET, "/v1/topics/t")
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("the 6th quick request is limited");
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // The limit is per key.
    let resp = Client::new(&app, &other)
        .req(Method::GET, "/v1/topics/t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn broker_down_is_503_and_nothing_is_kept() {
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send]).await;
    // Nothing listens on port 1: the broker is "down".
    let app = env
        .spawn_ingest_unready(|c| c.common.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into())
        .await;
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_ne!(body["broker"], "ok");

    let resp = Client::new(&app, &key)
        .req(Method::POST, "/v1/notifications")
        .header("idempotency-key", "k-1")
        .json(&email_notification(&["u-1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    // The problem says what to do, not how the internals failed.
    assert!(!body["detail"].as_str().unwrap().contains("127.0.0.1"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "an unconfirmed notification is withdrawn");
    // A user with an address: routed inline, its delivery withdrawn too.
    sqlx::query(
        "INSERT INTO users (tenant_id, id, email) VALUES ('acme', 'u-2', 'u-2@example.com')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let resp = Client::new(&app, &key)
        .req(Method::POST, "/v1/notifications")
        .json(&email_notification(&["u-2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM deliveries)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0, "nothing kept, deliveries included");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0, "the key is free for the client's retry");
    app.stop().await;
}

#[tokio::test]
async fn database_down_is_503() {
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send]).await;
    let app = env
        .spawn_ingest_unready(|c| {
            c.common.database_url = "postgres://postgres@127.0.0.1:1/herald".into()
        })
        .await;
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let resp = Client::new(&app, &key)
        .req(Method::POST, "/v1/notifications")
        .json(&email_notification(&["u-1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    app.stop().await;
}

#[tokio::test]
async fn health_ready_metrics() {
    let (_env, app, client) = setup().await;
    client.json(Method::GET, "/v1/topics/x", None).await;
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = reqwest::get(app.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "database": "ok", "broker": "ok"})
    );
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/topics/{topic}\""));
    app.stop().await;
}

#[tokio::test]
async fn status_reads_go_to_database_read_url_and_fall_back_to_the_primary() {
    let env = TestEnv::new().await;
    // A "replica" that has none of this environment's rows: another
    // migrated database, its connections named so they can be found.
    let replica = TestEnv::new().await;
    let name = format!("herald-read-{}", env.prefix);
    let read_url = format!("{}?application_name={name}", replica.database_url);
    let app = env
        .spawn_ingest_with(|c| c.common.database_read_url = Some(read_url))
        .await;
    let key = env.key("acme", &[Scope::Send]).await;
    let client = Client::new(&app, &key);
    let resp = client
        .req(Method::POST, "/v1/notifications")
        .json(&email_notification(&["u-1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Not on the replica (yet): answered from the primary, never a 404.
    let resp = client
        .req(Method::GET, &format!("/v1/notifications/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["id"], id.as_str());
    // The read went to the replica first.
    let on_replica: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
    )
    .bind(&name)
    .bind(replica.database_url.rsplit('/').next().unwrap())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(on_replica >= 1, "no connection of the read pool");
}
