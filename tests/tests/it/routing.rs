//! The router: each rule, their order, topics in pages, redelivery without
//! duplicates, held deliveries released on time, and the status API.

use std::time::Duration;

use herald::{
    db::keys::Scope,
    model::{Category, Channel, Lane, TenantId, message::DeliveryMessage},
};
use herald_tests::{Client, Spawned, TestEnv};
use lapin::options::BasicGetOptions;
use reqwest::Method;
use serde_json::{Value, json};

struct Setup {
    env: TestEnv,
    ingest: Spawned,
    router: Spawned,
    client: Client,
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

/// [`setup`] with ingest's configuration adjusted by `tweak`.
async fn setup_with(tweak: impl FnOnce(&mut herald::api::IngestConfig)) -> Setup {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest_with(tweak).await;
    let router = env.spawn_router().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    Setup {
        env,
        ingest,
        router,
        client,
    }
}

impl Setup {
    async fn user(&self, id: &str, profile: Value) {
        let (status, body) = self
            .client
            .json(Method::PUT, &format!("/v1/users/{id}"), Some(profile))
            .await;
        assert!(status == 200 || status == 201, "{body}");
    }

    async fn send(&self, body: Value) -> String {
        let (status, resp) = self
            .client
            .json(Method::POST, "/v1/notifications", Some(body))
            .await;
        assert_eq!(status, 202, "{resp}");
        resp["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the notification is routed and answers its status document.
    async fn routed(&self, id: &str) -> Value {
        let path = format!("/v1/notifications/{id}?limit=500");
        self.env
            .eventually(Duration::from_secs(20), || async {
                let (_, body) = self.client.json(Method::GET, &path, None).await;
                (body["status"] == "routed" || body["status"] == "completed").then_some(body)
            })
            .await
            .unwrap_or_else(|| panic!("notification {id} was not routed"))
    }

    async fn drain(&self, channel: Channel, lane: Lane) -> Vec<DeliveryMessage> {
        let broker = self.env.broker().await;
        let ch = broker.channel().await.unwrap();
        let queue = self.env.names().delivery_queue(channel, lane);
        let mut out = Vec::new();
        while let Some(msg) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(serde_json::from_slice(&msg.delivery.data).unwrap());
        }
        broker.close().await;
        out
    }

    async fn stop(self) {
        self.ingest.stop().await;
        self.router.stop().await;
    }
}

fn statuses(body: &Value) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["user_id"].as_str().unwrap().to_owned(),
                d["channel"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn row(user: &str, channel: &str, status: &str, reason: &str) -> (String, String, String, String) {
    (user.into(), channel.into(), status.into(), reason.into())
}

#[tokio::test]
async fn user_list_fans_out_per_channel_and_destination() {
    let s = setup().await;
    s.user(
        "u-1",
        json!({"name": "Ada", "email": "ada@example.com", "phone": "+14155550100"}),
    )
    .await;
    s.client
        .json(
            Method::PUT,
            "/v1/users/u-1/devices/fcm-token-aaaaaaaa",
            Some(json!({"platform": "fcm"})),
        )
        .await;
    s.client
        .json(
            Method::PUT,
            "/v1/users/u-1/devices/apns-token-bbbbbbbb",
            Some(json!({"platform": "apns"})),
        )
        .await;
    s.user("u-2", json!({"name": "Bob"})).await;
    let id = s
        .send(json!({
            "category": "order.shipped",
            "to": {"users": ["u-1", "u-2", "ghost"]},
            "content": {
                "push": {"title": "Shipped", "body": "Order {{order_id}}", "data": {"order": "{{order_id}}"}},
                "email": {"subject": "Order {{order_id}}", "text": "Hi {{name}}", "html": "<p>Hi {{name}}</p>"},
                "sms": {"text": "{{name}}: order {{order_id}} shipped"}
            },
            "data": {"order_id": "A-991"}
        }))
        .await;
    let body = s.routed(&id).await;
    assert_eq!(
        statuses(&body),
        vec![
            row("ghost", "email", "suppressed", "unknown_user"),
            row("ghost", "push", "suppressed", "unknown_user"),
            row("ghost", "sms", "suppressed", "unknown_user"),
            row("u-1", "email", "pending", ""),
            row("u-1", "push", "pending", ""),
            row("u-1", "push", "pending", ""),
            row("u-1", "sms", "pending", ""),
            row("u-2", "email", "suppressed", "no_destination"),
            row("u-2", "push", "suppressed", "no_destination"),
            row("u-2", "sms", "suppressed", "no_destination"),
        ]
    );
    assert_eq!(body["counts"], json!({"pending": 4, "suppressed": 6}));
    // Destinations are masked in the status view.
    let email = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user_id"] == "u-1" && d["channel"] == "email")
        .unwrap();
    assert_eq!(email["destination"], "a***@example.com");

    let emails = s.drain(Channel::Email, Lane::Normal).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].destination.address, "ada@example.com");
    assert_eq!(emails[0].tenant_id, "acme");
    match &emails[0].rendered {
        herald::model::message::Rendered::Email(e) => {
            assert_eq!(e.subject, "Order A-991");
            assert_eq!(e.html.as_deref(), Some("<p>Hi Ada</p>"));
        }
        other => panic!("{other:?}"),
    }
    let pushes = s.drain(Channel::Push, Lane::Normal).await;
    assert_eq!(pushes.len(), 2);
    let sms = s.drain(Channel::Sms, Lane::Normal).await;
    assert_eq!(sms.len(), 1);
    match &sms[0].rendered {
        herald::model::message::Rendered::Sms(m) => assert_eq!(m.text, "Ada: order A-991 shipped"),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn rules_apply_in_order_with_a_status_for_each_decision() {
    let s = setup().await;
    let tenant = TenantId::parse("acme").unwrap();
    herald::db::tenants::set_required_categories(
        &s.env.pool,
        &tenant,
        &[Category::parse("security").unwrap()],
    )
    .await
    .unwrap();
    for u in ["opted", "quiet", "plain"] {
        s.user(
            u,
            json!({"email": format!("{u}@example.com"), "timezone": "Pacific/Kiritimati"}),
        )
        .await;
    }
    // Quiet hours covering every hour but one (UTC+14 ... whenever the test runs).
    let now_local =
        chrono::Utc::now().with_timezone(&"Pacific/Kiritimati".parse::<chrono_tz::Tz>().unwrap());
    let start = (now_local - chrono::Duration::hours(1))
        .format("%H:00")
        .to_string();
    let end = (now_local + chrono::Duration::hours(2))
        .format("%H:00")
        .to_string();
    s.client
        .json(
            Method::PUT,
            "/v1/users/quiet/preferences",
            Some(json!({"quiet_hours": {"start": start, "end": end}})),
        )
        .await;
    s.client
        .json(
            Method::PUT,
            "/v1/users/opted/preferences",
            Some(json!({"channels": {"email": false}})),
        )
        .await;
    let to = json!({"users": ["opted", "quiet", "plain"]});
    let email = json!({"email": {"subject": "s", "text": "t"}});

    // normal: opt-out suppresses, quiet hours defer.
    let id = s
        .send(json!({"category": "news", "to": to, "content": email}))
        .await;
    let body = s.routed(&id).await;
    assert_eq!(
        statuses(&body),
        vec![
            row("opted", "email", "suppressed", "opted_out"),
            row("plain", "email", "pending", ""),
            row("quiet", "email", "deferred", "quiet_hours"),
        ]
    );
    let held = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user_id"] == "quiet")
        .unwrap();
    let until: chrono::DateTime<chrono::Utc> =
        held["deliver_after"].as_str().unwrap().parse().unwrap();
    assert!(until > chrono::Utc::now() + chrono::Duration::minutes(50));

    // A required category ignores the opt-out; high priority ignores quiet hours.
    let id = s
        .send(json!({"category": "security", "priority": "high", "to": to, "content": email}))
        .await;
    let body = s.routed(&id).await;
    assert!(
        statuses(&body).iter().all(|r| r.2 == "pending"),
        "{:?}",
        statuses(&body)
    );
    assert_eq!(s.drain(Channel::Email, Lane::High).await.len(), 3);

    // send_at defers; expires_at before the quiet window ends expires.
    let later = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let id = s
        .send(json!({"category": "news", "to": {"users": ["plain", "quiet"]}, "content": email, "send_at": later}))
        .await;
    assert_eq!(
        statuses(&s.routed(&id).await),
        vec![
            row("plain", "email", "deferred", "send_at"),
            row("quiet", "email", "deferred", "send_at")
        ]
    );
    let id = s
        .send(json!({"category": "news", "to": {"users": ["plain", "quiet"]}, "content": email, "expires_at": soon}))
        .await;
    assert_eq!(
        statuses(&s.routed(&id).await),
        vec![
            row("plain", "email", "pending", ""),
            row(
                "quiet",
                "email",
                "expired",
                "expired before it could be sent"
            )
        ]
    );

    // A missing template variable fails that delivery with the reason.
    let id = s
        .send(json!({"category": "news", "to": {"users": ["plain"]}, "content": {"email": {"subject": "{{nope}}", "text": "t"}}}))
        .await;
    assert_eq!(
        statuses(&s.routed(&id).await),
        vec![row(
            "plain",
            "email",
            "failed",
            "template: missing variable `nope`"
        )]
    );
    s.stop().await;
}

#[tokio::test]
async fn frequency_caps_suppress_the_excess_per_user_category_and_channel() {
    let s = setup().await;
    let tenant = TenantId::parse("acme").unwrap();
    let cap = herald::routing::caps::Cap {
        max: 2,
        per_seconds: 86_400,
    };
    herald::db::tenants::set_cap(
        &s.env.pool,
        &tenant,
        &Category::parse("promo").unwrap(),
        Channel::Sms,
        Some(cap),
    )
    .await
    .unwrap();
    s.user(
        "u-1",
        json!({"phone": "+14155550100", "email": "a@example.com"}),
    )
    .await;
    let n = json!({"category": "promo", "to": {"users": ["u-1"]}, "content": {"sms": {"text": "deal"}, "email": {"subject": "s", "text": "t"}}});
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let id = s.send(n.clone()).await;
        outcomes.push(statuses(&s.routed(&id).await));
    }
    assert_eq!(
        outcomes[0],
        vec![
            row("u-1", "email", "pending", ""),
            row("u-1", "sms", "pending", "")
        ]
    );
    assert_eq!(outcomes[1], outcomes[0]);
    // The third SMS is over the cap; email is not capped.
    assert_eq!(
        outcomes[2],
        vec![
            row("u-1", "email", "pending", ""),
            row("u-1", "sms", "suppressed", "frequency_cap")
        ]
    );
    // Another category is not affected.
    let id = s
        .send(json!({"category": "orders", "to": {"users": ["u-1"]}, "content": {"sms": {"text": "x"}}}))
        .await;
    assert_eq!(
        statuses(&s.routed(&id).await),
        vec![row("u-1", "sms", "pending", "")]
    );
    s.stop().await;
}

#[tokio::test]
async fn redelivered_routing_message_creates_no_second_delivery() {
    let s = setup().await;
    s.user("u-1", json!({"email": "a@example.com"})).await;
    let id = s.send(json!({"category": "x", "to": {"users": ["u-1"]}, "content": {"email": {"subject": "s", "text": "t"}}})).await;
    s.routed(&id).await;
    let first = s.drain(Channel::Email, Lane::Normal).await;
    assert_eq!(first.len(), 1);

    // As if the router crashed after publishing but before acking: the same
    // routing message arrives again, and the notification is not yet routed.
    sqlx::query("UPDATE notifications SET status = 'routing' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&s.env.pool)
        .await
        .unwrap();
    let publisher = herald::broker::Publisher::new(s.env.broker().await);
    let row = herald::db::routing::notification(&s.env.pool, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    publisher
        .publish(&herald::intake::route_message(
            &s.env.names(),
            row.id,
            "acme",
            "normal",
            row.created_at,
        ))
        .await
        .unwrap();
    s.routed(&id).await;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_one(&s.env.pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    // The still-pending delivery is published again with the same id; the
    // worker's claim makes sure it is sent once.
    let again = s.drain(Channel::Email, Lane::Normal).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_id, first[0].delivery_id);

    // Once a delivery is sent, a redelivered routing message does not publish it.
    sqlx::query("UPDATE deliveries SET status = 'sent' WHERE notification_id = $1::uuid")
        .bind(&id)
        .execute(&s.env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE notifications SET status = 'routing' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&s.env.pool)
        .await
        .unwrap();
    publisher
        .publish(&herald::intake::route_message(
            &s.env.names(),
            row.id,
            "acme",
            "normal",
            row.created_at,
        ))
        .await
        .unwrap();
    s.routed(&id).await;
    assert!(s.drain(Channel::Email, Lane::Normal).await.is_empty());
    s.stop().await;
}

async fn seed_topic(env: &TestEnv, topic: &str, n: usize) {
    sqlx::query(
        "INSERT INTO users (tenant_id, id, email) SELECT 'acme', 'user-' || lpad(g::text, 7, '0'), 'user' || g || '@example.com'
         FROM generate_series(1, $1) g",
    )
    .bind(n as i32)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO topic_subscriptions (tenant_id, topic, user_id) SELECT 'acme', $2, 'user-' || lpad(g::text, 7, '0')
         FROM generate_series(1, $1) g",
    )
    .bind(n as i32)
    .bind(topic)
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn topic_fans_out_in_pages_and_resumes_from_its_checkpoint() {
    let s = setup().await;
    seed_topic(&s.env, "launch", 2_500).await;
    let id = s
        .send(json!({"category": "launch", "priority": "bulk", "to": {"topic": "launch"}, "content": {"email": {"subject": "New!", "text": "Hi"}}}))
        .await;
    let body = s.routed(&id).await;
    assert_eq!(body["counts"], json!({"pending": 2500}));
    let pages: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM route_pages WHERE notification_id = $1::uuid AND done_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&s.env.pool)
    .await
    .unwrap();
    assert_eq!(pages, 3, "2500 subscribers in pages of 1000");
    assert_eq!(
        s.env
            .queue_depth(&s.env.names().delivery_queue(Channel::Email, Lane::Bulk))
            .await,
        2500
    );

    // A router that crashed mid-enumeration resumes from its checkpoint:
    // roll the notification back to "first page handed out" and redeliver.
    sqlx::query(
        "DELETE FROM route_pages WHERE notification_id = $1::uuid AND last_user > 'user-0001000'",
    )
    .bind(&id)
    .execute(&s.env.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE notifications SET status = 'routing', pages_total = NULL, route_cursor = 'user-0001000' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&s.env.pool)
        .await
        .unwrap();
    let row = herald::db::routing::notification(&s.env.pool, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    herald::broker::Publisher::new(s.env.broker().await)
        .publish(&herald::intake::route_message(
            &s.env.names(),
            row.id,
            "acme",
            "bulk",
            row.created_at,
        ))
        .await
        .unwrap();
    let body = s.routed(&id).await;
    assert_eq!(
        body["counts"],
        json!({"pending": 2500}),
        "no subscriber twice, none missed"
    );
    let handed: Vec<String> = sqlx::query_scalar(
        "SELECT last_user FROM route_pages WHERE notification_id = $1::uuid ORDER BY 1",
    )
    .bind(&id)
    .fetch_all(&s.env.pool)
    .await
    .unwrap();
    assert_eq!(handed, ["user-0001000", "user-0002000", "user-0002500"]);
    s.stop().await;
}

#[tokio::test]
async fn held_deliveries_are_released_when_due_or_expired() {
    let s = setup().await;
    s.user("u-1", json!({"email": "a@example.com"})).await;
    s.user("u-2", json!({"email": "b@example.com"})).await;
    let send_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let id = s
        .send(json!({"category": "x", "to": {"users": ["u-1", "u-2"]}, "content": {"email": {"subject": "s", "text": "t"}}, "send_at": send_at}))
        .await;
    assert_eq!(s.routed(&id).await["counts"], json!({"deferred": 2}));
    // u-2's copy expires while held.
    sqlx::query("UPDATE deliveries SET expires_at = now() WHERE user_id = 'u-2'")
        .execute(&s.env.pool)
        .await
        .unwrap();
    let body = s
        .env
        .eventually(Duration::from_secs(15), || async {
            let (_, body) = s
                .client
                .json(Method::GET, &format!("/v1/notifications/{id}"), None)
                .await;
            (body["counts"]["deferred"].is_null()).then_some(body)
        })
        .await
        .expect("released");
    assert_eq!(body["counts"], json!({"expired": 1, "pending": 1}));
    let released = s.drain(Channel::Email, Lane::Normal).await;
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].user_id, "u-1");
    assert_eq!(released[0].destination.address, "a@example.com");
    s.stop().await;
}

#[tokio::test]
async fn status_pages_through_deliveries_and_reports_completion() {
    let s = setup().await;
    for i in 0..5 {
        s.user(
            &format!("u-{i}"),
            json!({"email": format!("u{i}@example.com")}),
        )
        .await;
    }
    let id = s
        .send(json!({"category": "x", "to": {"users": ["u-0", "u-1", "u-2", "u-3", "u-4"]}, "content": {"email": {"subject": "s", "text": "t"}}}))
        .await;
    s.routed(&id).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, body) = s
            .client
            .json(
                Method::GET,
                &format!("/v1/notifications/{id}?limit=2&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(body["counts"]["pending"], 5);
        for d in body["deliveries"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    seen.dedup();
    assert_eq!(seen.len(), 5);
    // When no delivery is left open, the notification is completed.
    sqlx::query("UPDATE deliveries SET status = 'sent' WHERE notification_id = $1::uuid")
        .bind(&id)
        .execute(&s.env.pool)
        .await
        .unwrap();
    let (_, body) = s
        .client
        .json(Method::GET, &format!("/v1/notifications/{id}"), None)
        .await;
    assert_eq!(body["status"], "completed");
    assert_eq!(body["counts"], json!({"sent": 5}));
    s.stop().await;
}

/// The router's `bulk` fan-out steps yield to `high` notifications in
/// flight, including the common ones routed through the lane's batch (a
/// one-time code to one user): while a topic drains and codes stream in,
/// `herald_yielded_to_high_total{lane="bulk"}` counts the waits.
#[tokio::test]
async fn bulk_fan_out_yields_to_high_notifications_routed_in_batches() {
    // The codes must reach the router: routed inline, the router's bulk
    // steps would have nothing to yield to.
    let s = setup_with(|c| c.inline_routing_max_users = 0).await;
    seed_topic(&s.env, "sale", 5_000).await;
    s.user("code-user", json!({"email": "code@example.com"}))
        .await;
    s.send(
        json!({"category": "sale", "priority": "bulk", "to": {"topic": "sale"},
        "content": {"email": {"subject": "Sale", "text": "Hi"}}}),
    )
    .await;
    // Codes from 8 clients at once until the topic is routed.
    let routed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE lane = 'bulk'")
            .fetch_one(&s.env.pool)
            .await
            .unwrap()
    };
    let mut codes = 0;
    while routed().await < 5_000 {
        let sends = (0..8).map(|_| {
            s.send(
                json!({"category": "login", "priority": "high", "to": {"users": ["code-user"]},
                "content": {"email": {"subject": "Code", "text": "123456"}}}),
            )
        });
        futures::future::join_all(sends).await;
        codes += 8;
        assert!(codes < 20_000, "the topic was not routed");
    }
    let metrics = reqwest::get(s.router.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let yields: f64 = metrics
        .lines()
        .find(|l| l.starts_with("herald_yielded_to_high_total{lane=\"bulk\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no bulk yield series in:\n{metrics}"));
    assert!(
        yields > 0.0,
        "{codes} codes were routed while the topic's pages were, and no bulk step waited for them"
    );
    s.stop().await;
}
