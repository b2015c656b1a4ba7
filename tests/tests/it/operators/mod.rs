//! The operator's side: dead letters archived once, filtered, replayed
//! (dry run, twice, each kind), purged; `heraldctl dlq` and `stats`; the
//! admin JSON API; the admin page in a real headless browser; and the
//! metrics every binary shows from its start.

mod admin;
mod archive;
mod cli;
mod metrics;
mod replaying;

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::{
    broker::{Headers, Outgoing, Publisher, header_i64, header_str},
    db::dead_letters::{self, Filter, NewDeadLetter},
    dlq::replay::{self, Outcome, ReplayRequest},
    model::{
        Channel, Lane,
        message::{DeliveryMessage, Destination, Rendered, Replay, RouteMessage, SmsMessage},
    },
};
use herald_tests::{TestEnv, binary, browser::Browser};
use lapin::{
    options::BasicGetOptions,
    types::{AMQPValue, FieldArray, FieldTable, LongString},
};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Now, at the database's precision: a delivery's `created_at` travels in
/// JSON and must find its row again.
pub(super) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

pub(super) fn record(key: &str) -> NewDeadLetter {
    NewDeadLetter {
        message_key: key.into(),
        source: "ingest".into(),
        tenant_id: Some("acme".into()),
        channel: None,
        lane: None,
        notification_id: None,
        delivery_id: None,
        user_id: None,
        error_class: "invalid".into(),
        last_error: "body is not valid JSON".into(),
        attempts: 0,
        exchange: String::new(),
        routing_key: String::new(),
        headers: json!({}),
        payload: b"{}".to_vec(),
        failed_at: now(),
    }
}

/// Stores a dead letter and answers its id.
pub(super) async fn seed(env: &TestEnv, change: impl FnOnce(&mut NewDeadLetter)) -> Uuid {
    let mut r = record(&Uuid::new_v4().to_string());
    change(&mut r);
    assert!(dead_letters::insert(&env.pool, &r).await.unwrap());
    sqlx::query_scalar("SELECT id FROM dead_letters WHERE message_key = $1")
        .bind(&r.message_key)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// A delivery row in `status` and the dead letter its worker gave up with.
pub(super) async fn dead_delivery(
    env: &TestEnv,
    tenant: &str,
    status: &str,
) -> (DeliveryMessage, Uuid) {
    let msg = DeliveryMessage {
        delivery_id: Uuid::now_v7(),
        created_at: now(),
        notification_id: Uuid::now_v7(),
        tenant_id: tenant.into(),
        user_id: "u-1".into(),
        channel: Channel::Sms,
        lane: Lane::High,
        destination: Destination {
            address: "+15550001111".into(),
            platform: None,
        },
        rendered: Rendered::Sms(SmsMessage {
            text: "Your code is 123456".into(),
        }),
        expires_at: None,
    };
    // The notification stays stored (replay routes it again); its request
    // matters only to a router, which these tests do not run.
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING")
        .bind(tenant)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, category, priority, status, request, created_at)
         VALUES ($1, $2, 'security', 'high', 'routed', '{}', $3)",
    )
    .bind(msg.notification_id)
    .bind(tenant)
    .bind(msg.created_at)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, lane, user_id, channel,
             destination, status, attempts, error_class, last_error)
         VALUES ($1, $2, $3, $4, 'high', 'u-1', 'sms', '+15550001111', $5, 8, 'timeout', 'gave up')",
    )
    .bind(msg.delivery_id)
    .bind(msg.created_at)
    .bind(msg.notification_id)
    .bind(tenant)
    .bind(status)
    .execute(&env.pool)
    .await
    .unwrap();
    let names = env.names();
    let (m, exchange) = (msg.clone(), names.deliveries_exchange());
    let id = seed(env, move |r| {
        r.message_key = format!("{}:dead:0", m.delivery_id);
        r.source = "worker-sms".into();
        r.tenant_id = Some(m.tenant_id.clone());
        r.channel = Some("sms".into());
        r.lane = Some("high".into());
        r.notification_id = Some(m.notification_id);
        r.delivery_id = Some(m.delivery_id);
        r.user_id = Some(m.user_id.clone());
        r.error_class = "timeout".into();
        r.last_error = "gave up after 8 attempts: no answer within 10s".into();
        r.attempts = 8;
        r.exchange = exchange;
        r.routing_key = "sms.high".into();
        r.headers = json!({
            "x-herald-tenant": m.tenant_id,
            "x-herald-delivery-id": m.delivery_id.to_string(),
            "x-herald-notification-id": m.notification_id.to_string(),
            "x-herald-channel": "sms",
            "x-herald-lane": "high",
            "x-herald-accepted-at-ms": m.created_at.timestamp_millis(),
            "x-herald-attempts": 8,
            "x-herald-error-class": "timeout",
            "x-herald-error": "gave up",
            "x-herald-source": "worker-sms",
            "x-herald-retry-delay-ms": 600,
            "x-death": [{"count": 1, "reason": "expired", "queue": "x.retry.600ms"}],
        });
        r.payload = serde_json::to_vec(&m).unwrap();
    })
    .await;
    (msg, id)
}

pub(super) async fn delivery_row(env: &TestEnv, msg: &DeliveryMessage) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM deliveries WHERE created_at = $1 AND id = $2")
        .bind(msg.created_at)
        .bind(msg.delivery_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

pub(super) async fn replayed_at(env: &TestEnv, id: Uuid) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT replayed_at FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Takes every message off a queue.
pub(super) async fn drain(env: &TestEnv, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let broker = env.broker().await;
    let ch = broker.channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(msg);
    }
    broker.close().await;
    out
}

pub(super) fn request(filter: Filter) -> ReplayRequest {
    ReplayRequest {
        filter,
        limit: 100,
        dry_run: false,
        rate_per_sec: 0,
        again: false,
    }
}

pub(super) fn by_id(id: Uuid) -> Filter {
    Filter {
        id: Some(id),
        ..Default::default()
    }
}
