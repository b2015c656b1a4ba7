//! Delivery events on the `herald.events` exchange, seen by a consumer that
//! binds its own queue as an internal service would (docs/events.md).

use std::{collections::HashSet, sync::Arc, time::Duration};

use herald::{
    broker::{Broker, Publisher},
    model::Channel,
    providers::config::EmailProviderKind,
};
use herald_tests::{
    TestEnv,
    fakes::{closed_port, smtp::SmtpFake},
    pipeline::Pipeline,
};
use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use reqwest::Method;
use serde_json::{Value, json};

/// One event as a consumer receives it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) routing_key: String,
    pub(crate) content_type: String,
    pub(crate) message_id: String,
    pub(crate) event: Value,
}

/// A consumer's own queue bound to the events exchange.
pub(crate) struct Tap {
    broker: Arc<Broker>,
    channel: lapin::Channel,
    queue: String,
}

impl Tap {
    /// An exclusive queue bound with `key` (`#` for every event).
    pub(crate) async fn bind(env: &TestEnv, key: &str) -> Self {
        let broker = env.broker().await;
        let channel = broker.channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare")
            .name()
            .to_string();
        channel
            .queue_bind(
                queue.as_str().into(),
                env.names().events_exchange().as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        Self {
            broker,
            channel,
            queue,
        }
    }

    /// Everything waiting in the queue now.
    pub(crate) async fn take(&self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            let props = &msg.delivery.properties;
            out.push(Received {
                routing_key: msg.delivery.routing_key.to_string(),
                content_type: props
                    .content_type()
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                message_id: props
                    .message_id()
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                event: serde_json::from_slice(&msg.delivery.data).expect("event is JSON"),
            });
        }
        out
    }

    /// Waits for `n` events, then a while longer to catch any extra one.
    pub(crate) async fn collect(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && tokio::time::Instant::now() < deadline {
            got.extend(self.take().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        got.extend(self.take().await);
        got
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        self.broker.close().await;
    }
}

/// Checks the CloudEvents 1.0 structured-mode envelope and the AMQP
/// properties of one event, and answers its `data`.
fn valid_cloud_event(r: &Received) -> &Value {
    let e = &r.event;
    assert_eq!(r.content_type, "application/cloudevents+json", "{r:?}");
    assert_eq!(e["specversion"], "1.0");
    let id = e["id"].as_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(r.message_id, id, "the AMQP message id is the event id");
    let data = &e["data"];
    assert_eq!(
        e["source"],
        format!(
            "/tenants/{}/notifications/{}",
            data["tenant_id"].as_str().unwrap(),
            data["notification_id"].as_str().unwrap()
        )
    );
    assert_eq!(
        e["type"],
        format!("herald.delivery.{}", data["status"].as_str().unwrap())
    );
    assert_eq!(e["subject"], data["delivery_id"]);
    assert!(
        chrono::DateTime::parse_from_rfc3339(e["time"].as_str().expect("time")).is_ok(),
        "{e}"
    );
    assert_eq!(e["datacontenttype"], "application/json");
    assert_eq!(
        r.routing_key,
        format!(
            "{}.{}.{}",
            data["tenant_id"].as_str().unwrap(),
            data["channel"].as_str().unwrap(),
            data["status"].as_str().unwrap()
        )
    );
    data
}

#[tokio::test]
async fn events_one_per_status_change_of_a_notifications_deliveries() {
    let p = Pipeline::start("200ms,400ms").await;
    let tap = Tap::bind(&p.env, "#").await;
    let smtp = SmtpFake::start().await;
    let push = p.env.spawn_worker(Channel::Push, |_| {}).await;
    let email = p
        .env
        .spawn_worker(Channel::Email, |c| {
            c.providers.email_provider = EmailProviderKind::Smtp;
            c.providers.smtp_url = Some(smtp.url().into());
            c.providers.email_from = Some("Herald <noreply@example.com>".into());
        })
        .await;
    p.user("u-1", json!({"name": "Ada", "email": "ada@example.com"}))
        .await;
    p.device("u-1", "fcm-token-0001-abcdefghijkl", "fcm").await;
    // The mailbox does not exist: a permanent failure at once.
    smtp.push_rcpt_reply(550, "5.1.1 No such user");
    let id = p
        .send(
            json!({"category": "order.shipped", "to": {"users": ["u-1", "ghost"]},
                     "content": {"push": {"title": "Shipped", "body": "On its way"},
                                 "email": {"subject": "Shipped", "text": "On its way"}}}),
        )
        .await;
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(
        body["counts"],
        json!({"sent": 1, "failed": 1, "suppressed": 2})
    );

    let events = tap.collect(4, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 4, "one event per status change: {events:#?}");
    let ids: HashSet<_> = events.iter().map(|r| r.event["id"].clone()).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    // Each delivery the status API shows has exactly one event, saying what
    // the status API says.
    for d in body["deliveries"].as_array().unwrap() {
        let mine: Vec<_> = events
            .iter()
            .filter(|r| r.event["data"]["delivery_id"] == d["id"])
            .collect();
        assert_eq!(mine.len(), 1, "delivery {d}: {mine:#?}");
        let data = valid_cloud_event(mine[0]);
        assert_eq!(data["tenant_id"], "acme");
        assert_eq!(data["notification_id"], id.as_str());
        assert_eq!(data["category"], "order.shipped");
        for field in ["user_id", "channel", "destination", "status", "attempts"] {
            assert_eq!(data[field], d[field], "{field} of {d}");
        }
        assert_eq!(data["reason"], d["reason"]);
        assert_eq!(data["error_class"], d["error_class"]);
        assert_eq!(data["error"], d["last_error"]);
    }
    let email_event = events
        .iter()
        .find(|r| r.routing_key == "acme.email.failed")
        .expect("the failed email's event");
    assert_eq!(
        email_event.event["data"]["destination"], "a***@example.com",
        "masked as in the logs"
    );
    assert!(
        events.iter().any(|r| r.routing_key == "acme.push.sent"),
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|r| r.routing_key.starts_with("acme.")
                && r.routing_key.ends_with(".suppressed")
                && r.event["data"]["user_id"] == "ghost"
                && r.event["data"]["reason"] == "unknown_user")
            .count(),
        2
    );

    let metrics = reqwest::get(p.router.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "herald_events_published_total",
        "herald_events_outbox_rows",
        "herald_events_outbox_oldest_seconds",
    ] {
        assert!(metrics.contains(name), "{name} on /metrics");
    }
    tap.close().await;
    push.stop().await;
    email.stop().await;
    p.stop().await;
}

/// Rows in the outbox (what the relay has yet to publish).
async fn outbox(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Sends a push to `users` and waits until its deliveries are routed (no
/// worker runs), then stops the router, hence its relay: nothing publishes
/// events until the test says so. Answers the notification's id and what
/// is left running: the environment, ingest and the client.
async fn routed_then_no_relay(
    p: Pipeline,
    users: &[&str],
) -> (String, TestEnv, herald_tests::Spawned, herald_tests::Client) {
    let id = p
        .send(json!({"category": "social", "to": {"users": users},
                     "content": {"push": {"title": "Hi", "body": "A message"}}}))
        .await;
    p.env
        .eventually(Duration::from_secs(10), || async {
            (p.status(&id).await["counts"] == json!({"pending": users.len()})).then_some(())
        })
        .await
        .expect("routed");
    let Pipeline {
        env,
        ingest,
        router,
        client,
    } = p;
    router.stop().await;
    (id, env, ingest, client)
}

/// Fails every delivery of notification `id` (`permanent`), so the trigger
/// writes an outbox row for each.
async fn fail_every_delivery(env: &TestEnv, id: &str) {
    sqlx::query(
        "UPDATE deliveries SET status = 'failed', error_class = 'permanent', last_error = 'no'
         WHERE notification_id = $1::uuid",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// A pass over rows that carry their delivery's columns opens no delivery
/// partition: a statement that merely names the partitioned table plans and
/// opens every partition and its indexes, which cost each pass several
/// times what its rows did (docs/benchmarks.md).
#[tokio::test]
async fn a_relay_pass_over_carried_rows_opens_no_delivery_partition() {
    let p = Pipeline::start("200ms,400ms").await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001-abcdefghijkl", "fcm").await;
    let (id, env, _ingest, _) = routed_then_no_relay(p, &["u-1"]).await;
    fail_every_delivery(&env, &id).await;
    let mut tx = env.pool.begin().await.unwrap();
    let rows = herald::db::events::lock_batch(&mut tx, 500).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].category.as_deref(), Some("social"));
    assert_eq!(rows[0].user_id.as_deref(), Some("u-1"));
    let opened: Vec<String> = sqlx::query_scalar(
        "SELECT relation::regclass::text FROM pg_locks
         WHERE pid = pg_backend_pid() AND relation IS NOT NULL
           AND relation::regclass::text LIKE 'deliveries%'",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(opened.is_empty(), "the pass opened {opened:?}");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn events_wait_in_the_outbox_through_a_broker_outage_and_a_stopped_relay() {
    let p = Pipeline::start("200ms,400ms").await;
    let tap = Tap::bind(&p.env, "acme.push.*").await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001-abcdefghijkl", "fcm").await;
    let (id, env, ingest, client) = routed_then_no_relay(p, &["u-1"]).await;

    // The delivery is sent meanwhile: delivery does not wait for events.
    let push = env.spawn_worker(Channel::Push, |_| {}).await;
    let sent = env
        .eventually(Duration::from_secs(15), || async {
            let (_, body) = client
                .json(Method::GET, &format!("/v1/notifications/{id}"), None)
                .await;
            (body["counts"] == json!({"sent": 1})).then_some(body)
        })
        .await
        .expect("sent without a router running");
    assert_eq!(outbox(&env).await, 1, "the change waits in the outbox");

    // A relay whose broker is unreachable publishes nothing and keeps it.
    let down = Broker::new(
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port().await),
        env.names(),
    );
    let failed = herald::events::relay::pass(&env.pool, &Publisher::new(down), 500).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(outbox(&env).await, 1, "kept for later");
    assert!(tap.take().await.is_empty());

    // A router starts: its relay publishes the event, once.
    let router = env.spawn_router().await;
    let events = tap.collect(1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let data = valid_cloud_event(&events[0]);
    assert_eq!(data["status"], "sent");
    assert_eq!(data["delivery_id"], sent["deliveries"][0]["id"]);
    assert_eq!(events[0].routing_key, "acme.push.sent");
    assert_eq!(outbox(&env).await, 0);

    tap.close().await;
    push.stop().await;
    router.stop().await;
    ingest.stop().await;
}

/// The outbox row carries its delivery's columns, so the relay does not
/// read the delivery back: an event comes out the same from a row written
/// by an earlier version without them (read from the delivery, as during a
/// rolling upgrade), and a row whose delivery is gone is still published.
#[tokio::test]
async fn events_from_carried_columns_match_those_read_from_the_delivery() {
    let p = Pipeline::start("200ms,400ms").await;
    let tap = Tap::bind(&p.env, "acme.push.*").await;
    for (user, token) in [
        ("u-1", "fcm-token-0001-abcdefghijkl"),
        ("u-2", "fcm-token-0002-abcdefghijkl"),
    ] {
        p.user(user, json!({"name": "Ada"})).await;
        p.device(user, token, "fcm").await;
    }
    // No relay runs while the rows are written.
    let (id, env, ingest, _) = routed_then_no_relay(p, &["u-1", "u-2"]).await;
    let rows: Vec<(chrono::DateTime<chrono::Utc>, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT created_at, id, user_id FROM deliveries
         WHERE notification_id = $1::uuid ORDER BY user_id",
    )
    .bind(&id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let [(kept_at, kept, _), (gone_at, gone, _)] = rows.as_slice() else {
        panic!("two deliveries: {rows:?}")
    };
    // Both fail (the trigger writes a row each, with the columns); the
    // first's change is written once more as an earlier version's trigger
    // did, without them; then the second delivery is deleted.
    fail_every_delivery(&env, &id).await;
    sqlx::query(
        "INSERT INTO event_outbox (created_at, delivery_id, status, error_class, error, attempts)
         VALUES ($1, $2, 'failed', 'permanent', 'no', 0)",
    )
    .bind(kept_at)
    .bind(kept)
    .execute(&env.pool)
    .await
    .unwrap();
    let carried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_outbox WHERE tenant_id = 'acme' AND user_id IS NOT NULL
           AND channel = 'push' AND destination LIKE 'fcm-token-%' AND notification_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(carried, 2, "the trigger copies the delivery's columns");
    sqlx::query("DELETE FROM deliveries WHERE created_at = $1 AND id = $2")
        .bind(gone_at)
        .bind(gone)
        .execute(&env.pool)
        .await
        .unwrap();

    let publisher = Publisher::new(env.broker().await);
    let settled = herald::events::relay::pass(&env.pool, &publisher, 500).await;
    assert_eq!(settled.unwrap(), 3, "every row published");
    assert_eq!(outbox(&env).await, 0);
    let events = tap.collect(3, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    let data: Vec<&Value> = events.iter().map(valid_cloud_event).collect();
    let of = |delivery: &uuid::Uuid| -> Vec<&Value> {
        data.iter()
            .copied()
            .filter(|d| d["delivery_id"] == delivery.to_string())
            .collect()
    };
    let kept_events = of(kept);
    assert_eq!(kept_events.len(), 2, "{kept_events:#?}");
    assert_eq!(
        kept_events[0], kept_events[1],
        "the same event from the carried columns and from the delivery"
    );
    let gone_events = of(gone);
    assert_eq!(
        gone_events.len(),
        1,
        "published though the delivery is gone"
    );
    for d in kept_events.iter().chain(&gone_events) {
        assert_eq!(d["tenant_id"], "acme");
        assert_eq!(d["notification_id"], id.as_str());
        assert_eq!(d["channel"], "push");
        assert_eq!(d["category"], "social");
        assert_eq!(d["status"], "failed");
        assert_eq!(d["error_class"], "permanent");
        let destination = d["destination"].as_str().unwrap();
        assert!(
            destination.starts_with("fcm") && !destination.contains("abcdefghijkl"),
            "masked: {destination}"
        );
    }
    assert_eq!(kept_events[0]["user_id"], "u-1");
    assert_eq!(gone_events[0]["user_id"], "u-2");

    tap.close().await;
    ingest.stop().await;
}

#[tokio::test]
async fn events_two_relays_publish_each_event_once() {
    let p = Pipeline::start("200ms,400ms").await;
    let second = p.env.spawn_router().await;
    let tap = Tap::bind(&p.env, "acme.#").await;
    // 1000 users the tenant does not have, two channels each: 2000
    // suppressed deliveries written at once, four relay batches to share.
    let users: Vec<String> = (0..1000).map(|i| format!("nobody-{i:04}")).collect();
    let id = p
        .send(
            json!({"category": "news", "priority": "bulk", "to": {"users": users},
                     "content": {"push": {"title": "News", "body": "Read"},
                                 "sms": {"text": "News"}}}),
        )
        .await;
    let events = tap.collect(2000, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 2000, "each event once");
    let ids: HashSet<_> = events.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids.len(), 2000, "no event id published twice");
    let deliveries: HashSet<_> = events
        .iter()
        .map(|r| r.event["data"]["delivery_id"].clone())
        .collect();
    assert_eq!(deliveries.len(), 2000, "one event per delivery");
    for r in &events {
        let data = valid_cloud_event(r);
        assert_eq!(data["notification_id"], id.as_str());
        assert_eq!(data["status"], "suppressed");
    }
    tap.close().await;
    second.stop().await;
    p.stop().await;
}

/// An event no service has bound a queue for is dropped by the broker, as a
/// topic exchange does, not returned: a returned message costs the broker a
/// `basic.return` and the router a warning with the whole event in its log,
/// for every status change of every delivery.
#[tokio::test]
async fn events_nobody_binds_are_dropped_by_the_broker_not_returned() {
    let env = TestEnv::new().await;
    let row = herald::db::events::PendingEvent {
        seq: 1,
        event_id: uuid::Uuid::now_v7(),
        created_at: chrono::Utc::now(),
        delivery_id: uuid::Uuid::now_v7(),
        status: "sent".into(),
        reason: None,
        error_class: None,
        error: None,
        attempts: 1,
        at: chrono::Utc::now(),
        tenant_id: Some("nobody-listens".into()),
        notification_id: Some(uuid::Uuid::now_v7()),
        user_id: Some("u-1".into()),
        channel: Some("push".into()),
        destination: Some("fcm-token-0001".into()),
        category: Some("social".into()),
    };
    let event = herald::events::DeliveryEvent::from_pending(&row).expect("an event");
    let publisher = Publisher::new(env.broker().await);
    let results = publisher.publish_all(&[event.outgoing(&env.names())]).await;
    assert!(
        matches!(results.as_slice(), [Ok(())]),
        "confirmed and not returned: {results:?}"
    );
}

#[tokio::test]
async fn events_exchange_is_declared_with_the_topology_under_the_prefix() {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let channel = broker.channel().await.unwrap();
    // A passive declare fails (closing the channel) when the exchange is
    // missing or of another kind.
    channel
        .exchange_declare(
            env.names().events_exchange().as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("topic exchange {prefix}.events exists");
    assert_eq!(
        env.names().events_exchange(),
        format!("{}.events", env.prefix)
    );
    broker.close().await;
}

/// A receipt is a status change too: a Twilio "undelivered" callback is
/// published as `{tenant}.sms.undelivered` with the receipt's reason, after
/// the `sent` event of the same delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_receipts_with_the_receipts_reason() {
    let s = crate::receipts::setup().await;
    let tap = Tap::bind(&s.p.env, "acme.sms.*").await;
    s.p.user("u-1", json!({"phone": "+14155550100"})).await;
    let sent = s.send(&["u-1"], "sms").await;
    let message = s.twilio.accepted().remove(0);
    let form = s
        .twilio
        .callback_form(&message, "undelivered", Some("30003"));
    let resp = s
        .twilio
        .post_callback(
            &message,
            &form,
            Some(s.twilio.auth_token()),
            "https://herald.example.com",
            &s.p.ingest.url(""),
        )
        .await;
    assert_eq!(resp.status(), 200);

    let got = tap.collect(2, Duration::from_secs(20)).await;
    let data: Vec<&Value> = got.iter().map(valid_cloud_event).collect();
    let statuses: Vec<&str> = data.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["sent", "undelivered"], "{got:#?}");
    assert_eq!(got[1].routing_key, "acme.sms.undelivered");
    assert_eq!(data[1]["notification_id"], sent["id"]);
    assert!(
        data[1]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("30003"),
        "{:#}",
        data[1]
    );
    assert_ne!(got[0].event["id"], got[1].event["id"]);
    tap.close().await;
    s.stop().await;
}
