//! Inline routing: ingest routes a notification naming a few users in the
//! commit that accepts it (crate::routing::inline), publishing delivery
//! messages in place of the routing message. What goes to the router
//! instead, and how a notification stranded between the commit and the
//! publish is recovered without a second send.

use std::time::Duration;

use herald::{
    broker::Publisher,
    db::keys::Scope,
    model::{Category, Channel, Lane, TenantId, message::DeliveryMessage},
};
use herald_tests::{Client, TestEnv};
use lapin::options::BasicGetOptions;
use reqwest::Method;
use serde_json::{Value, json};

async fn put_user(client: &Client, id: &str, profile: Value) {
    let (status, body) = client
        .json(Method::PUT, &format!("/v1/users/{id}"), Some(profile))
        .await;
    assert!(status == 200 || status == 201, "{body}");
}

async fn send(client: &Client, body: Value) -> String {
    let (status, resp) = client
        .json(Method::POST, "/v1/notifications", Some(body))
        .await;
    assert_eq!(status, 202, "{resp}");
    resp["id"].as_str().expect("id").to_owned()
}

fn email(category: &str, to: Value) -> Value {
    json!({"category": category, "to": to,
           "content": {"email": {"subject": "Hi", "text": "Hello"}}})
}

async fn status_of(env: &TestEnv, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .expect("row")
}

async fn routed(env: &TestEnv, id: &str) {
    env.eventually(Duration::from_secs(20), || async {
        (status_of(env, id).await == "routed").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{id} was not marked routed"));
}

async fn drain(env: &TestEnv, queue: &str) -> Vec<DeliveryMessage> {
    let broker = env.broker().await;
    let ch = broker.channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(serde_json::from_slice(&msg.delivery.data).unwrap());
    }
    broker.close().await;
    out
}

/// With no router running: a short user list is routed by the time the 202
/// arrives (its deliveries stored, their messages on the delivery queue of
/// its lane, nothing on the routing queue) and is marked `routed` moments
/// later. A topic, a longer list and a category the tenant caps go to the
/// router, which routes them once it runs and leaves the inline-routed
/// notification alone. Switched off, every notification goes to the router.
#[tokio::test]
async fn short_lists_are_routed_in_the_accepting_commit_and_the_rest_go_to_the_router() {
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    // Set before the first send: ingest reads the tenant's caps as the
    // router does (cached for seconds).
    herald::db::tenants::set_cap(
        &env.pool,
        &TenantId::parse("acme").unwrap(),
        &Category::parse("promo").unwrap(),
        Channel::Email,
        Some(herald::routing::caps::Cap {
            max: 5,
            per_seconds: 3600,
        }),
    )
    .await
    .unwrap();
    let ingest = env.spawn_ingest().await;
    let client = Client::new(&ingest, &key);
    for user in ["u-1", "u-2"] {
        put_user(
            &client,
            user,
            json!({"email": format!("{user}@example.com")}),
        )
        .await;
    }
    let (status, body) = client
        .json(Method::PUT, "/v1/topics/news/subscribers/u-1", None)
        .await;
    assert!((200..300).contains(&status), "{body}");
    let names = env.names();
    let route_normal = names.route_queue(Lane::Normal);
    let email_normal = names.delivery_queue(Channel::Email, Lane::Normal);

    let inline = send(&client, email("social", json!({"users": ["u-1", "u-2"]}))).await;
    // Stored and published before the 202.
    let (_, body) = client
        .json(Method::GET, &format!("/v1/notifications/{inline}"), None)
        .await;
    assert_eq!(body["counts"], json!({"pending": 2}), "{body}");
    assert_eq!(env.queue_depth(&email_normal).await, 2, "both published");
    assert_eq!(
        env.queue_depth(&route_normal).await,
        0,
        "no routing message"
    );
    routed(&env, &inline).await;

    // `high` is published to `high`'s delivery queue.
    let mut code = email("login", json!({"users": ["u-2"]}));
    code["priority"] = json!("high");
    let code = send(&client, code).await;
    let email_high = names.delivery_queue(Channel::Email, Lane::High);
    let msgs = drain(&env, &email_high).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].notification_id.to_string(), code);
    assert_eq!(msgs[0].lane, Lane::High);

    // To the router: a topic, a capped category, eleven users.
    let topic = send(&client, email("social", json!({"topic": "news"}))).await;
    let capped = send(&client, email("promo", json!({"users": ["u-1"]}))).await;
    let eleven: Vec<String> = (0..11).map(|i| format!("x-{i}")).collect();
    let long = send(&client, email("social", json!({"users": eleven}))).await;
    for id in [&topic, &capped, &long] {
        assert_eq!(status_of(&env, id).await, "accepted", "{id}");
    }
    assert_eq!(env.queue_depth(&route_normal).await, 3);
    assert_eq!(env.queue_depth(&email_normal).await, 2);
    ingest.stop().await;

    // Switched off, one user goes to the router too.
    let ingest = env
        .spawn_ingest_with(|c| c.inline_routing_max_users = 0)
        .await;
    let client = Client::new(&ingest, &key);
    let queued = send(&client, email("social", json!({"users": ["u-2"]}))).await;
    assert_eq!(status_of(&env, &queued).await, "accepted");
    assert_eq!(env.queue_depth(&route_normal).await, 4);

    // The router routes what was left to it, and only that.
    let router = env.spawn_router().await;
    for id in [&topic, &capped, &long, &queued] {
        routed(&env, id).await;
    }
    let msgs = drain(&env, &email_normal).await;
    let mut per_notification = std::collections::BTreeMap::<String, usize>::new();
    for m in &msgs {
        *per_notification
            .entry(m.notification_id.to_string())
            .or_default() += 1;
    }
    let expected: std::collections::BTreeMap<String, usize> = [
        (inline.clone(), 2),
        (topic.clone(), 1),
        (capped.clone(), 1),
        (queued.clone(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        per_notification, expected,
        "the unknown users get no message"
    );
    let capped_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM frequency_events WHERE notification_id = $1::uuid",
    )
    .bind(&capped)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(capped_events, 1, "the capped send counted by the router");
    router.stop().await;
    ingest.stop().await;
}

/// Ingest dies between the commit and the publish of an inline-routed
/// notification (here: its delivery message never reached the queue and
/// its `routed` mark was never written). After the grace, the outbox relay
/// hands it to the router, which publishes the stored pending delivery, under
/// its stored id, once; a second relay pass finds nothing.
#[tokio::test]
async fn an_inline_routed_notification_stranded_before_its_publish_is_recovered_once() {
    let env = TestEnv::new().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let ingest = env.spawn_ingest().await;
    let client = Client::new(&ingest, &key);
    put_user(&client, "u-1", json!({"email": "u-1@example.com"})).await;
    let id = send(&client, email("social", json!({"users": ["u-1"]}))).await;
    routed(&env, &id).await;
    ingest.stop().await;
    let names = env.names();
    let email_normal = names.delivery_queue(Channel::Email, Lane::Normal);
    assert_eq!(drain(&env, &email_normal).await.len(), 1);
    sqlx::query(
        "UPDATE notifications SET status = 'accepted', routed_at = NULL WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&env.pool)
    .await
    .unwrap();
    let stored: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].1, "pending");

    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let relayed = herald::intake::relay::pass(&env.pool, &publisher, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(relayed, 1);
    let router = env.spawn_router().await;
    routed(&env, &id).await;
    let msgs = env
        .eventually(Duration::from_secs(10), || async {
            let msgs = drain(&env, &email_normal).await;
            (!msgs.is_empty()).then_some(msgs)
        })
        .await
        .expect("the pending delivery published again");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].delivery_id, stored[0].0, "the stored delivery");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1, "no second delivery row");
    let again = herald::intake::relay::pass(&env.pool, &publisher, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again, 0, "routed: nothing left for the relay");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(drain(&env, &email_normal).await.is_empty());
    broker.close().await;
    router.stop().await;
}
